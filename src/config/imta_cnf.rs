//! `imta.cnf`: rewrite rules, then channel blocks; the LMTP images find their channel here.
//!
//! Grammar: `parsers/imta_cnf.pest`, one logical line at a time (a line ending in `\` is
//! joined to the next with one blank). Structure (Sun JSMS 6 Admin Reference, "MTA
//! Configuration File"; PMDF System Manager's Guide 2.2-2.3):
//!
//! ```text
//! ! rewrite rules, up to the first blank line
//! $*    $A$E$F@tcp_local-daemon
//!
//! defaults logging                   <- keywords inherited by the blocks after it
//!
//! tcp_lmtpss lmtp                    <- channel name and keywords
//! tcp_lmtpss-daemon                  <- official host name [local-host alias]
//! lmtp.example.com                   <- more host names [proper name]
//!                                    <- a blank line ends the block
//! ```
//!
//! `!` in column 1 is a comment anywhere and never counts as a blank line; `<file` in column 1
//! includes a file ([`super::source`] splices it). Keywords take arguments by the table in
//! [`super::keywords`]; a word the table does not know is kept as an argument-less keyword.
//! `defaults kw...` adds to the keywords later blocks inherit, `nodefaults` forgets them; a
//! channel's own keyword beats an inherited one of the same family (own `nologging` beats
//! inherited `logging`).
//!
//! Leniencies, each with a warning (`docs/imta-cnf.md` lists them): the seed's minimal file has
//! no blank line before its first channel block, so by the grammar its channel lines would be
//! rewrite rules; lines at the end of the rewrite section that cannot be rewrite rules and have
//! the shape of a channel block are read as one. Several blank lines in a row count as one; a
//! line of blanks counts as blank; a `\` before a blank line or the end of the file continues
//! nothing. Errors: a block without an official host name, a host or channel defined twice, a
//! host name over 128 characters, a keyword without its argument, a comment or include line
//! between continued lines.
//!
//! Rewrite rules are kept as written and never evaluated: a back-end store does no address
//! rewriting. This module reads files only through [`super::source`] and starts nothing.

use std::collections::HashMap;
use std::iter::Peekable;
use std::path::Path;
use std::sync::Arc;

use pest::Parser;
use pest_derive::Parser;

use super::error::{ConfigError, Diagnostics, Loc};
use super::integer::parse_int;
use super::keywords::{self, Arity};
use super::lines::{logical_lines, LogicalLine};
use super::source::{self, Line, ResolvePath};

#[derive(Parser)]
#[grammar = "../parsers/imta_cnf.pest"]
struct ImtaCnfGrammar;

/// Longest official host name, alias or proper name the original accepts ("128 octets").
pub const MAX_HOST: usize = 128;
/// Physical line length the original documents ("most files").
pub const MAX_LINE: usize = 252;
/// Longest channel name the original documents.
pub const MAX_CHANNEL_NAME: usize = 32;

/// A rewrite rule, kept but never evaluated (the back-end store does no address rewriting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteRule {
    pub pattern: String,
    /// The rest of the line, words joined by one blank.
    pub template: String,
    pub loc: Loc,
}

/// A channel keyword and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyword {
    /// Lower case (and at most [`keywords::MAX_KEYWORD`] characters, as the original reads it).
    pub name: String,
    /// As written, quotes included (`"pt2m"`).
    pub args: Vec<String>,
    pub loc: Loc,
}

/// A channel block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Lower case.
    pub name: String,
    /// Where the name is written.
    pub loc: Loc,
    /// Written on the channel's own line; of several keywords of one family, the last.
    pub keywords: Vec<Keyword>,
    /// From the `defaults` lines in force, less those the channel's own keywords override.
    pub inherited: Vec<Keyword>,
    pub official_host: String,
    pub local_alias: Option<String>,
    /// Host names of lines 3.., each with its optional proper name.
    pub hosts: Vec<(String, Option<String>)>,
}

impl Channel {
    /// The keywords that apply: inherited first, then the channel's own. No two are of one
    /// family.
    pub fn effective_keywords(&self) -> Vec<&Keyword> {
        self.inherited.iter().chain(&self.keywords).collect()
    }

    /// The keyword `name` (any case), if it applies to the channel.
    pub fn keyword(&self, name: &str) -> Option<&Keyword> {
        let n = name.to_ascii_lowercase();
        self.effective_keywords()
            .into_iter()
            .rev()
            .find(|k| k.name == n)
    }

