//! Mapping patterns: compiling the pattern column of a mapping entry, and matching it.
//!
//! The language is the one of the Messaging Server 6 Administration Reference, "Mapping Entry
//! Patterns" (Table 4-14; PMDF Table 5-1):
//!
//! | text | matches |
//! |---|---|
//! | `*` / `%` | any run of characters (greedy) / exactly one character |
//! | `$*` `$%` `$$` `$ ` `$<tab>` | that character literally |
//! | `$A% $A*` `$B…` `$D…` `$H…` `$X…` `$O…` `$S…` `$T…` | one / a run of: letters, binary, decimal, hex, octal, symbol (`0-9A-Za-z_$`), blank (space, tab, vertical tab) characters |
//! | `$[abc]%` `$[a-z]*` `$[^…]%` | one / a run of the listed characters; `\` quotes inside |
//! | `$n*` | the text the nth saved wildcard matched, again |
//! | `$_` | the next wildcard matches as little as it can (lazy) |
//! | `$@` / `$^` | wildcards after it are not saved / are saved again (the default) |
//! | `$(a.b.c.d/n)` | an IPv4 address in that prefix (the first n bits count) |
//! | `$<a.b.c.d/n>` | an IPv4 address equal but for its n lowest bits |
//! | `${addr/n}` | an IPv6 address in that prefix |
//!
//! Comparison is case-blind and anchored: the whole input must match. Each saved wildcard
//! (a `*`, `%`, class glob or IP glob) is numbered from 0, left to right; the template's `$0`,
//! `$1`, … refer to these.
//!
//! Matching is backtracking with a memo of failed (token, position) pairs, so that a pattern
//! such as `*a*a*a*a*b` against a long string takes polynomial, not exponential, time. A
//! pattern with back matches (`$n*`) cannot use the memo (what matches depends on what was
//! captured); it is bounded by [`STEP_LIMIT`] instead, and a match that exceeds it fails.
//!
//! This module knows nothing of tables or templates.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Most matching steps for a pattern with back matches before it is given up.
pub const STEP_LIMIT: usize = 1_000_000;

/// A set of characters a glob accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharClass {
    Any,
    Alpha,
    Binary,
    Decimal,
    Hex,
    Octal,
    Symbol,
    Blank,
    /// Listed characters and ranges (lower-cased), possibly negated.
    Set {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl CharClass {
    fn contains(&self, c: char) -> bool {
        match self {
            CharClass::Any => true,
            CharClass::Alpha => c.is_ascii_alphabetic(),
            CharClass::Binary => c == '0' || c == '1',
            CharClass::Decimal => c.is_ascii_digit(),
            CharClass::Hex => c.is_ascii_hexdigit(),
            CharClass::Octal => ('0'..='7').contains(&c),
            CharClass::Symbol => c.is_ascii_alphanumeric() || c == '_' || c == '$',
            CharClass::Blank => c == ' ' || c == '\t' || c == '\x0b',
            CharClass::Set { negated, items } => {
                let l = fold(c);
                let hit = items.iter().any(|&(lo, hi)| lo <= l && l <= hi);
                hit != *negated
            }
        }
    }
}

/// An IP glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpGlob {
    /// `$(a.b.c.d/n)`: the first `bits` bits equal.
    V4Prefix { addr: Ipv4Addr, bits: u8 },
    /// `$<a.b.c.d/n>`: equal but for the `ignored` lowest bits.
    V4Ignore { addr: Ipv4Addr, ignored: u8 },
    /// `${addr/n}`: the first `bits` bits equal.
    V6Prefix { addr: Ipv6Addr, bits: u8 },
}

/// The address family an IP glob matches, with what its text can be made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Bits in an address of this family.
    pub fn width(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Characters an address of this family can contain (in folded, lower-case text).
    pub fn address_char(self, c: char) -> bool {
        match self {
            Family::V4 => c.is_ascii_digit() || c == '.',
            Family::V6 => c.is_ascii_hexdigit() || c == ':' || c == '.',
        }
    }

    /// The longest text that can be an address of this family: four octets of at most three
    /// digits (RFC 6943: no leading zeros beyond that), or six groups of four hex digits with
    /// an embedded IPv4 address (RFC 4291 2.2). An index that enumerates the addresses in a
    /// string needs to look no further.
    pub fn longest_text(self) -> usize {
        match self {
            Family::V4 => 15,
            Family::V6 => 45,
        }
    }

    /// `text` as an address of this family (an IPv4 address in the low 32 bits).
    pub fn parse(self, text: &str) -> Option<u128> {
        match self {
            Family::V4 => text
                .parse::<Ipv4Addr>()
                .ok()
                .map(|a| u128::from(u32::from(a))),
            Family::V6 => text.parse::<Ipv6Addr>().ok().map(u128::from),
        }
    }

    /// The mask keeping the first `bits` bits of an address of this family.
    pub fn mask(self, bits: u8) -> u128 {
        let full = u128::MAX >> (128 - u32::from(self.width()));
        full & !full.checked_shr(u32::from(bits)).unwrap_or(0)
    }
}

