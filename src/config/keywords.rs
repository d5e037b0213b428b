//! Channel keywords of `imta.cnf`: how many arguments each takes, and which keywords are
//! alternatives of one another.
//!
//! Nothing on a channel's first line marks where a keyword's arguments end (`maxjobs 7`,
//! `backoff "pt2m" "pt5m"`, `pool SMTP_POOL`), so the parser needs this table. It lists the
//! keywords of the Messaging Server 6 Administration Guide ("Configuring Channel Definitions",
//! table "Channel Keywords Listed Alphabetically") that take arguments, with the argument
//! each takes, and the argument-less keywords a site is likely to write. A word not in the
//! table is still accepted, as the original accepts it (on UNIX it takes such a word for a
//! group id allowed to enqueue to the channel); `dispatcher --check` lists it. A keyword
//! missing from this table is therefore harmless unless it takes an argument: add it here
//! (and to `docs/imta-cnf.md`) when a real file needs it.
//!
//! Families: `logging` and `nologging` set one thing, so a channel's own `nologging`
//! overrides an inherited `logging`, and on one line the last of a family counts. [`family`]
//! names the setting a keyword belongs to; a keyword in no family is its own family.
//!
//! This module is a table and lookups; it reads no files and reports nothing.

/// What follows a keyword on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// Nothing.
    Flag,
    /// One whole number (`maxjobs 7`).
    Int,
    /// One or more whole numbers (`notices 1 2 3`).
    Ints,
    /// One word: a channel, pool, host, address, URL or user (`pool SMTP_POOL`).
    Name,
    /// One or more quoted strings (`backoff "pt2m" "pt5m"`).
    Strings,
    /// One rewrite template (`fileinto @$4O:$U+$S@$D`).
    Template,
}

impl Arity {
    /// What the keyword needs after it, for error messages ("needs a whole number after it").
    pub fn needs(self) -> &'static str {
        match self {
            Arity::Flag => "nothing",
            Arity::Int => "a whole number",
            Arity::Ints => "one or more whole numbers",
            Arity::Name => "a name",
            Arity::Strings => "one or more quoted strings",
            Arity::Template => "a template",
        }
    }
}

/// The original reads at most this many characters of a keyword and ignores the rest.
pub const MAX_KEYWORD: usize = 32;

use Arity::{Flag, Int, Ints, Name, Strings, Template};

