//! The Prometheus provider (upstream `metricproviders/prometheus/prometheus.go`): runs a metric's
//! PromQL as an instant query, or as a range query when `rangeQuery` is set, and returns the samples.
//!
//! Decides:
//! - the result shape, as upstream `processResponse`: a scalar is a number, a vector a list of numbers
//!   (one per series, in response order, so no data is `[]`), a matrix the flat list of every value of
//!   every series (the documented `all(result, # < 1000)` checks each one). `NaN`, `+Inf` and `-Inf`
//!   stay IEEE values; a string result or native-histogram samples are errors;
//! - the range window, from a small expression grammar over the measurement's time
//!   ([`resolve_time`]);
//! - how a failure reads: `prometheus query <masked query> to <address> failed: <Prometheus' errorType:
//!   error>`, or the HTTP status and body start, or the transport's own words.
//!
//! Must never: judge the samples (the engine does), show a secret argument (reported queries and
//! messages come from the masked metric; header values and passwords are never shown), or build an
//! HTTP client per measurement (clients come from the shared [`HttpClients`] cache).
//!
//! Requests follow the Go client: POST `application/x-www-form-urlencoded` to `/api/v1/query` or
//! `/api/v1/query_range` under the address (a path prefix is kept), falling back to GET when the
//! server answers 405 or 501.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::http::{
    Auth, BODY_EXCERPT_CHARS, HttpClients, MAX_BODY_BYTES, describe_send_error, display_url,
    excerpt, header_map, parse_url, read_body,
};
use super::{MeasureContext, Provider};
use crate::api::argo::analysis::{Metric, PrometheusRangeQueryArgs};
use crate::engine::analysis::Observed;
use crate::engine::analysis::expr::Value;

/// Largest error answer read (Prometheus' `{"status":"error",...}` JSON is far smaller).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Metric-result metadata key holding the (masked) query, as upstream names it.
pub const RESOLVED_QUERY_KEY: &str = "ResolvedPrometheusQuery";
/// Measurement metadata key holding Prometheus' warnings, formatted as upstream (`"w1", "w2"`).
pub const WARNINGS_KEY: &str = "warnings";
/// Measurement metadata key holding Prometheus' info annotations (Prometheus 3), same format.
pub const INFOS_KEY: &str = "infos";

/// Runs Prometheus queries.
#[derive(Debug)]
pub struct PrometheusProvider {
    http: Arc<HttpClients>,
}

impl PrometheusProvider {
    /// A provider drawing its HTTP clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self { http }
    }
}

#[async_trait]
impl Provider for PrometheusProvider {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn metric_metadata(&self, masked: &Metric) -> BTreeMap<String, String> {
        masked
            .provider
            .prometheus
            .as_ref()
            .and_then(|p| p.query.as_deref())
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(|q| BTreeMap::from([(RESOLVED_QUERY_KEY.to_string(), q.to_string())]))
            .unwrap_or_default()
    }

