//! Mapping tables: compiling a parsed `mappings` file, and running a string through a table.
//!
//! The algorithm is the one the Messaging Server documentation describes under "Mapping
//! Operations" (see `docs/mappings.md` for the choices where it is silent):
//!
//! * entries are tried top to bottom; the first whose pattern matches the whole input (and
//!   whose `$:x`/`$;x`/`$?x?` conditions hold) has its template expanded;
//! * `$E` (the default) ends the mapping with that output; `$C` continues with the next entry,
//!   the output becoming the input; `$L` does the same and, if nothing later matches, makes one
//!   more pass from the top; `$R` restarts from the top with the output;
//! * a failed substitution ends the mapping with the entry's *input* as the result, unless
//!   `$C`, `$L` or `$R` came before it in the template, in which case the next entry is tried;
//! * each restart with a string no shorter than the previous one counts; past
//!   [`ITERATION_LIMIT`] the mapping stops with what it has (the documented loop guard);
//! * flags accumulate over the entries that ran; the output is the last entry's.
//!
//! Which entries are tried is the walk's business ([`Walk`]): every one, or only those the
//! table's [`EntryIndex`] says can match the string; either way in table order, and entries
//! passed over count against the entry budget as if they had been tried, so both walks give
//! the same result, notes included.
//!
//! `$|TABLE;arg|` calls another table of the same file; calls nest at most
//! [`CALL_DEPTH_LIMIT`] deep, so a table that calls itself ends with a failed substitution
//! rather than a stack overflow. No string grows past [`OUTPUT_LIMIT`], and no mapping tries
//! more than [`ENTRY_BUDGET`] entries.

use std::collections::HashMap;

use super::index::{Candidates, EntryIndex};
use super::pattern::{Pattern, Subject};
use super::template::{Control, Environment, Expansion, Flags, Template, Unsupported};
use crate::config::error::{ConfigError, Diagnostics, Loc};
use crate::config::mappings::MappingFile;

/// Restarts with a string that did not get shorter, after which a mapping stops iterating.
pub const ITERATION_LIMIT: u32 = 10;

/// How deep `$|TABLE;...|` calls may nest.
pub const CALL_DEPTH_LIMIT: usize = 8;

/// Most entries one mapping may try, table calls included; restarts inside nested calls
/// could otherwise multiply (11 passes at each of 8 levels).
pub const ENTRY_BUDGET: usize = 1_000_000;

/// Longest string (in bytes) a mapping may build; a template that would make a longer one
/// ends the mapping with the string it had, so `$0$0$R` cannot exhaust memory.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// Tables with fewer entries are walked entry by entry under [`Walk::Auto`]: looking a
/// string up costs about as much as trying a few dozen entries (`benches/mapping.rs`, "index
/// forced": the seed's five entries run at about 0.7 of the linear rate when indexed). The
/// exact crossover is not measured; either walk decides alike.
pub const INDEX_MIN_ENTRIES: usize = 32;

/// How a mapping finds the entries to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Every entry, top to bottom: the documented algorithm as written (the index's oracle).
    Linear,
    /// Only the entries the table's index finds for the string, top to bottom.
    Indexed,
    /// [`Walk::Indexed`] for tables of at least [`INDEX_MIN_ENTRIES`] entries, else linear.
    Auto,
}

/// One compiled entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub pattern: Pattern,
    pub template: Template,
    pub loc: Loc,
}

/// One compiled table.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    /// Never changed after compiling: `index` describes these.
    entries: Vec<Entry>,
    /// Built from `entries` when the table is compiled (a reload compiles a new table).
    index: std::sync::Arc<EntryIndex>,
}

impl Table {
    /// A table of `entries`, with its index.
    pub fn new(name: String, entries: Vec<Entry>) -> Table {
        let index = EntryIndex::new(entries.iter().map(|e| &e.pattern));
        Table {
            name,
            entries,
            index: std::sync::Arc::new(index),
        }
    }

    /// The entries, in the file's order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries `walk` tries for `subject`.
    fn candidates(&self, subject: &Subject, walk: Walk) -> Candidates<'_> {
        let indexed = match walk {
            Walk::Linear => false,
            Walk::Indexed => true,
            Walk::Auto => self.entries.len() >= INDEX_MIN_ENTRIES,
        };
        if indexed {
            self.index.candidates(subject)
        } else {
            Candidates::Every
        }
    }
}

