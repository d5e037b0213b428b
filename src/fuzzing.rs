//! Entry points for the fuzz targets (`fuzz/`, `make fuzz`) and for replaying their corpora
//! on the stable toolchain (`tests/fuzz_corpus.rs`, part of `make test`).
//!
//! Each function takes arbitrary bytes, feeds them to the real reader or parser the programs
//! use on untrusted or administrator-written input, and checks what must hold whatever the
//! input: it must not panic, and where a guarantee is cheap to state it is asserted, so a
//! violation is a crash the fuzzer reports. A target is one line in `fuzz/fuzz_targets/` that
//! calls the function of the same name; [`TARGETS`] lists them all for the replay test.
//!
//! What the bytes mean, per entry:
//!
//! * [`tailor`], [`dispatcher_cnf`], [`mappings`], [`imta_cnf`], [`channel_option`]: the text
//!   of that file (bytes that are not UTF-8 are replaced, as the file readers refuse them before
//!   any grammar sees them). Files that can include others are parsed with their text-level
//!   entry, where an include line is an error: fuzzing never reads a file it names.
//! * [`mapping_pattern`]: a pattern, a newline, then the subject to match against it.
//! * [`mapping_template`]: a template, then one captured string per following line.
//! * [`mapping_engine`]: a mappings file, then after a NUL byte one probe per line, each run
//!   through every table and through the PORT_ACCESS decision.
//! * [`lmtp_command`], [`lmtp_address`]: one command line / one `RCPT TO:` path.
//! * [`lmtp_input`]: three control bytes (line-end mode and command-line limit; read size;
//!   message size limit), then the client's bytes, read as a session reads them: line by
//!   line, message data after each `DATA` line; a byte 0xFE stands for 70,000 bytes of text
//!   (a line longer than the read buffer). Everything read is checked against a plain
//!   reference reading of the same bytes.
//! * [`worker_message`]: one control-socket packet, decoded as the dispatcher decodes what a
//!   worker sends (and as a worker decodes what the dispatcher sends).
//!
//! This module decides nothing for the programs and holds no state between calls.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::config::error::{ConfigError, Diagnostics};
use crate::config::imta_cnf::{self, Channel};
use crate::config::source::ResolvePath;
use crate::config::tailor::Tailor;
use crate::config::{channel_option, dispatcher_cnf, service};
use crate::handoff::wire::{self, ToDispatcher, ToWorker};
use crate::lmtp::address::{Recipient, MAX_NAME};
use crate::lmtp::command::{self, Command};
use crate::lmtp::input::{Line, Terminators, Wire, WireError};
use crate::lmtp::reply::Reply;
use crate::lmtp::settings::{self, ImageKind};
use crate::mapping::pattern::Pattern;
use crate::mapping::port_access;
use crate::mapping::table::{InputFlags, MappingSet, Notes, OUTPUT_LIMIT};
use crate::mapping::template::{Environment, Expansion, Template, Unsupported};

/// A fuzz entry point: any bytes in, a panic when a guarantee does not hold.
pub type Entry = fn(&[u8]);

/// Every entry point by target name: the names of `fuzz/fuzz_targets/*.rs` and of the corpus
/// directories `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("tailor", tailor),
    ("dispatcher_cnf", dispatcher_cnf),
    ("mappings", mappings),
    ("imta_cnf", imta_cnf),
    ("channel_option", channel_option),
    ("mapping_pattern", mapping_pattern),
    ("mapping_template", mapping_template),
    ("mapping_engine", mapping_engine),
    ("lmtp_command", lmtp_command),
    ("lmtp_address", lmtp_address),
    ("lmtp_input", lmtp_input),
    ("worker_message", worker_message),
];

/// Where the fuzzed files pretend to live; nothing is read there.
const CONFIG_DIR: &str = "/fuzz/config";

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn file_name(name: &str) -> Arc<Path> {
    Arc::from(Path::new(CONFIG_DIR).join(name))
}

/// Renders an error and every warning, as `--check` would: the messages compute places and
/// quote text, which must hold for any input.
fn render(result: Result<(), ConfigError>, diags: &Diagnostics) {
    if let Err(e) = result {
        let _ = e.to_string();
    }
    for w in &diags.warnings {
        let _ = w.to_string();
    }
}

