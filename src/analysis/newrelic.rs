//! The New Relic provider (upstream Argo `metricproviders/newrelic`): runs an NRQL query through
//! NerdGraph and returns its result.
//!
//! Decides:
//! - the account, as Argo: the Secret `profile` (default `newrelic`) with `personal-api-key`,
//!   `account-id`, and optionally `region` (`us` default, `eu`) or `base-url-nerdgraph` (the
//!   GraphQL endpoint itself) — read from the AnalysisRun's namespace (Argo reads the
//!   controller's);
//! - the request: `POST <nerdgraph>` with `API-Key`, the GraphQL query Argo sends with the NRQL,
//!   the account id and `timeout` (default 5 s) as variables;
//! - the value, as upstream: one result row is the row (an object: `result.successRate`),
//!   several are the list; none is an error, as are GraphQL `errors`.
//!
//! Must never: judge the value, show the key (never in a message, a query or a log), or read more
//! than the bounded body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderName, HeaderValue};
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

const DEFAULT_PROFILE: &str = "newrelic";
/// Upstream's NRQL timeout, in seconds.
const DEFAULT_NRQL_TIMEOUT: u64 = 5;
/// Upstream's GraphQL document.
const GRAPHQL: &str = "query (\n  $query: Nrql!, \n  $accountId: Int!,\n  $timeout: Seconds!\n)\n{\n  actor {\n    account(id: $accountId) {\n      nrql(query: $query, timeout: $timeout) {\n        results\n      }\n    }\n  }\n}\n";

/// Runs NRQL queries.
#[derive(Debug)]
pub struct NewRelicProvider {
    http: Arc<HttpClients>,
}

impl NewRelicProvider {
    /// A provider drawing its HTTP clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self { http }
    }
}

#[async_trait]
impl Provider for NewRelicProvider {
    fn name(&self) -> &'static str {
        "newRelic"
    }

    fn metric_metadata(&self, masked: &Metric) -> BTreeMap<String, String> {
        Fields::of("newRelic", masked.provider.new_relic.as_ref())
            .ok()
            .and_then(|f| f.text("query").ok().flatten())
            .map(|q| BTreeMap::from([("ResolvedNewRelicQuery".to_string(), q.to_string())]))
            .unwrap_or_default()
    }

    async fn run(&self, ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let shown_query = Fields::of("newRelic", masked.provider.new_relic.as_ref())
            .ok()
            .and_then(|f| f.text("query").ok().flatten())
            .unwrap_or_default()
            .to_string();
        let fail = |detail: &str| Observed::Error {
            message: format!("newRelic query {shown_query} failed: {detail}"),
            query: Some(shown_query.clone()),
            metadata: BTreeMap::new(),
        };
        let request = match Request::resolve(ctx, metric).await {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        match request.send(&self.http).await {
            Ok(result) => Observed::Value {
                result,
                query: Some(shown_query.clone()),
                metadata: BTreeMap::new(),
            },
            Err(e) => fail(&format!("{}: {e}", display_url(&request.endpoint))),
        }
    }
}

struct Request {
    endpoint: String,
    query: String,
    account: i64,
    timeout: u64,
    key: String,
}

impl Request {
    async fn resolve(ctx: &MeasureContext, metric: &Metric) -> Result<Request, String> {
        let fields = Fields::of("newRelic", metric.provider.new_relic.as_ref())?;
        let query = fields.required("query")?.to_string();
        let timeout = match fields.decode::<i64>("timeout")? {
            None => DEFAULT_NRQL_TIMEOUT,
            Some(t) => u64::try_from(t)
                .map_err(|_| "provider.newRelic.timeout must not be negative".to_string())?,
        };
        let profile = fields.text("profile")?.unwrap_or(DEFAULT_PROFILE);
        let (endpoint, account, key) = profile_secret(ctx, profile).await?;
        parse_url(&endpoint).map_err(|e| format!("the NerdGraph URL is not valid: {e}"))?;
        Ok(Request {
            endpoint,
            query,
            account,
            timeout,
            key,
        })
    }

