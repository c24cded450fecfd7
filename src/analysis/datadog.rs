//! The Datadog provider (upstream Argo `metricproviders/datadog`, Flagger's `datadog` type):
//! runs a metrics query over the last `interval` and returns one number.
//!
//! Decides:
//! - the keys: as Argo, the Secret `secretRef.name` (default `datadog`) with `api-key`, `app-key`
//!   and the optional `address` — read from the AnalysisRun's namespace (Argo reads the
//!   controller's unless `secretRef.namespaced`); or, a Sluice addition a Flagger template maps
//!   onto, `apiKey` and `appKey` in the metric itself (then no Secret is read);
//! - the request, as upstream: `apiVersion: v1` (the default) is
//!   `GET <address>/api/v1/query?query=…&from=…&to=…` (seconds); `v2` is
//!   `POST <address>/api/v2/query/scalar` with `queries` (or `query` as the one query `query`),
//!   the optional `formula` and `aggregator` (default `last`), from/to in milliseconds; both with
//!   `DD-API-KEY` and `DD-APPLICATION-KEY`; `interval` (default 5m) is the window, `requestTimeout`
//!   (default 10s) the time cap;
//! - the value, as upstream: v1 the last point of the first series, v2 the first value of the
//!   first column; an empty answer is `null` (the conditions decide what that means);
//! - that every non-2xx answer (403 bad keys, 429 rate limited with its `Retry-After`) is an
//!   Error measurement, never a failure.
//!
//! Must never: judge the value, show a key (never in a message, a query or a log), or read more
//! than the bounded body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Value as Json, json};

use super::fields::Fields;
use super::http::{
    BODY_EXCERPT_CHARS, ERROR_BODY_BYTES, HttpClients, MAX_BODY_BYTES, describe_send_error,
    display_url, excerpt, parse_url, read_body, read_prefix,
};
use super::{MeasureContext, Provider};
use crate::api::argo::analysis::Metric;
use crate::engine::analysis::Observed;
use crate::engine::analysis::expr::Value;

/// Upstream's defaults.
const DEFAULT_ADDRESS: &str = "https://api.datadoghq.com";
const DEFAULT_SECRET: &str = "datadog";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs Datadog queries.
#[derive(Debug)]
pub struct DatadogProvider {
    http: Arc<HttpClients>,
}

impl DatadogProvider {
    /// A provider drawing its HTTP clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self { http }
    }
}

#[async_trait]
impl Provider for DatadogProvider {
    fn name(&self) -> &'static str {
        "datadog"
    }

    async fn run(&self, ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let shown_query = Fields::of("datadog", masked.provider.datadog.as_ref())
            .ok()
            .map(|f| shown_query(&f))
            .unwrap_or_default();
        let fail = |detail: &str| Observed::Error {
            message: format!("datadog query {shown_query} failed: {detail}"),
            query: Some(shown_query.clone()),
            metadata: BTreeMap::new(),
        };
        let request = match Request::resolve(ctx, metric).await {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        let now = ctx.now.as_second();
        match request.send(&self.http, now).await {
            Ok(value) => Observed::Value {
                result: value,
                query: Some(shown_query.clone()),
                metadata: BTreeMap::new(),
            },
            Err(e) => fail(&format!("{}: {e}", display_url(&request.address))),
        }
    }
}

/// The query as recorded: v1's `query`, or v2's queries (`name: query`, by name) and formula.
fn shown_query(fields: &Fields<'_>) -> String {
    if let Ok(Some(query)) = fields.text("query") {
        return query.to_string();
    }
    let queries: BTreeMap<String, String> =
        fields.decode("queries").ok().flatten().unwrap_or_default();
    let mut parts: Vec<String> = queries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    if let Ok(Some(formula)) = fields.text("formula") {
        parts.push(format!("formula: {formula}"));
    }
    parts.join("; ")
}

