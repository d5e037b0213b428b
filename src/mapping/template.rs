//! Mapping templates: compiling the template column of a mapping entry, and expanding it.
//!
//! The language of the Messaging Server 6 Administration Reference, "Mapping Entry Templates"
//! (Table 4-15) and "Mapping Operations":
//!
//! | text | effect |
//! |---|---|
//! | any other character, `$$`, `$ `, `$<tab>` | itself / `$` / space / tab |
//! | `$0` … `$n` | the text the nth saved wildcard of the pattern matched |
//! | `$C` `$E` `$L` `$R` | continue with the next entry / end (the default) / continue, with one more pass / restart from the top |
//! | `$+1E` | end now, ignoring the rest of the template |
//! | `$\` `$^` `$_` | following text in lower case / upper case / as it is |
//! | `$=` | following substitutions quoted for an LDAP filter (RFC 4515) |
//! | `$:x` `$;x` | the entry applies only if input flag x is set / clear |
//! | `$?x?` | the entry applies x percent of the time |
//! | `$|TABLE;argument|` | the output of mapping `argument` through TABLE, which must set `$Y`; otherwise the substitution fails |
//! | `$` + another letter, `$<`, `$>` | a flag; the letter is collected, not copied (PORT_ACCESS reads `$Y $N $F $T $< $>`) |
//!
//! Substitutions that call out of the mapping file — `${...}` (general database), `$]...[`
//! (LDAP), `$[...]` (site routines), `$}...{` (domain attributes), `$#...#` (sequence files),
//! `$nA`/`$nX` (address parts) — are compiled and reported as unsupported; when expanded they
//! fail, as the original's substitution fails when its database has no answer.
//!
//! A failed substitution ends the expansion; the caller ([`super::table`]) then applies the
//! documented rule (the entry's input becomes the result unless `$C`/`$L`/`$R` came first).

use std::collections::BTreeSet;

/// Flags set by a template, by letter (upper case) or sign (`<`, `>`).
pub type Flags = BTreeSet<char>;

/// What happens after an entry's template is expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    End,
    Continue,
    ContinueWithPass,
    Restart,
}

/// Case applied to the text that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Case {
    #[default]
    AsIs,
    Lower,
    Upper,
}

/// A substitution this engine does not perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// What the original would do, in its documentation's words.
    pub what: &'static str,
    /// The text as written.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Wildcard(usize),
    Control(Control),
    ExitNow,
    Case(Case),
    LdapQuote,
    FlagIf { flag: char, set: bool },
    Chance(u8),
    TableCall { table: String, argument: Vec<Piece> },
    Flag(char),
    Unsupported(Unsupported),
}

/// A template that cannot be compiled: the column (1-based) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.col, self.message)
    }
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// What an expansion may ask of the world around it.
pub trait Environment {
    /// Maps `input` through `table`; `Some` only when that mapping set `$Y`.
    fn call_table(&mut self, table: &str, input: &str) -> Option<String>;
    /// Whether input flag `flag` is set.
    fn input_flag(&self, flag: char) -> bool;
    /// A number from 0 to 99, for `$?x?`.
    fn percent(&mut self) -> u8;
    /// Called once per expansion that meets an unsupported substitution.
    fn unsupported(&mut self, what: &Unsupported);
}

/// The outcome of expanding a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expansion {
    /// The template ran to its end (or to `$+1E`).
    Done {
        output: String,
        flags: Flags,
        control: Control,
    },
    /// `$:x`, `$;x` or `$?x?` said the entry does not apply.
    NotApplicable,
    /// A substitution failed; `continued` says whether `$C`, `$L` or `$R` came before it.
    Failed { continued: bool },
}

impl Template {
    /// Compiles the template text of a mapping entry.
    pub fn compile(text: &str) -> Result<Template, TemplateError> {
        let chars: Vec<char> = text.chars().collect();
        let (pieces, end) = compile_pieces(&chars, 0, None)?;
        debug_assert_eq!(end, chars.len());
        Ok(Template { pieces })
    }

