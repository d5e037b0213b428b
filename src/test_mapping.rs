//! `dispatcher --test-mapping TABLE PROBE`: run probes through a mapping table and print what
//! the engine does, like the original's `imsimta test -mapping`.
//!
//! For each probe it prints
//!
//! ```text
//! Input string:  TCP|127.0.0.1|225|127.0.0.9|4000
//! Output string: 500 Do not connect to this machine
//! Output flags:  [N]
//! Result:        reject "500 Do not connect to this machine"
//! ```
//!
//! or `No match.` in place of the output lines; the `Result:` line only for PORT_ACCESS
//! (`accept` or `reject "<text>"`). With PROBE `-`, probes are read from standard input, one
//! a line, and the blocks are separated by a blank line. This module formats; the engine in
//! [`crate::mapping`] decides.

use std::fmt::Write as _;

use crate::mapping::port_access::{self, Verdict};
use crate::mapping::table::{InputFlags, MappingSet, Notes};
use crate::mapping::template::Flags;

/// `[N]`, `[<, N]`, `[]`.
pub fn format_flags(flags: &Flags) -> String {
    let letters: Vec<String> = flags.iter().map(char::to_string).collect();
    format!("[{}]", letters.join(", "))
}

/// The block printed for one probe.
pub fn report(set: &MappingSet, table: &str, probe: &str) -> String {
    let mut out = String::new();
    let mut notes = Notes::default();
    // Writing to a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(out, "Input string:  {probe}");
    match set.map(table, probe, &InputFlags::new(), &mut notes) {
        Some(m) => {
            let _ = writeln!(out, "Output string: {}", m.output);
            let _ = writeln!(out, "Output flags:  {}", format_flags(&m.flags));
        }
        None => {
            let _ = writeln!(out, "No match.");
        }
    }
    for u in &notes.unsupported {
        let _ = writeln!(
            out,
            "Note:          {u} is not supported; it counted as no answer"
        );
    }
    if notes.iteration_limit_hit {
        let _ = writeln!(
            out,
            "Note:          the iteration limit stopped a $R/$L loop"
        );
    }
    if notes.entry_budget_hit {
        let _ = writeln!(
            out,
            "Note:          the mapping tried too many entries; stopped"
        );
    }
    if notes.output_limit_hit {
        let _ = writeln!(
            out,
            "Note:          the output grew past the length limit; stopped"
        );
    }
    if table.eq_ignore_ascii_case(port_access::TABLE) {
        let decision = port_access::decide(set, probe);
        let result = match &decision.verdict {
            Verdict::Accept => "accept".to_string(),
            Verdict::Reject { text } => format!("reject \"{text}\""),
        };
        let _ = writeln!(out, "Result:        {result}");
    }
    out
}
