//! Loading a whole installation: the tailor file, `dispatcher.cnf`, `mappings` (compiled for
//! the mapping engine), `imta.cnf` and the option file of every channel a service names, with
//! what only the files together can tell checked (does each service's `PARAMETER=CHANNEL=name`
//! name a channel `imta.cnf` defines? can the LMTP images run on it?).
//!
//! The dispatcher loads through here at start and on every reload; `dispatcher --check`
//! ([`crate::check`]) loads through here and reports. A file counts as absent only when
//! nothing is at its path (`ENOENT`); one that is there but cannot be read or parsed is an
//! error, so a broken `mappings` never means "no PORT_ACCESS".
//!
//! This module reads files; it opens no socket and starts nothing. Whether a PORT_ACCESS table
//! is in force is the mapping engine's to say ([`port_access::missing_table`]), so that the
//! warning about services open to anyone reads the same at start, on reload and in `--check`.

use std::path::{Path, PathBuf};

use super::channel_option::{self, ChannelOptions};
use super::dispatcher_cnf;
use super::error::{ConfigError, Diagnostics, ErrorKind};
use super::imta_cnf::{self, ImtaCnf};
use super::mappings::{self, MappingFile};
use super::service::{self, DispatcherConfig, Service};
use super::source;
use super::tailor::{Tailor, TailorOrigin};
use crate::mapping::port_access;
use crate::mapping::table::MappingSet;

/// Image names that are LMTP servers and so need a channel with the `lmtp` keyword.
const LMTP_IMAGES: &[&str] = &["tcp_lmtp_server", "tcp_lmtpn_server"];

/// Everything an installation's configuration says, read and checked.
#[derive(Debug)]
pub struct Installation {
    pub tailor: Tailor,
    pub tailor_origin: TailorOrigin,
    pub dispatcher_path: PathBuf,
    pub dispatcher: DispatcherConfig,
    pub mappings_path: PathBuf,
    /// `None` when nothing is at its path (every connection is then accepted, with a
    /// warning); a file that exists but cannot be read is an error, never `None`.
    pub mappings: Option<MappingFile>,
    /// The same tables, compiled for the mapping engine.
    pub mapping_set: Option<MappingSet>,
    pub imta_path: PathBuf,
    /// `None` when nothing is at its path; a file that cannot be read is an error.
    pub imta: Option<ImtaCnf>,
    /// The option file of each channel a service names, in service order.
    pub channel_options: Vec<(String, ChannelOptions)>,
}

/// Reads every file of the installation whose tailor file is `tailor_path`.
pub fn load(
    tailor_path: &Path,
    tailor_origin: TailorOrigin,
    diags: &mut Diagnostics,
) -> Result<Installation, ConfigError> {
    let tailor = Tailor::load(tailor_path, diags)?;
    let dispatcher_path = tailor.dispatcher_config()?;
    let cnf = dispatcher_cnf::load(&dispatcher_path, &tailor, diags)?;
    let mut dispatcher = service::build(&cnf, &tailor, diags)?;
    if let Some(value) = std::env::var_os(service::DEBUG_ENVIRONMENT) {
        dispatcher.apply_debug_environment(&value.to_string_lossy())?;
    }

    let mappings_path = tailor.mapping_file()?;
    // Absent only when nothing is there: a file that cannot be read or parsed is an error,
    // never "no table" (which would accept every connection).
    let mappings = if source::is_present(&mappings_path)? {
        Some(mappings::load(&mappings_path, &tailor, diags)?)
    } else {
        None
    };
    let mapping_set = match &mappings {
        Some(m) => Some(MappingSet::compile(m, diags)?),
        None => None,
    };
    warn_open_services(&dispatcher, &mappings_path, mapping_set.as_ref(), diags);

    let imta_path = tailor.config_file()?;
    let imta = if source::is_present(&imta_path)? {
        Some(imta_cnf::load(&imta_path, &tailor, diags)?)
    } else {
        None
    };
    let mut channel_options = Vec::new();
    for s in &dispatcher.services {
        if let Some(name) = s.channel() {
            check_channel(s, name, imta.as_ref(), &imta_path, diags)?;
            if !channel_options.iter().any(|(n, _)| n == name) {
                let options = channel_option::load(&tailor.channel_option_file(name), diags)?;
                channel_options.push((name.to_string(), options));
            }
        }
        check_image(s, diags);
    }
    Ok(Installation {
        tailor,
        tailor_origin,
        dispatcher_path,
        dispatcher,
        mappings_path,
        mappings,
        mapping_set,
        imta_path,
        imta,
        channel_options,
    })
}

