//! `make bench` (mapping part): PORT_ACCESS probes per second through the seed's table and
//! through generated tables of 10,000 entries, with the linear walk (every entry, top to
//! bottom) beside the walk `port_access::decide` uses (the entry index, for tables of at
//! least `INDEX_MIN_ENTRIES` entries), printed as a table.
//!
//! Each row runs [`ROUNDS`] rounds, the two walks one after the other in every round, so
//! that both see the same machine; a round stops after its probe count or [`ROUND_TIME`],
//! whichever comes first, and the rate shown is the median of the rounds. The relay table
//! lists 9,999 relays and the seed's catch-all; the CIDR table 5,000 IPv4 and 4,999 IPv6
//! prefixes refused, then an entry accepting the rest. A "stranger" is in none of them, so
//! the linear walk tries every entry.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::mappings;
use msdispatcher::mapping::port_access;
use msdispatcher::mapping::table::{MappingSet, Walk};

/// Rounds per row.
const ROUNDS: usize = 5;

/// Longest a walk may run in one round.
const ROUND_TIME: Duration = Duration::from_millis(400);

fn compile(text: &str) -> MappingSet {
    let file: Arc<Path> = Arc::from(Path::new("bench"));
    let mut d = Diagnostics::default();
    let m = mappings::parse_str(&file, text, &mut d).unwrap_or_else(|e| panic!("{e}"));
    MappingSet::compile(&m, &mut d).unwrap_or_else(|e| panic!("{e}"))
}

/// Probes per second of one round: at most `count` probes, at most [`ROUND_TIME`].
fn round(set: &MappingSet, probe: &str, count: u32, walk: Walk) -> f64 {
    let start = Instant::now();
    let mut done = 0u32;
    while done < count {
        black_box(port_access::decide_with(set, black_box(probe), walk));
        done += 1;
        if done.is_multiple_of(64) && start.elapsed() > ROUND_TIME {
            break;
        }
    }
    f64::from(done) / start.elapsed().as_secs_f64()
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn relay_table() -> String {
    let mut big = String::from("PORT_ACCESS\n\n");
    for i in 0..9_999u32 {
        big.push_str(&format!(
            "  TCP|*|225|10.{}.{}.{}|*  $Y\n",
            i / 65_536,
            (i / 256) % 256,
            i % 256
        ));
    }
    big.push_str("  TCP|*|*|*|*  $N500$ Do$ not$ connect$ to$ this$ machine\n");
    big
}

fn cidr_table() -> String {
    let mut big = String::from("PORT_ACCESS\n\n");
    for i in 0..5_000u32 {
        big.push_str(&format!(
            "  TCP|*|*|$(172.{}.{}.0/24)|*  $N550$ blocked\n",
            16 + i / 256,
            i % 256
        ));
    }
    for i in 0..4_999u32 {
        big.push_str(&format!(
            "  TCP|*|*|${{2001:db8:{:x}::/48}}|*  $N550$ blocked\n",
            i
        ));
    }
    big.push_str("  TCP|*|*|*|*  $Y\n");
    big
}

fn main() {
    let seed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seed/mappings");
    let seed = compile(&std::fs::read_to_string(seed_path).unwrap_or_else(|e| panic!("{e}")));
    let relays = compile(&relay_table());
    let cidrs = compile(&cidr_table());

    // (row, table, probe, probes per round, the second walk)
    let rows: [(&str, &MappingSet, &str, u32, Walk); 10] = [
        (
            "seed table, relay (1st entry)",
            &seed,
            "TCP|10.0.0.1|225|1.2.3.4|40000",
            100_000,
            Walk::Auto,
        ),
        (
            "seed table, stranger (5th entry)",
            &seed,
            "TCP|10.0.0.1|225|9.9.9.9|40000",
            100_000,
            Walk::Auto,
        ),
        (
            "seed table, stranger, index forced",
            &seed,
            "TCP|10.0.0.1|225|9.9.9.9|40000",
            100_000,
            Walk::Indexed,
        ),
        (
            "10,000 entries, relay at 5,000",
            &relays,
            "TCP|10.0.0.1|225|10.0.19.136|40000",
            20_000,
            Walk::Auto,
        ),
        (
            "10,000 entries, stranger (all)",
            &relays,
            "TCP|10.0.0.1|225|192.0.2.1|40000",
            20_000,
            Walk::Auto,
        ),
        (
            "10,000 entries, IPv6 stranger",
            &relays,
            "TCP|::1|225|2001:db8::1|40000",
            20_000,
            Walk::Auto,
        ),
        (
            "10,000 CIDR entries, IPv4 blocked at 2,500",
            &cidrs,
            "TCP|10.0.0.1|25|172.25.196.7|40000",
            20_000,
            Walk::Auto,
        ),
        (
            "10,000 CIDR entries, IPv4 stranger (all)",
            &cidrs,
            "TCP|10.0.0.1|25|192.0.2.1|40000",
            20_000,
            Walk::Auto,
        ),
        (
            "10,000 CIDR entries, IPv6 stranger (all)",
            &cidrs,
            "TCP|2001:db8:ffff::1|25|2001:db9::1|40000",
            20_000,
            Walk::Auto,
        ),
        (
            "10,000 CIDR entries, IPv6 blocked at 9,999",
            &cidrs,
            "TCP|::1|25|2001:db8:1386::25|40000",
            20_000,
            Walk::Auto,
        ),
    ];
    println!("| table and probe | probes per round | linear walk probes/s | indexed probes/s | indexed ÷ linear |");
    println!("|---|---:|---:|---:|---:|");
    for (name, set, probe, count, walk) in rows {
        // Both walks must decide alike, or the rates compare nothing.
        assert_eq!(
            port_access::decide_with(set, probe, Walk::Linear),
            port_access::decide_with(set, probe, walk),
            "{name}: the walks disagree"
        );
        let (mut linear, mut indexed) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            linear.push(round(set, probe, count, Walk::Linear));
            indexed.push(round(set, probe, count, walk));
        }
        let (linear, indexed) = (median(linear), median(indexed));
        println!(
            "| {name} | {count} | {linear:.0} | {indexed:.0} | {:.2} |",
            indexed / linear
        );
    }
    println!();
    println!(
        "Rates are medians of {ROUNDS} rounds (at most {} ms a walk each), the walks \
         interleaved. `indexed` is what `port_access::decide` does: tables under \
         {} entries are walked linearly, so the seed's rows compare the walk with itself \
         except where the index is forced.",
        ROUND_TIME.as_millis(),
        msdispatcher::mapping::table::INDEX_MIN_ENTRIES
    );
}
