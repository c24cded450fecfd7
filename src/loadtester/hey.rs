//! Reads a `hey` command line (rakyll/hey, the load generator Flagger's load tester image ships)
//! into [`Hey`], with hey's flags, defaults and checks, so webhooks written for Flagger
//! (`hey -z 1m -q 10 -c 2 http://podinfo-canary.test/`) run on the built-in generator
//! ([`super::load`]). A flag the generator cannot honour is refused by name, never dropped.

use std::time::Duration;

use crate::api::flagger::canary::parse_go_duration;

/// What hey is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Hey {
    pub url: String,
    /// `-n`: requests in all (ignored with `-z`, as in hey).
    pub requests: u64,
    /// `-c`: workers sending at the same time.
    pub concurrency: u64,
    /// `-q`: requests per second per worker; 0 is unlimited.
    pub rate_per_worker: f64,
    /// `-z`: send for this long instead of `-n` requests.
    pub duration: Option<Duration>,
    /// `-m`, upper-cased as hey does.
    pub method: String,
    /// `-H` (repeatable), then `-T`, `-A` and the user agent, as hey sets them.
    pub headers: Vec<(String, String)>,
    /// `-d`.
    pub body: Option<String>,
    /// `-D`: the body is this file's content.
    pub body_file: Option<String>,
    /// `-host`: the Host header.
    pub host: Option<String>,
    /// `-a user:password`.
    pub basic_auth: Option<(String, String)>,
    /// `-x host:port`.
    pub proxy: Option<String>,
    /// `-t`: per-request timeout; `None` waits forever (`-t 0`).
    pub timeout: Option<Duration>,
    pub keepalive: bool,
    pub redirects: bool,
}

/// Why a hey command line was refused (hey prints the same and exits 1).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("hey: flag provided but not defined: {0}")]
    UnknownFlag(String),
    #[error("hey: flag needs an argument: {0}")]
    MissingValue(String),
    #[error("hey: invalid value {value:?} for flag {flag}: {reason}")]
    InvalidValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error(
        "hey: flag {0} is not supported by the built-in load generator of sluice loadtester; remove it"
    )]
    Unsupported(String),
    #[error("hey: {0}")]
    Usage(&'static str),
    #[error("hey: one URL expected after the flags, found {0:?}")]
    ExtraArguments(Vec<String>),
}

/// Flags that take a value, as hey defines them.
const VALUE_FLAGS: &[&str] = &[
    "n", "c", "q", "z", "m", "H", "t", "A", "d", "D", "T", "a", "x", "host", "o", "cpus",
];
/// Boolean flags.
const BOOL_FLAGS: &[&str] = &[
    "h2",
    "disable-compression",
    "disable-keepalive",
    "disable-redirects",
];