/// One query with its resolved settings.
struct Request {
    address: String,
    v2: bool,
    queries: BTreeMap<String, String>,
    formula: Option<String>,
    aggregator: String,
    interval: Duration,
    timeout: Duration,
    api_key: String,
    app_key: String,
}

impl Request {
    async fn resolve(ctx: &MeasureContext, metric: &Metric) -> Result<Request, String> {
        let fields = Fields::of("datadog", metric.provider.datadog.as_ref())?;
        let v2 = match fields.text("apiVersion")? {
            None | Some("v1") => false,
            Some("v2") => true,
            Some(_) => return Err("provider.datadog.apiVersion must be v1 or v2".into()),
        };
        let query = fields.text("query")?;
        let queries: BTreeMap<String, String> = fields.decode("queries")?.unwrap_or_default();
        let formula = fields.text("formula")?.map(str::to_string);
        let aggregator = fields.text("aggregator")?;
        validate(
            v2,
            query.is_some(),
            queries.len(),
            formula.is_some(),
            aggregator.is_some(),
        )?;
        let queries = match query {
            Some(q) => BTreeMap::from([("query".to_string(), q.to_string())]),
            None => queries,
        };
        let (address, api_key, app_key) = match (fields.text("apiKey")?, fields.text("appKey")?) {
            (Some(api), Some(app)) => (
                fields.text("address")?.map(str::to_string),
                api.to_string(),
                app.to_string(),
            ),
            _ => keys_secret(ctx, &fields).await?,
        };
        let address = address.unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        parse_url(&address).map_err(|e| format!("the address is not a valid URL: {e}"))?;
        Ok(Request {
            address: address.trim_end_matches('/').to_string(),
            v2,
            queries,
            formula,
            aggregator: aggregator.unwrap_or("last").to_string(),
            interval: duration(&fields, "interval", DEFAULT_INTERVAL)?,
            timeout: duration(&fields, "requestTimeout", DEFAULT_TIMEOUT)?,
            api_key,
            app_key,
        })
    }

    async fn send(&self, http: &HttpClients, now: i64) -> Result<Value, String> {
        let mut headers = HeaderMap::new();
        for (name, key, field) in [
            ("dd-api-key", &self.api_key, "api-key"),
            ("dd-application-key", &self.app_key, "app-key"),
        ] {
            let mut value = HeaderValue::from_str(key)
                .map_err(|_| format!("the {field} is not a valid HTTP header value"))?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static(name), value);
        }
        let client = http.get(false, true).map_err(|e| e.to_string())?;
        let window = i64::try_from(self.interval.as_secs()).unwrap_or(i64::MAX);
        let from = now.saturating_sub(window);
        let request = if self.v2 {
            let queries: Vec<Json> = self
                .queries
                .iter()
                .map(|(name, query)| {
                    json!({"aggregator": self.aggregator, "data_source": "metrics",
                        "name": name, "query": query})
                })
                .collect();
            let formulas: Vec<Json> = self.formula.iter().map(|f| json!({"formula": f})).collect();
            client
                .post(format!("{}/api/v2/query/scalar", self.address))
                .json(&json!({"data": {"type": "scalar_request", "attributes": {
                    "from": from.saturating_mul(1000), "to": now.saturating_mul(1000),
                    "queries": queries, "formulas": formulas}}}))
        } else {
            let query = self.queries.values().next().cloned().unwrap_or_default();
            client
                .get(format!("{}/api/v1/query", self.address))
                .query(&[
                    ("query", query),
                    ("from", from.to_string()),
                    ("to", now.to_string()),
                ])
        };
        let response = request
            .timeout(self.timeout)
            .headers(headers)
            .send()
            .await
            .map_err(|e| describe_send_error(&e, self.timeout))?;
        let status = response.status();
        if !status.is_success() {
            let retry = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(|v| format!(" (rate limited; Datadog asks to retry after {v} s)"))
                .filter(|_| status.as_u16() == 429)
                .unwrap_or_default();
            let body = read_prefix(response, ERROR_BODY_BYTES, self.timeout).await;
            let hint = if matches!(status.as_u16(), 401 | 403) {
                " (check the api-key and app-key)"
            } else {
                ""
            };
            return Err(format!("HTTP {status}{retry}{hint}: {}", error_text(&body)));
        }
        let body = read_body(response, MAX_BODY_BYTES, self.timeout)
            .await
            .map_err(|e| format!("HTTP {status}: {e}"))?;
        if self.v2 {
            v2_value(&body)
        } else {
            v1_value(&body)
        }
    }
}

