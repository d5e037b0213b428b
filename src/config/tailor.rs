//! The MTA tailor file (`imta_tailor`) and logical-name paths (`IMTA_BIN:tcp_lmtp_server`).
//!
//! The tailor file maps logical names to directory prefixes and file names. A file
//! specification `NAME:rest` anywhere in the configuration (IMAGE, LOGFILE, includes) resolves
//! to the tailor value of `NAME` followed by `rest`, by plain concatenation: the original
//! documents directory values as "prefixes, not paths" that must end in `/`.
//!
//! Finding the tailor file, first that applies:
//! 1. the `--tailor PATH` command-line option;
//! 2. the environment variable `IMTA_TAILOR`;
//! 3. `../config/imta_tailor` relative to the directory of the running binary (the installed
//!    layout `<root>/lib/dispatcher` beside `<root>/config/imta_tailor`), when anything is there (a
//!    file there that cannot be read is an error, not a reason to try the default);
//! 4. the original's default, [`DEFAULT_TAILOR`].
//!
//! Names the file leaves out get defaults derived from where the file is (see
//! [`Tailor::get`]); every default is documented in `docs/configuration.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, Diagnostics, ErrorKind, Loc};
use super::option_file::{self, Setting};
use super::source::{is_present, read_text, ResolvePath};

/// Where Sun Java System Messaging Server 6 keeps the tailor file.
pub const DEFAULT_TAILOR: &str = "/opt/SUNWmsgsr/config/imta_tailor";

/// Tailor options whose values are directory prefixes and must end in `/`.
const DIRECTORY_NAMES: &[&str] = &[
    "IMTA_ROOT",
    "IMTA_BIN",
    "IMTA_EXE",
    "IMTA_LIB",
    "IMTA_LOG",
    "IMTA_TABLE",
    "IMTA_QUEUE",
    "IMTA_COM",
    "IMTA_HELP",
    "IMTA_LANG",
];

/// Tailor option names the original documents (2005Q4 Administration Reference index), plus
/// `IMTA_BIN`, which every LMTP sample uses. Others are accepted with a warning.
pub const KNOWN_NAMES: &[&str] = &[
    "IMTA_ALIAS_DATABASE",
    "IMTA_ALIAS_FILE",
    "IMTA_BIN",
    "IMTA_CHARSET_DATA",
    "IMTA_CHARSET_OPTION_FILE",
    "IMTA_COM",
    "IMTA_CONFIG_DATA",
    "IMTA_CONFIG_FILE",
    "IMTA_CONVERSION_FILE",
    "IMTA_DISPATCHER_CONFIG",
    "IMTA_DNSRULES",
    "IMTA_DOMAIN_DATABASE",
    "IMTA_EXE",
    "IMTA_FORWARD_DATABASE",
    "IMTA_GENERAL_DATABASE",
    "IMTA_HELP",
    "IMTA_JBC_CONFIG_FILE",
    "IMTA_LANG",
    "IMTA_LIB",
    "IMTA_LIBUTIL",
    "IMTA_LOG",
    "IMTA_MAPPING_FILE",
    "IMTA_NAME_CONTENT_FILE",
    "IMTA_OPTION_FILE",
    "IMTA_QUEUE",
    "IMTA_RETURN_PERIOD",
    "IMTA_RETURN_SPLIT_PERIOD",
    "IMTA_REVERSE_DATABASE",
    "IMTA_ROOT",
    "IMTA_TABLE",
    "IMTA_USER",
    "IMTA_USER_PROFILE_DATABASE",
    "IMTA_USER_USERNAME",
    "IMTA_VERSION_LIMIT",
    "IMTA_WORLD_GROUP",
];

/// How the tailor file was found, for `--check` to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailorOrigin {
    CommandLine,
    Environment,
    BesideBinary,
    Default,
}

impl std::fmt::Display for TailorOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TailorOrigin::CommandLine => "--tailor",
            TailorOrigin::Environment => "environment variable IMTA_TAILOR",
            TailorOrigin::BesideBinary => "../config/imta_tailor beside the binary",
            TailorOrigin::Default => "built-in default",
        })
    }
}

/// Picks the tailor file by the rules in the module comment. `exe` is the running binary.
pub fn locate(
    command_line: Option<&Path>,
    environment: Option<&std::ffi::OsStr>,
    exe: Option<&Path>,
) -> (PathBuf, TailorOrigin) {
    if let Some(p) = command_line {
        return (p.to_path_buf(), TailorOrigin::CommandLine);
    }
    if let Some(p) = environment.filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), TailorOrigin::Environment);
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        let beside = dir.join("../config/imta_tailor");
        // Anything but "nothing there" is the installation's own tailor: one that cannot be
        // read then fails with its own error instead of giving way to the built-in default.
        if !matches!(is_present(&beside), Ok(false)) {
            return (beside, TailorOrigin::BesideBinary);
        }
    }
    (PathBuf::from(DEFAULT_TAILOR), TailorOrigin::Default)
}

