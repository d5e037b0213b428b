//! dispatcher.cnf as an administrator writes it: the seed file, a file using every option,
//! includes, and broken files with the exact error each must give.

mod common;

use std::path::Path;

use msdispatcher::config::dispatcher_cnf;
use msdispatcher::config::error::{ConfigError, Diagnostics};
use msdispatcher::config::service::{self, DispatcherConfig, Source};
use msdispatcher::config::tailor::Tailor;

/// Reads `dispatcher.cnf`-style `file` with the tailor file beside it.
fn load(file: &Path) -> Result<(DispatcherConfig, Diagnostics), ConfigError> {
    let mut diags = Diagnostics::default();
    let dir = file.parent().unwrap_or(Path::new("."));
    let tailor = Tailor::load(&dir.join("imta_tailor"), &mut diags)?;
    let cnf = dispatcher_cnf::load(file, &tailor, &mut diags)?;
    let config = service::build(&cnf, &tailor, &mut diags)?;
    Ok((config, diags))
}

#[test]
fn seed_file_parses_exactly_as_printed() {
    let (c, d) = load(&common::fixtures().join("seed/dispatcher.cnf")).expect("seed parses");
    assert!(d.is_empty(), "the seed gives no warning: {d:?}");
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["LMTPSS", "LMTPSN"]);
    let ss = &c.services[0];
    assert_eq!(ss.ports.value, [225]);
    assert_eq!(ss.image_spec, "IMTA_BIN:tcp_lmtp_server");
    assert_eq!(
        ss.image.value,
        Path::new("/opt/SUNWmsgsr/lib/tcp_lmtp_server")
    );
    assert_eq!(
        ss.logfile.value.as_deref(),
        Some(Path::new("/var/opt/SUNWmsgsr/log/tcp_lmtpss_server.log"))
    );
    assert_eq!(ss.parameter.value.as_deref(), Some("CHANNEL=tcp_lmtpss"));
    assert_eq!(ss.channel(), Some("tcp_lmtpss"));
    assert_eq!(ss.limits.stacksize.value, 2_048_000);
    assert_eq!(
        ss.interface_address.value, None,
        "`! INTERFACE_ADDRESS=!` is a comment"
    );
    let sn = &c.services[1];
    assert_eq!(sn.ports.value, [226]);
    assert_eq!(
        sn.image.value,
        Path::new("/opt/SUNWmsgsr/lib/tcp_lmtpn_server")
    );
    assert_eq!(sn.channel(), Some("tcp_lmtpsn"));
    assert_eq!(
        sn.interface_address.value, None,
        "`!INTERFACE_ADDRESS=` is a comment"
    );
}

#[test]
fn every_documented_option_is_read_from_globals_sections_and_includes() {
    let (c, d) = load(&common::fixtures().join("dispatcher_cnf/dispatcher.cnf")).expect("parses");
    assert_eq!(c.debug.value, 0xFFFF_FFFF, "[SERVICE=DISPATCHER] DEBUG=-1");
    assert_eq!(c.history_to_retain.value, 7, "8%7");
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["SMTP", "LMTPSS"], "DISPATCHER is not a service");

    let smtp = &c.services[0];
    assert_eq!(smtp.ports.value, [25, 587]);
    assert_eq!(smtp.tls_ports.value, [465]);
    assert_eq!(smtp.limits.max_conns.value, 10, "2%1010 in the section");
    assert_eq!(smtp.limits.backlog.value, 50, "MAX_CONNS*MAX_PROCS");

    let lmtp = &c.services[1];
    assert_eq!(
        lmtp.loc.file.file_name().and_then(|f| f.to_str()),
        Some("dispatcher_site.cnf")
    );
    assert_eq!(lmtp.ports.value, [225]);
    assert_eq!(lmtp.interface_address.value, "192.0.2.10".parse().ok());
    assert_eq!(lmtp.user.value.as_deref(), Some("mailsrv"));
    assert_eq!(lmtp.limits.max_conns.value, 3);
    assert_eq!(lmtp.limits.max_procs.value, 2);
    assert_eq!(lmtp.limits.backlog.value, 64);
    assert_eq!(lmtp.limits.max_idle_time.value, 600);
    assert!(matches!(lmtp.limits.min_procs.source, Source::Global(ref l) if l.line == 5));
    assert!(matches!(lmtp.limits.max_conns.source, Source::Section(ref l) if l.line == 12));

    // Options read but not acted on are each reported once; UCX_HOLD as historical.
    let messages: Vec<&str> = d.warnings.iter().map(|w| w.message.as_str()).collect();
    for name in [
        "MAX_HANDOFFS",
        "TLS_PORT",
        "ENABLE_RBL",
        "DNS_VERIFY_DOMAIN",
        "IDENT",
        "HISTORICAL_TIME",
    ] {
        let n = messages
            .iter()
            .filter(|m| m.starts_with(&format!("{name}:")))
            .count();
        assert_eq!(n, 1, "{name} reported once: {messages:#?}");
    }
    assert!(messages
        .iter()
        .any(|m| m.starts_with("UCX_HOLD: of historical interest")));
    assert_eq!(messages.len(), 7, "{messages:#?}");
}

#[test]
fn broken_dispatcher_cnf_files_fail_with_their_exact_messages() {
    let n = common::check_broken_fixtures("dispatcher_cnf", |p| load(p).map(|_| ()));
    assert!(n >= 15, "only {n} broken cases");
}