/// Upstream's `validateIncomingProps`, each rule naming the fields.
fn validate(
    v2: bool,
    query: bool,
    queries: usize,
    formula: bool,
    aggregator: bool,
) -> Result<(), String> {
    let error = match () {
        () if !query && queries == 0 => "provider.datadog needs query or queries",
        () if query && queries > 0 => "provider.datadog.query and queries cannot both be set",
        () if !v2 && !query => "provider.datadog.apiVersion v1 takes only query (queries need v2)",
        () if formula && queries == 0 => "provider.datadog.formula needs queries",
        () if !formula && queries > 1 => "provider.datadog.queries: several queries need a formula",
        () if !v2 && aggregator => "provider.datadog.aggregator needs apiVersion v2",
        () => return Ok(()),
    };
    Err(error.to_string())
}

/// A duration key (`5m`, `30s`), or its default.
fn duration(fields: &Fields<'_>, key: &str, default: Duration) -> Result<Duration, String> {
    match fields.text(key)? {
        None => Ok(default),
        Some(text) => crate::api::flagger::canary::parse_go_duration(text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("provider.datadog.{key} is not a positive duration (e.g. 5m)")),
    }
}

/// `address`, `api-key` and `app-key` from the keys Secret in the run's namespace. Errors name the
/// Secret and the keys, never a value.
async fn keys_secret(
    ctx: &MeasureContext,
    fields: &Fields<'_>,
) -> Result<(Option<String>, String, String), String> {
    #[derive(serde::Deserialize, Default)]
    struct SecretRef {
        name: Option<String>,
    }
    let reference: SecretRef = fields.decode("secretRef")?.unwrap_or_default();
    let name = reference
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SECRET.to_string());
    let keys = super::secret::keys(
        ctx,
        &name,
        "provider.datadog.secretRef",
        "api-key and app-key (and optionally address)",
    )
    .await?;
    let key = |k: &str| keys.get(k);
    match (key("api-key"), key("app-key")) {
        (Some(api), Some(app)) => Ok((key("address"), api, app)),
        _ => Err(format!("{} needs both api-key and app-key", keys.label)),
    }
}

/// Datadog's error answer in words: its `errors` list, else the body start.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|j| {
            let errors = j.get("errors")?;
            Some(match errors {
                Json::Array(items) => items
                    .iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join("; "),
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
        .unwrap_or_else(|| excerpt(body, BODY_EXCERPT_CHARS))
}

fn parse(body: &[u8]) -> Result<Json, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "the response is not Datadog JSON ({e}): {}",
            excerpt(body, BODY_EXCERPT_CHARS)
        )
    })
}

fn number(v: Option<&Json>) -> Value {
    v.and_then(Json::as_f64).map_or(Value::Null, Value::Number)
}

/// v1: the value of the last point of the first series.
fn v1_value(body: &[u8]) -> Result<Value, String> {
    let json = parse(body)?;
    if let Some(error) = json.get("error").and_then(Json::as_str) {
        return Err(error.to_string());
    }
    let last = json
        .pointer("/series/0/pointlist")
        .and_then(Json::as_array)
        .and_then(|points| points.last());
    match last {
        None => Ok(Value::Null),
        Some(point) => match point.as_array().map(Vec::as_slice) {
            Some([_, value]) => Ok(number(Some(value))),
            _ => Err("a datapoint does not have 2 values".into()),
        },
    }
}