    /// The substitutions in this template that this engine does not perform.
    pub fn unsupported(&self) -> Vec<&Unsupported> {
        fn walk<'a>(pieces: &'a [Piece], out: &mut Vec<&'a Unsupported>) {
            for p in pieces {
                match p {
                    Piece::Unsupported(u) => out.push(u),
                    Piece::TableCall { argument, .. } => walk(argument, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.pieces, &mut out);
        out
    }

    /// The tables this template calls with `$|TABLE;...|`.
    pub fn called_tables(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::TableCall { table, .. } => Some(table.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Expands the template for a match whose saved wildcards are `captures`.
    pub fn expand(&self, captures: &[String], env: &mut dyn Environment) -> Expansion {
        let mut out = Output::default();
        let mut flags = Flags::new();
        let mut control = Control::End;
        let mut continued = false;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_literal(s),
                Piece::Wildcard(n) => {
                    // A number beyond the pattern's wildcards substitutes nothing (checked at
                    // compile time by the table, which knows the pattern).
                    let text = captures.get(*n).map_or("", String::as_str);
                    out.push_substituted(text);
                }
                Piece::Control(c) => {
                    control = *c;
                    continued |= *c != Control::End;
                }
                Piece::ExitNow => {
                    control = Control::End;
                    break;
                }
                Piece::Case(c) => out.case = *c,
                Piece::LdapQuote => out.ldap_quote = true,
                Piece::FlagIf { flag, set } => {
                    if env.input_flag(*flag) != *set {
                        return Expansion::NotApplicable;
                    }
                }
                Piece::Chance(percent) => {
                    if env.percent() >= *percent {
                        return Expansion::NotApplicable;
                    }
                }
                Piece::TableCall { table, argument } => {
                    let mut arg = Output::default();
                    for p in argument {
                        match p {
                            Piece::Literal(s) => arg.push_literal(s),
                            Piece::Wildcard(n) => {
                                arg.push_substituted(captures.get(*n).map_or("", String::as_str))
                            }
                            _ => {}
                        }
                    }
                    match env.call_table(table, &arg.text) {
                        Some(result) => out.push_substituted(&result),
                        None => return Expansion::Failed { continued },
                    }
                }
                Piece::Flag(f) => {
                    flags.insert(*f);
                }
                Piece::Unsupported(u) => {
                    env.unsupported(u);
                    return Expansion::Failed { continued };
                }
            }
        }
        Expansion::Done {
            output: out.text,
            flags,
            control,
        }
    }
}

/// The text being built, with the case and quoting modes in force.
#[derive(Default)]
struct Output {
    text: String,
    case: Case,
    ldap_quote: bool,
}

impl Output {
    fn push_cased(&mut self, s: &str) {
        match self.case {
            Case::AsIs => self.text.push_str(s),
            Case::Lower => self.text.push_str(&s.to_lowercase()),
            Case::Upper => self.text.push_str(&s.to_uppercase()),
        }
    }

    fn push_literal(&mut self, s: &str) {
        self.push_cased(s);
    }

    fn push_substituted(&mut self, s: &str) {
        if self.ldap_quote {
            let mut q = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '*' => q.push_str("\\2a"),
                    '(' => q.push_str("\\28"),
                    ')' => q.push_str("\\29"),
                    '\\' => q.push_str("\\5c"),
                    '\0' => q.push_str("\\00"),
                    c => q.push(c),
                }
            }
            self.push_cased(&q);
        } else {
            self.push_cased(s);
        }
    }
}