    async fn run(&self, ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let Some(prom) = metric.provider.prometheus.as_ref() else {
            return Observed::error(format!(
                "metric {:?} has no prometheus provider",
                metric.name
            ));
        };
        let masked_prom = masked.provider.prometheus.as_ref();
        let masked_query = masked_prom
            .and_then(|p| p.query.as_deref())
            .map(str::trim)
            .unwrap_or_default();

        // The address shown is the masked one (or the controller default, which holds no secret).
        let metric_address = non_empty(prom.address.as_deref());
        let (address, shown_address) = match metric_address {
            Some(address) => (
                address.to_string(),
                display_url(
                    non_empty(masked_prom.and_then(|p| p.address.as_deref())).unwrap_or("*****"),
                ),
            ),
            None => match non_empty(ctx.default_prometheus_address.as_deref()) {
                Some(address) => (address.to_string(), display_url(address)),
                None => {
                    return Observed::Error {
                        message: format!(
                            "prometheus query {} failed: prometheus address is not configured: set provider.prometheus.address or the controller's default Prometheus address",
                            one_line(masked_query)
                        ),
                        query: Some(masked_query.to_string()),
                        metadata: BTreeMap::new(),
                    };
                }
            },
        };

        let range = match prom.range_query.as_ref() {
            None => Ok(None),
            Some(args) => resolve_range(args, ctx.now).map(Some),
        };
        let reported = match &range {
            Ok(Some(r)) => format!(
                "{masked_query} (range: start {}, end {}, step {})",
                r.start, r.end, r.step_text
            ),
            _ => masked_query.to_string(),
        };
        let fail = |detail: &str| Observed::Error {
            message: format!(
                "prometheus query {} to {shown_address} failed: {detail}",
                one_line(&reported)
            ),
            query: Some(reported.clone()),
            metadata: BTreeMap::new(),
        };
        let range = match range {
            Ok(range) => range,
            Err(e) => return fail(&e),
        };
        let Some(query) = non_empty(prom.query.as_deref()) else {
            return fail("the metric has no query");
        };
        let auth = match Auth::from_spec(prom.authentication.as_ref()) {
            Ok(auth) => auth,
            Err(e) => return fail(&e),
        };
        let headers = match header_map(&prom.headers) {
            Ok(h) => h,
            Err(e) => return fail(&e),
        };
        let base = match parse_url(&address) {
            Ok(url) => url,
            Err(e) => return fail(&format!("the address is not a valid URL: {e}")),
        };
        let timeout = prom.timeout();
        let credentials = !headers.is_empty() || auth != Auth::None;
        let client = match self.http.get(prom.insecure(), credentials) {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        };

        let request = ApiRequest {
            client: &client,
            base: &base,
            headers: &headers,
            auth: &auth,
            timeout,
        };
        let outcome = match &range {
            None => {
                let params = [("query", query.to_string()), ("time", ctx.now.to_string())];
                request.call("query", &params).await
            }
            Some(r) => {
                let params = [
                    ("query", query.to_string()),
                    ("start", r.start.to_string()),
                    ("end", r.end.to_string()),
                    ("step", r.step.as_secs_f64().to_string()),
                ];
                request.call("query_range", &params).await
            }
        };
        match outcome {
            Ok(decoded) => {
                let mut metadata = BTreeMap::new();
                if let Some(w) = quote_list(&decoded.warnings) {
                    // Their text stays out of the log: Prometheus may quote the query it ran,
                    // secret arguments included; the engine masks it on the measurement.
                    tracing::warn!(query = %one_line(&reported), count = decoded.warnings.len(), "Prometheus returned warnings (see the measurement's metadata)");
                    metadata.insert(WARNINGS_KEY.to_string(), w);
                }
                if let Some(i) = quote_list(&decoded.infos) {
                    metadata.insert(INFOS_KEY.to_string(), i);
                }
                Observed::Value {
                    result: decoded.value,
                    query: Some(reported),
                    metadata,
                }
            }
            Err(detail) => fail(&detail),
        }
    }
}

/// One Prometheus API call's fixed parts.
struct ApiRequest<'a> {
    client: &'a reqwest::Client,
    base: &'a Url,
    headers: &'a HeaderMap,
    auth: &'a Auth,
    timeout: Duration,
}

impl ApiRequest<'_> {
    /// POSTs the form to `/api/v1/<endpoint>` (GET when the server refuses POST) and decodes the answer.
    async fn call(&self, endpoint: &str, params: &[(&str, String)]) -> Result<Decoded, String> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| "the address cannot have a path".to_string())?
            .pop_if_empty()
            .extend(["api", "v1", endpoint]);

        let post = self
            .client
            .post(url.clone())
            .timeout(self.timeout)
            .headers(self.headers.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .body(form_encode(&url, params));
        let mut response = self
            .auth
            .apply(post)
            .send()
            .await
            .map_err(|e| describe_send_error(&e, self.timeout))?;
        if matches!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
            let get = self
                .client
                .get(url)
                .timeout(self.timeout)
                .headers(self.headers.clone());
            response = self
                .auth
                .apply(get)
                .send()
                .await
                .map_err(|e| describe_send_error(&e, self.timeout))?;
        }
        let status = response.status();
        // Prometheus' own error answers are small JSON; a longer one is read no further.
        let limit = if status.is_success() {
            MAX_BODY_BYTES
        } else {
            MAX_ERROR_BODY_BYTES
        };
        let body = read_body(response, limit, self.timeout)
            .await
            .map_err(|e| format!("HTTP {status}: {e}"))?;
        decode(status, &body)
    }
}