/// The tailor the other targets resolve logical names (`IMTA_TABLE:x`) with.
fn fixed_tailor() -> &'static Tailor {
    static TAILOR: OnceLock<Tailor> = OnceLock::new();
    TAILOR.get_or_init(|| {
        let path = Path::new(CONFIG_DIR).join("imta_tailor");
        let mut diags = Diagnostics::default();
        match Tailor::from_text(&path, "IMTA_ROOT=/fuzz/\n", &mut diags) {
            Ok(t) => t,
            Err(e) => panic!("the fuzzing module's own tailor text does not parse: {e}"),
        }
    })
}

/// `imta_tailor` text; then every path the programs derive from it.
pub fn tailor(data: &[u8]) {
    let path = Path::new(CONFIG_DIR).join("imta_tailor");
    let mut diags = Diagnostics::default();
    let result = Tailor::from_text(&path, &text(data), &mut diags).map(|t| {
        for e in [t.dispatcher_config(), t.mapping_file(), t.config_file()] {
            if let Err(e) = e {
                let _ = e.to_string();
            }
        }
        let _ = (t.log_dir(), t.user(), t.channel_option_file("tcp_lmtpss"));
        for spec in [
            "IMTA_TABLE:x",
            "IMTA_BIN:tcp_lmtp_server",
            "NOT_SET:x",
            "/abs",
        ] {
            if let Err(e) = t.resolve_spec(spec, None) {
                let _ = e.to_string();
            }
        }
    });
    render(result, &diags);
}

/// `dispatcher.cnf` text, then the checked per-service model with defaults applied.
pub fn dispatcher_cnf(data: &[u8]) {
    let mut diags = Diagnostics::default();
    let file = file_name("dispatcher.cnf");
    let result = dispatcher_cnf::parse_str(&file, &text(data), &mut diags)
        .and_then(|cnf| service::build(&cnf, fixed_tailor(), &mut diags).map(drop));
    render(result, &diags);
}

/// `mappings` text, then every table compiled.
pub fn mappings(data: &[u8]) {
    let mut diags = Diagnostics::default();
    let file = file_name("mappings");
    let result = crate::config::mappings::parse_str(&file, &text(data), &mut diags)
        .and_then(|m| MappingSet::compile(&m, &mut diags).map(drop));
    render(result, &diags);
}

/// `imta.cnf` text; then each LMTP channel's settings, as an image derives them at start.
pub fn imta_cnf(data: &[u8]) {
    let mut diags = Diagnostics::default();
    let file = file_name("imta.cnf");
    let result = imta_cnf::parse_str(&file, &text(data), &mut diags).map(|cnf| {
        for channel in &cnf.channels {
            let _ = (channel.unknown_keywords(), channel.effective_keywords());
            if channel.is_lmtp() {
                settings_of(channel, &channel_option::ChannelOptions::default());
            }
        }
    });
    render(result, &diags);
}

/// A channel option file's text, then the settings an image reads from it.
pub fn channel_option(data: &[u8]) {
    static CHANNEL: OnceLock<Channel> = OnceLock::new();
    let channel = CHANNEL.get_or_init(|| {
        let mut diags = Diagnostics::default();
        let text = "tcp_lmtpss lmtp\ntcp_lmtpss-daemon\n";
        let parsed = imta_cnf::parse_str(&file_name("imta.cnf"), text, &mut diags);
        match parsed.map(|mut cnf| cnf.channels.pop()) {
            Ok(Some(c)) => c,
            _ => panic!("the fuzzing module's own imta.cnf text does not give a channel"),
        }
    });
    let mut diags = Diagnostics::default();
    let path = Path::new(CONFIG_DIR).join("tcp_lmtpss_option");
    let result = channel_option::from_text(&path, &text(data), &mut diags)
        .map(|options| settings_of(channel, &options));
    render(result, &diags);
}

fn settings_of(channel: &Channel, options: &channel_option::ChannelOptions) {
    for kind in [ImageKind::Store, ImageKind::Native] {
        if let Err(e) = settings::from_parts(kind, channel, options, 1024, fixed_tailor(), false) {
            let _ = e.to_string();
        }
    }
}

