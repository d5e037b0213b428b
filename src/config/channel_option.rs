//! Channel option files: `IMTA_TABLE:<channel>_option` (for example `tcp_lmtpss_option`), the
//! original's place for a channel's tunables, read by the channel's server program when it
//! starts and never compiled into the configuration.
//!
//! The syntax is the PMDF option-file syntax of [`super::option_file`] (`NAME=value` lines,
//! `!` comments, blank lines). A file that does not exist means "no options", as in the
//! original, where most channels have none; a file that exists but cannot be read (a
//! directory, a link to nothing, a file below a directory it may not search) is an error. Names are compared case-blind and the last setting of a name counts, with a warning
//! for the earlier ones. Which names mean what is decided by the programs that read them (the
//! LMTP images); the path comes from [`super::tailor::Tailor::channel_option_file`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, Diagnostics};
use super::option_file::{self, Setting};
use super::source::{is_present, read_text};

/// The settings of one channel option file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    pub path: PathBuf,
    /// Whether the file exists (`dispatcher --check` says so).
    pub exists: bool,
    /// In file order, repeated names included.
    pub settings: Vec<Setting>,
}

impl ChannelOptions {
    /// The setting of `name` (compared case-blind); of several, the last.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings
            .iter()
            .rev()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

/// Reads the option file at `path`; a file that does not exist gives no options.
pub fn load(path: &Path, diags: &mut Diagnostics) -> Result<ChannelOptions, ConfigError> {
    if !is_present(path)? {
        return Ok(ChannelOptions {
            path: path.to_path_buf(),
            exists: false,
            settings: Vec::new(),
        });
    }
    let text = read_text(path)?;
    from_text(path, &text, diags)
}

/// Parses option-file text as if read from `path` (the file exists).
pub fn from_text(
    path: &Path,
    text: &str,
    diags: &mut Diagnostics,
) -> Result<ChannelOptions, ConfigError> {
    let file: Arc<Path> = Arc::from(path);
    let settings = option_file::parse(&file, text)?;
    for (i, s) in settings.iter().enumerate() {
        if let Some(first) = settings[..i]
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(&s.name))
        {
            diags.warn(
                s.loc.clone(),
                format!(
                    "{} is set again (first at line {}); the last one counts",
                    s.name, first.loc.line
                ),
            );
        }
    }
    Ok(ChannelOptions {
        path: path.to_path_buf(),
        exists: true,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_file_is_no_options() {
        let o = load(
            Path::new("/nonexistent/x_option"),
            &mut Diagnostics::default(),
        )
        .expect("absent is fine");
        assert!(!o.exists && o.settings.is_empty());
    }

    #[test]
    fn a_directory_in_its_place_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = load(d.path(), &mut Diagnostics::default()).expect_err("not a file");
        assert!(err.to_string().starts_with("cannot read"), "{err}");
    }

    #[test]
    fn last_setting_wins_with_a_warning() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("tcp_lmtpss_option");
        std::fs::write(&p, "! store\nSTORE_ROOT=/a\nstore_root=/b\n").expect("write");
        let mut diags = Diagnostics::default();
        let o = load(&p, &mut diags).expect("loads");
        assert_eq!(o.get("STORE_ROOT").map(|s| s.value.as_str()), Some("/b"));
        assert_eq!(diags.warnings.len(), 1);
        assert!(
            diags.warnings[0]
                .to_string()
                .ends_with("tcp_lmtpss_option:3:1: warning: store_root is set again (first at line 2); the last one counts"),
            "{:?}",
            diags.warnings
        );
    }

    #[test]
    fn a_line_that_is_no_setting_is_an_error_at_its_place() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x_option");
        std::fs::write(&p, "A=1\nB 2\n").expect("write");
        let err = load(&p, &mut Diagnostics::default()).expect_err("bad line");
        assert!(
            err.to_string().contains("x_option:2:3: expected `=`"),
            "{err}"
        );
    }
}