    pub fn has_keyword(&self, name: &str) -> bool {
        self.keyword(name).is_some()
    }

    /// Carries `lmtp` or one of its line-terminator variants (`lmtp_crlf`, `lmtp_cr`,
    /// `lmtp_lf`, `lmtp_crorlf`), its own or inherited.
    pub fn is_lmtp(&self) -> bool {
        self.effective_keywords()
            .iter()
            .any(|k| keywords::is_lmtp(&k.name))
    }

    /// Keywords that apply to the channel but that the table does not know (the original
    /// takes them for UNIX group ids), own or inherited, for `dispatcher --check` to list.
    pub fn unknown_keywords(&self) -> Vec<&Keyword> {
        self.effective_keywords()
            .into_iter()
            .filter(|k| !keywords::is_known(&k.name))
            .collect()
    }
}

/// The whole file, includes spliced.
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

// ---------------------------------------------------------------------------------------
// Lines

/// A word of a line and where it starts.
type Word = (String, Loc);
type WordLine = Vec<Word>;

/// What a logical line is, comments dropped.
#[derive(Debug, Clone)]
enum Statement {
    Blank { loc: Loc, only_blanks: bool },
    Words(WordLine),
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::line | Rule::EOI => "the end of the line",
        Rule::comment => "a `!` comment",
        Rule::include => "an include line (`<file`)",
        Rule::include_spec => "a file name after `<`",
        Rule::words | Rule::word => "words separated by blanks",
        Rule::quoted => "a quoted string",
        Rule::ws => "a blank",
        Rule::blank => "a blank line",
    }
}

/// A comment or include line: never continued, and never a continuation.
fn is_comment_or_include(line: &str) -> bool {
    line.starts_with('!') || line.starts_with('<')
}

fn continues(line: &str) -> bool {
    !is_comment_or_include(line) && line.ends_with('\\')
}

