//! `tcp_lmtpn_server`: the LMTP image delivering to native /var/mail mailboxes (not yet
//! implemented; prints its version).
fn main() {
    println!("tcp_lmtpn_server {}", msdispatcher::VERSION);
}
