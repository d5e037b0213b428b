//! `dispatcher --check`: read the whole installation's configuration and show what it means.
//!
//! Loads the tailor file, `dispatcher.cnf`, `mappings`, `imta.cnf` and the channel option file
//! of every channel a service names, compiles the mapping tables, checks what only the files
//! together can tell (does each
//! service's `PARAMETER=CHANNEL=name` name a channel `imta.cnf` defines? can the LMTP images
//! run on it?), and prints the effective configuration per service with the source of every
//! value. Errors stop the check (exit 1); warnings are printed and, with `--strict`, also fail.
//! A file counts as absent only when nothing is at its path (`ENOENT`); one that is there but
//! cannot be read or parsed is an error, so a broken `mappings` never means "no PORT_ACCESS".
//!
//! This module reads files and formats text; it starts nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::channel_option::{self, ChannelOptions};
use crate::config::dispatcher_cnf;
use crate::config::error::{ConfigError, Diagnostics, ErrorKind};
use crate::config::imta_cnf::{self, ImtaCnf};
use crate::config::mappings::{self, MappingFile};
use crate::config::service::{self, DispatcherConfig, Service, Setting};
use crate::config::source;
use crate::config::tailor::{Tailor, TailorOrigin, TailorValue};
use crate::dispatcher::access;
use crate::mapping::table::MappingSet;

/// Image names that are LMTP servers and so need a channel with the `lmtp` keyword.
const LMTP_IMAGES: &[&str] = &["tcp_lmtp_server", "tcp_lmtpn_server"];

/// Everything an installation's configuration says, read and checked.
#[derive(Debug)]
pub struct Installation {
    pub tailor: Tailor,
    pub tailor_origin: TailorOrigin,
    pub dispatcher_path: PathBuf,
    pub dispatcher: DispatcherConfig,
    pub mappings_path: PathBuf,
    /// `None` when nothing is at its path (every connection is then accepted, with a
    /// warning); a file that exists but cannot be read is an error, never `None`.
    pub mappings: Option<MappingFile>,
    /// The same tables, compiled for the mapping engine.
    pub mapping_set: Option<MappingSet>,
    pub imta_path: PathBuf,
    /// `None` when nothing is at its path; a file that cannot be read is an error.
    pub imta: Option<ImtaCnf>,
    /// The option file of each channel a service names, in service order.
    pub channel_options: Vec<(String, ChannelOptions)>,
}

/// Reads every file of the installation whose tailor file is `tailor_path`.
pub fn load_installation(
    tailor_path: &Path,
    tailor_origin: TailorOrigin,
    diags: &mut Diagnostics,
) -> Result<Installation, ConfigError> {
    let tailor = Tailor::load(tailor_path, diags)?;
    let dispatcher_path = tailor.dispatcher_config()?;
    let cnf = dispatcher_cnf::load(&dispatcher_path, &tailor, diags)?;
    let mut dispatcher = service::build(&cnf, &tailor, diags)?;
    if let Some(value) = std::env::var_os(service::DEBUG_ENVIRONMENT) {
        dispatcher.apply_debug_environment(&value.to_string_lossy())?;
    }

    let mappings_path = tailor.mapping_file()?;
    // Absent only when nothing is there: a file that cannot be read or parsed is an error,
    // never "no table" (which would accept every connection).
    let mappings = if source::is_present(&mappings_path)? {
        Some(mappings::load(&mappings_path, &tailor, diags)?)
    } else {
        None
    };
    let mapping_set = match &mappings {
        Some(m) => Some(MappingSet::compile(m, diags)?),
        None => None,
    };
    warn_open_services(&dispatcher, &mappings_path, mapping_set.as_ref(), diags);

    let imta_path = tailor.config_file()?;
    let imta = if source::is_present(&imta_path)? {
        Some(imta_cnf::load(&imta_path, &tailor, diags)?)
    } else {
        None
    };
    let mut channel_options = Vec::new();
    for s in &dispatcher.services {
        if let Some(name) = s.channel() {
            check_channel(s, name, imta.as_ref(), &imta_path, diags)?;
            if !channel_options.iter().any(|(n, _)| n == name) {
                let options = channel_option::load(&tailor.channel_option_file(name), diags)?;
                channel_options.push((name.to_string(), options));
            }
        }
        check_image(s, diags);
    }
    Ok(Installation {
        tailor,
        tailor_origin,
        dispatcher_path,
        dispatcher,
        mappings_path,
        mappings,
        mapping_set,
        imta_path,
        imta,
        channel_options,
    })
}