/// Keywords and their arity, lower case.
const KEYWORDS: &[(&str, Arity)] = &[
    // Protocol and line terminators; `lmtp*` is mandatory on an LMTP channel.
    ("lmtp", Flag),
    ("lmtp_crlf", Flag),
    ("lmtp_cr", Flag),
    ("lmtp_lf", Flag),
    ("lmtp_crorlf", Flag),
    ("smtp", Flag),
    ("smtp_crlf", Flag),
    ("smtp_cr", Flag),
    ("smtp_lf", Flag),
    ("smtp_crorlf", Flag),
    ("nosmtp", Flag),
    ("submit", Flag),
    ("ehlo", Flag),
    ("noehlo", Flag),
    ("checkehlo", Flag),
    ("chunkingclient", Flag),
    ("chunkingserver", Flag),
    ("nochunkingclient", Flag),
    ("nochunkingserver", Flag),
    ("allowetrn", Flag),
    ("blocketrn", Flag),
    ("disableetrn", Flag),
    ("domainetrn", Flag),
    ("silentetrn", Flag),
    ("sendetrn", Flag),
    ("nosendetrn", Flag),
    // Sizes and limits.
    ("blocklimit", Int),
    ("noblocklimit", Flag),
    ("sourceblocklimit", Int),
    ("linelimit", Int),
    ("nolinelimit", Flag),
    ("maxblocks", Int),
    ("maxlines", Int),
    ("recipientlimit", Int),
    ("recipientcutoff", Int),
    ("sourcerecipientlimit", Int),
    ("maxheaderaddrs", Int),
    ("maxheaderchars", Int),
    ("maxprocchars", Int),
    ("alternateblocklimit", Int),
    ("alternatelinelimit", Int),
    ("alternaterecipientlimit", Int),
    ("alternatechannel", Name),
    ("expandlimit", Int),
    ("expandchannel", Name),
    ("holdlimit", Int),
    ("addrsperfile", Int),
    ("deferralrejectlimit", Int),
    ("disconnectbadauthlimit", Int),
    ("disconnectbadcommandlimit", Int),
    ("disconnectrecipientlimit", Int),
    ("disconnectrejectlimit", Int),
    ("disconnecttransactionlimit", Int),
    // Jobs, queues and delivery retries (Job Controller; no effect on a server).
    ("maxjobs", Int),
    ("filesperjob", Int),
    ("threaddepth", Int),
    ("pool", Name),
    ("subdirs", Int),
    ("backoff", Strings),
    ("nonurgentbackoff", Strings),
    ("normalbackoff", Strings),
    ("urgentbackoff", Strings),
    ("notices", Ints),
    ("nonurgentnotices", Ints),
    ("normalnotices", Ints),
    ("urgentnotices", Ints),
    ("master", Flag),
    ("slave", Flag),
    ("bidirectional", Flag),
    ("immnonurgent", Flag),
    ("single", Flag),
    ("single_sys", Flag),
    ("multiple", Flag),
    ("defragment", Flag),
    ("nodefragment", Flag),
    ("deferred", Flag),
    ("nodeferred", Flag),
    // Connections (client side; no effect on a server).
    ("port", Int),
    ("daemon", Name),
    ("interfaceaddress", Name),
    ("lastresort", Name),
    ("defaulthost", Name),
    ("authrewrite", Int),
    ("mx", Flag),
    ("nomx", Flag),
    ("nodns", Flag),
    ("defaultmx", Flag),
    ("randommx", Flag),
    ("nonrandommx", Flag),
    ("multigate", Flag),
    ("connectcanonical", Flag),
    ("connectalias", Flag),
    ("dequeue_removeroute", Flag),
    ("enqueue_removeroute", Flag),
    ("loopcheck", Flag),
    ("noloopcheck", Flag),
    ("reverse", Flag),
    ("noreverse", Flag),
    ("cacheeverything", Flag),
    ("cachefailures", Flag),
    ("cachesuccesses", Flag),
    ("nocache", Flag),
    // Where messages go: filters, switch channels, notifications.
    ("fileinto", Template),
    ("nofileinto", Flag),
    ("filter", Name),
    ("nofilter", Flag),
    ("channelfilter", Name),
    ("nochannelfilter", Flag),
    ("destinationfilter", Name),
    ("nodestinationfilter", Flag),
    ("sourcefilter", Name),
    ("nosourcefilter", Flag),
    ("user", Name),
    ("notificationchannel", Name),
    ("dispositionchannel", Name),
    ("aliasdetourhost", Name),
    ("aliasoptindetourhost", Name),
    ("allowswitchchannel", Flag),
    ("disableswitchchannel", Flag),
    // Identification and authentication.
    ("identnone", Flag),
    ("identnonenumeric", Flag),
    ("identnonesymbolic", Flag),
    ("identnonelimited", Flag),
    ("identtcp", Flag),
    ("identtcpnumeric", Flag),
    ("identtcpsymbolic", Flag),
    ("identtcplimited", Flag),
    ("maysaslserver", Flag),
    ("mustsaslserver", Flag),
    ("nosasl", Flag),
    ("nosaslserver", Flag),
    ("maysaslclient", Flag),
    ("mustsaslclient", Flag),
    ("nosaslclient", Flag),
    ("saslswitchchannel", Name),
    ("maytls", Flag),
    ("maytlsserver", Flag),
    ("maytlsclient", Flag),
    ("musttls", Flag),
    ("musttlsserver", Flag),
    ("musttlsclient", Flag),
    ("notls", Flag),
    ("notlsserver", Flag),
    ("notlsclient", Flag),
    ("tlsswitchchannel", Name),
    // Logging and debugging.
    ("logging", Flag),
    ("nologging", Flag),
    ("logheader", Int),
    ("slave_debug", Flag),
    ("noslave_debug", Flag),
    ("master_debug", Flag),
    ("nomaster_debug", Flag),
    // Addresses, character sets and headers.
    ("822", Flag),
    ("733", Flag),
    ("uucp", Flag),
    ("sourceroute", Flag),
    ("percents", Flag),
    ("bangstyle", Flag),
    ("header_822", Flag),
    ("header_733", Flag),
    ("header_uucp", Flag),
    ("bangoverpercent", Flag),
    ("nobangoverpercent", Flag),
    ("percentonly", Flag),
    ("exproute", Flag),
    ("noexproute", Flag),
    ("improute", Flag),
    ("noimproute", Flag),
    ("addreturnpath", Flag),
    ("sevenbit", Flag),
    ("eightbit", Flag),
    ("eightnegotiate", Flag),
    ("eightstrict", Flag),
    ("charset7", Name),
    ("charset8", Name),
    ("charsetesc", Name),
    ("headerlabelalign", Int),
    ("headerlinelength", Int),
    ("returnaddress", Name),
    ("returnpersonal", Name),
];

