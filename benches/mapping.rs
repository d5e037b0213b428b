//! `make bench` (mapping part): PORT_ACCESS probes per second through the seed's table and
//! through a generated table of 10,000 entries, printed as a table.
//!
//! Each row runs a fixed number of probes (bounded in count, so it always ends) and reports
//! the rate. The 10,000-entry table lists 9,999 relays and the seed's catch-all; the "worst"
//! probe comes from an address that is no relay, so every entry is tried.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::mappings;
use msdispatcher::mapping::port_access;
use msdispatcher::mapping::table::MappingSet;

fn compile(text: &str) -> MappingSet {
    let file: Arc<Path> = Arc::from(Path::new("bench"));
    let mut d = Diagnostics::default();
    let m = mappings::parse_str(&file, text, &mut d).unwrap_or_else(|e| panic!("{e}"));
    MappingSet::compile(&m, &mut d).unwrap_or_else(|e| panic!("{e}"))
}

fn rate(set: &MappingSet, probe: &str, count: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..count {
        black_box(port_access::decide(set, black_box(probe)));
    }
    f64::from(count) / start.elapsed().as_secs_f64()
}

fn main() {
    let seed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seed/mappings");
    let seed = compile(&std::fs::read_to_string(seed_path).unwrap_or_else(|e| panic!("{e}")));

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
    let big = compile(&big);

    let rows: [(&str, &MappingSet, &str, u32); 5] = [
        (
            "seed table, relay (1st entry)",
            &seed,
            "TCP|10.0.0.1|225|1.2.3.4|40000",
            200_000,
        ),
        (
            "seed table, stranger (5th entry)",
            &seed,
            "TCP|10.0.0.1|225|9.9.9.9|40000",
            200_000,
        ),
        (
            "10,000 entries, relay at 5,000",
            &big,
            "TCP|10.0.0.1|225|10.0.19.136|40000",
            200,
        ),
        (
            "10,000 entries, stranger (all)",
            &big,
            "TCP|10.0.0.1|225|192.0.2.1|40000",
            200,
        ),
        (
            "10,000 entries, IPv6 stranger",
            &big,
            "TCP|::1|225|2001:db8::1|40000",
            200,
        ),
    ];
    println!("| table and probe | probes | probes/s |");
    println!("|---|---:|---:|");
    for (name, set, probe, count) in rows {
        println!("| {name} | {count} | {:.0} |", rate(set, probe, count));
    }
}
