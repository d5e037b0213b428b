//! Reading configuration files from disk and splicing `<file` includes.
//!
//! `dispatcher.cnf`, `mappings` and `imta.cnf` all include other files with a line
//! `<file-spec`, whose contents stand in for that line (PMDF and Sun document nesting up to three
//! levels). Each file is parsed on its own by its grammar into a list of [`Line`]s; this module
//! follows the `Include` lines, parses the included files with the same function and returns
//! one flat list of items in file order, each item still carrying the place it came from.
//! Structure that spans lines (tables, channel blocks, sections) is built afterwards on that
//! flat list, so an included file behaves exactly as if it had been pasted in.
//!
//! Include names may use logical names (`IMTA_TABLE:site.cnf`), resolved by the caller's
//! [`ResolvePath`] (the tailor); a relative name is taken relative to the including file's
//! directory. An include loop or nesting deeper than [`MAX_INCLUDE_DEPTH`] is an error naming
//! the chain of files.

use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, Diagnostics, ErrorKind, Loc};

/// Levels of nested includes the original allows ("up to three levels").
pub const MAX_INCLUDE_DEPTH: usize = 3;

/// One line of a file as its grammar saw it: either something for the caller, or an include.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<T> {
    Item(T),
    Include { spec: String, loc: Loc },
}

/// Turns a file specification as written in a configuration file into a path.
pub trait ResolvePath {
    /// `spec` as written (`IMTA_TABLE:x.cnf`, `/etc/x`, `x`); `loc` is where it was written, for
    /// the error message.
    fn resolve_spec(&self, spec: &str, loc: Option<&Loc>) -> Result<PathBuf, ConfigError>;
}

/// A resolver that knows no logical names: every spec is a plain path.
pub struct PlainPaths;

impl ResolvePath for PlainPaths {
    fn resolve_spec(&self, spec: &str, _loc: Option<&Loc>) -> Result<PathBuf, ConfigError> {
        Ok(PathBuf::from(spec))
    }
}

/// Parses one file's text into lines. Given the file's name (for locations) and its text.
pub type ParseFn<'p, T> =
    dyn Fn(&Arc<Path>, &str, &mut Diagnostics) -> Result<Vec<Line<T>>, ConfigError> + 'p;

/// Whether anything is at `path`. `false` only when nothing at all is there (`ENOENT`): a file
/// that exists but cannot be examined (`EACCES` on a directory above it, `ENOTDIR`) is an
/// error, and so is a symbolic link to nothing, so that a file an administrator meant to be
/// read is never mistaken for one that is deliberately absent. (`Path::exists()` calls all of
/// these "absent".)
pub fn is_present(path: &Path) -> Result<bool, ConfigError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ConfigError::read(path, e)),
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let target = std::fs::read_link(path)
                    .map_or_else(|_| "?".to_string(), |t| t.display().to_string());
                Err(ConfigError::read(
                    path,
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("it is a symbolic link to {target}, which does not exist"),
                    ),
                ))
            }
            Err(e) => Err(ConfigError::read(path, e)),
            Ok(_) => Ok(true),
        },
        Ok(_) => Ok(true),
    }
}

/// The bytes of the regular file at `path` (a symbolic link to one is followed: installations
/// link configuration files). Anything else is an error and is never read: a FIFO would block
/// the reader (a reloading dispatcher would stop serving), a device would never end, a
/// directory is no configuration.
fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it means nothing for a file.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a whole regular file as UTF-8 text; invalid bytes are an error naming line and
/// column.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let bytes = read_regular(path).map_err(|e| ConfigError::read(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Only the valid prefix is decoded, so the count is exact up to the bad byte.
        let text = String::from_utf8_lossy(good);
        let line = text.matches('\n').count() + 1;
        let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let file: Arc<Path> = Arc::from(path);
        ConfigError::other(
            Loc::new(&file, line, col),
            "the file is not text (a byte that is not ASCII or UTF-8); \
             configuration files must be plain text",
        )
    })
}

/// Parses text that is not read from a file (tests, `--test-mapping` on a string): the
/// items of its lines; an include line is an error, there being no file to be relative to.
pub fn items_without_includes<T>(
    file: &Arc<Path>,
    text: &str,
    diags: &mut Diagnostics,
    parse: &ParseFn<'_, T>,
) -> Result<Vec<T>, ConfigError> {
    parse(file, text, diags)?
        .into_iter()
        .map(|line| match line {
            Line::Item(item) => Ok(item),
            Line::Include { loc, .. } => Err(ConfigError::other(
                loc,
                "includes are not read from a string",
            )),
        })
        .collect()
}

/// Reads `path`, parses it with `parse`, and splices every include, recursively.
pub fn load<T>(
    path: &Path,
    resolver: &dyn ResolvePath,
    diags: &mut Diagnostics,
    parse: &ParseFn<'_, T>,
) -> Result<Vec<T>, ConfigError> {
    let mut out = Vec::new();
    let mut chain = Vec::new();
    load_into(path, None, resolver, diags, parse, &mut chain, &mut out)?;
    Ok(out)
}

