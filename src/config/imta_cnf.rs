//! `imta.cnf`: rewrite rules, then channel blocks; the LMTP images find their channel here.
//!
//! Grammar: `parsers/imta_cnf.pest`, one logical line at a time (continuation lines joined
//! with one blank). Structure (Sun JSMS 6 Admin Reference, "MTA Configuration File"):
//!
//! ```text
//! ! rewrite rules, up to the first blank line
//! $*    $A$E$F@tcp_local-daemon
//!
//! defaults logging                   <- keywords inherited by the blocks after it
//!
//! tcp_lmtpss lmtp                    <- channel name and keywords
//! tcp_lmtpss-daemon                  <- official host name [local-host alias]
//!                                    <- a blank line ends the block
//! ```
//!
//! `!` in column 1 is a comment anywhere and never counts as a blank line; `<file` in column 1
//! includes a file. Keywords take arguments by the table in [`super::keywords`].
//!
//! Leniencies, each with a warning: the seed's minimal file has no blank line before its first
//! channel block, so by the grammar its channel lines would be rewrite rules; a group of lines
//! at the end of the rewrite section that cannot be rewrite rules and has the shape of a channel
//! block is read as one. Several blank lines in a row count as one; a line of blanks counts as
//! blank. Errors: a block without an official host name, a host or channel defined twice, a
//! keyword without its argument, a comment between continued lines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pest::Parser;
use pest_derive::Parser;

use super::error::{ConfigError, Diagnostics, Loc};
use super::integer::parse_int;
use super::keywords::{self, Arity};
use super::lines::{ends_in_backslash, logical_lines};
use super::source::{self, Line, ResolvePath};

#[derive(Parser)]
#[grammar = "../parsers/imta_cnf.pest"]
struct ImtaCnfGrammar;

/// Longest official host name, alias or proper name the original accepts.
pub const MAX_HOST: usize = 128;
/// Physical line length the original documents.
pub const MAX_LINE: usize = 252;

/// A rewrite rule, kept but never evaluated (the back-end store does no address rewriting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteRule {
    pub pattern: String,
    pub template: String,
    pub loc: Loc,
}

/// A channel keyword and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyword {
    /// Lower case.
    pub name: String,
    pub args: Vec<String>,
    pub loc: Loc,
}

/// A channel block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Lower case.
    pub name: String,
    pub loc: Loc,
    /// Written on the channel's own line.
    pub keywords: Vec<Keyword>,
    /// From the `defaults` lines in force, less those the channel's own keywords override.
    pub inherited: Vec<Keyword>,
    pub official_host: String,
    pub local_alias: Option<String>,
    pub hosts: Vec<(String, Option<String>)>,
}

impl Channel {
    /// Inherited keywords first, then the channel's own.
    pub fn effective_keywords(&self) -> Vec<&Keyword> {
        self.inherited.iter().chain(&self.keywords).collect()
    }

    pub fn keyword(&self, name: &str) -> Option<&Keyword> {
        let n = name.to_ascii_lowercase();
        self.effective_keywords().into_iter().find(|k| k.name == n)
    }

    pub fn has_keyword(&self, name: &str) -> bool {
        self.keyword(name).is_some()
    }

    /// Carries `lmtp` or one of its line-terminator variants.
    pub fn is_lmtp(&self) -> bool {
        self.effective_keywords()
            .iter()
            .any(|k| k.name == "lmtp" || k.name.starts_with("lmtp_"))
    }

    /// Keywords the table does not know (the original takes them for group ids).
    pub fn unknown_keywords(&self) -> Vec<&Keyword> {
        self.keywords
            .iter()
            .filter(|k| keywords::arity(&k.name).is_none())
            .collect()
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImtaCnf {
    pub rewrite_rules: Vec<RewriteRule>,
    pub channels: Vec<Channel>,
}

impl ImtaCnf {
    /// The channel named `name` (compared in lower case).
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        let n = name.to_ascii_lowercase();
        self.channels.iter().find(|c| c.name == n)
    }
}

/// What a logical line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Blank { loc: Loc, only_blanks: bool },
    Words(Vec<(String, Loc)>),
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::words | Rule::word => "words separated by blanks",
        Rule::comment => "a `!` comment",
        Rule::include | Rule::include_spec => "a file name after `<`",
        Rule::blank => "a blank line",
        Rule::line | Rule::EOI | Rule::ws | Rule::quoted => "the end of the line",
    }
}

