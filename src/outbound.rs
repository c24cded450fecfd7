//! Outbound HTTP to endpoints users name (Prometheus and web metrics, Canary webhooks, alert
//! providers): the one cache of `reqwest` clients, the one bounded body reader, and how a failure
//! is put into words.
//!
//! Decides:
//! - which client serves a request: one per `(insecure, redirects)` setting, built once and
//!   shared (a controller with a thousand runs must not build a TLS client per measurement); the
//!   timeout is set per request, so distinct timeouts never grow the cache;
//! - redirects: not followed by default (`--http-follow-redirects` turns them on). Even then a
//!   request carrying custom headers or credentials follows only redirects to its own origin, so
//!   they never reach another host; no `Referer` is ever sent (it would carry the query string);
//! - how much of an answer is read: every body goes through [`read_body`], capped in bytes and in
//!   time; an error answer only needs [`ERROR_BODY_BYTES`] for its excerpt.
//!
//! Must never: read a body without a size and a time cap; put a URL (it may carry secrets) into
//! an error text of its own; panic on any answer.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::redirect::Policy;
use reqwest::{Response, Url};

/// Largest response body read from a metric provider. Metric answers are small; a larger body
/// is a misconfigured URL (a dashboard page, a log dump), and reading it all would cost memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of an error answer read for its excerpt (the rest is never read).
pub const ERROR_BODY_BYTES: usize = 4 * 1024;

/// Characters of a response body quoted in an error message.
pub const BODY_EXCERPT_CHARS: usize = 512;

/// The longest connect phase; the request's own timeout still bounds the whole request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Redirects followed at most, when following is on (reqwest's and Go's default).
const MAX_REDIRECTS: usize = 10;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS or proxy setup was refused.
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
}

/// Which redirects a client follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Redirects {
    /// None: the 3xx answer is the answer.
    None,
    /// Only to the origin (scheme, host, port) of the first request.
    SameOrigin,
    /// Any, up to [`MAX_REDIRECTS`].
    Any,
}

/// `reqwest` clients keyed by `(insecure, redirects)`, built on first use and then shared (each
/// keeps its own connection pool, so reuse also keeps connections to Prometheus warm).
#[derive(Default)]
pub struct HttpClients {
    follow_redirects: bool,
    clients: Mutex<HashMap<(bool, Redirects), reqwest::Client>>,
}

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClients")
            .field("follow_redirects", &self.follow_redirects)
            .field("clients", &self.len())
            .finish()
    }
}

impl HttpClients {
    /// A cache whose clients follow redirects when `follow_redirects` (`--http-follow-redirects`).
    pub fn new(follow_redirects: bool) -> Self {
        Self {
            follow_redirects,
            clients: Mutex::default(),
        }
    }

    /// The redirects a request may follow: none unless following is on, and only to its own
    /// origin when it carries custom headers or credentials (reqwest drops `Authorization` on a
    /// cross-host redirect, but not an `X-Api-Key`).
    pub fn redirects(&self, carries_credentials: bool) -> Redirects {
        match (self.follow_redirects, carries_credentials) {
            (false, _) => Redirects::None,
            (true, true) => Redirects::SameOrigin,
            (true, false) => Redirects::Any,
        }
    }

    /// The client for requests with this TLS verification setting that carry (or not) custom
    /// headers or credentials. Callers set each request's timeout.
    pub fn get(&self, insecure: bool, carries_credentials: bool) -> Result<reqwest::Client, Error> {
        let key = (insecure, self.redirects(carries_credentials));
        // A poisoned lock only means another thread panicked while inserting; the map is still usable.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = builder(key.0, key.1)
            .build()
            .map_err(|e| Error::Client(error_chain(&e)))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// How many distinct clients have been built (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or_default()
    }

    /// Whether no client has been built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client builder with Sluice's settings (for a client that cannot be shared, such as one
/// through an alert provider's own proxy).
pub fn builder(insecure: bool, redirects: Redirects) -> reqwest::ClientBuilder {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .danger_accept_invalid_certs(insecure)
        .referer(false)
        .redirect(policy(redirects))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
}

fn policy(redirects: Redirects) -> Policy {
    match redirects {
        Redirects::None => Policy::none(),
        Redirects::Any => Policy::limited(MAX_REDIRECTS),
        Redirects::SameOrigin => Policy::custom(|attempt| {
            let first = attempt.previous().first().map(Url::origin);
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if first == Some(attempt.url().origin()) {
                attempt.follow()
            } else {
                // The 3xx becomes the answer; the caller says why it was not followed.
                attempt.stop()
            }
        }),
    }
}

/// Reads a response body, refusing one above `limit` bytes or taking longer than `timeout`.
pub async fn read_body(
    mut response: Response,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let read = async {
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(format!("response body is larger than {limit} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(format!(
                        "reading the response body failed: {}",
                        describe_send_error(&e, timeout)
                    ));
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "reading the response body timed out after {}",
                humanize(timeout)
            ))
        })
}

/// The start of a body, at most `limit` bytes, read within `timeout`; whatever was read when
/// the limit, the time or an error came (the rest is never read: the connection is dropped).
pub async fn read_prefix(mut response: Response, limit: usize, timeout: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    body
}

