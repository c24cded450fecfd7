//! The built-in load generator: sends what a [`Hey`] describes — `-c` workers, each at most `-q`
//! requests per second, for `-z` or until `-n` requests are sent — and summarises the answers as
//! hey does. Bodies are read and discarded; nothing is kept per request but counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::{Instant, MissedTickBehavior};

use super::hey::Hey;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hey: reading the body file {path}: {source}")]
    BodyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("hey: {what}: {source}")]
    Client {
        what: &'static str,
        source: reqwest::Error,
    },
    #[error("hey: {url:?} is not a valid URL: {source}")]
    Url { url: String, source: reqwest::Error },
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub elapsed: Duration,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, by error.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    /// Requests sent in all.
    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    /// hey's summary, in its layout.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.total() as f64 / secs
        } else {
            0.0
        };
        let mut out = format!("\nSummary:\n  Total:\t{secs:.4} secs\n  Requests/sec:\t{rate:.4}\n");
        out.push_str("\nStatus code distribution:\n");
        for (code, n) in &self.statuses {
            let _ = writeln!(out, "  [{code}]\t{n} responses");
        }
        if !self.errors.is_empty() {
            out.push_str("\nError distribution:\n");
            for (error, n) in &self.errors {
                let _ = writeln!(out, "  [{n}]\t{error}");
            }
        }
        out
    }
}

/// Runs `hey` until its `-z` or `-n` is reached, or `limit` (the task timeout) passes.
pub async fn run(hey: &Hey, limit: Duration) -> Result<Report, Error> {
    let client = build_client(hey)?;
    let request = Arc::new(build_request(&client, hey).await?);
    let started = Instant::now();
    let deadline = started + hey.duration.map_or(limit, |d| d.min(limit));
    // hey gives each worker n / c requests (the remainder is not sent).
    let per_worker = hey
        .duration
        .map_or(hey.requests / hey.concurrency, |_| u64::MAX);
    let report = Arc::new(Mutex::new(Report::default()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..hey.concurrency {
        let (client, request, report) = (client.clone(), request.clone(), report.clone());
        let rate = hey.rate_per_worker;
        workers.spawn(async move {
            let mut ticks = (rate > 0.0).then(|| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                t
            });
            for _ in 0..per_worker {
                if let Some(t) = ticks.as_mut() {
                    t.tick().await;
                }
                if Instant::now() >= deadline {
                    break;
                }
                let outcome = send(&client, &request, deadline).await;
                let mut report = report.lock().await;
                match outcome {
                    Ok(code) => *report.statuses.entry(code).or_default() += 1,
                    Err(error) => *report.errors.entry(error).or_default() += 1,
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let mut report = std::mem::take(&mut *report.lock().await);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One request; its status code, or why there was none. A request still in flight at the
/// deadline is abandoned (counted as an error), as the task timeout kills hey.
async fn send(
    client: &reqwest::Client,
    request: &reqwest::Request,
    deadline: Instant,
) -> Result<u16, String> {
    let Some(request) = request.try_clone() else {
        return Err("the request body cannot be sent twice".into());
    };
    let exchange = async {
        let mut response = client.execute(request).await?;
        let code = response.status().as_u16();
        while response.chunk().await?.is_some() {}
        Ok::<u16, reqwest::Error>(code)
    };
    match tokio::time::timeout_at(deadline + Duration::from_secs(1), exchange).await {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(error)) => Err(crate::outbound::error_chain(&error)),
        Err(_) => Err("still in flight when the run ended".into()),
    }
}

async fn build_request(client: &reqwest::Client, hey: &Hey) -> Result<reqwest::Request, Error> {
    let body = match &hey.body_file {
        Some(path) => Some(
            tokio::fs::read(path)
                .await
                .map_err(|source| Error::BodyFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => hey.body.clone().map(String::into_bytes),
    };
    let method = reqwest::Method::from_bytes(hey.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut builder = client.request(method, &hey.url);
    for (name, value) in &hey.headers {
        builder = builder.header(name, value);
    }
    if let Some(host) = &hey.host {
        builder = builder.header(reqwest::header::HOST, host);
    }
    if let Some((user, password)) = &hey.basic_auth {
        builder = builder.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    builder.build().map_err(|source| Error::Url {
        url: hey.url.clone(),
        source,
    })
}

fn build_client(hey: &Hey) -> Result<reqwest::Client, Error> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder().redirect(if hey.redirects {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    });
    if let Some(timeout) = hey.timeout {
        builder = builder.timeout(timeout);
    }
    if !hey.keepalive {
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(proxy) = &hey.proxy {
        let proxy = reqwest::Proxy::all(proxy).map_err(|source| Error::Client {
            what: "the -x proxy",
            source,
        })?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|source| Error::Client {
        what: "building the HTTP client",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sends_n_requests_with_the_headers_and_counts_the_answers() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let get = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                record.lock().unwrap().push((get("host"), get("x-canary")));
                axum::http::StatusCode::IM_A_TEAPOT
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let words = super::super::words::split(&format!(
            "hey -n 7 -c 3 -host app.example.com -H 'X-Canary: insider' http://{addr}/"
        ))
        .unwrap();
        let hey = super::super::hey::parse(&words).unwrap();
        let report = run(&hey, Duration::from_secs(30)).await.unwrap();
        // 7 / 3 workers = 2 each, as hey.
        assert_eq!(report.statuses.get(&418), Some(&6), "{report:?}");
        assert_eq!(report.total(), 6);
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter()
                .all(|(host, canary)| host == "app.example.com" && canary == "insider"),
            "{seen:?}"
        );
        assert!(report.summary().contains("[418]\t6 responses"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_in_the_report() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let words = vec![
            "hey".into(),
            "-n".into(),
            "2".into(),
            "-c".into(),
            "1".into(),
            format!("http://127.0.0.1:{port}/"),
        ];
        let hey = super::super::hey::parse(&words).unwrap();
        let report = run(&hey, Duration::from_secs(30)).await.unwrap();
        assert_eq!(report.errors.values().sum::<u64>(), 2, "{report:?}");
        assert!(report.summary().contains("Error distribution"));
    }
}