/// Every service is named in a warning when no PORT_ACCESS table judges its connections: the
/// original allows that, but a store that anyone on the network can reach is worth saying so
/// at every start and in `--check` (where `--strict` makes it fail).
fn warn_open_services(
    dispatcher: &DispatcherConfig,
    mappings_path: &Path,
    set: Option<&MappingSet>,
    diags: &mut Diagnostics,
) {
    let Some(reason) = access::missing_table(mappings_path, set) else {
        return;
    };
    for s in &dispatcher.services {
        let ports: Vec<String> = s.ports.value.iter().map(u16::to_string).collect();
        diags.warn_nowhere(format!(
            "[SERVICE={}] (PORT={}) accepts every connection: {reason}",
            s.name,
            ports.join(",")
        ));
    }
}

/// The account each service's workers run as: named, not root, and existing
/// (`dispatcher::account` decides; see `check_services` there for what is an error when).
pub fn check_accounts(
    inst: &Installation,
    diags: &mut Diagnostics,
    starting: bool,
) -> Result<(), String> {
    let mail_user = inst.tailor.user();
    crate::dispatcher::account::check_services(
        &inst.dispatcher.services,
        mail_user.as_deref(),
        starting,
        diags,
    )
}

/// A service's channel must exist in imta.cnf; the LMTP images also need its `lmtp` keyword.
fn check_channel(
    s: &Service,
    name: &str,
    imta: Option<&ImtaCnf>,
    imta_path: &Path,
    diags: &mut Diagnostics,
) -> Result<(), ConfigError> {
    let loc = match &s.parameter.source {
        service::Source::Section(l) | service::Source::Global(l) => l.clone(),
        _ => s.loc.clone(),
    };
    let Some(imta) = imta else {
        return Err(ConfigError::at(
            loc,
            ErrorKind::Other(format!(
                "PARAMETER=CHANNEL={name}: there is no imta.cnf at {} to define the channel; \
                 the workers of [SERVICE={}] could not start",
                imta_path.display(),
                s.name
            )),
        ));
    };
    let Some(channel) = imta.channel(name) else {
        return Err(ConfigError::at(
            loc,
            ErrorKind::Other(format!(
                "PARAMETER=CHANNEL={name}: {} defines no channel {name}; the workers of \
                 [SERVICE={}] could not start",
                imta_path.display(),
                s.name
            )),
        ));
    };
    if is_lmtp_image(&s.image.value) && !channel.is_lmtp() {
        return Err(ConfigError::at(
            loc,
            ErrorKind::Other(format!(
                "PARAMETER=CHANNEL={name}: channel {name} ({}) has no `lmtp` keyword, which \
                 the LMTP image {} requires",
                channel.loc,
                s.image.value.display()
            )),
        ));
    }
    for kw in channel.unknown_keywords() {
        diags.warn(
            kw.loc.clone(),
            format!(
                "channel {name}: keyword `{}` is not one the original documents (it would \
                 treat it as a UNIX group id); ignored",
                kw.name
            ),
        );
    }
    Ok(())
}

fn is_lmtp_image(image: &Path) -> bool {
    image
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| LMTP_IMAGES.contains(&n))
}

/// An IMAGE that is not an executable file here is worth a warning (the check may run on
/// another machine than the one that will run the dispatcher, so it is not an error).
fn check_image(s: &Service, diags: &mut Diagnostics) {
    use std::os::unix::fs::PermissionsExt;
    let path = &s.image.value;
    let problem = match std::fs::metadata(path) {
        Err(e) => Some(format!("cannot be read ({e})")),
        Ok(m) if !m.is_file() => Some("is not a file".to_string()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("is not executable".to_string()),
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        diags.warn_nowhere(format!(
            "[SERVICE={}]: IMAGE {} {problem}",
            s.name,
            path.display()
        ));
    }
}

/// The effective configuration as `dispatcher --check` prints it.
pub fn report(inst: &Installation) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(
        out,
        "tailor file      {} (found by {})",
        inst.tailor.path().display(),
        inst.tailor_origin
    );
    for name in [
        "IMTA_ROOT",
        "IMTA_BIN",
        "IMTA_TABLE",
        "IMTA_LOG",
        "IMTA_USER",
    ] {
        if let Some(v) = inst.tailor.get(name) {
            let from = match &v {
                TailorValue::File(_, loc) => format!("line {}", loc.line),
                TailorValue::Default(_, how) => format!("default: {how}"),
            };
            let _ = writeln!(out, "  {name:<22} {:<40} ({from})", v.value());
        }
    }
    let _ = writeln!(out, "dispatcher.cnf   {}", inst.dispatcher_path.display());
    let _ = writeln!(out, "mappings         {}", describe_mappings(inst));
    let _ = writeln!(out, "imta.cnf         {}", describe_imta(inst));
    let d = &inst.dispatcher;
    let _ = writeln!(
        out,
        "dispatcher       DEBUG={:#x} ({})  HISTORY_TO_RETAIN={} ({})",
        d.debug.value, d.debug.source, d.history_to_retain.value, d.history_to_retain.source
    );
    for s in &d.services {
        out.push('\n');
        report_service(&mut out, inst, s);
    }
    out
}

