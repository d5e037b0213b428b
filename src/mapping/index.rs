//! The entry index of a table: which entries can match a string, found without trying them
//! all.
//!
//! A pattern is anchored and compares case-blind, so part of what it is made of appears in
//! every string it matches: each run of literal characters appears as written (lower-cased),
//! and each IP glob needs, somewhere in the string, the text of an address of its family in
//! its prefix. The index files every entry under one such need, its *key* (the most
//! selective one the pattern has, see [`Need::selectivity`]), and answers a query with the
//! entries whose key the string contains, plus the entries that have no key (patterns made
//! of wildcards only), in table order. An entry left out cannot match the string, so a table
//! that tries only these candidates, top to bottom, picks the same first match as one that
//! tries every entry; a string that changes (`$C`, `$L`, `$R`) is looked up again.
//!
//! How keys are found in a string:
//! * a literal key through one window of at most [`WINDOW`] bytes of it (the window fewest
//!   keys share), looked up at every position of the string, then compared in full;
//! * a prefix key by reading every address text in the string (every substring of at most
//!   [`Family::longest_text`] address characters that parses, as the matcher would read it
//!   after any wildcard) and looking up each prefix length the table uses.
//!
//! This module knows nothing of templates, flags or how the table walks its candidates.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::pattern::{Family, Pattern, Subject, Token};

/// Longest window (in bytes) a literal key is found through; one machine word.
pub const WINDOW: usize = 8;

/// What a pattern needs every string it matches to contain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Need {
    /// A run of literal characters, lower-cased, as UTF-8.
    Literal(Vec<u8>),
    /// The text of an address whose first `bits` bits are those of `addr` (already masked).
    Prefix {
        family: Family,
        bits: u8,
        addr: u128,
    },
}

impl Need {
    /// Every need of `pattern`: its literal runs and its IP globs.
    fn of(pattern: &Pattern) -> Vec<Need> {
        let mut needs = Vec::new();
        let mut run = String::new();
        for token in pattern.tokens() {
            if let Token::Literal(c) = token {
                run.push(*c);
                continue;
            }
            if !run.is_empty() {
                needs.push(Need::Literal(std::mem::take(&mut run).into_bytes()));
            }
            if let Token::Ip { glob, .. } = token {
                let (family, addr, bits) = glob.prefix();
                needs.push(Need::Prefix {
                    family,
                    bits,
                    addr: addr & family.mask(bits),
                });
            }
        }
        if !run.is_empty() {
            needs.push(Need::Literal(run.into_bytes()));
        }
        needs
    }

    /// How few strings are likely to contain this need, roughly in literal characters: a
    /// character of text is worth about three bits of an address. Only speed depends on it.
    fn selectivity(&self) -> usize {
        match self {
            Need::Literal(text) => text.len(),
            Need::Prefix { bits, .. } => usize::from(*bits) / 3,
        }
    }
}

