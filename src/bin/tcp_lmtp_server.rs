//! `tcp_lmtp_server`: the LMTP image delivering into the message store. Delivery is not built
//! yet: as a worker it answers every client `421` (try again later), so relays keep their mail.
fn main() -> std::process::ExitCode {
    use msdispatcher::worker::image::{main_for, NotAvailable};
    main_for("tcp_lmtp_server", |_| {
        std::sync::Arc::new(NotAvailable {
            program: "tcp_lmtp_server",
        })
    })
}