impl IpGlob {
    /// The family, address and number of leading bits that count: every form is a prefix.
    pub fn prefix(&self) -> (Family, u128, u8) {
        match self {
            IpGlob::V4Prefix { addr, bits } => (Family::V4, u128::from(u32::from(*addr)), *bits),
            IpGlob::V4Ignore { addr, ignored } => {
                (Family::V4, u128::from(u32::from(*addr)), 32 - *ignored)
            }
            IpGlob::V6Prefix { addr, bits } => (Family::V6, u128::from(*addr), *bits),
        }
    }

    fn accepts(&self, text: &str) -> bool {
        let (family, addr, bits) = self.prefix();
        let mask = family.mask(bits);
        family.parse(text).is_some_and(|a| a & mask == addr & mask)
    }

    /// Characters an address of this glob's family can contain.
    fn address_char(&self, c: char) -> bool {
        self.prefix().0.address_char(c)
    }
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A character, lower-cased for the case-blind comparison.
    Literal(char),
    /// `*`, `%` and the class globs. `many`: a run (`*`) rather than one character (`%`).
    Glob {
        class: CharClass,
        many: bool,
        lazy: bool,
        save: bool,
    },
    /// `$n*`.
    BackMatch(usize),
    Ip {
        glob: IpGlob,
        save: bool,
    },
}

/// A pattern that cannot be compiled: the column (1-based, in characters) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.col, self.message)
    }
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    /// Number of saved wildcards ($0 … $n-1).
    saved: usize,
    has_back_match: bool,
    /// The longest literal run, which every matching input contains.
    required: Vec<char>,
}

/// The texts the saved wildcards matched, in order.
pub type Captures = Vec<String>;

fn fold(c: char) -> char {
    if c.is_ascii() {
        c.to_ascii_lowercase()
    } else {
        c.to_lowercase().next().unwrap_or(c)
    }
}