/// A multiplicative hash for machine words (the keys here come from the administrator's
/// table, so a hash an attacker could flood is no concern; a lookup per string position is).
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// Up to [`WINDOW`] bytes as one word.
fn pack(bytes: &[u8]) -> u64 {
    let mut word = [0u8; WINDOW];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// A literal key and the window it is found through.
#[derive(Debug)]
struct LiteralKey {
    text: Vec<u8>,
    /// Where the window starts in `text`.
    window_at: usize,
    /// The bucket of entries filed under this key.
    bucket: u32,
}

/// The literal keys, by window.
#[derive(Debug, Default)]
struct Literals {
    keys: Vec<LiteralKey>,
    /// Per window length in use: the packed window → the keys (indexes into `keys`) found
    /// through it.
    windows: Vec<(usize, WordMap<u64, Vec<u32>>)>,
}

impl Literals {
    /// Files each distinct literal key under its rarest window.
    fn new(keys: Vec<(Vec<u8>, u32)>) -> Literals {
        let windows_of = |text: &[u8]| {
            let w = text.len().min(WINDOW);
            (0..=text.len() - w).map(move |at| (at, w))
        };
        // How many keys contain each window (a key counted once per window).
        let mut shared: WordMap<(usize, u64), u32> = WordMap::default();
        for (text, _) in &keys {
            let mut seen: Vec<u64> = windows_of(text)
                .map(|(at, w)| pack(&text[at..at + w]))
                .collect();
            seen.sort_unstable();
            seen.dedup();
            let w = text.len().min(WINDOW);
            for word in seen {
                *shared.entry((w, word)).or_default() += 1;
            }
        }
        let mut literals = Literals::default();
        for (text, bucket) in keys {
            let w = text.len().min(WINDOW);
            let window_at = windows_of(&text)
                .min_by_key(|&(at, w)| shared.get(&(w, pack(&text[at..at + w]))))
                .map_or(0, |(at, _)| at);
            let word = pack(&text[window_at..window_at + w]);
            let id = literals.keys.len() as u32;
            literals.keys.push(LiteralKey {
                text,
                window_at,
                bucket,
            });
            let slot = match literals.windows.iter().position(|(len, _)| *len == w) {
                Some(slot) => slot,
                None => {
                    literals.windows.push((w, WordMap::default()));
                    literals.windows.len() - 1
                }
            };
            literals.windows[slot].1.entry(word).or_default().push(id);
        }
        literals
    }

    /// Pushes the bucket of every key that occurs in `text`.
    fn find(&self, text: &[u8], found: &mut Vec<u32>) {
        for (w, map) in &self.windows {
            let Some(last) = text.len().checked_sub(*w) else {
                continue;
            };
            for p in 0..=last {
                let Some(ids) = map.get(&pack(&text[p..p + w])) else {
                    continue;
                };
                for &id in ids {
                    let key = &self.keys[id as usize];
                    let occurs = p
                        .checked_sub(key.window_at)
                        .is_some_and(|start| text[start..].starts_with(&key.text));
                    if occurs {
                        found.push(key.bucket);
                    }
                }
            }
        }
    }
}

/// The prefix keys of one family.
#[derive(Debug)]
struct Prefixes {
    family: Family,
    /// The prefix lengths in use, each with the masked address → bucket.
    lengths: Vec<(u8, WordMap<u128, u32>)>,
}

impl Prefixes {
    fn new(family: Family) -> Prefixes {
        Prefixes {
            family,
            lengths: Vec::new(),
        }
    }

    fn insert(&mut self, bits: u8, addr: u128, bucket: u32) {
        let slot = match self.lengths.iter().position(|(b, _)| *b == bits) {
            Some(slot) => slot,
            None => {
                self.lengths.push((bits, WordMap::default()));
                self.lengths.len() - 1
            }
        };
        self.lengths[slot].1.insert(addr, bucket);
    }

    /// Pushes the bucket of every prefix that an address text in `chars` falls in.
    fn find(&self, chars: &[char], found: &mut Vec<u32>) {
        if self.lengths.is_empty() {
            return;
        }
        let family = self.family;
        let mut text = String::with_capacity(family.longest_text());
        for start in 0..chars.len() {
            text.clear();
            let mut colon = false;
            for &c in chars[start..].iter().take(family.longest_text()) {
                if !family.address_char(c) {
                    break;
                }
                text.push(c);
                colon |= c == ':';
                // Cheap refusals of what cannot parse: an IPv4 address has at least 7
                // characters, an IPv6 one a colon.
                let plausible = match family {
                    Family::V4 => text.len() >= 7,
                    Family::V6 => colon,
                };
                if !plausible {
                    continue;
                }
                let Some(addr) = family.parse(&text) else {
                    continue;
                };
                for (bits, map) in &self.lengths {
                    if let Some(&bucket) = map.get(&(addr & family.mask(*bits))) {
                        found.push(bucket);
                    }
                }
            }
        }
    }
}

/// The index of one table's entries, built once when the table is compiled.
#[derive(Debug)]
pub struct EntryIndex {
    /// Entries whose pattern has no key, in table order: candidates for every string.
    keyless: Vec<u32>,
    /// Per key (a bucket number), the entries filed under it, in table order. Every entry
    /// with a key is in exactly one bucket.
    buckets: Vec<Vec<u32>>,
    literals: Literals,
    /// IPv4 then IPv6.
    prefixes: [Prefixes; 2],
}

impl EntryIndex {
    /// Files each of `patterns` (a table's entries, in order) under its most selective need.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> EntryIndex {
        let mut keyless = Vec::new();
        let mut buckets: Vec<Vec<u32>> = Vec::new();
        let mut bucket_of: HashMap<Need, u32> = HashMap::new();
        for (entry, pattern) in patterns.into_iter().enumerate() {
            let entry = entry as u32;
            // Ties keep the first need: `max_by_key` keeps the last, so walk backwards.
            let best = Need::of(pattern)
                .into_iter()
                .rev()
                .max_by_key(Need::selectivity);
            let Some(need) = best else {
                keyless.push(entry);
                continue;
            };
            let bucket = *bucket_of.entry(need).or_insert_with(|| {
                buckets.push(Vec::new());
                (buckets.len() - 1) as u32
            });
            buckets[bucket as usize].push(entry);
        }
        let mut literal_keys = Vec::new();
        let mut prefixes = [Prefixes::new(Family::V4), Prefixes::new(Family::V6)];
        for (need, bucket) in bucket_of {
            match need {
                Need::Literal(text) => literal_keys.push((text, bucket)),
                Need::Prefix { family, bits, addr } => {
                    prefixes[usize::from(family == Family::V6)].insert(bits, addr, bucket)
                }
            }
        }
        EntryIndex {
            keyless,
            buckets,
            literals: Literals::new(literal_keys),
            prefixes,
        }
    }

    /// The entries that may match `subject`.
    pub fn candidates(&self, subject: &Subject) -> Candidates<'_> {
        let chars = subject.folded();
        let text: String = chars.iter().collect();
        let mut found = Vec::new();
        self.literals.find(text.as_bytes(), &mut found);
        for prefixes in &self.prefixes {
            prefixes.find(chars, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        let mut entries: Vec<u32> = found
            .iter()
            .flat_map(|&b| self.buckets[b as usize].iter().copied())
            .collect();
        entries.sort_unstable();
        Candidates::Only {
            keyless: &self.keyless,
            keyed: entries,
        }
    }
}

/// The entries a table tries for one string, in table order.
#[derive(Debug)]
pub enum Candidates<'a> {
    /// Every entry (the linear walk).
    Every,
    /// The entries the index found, and those it cannot rule out (both sorted).
    Only { keyless: &'a [u32], keyed: Vec<u32> },
}

impl Candidates<'_> {
    /// The first candidate at or after entry `from`; `len` (the table's length) when none is.
    pub fn next(&self, from: usize, len: usize) -> usize {
        match self {
            Candidates::Every => from,
            Candidates::Only { keyless, keyed } => {
                let first = |list: &[u32]| {
                    let at = list.partition_point(|&e| (e as usize) < from);
                    list.get(at).map_or(len, |&e| e as usize)
                };
                first(keyless).min(first(keyed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[&str]) -> EntryIndex {
        let compiled: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::compile(p).expect("compiles"))
            .collect();
        EntryIndex::new(&compiled)
    }

    /// Every candidate for `input`, in order.
    fn candidates(index: &EntryIndex, len: usize, input: &str) -> Vec<usize> {
        let c = index.candidates(&Subject::new(input));
        let mut out = Vec::new();
        let mut i = c.next(0, len);
        while i < len {
            out.push(i);
            i = c.next(i + 1, len);
        }
        out
    }

    #[test]
    fn literal_keys_are_found_case_blind_and_only_where_they_occur() {
        let patterns = [
            "TCP|*|225|10.0.0.1|*",
            "TCP|*|225|10.0.0.10|*",
            "tcp|*|*|*|*",
        ];
        let ix = index(&patterns);
        assert_eq!(
            candidates(&ix, 3, "tcp|1.1.1.1|225|10.0.0.10|4"),
            [1, 2],
            "`|10.0.0.1|` is not in the probe, `|10.0.0.10|` is"
        );
        assert_eq!(candidates(&ix, 3, "TCP|1.1.1.1|225|10.0.0.1|4"), [0, 2]);
        assert_eq!(candidates(&ix, 3, "TCP|10.0.0.1|225|9.9.9.9|4"), [2]);
        assert_eq!(candidates(&ix, 3, "UDP|x"), Vec::<usize>::new());
    }

    #[test]
    fn a_key_must_start_inside_the_string() {
        // The window of `abcdefghij` is found at position 0 of the string, but the key would
        // start before it.
        let ix = index(&["*abcdefghij*"]);
        assert_eq!(candidates(&ix, 1, "cdefghij"), Vec::<usize>::new());
        assert_eq!(candidates(&ix, 1, "xabcdefghijx"), [0]);
    }

    #[test]
    fn prefix_keys_find_addresses_inside_longer_digit_runs() {
        // `*` may swallow the start of a run: `$(2.3.4.5)` matches the tail of `12.3.4.5`.
        let ix = index(&["*$(2.3.4.5)", "*|${2001:db8::/32}|*", "$<10.0.0.4/2>"]);
        assert_eq!(candidates(&ix, 3, "x12.3.4.5"), [0]);
        assert_eq!(candidates(&ix, 3, "TCP|2001:DB8:0:1::9|25"), [1]);
        assert_eq!(candidates(&ix, 3, "10.0.0.7"), [2]);
        assert_eq!(candidates(&ix, 3, "10.0.0.8"), Vec::<usize>::new());
    }

    #[test]
    fn wildcard_only_patterns_are_candidates_for_everything_in_order() {
        let ix = index(&["a|b", "*", "%%", "c"]);
        assert_eq!(candidates(&ix, 4, "zz"), [1, 2]);
        assert_eq!(candidates(&ix, 4, "a|b"), [0, 1, 2]);
    }

    #[test]
    fn longest_address_texts_fit_the_enumeration_bound() {
        let v4 = "255.255.255.255";
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(v4.len(), Family::V4.longest_text());
        assert_eq!(v6.len(), Family::V6.longest_text());
        assert!(Family::V4.parse(v4).is_some() && Family::V6.parse(v6).is_some());
        // One character more is never an address: an octet or group may not grow.
        assert_eq!(Family::V4.parse("0255.255.255.255"), None);
        assert_eq!(
            Family::V6.parse("0ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"),
            None
        );
    }
}
