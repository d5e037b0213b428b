//! The table of `dispatcher.cnf` options: every name the original documents, its value type,
//! its default, and whether this dispatcher acts on it.
//!
//! This is the one place that says which options exist. [`super::service`] reads values by
//! these names; `docs/configuration.md` and `docs/compatibility.md` describe the same table for
//! administrators, and a test checks that every name here appears in both.
//!
//! Every option may be written in the global part, where it is the default for every service,
//! or in a `[SERVICE=name]` section ("Initial option specifications that appear before any such
//! section tag apply globally to all sections"). `[SERVICE=DISPATCHER]` holds the dispatcher's
//! own `DEBUG` and `HISTORY_TO_RETAIN`, and (ours) `METRICS_PORT` and
//! `METRICS_INTERFACE_ADDRESS`, which only it takes.
//!
//! Built-in defaults: the original documents no values for absent options except `BACKLOG`
//! and `MAX_HANDOFFS`; for the process limits we use the values of Sun's shipped sample file
//! (`MIN_PROCS=0 MAX_PROCS=5 MIN_CONNS=5 MAX_CONNS=20 MAX_LIFE_TIME=86400 MAX_LIFE_CONNS=100
//! MAX_SHUTDOWN=2`), which is what an installation that never changed them ran with.

/// The dispatcher's own options that only `[SERVICE=DISPATCHER]` takes (ours).
pub const METRICS_PORT: &str = "METRICS_PORT";
pub const METRICS_INTERFACE_ADDRESS: &str = "METRICS_INTERFACE_ADDRESS";

/// The kind of value an option takes, which decides how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A whole number ≥ the given minimum (decimal or `b%v`).
    Count { min: i64 },
    /// A duration in seconds ≥ 0.
    Seconds,
    /// A size in bytes ≥ 0.
    Bytes,
    /// One or more TCP ports, separated by commas or blanks.
    Ports,
    /// A file specification, possibly `NAME:rest` through the tailor.
    FileSpec,
    /// An IPv4 or IPv6 address.
    Address,
    /// A 32-bit mask; `-1` sets every bit.
    Mask,
    /// `0` or `1` (any integer; non-zero is on).
    Flag,
    /// Free text passed on as written.
    Text,
    /// Names of environment variables, separated by blanks or commas.
    EnvNames,
}

/// What this dispatcher does with the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Read and acted on as the original documents it.
    Acted,
    /// Read and checked, but not acted on; the reason is shown once in a warning.
    NotActed(&'static str),
    /// Of historical interest only (OpenVMS and old Dispatcher options): accepted and ignored.
    Historical(&'static str),
}

/// The default of an option that is absent from both the global part and the section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    None,
    Int(i64),
    /// Computed from other values, as the text says.
    Derived(&'static str),
}

/// One row of the option table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// Upper case, as the original spells it.
    pub name: &'static str,
    pub kind: ValueKind,
    pub default: DefaultValue,
    pub support: Support,
    /// May appear several times in one section, each line adding a value.
    pub repeatable: bool,
    /// One line for `--check` and the docs.
    pub summary: &'static str,
}

const fn opt(
    name: &'static str,
    kind: ValueKind,
    default: DefaultValue,
    support: Support,
    summary: &'static str,
) -> OptionSpec {
    OptionSpec {
        name,
        kind,
        default,
        support,
        repeatable: false,
        summary,
    }
}

use DefaultValue::{Derived, Int};
use Support::{Acted, Historical, NotActed};
use ValueKind::{Address, Bytes, Count, EnvNames, FileSpec, Flag, Mask, Ports, Seconds, Text};

/// The OpenVMS process quotas of the PMDF option table ("old Dispatcher options").
const fn vms(name: &'static str) -> OptionSpec {
    opt(
        name,
        Count { min: 0 },
        DefaultValue::None,
        Historical("an OpenVMS process quota (PMDF)"),
        "OpenVMS only: a process quota of the worker processes",
    )
}

const NO_RBL: &str = "DNS block-list checks are not implemented; no DNS lookups are made";

