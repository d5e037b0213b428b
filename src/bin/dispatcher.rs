//! `dispatcher`: the Messaging Server dispatcher, drop-in for `IMTA_BIN:dispatcher`.
//!
//! This file only reads the command line and calls the library; see `docs/admin-guide.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use msdispatcher::check;
use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::installation;
use msdispatcher::config::mappings;
use msdispatcher::config::tailor::{self, Tailor};
use msdispatcher::control::client::Client;
use msdispatcher::control::protocol::Request;
use msdispatcher::dispatcher::start::{self, StartOptions};
use msdispatcher::mapping::table::MappingSet;
use msdispatcher::test_mapping;

const USAGE: &str = "\
usage: dispatcher [--tailor FILE] [--foreground] [--shutdown-timeout SECONDS]
       dispatcher [--tailor FILE] --takeover [--takeover-timeout SECONDS] [--foreground]
       dispatcher [--tailor FILE] --status [--json] | --reload | --restart SERVICE|'*' | --stop
       dispatcher [--tailor FILE] --check [--strict]
       dispatcher [--tailor FILE] [--mapping-file FILE] --test-mapping TABLE PROBE|-
       dispatcher --version | --help

  (no mode)       run the dispatcher: listen on every service's ports, check each
                  connection against PORT_ACCESS, hand it to a worker; detaches
                  unless --foreground; stop with SIGTERM
  --foreground    stay attached (for service managers and tests); log also to stderr;
                  implied when NOTIFY_SOCKET is set (systemd Type=notify)
  --shutdown-timeout SECONDS
                  how long SIGTERM waits for workers to finish (default 30)
  --takeover      start a new dispatcher (a new binary) in place of the running one
                  without closing a listener: it takes the running one's listening
                  sockets over the control socket, starts its workers and, once every
                  service has its MIN_PROCS workers, takes over the pid file; the old one
                  stops accepting, its workers finish their sessions, it exits. If any
                  step fails the old one goes on serving and this prints why (exit 1)
  --takeover-timeout SECONDS
                  how long --takeover waits for its workers (default 30)
  --status        print each service's workers, waiting connections, counts, starts,
                  failed starts and back-off, as read from the running dispatcher
  --json          with --status: the same as one JSON document
  --reload        reload the configuration and wait for the result: exit 0 when it
                  was applied, 1 with the reason (file, line, column) when refused
  --restart SERVICE|'*'
                  new workers for SERVICE (every service with '*') take new
                  connections while the old ones finish their sessions
  --stop          stop gracefully (as SIGTERM) and wait until the dispatcher has exited
  --check         read imta_tailor, dispatcher.cnf, mappings, imta.cnf and the channel
                  option files; print the effective configuration of every service and
                  every warning; exit 0 when the configuration is usable, 1 when not
  --strict        with --check: treat every warning as an error
  --test-mapping TABLE PROBE
                  run PROBE through mapping table TABLE and print the output string,
                  the flags and, for PORT_ACCESS, the decision (like imsimta test
                  -mapping); PROBE `-` reads one probe a line from standard input
  --mapping-file FILE
                  with --test-mapping: the mappings file (default: the tailor's
                  IMTA_MAPPING_FILE)
  --tailor FILE   the tailor file to use (default: $IMTA_TAILOR, else
                  ../config/imta_tailor beside this program, else
                  /opt/SUNWmsgsr/config/imta_tailor)
  --version       print the version
  --help          print this text

exit status of a start: 78 (EX_CONFIG) when the configuration cannot be used, 1 for any
other failure (a port taken, the pid file locked), 2 for a bad command line. Under a
service manager (NOTIFY_SOCKET set) it stays in the foreground and reports READY=1,
RELOADING=1, STOPPING=1 and STATUS= (docs/packaging.md).
";