/// The result of a mapping that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub output: String,
    pub flags: Flags,
}

/// Things worth a log line that happened during one mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// Unsupported substitutions met (each counts as "no answer").
    pub unsupported: Vec<String>,
    /// The iteration limit stopped a `$R`/`$L` loop.
    pub iteration_limit_hit: bool,
    /// A template would have built a string longer than [`OUTPUT_LIMIT`].
    pub output_limit_hit: bool,
    /// The mapping tried [`ENTRY_BUDGET`] entries and stopped with what it had.
    pub entry_budget_hit: bool,
}

/// Every table of a mappings file, compiled.
#[derive(Debug, Clone, Default)]
pub struct MappingSet {
    tables: HashMap<String, Table>,
}

/// Input flags for `$:x` / `$;x`; PORT_ACCESS documents none.
pub type InputFlags = Flags;

impl MappingSet {
    /// Compiles every entry. A pattern or template that does not compile is an error at its
    /// place in the file; unsupported substitutions and calls to absent tables are warnings.
    pub fn compile(file: &MappingFile, diags: &mut Diagnostics) -> Result<MappingSet, ConfigError> {
        let mut tables = HashMap::new();
        for t in &file.tables {
            let mut entries = Vec::with_capacity(t.entries.len());
            for e in &t.entries {
                let pattern = Pattern::compile(&e.pattern).map_err(|err| {
                    ConfigError::other(
                        e.loc.at_col(e.loc.col + err.col - 1),
                        format!("pattern `{}`: {}", e.pattern, err.message),
                    )
                })?;
                let template = Template::compile(&e.template).map_err(|err| {
                    ConfigError::other(
                        e.template_loc.at_col(e.template_loc.col + err.col - 1),
                        format!("template `{}`: {}", e.template, err.message),
                    )
                })?;
                for u in template.unsupported() {
                    diags.warn(
                        e.template_loc.clone(),
                        format!(
                            "{}: {} is not supported; at run time it counts as no answer \
                             (the substitution fails)",
                            u.text, u.what
                        ),
                    );
                }
                entries.push(Entry {
                    pattern,
                    template,
                    loc: e.loc.clone(),
                });
            }
            tables.insert(
                t.name.to_ascii_uppercase(),
                Table::new(t.name.clone(), entries),
            );
        }
        let set = MappingSet { tables };
        for t in &file.tables {
            for e in &t.entries {
                // Re-compiling is cheap and keeps the warning next to its place in the file.
                if let Ok(template) = Template::compile(&e.template) {
                    for called in template.called_tables() {
                        if set.table(called).is_none() {
                            diags.warn(
                                e.template_loc.clone(),
                                format!(
                                    "`$|{called};...|` calls a table this file does not \
                                     define; the substitution will always fail"
                                ),
                            );
                        }
                    }
                }
            }
        }
        Ok(set)
    }

    /// The table named `name` (case-blind).
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(&name.to_ascii_uppercase())
    }

    /// Runs `input` through table `name`. `None`: the table does not exist or no entry
    /// matched.
    pub fn map(
        &self,
        name: &str,
        input: &str,
        input_flags: &InputFlags,
        notes: &mut Notes,
    ) -> Option<Mapped> {
        self.map_with(name, input, input_flags, notes, Walk::Auto)
    }

    /// [`MappingSet::map`] with a chosen walk (for all the tables it calls too).
    pub fn map_with(
        &self,
        name: &str,
        input: &str,
        input_flags: &InputFlags,
        notes: &mut Notes,
        walk: Walk,
    ) -> Option<Mapped> {
        let mut run = Run {
            set: self,
            walk,
            input_flags,
            notes,
            depth: 0,
            budget: ENTRY_BUDGET,
            rng: seed(),
        };
        run.map(name, input)
    }
}

/// A small xorshift generator for `$?x?`; chance needs no cryptography.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ 0x9E37_79B9_7F4A_7C15 | 1
}

