//! Which account a service's workers run as, and what privilege they keep: the one decision,
//! used when the dispatcher starts, at every reload and by `dispatcher --check`.
//!
//! The rules (`docs/configuration.md`, "Accounts"):
//!
//! * A dispatcher that is not root cannot change its workers' account: they run as its own
//!   user, with no privilege to give away.
//! * A dispatcher that is root runs every service's workers as the service's `USER`, else the
//!   tailor's `IMTA_USER`. Workers never run as root: neither naming an account, or the
//!   account being uid 0, is an error ([`AccountError`]), and the start or reload is refused.
//! * The native image (an `IMAGE` whose file name is `tcp_lmtpn_server`) writes each
//!   recipient's own `0600` mailbox. It runs as the account like every other image but keeps
//!   one capability, `CAP_SETUID`, which lets it take the recipient's file-system identity
//!   (`setfsuid`) for each delivery, as Postfix's `local(8)` delivers as the recipient. Every
//!   other image keeps no capability at all. The rule goes by the file name because that is
//!   how an installation names the native image (`IMTA_BIN:tcp_lmtpn_server`); a third-party
//!   image gets nothing unless it is installed under that name.
//!
//! [`decide`] is pure: it takes the account lookup as an argument, so the rules are tested
//! without a password database. [`lookup`] is the real lookup. Starting the process with
//! what was decided is [`super::spawn`]'s job.

use std::path::Path;

use crate::config::error::Diagnostics;
use crate::config::service::Service;

/// The file name of the image that keeps `CAP_SETUID` (see the module comment).
pub const NATIVE_IMAGE: &str = "tcp_lmtpn_server";

/// An account as the password database gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Who a worker runs as, when the dispatcher is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Keep `CAP_SETUID` (and nothing else) through the exec: the native image only.
    pub keep_setuid: bool,
}

/// Why an account name could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("user {0} does not exist")]
    NoSuchUser(String),
    #[error("cannot look up user {0}: {1}")]
    Lookup(String, nix::Error),
}

/// Which setting named the account, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedBy {
    User,
    ImtaUser,
}

impl std::fmt::Display for NamedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamedBy::User => "its USER",
            NamedBy::ImtaUser => "IMTA_USER of the tailor file",
        })
    }
}

/// Why a service's workers cannot be started as root would start them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error(
        "[SERVICE={service}]: the dispatcher runs as root and neither the service's USER nor \
         IMTA_USER of the tailor file names an account for its workers, which never run as \
         root: set USER= in dispatcher.cnf or IMTA_USER= in imta_tailor"
    )]
    NoAccount { service: String },
    #[error(
        "[SERVICE={service}]: its workers are to run as {name} ({named_by}), which is uid 0; \
         workers never run as root: name another account in USER or IMTA_USER"
    )]
    Root {
        service: String,
        name: String,
        named_by: NamedBy,
    },
    #[error(
        "[SERVICE={service}]: its workers are to run as {name} ({named_by}), whose group is \
         gid 0, a privileged group (it owns system files): give the account another primary \
         group, or name another account in USER or IMTA_USER"
    )]
    RootGroup {
        service: String,
        name: String,
        named_by: NamedBy,
    },
    #[error("[SERVICE={service}]: its workers are to run as {name} ({named_by}): {source}")]
    Lookup {
        service: String,
        name: String,
        named_by: NamedBy,
        source: LookupError,
    },
}

impl AccountError {
    /// True when the error depends on this host's password database (an account missing
    /// here), not on the configuration itself.
    pub fn depends_on_host(&self) -> bool {
        matches!(self, AccountError::Lookup { .. })
    }
}

/// The account `service`'s workers run as: `None` when the dispatcher is not `root` (they
/// run as the dispatcher's user); `mail_user` is the tailor's `IMTA_USER`.
pub fn decide(
    service: &Service,
    mail_user: Option<&str>,
    root: bool,
    lookup: impl Fn(&str) -> Result<Account, LookupError>,
) -> Result<Option<RunAs>, AccountError> {
    if !root {
        return Ok(None);
    }
    let Some(name) = service.worker_account(mail_user) else {
        return Err(AccountError::NoAccount {
            service: service.name.clone(),
        });
    };
    let named_by = if service.user.value.is_some() {
        NamedBy::User
    } else {
        NamedBy::ImtaUser
    };
    let account = lookup(name).map_err(|source| AccountError::Lookup {
        service: service.name.clone(),
        name: name.to_string(),
        named_by,
        source,
    })?;
    if account.uid == 0 {
        return Err(AccountError::Root {
            service: service.name.clone(),
            name: name.to_string(),
            named_by,
        });
    }
    if account.gid == 0 {
        // Postfix refuses such an account too ("user has privileged group ID").
        return Err(AccountError::RootGroup {
            service: service.name.clone(),
            name: name.to_string(),
            named_by,
        });
    }
    Ok(Some(RunAs {
        uid: account.uid,
        gid: account.gid,
        keep_setuid: is_native_image(&service.image.value),
    }))
}

/// Whether `image` is the native image, the one that keeps `CAP_SETUID`.
pub fn is_native_image(image: &Path) -> bool {
    image.file_name().is_some_and(|n| n == NATIVE_IMAGE)
}