/// v2 (scalar): the first value of the first column; the answer's `errors` is the error.
fn v2_value(body: &[u8]) -> Result<Value, String> {
    let json = parse(body)?;
    if let Some(errors) = json
        .pointer("/data/errors")
        .and_then(Json::as_str)
        .filter(|e| !e.is_empty())
    {
        return Err(format!("there were errors in the query: {errors}"));
    }
    Ok(number(json.pointer("/data/attributes/columns/0/values/0")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_support::{Reply, context, serve};
    use k8s_openapi::jiff::Timestamp;

    const V1: &str = include_str!("../../tests/data/datadog-v1-query.json");
    const V2: &str = include_str!("../../tests/data/datadog-v2-scalar.json");

    fn metric(yaml: &str) -> Metric {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn recorded_answers_give_upstreams_value() {
        assert_eq!(v1_value(V1.as_bytes()).unwrap(), Value::Number(0.5));
        assert_eq!(v2_value(V2.as_bytes()).unwrap(), Value::Number(0.25));
        assert_eq!(v1_value(br#"{"series":[]}"#).unwrap(), Value::Null);
        assert_eq!(
            v2_value(br#"{"data":{"errors":"bad query"}}"#).unwrap_err(),
            "there were errors in the query: bad query"
        );
        assert_eq!(error_text(br#"{"errors":["Forbidden"]}"#), "Forbidden");
    }

    #[test]
    fn upstreams_validation() {
        assert!(validate(false, true, 0, false, false).is_ok());
        assert!(validate(true, false, 2, true, true).is_ok());
        assert!(validate(false, false, 0, false, false).is_err());
        assert!(validate(true, true, 1, false, false).is_err());
        assert!(validate(false, false, 1, false, false).is_err());
        assert!(validate(true, false, 2, false, false).is_err());
        assert!(validate(false, true, 0, false, true).is_err());
    }

    #[tokio::test]
    async fn v2_posts_queries_and_formula_with_both_keys() {
        let (url, seen) = serve(|_| Reply::json(200, V2)).await;
        let m = metric(&format!(
            "name: m\nprovider: {{datadog: {{apiVersion: v2, address: '{url}', apiKey: k1, appKey: k2, interval: 1m, queries: {{a: 'sum:e{{*}}', b: 'sum:r{{*}}'}}, formula: a / b}}}}"
        ));
        let observed = DatadogProvider::new(Arc::default())
            .run(&context(Timestamp::from_second(1000).unwrap()), &m, &m)
            .await;
        match observed {
            Observed::Value { result, query, .. } => {
                assert_eq!(result, Value::Number(0.25));
                assert_eq!(
                    query.as_deref(),
                    Some("a: sum:e{*}; b: sum:r{*}; formula: a / b")
                );
            }
            other => panic!("{other:?}"),
        }
        let request = seen.lock().unwrap()[0].clone();
        assert_eq!(request.path, "/api/v2/query/scalar");
        assert_eq!(request.header("dd-api-key"), Some("k1"));
        assert_eq!(request.header("dd-application-key"), Some("k2"));
        let body: Json = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["data"]["attributes"]["from"], 940_000);
        assert_eq!(body["data"]["attributes"]["to"], 1_000_000);
        assert_eq!(
            body["data"]["attributes"]["queries"][0]["aggregator"],
            "last"
        );
    }

    #[tokio::test]
    async fn rate_limits_are_errors_naming_retry_after_without_keys() {
        let (url, _) = serve(|_| Reply::json(429, r#"{"errors":["Rate limit exceeded"]}"#)).await;
        let m = metric(&format!(
            "name: m\nprovider: {{datadog: {{address: '{url}', apiKey: s3cret, appKey: s3cret, query: 'avg:x{{*}}'}}}}"
        ));
        match DatadogProvider::new(Arc::default())
            .run(&context(Timestamp::UNIX_EPOCH), &m, &m)
            .await
        {
            Observed::Error { message, .. } => {
                assert!(
                    message.contains("429") && message.contains("Rate limit"),
                    "{message}"
                );
                assert!(!message.contains("s3cret"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
