//! Reading the installation's delivery log, `<root>/log/mail.log_current`, in the tests that
//! check it holds one whole line per delivery (tests/delivery_log.rs, tests/log_rotation.rs).

use std::path::Path;

/// One delivery line, as far as the tests look into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub pid: u32,
    pub id: String,
    pub to: String,
    pub code: u16,
}

/// Parses a line of the delivery log; `None` when it is not whole (`time program[pid]
/// LEVEL: delivery|refused conn=... result=NNN ...`), which a torn or interleaved line is not.
/// Refused lines parse with an empty `id`.
pub fn parse(line: &str) -> Option<Delivery> {
    let (time, rest) = line.split_once(' ')?;
    let t = time.as_bytes();
    let time_ok = t.len() == 20
        && t[4] == b'-'
        && t[10] == b'T'
        && t[19] == b'Z'
        && time.bytes().filter(u8::is_ascii_digit).count() == 14;
    if !time_ok {
        return None;
    }
    let (program, rest) = rest.split_once("] ")?;
    let (name, pid) = program.split_once('[')?;
    if !matches!(name, "tcp_lmtp_server" | "tcp_lmtpn_server") {
        return None;
    }
    let pid = pid.parse().ok()?;
    let (_level, rest) = rest.split_once(": ")?;
    let (kind, fields) = rest.split_once(' ')?;
    if kind != "delivery" && kind != "refused" {
        return None;
    }
    let field = |key: &str| {
        fields
            .split(' ')
            .find_map(|f| f.strip_prefix(key))
            .map(str::to_string)
    };
    field("conn=")?.parse::<u64>().ok()?;
    let to = field("to=<")?.strip_suffix('>')?.to_string();
    let (_, result) = fields.split_once(" result=")?;
    let code = result.get(..3)?.parse().ok()?;
    if kind == "delivery" {
        field("size=")?.parse::<u64>().ok()?;
    }
    Some(Delivery {
        pid,
        id: field("id=").unwrap_or_default(),
        to,
        code,
    })
}

/// The lines of `path` (empty when it is absent), each parsed; a line that does not parse
/// fails the test with the line.
pub fn read(path: &Path) -> Vec<Delivery> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| parse(l).unwrap_or_else(|| panic!("not a whole delivery line: {l:?}")))
        .collect()
}

/// The delivery log of the installation at `root`.
pub fn path(root: &Path) -> std::path::PathBuf {
    root.join("log/mail.log_current")
}