/// Looks up the account `name` (or a numeric uid) in the password database.
pub fn lookup(name: &str) -> Result<Account, LookupError> {
    let user = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    }
    .map_err(|e| LookupError::Lookup(name.to_string(), e))?
    .ok_or_else(|| LookupError::NoSuchUser(name.to_string()))?;
    Ok(Account {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Whether this process is root, the one input of [`decide`] that is not configuration.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The decision for every service, as the start (`starting`) and `--check` need it.
///
/// Starting: any error stops the start, before the dispatcher detaches. `--check` judges the
/// installation as a root start would: as root every error fails the check; not as root (or
/// for an account merely missing on this host, which may not be the installation's host) it
/// is a warning, since the dispatcher this user would start runs its workers as itself.
pub fn check_services(
    services: &[Service],
    mail_user: Option<&str>,
    starting: bool,
    diags: &mut Diagnostics,
) -> Result<(), String> {
    let root = running_as_root();
    // --check judges the installation as a start as root would.
    let as_root = root || !starting;
    for s in services {
        let Err(e) = decide(s, mail_user, as_root, lookup) else {
            continue;
        };
        if starting || (root && !e.depends_on_host()) {
            return Err(e.to_string());
        }
        diags.warn_nowhere(format!(
            "{e} (the dispatcher refuses to start as root with this configuration)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dispatcher_cnf::parse_str;
    use crate::config::service::build;
    use crate::config::source::PlainPaths;
    use std::sync::Arc;

    fn service(options: &str, image: &str) -> Service {
        let file: Arc<Path> = Arc::from(Path::new("dispatcher.cnf"));
        let mut d = Diagnostics::default();
        let text = format!("[SERVICE=LMTPSN]\nPORT=226\nIMAGE={image}\n{options}");
        let cnf = parse_str(&file, &text, &mut d).expect("parses");
        build(&cnf, &PlainPaths, &mut d)
            .expect("valid")
            .services
            .remove(0)
    }

    /// A password database with `mailsrv` (uid 70), `root` (0) and `7` (a uid with no name).
    fn db(name: &str) -> Result<Account, LookupError> {
        match name {
            "mailsrv" => Ok(Account { uid: 70, gid: 12 }),
            "root" | "0" => Ok(Account { uid: 0, gid: 0 }),
            "operator" => Ok(Account { uid: 11, gid: 0 }),
            other => Err(LookupError::NoSuchUser(other.to_string())),
        }
    }

    #[test]
    fn not_root_switches_to_no_account_whatever_is_configured() {
        let s = service("", "/opt/lib/tcp_lmtp_server");
        assert_eq!(decide(&s, None, false, db), Ok(None));
        let s = service("USER=root", "/opt/lib/tcp_lmtp_server");
        assert_eq!(decide(&s, None, false, db), Ok(None));
    }

    #[test]
    fn root_with_neither_user_nor_imta_user_is_refused_naming_both() {
        let s = service("", "/opt/lib/tcp_lmtp_server");
        let e = decide(&s, None, true, db).unwrap_err();
        assert_eq!(
            e,
            AccountError::NoAccount {
                service: "LMTPSN".into()
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("[SERVICE=LMTPSN]")
                && text.contains("USER")
                && text.contains("IMTA_USER"),
            "{text}"
        );
    }

    #[test]
    fn an_account_whose_group_is_gid_0_is_refused() {
        let s = service("USER=operator", "/opt/lib/tcp_lmtp_server");
        let e = decide(&s, Some("mailsrv"), true, db).unwrap_err();
        assert!(matches!(e, AccountError::RootGroup { .. }), "{e:?}");
        assert!(e.to_string().contains("gid 0"), "{e}");
    }

    #[test]
    fn an_account_that_is_uid_0_is_refused_by_name_or_number() {
        for user in ["USER=root", "USER=0"] {
            let s = service(user, "/opt/lib/tcp_lmtp_server");
            assert!(matches!(
                decide(&s, Some("mailsrv"), true, db),
                Err(AccountError::Root {
                    named_by: NamedBy::User,
                    ..
                })
            ));
        }
        let s = service("", "/opt/lib/tcp_lmtp_server");
        assert!(matches!(
            decide(&s, Some("root"), true, db),
            Err(AccountError::Root {
                named_by: NamedBy::ImtaUser,
                ..
            })
        ));
    }

    #[test]
    fn user_wins_over_imta_user_and_a_missing_account_depends_on_the_host() {
        let s = service("USER=mailsrv", "/opt/lib/tcp_lmtp_server");
        assert_eq!(
            decide(&s, Some("nosuch"), true, db),
            Ok(Some(RunAs {
                uid: 70,
                gid: 12,
                keep_setuid: false
            }))
        );
        let s = service("", "/opt/lib/tcp_lmtp_server");
        let e = decide(&s, Some("nosuch"), true, db).unwrap_err();
        assert!(e.depends_on_host());
        assert!(!AccountError::NoAccount {
            service: "X".into()
        }
        .depends_on_host());
    }

    #[test]
    fn only_the_native_image_keeps_cap_setuid() {
        let native = service("", "/opt/lib/tcp_lmtpn_server");
        let run_as = decide(&native, Some("mailsrv"), true, db).unwrap();
        assert_eq!(run_as.map(|r| r.keep_setuid), Some(true));
        for other in [
            "/opt/lib/tcp_lmtp_server",
            "/opt/lib/tcp_lmtpn_server.sh",
            "/opt/tcp_lmtpn_server/echo",
        ] {
            let s = service("", other);
            let run_as = decide(&s, Some("mailsrv"), true, db).unwrap();
            assert_eq!(run_as.map(|r| r.keep_setuid), Some(false), "{other}");
        }
    }
}