/// Parses `words` (the first one being `hey`) as Go's `flag` package and hey's `main` do.
pub fn parse(words: &[String]) -> Result<Hey, Error> {
    let mut hey = Hey {
        url: String::new(),
        requests: 200,
        concurrency: 50,
        rate_per_worker: 0.0,
        duration: None,
        method: "GET".into(),
        headers: Vec::new(),
        body: None,
        body_file: None,
        host: None,
        basic_auth: None,
        proxy: None,
        timeout: Some(Duration::from_secs(20)),
        keepalive: true,
        redirects: true,
    };
    let mut content_type = "text/html".to_string();
    let mut accept = None;
    let mut rest = words.iter().skip(1);
    let mut positional = Vec::new();
    while let Some(arg) = rest.next() {
        let Some(flag) = flag_name(arg) else {
            if arg == "--" {
                positional.extend(rest.cloned());
            } else {
                positional.push(arg.clone());
                positional.extend(rest.cloned());
            }
            break;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if BOOL_FLAGS.contains(&name) {
            let on = match inline.as_deref() {
                None => true,
                Some(v) => parse_bool(v).ok_or_else(|| invalid(name, v, "not a boolean"))?,
            };
            match name {
                "disable-keepalive" => hey.keepalive = !on,
                "disable-redirects" => hey.redirects = !on,
                // Without compression is how the generator always sends (no Accept-Encoding).
                "disable-compression" => {}
                _ if on => return Err(Error::Unsupported(format!("-{name}"))),
                _ => {}
            }
            continue;
        }
        if !VALUE_FLAGS.contains(&name) {
            return Err(Error::UnknownFlag(format!("-{name}")));
        }
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| Error::MissingValue(format!("-{name}")))?,
        };
        match name {
            "n" => hey.requests = positive_or_zero(name, &value)?,
            "c" => hey.concurrency = positive_or_zero(name, &value)?,
            "q" => {
                hey.rate_per_worker = value
                    .parse::<f64>()
                    .ok()
                    .filter(|q| q.is_finite() && *q >= 0.0)
                    .ok_or_else(|| invalid(name, &value, "not a rate"))?;
            }
            "z" => {
                hey.duration = Some(
                    parse_go_duration(&value)
                        .ok_or_else(|| invalid(name, &value, "not a duration like 30s or 2m"))?,
                );
            }
            "m" => hey.method = value.to_uppercase(),
            "H" => hey.headers.push(header(&value)?),
            "t" => {
                let secs = positive_or_zero(name, &value)?;
                hey.timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "A" => accept = Some(value),
            "T" => content_type = value,
            "d" => hey.body = Some(value),
            "D" => hey.body_file = Some(value),
            "a" => {
                let (user, password) = value
                    .split_once(':')
                    .filter(|(u, p)| !u.is_empty() && !p.is_empty())
                    .ok_or_else(|| invalid(name, &value, "expected user:password"))?;
                hey.basic_auth = Some((user.into(), password.into()));
            }
            "x" => hey.proxy = Some(format!("http://{value}")),
            "host" => hey.host = Some(value),
            // GOMAXPROCS for hey's Go runtime: no meaning here.
            "cpus" => {
                positive_or_zero(name, &value)?;
            }
            _ => return Err(Error::Unsupported(format!("-{name}"))),
        }
    }
    finish(&mut hey, positional, content_type, accept)?;
    Ok(hey)
}

/// hey's checks after the flags, and the headers it always sets.
fn finish(
    hey: &mut Hey,
    positional: Vec<String>,
    content_type: String,
    accept: Option<String>,
) -> Result<(), Error> {
    let mut positional = positional.into_iter();
    hey.url = positional.next().ok_or(Error::Usage("no URL given"))?;
    let extra: Vec<String> = positional.collect();
    if !extra.is_empty() {
        return Err(Error::ExtraArguments(extra));
    }
    if hey.concurrency == 0 {
        return Err(Error::Usage("-c cannot be smaller than 1."));
    }
    if hey.duration.is_none() {
        if hey.requests == 0 {
            return Err(Error::Usage("-n and -c cannot be smaller than 1."));
        }
        if hey.requests < hey.concurrency {
            return Err(Error::Usage("-n cannot be less than -c."));
        }
    }
    let has = |headers: &[(String, String)], name: &str| {
        headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    // hey sets Content-Type and Accept after the -H headers, so -T and -A win.
    hey.headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
    hey.headers.push(("Content-Type".into(), content_type));
    if let Some(accept) = accept {
        hey.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("accept"));
        hey.headers.push(("Accept".into(), accept));
    }
    if !has(&hey.headers, "user-agent") {
        hey.headers.push(("User-Agent".into(), "hey/0.0.1".into()));
    }
    Ok(())
}

/// `-name` / `--name` / `-name=value` → `name...`; anything else is not a flag (Go's rules).
fn flag_name(arg: &str) -> Option<&str> {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    (!name.is_empty() && !name.starts_with('-') && !name.starts_with('=')).then_some(name)
}

/// `Name: value`, as hey's `-H` pattern `^([\w-]+):\s*(.+)` reads it.
fn header(text: &str) -> Result<(String, String), Error> {
    let (name, value) = text
        .split_once(':')
        .map(|(n, v)| (n, v.trim_start()))
        .filter(|(n, v)| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                && !v.is_empty()
        })
        .ok_or_else(|| invalid("H", text, "expected \"Name: value\""))?;
    Ok((name.into(), value.into()))
}