/// `application/x-www-form-urlencoded` text of the parameters.
fn form_encode(url: &Url, params: &[(&str, String)]) -> String {
    // `Url` carries a standards-conforming form encoder; borrowing it avoids another dependency.
    let mut scratch = url.clone();
    scratch.set_query(None);
    scratch
        .query_pairs_mut()
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    scratch.query().unwrap_or_default().to_string()
}

/// A decoded Prometheus answer.
#[derive(Debug, PartialEq)]
struct Decoded {
    value: Value,
    warnings: Vec<String>,
    infos: Vec<String>,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    infos: Vec<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: serde_json::Value,
}

/// Turns an HTTP answer into samples, or into Prometheus' own explanation of why not.
fn decode(status: StatusCode, body: &[u8]) -> Result<Decoded, String> {
    let http_error = || format!("HTTP {status}: {}", excerpt(body, BODY_EXCERPT_CHARS));
    let response: ApiResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(_) if !status.is_success() => return Err(http_error()),
        Err(e) => {
            return Err(format!(
                "the response is not Prometheus API JSON ({e}): {}",
                excerpt(body, BODY_EXCERPT_CHARS)
            ));
        }
    };
    if response.status == "error" {
        let kind = response.error_type.as_deref().unwrap_or("error");
        let text = response.error.as_deref().unwrap_or("no error message");
        return Err(format!("{kind}: {text}"));
    }
    if !status.is_success() {
        return Err(http_error());
    }
    let data = response
        .data
        .ok_or_else(|| "the response has status success but no data".to_string())?;
    Ok(Decoded {
        value: convert(&data)?,
        warnings: response.warnings,
        infos: response.infos,
    })
}

