//! The `mappings` file: named tables of `pattern template` entries.
//!
//! Grammar: `parsers/mappings.pest`, one logical line at a time. This module joins continued
//! lines, follows `<file` includes (through [`super::source`]), and builds the tables:
//!
//! ```text
//! PORT_ACCESS                          <- a table name: a letter in column 1
//!                                      <- the required blank line
//!   TCP|*|225|1.2.3.4|*  $Y            <- entries: indented, pattern, blanks, template
//!   TCP|*|*|*|*  $N500$ Do$ not$ ...
//!                                      <- a blank line ends the table
//! ```
//!
//! Rules (Sun JSMS 6 Admin Reference, "Mapping File"), and our choices where it is silent:
//! `!` in column 1 is a comment anywhere, also between entries (an indented `!` starts a
//! pattern, with a warning); `<file` in column 1 includes a file; a line ending in `\` continues
//! on the next (the backslash and the line break are removed, blanks are kept; the next line is
//! not a table name even though it starts in column 1); a `\` after an odd run of `$` is the
//! template's `$\` (lower case), not a continuation. Comment and include lines are never
//! continued, and one cannot be the continuation of another line (an error, as in `imta.cnf`).
//! An entry outside a table, a non-letter in column 1, and a table name defined twice
//! (case-blind) are errors. A missing blank line after a table name, text after a table name or
//! after the template, an entry without a template, and columns longer than the documented
//! limits are warnings. Patterns and templates are kept exactly as written (with their `$`
//! sequences), for the mapping engine in `src/mapping/`; `docs/mappings-file.md` lists every
//! rule with an example.

use std::path::Path;
use std::sync::Arc;

use pest::Parser;
use pest_derive::Parser;

use super::error::{offending_text, ConfigError, Diagnostics, ErrorKind, Loc};
use super::lines::{logical_lines, LogicalLine};
use super::source::{self, Line, ResolvePath};

#[derive(Parser)]
#[grammar = "../parsers/mappings.pest"]
struct MappingsGrammar;

/// Longest pattern every documented version accepts: PMDF and the Sun 6 Admin Reference say
/// 252, the Sun 6.3 Admin Guide 256; a warning past the smaller keeps a file portable.
pub const MAX_PATTERN: usize = 252;
/// Longest template (Sun 6.3 Admin Guide; the older documents say 252, but templates with long
/// reject texts and callouts are common, so only the newer limit is warned about).
pub const MAX_TEMPLATE: usize = 1024;

/// One entry of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingEntry {
    /// As written, continuation lines joined.
    pub pattern: String,
    /// As written; empty when the entry has none.
    pub template: String,
    pub loc: Loc,
    pub template_loc: Loc,
    /// Text after the template, ignored (with a warning).
    pub trailing: Option<String>,
}

/// A named table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingTable {
    pub name: String,
    pub loc: Loc,
    pub entries: Vec<MappingEntry>,
}

/// The whole file, includes spliced in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappingFile {
    pub tables: Vec<MappingTable>,
}

impl MappingFile {
    /// The table named `name`, compared case-blind.
    pub fn table(&self, name: &str) -> Option<&MappingTable> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

/// What one logical line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    TableName { name: String, loc: Loc },
    Entry(MappingEntry),
    Blank { loc: Loc },
}

/// A `!` comment or `<file` include line: it ends at its line end, whatever its last character.
fn is_comment_or_include(line: &str) -> bool {
    line.starts_with('!') || line.starts_with('<')
}

/// Does this physical line continue on the next? A trailing `\` does, unless an odd run of
/// `$` before it makes it the template's `$\`, or the line is a comment or an include.
fn continues(line: &str) -> bool {
    let Some(body) = line.strip_suffix('\\') else {
        return false;
    };
    let dollars = body.chars().rev().take_while(|&c| c == '$').count();
    dollars % 2 == 0 && !is_comment_or_include(line)
}