/// Every service is named in a warning when no PORT_ACCESS table judges its connections: the
/// original allows that, but a store that anyone on the network can reach is worth saying so
/// at every start and in `--check` (where `--strict` makes it fail).
fn warn_open_services(
    dispatcher: &DispatcherConfig,
    mappings_path: &Path,
    set: Option<&MappingSet>,
    diags: &mut Diagnostics,
) {
    let Some(reason) = port_access::missing_table(mappings_path, set) else {
        return;
    };
    for s in &dispatcher.services {
        let ports: Vec<String> = s.ports.value.iter().map(u16::to_string).collect();
        diags.warn_nowhere(format!(
            "[SERVICE={}] (PORT={}) accepts every connection: {reason}",
            s.name,
            ports.join(",")
        ));
    }
}

/// A service's channel must exist in imta.cnf; the LMTP images also need its `lmtp` keyword.
fn check_channel(
    s: &Service,
    name: &str,
    imta: Option<&ImtaCnf>,
    imta_path: &Path,
    diags: &mut Diagnostics,
) -> Result<(), ConfigError> {
    let loc = match &s.parameter.source {
        service::Source::Section(l) | service::Source::Global(l) => l.clone(),
        _ => s.loc.clone(),
    };
    let Some(imta) = imta else {
        return Err(ConfigError::at(
            loc,
            ErrorKind::Other(format!(
                "PARAMETER=CHANNEL={name}: there is no imta.cnf at {} to define the channel; \
                 the workers of [SERVICE={}] could not start",
                imta_path.display(),
                s.name
            )),
        ));
    };
    let Some(channel) = imta.channel(name) else {
        return Err(ConfigError::at(
            loc,
            ErrorKind::Other(format!(
                "PARAMETER=CHANNEL={name}: {} defines no channel {name}; the workers of \
                 [SERVICE={}] could not start",
                imta_path.display(),
                s.name
            )),
        ));
    };
    if is_lmtp_image(&s.image.value) && !channel.is_lmtp() {
        return Err(ConfigError::at(
            loc,
            ErrorKind::Other(format!(
                "PARAMETER=CHANNEL={name}: channel {name} ({}) has no `lmtp` keyword, which \
                 the LMTP image {} requires",
                channel.loc,
                s.image.value.display()
            )),
        ));
    }
    for kw in channel.unknown_keywords() {
        diags.warn(
            kw.loc.clone(),
            format!(
                "channel {name}: keyword `{}` is not one the original documents (it would \
                 treat it as a UNIX group id); ignored",
                kw.name
            ),
        );
    }
    Ok(())
}

fn is_lmtp_image(image: &Path) -> bool {
    image
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| LMTP_IMAGES.contains(&n))
}

/// An IMAGE that is not an executable file here is worth a warning (the check may run on
/// another machine than the one that will run the dispatcher, so it is not an error).
fn check_image(s: &Service, diags: &mut Diagnostics) {
    use std::os::unix::fs::PermissionsExt;
    let path = &s.image.value;
    let problem = match std::fs::metadata(path) {
        Err(e) => Some(format!("cannot be read ({e})")),
        Ok(m) if !m.is_file() => Some("is not a file".to_string()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("is not executable".to_string()),
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        diags.warn_nowhere(format!(
            "[SERVICE={}]: IMAGE {} {problem}",
            s.name,
            path.display()
        ));
    }
}