/// Keywords that set the same thing; within a family the last one written wins.
const FAMILIES: &[&[&str]] = &[
    &[
        "lmtp",
        "lmtp_crlf",
        "lmtp_cr",
        "lmtp_lf",
        "lmtp_crorlf",
        "smtp",
        "smtp_crlf",
        "smtp_cr",
        "smtp_lf",
        "smtp_crorlf",
        "nosmtp",
    ],
    &["ehlo", "noehlo", "checkehlo"],
    &["chunkingclient", "nochunkingclient"],
    &["chunkingserver", "nochunkingserver"],
    &[
        "allowetrn",
        "blocketrn",
        "disableetrn",
        "domainetrn",
        "silentetrn",
    ],
    &["sendetrn", "nosendetrn"],
    &["blocklimit", "noblocklimit"],
    &["linelimit", "nolinelimit"],
    &["master", "slave", "bidirectional"],
    &["single", "single_sys", "multiple"],
    &["defragment", "nodefragment"],
    &["deferred", "nodeferred"],
    &[
        "mx",
        "nomx",
        "nodns",
        "defaultmx",
        "randommx",
        "nonrandommx",
    ],
    &["loopcheck", "noloopcheck"],
    &["reverse", "noreverse"],
    &["fileinto", "nofileinto"],
    &["filter", "nofilter"],
    &[
        "destinationfilter",
        "nodestinationfilter",
        "channelfilter",
        "nochannelfilter",
    ],
    &["sourcefilter", "nosourcefilter"],
    &["allowswitchchannel", "disableswitchchannel"],
    &[
        "identnone",
        "identnonenumeric",
        "identnonesymbolic",
        "identnonelimited",
        "identtcp",
        "identtcpnumeric",
        "identtcpsymbolic",
        "identtcplimited",
    ],
    &["maysaslserver", "mustsaslserver", "nosasl", "nosaslserver"],
    &["maysaslclient", "mustsaslclient", "nosaslclient"],
    &["maytls", "musttls", "notls"],
    &["maytlsserver", "musttlsserver", "notlsserver"],
    &["maytlsclient", "musttlsclient", "notlsclient"],
    &["logging", "nologging"],
    &["slave_debug", "noslave_debug"],
    &["master_debug", "nomaster_debug"],
    &["822", "733", "uucp", "sourceroute", "percents", "bangstyle"],
    &["header_822", "header_733", "header_uucp"],
    &["bangoverpercent", "nobangoverpercent", "percentonly"],
    &["exproute", "noexproute"],
    &["improute", "noimproute"],
    &["sevenbit", "eightbit", "eightnegotiate", "eightstrict"],
];

/// The keywords that make a channel an LMTP channel.
const LMTP: &[&str] = &["lmtp", "lmtp_crlf", "lmtp_cr", "lmtp_lf", "lmtp_crorlf"];

/// The arity of `keyword` (any case); `None` for a word the table does not know.
pub fn arity(keyword: &str) -> Option<Arity> {
    let k = keyword.to_ascii_lowercase();
    KEYWORDS
        .iter()
        .find(|(n, _)| *n == k)
        .map(|(_, a)| *a)
        .or_else(|| spam_filter_opt_in(&k).then_some(Name))
}