/// A comment or include line cannot be the continuation of a line ending in `\`: the reader
/// could not tell whether it is meant as text of the entry or as a comment (same rule as
/// `imta.cnf`).
fn check_continuation_pieces(file: &Arc<Path>, logical: &LogicalLine) -> Result<(), ConfigError> {
    for (offset, line) in logical.continuation_lines() {
        let what = match logical.text.chars().nth(offset) {
            Some('!') => "comment",
            Some('<') => "include",
            _ => continue,
        };
        return Err(ConfigError::other(
            Loc::new(file, line, 1),
            format!(
                "a{} {what} line cannot continue the line before it (remove the `\\` at the \
                 end of line {}, or move the {what})",
                if what == "include" { "n" } else { "" },
                line - 1
            ),
        ));
    }
    Ok(())
}

/// The syntax error for a line that starts in column 1 with neither a letter, `!` nor `<`.
/// (pest would only say that it expected the end of the line.)
fn column_one_error(file: &Arc<Path>, logical: &LogicalLine) -> ConfigError {
    ConfigError::at(
        logical.loc(file, 0),
        ErrorKind::Syntax {
            expected: "expected a table name (a letter in column 1), a `!` comment, a `<file` \
                       include or an entry indented by a blank or tab"
                .into(),
            found: offending_text(&logical.text, 1, 1),
        },
    )
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::pattern => "a pattern",
        Rule::template => "a template",
        Rule::entry => "an entry (indented: pattern, blanks, template)",
        Rule::table_name | Rule::name => "a table name (a letter in column 1)",
        Rule::comment => "a `!` comment",
        Rule::include => "a `<file` include",
        Rule::include_spec => "a file name after `<`",
        Rule::blank => "a blank line",
        Rule::trailing | Rule::after_name => "more text",
        Rule::line | Rule::EOI => "the end of the line",
        Rule::ws | Rule::unit | Rule::bracketed | Rule::quoted | Rule::plain => {
            "a pattern or template character"
        }
    }
}

