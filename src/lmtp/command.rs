//! One LMTP command line, parsed (RFC 2033, RFC 5321 §4.1). Pure: no I/O, no policy.
//!
//! Verbs are case-blind. Paths are read leniently, the way a Messaging Server relay writes
//! them: `MAIL FROM:<a@b>`, `MAIL FROM: a@b` (no brackets, blank after the colon) and
//! `RCPT TO:uid+folder` (no domain) are all accepted; a source route (`<@a,@b:u@d>`) is
//! dropped as RFC 5321 §3.3 allows. Parameters (`SIZE=`, `BODY=`, `XQUOTA=`, `XDFLG=`) come
//! back as upper-case keywords with their values; which are allowed is the session's call.

use super::reply::Reply;

/// An ESMTP parameter: keyword (upper case) and value.
pub type Param = (String, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lhlo(String),
    /// `HELO` or `EHLO`, which an LMTP server must refuse (RFC 2033 §4.1).
    HeloOrEhlo(String),
    Mail {
        /// Without brackets; empty for the null reverse path `<>`.
        path: String,
        params: Vec<Param>,
    },
    Rcpt {
        path: String,
        params: Vec<Param>,
    },
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
}

/// Parses a command line (without its line terminator). `Err` is the reply for a line that
/// is not a command we know or whose arguments are malformed.
pub fn parse(line: &str) -> Result<Command, Reply> {
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start()),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.trim().is_empty() {
            Ok(c)
        } else {
            Err(Reply::new(
                501,
                "5.5.4",
                format!("Syntax error: {upper} takes no arguments"),
            ))
        }
    };
    match upper.as_str() {
        "LHLO" => match rest.split_whitespace().next() {
            Some(name) => Ok(Command::Lhlo(name.to_string())),
            None => Err(Reply::new(501, "5.5.4", "Syntax: LHLO hostname")),
        },
        "HELO" | "EHLO" => Ok(Command::HeloOrEhlo(upper)),
        "MAIL" => {
            let (path, params) = path_and_params(rest, "FROM:", "5.1.7", "MAIL FROM:<address>")?;
            Ok(Command::Mail { path, params })
        }
        "RCPT" => {
            let (path, params) = path_and_params(rest, "TO:", "5.1.3", "RCPT TO:<address>")?;
            if path.is_empty() {
                return Err(Reply::new(
                    501,
                    "5.1.3",
                    "Syntax: RCPT TO:<address>: empty address",
                ));
            }
            Ok(Command::Rcpt { path, params })
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => Ok(Command::Bdat),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => Ok(Command::StartTls),
        "AUTH" => Ok(Command::Auth),
        "" => Err(Reply::new(500, "5.5.2", "Syntax error: empty command line")),
        _ => Err(Reply::new(
            500,
            "5.5.1",
            format!(
                "Command unrecognized: {}",
                super::address::printable(&upper.chars().take(16).collect::<String>())
            ),
        )),
    }
}

/// Reads `FROM:path params` / `TO:path params`.
fn path_and_params(
    rest: &str,
    keyword: &str,
    status: &'static str,
    syntax: &str,
) -> Result<(String, Vec<Param>), Reply> {
    let err = |why: &str| Reply::new(501, status, format!("Syntax: {syntax}: {why}"));
    // Compared as bytes: the text may hold any characters, and a character boundary need not
    // fall where the keyword ends.
    let keyword_present = rest
        .as_bytes()
        .get(..keyword.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(keyword.as_bytes()));
    if !keyword_present {
        return Err(err(&format!("expected {keyword}")));
    }
    let rest = rest[keyword.len()..].trim_start();
    let (path, after) = if let Some(inner) = rest.strip_prefix('<') {
        let close = closing_bracket(inner).ok_or_else(|| err("no closing `>`"))?;
        (&inner[..close], &inner[close + 1..])
    } else {
        match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(err("text after the address"));
    }
    let path = strip_source_route(path);
    if path.bytes().any(|b| b == b' ' || b.is_ascii_control()) && !path.starts_with('"') {
        return Err(err("blank or control character in the address"));
    }
    let mut params = Vec::new();
    for word in after.split_whitespace() {
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (word, None),
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Reply::new(
                501,
                "5.5.4",
                format!(
                    "Syntax error in parameter `{}`",
                    super::address::printable(word)
                ),
            ));
        }
        params.push((k.to_ascii_uppercase(), v));
    }
    Ok((path.to_string(), params))
}

/// Index of the `>` closing a path, skipping quoted strings (`<"a>b"@c>`).
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@a,@b:user@d` → `user@d`.
fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@') {
        if let Some(colon) = path.find(':') {
            return &path[colon + 1..];
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: Option<&str>) -> Param {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn a_keyword_cut_inside_a_character_is_a_syntax_error() {
        for line in [
            "RCPT TO\u{e9}",
            "RCPT T\u{e9}:<a>",
            "MAIL FRO\u{e9}",
            "MAIL \u{e9}",
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e.code, 501, "{line}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_command_line_panics(line in "\\PC{0,40}") {
            let _ = parse(&line);
            let _ = parse(&format!("RCPT {line}"));
            let _ = parse(&format!("MAIL FROM:{line}"));
        }
    }

    #[test]
    fn mail_and_rcpt_forms() {
        assert_eq!(
            parse("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME").unwrap(),
            Command::Mail {
                path: "a@b".into(),
                params: vec![p("SIZE", Some("10")), p("BODY", Some("8BITMIME"))]
            }
        );
        // The Sun relay's spelling: blank after the colon, no brackets, lower-case size=.
        assert_eq!(
            parse("mail from: a@b size=99").unwrap(),
            Command::Mail {
                path: "a@b".into(),
                params: vec![p("SIZE", Some("99"))]
            }
        );
        assert_eq!(
            parse("MAIL FROM:<>").unwrap(),
            Command::Mail {
                path: String::new(),
                params: vec![]
            }
        );
        assert_eq!(
            parse("RCPT TO: uid+folder xquota=1000,10 xdflg=2").unwrap(),
            Command::Rcpt {
                path: "uid+folder".into(),
                params: vec![p("XQUOTA", Some("1000,10")), p("XDFLG", Some("2"))]
            }
        );
        assert_eq!(
            parse("RCPT TO:<@relay.example:alice@x>").unwrap(),
            Command::Rcpt {
                path: "alice@x".into(),
                params: vec![]
            }
        );
    }

    #[test]
    fn malformed_commands() {
        let code = |l: &str| {
            let r = parse(l).unwrap_err();
            (r.code, r.status)
        };
        assert_eq!(code("MAIL <a@b>"), (501, "5.1.7"));
        assert_eq!(code("MAIL FROM:<a@b"), (501, "5.1.7"));
        assert_eq!(code("RCPT TO:<>"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<a@b>x"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<a@b> =1"), (501, "5.5.4"));
        assert_eq!(code("DATA now"), (501, "5.5.4"));
        assert_eq!(code("FROB"), (500, "5.5.1"));
        assert_eq!(code(""), (500, "5.5.2"));
        assert_eq!(code("LHLO"), (501, "5.5.4"));
    }

    #[test]
    fn verbs_are_case_blind() {
        assert_eq!(parse("lhlo relay").unwrap(), Command::Lhlo("relay".into()));
        assert_eq!(parse("quit").unwrap(), Command::Quit);
        assert_eq!(parse("ehlo x").unwrap(), Command::HeloOrEhlo("EHLO".into()));
    }
}