fn load_into<T>(
    path: &Path,
    included_at: Option<&Loc>,
    resolver: &dyn ResolvePath,
    diags: &mut Diagnostics,
    parse: &ParseFn<'_, T>,
    chain: &mut Vec<PathBuf>,
    out: &mut Vec<T>,
) -> Result<(), ConfigError> {
    let with_place = |e: ConfigError| match (e.loc.is_none(), included_at) {
        (true, Some(loc)) => ConfigError {
            loc: Some(loc.clone()),
            kind: e.kind,
        },
        _ => e,
    };
    // Compare canonical names, so that `a/../b` and a symlink cannot hide a loop.
    let canonical =
        std::fs::canonicalize(path).map_err(|e| with_place(ConfigError::read(path, e)))?;
    if let Some(first) = chain.iter().position(|p| *p == canonical) {
        let mut names: Vec<String> = chain[first..]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        names.push(canonical.display().to_string());
        return Err(with_place(ConfigError::nowhere(ErrorKind::IncludeLoop {
            chain: names.join(" -> "),
        })));
    }
    if chain.len() > MAX_INCLUDE_DEPTH {
        return Err(with_place(ConfigError::nowhere(
            ErrorKind::IncludeTooDeep {
                limit: MAX_INCLUDE_DEPTH,
                path: path.display().to_string(),
            },
        )));
    }
    let text = read_text(path).map_err(with_place)?;
    let file: Arc<Path> = Arc::from(path);
    let lines = parse(&file, &text, diags)?;
    chain.push(canonical);
    for line in lines {
        match line {
            Line::Item(item) => out.push(item),
            Line::Include { spec, loc } => {
                let target = resolver.resolve_spec(&spec, Some(&loc))?;
                let target = if target.is_relative() {
                    path.parent().unwrap_or(Path::new(".")).join(target)
                } else {
                    target
                };
                load_into(&target, Some(&loc), resolver, diags, parse, chain, out)?;
            }
        }
    }
    chain.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy line format: `<x` includes x, anything else is an item.
    fn parse_toy(
        file: &Arc<Path>,
        text: &str,
        _d: &mut Diagnostics,
    ) -> Result<Vec<Line<String>>, ConfigError> {
        Ok(text
            .lines()
            .enumerate()
            .map(|(i, l)| match l.strip_prefix('<') {
                Some(spec) => Line::Include {
                    spec: spec.to_string(),
                    loc: Loc::new(file, i + 1, 1),
                },
                None => Line::Item(l.to_string()),
            })
            .collect())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }

    #[test]
    fn include_is_spliced_in_place() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "inc", "b\nc\n");
        let main = write(d.path(), "main", "a\n<inc\nd\n");
        let got = load(&main, &PlainPaths, &mut Diagnostics::default(), &parse_toy).expect("loads");
        assert_eq!(got, ["a", "b", "c", "d"]);
    }

    #[test]
    fn include_loop_is_an_error_naming_the_chain() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "a", "x\n<b\n");
        write(d.path(), "b", "<a\n");
        let main = d.path().join("a");
        let err =
            load(&main, &PlainPaths, &mut Diagnostics::default(), &parse_toy).expect_err("loop");
        let msg = err.to_string();
        assert!(msg.contains("include loop"), "{msg}");
        assert!(msg.contains("/b:1:1"), "names the include line: {msg}");
        assert!(
            msg.ends_with("/a"),
            "chain ends with the repeated file: {msg}"
        );
    }

    #[test]
    fn three_levels_are_allowed_four_are_not() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "l3", "deep\n");
        write(d.path(), "l2", "<l3\n");
        write(d.path(), "l1", "<l2\n");
        let ok = write(d.path(), "l0", "<l1\n");
        let got = load(&ok, &PlainPaths, &mut Diagnostics::default(), &parse_toy);
        assert_eq!(got.expect("three levels"), ["deep"]);
        let too_deep = write(d.path(), "top", "<l0\n");
        let err = load(
            &too_deep,
            &PlainPaths,
            &mut Diagnostics::default(),
            &parse_toy,
        )
        .expect_err("four levels");
        assert!(err.to_string().contains("nested deeper than 3"), "{err}");
    }

    #[test]
    fn missing_include_names_the_include_line() {
        let d = tempfile::tempdir().expect("tempdir");
        let main = write(d.path(), "main", "a\n<nothere\n");
        let err =
            load(&main, &PlainPaths, &mut Diagnostics::default(), &parse_toy).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("main:2:1: cannot read"), "{msg}");
        assert!(msg.contains("nothere"), "{msg}");
    }

    #[test]
    fn only_enoent_is_absence() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(!is_present(&d.path().join("none")).expect("absent"));
        let file = write(d.path(), "file", "x\n");
        assert!(is_present(&file).expect("present"));
        let err = is_present(&file.join("below")).expect_err("ENOTDIR is not absence");
        assert!(err.to_string().starts_with("cannot read"), "{err}");
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("gone"), &dangling).expect("symlink");
        let err = is_present(&dangling).expect_err("a link to nothing is not absence");
        assert!(
            err.to_string().contains("is a symbolic link to") && err.to_string().contains("gone"),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_being_read() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        // Would block forever if the FIFO were read.
        let err = read_text(&fifo).expect_err("not a file");
        assert!(
            err.to_string()
                .ends_with("it is a FIFO, not a regular file"),
            "{err}"
        );
        let err = read_text(d.path()).expect_err("not a file");
        assert!(
            err.to_string()
                .ends_with("it is a directory, not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_text_names_line_and_column() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("bin");
        std::fs::write(&p, b"ok\nab\xffc\n").expect("write");
        let err = read_text(&p).expect_err("not text");
        assert!(err.to_string().contains("bin:2:3:"), "{err}");
    }
}