fn positive_or_zero(flag: &str, value: &str) -> Result<u64, Error> {
    value
        .parse()
        .map_err(|_| invalid(flag, value, "not a whole number >= 0"))
}

fn invalid(flag: &str, value: &str, reason: &str) -> Error {
    Error::InvalidValue {
        flag: format!("-{flag}"),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hey(line: &str) -> Result<Hey, Error> {
        parse(&super::super::words::split(line).expect("plain words"))
    }

    #[test]
    fn flaggers_load_test_lines_parse() {
        let h = hey("hey -z 2m -q 10 -c 2 -host www.example.com -H 'X-Canary: insider' http://gw/")
            .unwrap();
        assert_eq!(h.url, "http://gw/");
        assert_eq!(h.duration, Some(Duration::from_secs(120)));
        assert_eq!(h.rate_per_worker, 10.0);
        assert_eq!(h.concurrency, 2);
        assert_eq!(h.host.as_deref(), Some("www.example.com"));
        assert_eq!(h.method, "GET");
        assert_eq!(
            h.headers,
            [
                ("X-Canary".to_string(), "insider".to_string()),
                ("Content-Type".into(), "text/html".into()),
                ("User-Agent".into(), "hey/0.0.1".into()),
            ]
        );
        assert_eq!(h.timeout, Some(Duration::from_secs(20)));
    }

    #[test]
    fn defaults_and_go_flag_forms() {
        let h = hey("hey --n=10 -c=5 -m post -d '{}' -T application/json -t 0 -disable-keepalive -disable-redirects=true http://a").unwrap();
        assert_eq!((h.requests, h.concurrency), (10, 5));
        assert_eq!(h.method, "POST");
        assert_eq!(h.body.as_deref(), Some("{}"));
        assert_eq!(h.timeout, None);
        assert!(!h.keepalive && !h.redirects);
        assert!(
            h.headers
                .contains(&("Content-Type".into(), "application/json".into()))
        );
        let h = hey("hey -a user:pw -x proxy:3128 -A text/plain -- http://a").unwrap();
        assert_eq!(h.basic_auth, Some(("user".into(), "pw".into())));
        assert_eq!(h.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!((h.requests, h.concurrency), (200, 50));
    }

    #[test]
    fn hey_refusals_name_the_flag() {
        assert_eq!(hey("hey -k http://a"), Err(Error::UnknownFlag("-k".into())));
        assert_eq!(hey("hey -z"), Err(Error::MissingValue("-z".into())));
        assert_eq!(
            hey("hey -h2 http://a"),
            Err(Error::Unsupported("-h2".into()))
        );
        assert_eq!(
            hey("hey -o csv http://a"),
            Err(Error::Unsupported("-o".into()))
        );
        assert!(
            matches!(hey("hey -z 1min http://a"), Err(Error::InvalidValue { flag, .. }) if flag == "-z")
        );
        assert!(
            matches!(hey("hey -H nocolon http://a"), Err(Error::InvalidValue { flag, .. }) if flag == "-H")
        );
        assert!(
            matches!(hey("hey -q -1 http://a"), Err(Error::InvalidValue { flag, .. }) if flag == "-q")
        );
        assert_eq!(hey("hey -c 2"), Err(Error::Usage("no URL given")));
        assert_eq!(
            hey("hey -n 1 -c 2 http://a"),
            Err(Error::Usage("-n cannot be less than -c."))
        );
        assert_eq!(
            hey("hey -c 0 -z 1s http://a"),
            Err(Error::Usage("-c cannot be smaller than 1."))
        );
        assert_eq!(
            hey("hey http://a http://b"),
            Err(Error::ExtraArguments(vec!["http://b".into()]))
        );
        // With -z, -n does not matter (hey sets it to MaxInt32).
        assert!(hey("hey -z 1s -n 1 -c 2 http://a").is_ok());
    }

    #[test]
    fn go_parse_bool() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
