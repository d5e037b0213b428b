//! The effective configuration of each service: `dispatcher.cnf` with defaults applied and
//! every value checked.
//!
//! For each `[SERVICE=name]` section and each option in [`super::options::OPTIONS`], the value
//! is the section's own line if it has one, else the global part's, else the built-in default;
//! [`Source`] records which, so that `dispatcher --check` can say where every limit comes from.
//! `[SERVICE=DISPATCHER]` is not a service: it holds the dispatcher's own `DEBUG` and
//! `HISTORY_TO_RETAIN` (PMDF).
//!
//! Errors (the file cannot be used): a value an option cannot take, a service without `IMAGE`,
//! two services on the same port. Warnings: unknown options (with a did-you-mean), options of
//! historical interest, options read but not acted on (once per option), an option set twice in
//! one section, limits that contradict each other.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use super::dispatcher_cnf::{DispatcherCnf, OptionLine, Section};
use super::error::{ConfigError, Diagnostics, ErrorKind, Loc};
use super::integer::parse_int;
use super::options::{self, DefaultValue, OptionSpec, Support, ValueKind};
use super::source::ResolvePath;

/// The name of the PMDF section that configures the dispatcher itself.
pub const DISPATCHER_SECTION: &str = "DISPATCHER";

/// Options only `[SERVICE=DISPATCHER]` takes.
const DISPATCHER_ONLY: [&str; 2] = [options::METRICS_PORT, options::METRICS_INTERFACE_ADDRESS];

/// Where an effective value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// Computed from other values, as the text says.
    Derived(&'static str),
    /// The global part of dispatcher.cnf, at this line.
    Global(Loc),
    /// The service's own section, at this line.
    Section(Loc),
    /// The environment variable of that name.
    Environment(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Derived(how) => write!(f, "default: {how}"),
            Source::Global(loc) => write!(f, "global, {}", short(loc)),
            Source::Section(loc) => write!(f, "service, {}", short(loc)),
            Source::Environment(name) => write!(f, "environment {name}"),
        }
    }
}

/// `file:line` with the file's name only: enough to tell an include from the main file.
fn short(loc: &Loc) -> String {
    let name = loc.file.file_name().map_or_else(
        || loc.file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{name}:{}", loc.line)
}

/// A value and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// A checked option value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Int(i64),
    Ports(Vec<u16>),
    Address(Option<IpAddr>),
    Path(PathBuf),
    Text(String),
    Names(Vec<String>),
}

/// The numeric limits of a service, each with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub min_procs: Setting<u64>,
    pub max_procs: Setting<u64>,
    pub min_conns: Setting<u64>,
    pub max_conns: Setting<u64>,
    pub max_life_time: Setting<u64>,
    pub max_life_conns: Setting<u64>,
    pub max_idle_time: Setting<u64>,
    pub max_shutdown: Setting<u64>,
    pub max_handoffs: Setting<u64>,
    pub backlog: Setting<u64>,
    pub stacksize: Setting<u64>,
    pub history_to_retain: Setting<u64>,
}

impl Limits {
    /// Name and value of every limit, in the order `--check` prints them.
    pub fn rows(&self) -> [(&'static str, &Setting<u64>); 12] {
        [
            ("MIN_PROCS", &self.min_procs),
            ("MAX_PROCS", &self.max_procs),
            ("MIN_CONNS", &self.min_conns),
            ("MAX_CONNS", &self.max_conns),
            ("MAX_LIFE_TIME", &self.max_life_time),
            ("MAX_LIFE_CONNS", &self.max_life_conns),
            ("MAX_IDLE_TIME", &self.max_idle_time),
            ("MAX_SHUTDOWN", &self.max_shutdown),
            ("MAX_HANDOFFS", &self.max_handoffs),
            ("BACKLOG", &self.backlog),
            ("STACKSIZE", &self.stacksize),
            ("HISTORY_TO_RETAIN", &self.history_to_retain),
        ]
    }
}

/// One service, ready for the dispatcher to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// As written in `[SERVICE=name]`.
    pub name: String,
    pub loc: Loc,
    pub ports: Setting<Vec<u16>>,
    /// Parsed but not opened (TLS is not implemented).
    pub tls_ports: Setting<Vec<u16>>,
    /// `None`: all addresses.
    pub interface_address: Setting<Option<IpAddr>>,
    /// As written (`IMTA_BIN:tcp_lmtp_server`) and resolved through the tailor.
    pub image_spec: String,
    pub image: Setting<PathBuf>,
    pub logfile_spec: Option<String>,
    pub logfile: Setting<Option<PathBuf>>,
    pub parameter: Setting<Option<String>>,
    pub user: Setting<Option<String>>,
    /// `IMPORT_ENVIRONMENT`: names of the dispatcher's environment passed on to the workers
    /// besides the fixed few (`dispatcher::spawn::PASSED_ENVIRONMENT`); each a valid name.
    pub import_environment: Setting<Vec<String>>,
    /// Debug mask passed to the workers.
    pub debug: Setting<u32>,
    pub limits: Limits,
}