/// Compiles from `start` until `stop` (an unquoted terminator) or the end; returns the pieces
/// and the index of the terminator (or the end).
fn compile_pieces(
    chars: &[char],
    start: usize,
    stop: Option<char>,
) -> Result<(Vec<Piece>, usize), TemplateError> {
    let err = |at: usize, message: String| TemplateError {
        col: at + 1,
        message,
    };
    let mut pieces: Vec<Piece> = Vec::new();
    let mut literal = String::new();
    let mut i = start;
    let flush = |literal: &mut String, pieces: &mut Vec<Piece>| {
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(literal)));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if Some(c) == stop {
            flush(&mut literal, &mut pieces);
            return Ok((pieces, i));
        }
        if c != '$' {
            literal.push(c);
            i += 1;
            continue;
        }
        let Some(&next) = chars.get(i + 1) else {
            return Err(err(
                i,
                "`$` at the end of the template quotes nothing (write `$$` for a dollar sign)"
                    .into(),
            ));
        };
        let mut piece = None;
        let mut consumed = 2;
        match next {
            '$' | ' ' | '\t' => literal.push(next),
            '0'..='9' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let digits: String = chars[i + 1..j].iter().collect();
                let n: usize = digits
                    .parse()
                    .map_err(|_| err(i, format!("`${digits}`: number too large")))?;
                if matches!(chars.get(j), Some('A' | 'X')) {
                    piece = Some(Piece::Unsupported(Unsupported {
                        what: "address part substitution ($nA, $nX)",
                        text: chars[i..=j].iter().collect(),
                    }));
                    consumed = j + 1 - i;
                } else {
                    piece = Some(Piece::Wildcard(n));
                    consumed = j - i;
                }
            }
            'C' | 'c' => piece = Some(Piece::Control(Control::Continue)),
            'E' | 'e' => piece = Some(Piece::Control(Control::End)),
            'L' | 'l' => piece = Some(Piece::Control(Control::ContinueWithPass)),
            'R' | 'r' => piece = Some(Piece::Control(Control::Restart)),
            '+' => {
                if chars.get(i + 2) == Some(&'1') && matches!(chars.get(i + 3), Some('E' | 'e')) {
                    piece = Some(Piece::ExitNow);
                    consumed = 4;
                } else {
                    return Err(err(i, "`$+` must be written `$+1E` (end now)".into()));
                }
            }
            '\\' => piece = Some(Piece::Case(Case::Lower)),
            '^' => piece = Some(Piece::Case(Case::Upper)),
            '_' => piece = Some(Piece::Case(Case::AsIs)),
            '=' => piece = Some(Piece::LdapQuote),
            ':' | ';' => {
                let Some(&flag) = chars.get(i + 2) else {
                    return Err(err(
                        i,
                        format!("`${next}` must be followed by a flag letter"),
                    ));
                };
                piece = Some(Piece::FlagIf {
                    flag: flag.to_ascii_uppercase(),
                    set: next == ':',
                });
                consumed = 3;
            }
            '?' => {
                let Some(len) = chars[i + 2..].iter().position(|&c| c == '?') else {
                    return Err(err(i, "`$?` must be written `$?percent?`".into()));
                };
                let digits: String = chars[i + 2..i + 2 + len].iter().collect();
                let percent = digits
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| err(i, format!("`$?{digits}?`: a percentage from 0 to 100")))?;
                piece = Some(Piece::Chance(percent));
                consumed = len + 3;
            }
            '|' => {
                let (inner, end) = compile_pieces(chars, i + 2, Some('|'))?;
                if end >= chars.len() {
                    return Err(err(i, "`$|` table lookup without its closing `|`".into()));
                }
                let (table, argument) = split_table_call(inner).ok_or_else(|| {
                    err(
                        i,
                        "`$|TABLE;argument|`: the table name and `;` are missing".into(),
                    )
                })?;
                piece = Some(Piece::TableCall { table, argument });
                consumed = end + 1 - i;
            }
            '{' | ']' | '[' | '}' | '#' => {
                let (close, what) = match next {
                    '{' => ('}', "general database lookup (${...})"),
                    ']' => ('[', "LDAP lookup ($]...[)"),
                    '[' => (']', "site routine call ($[...])"),
                    '}' => ('{', "domain attribute lookup ($}...{)"),
                    _ => ('#', "sequence number ($#...#)"),
                };
                let Some(len) = chars[i + 2..].iter().position(|&c| c == close) else {
                    return Err(err(i, format!("`${next}` without its closing `{close}`")));
                };
                consumed = len + 3;
                piece = Some(Piece::Unsupported(Unsupported {
                    what,
                    text: chars[i..i + consumed].iter().collect(),
                }));
            }
            '<' | '>' => piece = Some(Piece::Flag(next)),
            l if l.is_ascii_alphabetic() => piece = Some(Piece::Flag(l.to_ascii_uppercase())),
            other => {
                return Err(err(
                    i,
                    format!(
                        "`${other}` has no meaning in a template (write `$$` for a dollar sign)"
                    ),
                ))
            }
        }
        if let Some(p) = piece {
            flush(&mut literal, &mut pieces);
            pieces.push(p);
        }
        i += consumed;
    }
    if let Some(s) = stop {
        return Err(err(start, format!("missing closing `{s}`")));
    }
    flush(&mut literal, &mut pieces);
    Ok((pieces, i))
}