/// Parses one file's text into statements and include lines (includes not followed).
pub fn parse_lines(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<Vec<Line<Statement>>, ConfigError> {
    for (i, l) in text.lines().enumerate() {
        if l.chars().count() > MAX_LINE {
            diags.warn(
                Loc::new(file, i + 1, MAX_LINE + 1),
                format!("line longer than {MAX_LINE} characters, the original's limit"),
            );
        }
    }
    let mut out = Vec::new();
    for logical in logical_lines(text, " ", ends_in_backslash) {
        for (offset, line) in logical.continuation_lines() {
            if logical.text[..].chars().nth(offset) == Some('!') {
                return Err(ConfigError::other(
                    Loc::new(file, line, 1),
                    "a comment line cannot continue the line before it (remove the `\\` at \
                     the end of that line, or the comment)",
                ));
            }
        }
        let pairs = ImtaCnfGrammar::parse(Rule::line, &logical.text)
            .map_err(|e| logical.parse_error(file, e, describe))?;
        for pair in pairs.flatten() {
            let loc = logical.loc_of_byte(file, pair.as_span().start());
            match pair.as_rule() {
                Rule::include_spec => out.push(Line::Include {
                    spec: pair.as_str().trim().to_string(),
                    loc,
                }),
                Rule::blank => out.push(Line::Item(Statement::Blank {
                    loc,
                    only_blanks: !pair.as_str().is_empty(),
                })),
                Rule::words => {
                    let words = pair
                        .into_inner()
                        .filter(|w| w.as_rule() == Rule::word)
                        .map(|w| {
                            let l = logical.loc_of_byte(file, w.as_span().start());
                            (w.as_str().to_string(), l)
                        })
                        .collect();
                    out.push(Line::Item(Statement::Words(words)));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

type WordLine = Vec<(String, Loc)>;

/// Builds the rewrite rules and channels from the statements of the file and its includes.
pub fn assemble(
    statements: Vec<Statement>,
    diags: &mut Diagnostics,
) -> Result<ImtaCnf, ConfigError> {
    // Split into the rewrite section and the blocks.
    let mut rules: Vec<WordLine> = Vec::new();
    let mut blocks: Vec<Vec<WordLine>> = Vec::new();
    let mut in_rules = true;
    let mut previous_blank: Option<Loc> = None;
    for st in statements {
        match st {
            Statement::Blank { loc, only_blanks } => {
                if only_blanks {
                    diags.warn(loc.clone(), "a line of blanks counts as a blank line");
                }
                if let Some(prev) = &previous_blank {
                    diags.warn(
                        loc.clone(),
                        format!(
                            "several blank lines in a row (from line {}); one is enough to end \
                             the rewrite rules or a channel block",
                            prev.line
                        ),
                    );
                }
                in_rules = false;
                previous_blank.get_or_insert(loc);
            }
            Statement::Words(words) => {
                if in_rules {
                    rules.push(words);
                } else {
                    if previous_blank.is_some() || blocks.is_empty() {
                        blocks.push(Vec::new());
                    }
                    if let Some(b) = blocks.last_mut() {
                        b.push(words);
                    }
                }
                previous_blank = None;
            }
        }
    }

    // The seed's trap: channel lines before the first blank line.
    if let Some(start) = misplaced_block_start(&rules) {
        let (name, loc) = &rules[start][0];
        diags.warn(
            loc.clone(),
            format!(
                "channel block `{name}` before the first blank line; treated as a channel \
                 (put a blank line before it: by the original's rules these lines are \
                 rewrite rules)"
            ),
        );
        blocks.insert(0, rules.split_off(start));
    }

    let rewrite_rules = rules
        .into_iter()
        .map(|mut words| {
            let (pattern, loc) = words.remove(0);
            let template = words
                .into_iter()
                .map(|(w, _)| w)
                .collect::<Vec<_>>()
                .join(" ");
            RewriteRule {
                pattern,
                template,
                loc,
            }
        })
        .collect();

    let mut channels: Vec<Channel> = Vec::new();
    let mut defaults: Vec<Keyword> = Vec::new();
    let mut hosts: HashMap<String, Loc> = HashMap::new();
    for block in blocks {
        let mut lines = block.into_iter();
        let Some(mut first) = lines.next() else {
            continue;
        };
        let (name_word, name_loc) = first.remove(0);
        let name = name_word.to_ascii_lowercase();
        let own = parse_keywords(first, diags)?;
        match name.as_str() {
            "defaults" => {
                for k in own {
                    defaults.retain(|d| keywords::family(&d.name) != keywords::family(&k.name));
                    defaults.push(k);
                }
                continue;
            }
            "nodefaults" => {
                defaults.clear();
                continue;
            }
            _ => {}
        }
        check_channel_name(&name_word, &name_loc, diags);
        if let Some(c) = channels.iter().find(|c| c.name == name) {
            return Err(ConfigError::other(
                name_loc,
                format!(
                    "channel {name} is defined twice (first at line {})",
                    c.loc.line
                ),
            ));
        }
        let Some(official) = lines.next() else {
            return Err(ConfigError::other(
                name_loc,
                format!(
                    "no official host name for channel {name} (the line after the channel's \
                     keywords must name its host, with no blank line between)"
                ),
            ));
        };
        let (official_host, local_alias) = host_line(official, &mut hosts)?;
        let mut others = Vec::new();
        for line in lines {
            others.push(host_line(line, &mut hosts)?);
        }
        let own_families: Vec<String> = own.iter().map(|k| keywords::family(&k.name)).collect();
        let inherited = defaults
            .iter()
            .filter(|d| !own_families.contains(&keywords::family(&d.name)))
            .cloned()
            .collect();
        channels.push(Channel {
            name,
            loc: name_loc,
            keywords: own,
            inherited,
            official_host,
            local_alias,
            hosts: others,
        });
    }
    Ok(ImtaCnf {
        rewrite_rules,
        channels,
    })
}

/// Where a channel block starts inside the rewrite section, if it ends in one: from the first
/// line that cannot be a rewrite rule (one word, or a template with none of `@ $ %`), the
/// rest must be a name line followed by host lines of one or two words.
fn misplaced_block_start(rules: &[WordLine]) -> Option<usize> {
    let not_a_rule =
        |w: &WordLine| w.len() == 1 || (w.len() == 2 && !w[1].0.contains(['@', '$', '%']));
    let start = rules.iter().position(not_a_rule)?;
    let tail = &rules[start..];
    let hosts_ok = tail.len() >= 2 && tail[1..].iter().all(|w| w.len() <= 2);
    hosts_ok.then_some(start)
}

/// Keywords and their arguments from the words after the channel name.
fn parse_keywords(words: WordLine, diags: &mut Diagnostics) -> Result<Vec<Keyword>, ConfigError> {
    let mut out = Vec::new();
    let mut iter = words.into_iter().peekable();
    while let Some((word, loc)) = iter.next() {
        if parse_int(&word).is_ok() {
            diags.warn(
                loc,
                format!("`{word}`: a number that no keyword before it takes; ignored"),
            );
            continue;
        }
        let name = word.to_ascii_lowercase();
        let missing = |what: &str| {
            ConfigError::other(loc.clone(), format!("keyword {name} needs {what} after it"))
        };
        let mut args = Vec::new();
        match keywords::arity(&name).unwrap_or(Arity::Flag) {
            Arity::Flag => {}
            Arity::Int => match iter.next_if(|(w, _)| parse_int(w).is_ok()) {
                Some((w, _)) => args.push(w),
                None => return Err(missing("a number")),
            },
            Arity::Ints => {
                while let Some((w, _)) = iter.next_if(|(w, _)| parse_int(w).is_ok()) {
                    args.push(w);
                }
                if args.is_empty() {
                    return Err(missing("one or more numbers"));
                }
            }
            Arity::Strings => {
                while let Some((w, _)) = iter.next_if(|(w, _)| w.starts_with('"')) {
                    args.push(w);
                }
                if args.is_empty() {
                    return Err(missing("one or more quoted strings"));
                }
            }
            Arity::Name | Arity::Template => match iter.next() {
                Some((w, _)) => args.push(w),
                None => return Err(missing("a value")),
            },
        }
        out.push(Keyword { name, args, loc });
    }
    Ok(out)
}

/// Channel names: lower-case letters, digits, `_`, `$`, `-` (the original says "should").
fn check_channel_name(name: &str, loc: &Loc, diags: &mut Diagnostics) {
    let odd = name
        .chars()
        .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_$-".contains(c)));
    if odd || name.chars().count() > 32 {
        diags.warn(
            loc.clone(),
            format!(
                "channel name `{name}`: the original wants at most 32 lower-case letters, \
                 digits, `_`, `$` or `-`; it is looked up in lower case"
            ),
        );
    }
}

/// A host line: host [alias]; hosts are unique across the whole file.
fn host_line(
    words: WordLine,
    seen: &mut HashMap<String, Loc>,
) -> Result<(String, Option<String>), ConfigError> {
    let mut iter = words.into_iter();
    let Some((host, loc)) = iter.next() else {
        return Err(ConfigError::nowhere(super::error::ErrorKind::Other(
            "internal error: empty host line".into(),
        )));
    };
    let alias = iter.next();
    if let Some((extra, extra_loc)) = iter.next() {
        return Err(ConfigError::other(
            extra_loc,
            format!("`{extra}`: a host line holds a host name and at most one alias"),
        ));
    }
    for (name, at) in std::iter::once((&host, &loc)).chain(alias.as_ref().map(|(a, l)| (a, l))) {
        if name.chars().count() > MAX_HOST {
            return Err(ConfigError::other(
                at.clone(),
                format!("host name too long (more than {MAX_HOST} characters)"),
            ));
        }
    }
    let key = host.to_ascii_lowercase();
    if let Some(first) = seen.get(&key) {
        return Err(ConfigError::other(
            loc,
            format!(
                "duplicate host in channel table: {host} (first at line {})",
                first.line
            ),
        ));
    }
    seen.insert(key, loc);
    Ok((host, alias.map(|(a, _)| a)))
}

/// Reads `path` and everything it includes.
pub fn load(
    path: &Path,
    resolver: &dyn ResolvePath,
    diags: &mut Diagnostics,
) -> Result<ImtaCnf, ConfigError> {
    let statements = source::load(path, resolver, diags, &parse_lines)?;
    assemble(statements, diags)
}

/// Parses text as if read from `file`, without includes (an include line is an error).
pub fn parse_str(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<ImtaCnf, ConfigError> {
    let statements = source::items_without_includes(file, text, diags, &parse_lines)?;
    assemble(statements, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(ImtaCnf, Diagnostics), ConfigError> {
        let file: Arc<Path> = Arc::from(Path::new("imta.cnf"));
        let mut d = Diagnostics::default();
        parse_str(&file, text, &mut d).map(|c| (c, d))
    }

    #[test]
    fn a_file_starting_with_a_blank_line_has_no_rules_and_no_warning() {
        let (c, d) = parse("\ntcp_lmtpss lmtp\ntcp_lmtpss-daemon\n").expect("parses");
        assert!(d.is_empty(), "{d:?}");
        assert!(c.rewrite_rules.is_empty());
        assert!(c.channel("tcp_lmtpss").is_some_and(Channel::is_lmtp));
    }

    #[test]
    fn keyword_arguments_are_consumed_by_arity() {
        let (c, d) = parse(
            "\nx maxjobs 7 pool P backoff \"pt2m\" \"pt5m\" notices 1 2 3 logging\nx-daemon\n",
        )
        .expect("parses");
        assert!(d.is_empty(), "{d:?}");
        let ch = c.channel("x").expect("channel");
        let got: Vec<(&str, usize)> = ch
            .keywords
            .iter()
            .map(|k| (k.name.as_str(), k.args.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("maxjobs", 1),
                ("pool", 1),
                ("backoff", 2),
                ("notices", 3),
                ("logging", 0)
            ]
        );
    }

    #[test]
    fn continued_keyword_line_is_one_line() {
        let (c, _) = parse("\nx threaddepth 20 \\\n   logging\nx-daemon\n").expect("parses");
        assert!(c.channel("x").is_some_and(|ch| ch.has_keyword("logging")));
    }

    #[test]
    fn keyword_without_its_number_is_an_error() {
        let err = parse("\nx maxjobs\nx-daemon\n").expect_err("missing");
        assert_eq!(
            err.to_string(),
            "imta.cnf:2:3: keyword maxjobs needs a number after it"
        );
    }
}