impl Pattern {
    /// Compiles the pattern text of a mapping entry.
    pub fn compile(text: &str) -> Result<Pattern, PatternError> {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut lazy_next = false;
        let mut saving = true;
        let mut i = 0;
        let err = |col: usize, message: String| PatternError {
            col: col + 1,
            message,
        };
        while i < chars.len() {
            let c = chars[i];
            match c {
                '*' | '%' => {
                    tokens.push(Token::Glob {
                        class: CharClass::Any,
                        many: c == '*',
                        lazy: std::mem::take(&mut lazy_next),
                        save: saving,
                    });
                    i += 1;
                }
                '$' => {
                    let Some(&next) = chars.get(i + 1) else {
                        return Err(err(i, "`$` at the end of the pattern quotes nothing (write `$$` for a dollar sign)".into()));
                    };
                    match next {
                        '*' | '%' | '$' | ' ' | '\t' => {
                            tokens.push(Token::Literal(fold(next)));
                            i += 2;
                        }
                        '_' => {
                            lazy_next = true;
                            i += 2;
                        }
                        '@' => {
                            saving = false;
                            i += 2;
                        }
                        '^' => {
                            saving = true;
                            i += 2;
                        }
                        '0'..='9' => {
                            let start = i + 1;
                            let mut j = start;
                            while j < chars.len() && chars[j].is_ascii_digit() {
                                j += 1;
                            }
                            if chars.get(j) != Some(&'*') {
                                return Err(err(i, format!(
                                    "`${}` in a pattern must be followed by `*` (a back match, `$n*`)",
                                    chars[start..j].iter().collect::<String>()
                                )));
                            }
                            let n: usize = chars[start..j]
                                .iter()
                                .collect::<String>()
                                .parse()
                                .map_err(|_| err(i, "back match number too large".into()))?;
                            tokens.push(Token::BackMatch(n));
                            i = j + 1;
                        }
                        '[' => {
                            let (class, end) =
                                compile_set(&chars, i + 2).map_err(|(at, m)| err(at, m))?;
                            let many = glob_suffix(&chars, end).map_err(|m| err(end, m))?;
                            tokens.push(Token::Glob {
                                class,
                                many,
                                lazy: std::mem::take(&mut lazy_next),
                                save: saving,
                            });
                            i = end + 1;
                        }
                        '(' | '<' | '{' => {
                            let close = match next {
                                '(' => ')',
                                '<' => '>',
                                _ => '}',
                            };
                            let body_start = i + 2;
                            let Some(len) = chars[body_start..].iter().position(|&c| c == close)
                            else {
                                return Err(err(
                                    i,
                                    format!("`${next}` IP address without its closing `{close}`"),
                                ));
                            };
                            let body: String = chars[body_start..body_start + len].iter().collect();
                            let glob = compile_ip(next, &body).map_err(|m| err(i, m))?;
                            tokens.push(Token::Ip { glob, save: saving });
                            i = body_start + len + 1;
                        }
                        l if l.is_ascii_alphabetic() => {
                            let class = match l.to_ascii_uppercase() {
                                'A' => CharClass::Alpha,
                                'B' => CharClass::Binary,
                                'D' => CharClass::Decimal,
                                'H' | 'X' => CharClass::Hex,
                                'O' => CharClass::Octal,
                                'S' => CharClass::Symbol,
                                'T' => CharClass::Blank,
                                _ => return Err(err(i, format!("`${l}` is not a pattern wildcard (the glob letters are A B D H O S T X)"))),
                            };
                            let many = glob_suffix(&chars, i + 2).map_err(|m| err(i + 2, m))?;
                            tokens.push(Token::Glob {
                                class,
                                many,
                                lazy: std::mem::take(&mut lazy_next),
                                save: saving,
                            });
                            i += 3;
                        }
                        other => {
                            return Err(err(i, format!("`${other}` has no meaning in a pattern (write `$$` for a dollar sign)")));
                        }
                    }
                }
                other => {
                    tokens.push(Token::Literal(fold(other)));
                    i += 1;
                }
            }
        }
        let saved = tokens
            .iter()
            .filter(|t| {
                matches!(
                    t,
                    Token::Glob { save: true, .. } | Token::Ip { save: true, .. }
                )
            })
            .count();
        for t in &tokens {
            if let Token::BackMatch(n) = t {
                if *n >= saved {
                    return Err(PatternError {
                        col: 1,
                        message: format!("back match `${n}*` names wildcard {n}, but the pattern saves only {saved}"),
                    });
                }
            }
        }
        let has_back_match = tokens.iter().any(|t| matches!(t, Token::BackMatch(_)));
        let required = longest_literal(&tokens);
        Ok(Pattern {
            tokens,
            saved,
            has_back_match,
            required,
        })
    }

    /// The compiled elements, left to right (what an index reads to learn what every
    /// matching input contains).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// How many wildcards the pattern saves.
    pub fn saved(&self) -> usize {
        self.saved
    }

    /// Matches the whole of `input`; on success, the saved wildcards' texts.
    pub fn matches(&self, input: &str) -> Option<Captures> {
        self.matches_subject(&Subject::new(input))
    }

    /// Matches a subject prepared once for many patterns (a table's entries).
    pub fn matches_subject(&self, subject: &Subject) -> Option<Captures> {
        let (chars, folded) = (&subject.chars, &subject.folded);
        // Cheap rejection: the pattern's longest literal run must occur in the input.
        if !self.required.is_empty()
            && !folded
                .windows(self.required.len())
                .any(|w| w == self.required.as_slice())
        {
            return None;
        }
        let width = folded.len() + 1;
        let mut m = Matcher {
            tokens: &self.tokens,
            text: folded,
            failed: if self.has_back_match {
                Vec::new()
            } else {
                vec![false; (self.tokens.len() + 1) * width]
            },
            width,
            spans: Vec::with_capacity(self.saved),
            steps: 0,
            runs: vec![None; self.tokens.len()],
        };
        if m.run(0, 0) {
            // Captures keep the input's own case.
            Some(
                m.spans
                    .iter()
                    .map(|&(a, b)| chars[a..b].iter().collect())
                    .collect(),
            )
        } else {
            None
        }
    }
}

