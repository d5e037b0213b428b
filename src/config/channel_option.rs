//! Channel option files: `IMTA_TABLE:<channel>_option`, the original's place for a channel's
//! tunables (`NAME=value` lines, read by the channel's server program when it starts).
//!
//! The syntax is the PMDF option-file syntax of [`super::option_file`]. An absent file means
//! "no options", as in the original. Which names mean what is decided by the programs that
//! read them (the LMTP images).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, Diagnostics};
use super::option_file::{self, Setting};
use super::source::read_text;

/// The settings of one channel option file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    pub path: PathBuf,
    /// Whether the file exists.
    pub exists: bool,
    pub settings: Vec<Setting>,
}

impl ChannelOptions {
    /// The last setting of `name` (compared case-blind).
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings
            .iter()
            .rev()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

/// Reads the option file at `path`; a file that does not exist gives no options.
pub fn load(path: &Path, diags: &mut Diagnostics) -> Result<ChannelOptions, ConfigError> {
    if !path.exists() {
        return Ok(ChannelOptions {
            path: path.to_path_buf(),
            exists: false,
            settings: Vec::new(),
        });
    }
    let text = read_text(path)?;
    let file: Arc<Path> = Arc::from(path);
    let settings = option_file::parse(&file, &text)?;
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
    fn last_setting_wins_with_a_warning() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("tcp_lmtpss_option");
        std::fs::write(&p, "! store\nSTORE_ROOT=/a\nstore_root=/b\n").expect("write");
        let mut diags = Diagnostics::default();
        let o = load(&p, &mut diags).expect("loads");
        assert_eq!(o.get("STORE_ROOT").map(|s| s.value.as_str()), Some("/b"));
        assert_eq!(diags.warnings.len(), 1);
    }
}
