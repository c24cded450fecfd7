//! The Graphite provider (upstream Argo `metricproviders/graphite`, Flagger's `graphite` type):
//! runs a render query (`target=…&from=…`) on graphite-web's `/render` API and returns the values.
//!
//! Decides:
//! - the request: `GET <address>/render?<query>&format=json` (a path prefix of the address is
//!   kept; runs of whitespace in the query become one space, as upstream), with a 10 s time cap;
//!   `authentication.basicAuth`, `headers` and `insecure` as Argo's prometheus provider takes them
//!   (Sluice additions: Argo's graphite has none; a Flagger template's `secretRef` maps onto them);
//! - the result, as upstream Argo: the first target's non-null values, in time order, as a list
//!   (`result[0]`, `len(result)`); no target, or a target without datapoints, is an error
//!   ("no values found") — upstream crashes on the first and errors on the second;
//! - what is an error: a status of 400 or more (graphite-web's answer quoted, cut), a body that is
//!   not render JSON, a value that is not a number.
//!
//! Must never: judge the values, or show a secret: the reported query comes from the masked
//! metric, passwords and header values are never shown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use serde_json::Value as Json;

use super::fields::Fields;
use super::http::{
    Auth, BODY_EXCERPT_CHARS, ERROR_BODY_BYTES, HttpClients, MAX_BODY_BYTES, describe_send_error,
    display_url, excerpt, parse_url, read_body, read_prefix,
};
use super::{MeasureContext, Provider};
use crate::api::argo::analysis::Metric;
use crate::engine::analysis::Observed;
use crate::engine::analysis::expr::Value;

/// Upstream's client timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs Graphite render queries.
#[derive(Debug)]
pub struct GraphiteProvider {
    http: Arc<HttpClients>,
}

impl GraphiteProvider {
    /// A provider drawing its HTTP clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self { http }
    }
}

#[async_trait]
impl Provider for GraphiteProvider {
    fn name(&self) -> &'static str {
        "graphite"
    }

    async fn run(&self, _ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let shown = Fields::of("graphite", masked.provider.graphite.as_ref()).ok();
        let shown_query = one_line(
            shown
                .and_then(|f| f.text("query").ok().flatten())
                .unwrap_or(""),
        );
        let shown_address = display_url(
            shown
                .and_then(|f| f.text("address").ok().flatten())
                .unwrap_or("*****"),
        );
        let fail = |detail: &str| Observed::Error {
            message: format!("graphite query {shown_query} to {shown_address} failed: {detail}"),
            query: Some(shown_query.clone()),
            metadata: BTreeMap::new(),
        };
        let request = match Request::from_metric(metric) {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        match request.send(&self.http).await {
            Ok(targets) => match targets.into_iter().next() {
                Some(values) if !values.is_empty() => Observed::Value {
                    result: Value::List(values.into_iter().flatten().map(Value::Number).collect()),
                    query: Some(shown_query),
                    metadata: BTreeMap::new(),
                },
                _ => fail("no values found: the query matched no series with datapoints"),
            },
            Err(e) => fail(&e),
        }
    }
}

/// Collapses runs of whitespace to one space, as upstream's `trimQuery`.
fn one_line(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One render request, read from the metric.
struct Request {
    base: Url,
    query: String,
    auth: Auth,
    headers: reqwest::header::HeaderMap,
    insecure: bool,
}

impl Request {
    fn from_metric(metric: &Metric) -> Result<Request, String> {
        let fields = Fields::of("graphite", metric.provider.graphite.as_ref())?;
        let address = fields.required("address")?;
        let base = parse_url(address)
            .map_err(|e| format!("provider.graphite.address is not a valid URL: {e}"))?;
        Ok(Request {
            base,
            query: one_line(fields.required("query")?),
            auth: fields.auth()?,
            headers: fields.headers()?,
            insecure: fields.flag("insecure")?,
        })
    }

    /// The render URL: the query's parameters (decoded as a form, as Go's `url.Query`) and
    /// `format=json`.
    fn url(&self) -> Result<Url, String> {
        let parsed = Url::parse(&format!("http://query.invalid/?{}", self.query))
            .map_err(|e| format!("the query is not URL query text: {e}"))?;
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| "the address cannot have a path".to_string())?
            .pop_if_empty()
            .push("render");
        url.set_query(None);
        url.query_pairs_mut()
            .extend_pairs(parsed.query_pairs().filter(|(k, _)| k != "format"))
            .append_pair("format", "json");
        Ok(url)
    }

    /// Sends the request; every target's values (`None` for a null datapoint), in response order.
    async fn send(&self, http: &HttpClients) -> Result<Vec<Vec<Option<f64>>>, String> {
        let url = self.url()?;
        let credentials = !self.headers.is_empty() || self.auth != Auth::None;
        let client = http
            .get(self.insecure, credentials)
            .map_err(|e| e.to_string())?;
        let request = client
            .get(url)
            .timeout(TIMEOUT)
            .headers(self.headers.clone());
        let response = self
            .auth
            .apply(request)
            .send()
            .await
            .map_err(|e| describe_send_error(&e, TIMEOUT))?;
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            let body = read_prefix(response, ERROR_BODY_BYTES, TIMEOUT).await;
            return Err(format!(
                "HTTP {status}: {}",
                excerpt(&body, BODY_EXCERPT_CHARS)
            ));
        }
        let body = read_body(response, MAX_BODY_BYTES, TIMEOUT)
            .await
            .map_err(|e| format!("HTTP {status}: {e}"))?;
        decode(&body)
    }
}

