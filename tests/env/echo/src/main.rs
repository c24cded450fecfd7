//! sluice-testenv-echo PORT: an HTTP/1.1 server on 0.0.0.0:PORT that answers every request
//! with the local IP address the connection reached, the pod IP a gateway picked. Run in the
//! pods' network namespace, where every pod IP is local, one process serves every fake pod.
//!
//! `GET /_counts` answers `<ip> <requests>` lines: how many requests (other than `/_counts`)
//! each IP served since the start, so tests can see mirrored traffic, which gets no response.
//! Keep-alive connections are served until the peer closes them (gateways pool connections).
//!
//! Faults: when `SLUICE_ECHO_FAULTS` names a file of `<pod-ip> <error-rate>` lines (rate 0..1),
//! that share of the requests to that IP is answered with HTTP 500 (deterministically: every
//! request whose running count crosses a multiple of 1/rate). The file is re-read when its
//! mtime changes; a missing file means no faults.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

type Counts = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

/// Error rates per IP, from the file `SLUICE_ECHO_FAULTS` names, with the mtime they were read at.
#[derive(Default)]
struct Faults {
    mtime: Option<SystemTime>,
    rates: BTreeMap<IpAddr, f64>,
}

static FAULTS: Mutex<Option<Faults>> = Mutex::new(None);

/// The error rate for `ip` now (re-reading the faults file when it changed).
fn error_rate(ip: IpAddr) -> f64 {
    let Some(path) = std::env::var_os("SLUICE_ECHO_FAULTS") else {
        return 0.0;
    };
    let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let Ok(mut guard) = FAULTS.lock() else {
        return 0.0;
    };
    let faults = guard.get_or_insert_with(Faults::default);
    if faults.mtime != mtime || mtime.is_none() {
        faults.mtime = mtime;
        faults.rates = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect();
    }
    faults.rates.get(&ip).copied().unwrap_or(0.0)
}

fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8080".into());
    let listener = match TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap_or(8080))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice-testenv-echo: cannot listen on 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    let counts: Counts = Arc::default();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let counts = counts.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, &counts);
        });
    }
}

fn serve(conn: TcpStream, counts: &Counts) -> std::io::Result<()> {
    let local = conn.local_addr()?.ip();
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut body_len = 0usize;
        let mut close = request_line.ends_with("HTTP/1.0\r\n");
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    body_len = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(body_len as u64), &mut std::io::sink())?;
        let mut status = "200 OK";
        let body = if path == "/_counts" {
            let map = counts.lock().map(|m| m.clone()).unwrap_or_default();
            map.iter().map(|(ip, n)| format!("{ip} {n}\n")).collect::<String>()
        } else {
            let n = counts.lock().map_or(0, |mut m| {
                let n = m.entry(local).or_default();
                *n += 1;
                *n
            });
            let rate = error_rate(local);
            // Request n fails when floor(n * rate) steps up: exactly `rate` of them, spread out.
            if rate > 0.0 && (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor() {
                status = "500 Internal Server Error";
            }
            local.to_string()
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}