/// `destinationspamfilterNoptin` and `sourcespamfilterNoptin` (N = the filter's number) take
/// the opt-in value as their argument.
fn spam_filter_opt_in(keyword: &str) -> bool {
    ["destinationspamfilter", "sourcespamfilter"]
        .iter()
        .filter_map(|p| keyword.strip_prefix(p))
        .filter_map(|rest| rest.strip_suffix("optin"))
        .any(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether the table knows `keyword` (any case).
pub fn is_known(keyword: &str) -> bool {
    arity(keyword).is_some()
}

/// Whether `keyword` (any case) makes a channel an LMTP channel: `lmtp` or a variant.
pub fn is_lmtp(keyword: &str) -> bool {
    LMTP.iter().any(|k| k.eq_ignore_ascii_case(keyword))
}

/// The setting `keyword` belongs to: the first member of its family, or the keyword itself
/// (lower case).
pub fn family(keyword: &str) -> String {
    let k = keyword.to_ascii_lowercase();
    FAMILIES
        .iter()
        .find(|f| f.contains(&k.as_str()))
        .map_or(k, |f| f[0].to_string())
}

/// Every keyword of the table, for the documentation test.
pub fn known() -> impl Iterator<Item = &'static str> {
    KEYWORDS.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_job_counts_take_one_number() {
        for k in [
            "maxjobs",
            "blocklimit",
            "sourceblocklimit",
            "linelimit",
            "maxblocks",
            "maxlines",
            "threaddepth",
            "port",
            "filesperjob",
            "subdirs",
            "logheader",
        ] {
            assert_eq!(arity(k), Some(Int), "{k}");
        }
    }

    #[test]
    fn notices_take_several_numbers() {
        assert_eq!(arity("notices"), Some(Ints));
        assert_eq!(arity("urgentnotices"), Some(Ints));
    }

    #[test]
    fn pools_channels_and_hosts_take_one_name() {
        for k in [
            "pool",
            "daemon",
            "saslswitchchannel",
            "tlsswitchchannel",
            "interfaceaddress",
        ] {
            assert_eq!(arity(k), Some(Name), "{k}");
        }
    }

    #[test]
    fn backoff_takes_quoted_strings_and_fileinto_a_template() {
        assert_eq!(arity("backoff"), Some(Strings));
        assert_eq!(arity("fileinto"), Some(Template));
    }

    #[test]
    fn lookup_is_case_blind_and_unknown_words_have_no_arity() {
        assert_eq!(arity("MAXJOBS"), Some(Int));
        assert_eq!(arity("lmtp"), Some(Flag));
        assert_eq!(arity("mailsrv_group"), None);
        assert!(!is_known("mailsrv_group"));
    }

    #[test]
    fn numbered_spam_filter_opt_ins_take_a_name() {
        assert_eq!(arity("sourcespamfilter2optin"), Some(Name));
        assert_eq!(arity("destinationspamfilter12optin"), Some(Name));
        assert_eq!(arity("sourcespamfilteroptin"), None);
        assert_eq!(arity("sourcespamfilterxoptin"), None);
    }

    #[test]
    fn lmtp_and_its_variants_are_lmtp() {
        for k in ["lmtp", "LMTP_CRLF", "lmtp_cr", "lmtp_lf", "lmtp_crorlf"] {
            assert!(is_lmtp(k), "{k}");
        }
        assert!(!is_lmtp("smtp"));
        assert!(!is_lmtp("lmtp_other"));
    }

    #[test]
    fn opposites_share_a_family() {
        assert_eq!(family("nologging"), family("logging"));
        assert_eq!(family("lmtp_crlf"), family("lmtp"));
        assert_eq!(family("musttls"), family("notls"));
        assert_eq!(family("noblocklimit"), family("blocklimit"));
        assert_ne!(family("logging"), family("lmtp"));
        assert_ne!(family("maytlsserver"), family("maytls"));
        assert_eq!(family("UnknownWord"), "unknownword");
    }

    #[test]
    fn table_has_no_duplicates_and_families_use_known_keywords() {
        let names: Vec<&str> = known().collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "{n} twice");
            assert_eq!(*n, n.to_ascii_lowercase(), "{n} is not lower case");
            assert!(n.chars().count() <= MAX_KEYWORD, "{n} is too long");
        }
        let mut in_families: Vec<&str> = Vec::new();
        for f in FAMILIES {
            for k in *f {
                assert!(names.contains(k), "{k} in a family but not in the table");
                assert!(!in_families.contains(k), "{k} in two families");
                in_families.push(k);
            }
        }
        for k in LMTP {
            assert!(names.contains(k), "{k}");
        }
    }
}
