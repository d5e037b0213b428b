//! Errors and warnings of the configuration readers, with the place they come from.
//!
//! Every message an administrator sees about a configuration file has the form
//! `FILE:LINE:COL: message`, where the message names the offending text in the words of the
//! original product (`MAX_CONNS=abc: not a whole number`). Errors stop a file from being used;
//! warnings are collected in [`Diagnostics`] and printed by `dispatcher --check` (and turned
//! into errors by `--check --strict`).
//!
//! This module only describes problems; it reads no files and decides nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a configuration file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Loc {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl Loc {
    pub fn new(file: &Arc<Path>, line: usize, col: usize) -> Loc {
        Loc {
            file: Arc::clone(file),
            line,
            col,
        }
    }

    /// The same line, another column.
    pub fn at_col(&self, col: usize) -> Loc {
        Loc {
            file: Arc::clone(&self.file),
            line: self.line,
            col,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// What went wrong, without the place.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text does not follow the file's syntax. `found` is the offending text.
    #[error("{expected}, found `{found}`")]
    Syntax { expected: String, found: String },
    /// A known option has a value it cannot take.
    #[error("{option}={value}: {reason}")]
    BadValue {
        option: String,
        value: String,
        reason: String,
    },
    #[error("include loop: {chain}")]
    IncludeLoop { chain: String },
    #[error("includes nested deeper than {limit} levels (at {path})")]
    IncludeTooDeep { limit: usize, path: String },
    /// A logical name (`IMTA_BIN:`) that the tailor file does not define.
    #[error("`{spec}`: the tailor file defines no {name} (add {name}=/some/dir/ to {tailor})")]
    UnknownLogicalName {
        spec: String,
        name: String,
        tailor: String,
    },
    /// Anything else, already phrased for the administrator.
    #[error("{0}")]
    Other(String),
}

/// An error in a configuration file, with the place it was found when there is one.
#[derive(Debug)]
pub struct ConfigError {
    pub loc: Option<Loc>,
    pub kind: ErrorKind,
}

impl ConfigError {
    pub fn at(loc: Loc, kind: ErrorKind) -> ConfigError {
        ConfigError {
            loc: Some(loc),
            kind,
        }
    }

    pub fn nowhere(kind: ErrorKind) -> ConfigError {
        ConfigError { loc: None, kind }
    }

    pub fn other(loc: Loc, message: impl Into<String>) -> ConfigError {
        ConfigError::at(loc, ErrorKind::Other(message.into()))
    }

    pub fn read(path: &Path, source: std::io::Error) -> ConfigError {
        ConfigError::nowhere(ErrorKind::Read {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Some(loc) => write!(f, "{loc}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// A warning: the file is usable, but something in it deserves the administrator's attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub loc: Option<Loc>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Some(loc) => write!(f, "{loc}: warning: {}", self.message),
            None => write!(f, "warning: {}", self.message),
        }
    }
}

/// Warnings collected while reading the configuration, in the order they were found.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    pub warnings: Vec<Warning>,
}

impl Diagnostics {
    pub fn warn(&mut self, loc: Loc, message: impl Into<String>) {
        self.warnings.push(Warning {
            loc: Some(loc),
            message: message.into(),
        });
    }

    pub fn warn_nowhere(&mut self, message: impl Into<String>) {
        self.warnings.push(Warning {
            loc: None,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty()
    }
}

/// Turns a pest failure into `FILE:LINE:COL: expected …, found `…``.
///
/// `describe` names each grammar rule in an administrator's words ("an OPTION=value line");
/// the raw rule names never reach the message.
pub fn from_pest<R: pest::RuleType>(
    file: &Arc<Path>,
    text: &str,
    err: pest::error::Error<R>,
    describe: fn(&R) -> &'static str,
) -> ConfigError {
    use pest::error::{ErrorVariant, LineColLocation};
    let (line, col) = match err.line_col {
        LineColLocation::Pos(p) => p,
        LineColLocation::Span(p, _) => p,
    };
    let expected = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } if !positives.is_empty() => {
            let mut names: Vec<&str> = positives.iter().map(describe).collect();
            names.dedup();
            format!("expected {}", join_alternatives(&names))
        }
        ErrorVariant::ParsingError { .. } => "unexpected text".to_string(),
        ErrorVariant::CustomError { message } => message.clone(),
    };
    ConfigError::at(
        Loc::new(file, line, col),
        ErrorKind::Syntax {
            expected,
            found: offending_text(text, line, col),
        },
    )
}

/// "a, b or c".
fn join_alternatives(names: &[&str]) -> String {
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {}", rest.join(", "), last),
    }
}

/// The rest of line `line` from column `col`, trimmed, at most 60 characters; `end of line`
/// when nothing is left.
pub fn offending_text(text: &str, line: usize, col: usize) -> String {
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else {
        return "end of file".to_string();
    };
    let rest: String = l
        .chars()
        .skip(col.saturating_sub(1))
        .collect::<String>()
        .trim()
        .to_string();
    if rest.is_empty() {
        return "end of line".to_string();
    }
    let mut shown: String = rest.chars().take(60).collect();
    if rest.chars().count() > 60 {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_prints_as_file_line_col() {
        let file: Arc<Path> = Arc::from(Path::new("/c/dispatcher.cnf"));
        let e = ConfigError::at(
            Loc::new(&file, 14, 11),
            ErrorKind::BadValue {
                option: "MAX_CONNS".into(),
                value: "abc".into(),
                reason: "not a whole number".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "/c/dispatcher.cnf:14:11: MAX_CONNS=abc: not a whole number"
        );
    }

    #[test]
    fn offending_text_is_the_rest_of_the_line() {
        assert_eq!(offending_text("a\nPORT 225  \n", 2, 5), "225");
        assert_eq!(offending_text("a\n", 1, 2), "end of line");
        assert_eq!(offending_text("a\n", 7, 1), "end of file");
    }

    #[test]
    fn alternatives_read_as_a_sentence() {
        assert_eq!(join_alternatives(&["a", "b", "c"]), "a, b or c");
        assert_eq!(join_alternatives(&["a"]), "a");
    }
}
