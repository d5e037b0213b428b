//! `make install` / `make uninstall` (scripts/install-in-place.sh) against a fake legacy
//! installation: the seed's configuration under DESTDIR/opt/SUNWmsgsr with a tailor pointing
//! there, stand-in old programs with their own contents, mode 0750 and owner `mailsrv`, and an
//! old manual page. Every file, mode and owner is checked after install, after a second
//! install, and after uninstall, which must leave the tree exactly as it was.
//!
//! The script is called with BINDIR = the directory of the programs cargo built for these
//! tests, so that no cargo build runs inside `cargo test` (`make install` builds, then calls
//! the same script); `make uninstall` builds nothing and is called through make.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{pid_alive, ChildGuard};

const PROGRAMS: [&str; 3] = ["dispatcher", "tcp_lmtp_server", "tcp_lmtpn_server"];
const IMTA_BIN: &str = "/opt/SUNWmsgsr/lib";
const OLD_MODE: u32 = 0o750;
const OLD_PAGE: &str = "old dispatcher(8) of the legacy installation\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn built_programs() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dispatcher"))
        .parent()
        .expect("the dispatcher program has a directory")
        .to_path_buf()
}

/// uid and gid of `mailsrv` (the seed's IMTA_USER, created by scripts/install-test-deps.sh).
fn mailsrv() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "mailsrv"])
        .output()
        .expect("run id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse();
    let out = Command::new("id")
        .args(["-g", "mailsrv"])
        .output()
        .expect("run id");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse();
    match (uid, gid) {
        (Ok(u), Ok(g)) => (u, g),
        _ => panic!("account mailsrv is missing: run scripts/install-test-deps.sh as root"),
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0
}

/// The fake installation: DESTDIR is the temp dir, the installation is DESTDIR/opt/SUNWmsgsr.
struct Legacy {
    dir: tempfile::TempDir,
}

impl Legacy {
    fn new() -> Legacy {
        assert!(
            is_root(),
            "these tests give files to mailsrv and root: run them as root"
        );
        let (uid, gid) = mailsrv();
        let dir = tempfile::tempdir().expect("temp dir");
        let legacy = Legacy { dir };
        let root = legacy.root();
        for sub in ["lib", "config", "log", "store"] {
            fs::create_dir_all(root.join(sub)).expect("make the installation's directories");
        }
        let seed = common::fixtures().join("seed");
        for f in ["dispatcher.cnf", "mappings", "imta.cnf"] {
            fs::copy(seed.join(f), root.join("config").join(f)).expect("copy the seed");
        }
        let template = fs::read_to_string(
            common::fixtures()
                .join("demo")
                .join("config")
                .join("imta_tailor.in"),
        )
        .expect("read imta_tailor.in");
        let tailor = template
            .replace("@ROOT@", &root.display().to_string())
            .replace("@USER@", "mailsrv");
        fs::write(root.join("config").join("imta_tailor"), tailor).expect("write the tailor");
        for p in PROGRAMS {
            let path = root.join("lib").join(p);
            fs::write(&path, old_program(p)).expect("write a stand-in program");
            fs::set_permissions(&path, fs::Permissions::from_mode(OLD_MODE)).expect("chmod");
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
        let man8 = legacy.mandir().join("man8");
        fs::create_dir_all(&man8).expect("make man8");
        fs::write(man8.join("dispatcher.8"), OLD_PAGE).expect("write the old page");
        legacy
    }

    fn destdir(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.destdir().join("opt/SUNWmsgsr")
    }

    fn lib(&self, name: &str) -> PathBuf {
        self.root().join("lib").join(name)
    }

    fn mandir(&self) -> PathBuf {
        self.destdir().join("usr/share/man")
    }

    fn script(&self, action: &str) -> Output {
        Command::new(repo().join("scripts/install-in-place.sh"))
            .arg(action)
            .env("IMTA_BIN", IMTA_BIN)
            .env("DESTDIR", self.destdir())
            .env("MANDIR", "/usr/share/man")
            .env("BINDIR", built_programs())
            .env_remove("IMTA_TAILOR")
            .env_remove("TAILOR")
            .output()
            .expect("run scripts/install-in-place.sh")
    }

    fn install(&self) -> String {
        let out = self.script("install");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "install failed:\n{text}");
        text
    }

    fn make_uninstall(&self) -> String {
        let out = Command::new("make")
            .arg("-C")
            .arg(repo())
            .arg("--no-print-directory")
            .arg("uninstall")
            .arg(format!("IMTA_BIN={IMTA_BIN}"))
            .arg(format!("DESTDIR={}", self.destdir().display()))
            .env_remove("IMTA_TAILOR")
            .output()
            .expect("run make uninstall");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "make uninstall failed:\n{text}");
        text
    }

    /// Every path under DESTDIR with its kind, mode, owner and contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)>) {
            for entry in fs::read_dir(dir).expect("read a directory of the installation") {
                let path = entry.expect("directory entry").path();
                let meta = fs::symlink_metadata(&path).expect("stat");
                let contents = if meta.is_file() {
                    fs::read(&path).expect("read")
                } else {
                    Vec::new()
                };
                let rel = path
                    .strip_prefix(base)
                    .expect("under DESTDIR")
                    .to_path_buf();
                out.insert(rel, (meta.mode(), meta.uid(), meta.gid(), contents));
                if meta.is_dir() {
                    walk(&path, base, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.destdir(), self.destdir(), &mut out);
        out
    }
}

fn old_program(name: &str) -> String {
    format!("#!/bin/sh\n# stand-in for the legacy {name}\necho legacy {name}\n")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn install_replaces_each_program_keeping_the_old_one_as_orig_with_its_mode_and_owner() {
    let legacy = Legacy::new();
    let ids = mailsrv();
    legacy.install();
    for p in PROGRAMS {
        let new = legacy.lib(p);
        assert_eq!(
            read(&new),
            read(&built_programs().join(p)),
            "{p} is not the new program"
        );
        assert_eq!(mode(&new), OLD_MODE, "{p} lost the old file's mode");
        assert_eq!(owner(&new), ids, "{p} lost the old file's owner");
        let orig = legacy.lib(&format!("{p}.orig"));
        assert_eq!(read(&orig), old_program(p).into_bytes(), "{p}.orig");
        assert_eq!(mode(&orig), OLD_MODE, "{p}.orig mode");
        assert_eq!(owner(&orig), ids, "{p}.orig owner");
    }
}

#[test]
fn install_puts_the_manual_pages_under_mandir_keeping_a_replaced_page() {
    let legacy = Legacy::new();
    legacy.install();
    let man = legacy.mandir();
    for page in [
        "man8/dispatcher.8",
        "man8/tcp_lmtp_server.8",
        "man8/tcp_lmtpn_server.8",
        "man5/dispatcher.cnf.5",
    ] {
        let name = Path::new(page).file_name().expect("a page has a name");
        assert_eq!(
            read(&man.join(page)),
            read(&repo().join("man").join(name)),
            "{page}"
        );
    }
    let new_page = man.join("man5/dispatcher.cnf.5");
    assert_eq!(mode(&new_page), 0o644, "a new page is 0644");
    assert_eq!(owner(&new_page), (0, 0), "a new page is root's");
    assert_eq!(
        read(&man.join("man8/dispatcher.8.orig")),
        OLD_PAGE.as_bytes(),
        "the replaced page is kept"
    );
}

#[test]
fn install_prints_what_the_installed_dispatcher_check_found() {
    let legacy = Legacy::new();
    let text = legacy.install();
    assert!(
        text.contains("dispatcher --check: exit status 0: configuration is usable"),
        "the check's result is not printed:\n{text}"
    );
}

#[test]
fn install_reports_a_configuration_the_new_dispatcher_cannot_use() {
    let legacy = Legacy::new();
    let cnf = legacy.root().join("config/dispatcher.cnf");
    let mut text = fs::read_to_string(&cnf).expect("read dispatcher.cnf");
    text.push_str("MAX_CONNS=abc\n");
    fs::write(&cnf, text).expect("break dispatcher.cnf");
    let out = legacy.install();
    assert!(
        out.contains("dispatcher --check: exit status 1"),
        "a failed check is not reported:\n{out}"
    );
    assert!(
        out.contains("MAX_CONNS=abc") && out.contains("make uninstall"),
        "the report names neither the error nor the way back:\n{out}"
    );
}

#[test]
fn a_second_install_keeps_the_first_orig() {
    let legacy = Legacy::new();
    legacy.install();
    legacy.install();
    for p in PROGRAMS {
        assert_eq!(
            read(&legacy.lib(&format!("{p}.orig"))),
            old_program(p).into_bytes(),
            "{p}.orig no longer holds the legacy program after a second install"
        );
        assert_eq!(
            mode(&legacy.lib(p)),
            OLD_MODE,
            "{p} mode after a second install"
        );
    }
    let man = legacy.mandir();
    assert_eq!(
        read(&man.join("man8/dispatcher.8.orig")),
        OLD_PAGE.as_bytes()
    );
    assert!(
        !man.join("man5/dispatcher.cnf.5.orig").exists(),
        "a page that was new the first time must not get an .orig of ours"
    );
}

#[test]
fn uninstall_puts_the_installation_back_exactly_as_it_was() {
    let legacy = Legacy::new();
    let before = legacy.snapshot();
    legacy.install();
    legacy.install();
    let text = legacy.make_uninstall();
    let after = legacy.snapshot();
    let changed: Vec<_> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p.display().to_string())
        .chain(
            after
                .keys()
                .filter(|p| !before.contains_key(*p))
                .map(|p| format!("{} (left behind)", p.display())),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "uninstall left differences: {changed:?}\n{text}"
    );
}

#[test]
fn uninstall_of_an_installation_never_installed_into_removes_nothing() {
    let legacy = Legacy::new();
    let before = legacy.snapshot();
    legacy.make_uninstall();
    assert_eq!(legacy.snapshot(), before, "uninstall removed legacy files");
}

#[test]
fn install_replaces_a_running_program_without_writing_into_it() {
    let legacy = Legacy::new();
    // A real executable running from the installed name: writing into it in place fails
    // (ETXTBSY) or corrupts it; a rename over the name leaves the running one alone.
    let target = legacy.lib("tcp_lmtp_server");
    fs::copy("/bin/sleep", &target).expect("copy sleep as the old program");
    let old = read(&target);
    let inode = fs::metadata(&target).expect("stat").ino();
    let child = Command::new(&target).arg("30").spawn().expect("start it");
    let child = ChildGuard(child);
    legacy.install();
    assert!(
        pid_alive(child.pid() as i32),
        "the running old program died during the install"
    );
    let orig = legacy.lib("tcp_lmtp_server.orig");
    assert_eq!(read(&orig), old, ".orig is not the running program");
    assert_eq!(
        fs::metadata(&orig).expect("stat").ino(),
        inode,
        ".orig is not the very file that runs"
    );
    assert_ne!(
        fs::metadata(&target).expect("stat").ino(),
        inode,
        "the new program was written into the old file"
    );
}

#[test]
fn install_refuses_when_imta_bin_is_not_a_directory() {
    let legacy = Legacy::new();
    fs::remove_dir_all(legacy.root().join("lib")).expect("remove lib");
    let before = legacy.snapshot();
    let out = legacy.script("install");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "install succeeded without IMTA_BIN");
    assert!(
        err.contains("is not a directory") && err.contains("nothing was changed"),
        "unclear refusal: {err}"
    );
    assert_eq!(legacy.snapshot(), before, "a refused install changed files");
}

#[test]
fn install_refuses_a_symbolic_link_at_a_program_name_and_changes_nothing() {
    let legacy = Legacy::new();
    let target = legacy.lib("tcp_lmtpn_server");
    fs::remove_file(&target).expect("remove the stand-in");
    std::os::unix::fs::symlink("/bin/true", &target).expect("link");
    let before = legacy.snapshot();
    let out = legacy.script("install");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "install went through a symbolic link"
    );
    assert!(
        err.contains("tcp_lmtpn_server is not a regular file"),
        "unclear refusal: {err}"
    );
    assert_eq!(legacy.snapshot(), before, "a refused install changed files");
}