    async fn send(&self, http: &HttpClients) -> Result<Value, String> {
        let mut key = HeaderValue::from_str(&self.key)
            .map_err(|_| "the personal-api-key is not a valid HTTP header value".to_string())?;
        key.set_sensitive(true);
        let client = http.get(false, true).map_err(|e| e.to_string())?;
        // The NRQL timeout plus time for the round trip.
        let cap = Duration::from_secs(self.timeout.saturating_add(10));
        let response = client
            .post(&self.endpoint)
            .header(HeaderName::from_static("api-key"), key)
            .json(&json!({"query": GRAPHQL, "variables": {
                "accountId": self.account, "query": self.query, "timeout": self.timeout}}))
            .timeout(cap)
            .send()
            .await
            .map_err(|e| describe_send_error(&e, cap))?;
        let status = response.status();
        if !status.is_success() {
            let body = read_prefix(response, ERROR_BODY_BYTES, cap).await;
            return Err(format!(
                "HTTP {status}: {}",
                excerpt(&body, BODY_EXCERPT_CHARS)
            ));
        }
        let body = read_body(response, MAX_BODY_BYTES, cap)
            .await
            .map_err(|e| format!("HTTP {status}: {e}"))?;
        results(&body)
    }
}

/// NerdGraph's answer: its `errors`, else upstream's value of `actor.account.nrql.results`.
fn results(body: &[u8]) -> Result<Value, String> {
    let json: Json = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the response is not NerdGraph JSON ({e}): {}",
            excerpt(body, BODY_EXCERPT_CHARS)
        )
    })?;
    if let Some(errors) = json.get("errors").and_then(Json::as_array) {
        let messages: Vec<String> = errors
            .iter()
            .map(|e| {
                e.get("message")
                    .and_then(Json::as_str)
                    .map_or_else(|| e.to_string(), str::to_string)
            })
            .collect();
        return Err(messages.join("; "));
    }
    let rows = json
        .pointer("/data/actor/account/nrql/results")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    match rows.as_slice() {
        [] => Err("no results returned from NRQL query".into()),
        [one] if one.as_object().is_none_or(serde_json::Map::is_empty) => {
            Err("no results returned from NRQL query".into())
        }
        [one] => Ok(Value::from_json(one)),
        _ => Ok(Value::from_json(&Json::Array(rows))),
    }
}

/// The NerdGraph URL, account id and key from the profile Secret in the run's namespace. Errors
/// name the Secret and the keys, never a value.
async fn profile_secret(
    ctx: &MeasureContext,
    profile: &str,
) -> Result<(String, i64, String), String> {
    let keys = super::secret::keys(
        ctx,
        profile,
        "provider.newRelic.profile",
        "personal-api-key and account-id",
    )
    .await?;
    let key = |k: &str| keys.get(k);
    let label = &keys.label;
    let (Some(api_key), Some(account)) = (key("personal-api-key"), key("account-id")) else {
        return Err(format!("{label} needs personal-api-key and account-id"));
    };
    let account = account
        .parse::<i64>()
        .map_err(|_| format!("{label}: account-id is not a number"))?;
    let endpoint = match (key("base-url-nerdgraph"), key("region").as_deref()) {
        (Some(url), _) => url,
        (None, None | Some("us")) => "https://api.newrelic.com/graphql".to_string(),
        (None, Some("eu")) => "https://api.eu.newrelic.com/graphql".to_string(),
        (None, Some(_)) => {
            return Err(format!("{label}: region must be us or eu"));
        }
    };
    Ok((endpoint, account, api_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = include_str!("../../tests/data/newrelic-nerdgraph-nrql.json");

    #[test]
    fn recorded_answer_gives_the_row() {
        let Value::Map(row) = results(ANSWER.as_bytes()).unwrap() else {
            panic!("not a row");
        };
        assert_eq!(row.get("successRate"), Some(&Value::Number(99.5)));
        assert_eq!(
            results(br#"{"errors":[{"message":"Invalid API key"}]}"#).unwrap_err(),
            "Invalid API key"
        );
        assert!(results(br#"{"data":{"actor":{"account":{"nrql":{"results":[]}}}}}"#).is_err());
    }
}