/// Render JSON (`[{"target": …, "datapoints": [[value, timestamp], …]}, …]`) to values.
fn decode(body: &[u8]) -> Result<Vec<Vec<Option<f64>>>, String> {
    let not_render = |why: &str| {
        format!(
            "the response is not Graphite render JSON ({why}): {}",
            excerpt(body, BODY_EXCERPT_CHARS)
        )
    };
    let json: Json = serde_json::from_slice(body).map_err(|e| not_render(&e.to_string()))?;
    let targets = json.as_array().ok_or_else(|| not_render("not a list"))?;
    targets
        .iter()
        .map(|target| {
            let points = target
                .get("datapoints")
                .and_then(Json::as_array)
                .ok_or_else(|| not_render("a target has no datapoints list"))?;
            points.iter().map(point).collect()
        })
        .collect()
}

/// One `[value, timestamp]` pair's value: a number, a numeric string, or null.
fn point(pair: &Json) -> Result<Option<f64>, String> {
    let value = match pair.as_array().map(Vec::as_slice) {
        Some([value, _]) => value,
        _ => return Err(format!("datapoint {pair} is not a [value, timestamp] pair")),
    };
    match value {
        Json::Null => Ok(None),
        Json::Number(n) => Ok(n.as_f64()),
        Json::String(s) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("datapoint value {s:?} is not a number")),
        other => Err(format!("datapoint value {other} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_support::{Reply, context, metric, serve};
    use k8s_openapi::jiff::Timestamp;

    fn graphite(address: &str, extra: &str) -> Metric {
        metric(&format!(
            "name: m\nprovider:\n  graphite:\n    address: {address}\n    query: |\n      target=sumSeries(app.errors.*)\n      &from=-5min\n{extra}"
        ))
    }

    #[test]
    fn render_json_is_decoded_and_nulls_kept_apart() {
        let body = br#"[{"target":"a","tags":{},"datapoints":[[1.5,1700000000],[null,1700000060],["2",1700000120]]},{"target":"b","datapoints":[]}]"#;
        assert_eq!(
            decode(body).unwrap(),
            vec![vec![Some(1.5), None, Some(2.0)], vec![]]
        );
        assert!(
            decode(b"<html>")
                .unwrap_err()
                .contains("not Graphite render JSON")
        );
        assert!(
            decode(br#"[{"datapoints":[[true,1]]}]"#)
                .unwrap_err()
                .contains("not a number")
        );
        assert!(decode(br#"[{"datapoints":[[1]]}]"#).is_err());
    }

    #[tokio::test]
    async fn queries_render_and_returns_the_first_targets_values() {
        let (url, seen) = serve(|_| {
            Reply::json(
                200,
                r#"[{"target":"sumSeries(app.errors.*)","datapoints":[[null,1],[3.0,2],[4.0,3]]},{"target":"x","datapoints":[[9,1]]}]"#,
            )
        })
        .await;
        let m = graphite(
            &format!("{url}/graphite/"),
            "    authentication: {basicAuth: {username: u, password: hunter2}}",
        );
        let observed = GraphiteProvider::new(Arc::default())
            .run(&context(Timestamp::UNIX_EPOCH), &m, &m)
            .await;
        match observed {
            Observed::Value { result, query, .. } => {
                assert_eq!(
                    result,
                    Value::List(vec![Value::Number(3.0), Value::Number(4.0)])
                );
                assert_eq!(
                    query.as_deref(),
                    Some("target=sumSeries(app.errors.*) &from=-5min")
                );
            }
            other => panic!("{other:?}"),
        }
        let request = seen.lock().unwrap()[0].clone();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/graphite/render");
        let q = request.query.clone().unwrap();
        assert!(
            q.contains("target=sumSeries%28app.errors.*%29") && q.ends_with("format=json"),
            "{q}"
        );
        assert_eq!(request.header("authorization"), Some("Basic dTpodW50ZXIy"));
    }

    #[tokio::test]
    async fn errors_and_empty_answers_are_errors_without_secrets() {
        let (url, _) = serve(|r| match r.query.as_deref().unwrap_or_default() {
            q if q.contains("empty") => Reply::json(200, "[]"),
            _ => Reply::with_type(500, "text/html", "<h1>Server Error</h1>"),
        })
        .await;
        let provider = GraphiteProvider::new(Arc::default());
        let ctx = context(Timestamp::UNIX_EPOCH);
        let m = graphite(
            &url,
            "    authentication: {basicAuth: {username: u, password: hunter2}}",
        );
        match provider.run(&ctx, &m, &m).await {
            Observed::Error { message, .. } => {
                assert!(
                    message.contains("HTTP 500") && message.contains("Server Error"),
                    "{message}"
                );
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let empty = metric(&format!(
            "name: m\nprovider: {{graphite: {{address: '{url}', query: 'target=empty'}}}}"
        ));
        match provider.run(&ctx, &empty, &empty).await {
            Observed::Error { message, .. } => {
                assert!(message.contains("no values found"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let no_address = metric("name: m\nprovider: {graphite: {query: 'target=x'}}");
        match provider.run(&ctx, &no_address, &no_address).await {
            Observed::Error { message, .. } => {
                assert!(
                    message.contains("provider.graphite.address is not set"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
