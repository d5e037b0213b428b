//! The PMDF option-file syntax shared by `imta_tailor` and the channel option files.
//!
//! Grammar: `parsers/imta_tailor.pest`. A file is a list of `NAME=value` settings with `!`
//! comment lines and blank lines. This module only parses; what the names mean is decided by
//! [`super::tailor`] and [`super::channel_option`].

use std::path::Path;
use std::sync::Arc;

use pest::Parser;
use pest_derive::Parser;

use super::error::{from_pest, ConfigError, Loc};

#[derive(Parser)]
#[grammar = "../parsers/imta_tailor.pest"]
struct OptionFileGrammar;

/// One `NAME=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// As written.
    pub name: String,
    /// With blanks around it trimmed; may be empty.
    pub value: String,
    /// Where the name starts.
    pub loc: Loc,
    /// Where the value starts (for messages about the value).
    pub value_loc: Loc,
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::name => "an option name",
        Rule::equals => "`=` after the option name",
        Rule::setting => "a NAME=value line",
        Rule::comment => "a `!` comment",
        Rule::blank => "a blank line",
        Rule::value => "a value",
        Rule::file | Rule::EOI => "end of file",
        Rule::line | Rule::ws | Rule::rest_of_line => "a NAME=value line or a `!` comment",
    }
}

/// Parses an option file's text. `file` names it in error messages.
pub fn parse(file: &Arc<Path>, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let pairs = OptionFileGrammar::parse(Rule::file, text)
        .map_err(|e| from_pest(file, text, e, describe))?;
    let mut out = Vec::new();
    for pair in pairs.flatten().filter(|p| p.as_rule() == Rule::setting) {
        let mut name = None;
        let mut value = None;
        for part in pair.into_inner() {
            let (line, col) = part.line_col();
            match part.as_rule() {
                Rule::name => name = Some((part.as_str().to_string(), Loc::new(file, line, col))),
                Rule::value => {
                    value = Some((
                        part.as_str().trim_end().to_string(),
                        Loc::new(file, line, col),
                    ))
                }
                _ => {}
            }
        }
        if let (Some((name, loc)), Some((value, value_loc))) = (name, value) {
            out.push(Setting {
                name,
                value,
                loc,
                value_loc,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<Path> {
        Arc::from(Path::new("imta_tailor"))
    }

    #[test]
    fn reads_settings_comments_and_blanks() {
        let text = "! comment\n\nIMTA_ROOT=/opt/x/  \n  IMTA_LOG = /var/log/ \r\nEMPTY=\n";
        let got = parse(&file(), text).expect("parses");
        let pairs: Vec<(&str, &str)> = got.iter().map(|s| (&*s.name, &*s.value)).collect();
        assert_eq!(
            pairs,
            [
                ("IMTA_ROOT", "/opt/x/"),
                ("IMTA_LOG", "/var/log/"),
                ("EMPTY", "")
            ]
        );
        assert_eq!(got[1].loc.to_string(), "imta_tailor:4:3");
        assert_eq!(got[1].value_loc.col, 14);
    }

    #[test]
    fn missing_equals_is_reported_at_its_column() {
        let err = parse(&file(), "IMTA_ROOT=/x/\nIMTA_LOG /var/log/\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "imta_tailor:2:10: expected `=` after the option name, found `/var/log/`"
        );
    }

    #[test]
    fn line_that_is_no_setting_is_reported() {
        let err = parse(&file(), "=value\n").expect_err("bad");
        assert!(
            err.to_string().starts_with("imta_tailor:1:1: expected"),
            "{err}"
        );
    }
}