/// Every option, in the order the documentation lists them.
pub const OPTIONS: &[OptionSpec] = &[
    opt(
        "BACKLOG",
        Count { min: 1 },
        Derived("MAX_CONNS*MAX_PROCS, at least 5"),
        Acted,
        "depth of the listen queue of the service's ports",
    ),
    opt(
        "DEBUG",
        Mask,
        Int(0),
        Acted,
        "debug bit mask of the dispatcher (-1 = everything); also IMTA_DISPATCHER_DEBUG in hex",
    ),
    OptionSpec {
        repeatable: true,
        ..opt(
            "DNS_VERIFY_DOMAIN",
            Text,
            DefaultValue::None,
            NotActed(NO_RBL),
            "DNS block list to check clients against (up to five lines a service)",
        )
    },
    opt(
        "ENABLE_RBL",
        Flag,
        Int(0),
        NotActed(NO_RBL),
        "check clients against the DNS_VERIFY_DOMAIN lists",
    ),
    opt(
        "HISTORICAL_TIME",
        Seconds,
        DefaultValue::None,
        NotActed("the dispatcher keeps no connection-rate statistics window"),
        "time window of the dispatcher's connection statistics",
    ),
    opt(
        "HISTORY_TO_RETAIN",
        Count { min: 0 },
        Int(5),
        Acted,
        "old versions of each log file kept when a new one is opened",
    ),
    opt(
        "IDENT",
        Flag,
        Int(0),
        NotActed("RFC 1413 ident lookups are not made (relays are trusted by PORT_ACCESS)"),
        "look up the client's user name with RFC 1413 ident",
    ),
    opt(
        "IMAGE",
        FileSpec,
        DefaultValue::None,
        Acted,
        "program the service's worker processes run",
    ),
    opt(
        "IMPORT_ENVIRONMENT",
        EnvNames,
        DefaultValue::None,
        Acted,
        "variables of the dispatcher's environment the workers also get (ours, as Postfix's import_environment)",
    ),
    opt(
        "INTERFACE_ADDRESS",
        Address,
        DefaultValue::None,
        Acted,
        "address to listen on (all addresses when absent)",
    ),
    opt(
        "LOGFILE",
        FileSpec,
        DefaultValue::None,
        Acted,
        "file receiving the worker processes' output",
    ),
    opt(
        "MAX_CONNS",
        Count { min: 1 },
        Int(20),
        Acted,
        "most connections one worker process handles at once",
    ),
    opt(
        "MAX_HANDOFFS",
        Count { min: 1 },
        Int(5),
        NotActed("hand-offs never block the dispatcher, so there is nothing to bound"),
        "most hand-offs to workers in progress at once per port",
    ),
    opt(
        "MAX_IDLE_TIME",
        Seconds,
        Int(600),
        Acted,
        "a worker above MIN_PROCS with no connection for this long is retired",
    ),
    opt(
        "MAX_LIFE_CONNS",
        Count { min: 1 },
        Int(100),
        Acted,
        "a worker that has been handed this many connections is retired",
    ),
    opt(
        "MAX_LIFE_TIME",
        Seconds,
        Int(86400),
        Acted,
        "a worker older than this is retired",
    ),
    opt(
        "MAX_PROCS",
        Count { min: 1 },
        Int(5),
        Acted,
        "most worker processes of the service",
    ),
    opt(
        "MAX_SHUTDOWN",
        Count { min: 1 },
        Int(2),
        Acted,
        "most retiring (draining) workers of the service at once",
    ),
    opt(
        METRICS_INTERFACE_ADDRESS,
        Address,
        DefaultValue::None,
        Acted,
        "address of the metrics endpoint, only in [SERVICE=DISPATCHER] (default 127.0.0.1; ours)",
    ),
    opt(
        METRICS_PORT,
        Ports,
        DefaultValue::None,
        Acted,
        "port of the Prometheus/OpenMetrics endpoint, only in [SERVICE=DISPATCHER]; off when absent (ours)",
    ),
    opt(
        "MIN_CONNS",
        Count { min: 1 },
        Int(5),
        Acted,
        "connections that make a worker 'busy enough' to start another",
    ),
    opt(
        "MIN_PROCS",
        Count { min: 0 },
        Int(0),
        Acted,
        "worker processes kept started ahead of connections",
    ),
    opt(
        "PARAMETER",
        Text,
        DefaultValue::None,
        Acted,
        "text passed to the worker image (CHANNEL=name for the LMTP images)",
    ),
    opt(
        "PORT",
        Ports,
        DefaultValue::None,
        Acted,
        "TCP port(s) the service listens on",
    ),
    opt(
        "STACKSIZE",
        Bytes,
        Int(2_048_000),
        Acted,
        "stack size of each connection thread in a worker",
    ),
    opt(
        "TLS_PORT",
        Ports,
        DefaultValue::None,
        NotActed("TLS is not implemented; these ports are not opened"),
        "TCP port(s) with TLS from the first byte",
    ),
    opt(
        "USER",
        Text,
        DefaultValue::None,
        Acted,
        "account the workers run as (default: the tailor's IMTA_USER)",
    ),
    opt(
        "UCX_HOLD",
        Flag,
        DefaultValue::None,
        Historical("an OpenVMS UCX setting"),
        "OpenVMS only: keep the dispatcher's channel to handed-off sockets",
    ),
    vms("ASTLM"),
    vms("BIOLM"),
    vms("BYTLM"),
    vms("CPULM"),
    vms("DIOLM"),
    vms("ENQLM"),
    vms("FILLM"),
    vms("JTQUOTA"),
    vms("PGFLQUOTA"),
    vms("PRCLM"),
    vms("TQELM"),
    vms("WSDEFAULT"),
    vms("WSEXTENT"),
    vms("WSQUOTA"),
];

/// The row for `name` (any case).
pub fn lookup(name: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.name.eq_ignore_ascii_case(name))
}

/// The known option closest to an unknown `name`, when it is close enough to be a typo.
pub fn did_you_mean(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    OPTIONS
        .iter()
        .map(|o| (edit_distance(&upper, o.name), o.name))
        .filter(|(d, candidate)| *d <= 2.max(candidate.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance, for the did-you-mean above.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_upper_case() {
        for (i, o) in OPTIONS.iter().enumerate() {
            assert_eq!(o.name, o.name.to_ascii_uppercase());
            assert!(
                OPTIONS[i + 1..].iter().all(|p| p.name != o.name),
                "{}",
                o.name
            );
        }
    }

    #[test]
    fn lookup_is_case_blind() {
        assert_eq!(lookup("max_conns").map(|o| o.name), Some("MAX_CONNS"));
        assert!(lookup("NO_SUCH").is_none());
    }

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        assert_eq!(did_you_mean("MAX_CONN"), Some("MAX_CONNS"));
        assert_eq!(did_you_mean("max_proc"), Some("MAX_PROCS"));
        assert_eq!(did_you_mean("INTERFACE_ADRESS"), Some("INTERFACE_ADDRESS"));
        assert_eq!(did_you_mean("STACK_SIZE"), Some("STACKSIZE"));
        assert_eq!(did_you_mean("PQL_DBYTLM"), None);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("PORT", "PORT"), 0);
        assert_eq!(edit_distance("PORT", "PORTS"), 1);
        assert_eq!(edit_distance("PROT", "PORT"), 2);
    }
}
