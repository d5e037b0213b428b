//! What an LMTP image reads once when it starts: its channel in `imta.cnf` (named by the
//! service's `PARAMETER=CHANNEL=name`), the channel's option file
//! (`IMTA_TABLE:<channel>_option`) and `BLOCK_SIZE` from the global `option.dat`; all through
//! the tailor file the dispatcher names in `IMTA_TAILOR`.
//!
//! The image refuses to start (one log line, exit status 2, and the dispatcher backs off)
//! when the channel is missing, lacks the `lmtp` keyword, or asks for something this image
//! cannot do (`mustsaslserver`, `musttls`, `musttlsserver`, an `smtp*` protocol keyword).
//! Keywords that only concern a relay are ignored, and said so once in the log.
//!
//! The channel keywords honoured, and the option-file names, are listed in `docs/lmtp.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::channel_option::{self, ChannelOptions};
use crate::config::error::{ConfigError, Diagnostics};
use crate::config::imta_cnf::{self, Channel};
use crate::config::option_file::Setting;
use crate::config::service::channel_of;
use crate::config::source::ResolvePath;
use crate::config::tailor::{self, Tailor};

use super::input::{Terminators, TimeLimits};
use super::store::Quota;

/// Which image is running: it decides the option defaults and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `tcp_lmtp_server`: Maildir message store.
    Store,
    /// `tcp_lmtpn_server`: mbox files in a `/var/mail`-like spool.
    Native,
}

impl ImageKind {
    pub fn program(self) -> &'static str {
        match self {
            ImageKind::Store => "tcp_lmtp_server",
            ImageKind::Native => "tcp_lmtpn_server",
        }
    }
}

/// Size cap when the channel sets no `blocklimit`/`sourceblocklimit` (which may set any
/// other; large messages are kept on disk while they arrive, not in memory).
pub const DEFAULT_MAX_MESSAGE: u64 = 100 << 20;
/// Longest command line accepted (RFC 5321 asks for at least 512).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Octets of message data that earn the data one second beyond `DATA_RECEIVE_TIME`
/// (Postfix's `smtpd_min_data_rate` default): a message arriving at least this fast is never
/// cut off by its deadline, one trickled slower is.
pub const MIN_DATA_RATE: u64 = 500;

/// An image's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kind: ImageKind,
    pub channel: String,
    /// The name the greeting and the trace header give (this host's name).
    pub host: String,
    pub terminators: Terminators,
    /// Largest message accepted, in octets (`blocklimit`/`sourceblocklimit` × `BLOCK_SIZE`).
    pub max_message: u64,
    /// Most lines per message (`linelimit`), if limited.
    pub max_lines: Option<u64>,
    /// One log line per delivery (`logging`, the default; `nologging` turns it off).
    pub logging: bool,
    /// Where those lines go besides the LOGFILE: `IMTA_LOG:mail.log_current`, when the tailor
    /// sets `IMTA_LOG` (docs/lmtp.md, "Logging").
    pub delivery_log: Option<PathBuf>,
    /// Protocol trace in the log (`slave_debug`, or the service's DEBUG).
    pub trace: bool,
    /// `COMMAND_RECEIVE_TIME`: for a whole command line, and for a write of our replies.
    pub command_timeout: Duration,
    /// `DATA_RECEIVE_TIME`: for the whole message data, with [`MIN_DATA_RATE`]'s allowance.
    pub data_timeout: Duration,
    pub max_recipients: usize,
    /// 0: unlimited.
    pub max_transactions: u64,
    pub default_quota: Option<Quota>,
    pub over_quota_permanent: bool,
    /// Maildir store root (`STORE_ROOT`).
    pub store_root: PathBuf,
    /// Create a user's Maildir on first delivery (`CREATE_MAILBOXES=1`).
    pub create_mailboxes: bool,
    /// mbox spool directory (`MAIL_SPOOL`).
    pub spool: PathBuf,
    /// Tries to lock a mailbox (`REPEAT_COUNT`) and the pause between them (`SLEEP_TIME`).
    pub lock_attempts: u32,
    pub lock_sleep: Duration,
    /// Things worth one log line at start (ignored keywords, unknown options).
    pub notes: Vec<String>,
}

