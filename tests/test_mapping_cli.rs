//! `dispatcher --test-mapping` as an administrator uses it: one probe on the command line,
//! many on standard input, another mappings file, and the mistakes it must name.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const DISPATCHER: &str = env!("CARGO_BIN_EXE_dispatcher");

fn dispatcher(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let tailor = common::fixtures().join("seed/imta_tailor");
    let mut child = Command::new(DISPATCHER)
        .arg("--tailor")
        .arg(&tailor)
        .args(args)
        .env_remove("IMTA_TAILOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dispatcher");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait for dispatcher")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn seed_rejection_prints_exactly_the_four_documented_lines() {
    let o = dispatcher(
        &[
            "--test-mapping",
            "PORT_ACCESS",
            "TCP|127.0.0.1|225|127.0.0.9|4000",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "Input string:  TCP|127.0.0.1|225|127.0.0.9|4000\n\
         Output string: 500 Do not connect to this machine\n\
         Output flags:  [N]\n\
         Result:        reject \"500 Do not connect to this machine\"\n"
    );
}

#[test]
fn probes_on_standard_input_give_one_block_each() {
    let dir = common::fixtures().join("test_mapping");
    let probes = std::fs::read(dir.join("seed.probes")).expect("probes");
    let expected = std::fs::read_to_string(dir.join("seed.expected")).expect("expected");
    let o = dispatcher(&["--test-mapping", "port_access", "-"], Some(&probes));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), expected);
}

#[test]
fn no_match_in_another_table_of_another_file() {
    let file = common::fixtures().join("mappings_files/several_tables");
    let file = file.display().to_string();
    let o = dispatcher(
        &[
            "--mapping-file",
            &file,
            "--test-mapping",
            "SMS_TEXT",
            "nothing",
        ],
        None,
    );
    assert_eq!(stdout(&o), "Input string:  nothing\nNo match.\n");
    let o = dispatcher(
        &[
            "--mapping-file",
            &file,
            "--test-mapping",
            "PORT_ACCESS",
            "TCP|a|1|127.0.0.1|2",
        ],
        None,
    );
    assert!(
        stdout(&o).ends_with("Output flags:  [Y]\nResult:        accept\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn unknown_table_is_an_error() {
    let o = dispatcher(&["--test-mapping", "NO_SUCH", "x"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no table NO_SUCH"));
}