impl Service {
    /// The account the service's workers run as when the dispatcher runs as root: its
    /// `USER`, else the tailor's `IMTA_USER` (`mail_user`); `None` when neither is set.
    pub fn worker_account<'a>(&'a self, mail_user: Option<&'a str>) -> Option<&'a str> {
        self.user.value.as_deref().or(mail_user)
    }

    /// The channel named by `CHANNEL=name` in `PARAMETER`, if any.
    pub fn channel(&self) -> Option<&str> {
        channel_of(self.parameter.value.as_deref()?)
    }
}

/// Finds `CHANNEL=name` among the blank- or comma-separated words of a PARAMETER value.
pub fn channel_of(parameter: &str) -> Option<&str> {
    parameter
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|word| {
            let (key, value) = word.split_once('=')?;
            (key.eq_ignore_ascii_case("CHANNEL") && !value.is_empty()).then_some(value)
        })
}

/// The dispatcher's own settings and its services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// The dispatcher's debug mask (global `DEBUG`, or `[SERVICE=DISPATCHER]`'s).
    pub debug: Setting<u32>,
    /// Old `dispatcher.log` versions kept.
    pub history_to_retain: Setting<u64>,
    /// Where the metrics endpoint listens (`METRICS_PORT` and `METRICS_INTERFACE_ADDRESS` of
    /// `[SERVICE=DISPATCHER]`, ours); `None`: no endpoint.
    pub metrics: Option<std::net::SocketAddr>,
    pub services: Vec<Service>,
}

/// The environment variable that overrides the dispatcher's DEBUG mask, in hexadecimal.
pub const DEBUG_ENVIRONMENT: &str = "IMTA_DISPATCHER_DEBUG";

impl DispatcherConfig {
    /// Applies `IMTA_DISPATCHER_DEBUG` (hexadecimal, `FFFFFFFF` = everything, an optional
    /// `0x`), which the original documents as an alternative to DEBUG; it wins over the file.
    pub fn apply_debug_environment(&mut self, value: &str) -> Result<(), ConfigError> {
        let digits = value.trim();
        let digits = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
            .unwrap_or(digits);
        let mask = u32::from_str_radix(digits, 16).map_err(|_| {
            ConfigError::nowhere(ErrorKind::Other(format!(
                "{DEBUG_ENVIRONMENT}={value}: not a 32-bit hexadecimal mask (FFFFFFFF sets \
                 every bit)"
            )))
        })?;
        self.debug = Setting {
            value: mask,
            source: Source::Environment(DEBUG_ENVIRONMENT),
        };
        Ok(())
    }
}

/// Checks the file and applies defaults. `resolver` resolves IMAGE and LOGFILE paths.
pub fn build(
    cnf: &DispatcherCnf,
    resolver: &dyn ResolvePath,
    diags: &mut Diagnostics,
) -> Result<DispatcherConfig, ConfigError> {
    let mut builder = Builder {
        resolver,
        diags,
        not_acted_reported: BTreeSet::new(),
    };
    let globals = builder.check_scope(&cnf.globals, "the global part")?;
    let own = match cnf.section(DISPATCHER_SECTION) {
        Some(section) => builder.check_dispatcher_section(section)?,
        None => HashMap::new(),
    };
    let debug = builder
        .resolve("DEBUG", &own, &globals, Source::Section)?
        .map_value(mask);
    let history_to_retain = builder.count("HISTORY_TO_RETAIN", &own, &globals)?;
    let metrics = builder.metrics(&own)?;
    builder.dispatcher_only_elsewhere(&cnf.globals, "the global part");
    let mut services = Vec::new();
    for section in cnf
        .sections
        .iter()
        .filter(|s| !s.name.eq_ignore_ascii_case(DISPATCHER_SECTION))
    {
        builder.dispatcher_only_elsewhere(&section.options, &format!("[SERVICE={}]", section.name));
        services.push(builder.service(section, &globals)?);
    }
    check_port_collisions(&services)?;
    Ok(DispatcherConfig {
        debug,
        history_to_retain,
        metrics,
        services,
    })
}

