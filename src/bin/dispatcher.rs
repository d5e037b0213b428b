//! `dispatcher`: the Messaging Server dispatcher, drop-in for `IMTA_BIN:dispatcher`.
//!
//! This file only reads the command line and calls the library; see `docs/admin-guide.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use msdispatcher::check;
use msdispatcher::config::error::Diagnostics;
use msdispatcher::config::tailor;

const USAGE: &str = "\
usage: dispatcher [--tailor FILE] --check [--strict]
       dispatcher --version | --help

  --check         read imta_tailor, dispatcher.cnf, mappings, imta.cnf and the channel
                  option files; print the effective configuration of every service and
                  every warning; exit 0 when the configuration is usable, 1 when not
  --strict        with --check: treat every warning as an error
  --tailor FILE   the tailor file to use (default: $IMTA_TAILOR, else
                  ../config/imta_tailor beside this program, else
                  /opt/SUNWmsgsr/config/imta_tailor)
  --version       print the version
  --help          print this text
";

#[derive(Debug, Default)]
struct Args {
    tailor: Option<PathBuf>,
    check: bool,
    strict: bool,
    version: bool,
    help: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" | "-check" => out.check = true,
            "--strict" => out.strict = true,
            "--version" | "-V" => out.version = true,
            "--help" | "-h" => out.help = true,
            "--tailor" => {
                let file = args.next().ok_or("--tailor needs a file name")?;
                out.tailor = Some(PathBuf::from(file));
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
    if !args.check {
        eprintln!(
            "dispatcher: running the dispatcher is not implemented in this version; \
             only --check is (see --help)"
        );
        return ExitCode::from(2);
    }
    let exe = std::env::current_exe().ok();
    let env = std::env::var_os("IMTA_TAILOR");
    let (path, origin) = tailor::locate(args.tailor.as_deref(), env.as_deref(), exe.as_deref());
    let mut diags = Diagnostics::default();
    let result = check::load_installation(&path, origin, &mut diags);
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