impl Settings {
    /// The deadlines of a connection's input (docs/lmtp.md, "Time limits").
    pub fn time_limits(&self) -> TimeLimits {
        TimeLimits {
            command: self.command_timeout,
            data: self.data_timeout,
            data_rate: MIN_DATA_RATE,
        }
    }
}

/// Why an image cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("the service's PARAMETER ({0:?}) names no CHANNEL=name; set PARAMETER=CHANNEL=<channel> in dispatcher.cnf")]
    NoChannelParameter(String),
    #[error("{file}: defines no channel {channel}; the service's PARAMETER=CHANNEL={channel} needs one (see docs/lmtp.md)")]
    NoSuchChannel { file: PathBuf, channel: String },
    #[error(
        "{loc}: channel {channel} has no `lmtp` keyword, which an LMTP server channel must have"
    )]
    NotLmtp { loc: String, channel: String },
    #[error("{loc}: channel {channel}: keyword `{keyword}` {why}")]
    Unsupported {
        loc: String,
        channel: String,
        keyword: String,
        why: &'static str,
    },
    #[error("{loc}: {name}={value}: {why}")]
    BadOption {
        loc: String,
        name: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Keywords that change nothing on a server channel (relay-side or Job Controller business).
const RELAY_ONLY: &[&str] = &[
    "port",
    "interfaceaddress",
    "daemon",
    "maxblocks",
    "maxlines",
    "maxjobs",
    "filesperjob",
    "threaddepth",
    "pool",
    "multigate",
    "connectcanonical",
    "single_sys",
    "defragment",
    "dequeue_removeroute",
    "fileinto",
    "subdirs",
    "master_debug",
    "backoff",
];

/// Loads the settings of `kind`, for the service whose PARAMETER is `parameter`, through the
/// tailor file the environment names.
pub fn load(kind: ImageKind, parameter: &str, debug: bool) -> Result<Settings, SettingsError> {
    let exe = std::env::current_exe().ok();
    let (tailor_path, _) = tailor::locate(
        None,
        std::env::var_os(crate::handoff::env::TAILOR).as_deref(),
        exe.as_deref(),
    );
    let mut diags = Diagnostics::default();
    let tailor = Tailor::load(&tailor_path, &mut diags)?;
    let channel_name =
        channel_of(parameter).ok_or_else(|| SettingsError::NoChannelParameter(parameter.into()))?;
    let imta_path = tailor.config_file()?;
    let imta = imta_cnf::load(&imta_path, &tailor, &mut diags)?;
    let channel = imta
        .channel(channel_name)
        .ok_or_else(|| SettingsError::NoSuchChannel {
            file: imta_path.clone(),
            channel: channel_name.to_string(),
        })?;
    let options = channel_option::load(&tailor.channel_option_file(channel_name), &mut diags)?;
    let block_size = block_size(&tailor, &mut diags)?;
    from_parts(kind, channel, &options, block_size, &tailor, debug)
}

/// `BLOCK_SIZE` from the global option file (`IMTA_OPTION_FILE`, else
/// `IMTA_TABLE:option.dat`); 1024 when it is not set.
fn block_size(tailor: &Tailor, diags: &mut Diagnostics) -> Result<u64, SettingsError> {
    let spec = tailor
        .get("IMTA_OPTION_FILE")
        .map(|v| v.value().to_string())
        .unwrap_or_else(|| "IMTA_TABLE:option.dat".to_string());
    let path = tailor.resolve_spec(&spec, None)?;
    let options = channel_option::load(&path, diags)?;
    match options.get("BLOCK_SIZE") {
        Some(s) => number(s, "BLOCK_SIZE").map(|n| n.max(1)),
        None => Ok(1024),
    }
}

/// Builds the settings from a channel and its option file.
pub fn from_parts(
    kind: ImageKind,
    channel: &Channel,
    options: &ChannelOptions,
    block_size: u64,
    resolver: &dyn ResolvePath,
    debug: bool,
) -> Result<Settings, SettingsError> {
    let loc = channel.loc.to_string();
    let name = channel.name.clone();
    if !channel.is_lmtp() {
        return Err(SettingsError::NotLmtp { loc, channel: name });
    }
    let mut notes = Vec::new();
    let mut terminators = Terminators::Crlf;
    // The smallest of `blocklimit`/`sourceblocklimit`, else the built-in default.
    let mut block_limit: Option<u64> = None;
    let mut max_lines = None;
    let mut logging = true;
    let mut trace = debug;
    for kw in channel.effective_keywords() {
        let unsupported = |why| SettingsError::Unsupported {
            loc: kw.loc.to_string(),
            channel: name.clone(),
            keyword: kw.name.clone(),
            why,
        };
        let int_arg = || kw.args.first().and_then(|a| a.parse::<u64>().ok());
        match kw.name.as_str() {
            "lmtp" | "lmtp_crlf" => terminators = Terminators::Crlf,
            "lmtp_lf" => terminators = Terminators::CrlfOrLf,
            "lmtp_cr" | "lmtp_crorlf" => terminators = Terminators::Any,
            k if k.starts_with("smtp") || k == "nosmtp" => {
                return Err(unsupported(
                    "selects SMTP, but this image speaks LMTP; remove it",
                ))
            }
            "mustsaslserver" => {
                return Err(unsupported(
                    "requires SMTP AUTH, which this image does not offer; protect the port with PORT_ACCESS instead",
                ))
            }
            "musttls" | "musttlsserver" => {
                return Err(unsupported(
                    "requires TLS, which this image does not offer; protect the port with PORT_ACCESS instead",
                ))
            }
            "maysaslserver" | "maytls" | "maytlsserver" | "saslswitchchannel"
            | "tlsswitchchannel" => notes.push(format!(
                "{}: keyword `{}` not supported: neither AUTH nor STARTTLS is offered",
                kw.loc, kw.name
            )),
            "blocklimit" | "sourceblocklimit" => {
                if let Some(n) = int_arg() {
                    let limit = n.saturating_mul(block_size);
                    block_limit = Some(block_limit.map_or(limit, |b| b.min(limit)));
                }
            }
            "noblocklimit" => {}
            "linelimit" => max_lines = int_arg(),
            "nolinelimit" => max_lines = None,
            "logging" => logging = true,
            "nologging" => logging = false,
            "slave_debug" => trace = true,
            "noslave_debug" => {}
            k if RELAY_ONLY.contains(&k) => notes.push(format!(
                "{}: keyword `{}` ignored: it concerns relays, not an LMTP server",
                kw.loc, kw.name
            )),
            _ => {}
        }
    }
    let opts = Options { options, resolver };
    let minutes = |name, default| opts.minutes(name, default);
    let store_root = opts.path("STORE_ROOT", "IMTA_ROOT:store/")?;
    let spool = opts.path("MAIL_SPOOL", "/var/mail/")?;
    let mut settings = Settings {
        kind,
        channel: name,
        host: super::trace::host_name(),
        terminators,
        max_message: block_limit.unwrap_or(DEFAULT_MAX_MESSAGE),
        max_lines,
        logging,
        delivery_log: resolver
            .resolve_spec(
                &format!("IMTA_LOG:{}", super::delivery_log::FILE_NAME),
                None,
            )
            .ok(),
        trace,
        command_timeout: minutes("COMMAND_RECEIVE_TIME", 10.0)?,
        data_timeout: minutes("DATA_RECEIVE_TIME", 10.0)?,
        max_recipients: opts
            .number("ALLOW_RECIPIENTS_PER_TRANSACTION", 1000)?
            .clamp(1, 1_000_000) as usize,
        max_transactions: opts.number("ALLOW_TRANSACTIONS_PER_SESSION", 0)?,
        default_quota: opts.quota("DEFAULT_QUOTA")?,
        over_quota_permanent: opts.flag("OVER_QUOTA_PERMANENT", false)?,
        store_root,
        create_mailboxes: opts.flag("CREATE_MAILBOXES", false)?,
        spool,
        lock_attempts: opts.number("REPEAT_COUNT", 30)?.clamp(1, 10_000) as u32,
        lock_sleep: Duration::from_secs(opts.number("SLEEP_TIME", 2)?.min(3600)),
        notes,
    };
    for s in &options.settings {
        if !KNOWN_OPTIONS
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&s.name))
        {
            settings.notes.push(format!(
                "{}: option {} is not one this image reads; ignored",
                s.loc, s.name
            ));
        }
    }
    Ok(settings)
}