/// Parses one file's text into statements and include lines (includes not followed).
pub fn parse_lines(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<Vec<Line<Statement>>, ConfigError> {
    let mut out = Vec::new();
    for logical in logical_lines(text, "", continues) {
        check_continuation_pieces(file, &logical)?;
        let loc_at = |offset: usize| logical.loc(file, offset);
        let pairs = MappingsGrammar::parse(Rule::line, &logical.text).map_err(|e| {
            let at_start = match e.location {
                pest::error::InputLocation::Pos(p) | pest::error::InputLocation::Span((p, _)) => {
                    p == 0
                }
            };
            if at_start {
                return column_one_error(file, &logical);
            }
            let mut err = logical.parse_error(file, e, describe);
            if matches!(&err.kind, ErrorKind::Syntax { found, .. } if found == "$") {
                err.kind = ErrorKind::Other(
                    "`$` at the end of a column quotes nothing (write `$$` for a dollar sign)"
                        .into(),
                );
            }
            err
        })?;
        let offset_of =
            |p: &pest::iterators::Pair<Rule>| logical.text[..p.as_span().start()].chars().count();
        for pair in pairs.flatten() {
            match pair.as_rule() {
                Rule::comment => {}
                Rule::include_spec => out.push(Line::Include {
                    spec: pair.as_str().trim().to_string(),
                    loc: loc_at(offset_of(&pair)),
                }),
                Rule::blank if pair.as_str().len() == logical.text.len() => {
                    out.push(Line::Item(Statement::Blank { loc: loc_at(0) }))
                }
                Rule::table_name => {
                    let mut name = String::new();
                    for part in pair.into_inner() {
                        match part.as_rule() {
                            Rule::name => name = part.as_str().to_string(),
                            Rule::after_name => diags.warn(
                                loc_at(offset_of(&part)),
                                format!(
                                    "`{}` after table name {name} is ignored (a table name \
                                     stands alone on its line; an entry must be indented by a \
                                     blank or tab)",
                                    part.as_str().trim_end()
                                ),
                            ),
                            _ => {}
                        }
                    }
                    out.push(Line::Item(Statement::TableName {
                        name,
                        loc: loc_at(0),
                    }));
                }
                Rule::entry => out.push(Line::Item(Statement::Entry(entry(
                    pair, &loc_at, &offset_of, diags,
                )))),
                _ => {}
            }
        }
    }
    Ok(out)
}

fn entry(
    pair: pest::iterators::Pair<Rule>,
    loc_at: &dyn Fn(usize) -> Loc,
    offset_of: &dyn Fn(&pest::iterators::Pair<Rule>) -> usize,
    diags: &mut Diagnostics,
) -> MappingEntry {
    let mut e = MappingEntry {
        pattern: String::new(),
        template: String::new(),
        loc: loc_at(0),
        template_loc: loc_at(0),
        trailing: None,
    };
    let mut has_template = false;
    for part in pair.into_inner() {
        let here = loc_at(offset_of(&part));
        match part.as_rule() {
            Rule::pattern => {
                e.pattern = part.as_str().to_string();
                if e.pattern.starts_with('!') {
                    // The documents make `!` a comment in column 1 only.
                    diags.warn(
                        here.clone(),
                        format!(
                            "`{}` is read as an entry whose pattern starts with `!`; a comment \
                             must start in column 1",
                            e.pattern
                        ),
                    );
                }
                e.loc = here.clone();
                e.template_loc = here;
            }
            Rule::template => {
                e.template = part.as_str().to_string();
                e.template_loc = here;
                has_template = true;
            }
            Rule::trailing => {
                diags.warn(
                    here,
                    format!(
                        "`{}` after the template is ignored (quote blanks inside a template \
                         as `$ `)",
                        part.as_str()
                    ),
                );
                e.trailing = Some(part.as_str().to_string());
            }
            _ => {}
        }
    }
    if !has_template {
        diags.warn(
            e.loc.clone(),
            format!(
                "entry `{}` has no template; its template is empty",
                e.pattern
            ),
        );
    }
    if e.pattern.chars().count() > MAX_PATTERN {
        diags.warn(
            e.loc.clone(),
            format!(
                "pattern of {} characters, longer than the {MAX_PATTERN} the original \
                 documents (Sun 6.3 allows 256)",
                e.pattern.chars().count()
            ),
        );
    }
    if e.template.chars().count() > MAX_TEMPLATE {
        diags.warn(
            e.template_loc.clone(),
            format!(
                "template of {} characters, longer than the {MAX_TEMPLATE} the original allows",
                e.template.chars().count()
            ),
        );
    }
    e
}

/// `line N` when `earlier` is in the same file as `here`, else the whole `FILE:LINE:COL`.
fn place(earlier: &Loc, here: &Loc) -> String {
    if earlier.file == here.file {
        format!("line {}", earlier.line)
    } else {
        earlier.to_string()
    }
}

/// Builds the tables from the statements of the file and its includes.
pub fn assemble(
    statements: Vec<Statement>,
    diags: &mut Diagnostics,
) -> Result<MappingFile, ConfigError> {
    let mut file = MappingFile::default();
    // The open table (index into file.tables), and whether its blank line was seen.
    let mut open: Option<(usize, bool)> = None;
    // The last table closed by a blank line, where, and whether it had entries: for the
    // message about an entry that follows.
    let mut closed_at: Option<(String, Loc, bool)> = None;
    for st in statements {
        match st {
            Statement::TableName { name, loc } => {
                if let Some(first) = file.table(&name) {
                    let spelled = if first.name == name {
                        String::new()
                    } else {
                        format!(" as {}; table names are compared ignoring case", first.name)
                    };
                    let message = format!(
                        "table {name} is defined twice (first at {}{spelled})",
                        place(&first.loc, &loc)
                    );
                    return Err(ConfigError::other(loc, message));
                }
                file.tables.push(MappingTable {
                    name,
                    loc,
                    entries: Vec::new(),
                });
                open = Some((file.tables.len() - 1, false));
            }
            Statement::Blank { loc } => match &mut open {
                Some((t, blank_seen @ false)) if file.tables[*t].entries.is_empty() => {
                    *blank_seen = true;
                }
                Some((t, _)) => {
                    let table = &file.tables[*t];
                    closed_at = Some((table.name.clone(), loc, !table.entries.is_empty()));
                    open = None;
                }
                None => {}
            },
            Statement::Entry(e) => {
                let Some((t, blank_seen)) = &mut open else {
                    let message = match &closed_at {
                        Some((table, blank, true)) => format!(
                            "entry outside any table: the blank line at {} ended table \
                             {table} (blank lines may not appear between entries; remove it)",
                            place(blank, &e.loc)
                        ),
                        Some((table, blank, false)) => format!(
                            "entry outside any table: the second blank line at {} ended table \
                             {table} (exactly one blank line follows a table name; remove it)",
                            place(blank, &e.loc)
                        ),
                        None => "entry before any table name (a table name starts in column 1, \
                                 its entries are indented)"
                            .to_string(),
                    };
                    return Err(ConfigError::other(e.loc, message));
                };
                let table = &mut file.tables[*t];
                if !*blank_seen && table.entries.is_empty() {
                    diags.warn(
                        e.loc.clone(),
                        format!(
                            "a blank line must follow table name {} (read as its entry anyway)",
                            table.name
                        ),
                    );
                    *blank_seen = true;
                }
                table.entries.push(e);
            }
        }
    }
    Ok(file)
}

/// Reads `path` and everything it includes.
pub fn load(
    path: &Path,
    resolver: &dyn ResolvePath,
    diags: &mut Diagnostics,
) -> Result<MappingFile, ConfigError> {
    let statements = source::load(path, resolver, diags, &parse_lines)?;
    assemble(statements, diags)
}

/// Parses text as if read from `file`, without includes (an include line is an error).
pub fn parse_str(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<MappingFile, ConfigError> {
    let statements = source::items_without_includes(file, text, diags, &parse_lines)?;
    assemble(statements, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(MappingFile, Diagnostics), ConfigError> {
        let file: Arc<Path> = Arc::from(Path::new("mappings"));
        let mut d = Diagnostics::default();
        parse_str(&file, text, &mut d).map(|m| (m, d))
    }

    #[test]
    fn quoted_blanks_do_not_end_a_column() {
        let (m, d) = parse("T\n\n  a$ b  $N1$ 2\n").expect("parses");
        assert!(d.is_empty(), "{d:?}");
        let e = &m.tables[0].entries[0];
        assert_eq!(
            (e.pattern.as_str(), e.template.as_str()),
            ("a$ b", "$N1$ 2")
        );
        assert_eq!((e.loc.col, e.template_loc.col), (3, 9));
    }

    #[test]
    fn continuation_joins_lines_and_column_one_is_not_a_name() {
        let (m, _) = parse("T\n\n  ab\\\ncd  x\\\nyz\n").expect("parses");
        let e = &m.tables[0].entries[0];
        assert_eq!((e.pattern.as_str(), e.template.as_str()), ("abcd", "xyz"));
        assert_eq!(m.tables.len(), 1);
    }

    #[test]
    fn dollar_backslash_at_the_end_is_a_case_change_not_a_continuation() {
        let (m, _) = parse("T\n\n  a  b$\\\n  c  d\n").expect("parses");
        assert_eq!(m.tables[0].entries.len(), 2);
        assert_eq!(m.tables[0].entries[0].template, "b$\\");
    }

    #[test]
    fn dangling_dollar_is_an_error_at_its_column() {
        let err = parse("T\n\n  a$\n").expect_err("dangling");
        assert_eq!(
            err.to_string(),
            "mappings:3:4: `$` at the end of a column quotes nothing (write `$$` for a dollar sign)"
        );
    }

    #[test]
    fn comment_line_ending_in_a_backslash_continues_nothing() {
        let (m, _) = parse("T\n\n! see C:\\\n  a  b\n").expect("parses");
        assert_eq!(m.tables[0].entries.len(), 1);
    }

    #[test]
    fn non_letter_in_column_one_names_what_a_line_may_be() {
        let err = parse("T\n\n*  $Y\n").expect_err("not indented");
        assert_eq!(
            err.to_string(),
            "mappings:3:1: expected a table name (a letter in column 1), a `!` comment, a \
             `<file` include or an entry indented by a blank or tab, found `*  $Y`"
        );
    }

    #[test]
    fn error_position_follows_continued_lines() {
        let err = parse("T\n\n  a\\\nbc$\n").expect_err("dangling");
        assert!(err.to_string().starts_with("mappings:4:3:"), "{err}");
    }
}