/// A pattern and a subject, split at the first newline.
pub fn mapping_pattern(data: &[u8]) {
    let all = text(data);
    let (pattern, subject) = all.split_once('\n').unwrap_or((&all, ""));
    if let Ok(p) = Pattern::compile(pattern) {
        if let Some(captures) = p.matches(subject) {
            assert_eq!(captures.len(), p.saved(), "one capture per saved wildcard");
        }
    }
    // Any subject, its special characters quoted, is a pattern that matches exactly it.
    let mut quoted = String::new();
    for c in subject.chars() {
        if matches!(c, '*' | '%' | '$') {
            quoted.push('$');
        }
        quoted.push(c);
    }
    match Pattern::compile(&quoted) {
        Ok(p) => assert_eq!(
            p.matches(subject),
            Some(Vec::new()),
            "{quoted:?} does not match {subject:?}"
        ),
        Err(e) => panic!("quoted literal {quoted:?} does not compile: {e}"),
    }
}

/// What a template may ask of its surroundings, answered from the fuzz input.
struct FuzzEnvironment {
    percent: u8,
}

impl Environment for FuzzEnvironment {
    fn call_table(&mut self, table: &str, input: &str) -> Option<String> {
        // Some tables answer, some do not: both paths are exercised.
        table
            .len()
            .is_multiple_of(2)
            .then(|| format!("{table}({input})"))
    }
    fn input_flag(&self, flag: char) -> bool {
        flag.is_ascii_uppercase()
    }
    fn percent(&mut self) -> u8 {
        self.percent = self.percent.wrapping_add(37) % 100;
        self.percent
    }
    fn unsupported(&mut self, _what: &Unsupported) {}
}

/// A template, then the captures it is expanded with, one per line.
pub fn mapping_template(data: &[u8]) {
    let all = text(data);
    let mut lines = all.split('\n');
    let template = lines.next().unwrap_or("");
    let captures: Vec<String> = lines.map(str::to_string).collect();
    let Ok(t) = Template::compile(template) else {
        return;
    };
    let _ = (t.unsupported(), t.called_tables());
    let mut env = FuzzEnvironment {
        percent: data.len() as u8,
    };
    if let Expansion::Done { output, .. } = t.expand(&captures, &mut env) {
        // Each piece adds at most its literal text, one capture or one table's answer, grown
        // by case changes (a character's upper case can take 3 times its bytes) and LDAP
        // quoting (3 bytes a byte): a loose bound that still catches runaway growth.
        let longest = captures.iter().map(String::len).max().unwrap_or(0);
        let bound = (template.len() + 1) * (12 * longest + 4 * template.len() + 16);
        assert!(
            output.len() <= bound,
            "expansion of {} bytes from a template of {} bytes",
            output.len(),
            template.len()
        );
    }
}

/// A mappings file, a NUL, then probes (one a line): each through every table and through
/// the PORT_ACCESS decision.
pub fn mapping_engine(data: &[u8]) {
    let all = text(data);
    let (file_text, probes) = all
        .split_once('\0')
        .unwrap_or((&all, "TCP|127.0.0.1|225|127.0.0.9|4000"));
    let mut diags = Diagnostics::default();
    let file = file_name("mappings");
    let Ok(parsed) = crate::config::mappings::parse_str(&file, file_text, &mut diags) else {
        return;
    };
    let Ok(set) = MappingSet::compile(&parsed, &mut diags) else {
        return;
    };
    for probe in probes.split('\n') {
        for table in &parsed.tables {
            let mut notes = Notes::default();
            let flags: InputFlags = probe.chars().filter(char::is_ascii_uppercase).collect();
            if let Some(m) = set.map(&table.name, probe, &flags, &mut notes) {
                assert!(
                    m.output.len() <= OUTPUT_LIMIT.max(probe.len()),
                    "table {} built {} bytes, more than OUTPUT_LIMIT",
                    table.name,
                    m.output.len()
                );
            }
        }
        let _ = port_access::decide(&set, probe).verdict.reply();
    }
}

/// What a reply must look like on the wire, whatever text it carries: lines of a code and
/// text, each ended by CRLF, none holding a CR or LF of its own.
fn check_reply(reply: &Reply) {
    assert!(
        (200..=599).contains(&reply.code),
        "reply code {}",
        reply.code
    );
    let mut out = Vec::new();
    reply.write_to(&mut out);
    assert!(out.ends_with(b"\r\n"), "{out:?}");
    for line in out[..out.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.contains(&b'\r') && line.starts_with(reply.code.to_string().as_bytes()),
            "reply line {:?}",
            String::from_utf8_lossy(line)
        );
    }
    let _ = reply.to_string();
}