#[derive(Debug, Default)]
struct Args {
    tailor: Option<PathBuf>,
    mapping_file: Option<PathBuf>,
    test_mapping: Option<(String, String)>,
    foreground: bool,
    shutdown_timeout: Option<u64>,
    check: bool,
    strict: bool,
    command: Option<Request>,
    json: bool,
    takeover: bool,
    takeover_timeout: Option<u64>,
    version: bool,
    help: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" | "-check" => out.check = true,
            "--strict" => out.strict = true,
            "--foreground" | "-f" => out.foreground = true,
            "--shutdown-timeout" => {
                let s = args
                    .next()
                    .ok_or("--shutdown-timeout needs a number of seconds")?;
                let n = s
                    .parse()
                    .map_err(|_| format!("--shutdown-timeout {s}: not a number of seconds"))?;
                out.shutdown_timeout = Some(n);
            }
            "--status" => out.command = Some(Request::Status { json: false }),
            "--json" => out.json = true,
            "--reload" => out.command = Some(Request::Reload),
            "--stop" => out.command = Some(Request::Stop),
            "--restart" => {
                let name = args
                    .next()
                    .ok_or("--restart needs a service name (or '*' for every service)")?;
                let service = (name != "*").then_some(name);
                out.command = Some(Request::Restart { service });
            }
            "--takeover" => out.takeover = true,
            "--takeover-timeout" => {
                let s = args
                    .next()
                    .ok_or("--takeover-timeout needs a number of seconds")?;
                let n = s
                    .parse()
                    .map_err(|_| format!("--takeover-timeout {s}: not a number of seconds"))?;
                out.takeover_timeout = Some(n);
            }
            "--version" | "-V" => out.version = true,
            "--help" | "-h" => out.help = true,
            "--tailor" => {
                let file = args.next().ok_or("--tailor needs a file name")?;
                out.tailor = Some(PathBuf::from(file));
            }
            "--mapping-file" => {
                let file = args.next().ok_or("--mapping-file needs a file name")?;
                out.mapping_file = Some(PathBuf::from(file));
            }
            "--test-mapping" => {
                let table = args.next().ok_or("--test-mapping needs a table name")?;
                let probe = args.next().ok_or("--test-mapping needs a probe (or -)")?;
                out.test_mapping = Some((table, probe));
            }
            other => match other.strip_prefix("--tailor=") {
                Some(file) => out.tailor = Some(PathBuf::from(file)),
                None => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dispatcher: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("dispatcher {}", msdispatcher::VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some((table, probe)) = &args.test_mapping {
        return test_mapping(&args, table, probe);
    }
    if let Some(request) = &args.command {
        return control(&args, request);
    }
    if !args.check {
        let (tailor, tailor_origin) = locate_tailor(&args);
        let opts = StartOptions {
            tailor,
            tailor_origin,
            foreground: args.foreground,
            shutdown_bound: Duration::from_secs(args.shutdown_timeout.unwrap_or(30)),
            takeover: args
                .takeover
                .then(|| Duration::from_secs(args.takeover_timeout.unwrap_or(30))),
        };
        return match start::start(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dispatcher: error: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let (path, origin) = locate_tailor(&args);
    let mut diags = Diagnostics::default();
    let result = installation::load(&path, origin, &mut diags)
        .map_err(|e| e.to_string())
        .and_then(|inst| check::check_accounts(&inst, &mut diags, false).map(|()| inst));
    eprint!("{}", check::format_warnings(&diags));
    match result {
        Err(e) => {
            eprintln!("dispatcher: error: {e}");
            ExitCode::FAILURE
        }
        Ok(inst) => {
            print!("{}", check::report(&inst));
            let n = diags.warnings.len();
            if args.strict && n > 0 {
                eprintln!("dispatcher: {n} warning(s), which --strict treats as errors");
                ExitCode::FAILURE
            } else {
                println!("\nconfiguration is usable ({n} warning(s))");
                ExitCode::SUCCESS
            }
        }
    }
}

fn locate_tailor(args: &Args) -> (PathBuf, tailor::TailorOrigin) {
    let exe = std::env::current_exe().ok();
    let env = std::env::var_os("IMTA_TAILOR");
    tailor::locate(args.tailor.as_deref(), env.as_deref(), exe.as_deref())
}

/// `--status`, `--reload`, `--restart`, `--stop`: one request to the running dispatcher's
/// control socket (found through the tailor's IMTA_LOG), its reply printed.
fn control(args: &Args, request: &Request) -> ExitCode {
    let mut diags = Diagnostics::default();
    let (tailor_path, _) = locate_tailor(args);
    let tailor = match Tailor::load(&tailor_path, &mut diags) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dispatcher: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = match request {
        Request::Status { .. } => Request::Status { json: args.json },
        other => other.clone(),
    };
    // A stop waits as long as the workers take; the rest answer at once (a reload reads
    // every file first).
    let timeout = match request {
        Request::Stop => None,
        _ => Some(Duration::from_secs(120)),
    };
    let path = msdispatcher::control::socket_path(&tailor.log_dir());
    let reply = Client::connect(&path).and_then(|c| c.request(&request, timeout));
    match reply {
        Ok(r) if r.ok => {
            if r.body.is_empty() {
                println!("dispatcher: {}", r.text);
            } else {
                print!("{}", r.body);
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("dispatcher: error: {}", r.text);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dispatcher: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--test-mapping`: loads only the tailor and the mappings file, as `imsimta test -mapping`.
fn test_mapping(args: &Args, table: &str, probe: &str) -> ExitCode {
    let mut diags = Diagnostics::default();
    let (tailor_path, _) = locate_tailor(args);
    let loaded = Tailor::load(&tailor_path, &mut diags).and_then(|t| {
        let file = match &args.mapping_file {
            Some(f) => f.clone(),
            None => t.mapping_file()?,
        };
        let parsed = mappings::load(&file, &t, &mut diags)?;
        MappingSet::compile(&parsed, &mut diags)
    });
    eprint!("{}", check::format_warnings(&diags));
    let set = match loaded {
        Ok(set) => set,
        Err(e) => {
            eprintln!("dispatcher: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if set.table(table).is_none() {
        eprintln!("dispatcher: error: the mappings file has no table {table}");
        return ExitCode::FAILURE;
    }
    if probe != "-" {
        print!("{}", test_mapping::report(&set, table, probe));
        return ExitCode::SUCCESS;
    }
    let mut first = true;
    for line in std::io::stdin().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("dispatcher: error: reading standard input: {e}");
                return ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        if !first {
            println!();
        }
        first = false;
        print!("{}", test_mapping::report(&set, table, &line));
    }
    ExitCode::SUCCESS
}