/// A result as the conditions see it (upstream `processResponse`, plus matrices).
fn convert(data: &ApiData) -> Result<Value, String> {
    let series = || {
        data.result
            .as_array()
            .ok_or_else(|| format!("the {} result is not a list", data.result_type))
    };
    match data.result_type.as_str() {
        "scalar" => sample(&data.result).map(Value::Number),
        "vector" => series()?
            .iter()
            .map(|s| match s.get("value") {
                Some(pair) => sample(pair).map(Value::Number),
                None if s.get("histogram").is_some() => Err(histogram_error()),
                None => Err("a vector sample has no value".into()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
        "matrix" => {
            let mut values = Vec::new();
            for s in series()? {
                if s.get("histograms").is_some() {
                    return Err(histogram_error());
                }
                let points = s
                    .get("values")
                    .and_then(serde_json::Value::as_array)
                    .ok_or_else(|| "a matrix series has no values".to_string())?;
                for point in points {
                    values.push(Value::Number(sample(point)?));
                }
            }
            Ok(Value::List(values))
        }
        other => Err(format!(
            "prometheus returned a {other} result; only scalar, vector and matrix results can be judged"
        )),
    }
}

fn histogram_error() -> String {
    "the result holds native histogram samples, which cannot be judged as numbers; \
     wrap the query in histogram_quantile(), histogram_count() or histogram_sum()"
        .into()
}

/// The value of a `[timestamp, "value"]` pair. Prometheus writes floats as strings so that `NaN`,
/// `+Inf` and `-Inf` survive JSON; Rust's float parser reads all three.
fn sample(pair: &serde_json::Value) -> Result<f64, String> {
    let text = pair
        .get(1)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("malformed sample {pair}"))?;
    f64::from_str(text).map_err(|_| format!("sample value {text:?} is not a number"))
}

/// Upstream's metadata format for warnings: `"w1", "w2"`; `None` when there are none.
fn quote_list(items: &[String]) -> Option<String> {
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// A query on one line, for messages (queries are often YAML block scalars).
fn one_line(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

// === Range queries ===

/// A range query's window, resolved against the measurement's time.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedRange {
    /// First evaluation time.
    pub start: Timestamp,
    /// Last evaluation time.
    pub end: Timestamp,
    /// Resolution step.
    pub step: Duration,
    /// The step as written, for the reported query.
    pub step_text: String,
}

/// Resolves `rangeQuery {start, end, step}`. `start` and `step` are required; an unset `end` means
/// `now()`.
pub fn resolve_range(
    args: &PrometheusRangeQueryArgs,
    now: Timestamp,
) -> Result<ResolvedRange, String> {
    let start = non_empty(args.start.as_deref())
        .ok_or_else(|| "rangeQuery.start is not set".to_string())?;
    let start = resolve_time(start, now).map_err(|e| format!("rangeQuery.start: {e}"))?;
    let end = match non_empty(args.end.as_deref()) {
        Some(end) => resolve_time(end, now).map_err(|e| format!("rangeQuery.end: {e}"))?,
        None => now,
    };
    let step_text =
        non_empty(args.step.as_deref()).ok_or_else(|| "rangeQuery.step is not set".to_string())?;
    let step = go_duration(step_text).map_err(|e| format!("rangeQuery.step: {e}"))?;
    if step.is_zero() || step.is_negative() {
        return Err(format!("rangeQuery.step: {step_text:?} is not positive"));
    }
    Ok(ResolvedRange {
        start,
        end,
        step: step.unsigned_abs(),
        step_text: step_text.to_string(),
    })
}

/// Evaluates a range-query time expression, the subset of expr-lang's date functions Argo users
/// write: `now()`, an RFC 3339 time (bare, quoted, or as `date("…")`), each optionally followed by
/// `+ duration("<Go duration>")` / `- duration("…")` terms. `now` is the measurement's time.
pub fn resolve_time(expr: &str, now: Timestamp) -> Result<Timestamp, String> {
    let mut cursor = Cursor { text: expr, at: 0 };
    cursor.skip_ws();
    let mut time = cursor.time_term(now)?;
    loop {
        cursor.skip_ws();
        let Some(op) = cursor.peek() else {
            return Ok(time);
        };
        if op != '+' && op != '-' {
            return Err(cursor.error("expected + or - followed by duration(\"…\")"));
        }
        cursor.at += 1;
        cursor.skip_ws();
        let delta = cursor.duration_term()?;
        let next = if op == '+' {
            time.checked_add(delta)
        } else {
            time.checked_sub(delta)
        };
        time = next.map_err(|e| format!("{expr:?}: time out of range: {e}"))?;
    }
}

/// A Go duration ("5m", "1h30m", "-90s") as a signed duration.
fn go_duration(text: &str) -> Result<SignedDuration, String> {
    let parsed = kube::core::Duration::from_str(text.trim())
        .map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    let magnitude: Duration = parsed.into();
    let signed =
        SignedDuration::try_from(magnitude).map_err(|e| format!("{text:?} is too long: {e}"))?;
    Ok(if parsed.is_negative() {
        -signed
    } else {
        signed
    })
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn error(&self, what: &str) -> String {
        format!("{:?}: {what} at position {}", self.text, self.at)
    }

    /// Consumes `name` followed by `(`, if present.
    fn call(&mut self, name: &str) -> bool {
        let rest = self.rest();
        let Some(after) = rest.strip_prefix(name) else {
            return false;
        };
        if !after.trim_start().starts_with('(') {
            return false;
        }
        self.at += name.len();
        self.skip_ws();
        self.at += 1;
        self.skip_ws();
        true
    }

    fn close(&mut self) -> Result<(), String> {
        self.skip_ws();
        if self.peek() == Some(')') {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error("expected )"))
        }
    }

    fn string(&mut self) -> Result<&str, String> {
        let quote = self
            .peek()
            .filter(|c| matches!(c, '"' | '\'' | '`'))
            .ok_or_else(|| self.error("expected a quoted string"))?;
        let start = self.at + 1;
        let body = self.text.get(start..).unwrap_or_default();
        let len = body
            .find(quote)
            .ok_or_else(|| self.error("unterminated string"))?;
        self.at = start + len + 1;
        Ok(self.text.get(start..start + len).unwrap_or_default())
    }

    fn time_term(&mut self, now: Timestamp) -> Result<Timestamp, String> {
        if self.call("now") {
            self.close()?;
            return Ok(now);
        }
        let literal = if self.call("date") {
            let s = self.string()?.to_string();
            self.close()?;
            s
        } else if matches!(self.peek(), Some('"' | '\'' | '`')) {
            self.string()?.to_string()
        } else {
            let rest = self.rest();
            let word = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if word.is_empty() {
                return Err(self.error("expected now(), date(\"…\") or an RFC 3339 time"));
            }
            self.at += word.len();
            word
        };
        Timestamp::from_str(&literal).map_err(|e| {
            format!(
                "{:?}: {literal:?} is not an RFC 3339 time (expected now(), date(\"…\") or a time like 2024-05-01T10:00:00Z): {e}",
                self.text
            )
        })
    }

    fn duration_term(&mut self) -> Result<SignedDuration, String> {
        if !self.call("duration") {
            return Err(self.error("expected duration(\"…\")"));
        }
        let text = self.string()?.to_string();
        self.close()?;
        go_duration(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_support::{Reply, context, metric, serve};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2024-05-01T10:00:00Z";

    #[test]
    fn time_expressions() {
        let now = ts(NOW);
        assert_eq!(resolve_time("now()", now).unwrap(), now);
        assert_eq!(resolve_time("  now ( ) ", now).unwrap(), now);
        assert_eq!(
            resolve_time(r#"now() - duration("5m")"#, now).unwrap(),
            ts("2024-05-01T09:55:00Z")
        );
        assert_eq!(
            resolve_time(r#"now()-duration('1h30m')+duration("10s")"#, now).unwrap(),
            ts("2024-05-01T08:30:10Z")
        );
        assert_eq!(
            resolve_time("2024-01-02T03:04:05Z", now).unwrap(),
            ts("2024-01-02T03:04:05Z")
        );
        assert_eq!(
            resolve_time(r#""2024-01-02T03:04:05+02:00" + duration("1h")"#, now).unwrap(),
            ts("2024-01-02T02:04:05Z")
        );
        assert_eq!(
            resolve_time(r#"date("2024-01-02T03:04:05Z")"#, now).unwrap(),
            ts("2024-01-02T03:04:05Z")
        );
        assert_eq!(
            resolve_time(r#"now() - duration("-1m")"#, now).unwrap(),
            ts("2024-05-01T10:01:00Z")
        );
        for bad in [
            "",
            "now",
            "now(",
            "yesterday",
            r#"now() - 5m"#,
            r#"now() - duration("5 minutes")"#,
            r#"now() - duration("5m"#,
            r#"now() * duration("5m")"#,
            r#"now() now()"#,
        ] {
            let err = resolve_time(bad, now).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn range_windows() {
        let now = ts(NOW);
        let args = PrometheusRangeQueryArgs {
            start: Some(r#"now() - duration("5m")"#.into()),
            end: None,
            step: Some("1m".into()),
        };
        let r = resolve_range(&args, now).unwrap();
        assert_eq!(r.start, ts("2024-05-01T09:55:00Z"));
        assert_eq!(r.end, now);
        assert_eq!(r.step, Duration::from_secs(60));
        let no_step = PrometheusRangeQueryArgs {
            step: None,
            ..args.clone()
        };
        assert!(resolve_range(&no_step, now).unwrap_err().contains("step"));
        let zero = PrometheusRangeQueryArgs {
            step: Some("0s".into()),
            ..args.clone()
        };
        assert!(resolve_range(&zero, now).is_err());
        let no_start = PrometheusRangeQueryArgs {
            start: None,
            ..args
        };
        assert!(resolve_range(&no_start, now).unwrap_err().contains("start"));
    }

    fn decoded(json: &str) -> Result<Decoded, String> {
        decode(StatusCode::OK, json.as_bytes())
    }

    fn numbers(v: &Value) -> Vec<f64> {
        match v {
            Value::List(items) => items
                .iter()
                .map(|i| match i {
                    Value::Number(n) => *n,
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_conversion() {
        let scalar = decoded(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1714557600,"0.97"]}}"#,
        )
        .unwrap();
        assert_eq!(scalar.value, Value::Number(0.97));

        let vector = decoded(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"pod":"a"},"value":[1714557600,"0.5"]},
                {"metric":{"pod":"b"},"value":[1714557600,"NaN"]},
                {"metric":{"pod":"c"},"value":[1714557600,"+Inf"]},
                {"metric":{"pod":"d"},"value":[1714557600,"-Inf"]}]}}"#,
        )
        .unwrap();
        let v = numbers(&vector.value);
        assert_eq!(v[0], 0.5);
        assert!(v[1].is_nan());
        assert_eq!(v[2], f64::INFINITY);
        assert_eq!(v[3], f64::NEG_INFINITY);
        assert_eq!(vector.value.display(), "[0.5,NaN,+Inf,-Inf]");

        let empty =
            decoded(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).unwrap();
        assert_eq!(empty.value, Value::List(vec![]));
        assert_eq!(empty.value.display(), "[]");

        let matrix = decoded(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"pod":"a"},"values":[[1,"1"],[2,"2"]]},
                {"metric":{"pod":"b"},"values":[[1,"3"]]}]}}"#,
        )
        .unwrap();
        assert_eq!(numbers(&matrix.value), vec![1.0, 2.0, 3.0]);

        let warned = decoded(
            r#"{"status":"success","warnings":["w1","w2"],"data":{"resultType":"vector","result":[]}}"#,
        )
        .unwrap();
        assert_eq!(quote_list(&warned.warnings).unwrap(), r#""w1", "w2""#);

        let string =
            decoded(r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#)
                .unwrap_err();
        assert!(string.contains("string result"), "{string}");
        let histogram = decoded(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#,
        )
        .unwrap_err();
        assert!(histogram.contains("native histogram"), "{histogram}");
        let bad_value =
            decoded(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"abc"]}}"#)
                .unwrap_err();
        assert!(bad_value.contains("abc"), "{bad_value}");
    }

    #[test]
    fn errors_carry_prometheus_words() {
        let err = decode(
            StatusCode::BAD_REQUEST,
            br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected <EOF>"}"#,
        )
        .unwrap_err();
        assert_eq!(err, "bad_data: 1:5: parse error: unexpected <EOF>");
        let err = decode(StatusCode::BAD_GATEWAY, b"<html>upstream down</html>").unwrap_err();
        assert!(err.starts_with("HTTP 502 Bad Gateway"), "{err}");
        assert!(err.contains("upstream down"), "{err}");
        let err = decode(StatusCode::OK, b"not json").unwrap_err();
        assert!(err.contains("not Prometheus API JSON"), "{err}");
    }

    fn prom_metric(address: &str, extra: &str) -> Metric {
        metric(&format!(
            "name: m\nprovider:\n  prometheus:\n    address: {address}\n    query: sum(up{{job=\"secret-token\"}})\n{extra}"
        ))
    }

    fn masked(m: &Metric) -> Metric {
        let mut masked = m.clone();
        if let Some(p) = masked.provider.prometheus.as_mut() {
            p.query = Some("sum(up{job=\"*****\"})".into());
        }
        masked
    }

    #[tokio::test]
    async fn instant_query_against_a_fake_server() {
        let (base, seen) = serve(|_| {
            Reply::json(
                200,
                r#"{"status":"success","warnings":["partial"],"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.99"]}]}}"#,
            )
        })
        .await;
        let ctx = context(ts(NOW));
        let m = prom_metric(
            &format!("{base}/prefix/"),
            "    headers:\n    - {key: Authorization, value: Bearer abc}\n",
        );
        let provider = PrometheusProvider::new(Arc::default());
        match provider.run(&ctx, &m, &masked(&m)).await {
            Observed::Value {
                result,
                query,
                metadata,
            } => {
                assert_eq!(result, Value::List(vec![Value::Number(0.99)]));
                assert_eq!(query.as_deref(), Some("sum(up{job=\"*****\"})"));
                assert_eq!(metadata[WARNINGS_KEY], "\"partial\"");
            }
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap();
        let request = &seen[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/prefix/api/v1/query");
        assert_eq!(request.header("authorization"), Some("Bearer abc"));
        let form: BTreeMap<String, String> =
            Url::parse(&format!("http://x/?{}", request.body_text()))
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect();
        assert_eq!(form["query"], "sum(up{job=\"secret-token\"})");
        assert_eq!(form["time"], NOW);
        assert_eq!(
            provider.metric_metadata(&masked(&m))[RESOLVED_QUERY_KEY],
            "sum(up{job=\"*****\"})"
        );
    }

    #[tokio::test]
    async fn range_query_against_a_fake_server() {
        let (base, seen) = serve(|r| {
            if r.method == "POST" {
                // Exercise the GET fallback the Go client also has.
                return Reply::json(405, "");
            }
            Reply::json(
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"NaN"]]}]}}"#,
            )
        })
        .await;
        let ctx = context(ts(NOW));
        let m = prom_metric(
            &base,
            "    rangeQuery: {start: 'now() - duration(\"5m\")', end: 'now()', step: 1m}\n",
        );
        let provider = PrometheusProvider::new(Arc::default());
        match provider.run(&ctx, &m, &masked(&m)).await {
            Observed::Value { result, query, .. } => {
                assert_eq!(result.display(), "[1,NaN]");
                assert_eq!(
                    query.as_deref(),
                    Some(
                        "sum(up{job=\"*****\"}) (range: start 2024-05-01T09:55:00Z, end 2024-05-01T10:00:00Z, step 1m)"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].method, "GET");
        assert_eq!(seen[1].path, "/api/v1/query_range");
        let q = seen[1].query.clone().unwrap_or_default();
        assert!(q.contains("step=60"), "{q}");
        assert!(q.contains("start=2024-05-01T09%3A55%3A00Z"), "{q}");
    }

    #[tokio::test]
    async fn server_errors_are_reported_with_the_masked_query() {
        let (base, _) = serve(|_| {
            Reply::json(
                422,
                r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#,
            )
        })
        .await;
        let ctx = context(ts(NOW));
        let m = prom_metric(&base, "");
        let observed = PrometheusProvider::new(Arc::default())
            .run(&ctx, &m, &masked(&m))
            .await;
        match observed {
            Observed::Error { message, query, .. } => {
                assert_eq!(
                    message,
                    format!(
                        "prometheus query sum(up{{job=\"*****\"}}) to {base}/ failed: execution: many-to-many matching not allowed"
                    )
                );
                assert!(!message.contains("secret-token"));
                assert_eq!(query.as_deref(), Some("sum(up{job=\"*****\"})"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_and_slow_servers_are_errors() {
        // A port nothing listens on: bind, note it, close.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let ctx = context(ts(NOW));
        let m = prom_metric(&format!("http://127.0.0.1:{port}"), "");
        let provider = PrometheusProvider::new(Arc::default());
        match provider.run(&ctx, &m, &masked(&m)).await {
            Observed::Error { message, .. } => {
                assert!(message.contains("failed:"), "{message}");
                assert!(message.to_lowercase().contains("connect"), "{message}");
                assert!(!message.contains("secret-token"), "{message}");
            }
            other => panic!("{other:?}"),
        }

        let (base, _) = serve(|_| Reply::json(200, "{}").after(Duration::from_secs(5))).await;
        let m = prom_metric(&base, "    timeout: 1\n");
        match provider.run(&ctx, &m, &masked(&m)).await {
            Observed::Error { message, .. } => {
                assert!(message.ends_with("failed: timed out after 1s"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn address_comes_from_the_metric_or_the_default() {
        let mut ctx = context(ts(NOW));
        let m = metric("name: m\nprovider: {prometheus: {query: up}}\n");
        let provider = PrometheusProvider::new(Arc::default());
        match provider.run(&ctx, &m, &m).await {
            Observed::Error { message, .. } => {
                assert!(message.contains("address is not configured"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let (base, _) = serve(|_| {
            Reply::json(
                200,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#,
            )
        })
        .await;
        ctx.default_prometheus_address = Some(base);
        assert!(matches!(
            provider.run(&ctx, &m, &m).await,
            Observed::Value { .. }
        ));
        let bad =
            metric("name: m\nprovider: {prometheus: {query: up, address: 'prometheus:9090'}}\n");
        match provider.run(&ctx, &bad, &bad).await {
            Observed::Error { message, .. } => {
                assert!(message.contains("not a valid URL"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