/// What a recipient accepted for delivery must be: names that stay inside the store.
fn check_recipient(r: &Recipient) {
    for (what, name) in [
        ("user", Some(r.user.as_str())),
        ("folder", r.folder.as_deref()),
    ] {
        let Some(name) = name else { continue };
        assert!(
            !name.is_empty()
                && !name.starts_with('.')
                && !name.contains("..")
                && !name.contains(['/', '\\'])
                && !name.chars().any(char::is_control)
                && name.len() <= MAX_NAME,
            "{what} name {name:?} from {:?} could leave the store",
            r.written
        );
    }
    assert!(
        !r.user.bytes().any(|b| b.is_ascii_uppercase()),
        "user {:?} is not lower case",
        r.user
    );
}

/// One LMTP command line, as the session hands it to the parser.
pub fn lmtp_command(data: &[u8]) {
    match command::parse(&text(data)) {
        Err(reply) => check_reply(&reply),
        Ok(Command::Rcpt { path, .. }) => match Recipient::parse(&path) {
            Ok(r) => check_recipient(&r),
            Err(reply) => check_reply(&reply),
        },
        Ok(Command::Mail { path, .. }) => assert!(
            path.starts_with('"') || !path.bytes().any(|b| b == b' ' || b.is_ascii_control()),
            "MAIL path {path:?} holds a blank or control character"
        ),
        Ok(_) => {}
    }
}

/// One `RCPT TO:` path.
pub fn lmtp_address(data: &[u8]) {
    match Recipient::parse(&text(data)) {
        Ok(r) => check_recipient(&r),
        Err(reply) => check_reply(&reply),
    }
}

/// A client that sends `input` in reads of at most `step` bytes and swallows replies.
struct Client {
    input: io::Cursor<Vec<u8>>,
    step: usize,
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step);
        self.input.read(&mut buf[..n])
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The same client bytes read the plain way, one terminator at a time: what [`Wire`] must
/// agree with, however the bytes arrive.
struct Reference {
    bytes: Vec<u8>,
    pos: usize,
    crlf_only: bool,
}

/// A message as the reference reads it.
struct ReferenceData {
    body: Vec<u8>,
    lines: u64,
}

impl Reference {
    fn new(input: &[u8], mode: Terminators) -> Reference {
        // Under `lmtp_cr` a bare CR is a line end: the same as an LF.
        let bytes = if mode == Terminators::Any {
            input
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    b'\r' if input.get(i + 1) != Some(&b'\n') => b'\n',
                    other => other,
                })
                .collect()
        } else {
            input.to_vec()
        };
        Reference {
            bytes,
            pos: 0,
            crlf_only: mode == Terminators::Crlf,
        }
    }

    /// The text up to the next LF (without it and without one CR before it), whether a CR
    /// was there, and where the next line starts; `None` when no LF is left.
    fn next_lf(&self, from: usize) -> Option<(&[u8], bool, usize)> {
        let i = self.bytes[from..].iter().position(|&b| b == b'\n')?;
        let raw = &self.bytes[self.pos..from + i];
        let (text, cr) = match raw.strip_suffix(b"\r") {
            Some(t) => (t, true),
            None => (raw, false),
        };
        Some((text, cr, from + i + 1))
    }

    fn read_line(&mut self, max: usize) -> Option<Line> {
        let (text, cr, next) = self.next_lf(self.pos)?;
        let line = if text.len() > max {
            Line::TooLong
        } else if !cr && self.crlf_only {
            Line::BareLf
        } else {
            Line::Text(text.to_vec())
        };
        self.pos = next;
        Some(line)
    }

    fn read_data(&mut self) -> Option<ReferenceData> {
        let mut data = ReferenceData {
            body: Vec::new(),
            lines: 0,
        };
        let mut from = self.pos;
        loop {
            let (text, cr, next) = self.next_lf(from)?;
            if !cr && self.crlf_only {
                // A bare LF is data here: the line goes on.
                from = next;
                continue;
            }
            let text = text.to_vec();
            self.pos = next;
            from = next;
            if text == b"." {
                return Some(data);
            }
            let unstuffed = text.strip_prefix(b".").unwrap_or(&text);
            data.body.extend_from_slice(unstuffed);
            data.body.extend_from_slice(b"\r\n");
            data.lines += 1;
        }
    }
}

