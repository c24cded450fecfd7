//! The HTTP plumbing of the HTTP providers (Prometheus, web, and later Datadog, New Relic, …):
//! header, URL and authentication handling. Clients, bounded body reads and error text are the
//! controller's one outbound HTTP module, [`crate::outbound`], re-exported here.
//!
//! Must never: put a header value, a URL's password or a request body into an error message or a
//! log line (they often hold secret arguments); panic on any URL, header or body.

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::api::argo::analysis::{Authentication, WebMetricHeader};
pub use crate::outbound::{
    BODY_EXCERPT_CHARS, ERROR_BODY_BYTES, HttpClients, MAX_BODY_BYTES, describe_answer,
    describe_send_error, error_chain, excerpt, read_body, read_prefix,
};

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
}
