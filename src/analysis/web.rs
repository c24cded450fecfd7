//! The web provider (upstream `metricproviders/webmetric/webmetric.go`): calls a URL and returns the
//! part of its JSON answer that `jsonPath` selects.
//!
//! Decides:
//! - the request: `method` GET (default), POST or PUT; `body` or `jsonBody` (not both; a body is only
//!   sent with POST or PUT, as upstream, and `jsonBody` sets `Content-Type: application/json` unless a
//!   header sets it); `headers`; `timeoutSeconds` (default 10); `insecure`;
//! - the result: `jsonPath` in Kubernetes syntax (`{$.data.ok}`, `{.data.ok}`; default `{$}`, the
//!   whole body), evaluated as RFC 9535 JSONPath. One match is that value, several a list, none an
//!   error naming the path and quoting the body;
//! - what is an error rather than a value: a non-2xx status, an empty, `null` or non-JSON body.
//!   Upstream let such bodies pass whatever the conditions said (argo-rollouts #4535); here the
//!   measurement errors with the reason.
//!
//! Must never: judge the value, or show a secret: the reported query is `<METHOD> <masked url>`, error
//! messages name the masked URL, and header values, passwords and request bodies are never shown.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json_path::JsonPath;

use super::http::{
    Auth, BODY_EXCERPT_CHARS, HttpClients, MAX_BODY_BYTES, describe_answer, describe_send_error,
    display_url, excerpt, header_map, parse_url, read_body,
};
use super::{MeasureContext, Provider};
use crate::api::argo::analysis::Metric;
use crate::engine::analysis::Observed;
use crate::engine::analysis::expr::Value;

/// Calls web endpoints.
#[derive(Debug)]
pub struct WebProvider {
    http: Arc<HttpClients>,
}

impl WebProvider {
    /// A provider drawing its HTTP clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self { http }
    }
}

#[async_trait]
impl Provider for WebProvider {
    fn name(&self) -> &'static str {
        "web"
    }

    async fn run(&self, _ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let Some(web) = metric.provider.web.as_ref() else {
            return Observed::error(format!("metric {:?} has no web provider", metric.name));
        };
        let method_text = web.method().trim().to_ascii_uppercase();
        let shown_url = masked
            .provider
            .web
            .as_ref()
            .map_or_else(|| "*****".to_string(), |w| display_url(&w.url));
        let reported = format!("{method_text} {shown_url}");
        let fail = |detail: &str| Observed::Error {
            message: format!("web request {reported} failed: {detail}"),
            query: Some(reported.clone()),
            metadata: BTreeMap::new(),
        };

        let method = match method_text.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            other => {
                return fail(&format!(
                    "method {other:?} is not supported (GET, POST or PUT)"
                ));
            }
        };
        let url = match parse_url(&web.url) {
            Ok(url) => url,
            Err(e) => return fail(&format!("the url is not a valid URL: {e}")),
        };
        let path_text = web.json_path();
        let path = match parse_json_path(path_text) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        let mut headers = match header_map(&web.headers) {
            Ok(h) => h,
            Err(e) => return fail(&e),
        };
        let auth = match Auth::from_spec(web.authentication.as_ref()) {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let body = if method == Method::GET {
            // Upstream sends no body with GET whatever is set; so does Sluice.
            None
        } else {
            match (
                web.body.as_deref().filter(|b| !b.is_empty()),
                &web.json_body,
            ) {
                (Some(_), Some(_)) => {
                    return fail("body and jsonBody are both set; use one of them");
                }
                (Some(body), None) => Some(body.as_bytes().to_vec()),
                (None, Some(json)) => {
                    if !headers.contains_key(CONTENT_TYPE) {
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    }
                    match serde_json::to_vec(json) {
                        Ok(bytes) => Some(bytes),
                        Err(e) => return fail(&format!("jsonBody cannot be encoded: {e}")),
                    }
                }
                (None, None) => None,
            }
        };
        let timeout = web.timeout();
        let credentials = !headers.is_empty() || auth != Auth::None;
        let client = match self.http.get(web.insecure(), credentials) {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        };

        let mut request = client
            .request(method, url)
            .timeout(timeout)
            .headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = match auth.apply(request).send().await {
            Ok(r) => r,
            Err(e) => return fail(&describe_send_error(&e, timeout)),
        };
        if !response.status().is_success() {
            return fail(&describe_answer(response, timeout).await);
        }
        let bytes = match read_body(response, MAX_BODY_BYTES, timeout).await {
            Ok(b) => b,
            Err(e) => return fail(&e),
        };
        match select(&bytes, &path, path_text) {
            Ok(result) => Observed::Value {
                result,
                query: Some(reported),
                metadata: BTreeMap::new(),
            },
            Err(e) => fail(&e),
        }
    }
}