/// A non-success answer in words: `HTTP <status>: <excerpt>` from at most [`ERROR_BODY_BYTES`]
/// of its body; a redirect says it was not followed (never where to: the `Location` may carry
/// secrets).
pub async fn describe_answer(response: Response, timeout: Duration) -> String {
    let status = response.status();
    if status.is_redirection() {
        return format!(
            "HTTP {status}: a redirect, not followed (redirects are followed only with --http-follow-redirects, and a request carrying headers or credentials only to its own origin)"
        );
    }
    let body = read_prefix(response, ERROR_BODY_BYTES, timeout).await;
    if body.len() < ERROR_BODY_BYTES {
        return format!("HTTP {status}: {}", excerpt(&body, BODY_EXCERPT_CHARS));
    }
    let text = String::from_utf8_lossy(&body);
    let start: String = text.trim().chars().take(BODY_EXCERPT_CHARS).collect();
    format!(
        "HTTP {status}: {start}… (a body of more than {ERROR_BODY_BYTES} bytes; the rest was not read)"
    )
}

/// The start of a body for an error message: at most `max` characters, cut on a character
/// boundary, with the size read said when cut.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], body.len()),
    }
}

/// The error and its causes in one line ("error sending request: … : Connection refused"), with
/// any URL removed (it may carry secrets; callers name the URL as it may be shown themselves).
pub fn error_chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let top = error_without_url(error);
    parts.push(top);
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and its connectors often repeat their cause's text; say it once.
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

fn error_without_url(error: &reqwest::Error) -> String {
    // `reqwest::Error` appends " for url (…)" to its own text; strip it without rebuilding the error.
    let text = error.to_string();
    match text.find(" for url (") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A transport failure in words: a timeout says how long was waited, anything else gives the causes.
pub fn describe_send_error(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("timed out after {}", humanize(timeout))
    } else {
        error_chain(error)
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// A URL that came from a Secret, as it may be shown: its scheme, host and port only (for Slack,
/// Teams or Discord the path *is* the credential).
pub fn redacted_url(text: &str) -> String {
    match Url::parse(text.trim()) {
        Ok(url) if url.host_str().is_some() => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}/… (from a Secret, not shown)",
                url.scheme(),
                url.host_str().unwrap_or_default()
            )
        }
        _ => "(a URL from a Secret, not shown)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_character_boundaries() {
        assert_eq!(excerpt(b"  short  ", 10), "short");
        let long = "é".repeat(20);
        let cut = excerpt(long.as_bytes(), 5);
        assert!(cut.starts_with("ééééé…"), "{cut}");
        assert!(cut.contains("40 bytes in all"), "{cut}");
    }

    #[test]
    fn clients_are_keyed_by_settings_not_timeouts() {
        let clients = HttpClients::default();
        clients.get(false, false).unwrap();
        clients.get(false, true).unwrap();
        clients.get(true, false).unwrap();
        // Redirects off: credentials or not, the same client.
        assert_eq!(clients.len(), 2);
        let following = HttpClients::new(true);
        following.get(false, false).unwrap();
        following.get(false, true).unwrap();
        assert_eq!(following.len(), 2);
        assert_eq!(following.redirects(true), Redirects::SameOrigin);
        assert_eq!(following.redirects(false), Redirects::Any);
        assert_eq!(HttpClients::default().redirects(false), Redirects::None);
    }

    /// Serves `app` on a free loopback port; its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn error_answers_are_read_only_to_their_excerpt() {
        use axum::body::{Body, Bytes};
        use futures::StreamExt;
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        let app = axum::Router::new().fallback(|| async {
            // 64 MiB, generated as sent.
            let body = futures::stream::repeat_with(|| {
                Ok::<_, std::convert::Infallible>(Bytes::from_static(&CHUNK))
            })
            .take(1024);
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Body::from_stream(body),
            )
        });
        let base = serve(app).await;
        let clients = HttpClients::default();
        let response = clients
            .get(false, false)
            .unwrap()
            .get(&base)
            .send()
            .await
            .unwrap();
        let text = describe_answer(response, Duration::from_secs(5)).await;
        assert!(
            text.starts_with("HTTP 500 Internal Server Error: xxx"),
            "{text}"
        );
        assert!(text.ends_with("the rest was not read)"), "{text}");
        assert!(text.len() < 700, "{}", text.len());
        let response = clients
            .get(false, false)
            .unwrap()
            .get(&base)
            .send()
            .await
            .unwrap();
        let err = read_body(response, 1024 * 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
    }

    #[tokio::test]
    async fn redirects_follow_the_settings() {
        let other = serve(axum::Router::new().fallback(|| async { "landed" })).await;
        let to_other = format!("{other}/landed");
        let first = serve(
            axum::Router::new()
                .route(
                    "/same",
                    axum::routing::get(|| async { axum::response::Redirect::to("/ok") }),
                )
                .route("/ok", axum::routing::get(|| async { "same origin" }))
                .fallback(move || {
                    let to = to_other.clone();
                    async move { axum::response::Redirect::to(&to) }
                }),
        )
        .await;
        let status = |clients: &HttpClients, credentials: bool, path: &'static str| {
            let client = clients.get(false, credentials).unwrap();
            let url = format!("{first}{path}");
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        };
        let off = HttpClients::default();
        assert_eq!(status(&off, false, "/away").await, 303);
        assert_eq!(status(&off, false, "/same").await, 303);
        let on = HttpClients::new(true);
        assert_eq!(status(&on, false, "/away").await, 200);
        // With headers or credentials: only to the same origin.
        assert_eq!(status(&on, true, "/away").await, 303);
        assert_eq!(status(&on, true, "/same").await, 200);
    }

    #[test]
    fn secret_urls_show_only_their_origin() {
        let shown = redacted_url("https://hooks.slack.com:8443/services/T0/B0/SECRET?token=Q");
        assert_eq!(
            shown,
            "https://hooks.slack.com:8443/… (from a Secret, not shown)"
        );
        assert!(!redacted_url("not a url SECRET").contains("SECRET"));
    }
}
