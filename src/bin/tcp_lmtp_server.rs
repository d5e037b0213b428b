//! `tcp_lmtp_server`: the LMTP image delivering into the message store (not yet implemented;
//! prints its version).
fn main() {
    println!("tcp_lmtp_server {}", msdispatcher::VERSION);
}