/// Parses a Kubernetes-style JSONPath (`{$.data.ok}`, `{.data.ok}`, `{.items[0]}`) as RFC 9535
/// JSONPath. Kubernetes templates with text around or between expressions (`{range}`, `{end}`,
/// several `{…}`) are not paths and are refused.
pub fn parse_json_path(k8s: &str) -> Result<JsonPath, String> {
    let trimmed = k8s.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(trimmed)
        .trim();
    let rfc = if inner.starts_with('$') {
        inner.to_string()
    } else if inner.starts_with('.') || inner.starts_with('[') {
        format!("${inner}")
    } else if inner.is_empty() {
        return Err(format!("jsonPath {k8s:?} is empty"));
    } else {
        format!("$.{inner}")
    };
    JsonPath::parse(&rfc).map_err(|e| format!("jsonPath {k8s:?} is not a supported JSONPath: {e}"))
}

/// The value `path` selects in a response body, or why there is none.
fn select(body: &[u8], path: &JsonPath, path_text: &str) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the response body is empty; expected JSON".into());
    }
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the response body is not JSON ({e}): {}",
            excerpt(body, BODY_EXCERPT_CHARS)
        )
    })?;
    if json.is_null() {
        return Err("the response body is JSON null; there is nothing to judge".into());
    }
    let matches = path.query(&json).all();
    match matches.as_slice() {
        [] => Err(format!(
            "jsonPath {path_text} matched nothing in the response: {}",
            excerpt(body, BODY_EXCERPT_CHARS)
        )),
        [one] => Ok(Value::from_json(one)),
        many => Ok(Value::List(
            many.iter().map(|v| Value::from_json(v)).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::analysis::test_support::{Reply, context, metric, serve};

    fn web(url: &str, extra: &str) -> Metric {
        metric(&format!(
            "name: m\nprovider:\n  web:\n    url: '{url}'\n{extra}"
        ))
    }

    async fn run(m: &Metric) -> Observed {
        WebProvider::new(Arc::default())
            .run(&context(Timestamp::UNIX_EPOCH), m, m)
            .await
    }

    fn error_message(o: Observed) -> String {
        match o {
            Observed::Error { message, .. } => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn json_paths_in_kubernetes_syntax() {
        let doc = serde_json::json!({"data": {"ok": true, "items": [{"v": 1}, {"v": 2}]}});
        let select_json =
            |p: &str| select(doc.to_string().as_bytes(), &parse_json_path(p).unwrap(), p);
        assert_eq!(select_json("{$.data.ok}").unwrap(), Value::Bool(true));
        assert_eq!(select_json("{.data.ok}").unwrap(), Value::Bool(true));
        assert_eq!(select_json("$.data.ok").unwrap(), Value::Bool(true));
        assert_eq!(
            select_json("{.data.items[1].v}").unwrap(),
            Value::Number(2.0)
        );
        assert_eq!(
            select_json("{.data.items[*].v}").unwrap(),
            Value::List(vec![Value::Number(1.0), Value::Number(2.0)])
        );
        assert_eq!(
            select_json("{.data.items[?(@.v > 1)].v}").unwrap(),
            Value::Number(2.0)
        );
        assert!(matches!(select_json("{$}").unwrap(), Value::Map(_)));
        let err = select_json("{$.data.missing}").unwrap_err();
        assert!(err.contains("{$.data.missing} matched nothing"), "{err}");
        assert!(err.contains("\"ok\":true"), "{err}");
        assert!(parse_json_path("{range .items[*]}{.v}{end}").is_err());
        assert!(parse_json_path("{}").is_err());
    }

    #[tokio::test]
    async fn json_body_and_path() {
        let (base, seen) = serve(|_| Reply::json(200, r#"{"data":{"ok":true,"rate":0.99}}"#)).await;
        let m = web(
            &format!("{base}/health?token=abc"),
            "    jsonPath: '{$.data.rate}'\n    headers:\n    - {key: X-Api-Key, value: k123}\n",
        );
        match run(&m).await {
            Observed::Value { result, query, .. } => {
                assert_eq!(result, Value::Number(0.99));
                assert_eq!(query.unwrap(), format!("GET {base}/health?token=abc"));
            }
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].path, "/health");
        assert_eq!(seen[0].header("x-api-key"), Some("k123"));
        assert!(seen[0].body.is_empty());
    }

    #[tokio::test]
    async fn post_json_body_reaches_the_server() {
        let (base, seen) = serve(|r| Reply::json(200, &r.body_text())).await;
        let m = web(
            &base,
            "    method: POST\n    jsonBody: {check: canary, n: 3}\n    jsonPath: '{$.n}'\n",
        );
        match run(&m).await {
            Observed::Value { result, query, .. } => {
                assert_eq!(result, Value::Number(3.0));
                assert_eq!(query.unwrap(), format!("POST {base}/"));
            }
            other => panic!("{other:?}"),
        }
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen[0].method, "POST");
            assert_eq!(seen[0].header("content-type"), Some("application/json"));
            let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
            assert_eq!(sent, serde_json::json!({"check": "canary", "n": 3}));
        }

        // The server echoes the body back; plain text is not JSON, and the error quotes it.
        let put = web(&base, "    method: put\n    body: 'plain text'\n");
        let err = error_message(run(&put).await);
        assert!(
            err.contains("not JSON") && err.contains("plain text"),
            "{err}"
        );
        assert!(
            err.starts_with(&format!("web request PUT {base}/ failed")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_bodies_are_errors_never_values() {
        let (base, _) = serve(|r| match r.path.as_str() {
            "/null" => Reply::json(200, "null"),
            "/html" => Reply::with_type(200, "text/html", "<html>login</html>"),
            "/empty" => Reply::json(200, ""),
            "/500" => Reply::json(500, r#"{"error":"backend down"}"#),
            _ => Reply::json(404, "no"),
        })
        .await;
        let null = error_message(run(&web(&format!("{base}/null"), "")).await);
        assert!(null.contains("JSON null"), "{null}");
        let html = error_message(run(&web(&format!("{base}/html"), "")).await);
        assert!(
            html.contains("not JSON") && html.contains("<html>login</html>"),
            "{html}"
        );
        let empty = error_message(run(&web(&format!("{base}/empty"), "")).await);
        assert!(empty.contains("empty"), "{empty}");
        let status = error_message(run(&web(&format!("{base}/500"), "")).await);
        assert_eq!(
            status,
            format!(
                "web request GET {base}/500 failed: HTTP 500 Internal Server Error: {{\"error\":\"backend down\"}}"
            )
        );
    }

    #[tokio::test]
    async fn configuration_and_transport_errors() {
        let (base, _) = serve(|_| Reply::json(200, "{}").after(Duration::from_secs(5))).await;
        let slow = error_message(run(&web(&base, "    timeoutSeconds: 1\n")).await);
        assert!(slow.ends_with("timed out after 1s"), "{slow}");

        let both = web(
            &base,
            "    method: POST\n    body: x\n    jsonBody: {a: 1}\n",
        );
        assert!(error_message(run(&both).await).contains("both set"));
        let delete = web(&base, "    method: DELETE\n");
        assert!(error_message(run(&delete).await).contains("not supported"));
        let bad_url = web("not-a-url", "");
        assert!(error_message(run(&bad_url).await).contains("not a valid URL"));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = error_message(run(&web(&format!("http://127.0.0.1:{port}/x"), "")).await);
        assert!(
            refused.starts_with(&format!(
                "web request GET http://127.0.0.1:{port}/x failed: "
            )),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn secrets_stay_masked() {
        let (base, _) = serve(|_| Reply::json(503, "unavailable")).await;
        let real = web(
            &format!("{base}/q?key=hunter2"),
            "    headers:\n    - {key: Authorization, value: Bearer hunter2}\n",
        );
        let mut masked = real.clone();
        if let Some(w) = masked.provider.web.as_mut() {
            w.url = format!("{base}/q?key=*****");
            w.headers[0].value = "Bearer *****".into();
        }
        let observed = WebProvider::new(Arc::default())
            .run(&context(Timestamp::UNIX_EPOCH), &real, &masked)
            .await;
        let text = format!("{observed:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("key=*****"), "{text}");
    }
}