/// The byte that stands for a long run of text in [`lmtp_input`].
const STRETCH: u8 = 0xfe;
/// How long that run is: past the 64 KiB read buffer, where long lines take another path.
const STRETCH_LEN: usize = 70_000;

/// `input` with each of its first few [`STRETCH`] bytes replaced by [`STRETCH_LEN`] bytes of
/// text, so that small fuzz inputs reach the reader's handling of lines longer than its buffer.
fn stretch(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut left = 4;
    for &b in input {
        if b == STRETCH && left > 0 {
            left -= 1;
            out.extend(std::iter::repeat_n(b'x', STRETCH_LEN));
        } else {
            out.push(b);
        }
    }
    out
}

/// Client bytes read as a session reads them, checked against [`Reference`].
pub fn lmtp_input(data: &[u8]) {
    let [mode_max, step, limit, input @ ..] = data else {
        return;
    };
    let mode = [Terminators::Crlf, Terminators::CrlfOrLf, Terminators::Any][*mode_max as usize % 3];
    let max = [0, 8, 64, settings::MAX_COMMAND_LINE][(*mode_max as usize / 3) % 4];
    // Small reads find the places where a line end is split; 64 KiB reads the fast path.
    let step = if *step >= 250 {
        64 * 1024
    } else {
        *step as usize % 16 + 1
    };
    let limit = if *limit == 255 {
        u64::MAX
    } else {
        u64::from(*limit) * 4
    };
    let input = stretch(input);
    let client = Client {
        input: io::Cursor::new(input.clone()),
        step,
    };
    let mut wire = Wire::new(client, mode);
    let mut reference = Reference::new(&input, mode);
    loop {
        let got = match wire.read_line(max) {
            Ok(line) => line,
            Err(WireError::Closed) => {
                assert!(reference.read_line(max).is_none(), "a line was lost");
                return;
            }
            Err(e) => panic!("reading lines from memory failed: {e}"),
        };
        let expected = reference.read_line(max);
        assert_eq!(Some(&got), expected.as_ref(), "command line");
        if let Line::Text(t) = &got {
            assert!(t.len() <= max && !t.contains(&b'\n'), "line {t:?}");
        }
        if !matches!(&got, Line::Text(t) if t.eq_ignore_ascii_case(b"DATA")) {
            continue;
        }
        let mut body = Vec::new();
        let outcome = match wire.read_data(&mut body, limit) {
            Ok(outcome) => outcome,
            Err(WireError::Closed) => {
                assert!(reference.read_data().is_none(), "the end of data was lost");
                return;
            }
            Err(e) => panic!("reading data from memory failed: {e}"),
        };
        let Some(expected) = reference.read_data() else {
            panic!("data ended where the reference sees no `.` line");
        };
        let size = expected.body.len() as u64;
        assert_eq!(outcome.size, size, "message size");
        assert_eq!(outcome.lines, expected.lines, "message lines");
        assert_eq!(outcome.too_big, size > limit, "too big, limit {limit}");
        assert_eq!(outcome.has_nul, expected.body.contains(&0), "NUL seen");
        assert!(body.len() as u64 <= limit, "kept {} > {limit}", body.len());
        assert!(
            expected.body.starts_with(&body),
            "kept data differs from the message"
        );
        if !outcome.too_big {
            assert_eq!(body.len(), expected.body.len(), "data kept in full");
        }
    }
}

/// One packet on the control socket.
pub fn worker_message(data: &[u8]) {
    let text = wire::packet_text(data);
    match ToDispatcher::decode(&text) {
        Ok(m) => assert_eq!(
            ToDispatcher::decode(&m.encode()).ok(),
            Some(m),
            "does not survive encoding"
        ),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ToWorker::decode(&text) {
        Ok(m) => {
            let encoded = m.encode();
            assert!(encoded.len() <= wire::MAX_MESSAGE, "{encoded} is too long");
            assert_eq!(
                ToWorker::decode(&encoded).ok(),
                Some(m),
                "does not survive encoding"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