/// The option names the images read (documented in docs/lmtp.md).
pub const KNOWN_OPTIONS: &[&str] = &[
    "STORE_ROOT",
    "CREATE_MAILBOXES",
    "MAIL_SPOOL",
    "REPEAT_COUNT",
    "SLEEP_TIME",
    "COMMAND_RECEIVE_TIME",
    "DATA_RECEIVE_TIME",
    "ALLOW_RECIPIENTS_PER_TRANSACTION",
    "ALLOW_TRANSACTIONS_PER_SESSION",
    "DEFAULT_QUOTA",
    "OVER_QUOTA_PERMANENT",
];

/// Typed reads of the option file.
struct Options<'a> {
    options: &'a ChannelOptions,
    resolver: &'a dyn ResolvePath,
}

fn bad(s: &Setting, name: &'static str, why: &'static str) -> SettingsError {
    SettingsError::BadOption {
        loc: s.value_loc.to_string(),
        name,
        value: s.value.clone(),
        why,
    }
}

fn number(s: &Setting, name: &'static str) -> Result<u64, SettingsError> {
    s.value
        .trim()
        .parse()
        .map_err(|_| bad(s, name, "expected a whole number"))
}

impl Options<'_> {
    fn number(&self, name: &'static str, default: u64) -> Result<u64, SettingsError> {
        self.options
            .get(name)
            .map_or(Ok(default), |s| number(s, name))
    }

    fn flag(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.options.get(name) {
            None => Ok(default),
            Some(s) => match s.value.trim() {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(bad(s, name, "expected 0 or 1")),
            },
        }
    }

    /// Minutes, as the original's timeouts are; fractions are accepted (`0.5` is 30 s).
    fn minutes(&self, name: &'static str, default: f64) -> Result<Duration, SettingsError> {
        let m = match self.options.get(name) {
            None => default,
            Some(s) => match s.value.trim().parse::<f64>() {
                Ok(m) if m > 0.0 && m <= 1440.0 => m,
                _ => {
                    return Err(bad(
                        s,
                        name,
                        "expected minutes, more than 0 and at most 1440",
                    ))
                }
            },
        };
        Ok(Duration::from_secs_f64(m * 60.0))
    }

    /// `bytes,messages`.
    fn quota(&self, name: &'static str) -> Result<Option<Quota>, SettingsError> {
        let Some(s) = self.options.get(name) else {
            return Ok(None);
        };
        parse_quota(&s.value).map(Some).ok_or_else(|| {
            bad(
                s,
                name,
                "expected bytes,messages (for example 104857600,10000)",
            )
        })
    }

    /// A directory, `NAME:rest` resolved through the tailor.
    fn path(&self, name: &'static str, default: &str) -> Result<PathBuf, SettingsError> {
        let (spec, loc) = match self.options.get(name) {
            Some(s) if !s.value.trim().is_empty() => {
                (s.value.trim().to_string(), Some(&s.value_loc))
            }
            Some(s) => return Err(bad(s, name, "expected a directory")),
            None => (default.to_string(), None),
        };
        let p = self.resolver.resolve_spec(&spec, loc)?;
        Ok(Path::new(&p).to_path_buf())
    }
}

