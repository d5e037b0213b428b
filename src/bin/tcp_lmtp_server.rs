//! `tcp_lmtp_server`: the LMTP image delivering into the message store (Maildir), run by the
//! dispatcher for a service such as the seed's `[SERVICE=LMTPSS]`. See `docs/lmtp.md`.
fn main() -> std::process::ExitCode {
    msdispatcher::lmtp::server::main_for(msdispatcher::lmtp::settings::ImageKind::Store)
}
