//! The HTTP plumbing shared by the HTTP providers (Prometheus, web, and later Datadog, New Relic, …):
//! a cache of `reqwest` clients, header and URL handling, bounded body reads and error text.
//!
//! Decides: which client serves a request (one per `(insecure, timeout)` pair, built once and reused,
//! because a controller with a thousand runs measuring every ten seconds must not build a TLS
//! client per measurement), and how a transport failure is put into words.
//!
//! Must never: put a header value, a URL's password or a request body into an error message or a
//! log line (they often hold secret arguments); panic on any URL, header or body.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::ProviderError;
use crate::api::argo::analysis::{Authentication, WebMetricHeader};

/// Largest response body read from a provider. Metric answers are small; a larger body is a
/// misconfigured URL (a dashboard page, a log dump), and reading it all would cost memory.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Characters of a response body quoted in an error message.
pub const BODY_EXCERPT_CHARS: usize = 512;

/// The longest connect phase; a longer request timeout still bounds the whole request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `reqwest` clients keyed by `(insecure, timeout)`, built on first use and then shared (each
/// client keeps its own connection pool, so reuse also keeps connections to Prometheus warm).
#[derive(Default)]
pub struct HttpClients {
    clients: Mutex<HashMap<(bool, Duration), reqwest::Client>>,
}

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.clients.lock().map(|c| c.len()).unwrap_or_default();
        f.debug_struct("HttpClients")
            .field("clients", &count)
            .finish()
    }
}

impl HttpClients {
    /// The client for requests with this TLS verification setting and overall timeout.
    pub fn get(&self, insecure: bool, timeout: Duration) -> Result<reqwest::Client, ProviderError> {
        // A poisoned lock only means another thread panicked while inserting; the map is still usable.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&(insecure, timeout)) {
            return Ok(client.clone());
        }
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .danger_accept_invalid_certs(insecure)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::HttpClient(error_chain(&e)))?;
        clients.insert((insecure, timeout), client.clone());
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

/// How a request authenticates, from a metric's `authentication` block.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No `authentication` (headers may still carry credentials, as most Argo users do it).
    None,
    /// `authentication.basicAuth {username, password}`.
    Basic {
        /// User name.
        username: String,
        /// Password (usually a secret argument).
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username:?}, *****)"),
        }
    }
}

impl Auth {
    /// Reads an `authentication` block. SigV4, OAuth2 and unknown methods are refused by name
    /// rather than ignored: sending the request unauthenticated would fail later with a less clear
    /// message, or worse, reach an endpoint that answers anonymous callers differently.
    pub fn from_spec(spec: Option<&Authentication>) -> Result<Auth, String> {
        let Some(spec) = spec else {
            return Ok(Auth::None);
        };
        if spec.sigv4.is_some() {
            return Err("authentication.sigv4 is not supported by Sluice yet".into());
        }
        if spec.oauth2.is_some() {
            return Err("authentication.oauth2 is not supported by Sluice yet; send the token in an Authorization header instead".into());
        }
        let mut auth = Auth::None;
        for (key, value) in &spec.other {
            if key != "basicAuth" {
                return Err(format!(
                    "authentication.{key} is not supported by Sluice yet"
                ));
            }
            let field = |name: &str| {
                value
                    .get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let username = field("username");
            if username.is_empty() {
                return Err("authentication.basicAuth.username is empty".into());
            }
            auth = Auth::Basic {
                username,
                password: field("password"),
            };
        }
        Ok(auth)
    }

    /// Adds the credentials to a request.
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
        }
    }
}

/// Parses an `http`/`https` URL with a host, as upstream's `IsUrl` requires.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(url)
}

/// A URL as it may be shown: the password (if any) replaced, everything else as written.
/// Takes the masked URL text, so secret arguments are already `*****`.
pub fn display_url(text: &str) -> String {
    match Url::parse(text.trim()) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Only fails for URLs that cannot carry credentials, which then have none to hide.
                let _ = url.set_password(Some("*****"));
            }
            url.to_string()
        }
        Err(_) => text.trim().to_string(),
    }
}

/// Builds the header map for a request. Errors name the header, never its value.
pub fn header_map(headers: &[WebMetricHeader]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for header in headers {
        let name = HeaderName::from_bytes(header.key.trim().as_bytes()).map_err(|_| {
            format!(
                "header name {:?} is not a valid HTTP header name",
                header.key
            )
        })?;
        let mut value = HeaderValue::from_str(header.value.trim()).map_err(|_| {
            format!(
                "the value of header {:?} is not a valid HTTP header value",
                header.key
            )
        })?;
        // Keeps it out of `Debug` output; header values are where credentials live.
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// The error and its causes in one line ("error sending request: … : Connection refused"), with any
/// URL removed (it may carry secret arguments; callers name the masked URL themselves).
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

/// Reads a response body, refusing one above `limit` bytes.
pub async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
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
}

/// The start of a body for an error message: at most `max` characters, cut on a character boundary,
/// with the full size said when cut.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], body.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert!(parse_url("http://prometheus:9090").is_ok());
        assert!(parse_url("prometheus:9090").is_err());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("").is_err());
        assert_eq!(
            display_url("https://user:hunter2@example.com/x?a=1"),
            "https://user:*****@example.com/x?a=1"
        );
        assert_eq!(display_url("not a url"), "not a url");
    }

    #[test]
    fn header_errors_never_show_the_value() {
        let bad = [WebMetricHeader {
            key: "Authorization".into(),
            value: "Bearer secret\nvalue".into(),
        }];
        let err = header_map(&bad).unwrap_err();
        assert!(err.contains("Authorization"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let bad_name = [WebMetricHeader {
            key: "bad header".into(),
            value: "x".into(),
        }];
        assert!(header_map(&bad_name).is_err());
        let ok = header_map(&[WebMetricHeader {
            key: "X-Scope-OrgID".into(),
            value: "tenant".into(),
        }])
        .unwrap();
        assert_eq!(ok["x-scope-orgid"], "tenant");
    }

    #[test]
    fn authentication_blocks() {
        assert_eq!(Auth::from_spec(None).unwrap(), Auth::None);
        let basic: Authentication =
            serde_yaml::from_str("basicAuth: {username: u, password: p}").unwrap();
        assert_eq!(
            Auth::from_spec(Some(&basic)).unwrap(),
            Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert!(!format!("{:?}", Auth::from_spec(Some(&basic)).unwrap()).contains('p'));
        for unsupported in [
            "sigv4: {region: eu-west-1}",
            "oauth2: {tokenUrl: 'https://t'}",
            "kerberos: {}",
        ] {
            let spec: Authentication = serde_yaml::from_str(unsupported).unwrap();
            let err = Auth::from_spec(Some(&spec)).unwrap_err();
            assert!(err.contains("not supported by Sluice yet"), "{err}");
        }
    }

    #[test]
    fn excerpts_cut_on_character_boundaries() {
        assert_eq!(excerpt(b"  short  ", 10), "short");
        let long = "é".repeat(20);
        let cut = excerpt(long.as_bytes(), 5);
        assert!(cut.starts_with("ééééé…"), "{cut}");
        assert!(cut.contains("40 bytes in all"), "{cut}");
    }

    #[test]
    fn clients_are_reused_per_setting() {
        let clients = HttpClients::default();
        clients.get(false, Duration::from_secs(10)).unwrap();
        clients.get(false, Duration::from_secs(10)).unwrap();
        clients.get(true, Duration::from_secs(10)).unwrap();
        clients.get(false, Duration::from_secs(30)).unwrap();
        assert_eq!(clients.len(), 3);
    }
}