/// `XQUOTA=`/`DEFAULT_QUOTA=` value: `bytes,messages` (either may be 0: no limit).
pub fn parse_quota(v: &str) -> Option<Quota> {
    let (b, m) = v.trim().split_once(',')?;
    Some(Quota {
        bytes: b.trim().parse().ok()?,
        messages: m.trim().parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::imta_cnf::parse_str;

    fn channel(text: &str) -> Channel {
        let mut d = Diagnostics::default();
        let file: std::sync::Arc<Path> = std::sync::Arc::from(Path::new("imta.cnf"));
        let cnf = parse_str(&file, text, &mut d).expect("parses");
        cnf.channels.into_iter().next().expect("a channel")
    }

    struct Plain;
    impl ResolvePath for Plain {
        fn resolve_spec(
            &self,
            spec: &str,
            _: Option<&crate::config::error::Loc>,
        ) -> Result<PathBuf, ConfigError> {
            Ok(PathBuf::from(spec.replace("IMTA_ROOT:", "/root/")))
        }
    }

    fn settings(cnf: &str) -> Result<Settings, SettingsError> {
        from_parts(
            ImageKind::Store,
            &channel(cnf),
            &ChannelOptions::default(),
            1024,
            &Plain,
            false,
        )
    }

    #[test]
    fn blocklimit_may_raise_or_lower_the_default_and_the_smaller_wins() {
        let big = settings("\ntcp_lmtpss lmtp blocklimit 204800\ntcp_lmtpss-daemon\n").unwrap();
        assert_eq!(big.max_message, 204800 * 1024);
        let both = settings(
            "\ntcp_lmtpss lmtp blocklimit 204800 sourceblocklimit 300\ntcp_lmtpss-daemon\n",
        )
        .unwrap();
        assert_eq!(both.max_message, 300 * 1024);
        let none = settings("\ntcp_lmtpss lmtp\ntcp_lmtpss-daemon\n").unwrap();
        assert_eq!(none.max_message, DEFAULT_MAX_MESSAGE);
    }

    #[test]
    fn keywords_shape_the_server() {
        let s = settings("\ntcp_lmtpss lmtp_lf blocklimit 10 linelimit 5 nologging slave_debug maxjobs 3\ntcp_lmtpss-daemon\n").unwrap();
        assert_eq!(s.terminators, Terminators::CrlfOrLf);
        assert_eq!(s.max_message, 10 * 1024);
        assert_eq!(s.max_lines, Some(5));
        assert!(!s.logging && s.trace);
        assert!(
            s.notes.iter().any(|n| n.contains("maxjobs")),
            "{:?}",
            s.notes
        );
        assert_eq!(s.store_root, PathBuf::from("/root/store/"));
        let s = settings("\ntcp_lmtpss lmtp\ntcp_lmtpss-daemon\n").unwrap();
        assert_eq!(
            (s.terminators, s.max_message, s.logging),
            (Terminators::Crlf, DEFAULT_MAX_MESSAGE, true)
        );
    }

    #[test]
    fn refusals_name_the_place() {
        let e = settings("\ntcp_lmtpss smtp\ntcp_lmtpss-daemon\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("imta.cnf:2:1") && e.contains("lmtp"), "{e}");
        let e = settings("\ntcp_lmtpss lmtp musttls\ntcp_lmtpss-daemon\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("imta.cnf:2:") && e.contains("musttls"), "{e}");
    }

    #[test]
    fn quotas() {
        assert_eq!(
            parse_quota("100,2"),
            Some(Quota {
                bytes: 100,
                messages: 2
            })
        );
        assert_eq!(parse_quota("100"), None);
        assert_eq!(parse_quota("a,1"), None);
    }
}
