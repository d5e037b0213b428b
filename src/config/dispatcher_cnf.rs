//! `dispatcher.cnf` as written: global options, `[SERVICE=name]` sections, includes.
//!
//! Grammar: `parsers/dispatcher_cnf.pest`. This module turns the parse into
//! [`DispatcherCnf`]: the options before the first section (the globals) and each section's
//! options, every one with the place it was written. It does not know which options exist or
//! what values they take; [`super::service`] does that with the table in [`super::options`].
//!
//! Decisions where the original documents nothing (see `docs/configuration.md`):
//! option names and service names are compared case-blind (`imsimta restart lmtpss` names
//! `[SERVICE=LMTPSS]`); a comment is a line whose first non-blank character is `!`; blanks
//! around `=` and at the end of a line are dropped, blanks inside a value kept; a second
//! `[SERVICE=X]` for the same X is an error.

use std::path::Path;
use std::sync::Arc;

use pest::Parser;
use pest_derive::Parser;

use super::error::{from_pest, ConfigError, Diagnostics, ErrorKind, Loc};
use super::source::{self, Line, ResolvePath};

#[derive(Parser)]
#[grammar = "../parsers/dispatcher_cnf.pest"]
struct DispatcherCnfGrammar;

/// One `OPTION=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionLine {
    /// As written; compare with [`OptionLine::key`].
    pub name: String,
    /// Trimmed at both ends; may be empty.
    pub value: String,
    pub loc: Loc,
    pub value_loc: Loc,
}

impl OptionLine {
    /// The option name in upper case, as the option table spells it.
    pub fn key(&self) -> String {
        self.name.to_ascii_uppercase()
    }
}

/// A `[SERVICE=name]` section and the options written under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// As written in the header.
    pub name: String,
    pub loc: Loc,
    pub options: Vec<OptionLine>,
}

/// The whole file, includes spliced in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatcherCnf {
    /// Options before the first section: defaults for every service.
    pub globals: Vec<OptionLine>,
    pub sections: Vec<Section>,
}

impl DispatcherCnf {
    /// The section named `name`, compared case-blind.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

/// What one line contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Section { name: String, loc: Loc },
    Option(OptionLine),
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::option | Rule::option_name => "an OPTION=value line",
        Rule::equals => "`=`",
        Rule::value => "a value",
        Rule::section | Rule::open_bracket => "a [SERVICE=name] section header",
        Rule::service_keyword => "`SERVICE` in the section header",
        Rule::service_name => "a service name (letters, digits, `_`, `-`)",
        Rule::close_bracket => "`]` to close the section header",
        Rule::after_header => "the end of the line after `]`",
        Rule::include | Rule::include_spec => "a file name after `<`",
        Rule::comment => "a `!` comment",
        Rule::blank => "a blank line",
        Rule::file | Rule::EOI => "end of file",
        Rule::line | Rule::ws | Rule::rest_of_line => {
            "an OPTION=value line, a [SERVICE=name] header, a <file include or a `!` comment"
        }
    }
}

