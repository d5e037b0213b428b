//! `dispatcher --check`: show what the whole installation's configuration means.
//!
//! The installation is loaded (and checked across files) by [`crate::config::installation`];
//! this module checks the workers' accounts and prints the effective configuration per
//! service with the source of every value. Errors stop the check (exit 1); warnings are
//! printed and, with `--strict`, also fail.
//!
//! This module formats text; it starts nothing.

use std::fmt::Write as _;

use crate::config::error::Diagnostics;
use crate::config::installation::Installation;
use crate::config::service::{self, Service, Setting};
use crate::config::tailor::TailorValue;

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
    let _ = writeln!(
        out,
        "metrics          {}",
        d.metrics.map_or(
            "off (no METRICS_PORT in [SERVICE=DISPATCHER])".to_string(),
            |a| { format!("http://{a}/metrics") }
        )
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