/// A string prepared for matching: its characters, and the same lower-cased.
#[derive(Debug, Clone)]
pub struct Subject {
    chars: Vec<char>,
    folded: Vec<char>,
}

impl Subject {
    pub fn new(input: &str) -> Subject {
        let chars: Vec<char> = input.chars().collect();
        let folded = chars.iter().map(|&c| fold(c)).collect();
        Subject { chars, folded }
    }

    /// The characters lower-cased as patterns compare them.
    pub fn folded(&self) -> &[char] {
        &self.folded
    }
}

/// The longest run of consecutive literal tokens.
fn longest_literal(tokens: &[Token]) -> Vec<char> {
    let mut best: Vec<char> = Vec::new();
    let mut run: Vec<char> = Vec::new();
    for t in tokens {
        match t {
            Token::Literal(c) => run.push(*c),
            _ => {
                if run.len() > best.len() {
                    best = std::mem::take(&mut run);
                }
                run.clear();
            }
        }
    }
    if run.len() > best.len() {
        best = run;
    }
    best
}

/// `%` or `*` after a glob letter or class.
fn glob_suffix(chars: &[char], at: usize) -> Result<bool, String> {
    match chars.get(at) {
        Some('*') => Ok(true),
        Some('%') => Ok(false),
        _ => Err("a glob must end in `%` (one character) or `*` (any number)".into()),
    }
}

/// Parses `$[...]` from just after the `[`; returns the class and the index after `]`.
fn compile_set(chars: &[char], start: usize) -> Result<(CharClass, usize), (usize, String)> {
    let mut i = start;
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut items = Vec::new();
    loop {
        let Some(&c) = chars.get(i) else {
            return Err((
                start - 2,
                "`$[` character set without its closing `]`".into(),
            ));
        };
        let (c, next) = match c {
            ']' => break,
            '\\' => match chars.get(i + 1) {
                Some(&q) => (q, i + 2),
                None => return Err((i, "`\\` at the end of a character set".into())),
            },
            c => (c, i + 1),
        };
        if chars.get(next) == Some(&'-') && chars.get(next + 1).is_some_and(|&h| h != ']') {
            let (hi, after) = match chars[next + 1] {
                '\\' => match chars.get(next + 2) {
                    Some(&q) => (q, next + 3),
                    None => return Err((next + 1, "`\\` at the end of a character set".into())),
                },
                h => (h, next + 2),
            };
            let (lo, hi) = (fold(c), fold(hi));
            if lo > hi {
                return Err((i, format!("range `{c}-{hi}` runs backwards")));
            }
            items.push((lo, hi));
            i = after;
        } else {
            items.push((fold(c), fold(c)));
            i = next;
        }
    }
    Ok((CharClass::Set { negated, items }, i + 1))
}

fn compile_ip(open: char, body: &str) -> Result<IpGlob, String> {
    let (addr, bits) = match body.split_once('/') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (body.trim(), None),
    };
    let bits = |max: u8| -> Result<Option<u8>, String> {
        match bits {
            None => Ok(None),
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or_else(|| format!("`/{b}`: the bit count must be 0 to {max}")),
        }
    };
    match open {
        '(' | '<' => {
            let a: Ipv4Addr = addr
                .parse()
                .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
            Ok(if open == '(' {
                IpGlob::V4Prefix {
                    addr: a,
                    bits: bits(32)?.unwrap_or(32),
                }
            } else {
                IpGlob::V4Ignore {
                    addr: a,
                    ignored: bits(32)?.unwrap_or(0),
                }
            })
        }
        _ => {
            let a: Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("`{addr}` is not an IPv6 address"))?;
            Ok(IpGlob::V6Prefix {
                addr: a,
                bits: bits(128)?.unwrap_or(128),
            })
        }
    }
}

struct Matcher<'a> {
    tokens: &'a [Token],
    text: &'a [char],
    /// failed[t * width + pos]: token t at position pos is known not to lead to a match.
    failed: Vec<bool>,
    width: usize,
    spans: Vec<(usize, usize)>,
    steps: usize,
    /// Per glob token, how many characters of its class start at each position (computed
    /// on first use, so that a run is not rescanned at every position).
    runs: Vec<Option<Vec<usize>>>,
}