/// `TABLE;argument` as compiled pieces → the table name and the argument's pieces.
fn split_table_call(inner: Vec<Piece>) -> Option<(String, Vec<Piece>)> {
    let mut iter = inner.into_iter();
    let Some(Piece::Literal(first)) = iter.next() else {
        return None;
    };
    let (table, rest) = first.split_once(';')?;
    let mut argument = Vec::new();
    if !rest.is_empty() {
        argument.push(Piece::Literal(rest.to_string()));
    }
    argument.extend(iter);
    let table = table.trim();
    (!table.is_empty()).then(|| (table.to_string(), argument))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment with no tables, no input flags, a fixed chance and a list of reports.
    #[derive(Default)]
    struct Quiet {
        reported: Vec<String>,
    }

    impl Environment for Quiet {
        fn call_table(&mut self, _table: &str, _input: &str) -> Option<String> {
            None
        }
        fn input_flag(&self, _flag: char) -> bool {
            false
        }
        fn percent(&mut self) -> u8 {
            50
        }
        fn unsupported(&mut self, what: &Unsupported) {
            self.reported.push(what.text.clone());
        }
    }

    fn expand(template: &str, captures: &[&str]) -> Expansion {
        let caps: Vec<String> = captures.iter().map(|s| s.to_string()).collect();
        Template::compile(template)
            .expect("compiles")
            .expand(&caps, &mut Quiet::default())
    }

    fn done(output: &str, flags: &str, control: Control) -> Expansion {
        Expansion::Done {
            output: output.into(),
            flags: flags.chars().collect(),
            control,
        }
    }

    #[test]
    fn seed_reject_template() {
        assert_eq!(
            expand("$N500$ Do$ not$ connect$ to$ this$ machine", &[]),
            done("500 Do not connect to this machine", "N", Control::End)
        );
    }

    #[test]
    fn documented_wildcard_numbering() {
        assert_eq!(
            expand("$1@$0.psi.siroe.com", &["1234", "USER"]),
            done("USER@1234.psi.siroe.com", "", Control::End)
        );
    }

    #[test]
    fn end_overrides_an_earlier_continue() {
        assert_eq!(expand("$Ca$E", &[]), done("a", "", Control::End));
        assert_eq!(expand("$Ea$C", &[]), done("a", "", Control::Continue));
    }

    #[test]
    fn exit_now_ignores_the_rest() {
        assert_eq!(expand("a$+1Eb$N", &[]), done("a", "", Control::End));
    }

    #[test]
    fn unsupported_substitution_fails_the_entry_and_is_reported() {
        let mut q = Quiet::default();
        let t = Template::compile("$C$[IMTA_LIB:x.so,f,$1]$N421$E").expect("compiles");
        assert_eq!(t.unsupported().len(), 1);
        assert_eq!(t.expand(&[], &mut q), Expansion::Failed { continued: true });
        assert_eq!(q.reported, ["$[IMTA_LIB:x.so,f,$1]"]);
    }
}
