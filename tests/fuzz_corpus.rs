//! Replays every committed fuzz input on the stable toolchain, so a crash the fuzzer once
//! found stays fixed: each file of `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` goes
//! through the same `msdispatcher::fuzzing` entry point the target calls (docs/fuzzing.md).

use std::path::{Path, PathBuf};

use msdispatcher::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The regular files directly in `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The names of the subdirectories of `dir`.
fn subdirectories(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.expect("read a directory entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target_file() {
    for (name, _) in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(
            !inputs(&corpus).is_empty(),
            "{}: missing or empty; the replay of target {name} would test nothing",
            corpus.display()
        );
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{}: missing", target.display());
    }
}

#[test]
fn every_corpus_and_fuzz_target_file_belongs_to_a_target() {
    let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    for kind in ["corpus", "artifacts"] {
        let dir = fuzz_dir().join(kind);
        if !dir.exists() {
            continue;
        }
        for name in subdirectories(&dir) {
            assert!(
                known.contains(&name.as_str()),
                "fuzz/{kind}/{name}: no such target in msdispatcher::fuzzing::TARGETS"
            );
        }
    }
    for file in inputs(&fuzz_dir().join("fuzz_targets")) {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        assert!(
            stem.as_deref().is_some_and(|s| known.contains(&s)),
            "{}: no such target in msdispatcher::fuzzing::TARGETS",
            file.display()
        );
    }
}

#[test]
fn every_corpus_input_and_crash_reproducer_runs_without_a_panic() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, entry) in TARGETS {
        for kind in ["corpus", "artifacts"] {
            for file in inputs(&fuzz_dir().join(kind).join(name)) {
                let data =
                    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                replayed += 1;
                if std::panic::catch_unwind(|| entry(&data)).is_err() {
                    failed.push(file.display().to_string());
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {replayed} fuzz inputs panic (the message of each is above):\n{}",
        failed.len(),
        failed.join("\n")
    );
}