/// A checked option line: its value, where it was written, and the text as written.
#[derive(Debug, Clone)]
struct Checked {
    value: Value,
    loc: Loc,
    text: String,
}

/// Checked values of one scope (globals or a section), by option name: the last line wins.
type Scope = HashMap<&'static str, Checked>;

struct Builder<'a> {
    resolver: &'a dyn ResolvePath,
    diags: &'a mut Diagnostics,
    not_acted_reported: BTreeSet<&'static str>,
}

impl Builder<'_> {
    /// Checks every line of one scope; returns the values of the known options.
    fn check_scope(&mut self, lines: &[OptionLine], what: &str) -> Result<Scope, ConfigError> {
        let mut scope: Scope = HashMap::new();
        for line in lines {
            let Some(spec) = options::lookup(&line.name) else {
                let hint = options::did_you_mean(&line.name)
                    .map(|n| format!(" (did you mean {n}?)"))
                    .unwrap_or_default();
                self.diags.warn(
                    line.loc.clone(),
                    format!("{}: unknown option, ignored{hint}", line.name),
                );
                continue;
            };
            let value = self.check_value(spec, line)?;
            self.report_support(spec, line);
            if let Some(Checked { loc: first, .. }) = scope.get(spec.name) {
                if !spec.repeatable {
                    let hint = match spec.name {
                        "PORT" | "IMAGE" => {
                            " (was a [SERVICE=...] line above it commented out? its options \
                             now belong to the section before)"
                        }
                        _ => "",
                    };
                    self.diags.warn(
                        line.loc.clone(),
                        format!(
                            "{} is set again in {what} (first at line {}); the last one counts{hint}",
                            spec.name, first.line
                        ),
                    );
                }
            }
            scope.insert(
                spec.name,
                Checked {
                    value,
                    loc: line.loc.clone(),
                    text: line.value.clone(),
                },
            );
        }
        Ok(scope)
    }

    /// `[SERVICE=DISPATCHER]`: only the dispatcher's own options mean something there.
    fn check_dispatcher_section(&mut self, section: &Section) -> Result<Scope, ConfigError> {
        let scope = self.check_scope(&section.options, "[SERVICE=DISPATCHER]")?;
        for line in &section.options {
            let key = line.key();
            if options::lookup(&key).is_some()
                && !["DEBUG", "HISTORY_TO_RETAIN"].contains(&key.as_str())
                && !DISPATCHER_ONLY.contains(&key.as_str())
            {
                self.diags.warn(
                    line.loc.clone(),
                    format!(
                        "{}: has no effect in [SERVICE=DISPATCHER], which configures the \
                         dispatcher itself; put it in the global part to make it a default",
                        line.name
                    ),
                );
            }
        }
        Ok(scope)
    }

    /// The metrics endpoint's address, from `[SERVICE=DISPATCHER]` only.
    fn metrics(&mut self, own: &Scope) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let address = match own.get(options::METRICS_INTERFACE_ADDRESS) {
            Some(Checked {
                value: Value::Address(Some(ip)),
                ..
            }) => *ip,
            _ => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        };
        match own.get(options::METRICS_PORT) {
            Some(Checked {
                value: Value::Ports(ports),
                loc,
                ..
            }) => match ports.as_slice() {
                [port] => Ok(Some(std::net::SocketAddr::new(address, *port))),
                _ => Err(ConfigError::other(
                    loc.clone(),
                    "METRICS_PORT takes one port (the metrics endpoint listens on one)",
                )),
            },
            _ => {
                if let Some(c) = own.get(options::METRICS_INTERFACE_ADDRESS) {
                    self.diags.warn(
                        c.loc.clone(),
                        "METRICS_INTERFACE_ADDRESS has no effect without METRICS_PORT",
                    );
                }
                Ok(None)
            }
        }
    }

    /// Warns about the dispatcher's own options written where they mean nothing.
    fn dispatcher_only_elsewhere(&mut self, lines: &[OptionLine], what: &str) {
        for line in lines {
            let key = line.key();
            if DISPATCHER_ONLY.contains(&key.as_str()) {
                self.diags.warn(
                    line.loc.clone(),
                    format!(
                        "{}: only [SERVICE=DISPATCHER] takes it; ignored in {what}",
                        line.name
                    ),
                );
            }
        }
    }

    fn report_support(&mut self, spec: &'static OptionSpec, line: &OptionLine) {
        let (why, what) = match spec.support {
            Support::Acted => return,
            Support::NotActed(why) => (why, "accepted but not acted on"),
            Support::Historical(why) => (why, "of historical interest only, ignored"),
        };
        if self.not_acted_reported.insert(spec.name) {
            self.diags
                .warn(line.loc.clone(), format!("{}: {what}: {why}", spec.name));
        }
    }

    fn check_value(&self, spec: &OptionSpec, line: &OptionLine) -> Result<Value, ConfigError> {
        let bad = |reason: String| {
            ConfigError::at(
                line.value_loc.clone(),
                ErrorKind::BadValue {
                    option: line.name.clone(),
                    value: line.value.clone(),
                    reason,
                },
            )
        };
        let int = || parse_int(&line.value).map_err(|e| bad(e.to_string()));
        Ok(match spec.kind {
            ValueKind::Count { min } => {
                let v = int()?;
                if v < min {
                    return Err(bad(format!("must be at least {min}")));
                }
                Value::Int(v)
            }
            ValueKind::Seconds | ValueKind::Bytes => {
                let v = int()?;
                if v < 0 {
                    return Err(bad("must not be negative".into()));
                }
                Value::Int(v)
            }
            ValueKind::Mask => {
                let v = int()?;
                if !(i64::from(i32::MIN)..=i64::from(u32::MAX)).contains(&v) {
                    return Err(bad("a debug mask has 32 bits (-1 sets them all)".into()));
                }
                Value::Int(v)
            }
            ValueKind::Flag => Value::Int(int()?),
            ValueKind::Ports => Value::Ports(parse_ports(&line.value).map_err(bad)?),
            ValueKind::Address => Value::Address(parse_address(&line.value).map_err(bad)?),
            ValueKind::FileSpec => {
                if line.value.is_empty() {
                    return Err(bad("no file given".into()));
                }
                Value::Path(
                    self.resolver
                        .resolve_spec(&line.value, Some(&line.value_loc))?,
                )
            }
            ValueKind::Text => Value::Text(line.value.clone()),
            ValueKind::EnvNames => Value::Names(parse_env_names(&line.value).map_err(bad)?),
        })
    }

    /// The value of `name` for a scope over the globals, or the default.
    fn resolve(
        &self,
        name: &'static str,
        own: &Scope,
        globals: &Scope,
        own_source: fn(Loc) -> Source,
    ) -> Result<Setting<Option<Value>>, ConfigError> {
        if let Some(c) = own.get(name) {
            return Ok(Setting {
                value: Some(c.value.clone()),
                source: own_source(c.loc.clone()),
            });
        }
        if let Some(c) = globals.get(name) {
            return Ok(Setting {
                value: Some(c.value.clone()),
                source: Source::Global(c.loc.clone()),
            });
        }
        let spec = options::lookup(name).ok_or_else(|| {
            ConfigError::nowhere(ErrorKind::Other(format!(
                "internal error: {name} is missing from the option table"
            )))
        })?;
        Ok(match spec.default {
            DefaultValue::Int(v) => Setting {
                value: Some(Value::Int(v)),
                source: Source::Default,
            },
            DefaultValue::None | DefaultValue::Derived(_) => Setting {
                value: None,
                source: Source::Default,
            },
        })
    }

    fn count(
        &self,
        name: &'static str,
        own: &Scope,
        globals: &Scope,
    ) -> Result<Setting<u64>, ConfigError> {
        Ok(self
            .resolve(name, own, globals, Source::Section)?
            .map_value(|v| match v {
                Some(Value::Int(i)) => u64::try_from(i).unwrap_or(0),
                _ => 0,
            }))
    }

    fn service(&mut self, section: &Section, globals: &Scope) -> Result<Service, ConfigError> {
        let own = self.check_scope(&section.options, &format!("[SERVICE={}]", section.name))?;
        let get = |name| self.resolve(name, &own, globals, Source::Section);
        let ports = get("PORT")?.map_value(|v| match v {
            Some(Value::Ports(p)) => p,
            _ => Vec::new(),
        });
        let tls_ports = get("TLS_PORT")?.map_value(|v| match v {
            Some(Value::Ports(p)) => p,
            _ => Vec::new(),
        });
        let interface_address = get("INTERFACE_ADDRESS")?.map_value(|v| match v {
            Some(Value::Address(a)) => a,
            _ => None,
        });
        let image = get("IMAGE")?;
        let Setting {
            value: Some(Value::Path(image_path)),
            source: image_source,
        } = image
        else {
            return Err(ConfigError::other(
                section.loc.clone(),
                format!(
                    "[SERVICE={}] has no IMAGE (and the global part sets none): \
                     its worker processes could not start",
                    section.name
                ),
            ));
        };
        let logfile = get("LOGFILE")?.map_value(|v| match v {
            Some(Value::Path(p)) => Some(p),
            _ => None,
        });
        let text = |s: Setting<Option<Value>>| {
            s.map_value(|v| match v {
                Some(Value::Text(t)) => Some(t),
                _ => None,
            })
        };
        let parameter = text(get("PARAMETER")?);
        let user = text(get("USER")?);
        let import_environment = get("IMPORT_ENVIRONMENT")?.map_value(|v| match v {
            Some(Value::Names(n)) => n,
            _ => Vec::new(),
        });
        let debug = get("DEBUG")?.map_value(mask);
        let count = |name| self.count(name, &own, globals);
        let mut limits = Limits {
            min_procs: count("MIN_PROCS")?,
            max_procs: count("MAX_PROCS")?,
            min_conns: count("MIN_CONNS")?,
            max_conns: count("MAX_CONNS")?,
            max_life_time: count("MAX_LIFE_TIME")?,
            max_life_conns: count("MAX_LIFE_CONNS")?,
            max_idle_time: count("MAX_IDLE_TIME")?,
            max_shutdown: count("MAX_SHUTDOWN")?,
            max_handoffs: count("MAX_HANDOFFS")?,
            backlog: count("BACKLOG")?,
            stacksize: count("STACKSIZE")?,
            history_to_retain: count("HISTORY_TO_RETAIN")?,
        };
        if limits.backlog.source == Source::Default {
            limits.backlog = Setting {
                value: (limits.max_conns.value * limits.max_procs.value).max(5),
                source: Source::Derived("MAX_CONNS*MAX_PROCS, at least 5"),
            };
        }
        let service = Service {
            name: section.name.clone(),
            loc: section.loc.clone(),
            ports,
            tls_ports,
            interface_address,
            image_spec: written(&own, globals, "IMAGE").unwrap_or_default(),
            image: Setting {
                value: image_path,
                source: image_source,
            },
            logfile_spec: written(&own, globals, "LOGFILE"),
            logfile,
            parameter,
            user,
            import_environment,
            debug,
            limits,
        };
        self.check_limits(&service);
        Ok(service)
    }

    /// Limits that contradict each other: the file is usable, but not as the writer meant.
    fn check_limits(&mut self, s: &Service) {
        let l = &s.limits;
        let mut warn = |message: String| self.diags.warn(s.loc.clone(), message);
        if l.min_procs.value > l.max_procs.value {
            warn(format!(
                "[SERVICE={}]: MIN_PROCS={} is more than MAX_PROCS={}; at most {} workers will run",
                s.name, l.min_procs.value, l.max_procs.value, l.max_procs.value
            ));
        }
        if l.min_conns.value > l.max_conns.value {
            warn(format!(
                "[SERVICE={}]: MIN_CONNS={} is more than MAX_CONNS={}; no worker can become \
                 'busy enough', so a new worker starts for every connection up to MAX_PROCS",
                s.name, l.min_conns.value, l.max_conns.value
            ));
        }
        if s.ports.value.is_empty() {
            warn(format!(
                "[SERVICE={}] has no PORT: it will not listen for connections",
                s.name
            ));
        }
    }
}