/// Parses one file's text into statements and include lines (includes not followed).
fn parse_lines(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<Vec<Line<Statement>>, ConfigError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let prepared = prepare(file, text, diags);
    let mut out = Vec::new();
    for logical in logical_lines(&prepared, " ", continues) {
        check_continuation_pieces(file, &logical)?;
        let mut pairs = ImtaCnfGrammar::parse(Rule::line, &logical.text)
            .map_err(|e| logical.parse_error(file, e, describe))?;
        let Some(line) = pairs.next() else { continue };
        for part in line.into_inner() {
            let loc = logical.loc_of_byte(file, part.as_span().start());
            match part.as_rule() {
                Rule::include => {
                    let spec = part
                        .into_inner()
                        .find(|p| p.as_rule() == Rule::include_spec)
                        .map(|p| {
                            let at = logical.loc_of_byte(file, p.as_span().start());
                            (p.as_str().trim_end().to_string(), at)
                        });
                    match spec {
                        Some((spec, loc)) if !spec.is_empty() => {
                            out.push(Line::Include { spec, loc })
                        }
                        _ => {
                            return Err(ConfigError::other(
                                loc,
                                "`<` in column 1 must be followed by the name of a file to \
                                 include",
                            ))
                        }
                    }
                }
                Rule::blank => out.push(Line::Item(Statement::Blank {
                    loc,
                    only_blanks: !part.as_str().is_empty(),
                })),
                Rule::words => {
                    let words = part
                        .into_inner()
                        .filter(|w| w.as_rule() == Rule::word)
                        .map(|w| {
                            let at = logical.loc_of_byte(file, w.as_span().start());
                            (w.as_str().to_string(), at)
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

/// The text with the line ends the grammar cannot use mended, each with a warning: blanks
/// after a final `\` are dropped, and a `\` that would continue a line onto a blank line or
/// past the end of the file is dropped (so the blank line still ends the block). Also warns
/// about physical lines longer than the original's limit. Every kept character keeps its
/// line and column.
fn prepare(file: &Arc<Path>, text: &str, diags: &mut Diagnostics) -> String {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let is_blank = |l: &str| l.trim_matches([' ', '\t']).is_empty();
    let mut out = String::with_capacity(text.len() + 1);
    for (i, &line) in lines.iter().enumerate() {
        let number = i + 1;
        let length = line.chars().count();
        if length > MAX_LINE {
            diags.warn(
                Loc::new(file, number, MAX_LINE + 1),
                format!(
                    "line is {length} characters long; the original reads at most {MAX_LINE} \
                     (continue a long line on the next with `\\`)"
                ),
            );
        }
        let mut kept = line;
        let trimmed = line.trim_end_matches([' ', '\t']);
        if !is_comment_or_include(line) && trimmed.ends_with('\\') {
            let backslash = Loc::new(file, number, trimmed.chars().count());
            if trimmed.len() < line.len() {
                diags.warn(
                    backslash.clone(),
                    "blanks after the `\\` at the end of the line; read as a continuation \
                     (remove the blanks)",
                );
            }
            kept = trimmed;
            let message = match lines.get(i + 1) {
                None => Some("the `\\` at the end of the last line continues nothing; ignored"),
                Some(next) if is_blank(next) => Some(
                    "the `\\` at the end of this line is followed by a blank line, which it \
                     cannot continue; ignored, and the blank line still ends the block",
                ),
                Some(_) => None,
            };
            if let Some(message) = message {
                diags.warn(backslash, message);
                kept = &trimmed[..trimmed.len() - 1];
            }
        }
        out.push_str(kept);
        out.push('\n');
    }
    out
}

/// A comment or include line cannot be the continuation of a line ending in `\`.
fn check_continuation_pieces(file: &Arc<Path>, logical: &LogicalLine) -> Result<(), ConfigError> {
    for (offset, line) in logical.continuation_lines() {
        let (what, thing) = match logical.text.chars().nth(offset) {
            Some('!') => ("a comment line", "comment"),
            Some('<') => ("an include line", "include"),
            _ => continue,
        };
        return Err(ConfigError::other(
            Loc::new(file, line, 1),
            format!(
                "{what} cannot continue the line before it (remove the `\\` at the end of \
                 that line, or move the {thing})"
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sections and blocks

/// The rewrite section and the channel blocks, as lines of words.
struct Sections {
    rules: Vec<WordLine>,
    blocks: Vec<Vec<WordLine>>,
}

/// Builds the rewrite rules and channels from the statements of the file and its includes.
fn assemble(statements: Vec<Statement>, diags: &mut Diagnostics) -> Result<ImtaCnf, ConfigError> {
    let Sections {
        mut rules,
        mut blocks,
    } = split_sections(statements, diags);

    // The seed's trap: channel lines before the first blank line.
    if let Some(start) = misplaced_block_start(&rules) {
        if let Some((name, loc)) = rules[start].first() {
            diags.warn(
                loc.clone(),
                format!(
                    "channel block `{name}` before the first blank line; treated as a channel \
                     (put a blank line before it: by the original's rules these lines are \
                     rewrite rules)"
                ),
            );
        }
        blocks.insert(0, rules.split_off(start));
    }

    let rewrite_rules = rules
        .into_iter()
        .filter_map(|words| rewrite_rule(words, diags))
        .collect();
    let channels = build_channels(blocks, diags)?;
    Ok(ImtaCnf {
        rewrite_rules,
        channels,
    })
}

/// Everything before the first blank line is the rewrite section; after it, blank lines
/// separate channel blocks. A run of blank lines followed by more text counts as one, with a
/// warning; a line of blanks counts as blank, with a warning.
fn split_sections(statements: Vec<Statement>, diags: &mut Diagnostics) -> Sections {
    let mut rules: Vec<WordLine> = Vec::new();
    let mut blocks: Vec<Vec<WordLine>> = Vec::new();
    let mut in_rules = true;
    // The blank lines since the last line of words.
    let mut run: Vec<Loc> = Vec::new();
    for st in statements {
        match st {
            Statement::Blank { loc, only_blanks } => {
                if only_blanks {
                    diags.warn(
                        loc.clone(),
                        "a line of blanks (spaces or tabs) counts as a blank line",
                    );
                }
                in_rules = false;
                run.push(loc);
            }
            Statement::Words(words) => {
                if let [first, second, ..] = run.as_slice() {
                    diags.warn(
                        second.clone(),
                        format!(
                            "{} blank lines in a row (from line {}); one is enough to end the \
                             rewrite rules or a channel block",
                            run.len(),
                            first.line
                        ),
                    );
                }
                if in_rules {
                    rules.push(words);
                } else if !run.is_empty() || blocks.is_empty() {
                    blocks.push(vec![words]);
                } else if let Some(block) = blocks.last_mut() {
                    block.push(words);
                }
                run.clear();
            }
        }
    }
    Sections { rules, blocks }
}

/// A rewrite rule is `pattern template`, no blanks inside either, and every template routes
/// somewhere or rewrites something, so it holds `@`, `$` or `%` (SIMS "Rewrite Rule
/// Structure"). `None` for a line that is a rule; otherwise why it is not.
fn not_a_rule(words: &[Word]) -> Option<&'static str> {
    match words {
        [_] => Some("it has no template"),
        [_, (template, _)] if !template.contains(['@', '$', '%']) => {
            Some("its template has none of `@`, `$` or `%`")
        }
        [_, _] => None,
        _ => Some("it has more than a pattern and a template"),
    }
}

/// Where a channel block starts at the end of the rewrite section, if it ends in one (the
/// seed's minimal file). Host lines are one or two words that cannot be a rule; the block is
/// the longest run of them at the end, with the line before it as the channel's name line if
/// that line cannot be a rule either (`tcp_x lmtp maxjobs 7`); otherwise the run's first line
/// is the name line, and the run needs a host line after it.
fn misplaced_block_start(rules: &[WordLine]) -> Option<usize> {
    let host_like = |w: &WordLine| w.len() <= 2 && not_a_rule(w).is_some();
    let run = rules.iter().rev().take_while(|w| host_like(w)).count();
    let first = rules.len() - run;
    match first.checked_sub(1) {
        Some(before) if run >= 1 && not_a_rule(&rules[before]).is_some() => Some(before),
        _ if run >= 2 => Some(first),
        _ => None,
    }
}

/// A line of the rewrite section as a rule; a line that does not look like one is kept, with
/// a warning that it may be a misplaced channel line.
fn rewrite_rule(words: WordLine, diags: &mut Diagnostics) -> Option<RewriteRule> {
    let why = not_a_rule(&words);
    let text = shown(
        &words
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let mut words = words.into_iter();
    let (pattern, loc) = words.next()?;
    if let Some(why) = why {
        diags.warn(
            loc.clone(),
            format!(
                "`{text}` is before the first blank line, so it is read as a rewrite rule, but \
                 {why}; if it belongs to a channel block, put a blank line before the block"
            ),
        );
    }
    let template = words.map(|(w, _)| w).collect::<Vec<_>>().join(" ");
    Some(RewriteRule {
        pattern,
        template,
        loc,
    })
}

/// The channels of the blocks, with `defaults` applied; `defaults` and `nodefaults` blocks
/// give no channel.
fn build_channels(
    blocks: Vec<Vec<WordLine>>,
    diags: &mut Diagnostics,
) -> Result<Vec<Channel>, ConfigError> {
    let mut channels: Vec<Channel> = Vec::new();
    let mut defaults: Vec<Keyword> = Vec::new();
    // Official host names and host names, lower case: one table for the whole file.
    let mut hosts: HashMap<String, Loc> = HashMap::new();
    for block in blocks {
        let mut lines = block.into_iter();
        let Some(first) = lines.next() else { continue };
        let mut words = first.into_iter();
        let Some((name_word, name_loc)) = words.next() else {
            continue;
        };
        let name = name_word.to_ascii_lowercase();
        let own = parse_keywords(words, diags)?;
        match name.as_str() {
            "defaults" | "nodefaults" => {
                if name == "defaults" {
                    for k in own {
                        let family = keywords::family(&k.name);
                        defaults.retain(|d| keywords::family(&d.name) != family);
                        defaults.push(k);
                    }
                } else {
                    defaults.clear();
                    if let Some(k) = own.first() {
                        diags.warn(
                            k.loc.clone(),
                            "`nodefaults` takes no keywords; the rest of the line is ignored",
                        );
                    }
                }
                if let Some((word, loc)) = lines.next().and_then(|l| l.into_iter().next()) {
                    diags.warn(
                        loc,
                        format!(
                            "`{word}`: a `{name}` block is one line; the lines after it are \
                             ignored"
                        ),
                    );
                }
                continue;
            }
            _ => {}
        }
        check_channel_name(&name_word, &name_loc, diags);
        if let Some(c) = channels.iter().find(|c| c.name == name) {
            return Err(ConfigError::other(
                name_loc.clone(),
                format!(
                    "channel {name} is defined twice (first at {})",
                    first_at(&c.loc, &name_loc)
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
        let (official_host, local_alias) = host_line(official, HostLine::Official, &mut hosts)?;
        let others = lines
            .map(|line| host_line(line, HostLine::Other, &mut hosts))
            .collect::<Result<Vec<_>, _>>()?;
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
    Ok(channels)
}

// ---------------------------------------------------------------------------------------
// Keywords

fn is_number(word: &str) -> bool {
    parse_int(word).is_ok()
}

/// Keywords and their arguments from the words after the channel name; of several keywords
/// of one family, only the last is kept (with a warning).
fn parse_keywords(
    words: impl Iterator<Item = Word>,
    diags: &mut Diagnostics,
) -> Result<Vec<Keyword>, ConfigError> {
    let mut out: Vec<Keyword> = Vec::new();
    let mut words = words.peekable();
    while let Some((word, loc)) = words.next() {
        // `822` and `733` are keywords; any other number here belongs to no keyword.
        if !keywords::is_known(&word) && is_number(&word) {
            let hint = match out.last() {
                Some(k) if !keywords::is_known(&k.name) => format!(
                    " (`{}` before it is not a keyword this program knows, so it takes no \
                     argument)",
                    k.name
                ),
                _ => String::new(),
            };
            diags.warn(
                loc,
                format!("`{word}`: a number that no keyword before it takes; ignored{hint}"),
            );
            continue;
        }
        let name = keyword_name(&word, &loc, diags);
        let arity = keywords::arity(&name).unwrap_or(Arity::Flag);
        let args = take_arguments(&name, arity, &loc, &mut words)?;
        out.push(Keyword { name, args, loc });
    }
    Ok(last_of_each_family(out, diags))
}

/// The keyword as the original reads it: case-blind, at most 32 characters.
fn keyword_name(word: &str, loc: &Loc, diags: &mut Diagnostics) -> String {
    let lower = word.to_ascii_lowercase();
    if lower.chars().count() <= keywords::MAX_KEYWORD {
        return lower;
    }
    let cut: String = lower.chars().take(keywords::MAX_KEYWORD).collect();
    diags.warn(
        loc.clone(),
        format!(
            "keyword `{}` is longer than {} characters; the original reads it as `{cut}`",
            shown(word),
            keywords::MAX_KEYWORD
        ),
    );
    cut
}

/// The arguments `arity` says the keyword takes, from the words after it.
fn take_arguments(
    name: &str,
    arity: Arity,
    loc: &Loc,
    words: &mut Peekable<impl Iterator<Item = Word>>,
) -> Result<Vec<String>, ConfigError> {
    let takes: fn(&str) -> bool = match arity {
        Arity::Flag => return Ok(Vec::new()),
        Arity::Int | Arity::Ints => is_number,
        Arity::Strings => |w| w.starts_with('"'),
        Arity::Name | Arity::Template => |_| true,
    };
    let several = matches!(arity, Arity::Ints | Arity::Strings);
    let mut args = Vec::new();
    while let Some((w, _)) = words.next_if(|(w, _)| takes(w)) {
        args.push(w);
        if !several {
            break;
        }
    }
    if args.is_empty() {
        let found = words.peek().map_or("end of line".to_string(), |(w, _)| {
            format!("`{}`", shown(w))
        });
        return Err(ConfigError::other(
            loc.clone(),
            format!(
                "keyword {name} needs {} after it, found {found}",
                arity.needs()
            ),
        ));
    }
    Ok(args)
}

/// Keeps the last keyword of each family, in the order written; warns about the others.
fn last_of_each_family(written: Vec<Keyword>, diags: &mut Diagnostics) -> Vec<Keyword> {
    let mut out: Vec<Keyword> = Vec::new();
    for k in written {
        let family = keywords::family(&k.name);
        if let Some(i) = out.iter().position(|o| keywords::family(&o.name) == family) {
            let earlier = out.remove(i);
            diags.warn(
                k.loc.clone(),
                format!(
                    "`{}` overrides `{}` (column {}) on the same line; the last one counts",
                    k.name, earlier.name, earlier.loc.col
                ),
            );
        }
        out.push(k);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Names

/// Channel names: up to 32 lower-case letters, digits, `_`, `$` (the original says
/// "should"), and `-`, which Sun's own channel names use (`ims-ms`).
fn check_channel_name(name: &str, loc: &Loc, diags: &mut Diagnostics) {
    let odd = name
        .chars()
        .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_$-".contains(c)));
    if odd || name.chars().count() > MAX_CHANNEL_NAME {
        diags.warn(
            loc.clone(),
            format!(
                "channel name `{}`: the original wants at most {MAX_CHANNEL_NAME} lower-case \
                 letters, digits, `_`, `$` or `-`; it is looked up in lower case",
                shown(name)
            ),
        );
    }
}

/// Which line of a block a host line is: the second word means something different.
#[derive(Clone, Copy)]
enum HostLine {
    /// Line 2: official host name [local-host alias].
    Official,
    /// Lines 3..: host name [proper name].
    Other,
}

/// A host line: a host name and at most one more name. Official host names and host names
/// are unique across the whole file (case-blind); the second names are not routed, so they
/// may repeat.
fn host_line(
    words: WordLine,
    kind: HostLine,
    seen: &mut HashMap<String, Loc>,
) -> Result<(String, Option<String>), ConfigError> {
    let mut iter = words.into_iter();
    let Some((host, loc)) = iter.next() else {
        // The grammar gives every line of words at least one word.
        unreachable!("a host line without words");
    };
    let second = iter.next();
    if let Some((extra, extra_loc)) = iter.next() {
        return Err(ConfigError::other(
            extra_loc,
            format!(
                "`{}`: a host line holds a host name and at most one {}",
                shown(&extra),
                match kind {
                    HostLine::Official => "local-host alias",
                    HostLine::Other => "proper name",
                }
            ),
        ));
    }
    let too_long = |what: &str, name: &str, at: &Loc| {
        ConfigError::other(
            at.clone(),
            format!(
                "{what} `{}` is too long ({} characters; at most {MAX_HOST})",
                shown(name),
                name.chars().count()
            ),
        )
    };
    if host.chars().count() > MAX_HOST {
        return Err(too_long(
            match kind {
                HostLine::Official => "official host name",
                HostLine::Other => "host name",
            },
            &host,
            &loc,
        ));
    }
    if let Some((name, at)) = &second {
        if name.chars().count() > MAX_HOST {
            return Err(too_long("local host alias or proper name", name, at));
        }
    }
    let key = host.to_ascii_lowercase();
    if let Some(first) = seen.get(&key) {
        return Err(ConfigError::other(
            loc.clone(),
            format!(
                "duplicate host in channel table: {host} (first at {})",
                first_at(first, &loc)
            ),
        ));
    }
    seen.insert(key, loc);
    Ok((host, second.map(|(name, _)| name)))
}

/// "line 3" in the same file, "other.cnf:3" in another (an included file).
fn first_at(first: &Loc, here: &Loc) -> String {
    if first.file == here.file {
        format!("line {}", first.line)
    } else {
        format!("{}:{}", first.file.display(), first.line)
    }
}

/// Text quoted in a message: at most 60 characters.
fn shown(text: &str) -> String {
    if text.chars().count() <= 60 {
        return text.to_string();
    }
    let mut s: String = text.chars().take(60).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(ImtaCnf, Diagnostics), ConfigError> {
        let file: Arc<Path> = Arc::from(Path::new("imta.cnf"));
        let mut d = Diagnostics::default();
        parse_str(&file, text, &mut d).map(|c| (c, d))
    }

    fn warnings(d: &Diagnostics) -> Vec<String> {
        d.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_file_starting_with_a_blank_line_has_no_rules_and_no_warning() {
        let (c, d) = parse("\ntcp_lmtpss lmtp\ntcp_lmtpss-daemon\n").expect("parses");
        assert!(d.is_empty(), "{d:?}");
        assert!(c.rewrite_rules.is_empty());
        assert!(c.channel("tcp_lmtpss").is_some_and(Channel::is_lmtp));
    }

    #[test]
    fn crlf_line_ends_and_trailing_blanks_are_fine() {
        let (c, d) = parse("\r\nx lmtp \t\r\nx-daemon \\\r\n  x.example\r\n").expect("parses");
        assert!(d.is_empty(), "{d:?}");
        let ch = c.channel("x").expect("channel");
        assert_eq!(ch.local_alias.as_deref(), Some("x.example"));
    }

    #[test]
    fn an_empty_file_has_nothing() {
        let (c, d) = parse("").expect("parses");
        assert!(d.is_empty() && c == ImtaCnf::default());
    }

    #[test]
    fn rules_then_a_block_without_a_blank_line_between() {
        let (c, d) =
            parse("$* $U@x\ntcp_x lmtp maxjobs 7\ntcp_x-daemon\nalias.example\n").expect("parses");
        assert_eq!(c.rewrite_rules.len(), 1);
        let ch = c.channel("tcp_x").expect("block rescued");
        assert_eq!(ch.hosts, [("alias.example".to_string(), None)]);
        assert_eq!(
            ch.keyword("maxjobs").map(|k| k.args.clone()),
            Some(vec!["7".into()])
        );
        assert_eq!(d.warnings.len(), 1, "{:?}", warnings(&d));
    }

    #[test]
    fn a_lone_word_among_rules_is_kept_as_a_rule_with_a_warning() {
        let (c, d) = parse("oops\n$* $U@x\n\nl\nhost\n").expect("parses");
        assert_eq!(c.rewrite_rules.len(), 2);
        assert!(
            warnings(&d)[0].starts_with("imta.cnf:1:1: warning: `oops` is before the first"),
            "{:?}",
            warnings(&d)
        );
    }

    #[test]
    fn a_rule_ending_the_section_is_not_mistaken_for_a_host_line() {
        let (c, _) = parse("tcp_x lmtp\ntcp_x-daemon\n.org $U@y\n").expect("parses");
        assert!(c.channels.is_empty());
        assert_eq!(c.rewrite_rules.len(), 3);
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
    fn a_quoted_argument_keeps_its_blanks() {
        let (c, _) = parse("\nx backoff \"pt 2m\" \"pt5m\"\nx-daemon\n").expect("parses");
        let args = c
            .channel("x")
            .and_then(|ch| ch.keyword("backoff"))
            .map(|k| k.args.clone());
        assert_eq!(
            args,
            Some(vec!["\"pt 2m\"".to_string(), "\"pt5m\"".to_string()])
        );
    }

    #[test]
    fn a_stray_number_is_a_warning_naming_the_word_before_it() {
        let (c, d) = parse("\nx mailsrv_group 7 lmtp\nx-daemon\n").expect("parses");
        assert!(c.channel("x").is_some_and(Channel::is_lmtp));
        let w = warnings(&d);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("imta.cnf:2:17: warning: `7`: a number"),
            "{w:?}"
        );
        assert!(w[0].contains("`mailsrv_group` before it"), "{w:?}");
    }

    #[test]
    fn address_convention_keywords_822_and_733_are_not_stray_numbers() {
        let (c, d) = parse("\nx 822 lmtp\nx-daemon\n").expect("parses");
        assert!(d.is_empty(), "{d:?}");
        assert!(c.channel("x").is_some_and(|ch| ch.has_keyword("822")));
    }

    #[test]
    fn the_last_keyword_of_a_family_on_one_line_counts() {
        let (c, d) = parse("\nx logging lmtp nologging\nx-daemon\n").expect("parses");
        let ch = c.channel("x").expect("channel");
        assert!(ch.has_keyword("nologging") && !ch.has_keyword("logging"));
        assert!(warnings(&d)[0].contains("`nologging` overrides `logging` (column 3)"));
    }

    #[test]
    fn keywords_are_case_blind_and_cut_at_32_characters() {
        let long = "a".repeat(40);
        let (c, d) = parse(&format!("\nx LMTP {long}\nx-daemon\n")).expect("parses");
        let ch = c.channel("x").expect("channel");
        assert!(ch.is_lmtp());
        assert!(ch.has_keyword(&"a".repeat(32)));
        assert_eq!(d.warnings.len(), 1);
    }

    #[test]
    fn continued_keyword_line_is_one_line() {
        let (c, _) = parse("\nx threaddepth 20 \\\n   logging\nx-daemon\n").expect("parses");
        assert!(c.channel("x").is_some_and(|ch| ch.has_keyword("logging")));
    }

    #[test]
    fn blanks_after_the_continuation_backslash_still_continue_with_a_warning() {
        let (c, d) = parse("\nx threaddepth 20 \\  \n   logging\nx-daemon\n").expect("parses");
        assert!(c.channel("x").is_some_and(|ch| ch.has_keyword("logging")));
        assert_eq!(
            warnings(&d),
            ["imta.cnf:2:18: warning: blanks after the `\\` at the end \
            of the line; read as a continuation (remove the blanks)"]
        );
    }

    #[test]
    fn a_backslash_before_a_blank_line_does_not_swallow_it() {
        let (c, d) = parse("\nx lmtp\nx-daemon \\\n\ny lmtp\ny-daemon\n").expect("parses");
        assert_eq!(c.channels.len(), 2);
        assert_eq!(
            c.channel("x").map(|ch| ch.official_host.as_str()),
            Some("x-daemon")
        );
        assert!(warnings(&d)[0].starts_with("imta.cnf:3:10: warning: the `\\`"));
    }

    #[test]
    fn a_comment_ending_in_a_backslash_continues_nothing() {
        let (c, d) = parse("\n! C:\\dir\\\nx lmtp\nx-daemon\n").expect("parses");
        assert!(d.is_empty(), "{d:?}");
        assert!(c.channel("x").is_some());
    }

    #[test]
    fn comments_inside_a_block_are_not_blank_lines() {
        let (c, _) = parse("\nx lmtp\n! the host\nx-daemon\n! more\nx.example\n").expect("parses");
        let ch = c.channel("x").expect("channel");
        assert_eq!(ch.official_host, "x-daemon");
        assert_eq!(ch.hosts.len(), 1);
    }

    #[test]
    fn an_include_line_cannot_continue_a_line() {
        let err = parse("\nx lmtp \\\n<other\nx-daemon\n").expect_err("include in continuation");
        assert!(
            err.to_string()
                .starts_with("imta.cnf:3:1: an include line cannot"),
            "{err}"
        );
    }

    #[test]
    fn an_include_without_a_file_name_is_an_error() {
        let err = parse("\n<  \nx lmtp\n").expect_err("empty include");
        assert_eq!(
            err.to_string(),
            "imta.cnf:2:1: `<` in column 1 must be followed by the name of a file to include"
        );
    }

    #[test]
    fn keyword_without_its_number_is_an_error() {
        let err = parse("\nx maxjobs\nx-daemon\n").expect_err("missing");
        assert_eq!(
            err.to_string(),
            "imta.cnf:2:3: keyword maxjobs needs a whole number after it, found end of line"
        );
    }

    #[test]
    fn keyword_without_its_name_is_an_error() {
        let err = parse("\nx lmtp pool\nx-daemon\n").expect_err("missing");
        assert!(
            err.to_string()
                .contains("keyword pool needs a name after it"),
            "{err}"
        );
    }

    #[test]
    fn blank_line_runs_and_lines_of_blanks_warn() {
        let (c, d) = parse("\na lmtp\na-daemon\n\n \t\nb lmtp\nb-daemon\n\n\n").expect("parses");
        assert_eq!(c.channels.len(), 2);
        let w = warnings(&d);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("imta.cnf:5:1: warning: a line of blanks"),
            "{w:?}"
        );
        assert!(w[1].starts_with("imta.cnf:5:1: warning: 2 blank lines in a row (from line 4)"));
    }

    #[test]
    fn upper_case_channel_names_warn_and_are_found_in_lower_case() {
        let (c, d) = parse("\nTCP_X lmtp\nx-daemon\n").expect("parses");
        assert!(c.channel("tcp_x").is_some() && c.channel("TCP_X").is_some());
        assert!(warnings(&d)[0].contains("channel name `TCP_X`"));
    }

    #[test]
    fn a_long_host_name_is_an_error() {
        let err = parse(&format!("\nx lmtp\n{}\n", "h".repeat(129))).expect_err("too long");
        assert!(
            err.to_string()
                .starts_with("imta.cnf:3:1: official host name `hhh"),
            "{err}"
        );
        assert!(err
            .to_string()
            .ends_with("is too long (129 characters; at most 128)"));
    }

    #[test]
    fn defaults_lines_accumulate_and_nodefaults_clears_them() {
        let text = "\ndefaults logging maxjobs 2\n\ndefaults nologging\n\na lmtp\na-d\n\n\
                    nodefaults\n\nb lmtp\nb-d\n";
        let (c, d) = parse(text).expect("parses");
        assert!(d.is_empty(), "{d:?}");
        let a: Vec<&str> = c.channels[0]
            .effective_keywords()
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(a, ["maxjobs", "nologging", "lmtp"]);
        assert!(c.channels[1].inherited.is_empty());
    }

    #[test]
    fn long_lines_warn_at_the_first_character_past_the_limit() {
        let long = format!("\nx lmtp {}\nx-daemon\n", "y".repeat(260));
        let (_, d) = parse(&long).expect("parses");
        assert!(warnings(&d)[0].starts_with("imta.cnf:2:253: warning: line is 267 characters"));
    }
}
