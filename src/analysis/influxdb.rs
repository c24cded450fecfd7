//! The InfluxDB provider (upstream Argo `metricproviders/influxdb`, Flagger's `influxdb` type):
//! runs a Flux query (InfluxDB 2.x, 1.8+) or an InfluxQL query (every 1.x, and 2.x's v1 API)
//! and returns the values.
//!
//! Decides:
//! - where the settings come from: as Argo, the Secret named by `profile` (default `influxdb`)
//!   with `address`, `authToken` and `org` — read from the AnalysisRun's namespace (Argo reads the
//!   controller's); or, a Sluice addition a Flagger template maps onto, `address` (and
//!   `authToken` / `org`, usually secret arguments) in the metric itself, then no Secret is read;
//! - the language: a query whose first word is `SELECT` or `SHOW` is InfluxQL
//!   (`GET <address>/query?q=…&epoch=ms`, plus `db` from the optional `database`); anything else
//!   is Flux (`POST <address>/api/v2/query?org=…`, annotated CSV back);
//! - the result, as upstream: the `_value` of every Flux record (for InfluxQL the first column after
//!   `time` of every row), in order, as a list; no record is an error;
//! - the credentials: `Authorization: Token <authToken>` when one is set; `headers` and `insecure`
//!   as Argo's prometheus provider takes them.
//!
//! Must never: judge the values, or show the token (never in a message, a query or a log), or read
//! more than the bounded body ([`read_body`], 30 s as upstream).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
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

/// Upstream's query timeout.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream's default profile Secret.
const DEFAULT_PROFILE: &str = "influxdb";

/// Runs InfluxDB queries.
#[derive(Debug)]
pub struct InfluxdbProvider {
    http: Arc<HttpClients>,
}

impl InfluxdbProvider {
    /// A provider drawing its HTTP clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self { http }
    }
}

#[async_trait]
impl Provider for InfluxdbProvider {
    fn name(&self) -> &'static str {
        "influxdb"
    }

    async fn run(&self, ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let shown = Fields::of("influxdb", masked.provider.influxdb.as_ref()).ok();
        let shown_query = shown
            .and_then(|f| f.text("query").ok().flatten())
            .unwrap_or("")
            .to_string();
        let fail = |detail: &str| Observed::Error {
            message: format!(
                "influxdb query {} failed: {detail}",
                shown_query.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            query: Some(shown_query.clone()),
            metadata: BTreeMap::new(),
        };
        let request = match Request::resolve(ctx, metric).await {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        let shown_address = display_url(request.base.as_str());
        match request.send(&self.http).await {
            Ok(values) if values.is_empty() => fail(&format!(
                "no results returned from {} by {shown_address}",
                request.language()
            )),
            Ok(values) => Observed::Value {
                result: Value::List(values),
                query: Some(shown_query),
                metadata: BTreeMap::new(),
            },
            Err(e) => fail(&format!("{shown_address}: {e}")),
        }
    }
}

/// One query with its resolved settings.
struct Request {
    base: Url,
    query: String,
    token: Option<String>,
    org: Option<String>,
    database: Option<String>,
    headers: HeaderMap,
    insecure: bool,
}

impl Request {
    /// The settings of the metric, from the metric itself when it names an `address`, else from
    /// its profile Secret.
    async fn resolve(ctx: &MeasureContext, metric: &Metric) -> Result<Request, String> {
        let fields = Fields::of("influxdb", metric.provider.influxdb.as_ref())?;
        let query = fields.required("query")?.to_string();
        let (address, token, org, database) = match fields.text("address")? {
            Some(address) => (
                address.to_string(),
                fields.text("authToken")?.map(str::to_string),
                fields.text("org")?.map(str::to_string),
                fields.text("database")?.map(str::to_string),
            ),
            None => {
                let profile = fields.text("profile")?.unwrap_or(DEFAULT_PROFILE);
                profile_secret(ctx, profile).await?
            }
        };
        let base =
            parse_url(&address).map_err(|e| format!("the address is not a valid URL: {e}"))?;
        Ok(Request {
            base,
            query,
            token,
            org,
            database,
            headers: fields.headers()?,
            insecure: fields.flag("insecure")?,
        })
    }

    fn influxql(&self) -> bool {
        let first = self.query.split_whitespace().next().unwrap_or_default();
        first.eq_ignore_ascii_case("select") || first.eq_ignore_ascii_case("show")
    }

    fn language(&self) -> &'static str {
        if self.influxql() {
            "the InfluxQL query"
        } else {
            "the Flux query"
        }
    }

    fn url(&self, path: &[&str]) -> Result<Url, String> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| "the address cannot have a path".to_string())?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    async fn send(&self, http: &HttpClients) -> Result<Vec<Value>, String> {
        let mut headers = self.headers.clone();
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Token {token}"))
                .map_err(|_| "the authToken is not a valid HTTP header value".to_string())?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = http
            .get(self.insecure, !headers.is_empty())
            .map_err(|e| e.to_string())?;
        let request = if self.influxql() {
            let mut url = self.url(&["query"])?;
            url.query_pairs_mut()
                .append_pair("q", &self.query)
                .append_pair("epoch", "ms");
            if let Some(db) = &self.database {
                url.query_pairs_mut().append_pair("db", db);
            }
            client.get(url)
        } else {
            let mut url = self.url(&["api", "v2", "query"])?;
            if let Some(org) = &self.org {
                url.query_pairs_mut().append_pair("org", org);
            }
            headers.insert(ACCEPT, HeaderValue::from_static("application/csv"));
            client.post(url).json(&json!({
                "query": self.query, "type": "flux",
                "dialect": {"header": true, "annotations": ["datatype", "group", "default"], "delimiter": ","},
            }))
        };
        let response = request
            .timeout(TIMEOUT)
            .headers(headers)
            .send()
            .await
            .map_err(|e| describe_send_error(&e, TIMEOUT))?;
        let status = response.status();
        if !status.is_success() {
            let body = read_prefix(response, ERROR_BODY_BYTES, TIMEOUT).await;
            return Err(format!("HTTP {status}: {}", error_text(&body)));
        }
        let body = read_body(response, MAX_BODY_BYTES, TIMEOUT)
            .await
            .map_err(|e| format!("HTTP {status}: {e}"))?;
        if self.influxql() {
            influxql_values(&body)
        } else {
            flux_values(&String::from_utf8_lossy(&body))
        }
    }
}