/// A value of the tailor and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailorValue {
    /// Written in the tailor file at this place.
    File(String, Loc),
    /// Not in the file; derived as the text says.
    Default(String, &'static str),
}

impl TailorValue {
    pub fn value(&self) -> &str {
        match self {
            TailorValue::File(v, _) | TailorValue::Default(v, _) => v,
        }
    }
}

/// The parsed tailor file.
#[derive(Debug, Clone)]
pub struct Tailor {
    path: PathBuf,
    /// Upper-cased name → setting; the last setting of a name wins.
    entries: HashMap<String, Setting>,
}

impl Tailor {
    /// Reads and checks the tailor file at `path`.
    pub fn load(path: &Path, diags: &mut Diagnostics) -> Result<Tailor, ConfigError> {
        let text = read_text(path)?;
        // Defaults are derived from the file's directory, so it must not depend on the
        // current directory of whoever reads the paths later.
        let absolute = std::path::absolute(path).map_err(|e| ConfigError::read(path, e))?;
        Tailor::from_text(&absolute, &text, diags)
    }

    /// Parses tailor text as if it had been read from `path`.
    pub fn from_text(
        path: &Path,
        text: &str,
        diags: &mut Diagnostics,
    ) -> Result<Tailor, ConfigError> {
        let file: Arc<Path> = Arc::from(path);
        let mut entries: HashMap<String, Setting> = HashMap::new();
        for s in option_file::parse(&file, text)? {
            let key = s.name.to_ascii_uppercase();
            if !KNOWN_NAMES.contains(&key.as_str()) {
                diags.warn(
                    s.loc.clone(),
                    format!(
                        "{}: not a tailor option the original documents; kept",
                        s.name
                    ),
                );
            }
            if is_directory(&key) && !s.value.ends_with('/') {
                diags.warn(
                    s.value_loc.clone(),
                    format!(
                        "{}={}: directory values are prefixes and should end in `/`; \
                         read as {}/",
                        s.name, s.value, s.value
                    ),
                );
            }
            if let Some(old) = entries.get(&key) {
                diags.warn(
                    s.loc.clone(),
                    format!(
                        "{} is set again (first at line {}); the last one counts",
                        s.name, old.loc.line
                    ),
                );
            }
            entries.insert(key, s);
        }
        Ok(Tailor {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the tailor file, with a trailing `/`.
    fn config_dir(&self) -> String {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        with_slash(&dir.display().to_string())
    }

    /// The value of a tailor option, or the default we derive when the file leaves it out.
    ///
    /// Defaults: `IMTA_TABLE` = the tailor file's directory; `IMTA_ROOT` = its parent;
    /// `IMTA_BIN` = `IMTA_EXE`, else `IMTA_ROOT` + `lib/`; `IMTA_EXE` and `IMTA_LIB` likewise;
    /// `IMTA_LOG` = `IMTA_ROOT` + `log/`; `IMTA_DISPATCHER_CONFIG`, `IMTA_MAPPING_FILE`,
    /// `IMTA_CONFIG_FILE` = `IMTA_TABLE` + `dispatcher.cnf`, `mappings`, `imta.cnf`.
    pub fn get(&self, name: &str) -> Option<TailorValue> {
        let key = name.to_ascii_uppercase();
        if let Some(s) = self.entries.get(&key) {
            return Some(TailorValue::File(s.value.clone(), s.loc.clone()));
        }
        let derived = |v: String, why| Some(TailorValue::Default(v, why));
        let table = || self.value_or_default("IMTA_TABLE");
        let root = || self.value_or_default("IMTA_ROOT");
        match key.as_str() {
            "IMTA_TABLE" => derived(self.config_dir(), "the tailor file's directory"),
            "IMTA_ROOT" => derived(
                with_slash(&format!("{}..", self.config_dir())),
                "the parent of the tailor file's directory",
            ),
            "IMTA_BIN" => match self.entries.get("IMTA_EXE") {
                Some(exe) => derived(exe.value.clone(), "IMTA_EXE"),
                None => derived(format!("{}lib/", root()), "IMTA_ROOT + lib/"),
            },
            "IMTA_EXE" | "IMTA_LIB" => derived(format!("{}lib/", root()), "IMTA_ROOT + lib/"),
            "IMTA_LOG" => derived(format!("{}log/", root()), "IMTA_ROOT + log/"),
            "IMTA_DISPATCHER_CONFIG" => derived(
                format!("{}dispatcher.cnf", table()),
                "IMTA_TABLE + dispatcher.cnf",
            ),
            "IMTA_MAPPING_FILE" => derived(format!("{}mappings", table()), "IMTA_TABLE + mappings"),
            "IMTA_CONFIG_FILE" => derived(format!("{}imta.cnf", table()), "IMTA_TABLE + imta.cnf"),
            _ => None,
        }
    }

    fn value_or_default(&self, name: &str) -> String {
        self.get(name)
            .map(|v| v.value().to_string())
            .unwrap_or_default()
    }

    /// `IMTA_DISPATCHER_CONFIG`, resolved.
    pub fn dispatcher_config(&self) -> Result<PathBuf, ConfigError> {
        self.resolve_spec(&self.value_or_default("IMTA_DISPATCHER_CONFIG"), None)
    }

    /// `IMTA_MAPPING_FILE`, resolved.
    pub fn mapping_file(&self) -> Result<PathBuf, ConfigError> {
        self.resolve_spec(&self.value_or_default("IMTA_MAPPING_FILE"), None)
    }

    /// `IMTA_CONFIG_FILE`, resolved.
    pub fn config_file(&self) -> Result<PathBuf, ConfigError> {
        self.resolve_spec(&self.value_or_default("IMTA_CONFIG_FILE"), None)
    }

    /// `IMTA_LOG` as a directory.
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(self.value_or_default("IMTA_LOG"))
    }

    /// `IMTA_USER`, the account the workers run as, when the tailor names one.
    pub fn user(&self) -> Option<String> {
        self.get("IMTA_USER").map(|v| v.value().to_string())
    }

    /// The channel option file of `channel`: `IMTA_TABLE:<channel>_option`.
    pub fn channel_option_file(&self, channel: &str) -> PathBuf {
        PathBuf::from(format!(
            "{}{}_option",
            self.value_or_default("IMTA_TABLE"),
            channel
        ))
    }
}

impl ResolvePath for Tailor {
    /// `NAME:rest` → tailor value of NAME + rest; any other spec is a plain path.
    fn resolve_spec(&self, spec: &str, loc: Option<&Loc>) -> Result<PathBuf, ConfigError> {
        let Some((name, rest)) = split_logical(spec) else {
            return Ok(PathBuf::from(spec));
        };
        match self.get(name) {
            // A directory prefix written without its `/` (a warning at load) still names
            // the directory: nobody means /opt/libtcp_lmtp_server.
            Some(v) if is_directory(name) && !v.value().ends_with('/') => {
                Ok(PathBuf::from(format!("{}/{}", v.value(), rest)))
            }
            Some(v) => Ok(PathBuf::from(format!("{}{}", v.value(), rest))),
            None => Err(ConfigError {
                loc: loc.cloned(),
                kind: ErrorKind::UnknownLogicalName {
                    spec: spec.to_string(),
                    name: name.to_ascii_uppercase(),
                    tailor: self.path.display().to_string(),
                },
            }),
        }
    }
}

fn is_directory(name: &str) -> bool {
    DIRECTORY_NAMES.contains(&name.to_ascii_uppercase().as_str())
}

/// Splits `NAME:rest` when NAME is an identifier of two characters or more (a one-letter
/// prefix would be a drive letter, not a logical name).
pub fn split_logical(spec: &str) -> Option<(&str, &str)> {
    let (name, rest) = spec.split_once(':')?;
    let ident = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ident.then_some((name, rest))
}

fn with_slash(dir: &str) -> String {
    if dir.ends_with('/') {
        dir.to_string()
    } else {
        format!("{dir}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_TAILOR: &str = "! tailor\nIMTA_ROOT=/opt/SUNWmsgsr/\nIMTA_BIN=/opt/SUNWmsgsr/lib/\n\
        IMTA_LOG=/var/opt/SUNWmsgsr/log/\nIMTA_TABLE=/opt/SUNWmsgsr/config/\nIMTA_USER=mailsrv\n";

    fn tailor(text: &str) -> (Tailor, Diagnostics) {
        let mut d = Diagnostics::default();
        let t = Tailor::from_text(Path::new("/opt/SUNWmsgsr/config/imta_tailor"), text, &mut d)
            .expect("parses");
        (t, d)
    }

    #[test]
    fn logical_names_resolve_by_concatenation() {
        let (t, d) = tailor(SEED_TAILOR);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            t.resolve_spec("IMTA_BIN:tcp_lmtp_server", None)
                .expect("resolves"),
            PathBuf::from("/opt/SUNWmsgsr/lib/tcp_lmtp_server")
        );
        assert_eq!(
            t.resolve_spec("imta_log:x.log", None).expect("case-blind"),
            PathBuf::from("/var/opt/SUNWmsgsr/log/x.log")
        );
        assert_eq!(
            t.resolve_spec("/abs/path", None).expect("plain"),
            PathBuf::from("/abs/path")
        );
        assert_eq!(t.user().as_deref(), Some("mailsrv"));
    }

    #[test]
    fn unknown_logical_name_is_an_error_naming_it() {
        let (t, _) = tailor(SEED_TAILOR);
        let err = t.resolve_spec("IMTA_NOPE:x", None).expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("defines no IMTA_NOPE"), "{msg}");
    }

    #[test]
    fn absent_files_default_under_imta_table() {
        let (t, _) = tailor(SEED_TAILOR);
        assert_eq!(
            t.dispatcher_config().expect("path"),
            PathBuf::from("/opt/SUNWmsgsr/config/dispatcher.cnf")
        );
        assert_eq!(
            t.mapping_file().expect("path"),
            PathBuf::from("/opt/SUNWmsgsr/config/mappings")
        );
        assert_eq!(
            t.config_file().expect("path"),
            PathBuf::from("/opt/SUNWmsgsr/config/imta.cnf")
        );
        assert_eq!(
            t.channel_option_file("tcp_lmtpss"),
            PathBuf::from("/opt/SUNWmsgsr/config/tcp_lmtpss_option")
        );
    }

    #[test]
    fn empty_tailor_derives_everything_from_its_place() {
        let (t, _) = tailor("");
        assert_eq!(
            t.resolve_spec("IMTA_BIN:dispatcher", None)
                .expect("derived"),
            PathBuf::from("/opt/SUNWmsgsr/config/../lib/dispatcher")
        );
        assert_eq!(t.log_dir(), PathBuf::from("/opt/SUNWmsgsr/config/../log/"));
    }

    #[test]
    fn imta_bin_falls_back_to_imta_exe() {
        let (t, _) = tailor("IMTA_EXE=/x/bin/\n");
        assert_eq!(
            t.get("IMTA_BIN"),
            Some(TailorValue::Default("/x/bin/".into(), "IMTA_EXE"))
        );
    }

    #[test]
    fn directory_without_slash_warns_at_the_value() {
        let (_, d) = tailor("IMTA_LOG=/var/log\n");
        assert_eq!(d.warnings.len(), 1);
        let w = d.warnings[0].to_string();
        assert!(
            w.starts_with("/opt/SUNWmsgsr/config/imta_tailor:1:10: warning:"),
            "{w}"
        );
        assert!(w.contains("should end in `/`"), "{w}");
    }

    #[test]
    fn directory_without_slash_still_names_the_directory() {
        let (t, _) = tailor("IMTA_BIN=/opt/lib\n");
        assert_eq!(
            t.resolve_spec("IMTA_BIN:tcp_lmtp_server", None)
                .expect("resolves"),
            PathBuf::from("/opt/lib/tcp_lmtp_server")
        );
    }

    #[test]
    fn unknown_tailor_option_warns() {
        let (_, d) = tailor("IMTA_FOO=1\n");
        assert!(d.warnings[0].message.contains("IMTA_FOO"), "{d:?}");
    }

    #[test]
    fn drive_letters_and_plain_names_are_not_logical_names() {
        assert_eq!(split_logical("C:x"), None);
        assert_eq!(split_logical("a b:x"), None);
        assert_eq!(split_logical("IMTA_BIN:x"), Some(("IMTA_BIN", "x")));
    }

    #[test]
    fn location_order_command_line_environment_binary_default() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("lib")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("config")).expect("mkdir");
        std::fs::write(d.path().join("config/imta_tailor"), "").expect("write");
        let exe = d.path().join("lib/dispatcher");
        let env = std::ffi::OsStr::new("/env/tailor");
        let cli = Path::new("/cli/tailor");
        assert_eq!(
            locate(Some(cli), Some(env), Some(&exe)).1,
            TailorOrigin::CommandLine
        );
        assert_eq!(
            locate(None, Some(env), Some(&exe)).0,
            PathBuf::from("/env/tailor")
        );
        assert_eq!(locate(None, None, Some(&exe)).1, TailorOrigin::BesideBinary);
        let elsewhere = d.path().join("bin/dispatcher");
        assert_eq!(
            locate(None, None, Some(&elsewhere)),
            (PathBuf::from(DEFAULT_TAILOR), TailorOrigin::Default)
        );
    }
}