impl Matcher<'_> {
    fn run_length(&mut self, t: usize, class: &CharClass, pos: usize) -> usize {
        if *class == CharClass::Any {
            return self.text.len() - pos;
        }
        let text = self.text;
        let runs = self.runs[t].get_or_insert_with(|| {
            let mut r = vec![0; text.len() + 1];
            for i in (0..text.len()).rev() {
                r[i] = if class.contains(text[i]) {
                    r[i + 1] + 1
                } else {
                    0
                };
            }
            r
        });
        runs[pos]
    }

    fn run(&mut self, t: usize, pos: usize) -> bool {
        let memo = !self.failed.is_empty();
        if memo && self.failed[t * self.width + pos] {
            return false;
        }
        if !memo {
            self.steps += 1;
            if self.steps > STEP_LIMIT {
                return false;
            }
        }
        let ok = self.step(t, pos);
        if !ok && memo {
            self.failed[t * self.width + pos] = true;
        }
        ok
    }

    fn step(&mut self, t: usize, pos: usize) -> bool {
        let Some(token) = self.tokens.get(t) else {
            return pos == self.text.len();
        };
        match token {
            Token::Literal(c) => self.text.get(pos) == Some(c) && self.run(t + 1, pos + 1),
            Token::Glob {
                class,
                many,
                lazy,
                save,
            } => {
                let run = self.run_length(t, class, pos);
                let (lo, hi) = if *many {
                    (0, run)
                } else {
                    (1.min(run), 1.min(run))
                };
                if !*many && run == 0 {
                    return false;
                }
                // Entered one position later, this glob was already tried and failed: every
                // end but the empty one is known to fail (same run, same ends).
                if *many
                    && run >= 1
                    && !self.failed.is_empty()
                    && self.failed[t * self.width + pos + 1]
                {
                    return self.attempt(t, pos, pos, *save);
                }
                for k in 0..=(hi - lo) {
                    let end = pos + if *lazy { lo + k } else { hi - k };
                    // Skip ends already known to fail without a call.
                    if !self.failed.is_empty() && self.failed[(t + 1) * self.width + end] {
                        continue;
                    }
                    if self.attempt(t, pos, end, *save) {
                        return true;
                    }
                }
                // Entering this glob anywhere later in the same run offers a subset of the
                // same end positions, so it fails too: marking them keeps `*a*a*a…b` linear
                // per token instead of quadratic.
                if *many && !self.failed.is_empty() {
                    for p in pos..=pos + run {
                        self.failed[t * self.width + p] = true;
                    }
                }
                false
            }
            Token::Ip { glob, save } => {
                let run = self.text[pos..]
                    .iter()
                    .take_while(|&&c| glob.address_char(c))
                    .count();
                for len in (1..=run).rev() {
                    let candidate: String = self.text[pos..pos + len].iter().collect();
                    if glob.accepts(&candidate) && self.attempt(t, pos, pos + len, *save) {
                        return true;
                    }
                }
                false
            }
            Token::BackMatch(n) => {
                let Some(&(a, b)) = self.spans.get(*n) else {
                    return false;
                };
                let len = b - a;
                if pos + len > self.text.len() {
                    return false;
                }
                let same = (0..len).all(|k| self.text[a + k] == self.text[pos + k]);
                same && self.run(t + 1, pos + len)
            }
        }
    }

    /// Tries token `t` consuming `pos..end`, recording the span when it is saved.
    fn attempt(&mut self, t: usize, pos: usize, end: usize, save: bool) -> bool {
        if save {
            self.spans.push((pos, end));
        }
        if self.run(t + 1, end) {
            return true;
        }
        if save {
            self.spans.pop();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, input: &str) -> Option<Vec<String>> {
        Pattern::compile(pattern).expect("compiles").matches(input)
    }

    #[test]
    fn star_is_greedy_and_anchored() {
        assert_eq!(m("a*", "abc"), Some(vec!["bc".into()]));
        assert_eq!(m("*|*", "a|b|c"), Some(vec!["a|b".into(), "c".into()]));
        assert_eq!(m("abc", "abcd"), None);
    }

    #[test]
    fn lazy_star_matches_as_little_as_it_can() {
        assert_eq!(m("$_*|*", "a|b|c"), Some(vec!["a".into(), "b|c".into()]));
    }

    #[test]
    fn comparison_is_case_blind_and_captures_keep_case() {
        assert_eq!(m("tcp|*", "TCP|Abc"), Some(vec!["Abc".into()]));
    }

    #[test]
    fn exponential_pattern_terminates_quickly() {
        let input = "a".repeat(5000);
        assert_eq!(m("*a*a*a*a*a*a*b", &input), None);
    }
}
