//! sluice-testenv-echo PORT: an HTTP/1.1 server on 0.0.0.0:PORT that answers every request
//! with the local IP address the connection reached, the pod IP a gateway picked. Run in the
//! pods' network namespace, where every pod IP is local, one process serves every fake pod.
//!
//! `GET /_counts` answers `<ip> <requests>` lines: how many requests (other than `/_counts`)
//! each IP served since the start, so tests can see mirrored traffic, which gets no response.
//! Keep-alive connections are served until the peer closes them (gateways pool connections).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

type Counts = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

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
        let body = if path == "/_counts" {
            let map = counts.lock().map(|m| m.clone()).unwrap_or_default();
            map.iter().map(|(ip, n)| format!("{ip} {n}\n")).collect::<String>()
        } else {
            if let Ok(mut m) = counts.lock() {
                *m.entry(local).or_default() += 1;
            }
            local.to_string()
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}