/// `IMPORT_ENVIRONMENT`'s names: blank- or comma-separated, each letters, digits and `_`,
/// not starting with a digit (a name the shell could export).
fn parse_env_names(text: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err("no variable named".into());
    }
    for n in &names {
        let valid = n.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
            && !n.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!("`{n}` is not the name of an environment variable"));
        }
    }
    Ok(names)
}

/// The text of an option as written in the section, else in the global part.
fn written(own: &Scope, globals: &Scope, name: &str) -> Option<String> {
    own.get(name)
        .or_else(|| globals.get(name))
        .map(|c| c.text.clone())
}

impl<T> Setting<T> {
    fn map_value<U>(self, f: impl FnOnce(T) -> U) -> Setting<U> {
        Setting {
            value: f(self.value),
            source: self.source,
        }
    }
}

/// A DEBUG value as a 32-bit mask (`-1` → every bit).
fn mask(v: Option<Value>) -> u32 {
    match v {
        // Masks are checked to fit 32 bits, so truncation only maps negatives to their bits.
        Some(Value::Int(i)) => i as u32,
        _ => 0,
    }
}

/// `25`, `25,587`, `25 587`: ports 1 to 65535, each once.
fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for word in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let n = parse_int(word).map_err(|e| format!("`{word}`: {e}"))?;
        let port = u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{word}` is not a TCP port (1 to 65535)"))?;
        if ports.contains(&port) {
            return Err(format!("port {port} is listed twice"));
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return Err("no port given".into());
    }
    Ok(ports)
}

/// An IPv4 or IPv6 address; empty, `*` and the sample's `!` placeholder mean all addresses.
fn parse_address(text: &str) -> Result<Option<IpAddr>, String> {
    let t = text.trim();
    if t.is_empty() || t == "*" || t == "!" {
        return Ok(None);
    }
    let bare = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    bare.parse::<IpAddr>().map(Some).map_err(|_| {
        "not an IP address (write a dotted quad such as 192.0.2.1, or an IPv6 address)".into()
    })
}

/// Two services, or one service twice, on the same port and an overlapping address.
fn check_port_collisions(services: &[Service]) -> Result<(), ConfigError> {
    let mut seen: Vec<(&Service, Option<IpAddr>, u16)> = Vec::new();
    for s in services {
        for &port in &s.ports.value {
            let addr = s.interface_address.value;
            if let Some((other, _, _)) = seen
                .iter()
                .find(|(_, a, p)| *p == port && (a.is_none() || addr.is_none() || *a == addr))
            {
                let loc = match &s.ports.source {
                    Source::Section(l) | Source::Global(l) => l.clone(),
                    _ => s.loc.clone(),
                };
                return Err(ConfigError::other(
                    loc,
                    format!(
                        "[SERVICE={}] and [SERVICE={}] both listen on port {port}",
                        other.name, s.name
                    ),
                ));
            }
            seen.push((s, addr, port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dispatcher_cnf::parse_str;
    use crate::config::source::PlainPaths;
    use std::path::Path;
    use std::sync::Arc;

    fn build_text(text: &str) -> Result<(DispatcherConfig, Diagnostics), ConfigError> {
        let file: Arc<Path> = Arc::from(Path::new("dispatcher.cnf"));
        let mut d = Diagnostics::default();
        let cnf = parse_str(&file, text, &mut d)?;
        build(&cnf, &PlainPaths, &mut d).map(|c| (c, d))
    }

    const MINIMAL: &str = "[SERVICE=LMTPSS]\nPORT=225\nIMAGE=/bin/x\n";

    #[test]
    fn absent_limits_take_the_sample_defaults() {
        let (c, d) = build_text(MINIMAL).expect("valid");
        assert!(d.is_empty(), "{d:?}");
        let l = &c.services[0].limits;
        assert_eq!(l.min_procs.value, 0);
        assert_eq!(l.max_procs.value, 5);
        assert_eq!(l.min_conns.value, 5);
        assert_eq!(l.max_conns.value, 20);
        assert_eq!(l.max_life_time.value, 86400);
        assert_eq!(l.max_life_conns.value, 100);
        assert_eq!(l.max_shutdown.value, 2);
        assert_eq!(l.max_handoffs.value, 5);
        assert_eq!(l.max_conns.source, Source::Default);
    }

    #[test]
    fn backlog_defaults_to_max_conns_times_max_procs_at_least_5() {
        let (c, _) = build_text(MINIMAL).expect("valid");
        assert_eq!(c.services[0].limits.backlog.value, 100);
        let (c, _) = build_text(&format!("MAX_CONNS=1\nMAX_PROCS=2\n{MINIMAL}")).expect("valid");
        assert_eq!(c.services[0].limits.backlog.value, 5);
        let (c, _) = build_text(&format!("{MINIMAL}BACKLOG=3\n")).expect("valid");
        assert_eq!(c.services[0].limits.backlog.value, 3);
    }

    #[test]
    fn section_beats_global_beats_default_and_says_so() {
        let (c, _) = build_text(&format!(
            "MAX_CONNS=16%1F\nMAX_PROCS=7\n{MINIMAL}MAX_PROCS=2\n"
        ))
        .expect("valid");
        let l = &c.services[0].limits;
        assert_eq!(l.max_conns.value, 31);
        assert!(matches!(l.max_conns.source, Source::Global(ref loc) if loc.line == 1));
        assert_eq!(l.max_procs.value, 2);
        assert!(matches!(l.max_procs.source, Source::Section(ref loc) if loc.line == 6));
    }

    #[test]
    fn bad_number_names_option_value_and_column() {
        let err = build_text(&format!("{MINIMAL}MAX_CONNS=abc\n")).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("dispatcher.cnf:4:11: MAX_CONNS=abc: not a whole number"),
            "{err}"
        );
    }

    #[test]
    fn several_ports_with_commas_or_blanks() {
        let (c, _) = build_text("[SERVICE=S]\nPORT=25, 587 2%1010\nIMAGE=/x\n").expect("valid");
        assert_eq!(c.services[0].ports.value, [25, 587, 10]);
    }

    #[test]
    fn port_zero_or_too_large_is_an_error() {
        for bad in ["0", "65536", "25,x"] {
            let text = format!("[SERVICE=S]\nPORT={bad}\nIMAGE=/x\n");
            assert!(build_text(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_services_on_one_port_is_an_error() {
        let err = build_text("[SERVICE=A]\nPORT=25\nIMAGE=/x\n[SERVICE=B]\nPORT=25\nIMAGE=/x\n")
            .expect_err("collision");
        assert_eq!(
            err.to_string(),
            "dispatcher.cnf:5:1: [SERVICE=A] and [SERVICE=B] both listen on port 25"
        );
    }

    #[test]
    fn same_port_on_different_addresses_is_fine() {
        let text = "[SERVICE=A]\nPORT=25\nINTERFACE_ADDRESS=127.0.0.2\nIMAGE=/x\n\
                    [SERVICE=B]\nPORT=25\nINTERFACE_ADDRESS=127.0.0.3\nIMAGE=/x\n";
        assert!(build_text(text).is_ok());
    }

    #[test]
    fn global_image_is_the_default_of_every_service_and_keeps_its_text() {
        let (c, _) = build_text("IMAGE=/bin/g\n[SERVICE=A]\nPORT=25\n").expect("valid");
        assert_eq!(c.services[0].image_spec, "/bin/g");
        assert!(matches!(c.services[0].image.source, Source::Global(_)));
    }

    #[test]
    fn service_without_image_is_an_error() {
        let err = build_text("[SERVICE=A]\nPORT=25\n").expect_err("no image");
        assert!(err.to_string().contains("has no IMAGE"), "{err}");
    }

    #[test]
    fn unknown_option_warns_with_did_you_mean() {
        let (_, d) = build_text(&format!("{MINIMAL}MAX_CONN=3\nPQL_DBYTLM=1\n")).expect("valid");
        let w: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            w,
            [
                "dispatcher.cnf:4:1: warning: MAX_CONN: unknown option, ignored (did you mean MAX_CONNS?)",
                "dispatcher.cnf:5:1: warning: PQL_DBYTLM: unknown option, ignored",
            ]
        );
    }

    #[test]
    fn option_not_acted_on_is_reported_once() {
        let text = "ENABLE_RBL=1\n[SERVICE=A]\nPORT=25\nIMAGE=/x\nENABLE_RBL=1\n";
        let (_, d) = build_text(text).expect("valid");
        let rbl: Vec<_> = d
            .warnings
            .iter()
            .filter(|w| w.message.contains("ENABLE_RBL"))
            .collect();
        assert_eq!(rbl.len(), 1, "{d:?}");
        assert!(rbl[0].message.contains("not acted on"));
    }

    #[test]
    fn second_port_in_a_section_warns_about_a_commented_header() {
        let text = "[SERVICE=A]\nPORT=25\nIMAGE=/x\n![SERVICE=B]\nPORT=26\n";
        let (c, d) = build_text(text).expect("valid");
        assert_eq!(c.services[0].ports.value, [26]);
        assert!(d.warnings[0].message.contains("commented out"), "{d:?}");
    }

    #[test]
    fn dispatcher_section_sets_the_dispatchers_debug_and_is_no_service() {
        let text = "DEBUG=1\n[SERVICE=DISPATCHER]\nDEBUG=-1\n[SERVICE=A]\nPORT=25\nIMAGE=/x\n";
        let (c, d) = build_text(text).expect("valid");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.debug.value, 0xFFFF_FFFF);
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].debug.value, 1);
    }

    #[test]
    fn interface_address_placeholder_means_all_addresses() {
        let text = format!("{MINIMAL}INTERFACE_ADDRESS=!\n");
        let (c, d) = build_text(&text).expect("valid");
        assert_eq!(c.services[0].interface_address.value, None);
        assert_eq!(d.warnings.len(), 1, "the `!` value still warns: {d:?}");
        let text = format!("{MINIMAL}INTERFACE_ADDRESS=::1\n");
        let (c, _) = build_text(&text).expect("valid");
        assert_eq!(c.services[0].interface_address.value, "::1".parse().ok());
        assert!(build_text(&format!("{MINIMAL}INTERFACE_ADDRESS=1.2.3\n")).is_err());
    }

    #[test]
    fn debug_environment_is_hexadecimal_and_wins() {
        let (mut c, _) = build_text(&format!("DEBUG=1\n{MINIMAL}")).expect("valid");
        c.apply_debug_environment("FFFFFFFF").expect("hex");
        assert_eq!(c.debug.value, u32::MAX);
        assert_eq!(c.debug.source, Source::Environment(DEBUG_ENVIRONMENT));
        c.apply_debug_environment("0x10").expect("hex");
        assert_eq!(c.debug.value, 16);
        let err = c.apply_debug_environment("-1").expect_err("not hex");
        assert!(
            err.to_string().starts_with("IMTA_DISPATCHER_DEBUG=-1:"),
            "{err}"
        );
    }

    #[test]
    fn channel_comes_from_parameter() {
        assert_eq!(channel_of("CHANNEL=tcp_lmtpss"), Some("tcp_lmtpss"));
        assert_eq!(channel_of("X=1, channel=tcp_lmtpsn"), Some("tcp_lmtpsn"));
        assert_eq!(channel_of("CHANNEL="), None);
        assert_eq!(channel_of("nothing"), None);
    }

    #[test]
    fn contradictory_limits_warn() {
        let text = format!("MIN_PROCS=9\nMIN_CONNS=30\n{MINIMAL}");
        let (_, d) = build_text(&text).expect("valid");
        assert_eq!(d.warnings.len(), 2, "{d:?}");
    }

    #[test]
    fn import_environment_takes_names_and_a_section_replaces_the_global_list() {
        let (c, _) = build_text(MINIMAL).expect("valid");
        assert!(c.services[0].import_environment.value.is_empty());
        let text = format!("IMPORT_ENVIRONMENT=TMPDIR, KRB5CCNAME\n{MINIMAL}");
        let (c, d) = build_text(&text).expect("valid");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            c.services[0].import_environment.value,
            ["TMPDIR", "KRB5CCNAME"]
        );
        let text =
            format!("IMPORT_ENVIRONMENT=TMPDIR\n{MINIMAL}IMPORT_ENVIRONMENT=MALLOC_ARENA_MAX\n");
        let (c, _) = build_text(&text).expect("valid");
        assert_eq!(c.services[0].import_environment.value, ["MALLOC_ARENA_MAX"]);
    }

    #[test]
    fn import_environment_refuses_what_is_not_a_variable_name() {
        for bad in ["A=B", "1X", "LD-PRELOAD", ""] {
            let text = format!("{MINIMAL}IMPORT_ENVIRONMENT={bad}\n");
            let e = build_text(&text).expect_err(bad).to_string();
            assert!(e.contains("IMPORT_ENVIRONMENT"), "{e}");
        }
    }
}