/// Parses one file's text into statements and include lines (no includes followed).
pub fn parse_lines(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<Vec<Line<Statement>>, ConfigError> {
    let pairs = DispatcherCnfGrammar::parse(Rule::file, text)
        .map_err(|e| from_pest(file, text, e, describe))?;
    let loc_of = |p: &pest::iterators::Pair<Rule>| {
        let (line, col) = p.line_col();
        Loc::new(file, line, col)
    };
    let mut out = Vec::new();
    for pair in pairs.flatten() {
        match pair.as_rule() {
            Rule::section => {
                let mut name = None;
                for part in pair.into_inner() {
                    match part.as_rule() {
                        Rule::service_name => name = Some(part),
                        Rule::after_header => {
                            return Err(ConfigError::at(
                                loc_of(&part),
                                ErrorKind::Syntax {
                                    expected: "expected the end of the line after `]`".into(),
                                    found: part.as_str().trim_end().to_string(),
                                },
                            ))
                        }
                        _ => {}
                    }
                }
                if let Some(name) = name {
                    out.push(Line::Item(Statement::Section {
                        name: name.as_str().to_string(),
                        loc: loc_of(&name),
                    }));
                }
            }
            Rule::option => {
                let mut name = None;
                let mut value = None;
                for part in pair.into_inner() {
                    match part.as_rule() {
                        Rule::option_name => {
                            name = Some((part.as_str().to_string(), loc_of(&part)))
                        }
                        Rule::value => {
                            value = Some((part.as_str().trim().to_string(), loc_of(&part)))
                        }
                        _ => {}
                    }
                }
                if let (Some((name, loc)), Some((value, value_loc))) = (name, value) {
                    if value.ends_with('!') {
                        diags.warn(
                            value_loc.clone(),
                            format!(
                                "{name}={value}: a value ending in `!` looks like a comment line \
                                 run into this one; comments must be on lines of their own"
                            ),
                        );
                    }
                    out.push(Line::Item(Statement::Option(OptionLine {
                        name,
                        value,
                        loc,
                        value_loc,
                    })));
                }
            }
            Rule::include_spec => out.push(Line::Include {
                spec: pair.as_str().trim().to_string(),
                loc: loc_of(&pair),
            }),
            _ => {}
        }
    }
    Ok(out)
}

/// Groups a flat list of statements (includes already spliced) into globals and sections.
pub fn assemble(statements: Vec<Statement>) -> Result<DispatcherCnf, ConfigError> {
    let mut cnf = DispatcherCnf::default();
    for st in statements {
        match st {
            Statement::Section { name, loc } => {
                if let Some(first) = cnf.section(&name) {
                    return Err(ConfigError::other(
                        loc,
                        format!(
                            "[SERVICE={name}] appears twice (first at {}); \
                             merge the two sections",
                            first.loc
                        ),
                    ));
                }
                cnf.sections.push(Section {
                    name,
                    loc,
                    options: Vec::new(),
                });
            }
            Statement::Option(opt) => match cnf.sections.last_mut() {
                Some(section) => section.options.push(opt),
                None => cnf.globals.push(opt),
            },
        }
    }
    Ok(cnf)
}

/// Reads `path` and everything it includes.
pub fn load(
    path: &Path,
    resolver: &dyn ResolvePath,
    diags: &mut Diagnostics,
) -> Result<DispatcherCnf, ConfigError> {
    assemble(source::load(path, resolver, diags, &parse_lines)?)
}

/// Parses text as if read from `file`, without includes (an include line is an error).
pub fn parse_str(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<DispatcherCnf, ConfigError> {
    let statements = source::items_without_includes(file, text, diags, &parse_lines)?;
    assemble(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(DispatcherCnf, Diagnostics), ConfigError> {
        let file: Arc<Path> = Arc::from(Path::new("dispatcher.cnf"));
        let mut d = Diagnostics::default();
        parse_str(&file, text, &mut d).map(|c| (c, d))
    }

    #[test]
    fn globals_come_before_the_first_section() {
        let (cnf, _) = parse("MAX_CONNS=20\n[SERVICE=SMTP]\nPORT=25\n").expect("parses");
        assert_eq!(cnf.globals.len(), 1);
        assert_eq!(cnf.globals[0].name, "MAX_CONNS");
        assert_eq!(cnf.sections[0].name, "SMTP");
        assert_eq!(cnf.sections[0].options[0].value, "25");
    }

    #[test]
    fn blanks_around_equals_and_at_end_are_dropped_inner_blanks_kept() {
        let (cnf, _) = parse("[SERVICE=X]\n  PARAMETER = CHANNEL=a b  \t\n").expect("parses");
        let opt = &cnf.sections[0].options[0];
        assert_eq!(opt.value, "CHANNEL=a b");
        assert_eq!(opt.loc.col, 3);
        assert_eq!(opt.value_loc.col, 15);
    }

    #[test]
    fn comment_may_follow_leading_blanks() {
        let (cnf, _) = parse("  ! INTERFACE_ADDRESS=!\n!listen\n").expect("parses");
        assert!(cnf.globals.is_empty() && cnf.sections.is_empty());
    }

    #[test]
    fn section_names_are_case_blind_and_unique() {
        let err = parse("[SERVICE=LMTPSS]\n[service=lmtpss]\n").expect_err("twice");
        assert_eq!(
            err.to_string(),
            "dispatcher.cnf:2:10: [SERVICE=lmtpss] appears twice (first at dispatcher.cnf:1:10); \
             merge the two sections"
        );
    }

    #[test]
    fn line_without_equals_is_a_syntax_error_at_its_column() {
        let err = parse("[SERVICE=X]\nPORT 225\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "dispatcher.cnf:2:6: expected `=`, found `225`"
        );
    }

    #[test]
    fn unclosed_section_header_is_a_syntax_error() {
        let err = parse("[SERVICE=X\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "dispatcher.cnf:1:11: expected `]` to close the section header, found `end of line`"
        );
    }

    #[test]
    fn text_after_section_header_is_a_syntax_error() {
        let err = parse("[SERVICE=X] PORT=1\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "dispatcher.cnf:1:13: expected the end of the line after `]`, found `PORT=1`"
        );
    }

    #[test]
    fn value_ending_in_bang_warns() {
        let (_, d) = parse("[SERVICE=X]\nINTERFACE_ADDRESS=!\n").expect("parses");
        assert_eq!(d.warnings.len(), 1);
        assert_eq!(d.warnings[0].loc.as_ref().map(|l| l.col), Some(19));
    }
}