struct Run<'a> {
    set: &'a MappingSet,
    walk: Walk,
    input_flags: &'a InputFlags,
    notes: &'a mut Notes,
    depth: usize,
    /// Entries this mapping may still try.
    budget: usize,
    rng: u64,
}

impl Run<'_> {
    fn map(&mut self, name: &str, input: &str) -> Option<Mapped> {
        let table = self.set.table(name)?;
        let mut current = input.to_string();
        let mut flags = Flags::new();
        let mut matched = false;
        let mut extra_pass = false;
        let mut restarts = 0u32;
        let mut previous_len = current.chars().count();
        let mut i = 0;
        // Prepared once per string, not once per entry.
        let mut subject = Subject::new(&current);
        let mut candidates = table.candidates(&subject, self.walk);
        loop {
            // Entries the walk passes over could not have matched; they use the budget as if
            // tried, so that where the budget ends does not depend on the walk.
            let next = candidates.next(i, table.entries.len());
            let passed = next - i;
            if passed > self.budget {
                self.budget = 0;
                self.notes.entry_budget_hit = true;
                return matched.then_some(Mapped {
                    output: current,
                    flags,
                });
            }
            self.budget -= passed;
            i = next;
            let Some(entry) = table.entries.get(i) else {
                if extra_pass && self.count_restart(&current, &mut previous_len, &mut restarts) {
                    extra_pass = false;
                    i = 0;
                    continue;
                }
                return matched.then_some(Mapped {
                    output: current,
                    flags,
                });
            };
            i += 1;
            if self.budget == 0 {
                self.notes.entry_budget_hit = true;
                return matched.then_some(Mapped {
                    output: current,
                    flags,
                });
            }
            self.budget -= 1;
            let Some(captures) = entry.pattern.matches_subject(&subject) else {
                continue;
            };
            match entry.template.expand(&captures, self) {
                Expansion::NotApplicable => continue,
                Expansion::Failed { continued: true } => continue,
                Expansion::Failed { continued: false } => {
                    // Documented: the original input is the result, and the mapping ends.
                    return Some(Mapped {
                        output: current,
                        flags,
                    });
                }
                Expansion::Done { output, .. } if output.len() > OUTPUT_LIMIT => {
                    self.notes.output_limit_hit = true;
                    return Some(Mapped {
                        output: current,
                        flags,
                    });
                }
                Expansion::Done {
                    output,
                    flags: entry_flags,
                    control,
                } => {
                    matched = true;
                    flags.extend(entry_flags);
                    current = output;
                    subject = Subject::new(&current);
                    candidates = table.candidates(&subject, self.walk);
                    match control {
                        Control::End => {
                            return Some(Mapped {
                                output: current,
                                flags,
                            })
                        }
                        Control::Continue => {}
                        Control::ContinueWithPass => extra_pass = true,
                        Control::Restart => {
                            if !self.count_restart(&current, &mut previous_len, &mut restarts) {
                                return Some(Mapped {
                                    output: current,
                                    flags,
                                });
                            }
                            i = 0;
                        }
                    }
                }
            }
        }
    }

    /// Counts a restart; `false` when the iteration limit forbids it.
    fn count_restart(
        &mut self,
        current: &str,
        previous_len: &mut usize,
        restarts: &mut u32,
    ) -> bool {
        let len = current.chars().count();
        *restarts = if len >= *previous_len {
            *restarts + 1
        } else {
            0
        };
        *previous_len = len;
        if *restarts > ITERATION_LIMIT {
            self.notes.iteration_limit_hit = true;
            return false;
        }
        true
    }
}

impl Environment for Run<'_> {
    fn call_table(&mut self, table: &str, input: &str) -> Option<String> {
        if self.depth >= CALL_DEPTH_LIMIT {
            return None;
        }
        self.depth += 1;
        let result = self.map(table, input);
        self.depth -= 1;
        result.filter(|m| m.flags.contains(&'Y')).map(|m| m.output)
    }

    fn input_flag(&self, flag: char) -> bool {
        self.input_flags.contains(&flag)
    }

    fn percent(&mut self) -> u8 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 100) as u8
    }

    fn unsupported(&mut self, what: &Unsupported) {
        if !self.notes.unsupported.contains(&what.text) {
            self.notes.unsupported.push(what.text.clone());
        }
    }
}
