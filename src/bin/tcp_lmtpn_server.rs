//! `tcp_lmtpn_server`: the LMTP image delivering to native mailboxes (mbox files in
//! `/var/mail`), run by the dispatcher for a service such as the seed's `[SERVICE=LMTPSN]`.
//! See `docs/lmtp.md`.
fn main() -> std::process::ExitCode {
    msdispatcher::lmtp::server::main_for(msdispatcher::lmtp::settings::ImageKind::Native)
}
