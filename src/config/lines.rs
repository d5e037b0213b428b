//! Logical lines: physical lines joined where one ends in a continuation backslash.
//!
//! `mappings` and `imta.cnf` let a long line continue on the next when it ends in `\`. Their
//! grammars parse one logical line at a time; this module builds those lines and remembers,
//! for every joined piece, where it stands in the file, so that a position in a logical line
//! turns back into the file's own line and column for error messages.

use std::path::Path;
use std::sync::Arc;

use super::error::{from_pest, offending_text, ConfigError, ErrorKind, Loc};

/// A logical line and where its pieces come from.
#[derive(Debug, Clone)]
pub struct LogicalLine {
    pub text: String,
    /// (character offset in `text`, physical line number, column of that character).
    pieces: Vec<(usize, usize, usize)>,
}

impl LogicalLine {
    /// The file position of character `offset` (0-based) of the logical line.
    pub fn loc(&self, file: &Arc<Path>, offset: usize) -> Loc {
        let (start, line, col) = self
            .pieces
            .iter()
            .rev()
            .find(|(s, _, _)| *s <= offset)
            .copied()
            .unwrap_or((0, 1, 1));
        Loc::new(file, line, col + offset - start)
    }

    /// The file position of a byte offset into `text`.
    pub fn loc_of_byte(&self, file: &Arc<Path>, byte: usize) -> Loc {
        let byte = byte.min(self.text.len());
        self.loc(file, self.text[..byte].chars().count())
    }

    /// The physical line numbers after the first, i.e. the continuation lines.
    pub fn continuation_lines(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.pieces
            .iter()
            .skip(1)
            .map(|&(offset, line, _)| (offset, line))
    }

    /// A pest failure on this line, placed in the file.
    pub fn parse_error<R: pest::RuleType>(
        &self,
        file: &Arc<Path>,
        err: pest::error::Error<R>,
        describe: fn(&R) -> &'static str,
    ) -> ConfigError {
        let byte = match err.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((p, _)) => p,
        };
        let chars = self.text[..byte.min(self.text.len())].chars().count();
        let mut e = from_pest(file, &self.text, err, describe);
        if let ErrorKind::Syntax { found, .. } = &mut e.kind {
            *found = offending_text(&self.text, 1, chars + 1);
        }
        e.loc = Some(self.loc(file, chars));
        e
    }
}

/// Splits `text` into logical lines: a physical line for which `continues` is true is joined
/// to the next, its last character (the `\`) removed and `joiner` put in its place.
pub fn logical_lines(text: &str, joiner: &str, continues: fn(&str) -> bool) -> Vec<LogicalLine> {
    let mut out: Vec<LogicalLine> = Vec::new();
    let mut open: Option<LogicalLine> = None;
    let body = text.strip_suffix('\n').unwrap_or(text);
    for (i, raw) in body.split('\n').enumerate() {
        let phys = raw.strip_suffix('\r').unwrap_or(raw);
        let more = continues(phys);
        let kept = if more { &phys[..phys.len() - 1] } else { phys };
        let current = open.get_or_insert_with(|| LogicalLine {
            text: String::new(),
            pieces: Vec::new(),
        });
        if !current.pieces.is_empty() {
            current.text.push_str(joiner);
        }
        current
            .pieces
            .push((current.text.chars().count(), i + 1, 1));
        current.text.push_str(kept);
        if !more {
            out.extend(open.take());
        }
    }
    out.extend(open);
    out
}

/// A trailing `\` continues the line.
pub fn ends_in_backslash(line: &str) -> bool {
    line.ends_with('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_pieces_keep_their_file_positions() {
        let lines = logical_lines("a\\\n  b\nc\n", " ", ends_in_backslash);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "a   b");
        let file: Arc<Path> = Arc::from(Path::new("f"));
        assert_eq!(lines[0].loc(&file, 4).to_string(), "f:2:3");
        assert_eq!(lines[1].loc(&file, 0).to_string(), "f:3:1");
    }

    #[test]
    fn crlf_and_a_missing_final_newline_are_fine() {
        let lines = logical_lines("a\r\nb", "", ends_in_backslash);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
    }
}
