//! `tcp_lmtpn_server`: the LMTP image delivering to native /var/mail mailboxes. Delivery is
//! not built yet: as a worker it answers every client `421` (try again later), so relays keep
//! their mail.
fn main() -> std::process::ExitCode {
    use msdispatcher::worker::image::{main_for, NotAvailable};
    main_for("tcp_lmtpn_server", |_| {
        std::sync::Arc::new(NotAvailable {
            program: "tcp_lmtpn_server",
        })
    })
}