/// `address`, `authToken`, `org` (and the optional `database`) from the profile Secret in the
/// run's namespace. Errors name the Secret and the keys, never a value.
async fn profile_secret(
    ctx: &MeasureContext,
    profile: &str,
) -> Result<(String, Option<String>, Option<String>, Option<String>), String> {
    let keys = super::secret::keys(
        ctx,
        profile,
        "provider.influxdb.profile",
        "address, authToken and org",
    )
    .await?;
    let key = |k: &str| keys.get(k);
    let address = key("address").ok_or_else(|| format!("{} has no address", keys.label))?;
    Ok((address, key("authToken"), key("org"), key("database")))
}

/// InfluxDB's error answer in words: the `message` / `error` of its JSON, else the body start.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|j| {
            j.get("message")
                .or_else(|| j.get("error"))
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| excerpt(body, BODY_EXCERPT_CHARS))
}

/// The values of an InfluxQL answer: the first column after `time` of every row of every series.
fn influxql_values(body: &[u8]) -> Result<Vec<Value>, String> {
    let json: Json = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the response is not InfluxQL JSON ({e}): {}",
            excerpt(body, BODY_EXCERPT_CHARS)
        )
    })?;
    if let Some(error) = json.get("error").and_then(Json::as_str) {
        return Err(error.to_string());
    }
    let mut values = Vec::new();
    for result in json
        .get("results")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(error) = result.get("error").and_then(Json::as_str) {
            return Err(error.to_string());
        }
        for series in result
            .get("series")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let columns: Vec<&str> = series
                .get("columns")
                .and_then(Json::as_array)
                .map(|c| c.iter().filter_map(Json::as_str).collect())
                .unwrap_or_default();
            let Some(at) = columns.iter().position(|c| *c != "time") else {
                continue;
            };
            for row in series
                .get("values")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                values.push(json_value(row.get(at).unwrap_or(&Json::Null)));
            }
        }
    }
    Ok(values)
}

fn json_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n.as_f64().map_or(Value::Null, Value::Number),
        Json::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

/// The `_value` of every record of a Flux annotated-CSV answer, typed by its `#datatype`; an
/// in-band `error` table is the error.
fn flux_values(body: &str) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    let mut datatypes: Vec<String> = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in body.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            // A blank line ends a table; the next one brings its own annotations and header.
            header = None;
            datatypes.clear();
            continue;
        }
        let cells = csv_cells(line);
        if let Some(kind) = cells.first().and_then(|c| c.strip_prefix('#')) {
            if kind == "datatype" {
                datatypes = cells;
            }
            continue;
        }
        let Some(columns) = &header else {
            header = Some(cells);
            continue;
        };
        let cell = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| cells.get(i).map(|v| (i, v.as_str())))
        };
        if let Some((_, error)) = cell("error") {
            return Err(format!("flux error: {error}"));
        }
        let Some((at, text)) = cell("_value") else {
            continue;
        };
        values.push(flux_value(text, datatypes.get(at).map(String::as_str)));
    }
    Ok(values)
}

fn flux_value(text: &str, datatype: Option<&str>) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    match datatype {
        Some("double" | "long" | "unsignedLong") => text
            .parse::<f64>()
            .map_or_else(|_| Value::String(text.into()), Value::Number),
        Some("boolean") => Value::Bool(text == "true"),
        _ => Value::String(text.to_string()),
    }
}