fn describe_mappings(inst: &Installation) -> String {
    let path = inst.mappings_path.display();
    match &inst.mappings {
        None => format!("{path} (absent: every connection is accepted)"),
        Some(m) => {
            let port_access = match m.table("PORT_ACCESS") {
                Some(t) => format!("PORT_ACCESS has {} entries", t.entries.len()),
                None => "no PORT_ACCESS table".to_string(),
            };
            format!("{path} ({} tables; {port_access})", m.tables.len())
        }
    }
}

fn describe_imta(inst: &Installation) -> String {
    let path = inst.imta_path.display();
    match &inst.imta {
        None => format!("{path} (absent)"),
        Some(c) => format!(
            "{path} ({} rewrite rules, {} channels)",
            c.rewrite_rules.len(),
            c.channels.len()
        ),
    }
}

fn report_service(out: &mut String, inst: &Installation, s: &Service) {
    let _ = writeln!(out, "[SERVICE={}]  ({})", s.name, s.loc);
    let mut row = |name: &str, value: String, source: &service::Source| {
        let _ = writeln!(out, "  {name:<18} {value:<44} ({source})");
    };
    let ports = |p: &Setting<Vec<u16>>| {
        if p.value.is_empty() {
            "none".to_string()
        } else {
            p.value
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    row("PORT", ports(&s.ports), &s.ports.source);
    if !s.tls_ports.value.is_empty() {
        row(
            "TLS_PORT",
            ports(&s.tls_ports) + " (not opened)",
            &s.tls_ports.source,
        );
    }
    let addr = s
        .interface_address
        .value
        .map_or("all addresses".to_string(), |a| a.to_string());
    row("INTERFACE_ADDRESS", addr, &s.interface_address.source);
    row(
        "IMAGE",
        format!("{} -> {}", s.image_spec, s.image.value.display()),
        &s.image.source,
    );
    let logfile = match (&s.logfile_spec, &s.logfile.value) {
        (Some(spec), Some(p)) => format!("{spec} -> {}", p.display()),
        _ => "none (worker output is discarded)".to_string(),
    };
    row("LOGFILE", logfile, &s.logfile.source);
    row(
        "PARAMETER",
        s.parameter.value.clone().unwrap_or_else(|| "none".into()),
        &s.parameter.source,
    );
    let user = match &s.user.value {
        Some(u) => u.clone(),
        None => match inst.tailor.user() {
            Some(u) => format!("{u} (tailor IMTA_USER)"),
            None => "the dispatcher's own user".to_string(),
        },
    };
    row("USER", user, &s.user.source);
    row("DEBUG", format!("{:#x}", s.debug.value), &s.debug.source);
    for (name, setting) in s.limits.rows() {
        row(name, setting.value.to_string(), &setting.source);
    }
    if let Some(name) = s.channel() {
        let _ = writeln!(out, "  channel {name}{}", describe_channel(inst, name));
    }
}

fn describe_channel(inst: &Installation, name: &str) -> String {
    let Some(ch) = inst.imta.as_ref().and_then(|c| c.channel(name)) else {
        return String::new();
    };
    let keywords: Vec<String> = ch
        .effective_keywords()
        .iter()
        .map(|k| {
            if k.args.is_empty() {
                k.name.clone()
            } else {
                format!("{} {}", k.name, k.args.join(" "))
            }
        })
        .collect();
    let options = inst
        .channel_options
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, o)| {
            if !o.exists {
                format!("; no option file at {}", o.path.display())
            } else {
                format!("; {} options from {}", o.settings.len(), o.path.display())
            }
        })
        .unwrap_or_default();
    format!(
        " ({}): keywords {}; official host {}{options}",
        ch.loc,
        keywords.join(" "),
        ch.official_host
    )
}

/// One line per warning.
pub fn format_warnings(diags: &Diagnostics) -> String {
    let mut out = String::new();
    for w in &diags.warnings {
        let _ = writeln!(out, "{w}");
    }
    out
}
