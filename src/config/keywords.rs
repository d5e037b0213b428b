//! Channel keywords of `imta.cnf`: how many arguments each takes, and which keywords are
//! alternatives of one another.
//!
//! Nothing on a channel's first line marks where a keyword's arguments end (`maxjobs 7`,
//! `backoff "pt2m" "pt5m"`, `pool SMTP_POOL`), so the parser needs this table. It lists the
//! keywords of the Messaging Server 6 Administration Reference ("Channel Definitions",
//! keyword tables) that take arguments, and the argument-less keywords an LMTP or SMTP
//! server channel meets. A word not in the table is still accepted, as the original accepts
//! it (on UNIX it takes such a word for a group id); `dispatcher --check` lists it.
//!
//! Families: `logging` and `nologging` set the same thing, so a channel's own `nologging`
//! overrides an inherited `logging`. [`family`] names the setting a keyword belongs to.

/// What follows a keyword on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// Nothing.
    Flag,
    /// One whole number.
    Int,
    /// One or more whole numbers.
    Ints,
    /// One word (a channel, pool, host or address).
    Name,
    /// One or more quoted strings.
    Strings,
    /// One template word (`fileinto @$4O:$U+$S@$D`).
    Template,
}

use Arity::{Flag, Int, Ints, Name, Strings, Template};

/// Keywords and their arity, lower case.
const KEYWORDS: &[(&str, Arity)] = &[
    // Protocol and line terminators.
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
    // Jobs, queues and delivery retries (Job Controller; no effect on a server).
    ("maxjobs", Int),
    ("filesperjob", Int),
    ("threaddepth", Int),
    ("pool", Name),
    ("subdirs", Int),
    ("backoff", Strings),
    ("notices", Ints),
    ("nonurgentnotices", Ints),
    ("normalnotices", Ints),
    ("urgentnotices", Ints),
    ("deferralrejectlimit", Int),
    ("master", Flag),
    ("slave", Flag),
    ("bidirectional", Flag),
    ("immnonurgent", Flag),
    ("single", Flag),
    ("single_sys", Flag),
    ("multiple", Flag),
    ("defragment", Flag),
    ("nodefragment", Flag),
    // Connections (client side; no effect on a server).
    ("port", Int),
    ("daemon", Name),
    ("interfaceaddress", Name),
    ("lastresort", Name),
    ("mx", Flag),
    ("nomx", Flag),
    ("nodns", Flag),
    ("randommx", Flag),
    ("nonrandommx", Flag),
    ("multigate", Flag),
    ("connectcanonical", Flag),
    ("connectalias", Flag),
    ("dequeue_removeroute", Flag),
    ("fileinto", Template),
    ("loopcheck", Flag),
    ("noloopcheck", Flag),
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
    // Character sets and headers.
    ("charset7", Name),
    ("charset8", Name),
    ("charsetesc", Name),
    ("headerlabelalign", Int),
    ("headerlinelength", Int),
    ("returnaddress", Name),
    ("returnpersonal", Name),
    // Filters and users.
    ("filter", Name),
    ("channelfilter", Name),
    ("destinationfilter", Name),
    ("sourcefilter", Name),
    ("user", Name),
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
    &["blocklimit", "noblocklimit"],
    &["linelimit", "nolinelimit"],
    &["logging", "nologging"],
    &["slave_debug", "noslave_debug"],
    &["master_debug", "nomaster_debug"],
    &["loopcheck", "noloopcheck"],
    &["defragment", "nodefragment"],
    &["single", "single_sys", "multiple"],
    &["master", "slave", "bidirectional"],
    &["mx", "nomx", "nodns", "randommx", "nonrandommx"],
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
];

/// The arity of `keyword` (any case); `None` for a word the table does not know.
pub fn arity(keyword: &str) -> Option<Arity> {
    let k = keyword.to_ascii_lowercase();
    KEYWORDS.iter().find(|(n, _)| *n == k).map(|(_, a)| *a)
}

/// The setting `keyword` belongs to: the first member of its family, or itself.
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
    fn arguments_by_keyword() {
        assert_eq!(arity("maxjobs"), Some(Int));
        assert_eq!(arity("MAXJOBS"), Some(Int));
        assert_eq!(arity("notices"), Some(Ints));
        assert_eq!(arity("pool"), Some(Name));
        assert_eq!(arity("backoff"), Some(Strings));
        assert_eq!(arity("fileinto"), Some(Template));
        assert_eq!(arity("lmtp"), Some(Flag));
        assert_eq!(arity("mailsrv_group"), None);
    }

    #[test]
    fn opposites_share_a_family() {
        assert_eq!(family("nologging"), family("logging"));
        assert_eq!(family("lmtp_crlf"), family("lmtp"));
        assert_eq!(family("musttls"), family("notls"));
        assert_ne!(family("logging"), family("lmtp"));
        assert_eq!(family("unknownword"), "unknownword");
    }

    #[test]
    fn table_has_no_duplicates_and_families_use_known_keywords() {
        let names: Vec<&str> = known().collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "{n} twice");
        }
        for f in FAMILIES {
            for k in *f {
                assert!(names.contains(k), "{k} in a family but not in the table");
            }
        }
    }
}