/// One CSV line's cells (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn csv_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cell)),
            (c, _) => cell.push(c),
        }
    }
    cells.push(cell);
    cells
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::test_support::{Reply, context, metric, serve};
    use k8s_openapi::jiff::Timestamp;

    /// An answer of InfluxDB 2.7's `/api/v2/query` (annotated CSV, two tables), as documented in
    /// "Annotated CSV" of the InfluxDB v2 docs.
    const FLUX_ANSWER: &str = "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string\r\n#group,false,false,true,true,false,false,true,true\r\n#default,_result,,,,,,,\r\n,result,table,_start,_stop,_time,_value,_field,_measurement\r\n,,0,2024-01-01T00:00:00Z,2024-01-01T00:05:00Z,2024-01-01T00:01:00Z,0.25,rate,\"http,errors\"\r\n,,0,2024-01-01T00:00:00Z,2024-01-01T00:05:00Z,2024-01-01T00:02:00Z,0.5,rate,\"http,errors\"\r\n\r\n#datatype,string,long,dateTime:RFC3339,long\r\n#group,false,false,false,false\r\n#default,_result,,,\r\n,result,table,_time,_value\r\n,,1,2024-01-01T00:03:00Z,7\r\n\r\n";

    #[test]
    fn flux_csv_is_read_with_types_and_errors() {
        assert_eq!(
            flux_values(FLUX_ANSWER).unwrap(),
            vec![Value::Number(0.25), Value::Number(0.5), Value::Number(7.0)]
        );
        let error = "#datatype,string,string\r\n#group,true,true\r\n#default,,\r\n,error,reference\r\n,\"failed to compile: bucket \"\"x\"\" not found\",\r\n";
        assert_eq!(
            flux_values(error).unwrap_err(),
            "flux error: failed to compile: bucket \"x\" not found"
        );
        assert_eq!(flux_values("").unwrap(), vec![]);
    }

    #[test]
    fn influxql_json_is_read_and_errors_quoted() {
        let body = br#"{"results":[{"statement_id":0,"series":[{"name":"requests","columns":["time","mean"],"values":[[1700000000000,0.5],[1700000060000,null]]}]}]}"#;
        assert_eq!(
            influxql_values(body).unwrap(),
            vec![Value::Number(0.5), Value::Null]
        );
        let error = br#"{"results":[{"statement_id":0,"error":"database not found: app"}]}"#;
        assert_eq!(
            influxql_values(error).unwrap_err(),
            "database not found: app"
        );
        assert_eq!(
            influxql_values(br#"{"results":[{"statement_id":0}]}"#).unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn flux_is_posted_with_the_token_and_org() {
        let (url, seen) = serve(|_| Reply::with_type(200, "text/csv", FLUX_ANSWER)).await;
        let m = metric(&format!(
            "name: m\nprovider: {{influxdb: {{address: '{url}', authToken: t0ken, org: acme, query: 'from(bucket: \"app\") |> range(start: -5m)'}}}}"
        ));
        let mut shown = m.clone();
        shown.provider.influxdb.as_mut().unwrap()["authToken"] = json!("*****");
        match InfluxdbProvider::new(Arc::default())
            .run(&context(Timestamp::UNIX_EPOCH), &m, &shown)
            .await
        {
            Observed::Value { result, query, .. } => {
                assert_eq!(
                    result,
                    Value::List(vec![
                        Value::Number(0.25),
                        Value::Number(0.5),
                        Value::Number(7.0)
                    ])
                );
                assert_eq!(
                    query.as_deref(),
                    Some("from(bucket: \"app\") |> range(start: -5m)")
                );
            }
            other => panic!("{other:?}"),
        }
        let request = seen.lock().unwrap()[0].clone();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/api/v2/query")
        );
        assert_eq!(request.query.as_deref(), Some("org=acme"));
        assert_eq!(request.header("authorization"), Some("Token t0ken"));
        let body: Json = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["type"], "flux");
    }

    #[tokio::test]
    async fn error_answers_are_quoted_without_the_token() {
        let (url, _) = serve(|_| {
            Reply::json(
                401,
                r#"{"code":"unauthorized","message":"unauthorized access"}"#,
            )
        })
        .await;
        let m = metric(&format!(
            "name: m\nprovider: {{influxdb: {{address: '{url}', authToken: t0ken, query: 'SELECT mean(v) FROM m'}}}}"
        ));
        match InfluxdbProvider::new(Arc::default())
            .run(&context(Timestamp::UNIX_EPOCH), &m, &m)
            .await
        {
            Observed::Error { message, .. } => {
                assert!(
                    message.contains("HTTP 401") && message.contains("unauthorized access"),
                    "{message}"
                );
                assert!(!message.contains("t0ken"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
