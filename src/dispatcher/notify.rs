//! Telling a service manager (systemd, `Type=notify`) how the dispatcher is doing, with the
//! datagrams of the `sd_notify` protocol: `READY=1` once it serves, `RELOADING=1` and
//! `READY=1` around a reload, `STOPPING=1` at a stop, and `STATUS=` lines in between.
//!
//! The socket is `$NOTIFY_SOCKET`: a path, or an abstract name written `@name`. Without it
//! every call is a no-op, so the dispatcher behaves the same outside a unit. A message that
//! cannot be sent is logged and otherwise ignored: the service manager is told nothing new,
//! but the dispatcher goes on serving mail (systemd's own timeouts handle a silent service).
//! Written here (a socket, a send) rather than taken from a crate: see docs/dependencies.md.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// Where the notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// The service manager's notification socket, if the dispatcher has one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
}

impl Notifier {
    /// From the environment's `NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        Notifier::from_value(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    /// From a `NOTIFY_SOCKET` value: a path, `@name` for an abstract socket; an empty value
    /// is none (as `sd_notify` treats it).
    pub fn from_value(value: Option<&OsStr>) -> Notifier {
        let target = value.and_then(|v| {
            let bytes = v.as_bytes();
            match bytes.first() {
                None => None,
                Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
                Some(_) => Some(Target::Path(PathBuf::from(v))),
            }
        });
        Notifier { target }
    }

    /// Whether a service manager listens (the dispatcher then stays in the foreground).
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (one or more `KEY=value` lines); a failure is logged, not returned.
    pub fn send(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send_to(target, state) {
            log::warn!(
                "cannot notify the service manager ({:?}) of `{}`: {e}",
                target,
                state.replace('\n', " ")
            );
        }
    }

    /// `STATUS=` with one line of text (newlines would start new assignments).
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", one_line(text)));
    }
}

/// `text` with its line breaks made spaces: a `STATUS=` value is one line.
pub fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `RELOADING=1` with the time it began, which systemd asks for with `Type=notify-reload`
/// and ignores otherwise.
pub fn reloading_message() -> String {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let usec = t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000;
            format!("RELOADING=1\nMONOTONIC_USEC={usec}")
        }
        Err(_) => "RELOADING=1".to_string(),
    }
}

fn send_to(target: &Target, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let address = match target {
        Target::Path(p) => SocketAddr::from_pathname(p)?,
        Target::Abstract(name) => SocketAddr::from_abstract_name(name)?,
    };
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_or_an_empty_notify_socket_means_no_service_manager() {
        assert!(!Notifier::from_value(None).active());
        assert!(!Notifier::from_value(Some(OsStr::new(""))).active());
        // And sending is then a no-op, not an error.
        Notifier::from_value(None).send("READY=1");
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket_anything_else_a_path() {
        let a = Notifier::from_value(Some(OsStr::new("@/org/systemd/notify")));
        assert_eq!(
            a.target,
            Some(Target::Abstract(b"/org/systemd/notify".to_vec()))
        );
        let p = Notifier::from_value(Some(OsStr::new("/run/systemd/notify")));
        assert_eq!(
            p.target,
            Some(Target::Path(PathBuf::from("/run/systemd/notify")))
        );
    }

    #[test]
    fn datagrams_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        Notifier::from_value(Some(path.as_os_str())).send("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("msdispatcher-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        Notifier::from_value(Some(OsStr::new(&format!("@{name}")))).status("a\nb");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STATUS=a b");
    }
}
