//! Flagger MetricTemplates through the same providers as AnalysisRuns: a template's `provider`
//! (`type`, `address`, `headers`, `insecureSkipVerify`, and the `secretRef` Secret, read with
//! Flagger's keys) becomes the Argo metric of its type, which [`super::Providers`] runs with the
//! same client, bounded reads and error words; [`value`] reduces the answer to Flagger's one number.
//!
//! | type | Argo metric | `secretRef` keys (Flagger's) |
//! |---|---|---|
//! | `prometheus` | `prometheus` (address default: the Canary's `metricsServer`) | `username` + `password` (basic auth), else `token` (bearer) |
//! | `graphite` | `graphite` | `username` + `password` (basic auth) |
//! | `influxdb` | `influxdb` with `address` (no profile Secret read) | `token` + `org` |
//! | `datadog` | `datadog` v1 `query`, `address` optional (no keys Secret read) | `datadog_api_key` + `datadog_application_key` (required) |
//!
//! Decides which provider types Sluice queries (any other is refused by name, never sent a
//! query) and how credentials map onto the request. Must never put a Secret's value anywhere but
//! the request itself: the masked copy every message and status is made from carries `*****`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::{Map, Value as Json, json};

use crate::api::argo::analysis::{
    Authentication, Metric, MetricProvider, PrometheusMetric, WebMetricHeader,
};
use crate::api::flagger::metric_template::{MetricProviderType, MetricTemplate};
use crate::engine::analysis::Observed;
use crate::engine::analysis::expr::Value;

/// What stands in for a Secret's value in everything shown.
const MASK: &str = "*****";

/// The template types Sluice queries.
const SUPPORTED: [MetricProviderType; 4] = [
    MetricProviderType::Prometheus,
    MetricProviderType::Graphite,
    MetricProviderType::Influxdb,
    MetricProviderType::Datadog,
];

/// Why a MetricTemplate the Canary names cannot be queried: its `spec.provider.type` is not one
/// Sluice implements, or its type needs the `address` it lacks. `None` when it can be.
pub fn unsupported_type(template: &MetricTemplate) -> Option<String> {
    let kind = template.spec.provider.r#type;
    if matches!(
        kind,
        MetricProviderType::Prometheus | MetricProviderType::Datadog
    ) {
        return None;
    }
    if SUPPORTED.contains(&kind) {
        return settings(template, "").err();
    }
    Some(format!(
        "MetricTemplate {}/{}: spec.provider.type {:?} is not supported by Sluice yet (only prometheus, graphite, influxdb and datadog); its query is never sent",
        template.namespace().unwrap_or_default(),
        template.name_any(),
        type_name(kind),
    ))
}

fn type_name(kind: MetricProviderType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The Argo metric (and its masked copy) that runs `template` with `query` (already rendered).
/// `default_address` is the Canary's `metricsServer` (Prometheus only); `secret` the Secret
/// `spec.provider.secretRef` names. Errors name the template's field or the Secret's keys.
pub fn metric(
    template: &MetricTemplate,
    name: &str,
    query: &str,
    default_address: Option<String>,
    secret: Option<&Secret>,
) -> Result<(Metric, Metric), String> {
    let provider = &template.spec.provider;
    let (real, shown) = match provider.r#type {
        MetricProviderType::Prometheus => {
            let credentials = secret.map(credentials).transpose()?;
            let (real, shown) = prometheus(template, query, default_address, credentials.as_ref());
            let wrap = |p| MetricProvider {
                prometheus: Some(p),
                ..Default::default()
            };
            (wrap(real), wrap(shown))
        }
        MetricProviderType::Graphite => {
            let mut real = settings(template, query)?;
            let mut shown = real.clone();
            if let Some(secret) = secret {
                let username = required_key(secret, "username")?;
                let password = required_key(secret, "password")?;
                real.insert(
                    "authentication".into(),
                    json!(basic_auth(&username, &password)),
                );
                shown.insert("authentication".into(), json!(basic_auth(&username, MASK)));
            }
            let wrap = |m| MetricProvider {
                graphite: Some(m),
                ..Default::default()
            };
            (wrap(real), wrap(shown))
        }
        MetricProviderType::Influxdb => {
            let mut real = settings(template, query)?;
            let mut shown = real.clone();
            if let Some(secret) = secret {
                let token = required_key(secret, "token")?;
                let org = required_key(secret, "org")?;
                real.insert("authToken".into(), json!(token));
                shown.insert("authToken".into(), json!(MASK));
                real.insert("org".into(), json!(org));
                shown.insert("org".into(), json!(org));
            }
            let wrap = |m| MetricProvider {
                influxdb: Some(m),
                ..Default::default()
            };
            (wrap(real), wrap(shown))
        }
        MetricProviderType::Datadog => {
            let (real, shown) = datadog(template, query, secret)?;
            let wrap = |m| MetricProvider {
                datadog: Some(m),
                ..Default::default()
            };
            (wrap(real), wrap(shown))
        }
        _ => return Err(unsupported_type(template).unwrap_or_default()),
    };
    let metric = |provider| Metric {
        name: name.to_string(),
        provider,
        ..Default::default()
    };
    Ok((metric(real), metric(shown)))
}

/// A provider's free settings object, as the Argo metric keeps it.
type Settings = Map<String, Json>;

/// A datadog template as Argo's v1 `query`, the keys (Flagger requires its `secretRef`) inline.
fn datadog(
    template: &MetricTemplate,
    query: &str,
    secret: Option<&Secret>,
) -> Result<(Settings, Settings), String> {
    let secret = secret.ok_or_else(|| {
        format!(
            "MetricTemplate {}/{}: spec.provider.secretRef is required for type \"datadog\" (datadog_api_key, datadog_application_key)",
            template.namespace().unwrap_or_default(),
            template.name_any(),
        )
    })?;
    let api_key = required_key(secret, "datadog_api_key")?;
    let app_key = required_key(secret, "datadog_application_key")?;
    let mut real = Map::new();
    real.insert("apiVersion".into(), json!("v1"));
    real.insert("query".into(), json!(query));
    if let Some(address) = template
        .spec
        .provider
        .address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        real.insert("address".into(), json!(address));
    }
    let mut shown = real.clone();
    real.insert("apiKey".into(), json!(api_key));
    real.insert("appKey".into(), json!(app_key));
    shown.insert("apiKey".into(), json!(MASK));
    shown.insert("appKey".into(), json!(MASK));
    Ok((real, shown))
}

/// `address`, `query`, `insecure` and `headers` of a graphite or influxdb metric.
fn settings(template: &MetricTemplate, query: &str) -> Result<Map<String, Json>, String> {
    let provider = &template.spec.provider;
    let address = provider
        .address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            format!(
                "MetricTemplate {}/{}: spec.provider.address is required for type {:?}",
                template.namespace().unwrap_or_default(),
                template.name_any(),
                type_name(provider.r#type)
            )
        })?;
    let mut map = Map::new();
    map.insert("address".into(), json!(address));
    map.insert("query".into(), json!(query));
    map.insert("insecure".into(), json!(provider.insecure_skip_verify()));
    map.insert("headers".into(), json!(headers(template)));
    Ok(map)
}

/// A key of the `secretRef` Secret that the template's type needs.
fn required_key(secret: &Secret, name: &str) -> Result<String, String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(name))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!(
                "Secret {}/{} (spec.provider.secretRef) has no {name}",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            )
        })
}

/// Go's http.Header is multi-valued; one header line with the values comma-joined means the
/// same to HTTP.
fn headers(template: &MetricTemplate) -> Vec<WebMetricHeader> {
    template
        .spec
        .provider
        .headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(key, values)| WebMetricHeader {
            key,
            value: values.join(", "),
        })
        .collect()
}

/// Flagger's one number from a provider's answer: `None` when the query found no values; an
/// error when it failed or its answer is not one number as Flagger reads it (Prometheus: one
/// series; Graphite: the last value; InfluxDB: the first record). The reported query comes with it.
pub fn value(
    kind: MetricProviderType,
    observed: Observed,
) -> (Result<Option<f64>, String>, Option<String>) {
    match observed {
        Observed::Value { result, query, .. } => (reduce(kind, result), query),
        Observed::Error { message, query, .. } => (Err(message), query),
        Observed::Judged { message, .. } | Observed::InProgress { message, .. } => (
            Err(message.unwrap_or_else(|| "unexpected answer".into())),
            None,
        ),
    }
}

fn reduce(kind: MetricProviderType, result: Value) -> Result<Option<f64>, String> {
    let number = |v: &Value| match v {
        Value::Number(n) => Ok(Some(*n)),
        Value::Null => Ok(None),
        _ => Err("the query returned a value that is not a number".to_string()),
    };
    match result {
        Value::List(items) => match (kind, items.as_slice()) {
            (_, []) => Ok(None),
            (MetricProviderType::Graphite, [.., last]) => number(last),
            (MetricProviderType::Influxdb, [first, ..]) => number(first),
            (_, [one]) => number(one),
            (_, several) => Err(format!(
                "the query returned {} series; Flagger metrics must return one",
                several.len()
            )),
        },
        other => number(&other).map_err(|_| format!("the query returned {other:?}, not a number")),
    }
}

/// Credentials read from a template's `secretRef`.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `username` and `password`.
    Basic { username: String, password: String },
    /// `token`, sent as `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username:?}, {MASK})"),
            Credentials::Bearer(_) => write!(f, "Bearer({MASK})"),
        }
    }
}

/// The credentials in `secret`, as Flagger reads them: `username` with `password`, else `token`.
/// The error names the Secret and the keys, never a value.
fn credentials(secret: &Secret) -> Result<Credentials, String> {
    let data = secret.data.clone().unwrap_or_default();
    let key = |name: &str| {
        data.get(name)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (key("username"), key("password"), key("token")) {
        (Some(username), Some(password), _) => Ok(Credentials::Basic { username, password }),
        (_, _, Some(token)) => Ok(Credentials::Bearer(token)),
        _ => Err(format!(
            "Secret {}/{} (spec.provider.secretRef) has neither username and password nor token",
            secret.namespace().unwrap_or_default(),
            secret.name_any()
        )),
    }
}

/// The Prometheus metric settings for `template` running `query` (already rendered), and the
/// masked copy for everything shown. `default_address` is the Canary's `metricsServer`.
fn prometheus(
    template: &MetricTemplate,
    query: &str,
    default_address: Option<String>,
    credentials: Option<&Credentials>,
) -> (PrometheusMetric, PrometheusMetric) {
    let provider = &template.spec.provider;
    let mut headers = headers(template);
    let base = PrometheusMetric {
        address: provider
            .address
            .clone()
            .filter(|a| !a.trim().is_empty())
            .or(default_address),
        query: Some(query.to_string()),
        insecure: provider.insecure_skip_verify,
        ..Default::default()
    };
    let mut masked = base.clone();
    masked.headers = headers.clone();
    let (mut real, mut shown) = (base, masked);
    match credentials {
        None => {}
        Some(Credentials::Basic { username, password }) => {
            real.authentication = Some(basic_auth(username, password));
            shown.authentication = Some(basic_auth(username, MASK));
        }
        Some(Credentials::Bearer(token)) => {
            headers.push(bearer(token));
            shown.headers.push(bearer(MASK));
        }
    }
    real.headers = headers;
    (real, shown)
}

fn basic_auth(username: &str, password: &str) -> Authentication {
    Authentication {
        other: BTreeMap::from([(
            "basicAuth".to_string(),
            json!({"username": username, "password": password}),
        )]),
        ..Default::default()
    }
}

fn bearer(token: &str) -> WebMetricHeader {
    WebMetricHeader {
        key: "Authorization".into(),
        value: format!("Bearer {token}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn template(provider: serde_json::Value) -> MetricTemplate {
        serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "t", "namespace": "n"},
            "spec": {"provider": provider, "query": "up"},
        }))
        .unwrap()
    }

    fn secret(keys: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s".into()),
                namespace: Some("n".into()),
                ..Default::default()
            },
            data: Some(
                keys.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn only_implemented_types_are_queried() {
        for supported in ["prometheus", "graphite", "influxdb", "datadog"] {
            assert_eq!(
                unsupported_type(&template(json!({"type": supported, "address": "http://x"}))),
                None
            );
        }
        // Prometheus has the controller's default address; Graphite and InfluxDB have none.
        assert_eq!(
            unsupported_type(&template(json!({"type": "prometheus"}))),
            None
        );
        let message = unsupported_type(&template(json!({"type": "graphite"}))).unwrap();
        assert!(message.contains("spec.provider.address"), "{message}");
        let message = unsupported_type(&template(json!({"type": "newrelic"}))).unwrap();
        assert!(
            message.contains("spec.provider.type \"newrelic\""),
            "{message}"
        );
    }

    #[test]
    fn every_prometheus_field_is_mapped_and_secrets_are_masked() {
        let t = template(json!({"type": "prometheus", "address": "https://p:9090",
            "insecureSkipVerify": true, "headers": {"X-Scope-OrgID": ["a", "b"]}}));
        let basic = credentials(&secret(&[("username", "u"), ("password", "hunter2")])).unwrap();
        let (real, shown) = prometheus(&t, "up", Some("http://default".into()), Some(&basic));
        assert_eq!(real.address.as_deref(), Some("https://p:9090"));
        assert_eq!(real.insecure, Some(true));
        assert_eq!(real.headers[0].value, "a, b");
        let auth = serde_json::to_string(&real.authentication).unwrap();
        assert!(auth.contains("hunter2"), "{auth}");
        let shown_text = format!("{shown:?}");
        assert!(!shown_text.contains("hunter2"), "{shown_text}");

        let token = credentials(&secret(&[("token", "t0ken")])).unwrap();
        let (real, shown) = prometheus(&t, "up", None, Some(&token));
        assert!(real.headers.iter().any(|h| h.value == "Bearer t0ken"));
        assert!(!format!("{shown:?}{token:?}").contains("t0ken"));
    }

    #[test]
    fn a_secret_without_known_keys_is_named_not_shown() {
        let error = credentials(&secret(&[("password", "hunter2")])).unwrap_err();
        assert!(
            error.contains("n/s") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[test]
    fn the_canary_metrics_server_is_the_default_address() {
        let t = template(json!({"type": "prometheus"}));
        let (real, _) = prometheus(&t, "up", Some("http://default".into()), None);
        assert_eq!(real.address.as_deref(), Some("http://default"));
    }

    #[test]
    fn graphite_and_influxdb_templates_become_their_argo_metrics_with_masked_secrets() {
        let t = template(
            json!({"type": "graphite", "address": "http://g:8080", "insecureSkipVerify": true}),
        );
        let basic = secret(&[("username", "u"), ("password", "hunter2")]);
        let (real, shown) = metric(&t, "errors", "target=x", None, Some(&basic)).unwrap();
        let g = real.provider.graphite.unwrap();
        assert_eq!(
            (g["address"].as_str(), g["query"].as_str()),
            (Some("http://g:8080"), Some("target=x"))
        );
        assert_eq!(g["insecure"], true);
        assert_eq!(g["authentication"]["basicAuth"]["password"], "hunter2");
        assert!(!format!("{shown:?}").contains("hunter2"));
        assert!(
            metric(&t, "e", "q", None, Some(&secret(&[("username", "u")])))
                .unwrap_err()
                .contains("has no password")
        );

        let t = template(json!({"type": "influxdb", "address": "http://i:8086"}));
        let token = secret(&[("token", "t0ken"), ("org", "acme")]);
        let (real, shown) =
            metric(&t, "errors", "from(bucket: \"b\")", None, Some(&token)).unwrap();
        let i = real.provider.influxdb.unwrap();
        assert_eq!(
            (i["authToken"].as_str(), i["org"].as_str()),
            (Some("t0ken"), Some("acme"))
        );
        assert!(!format!("{shown:?}").contains("t0ken"));
        let no_address = template(json!({"type": "influxdb"}));
        assert!(
            metric(&no_address, "e", "q", None, None)
                .unwrap_err()
                .contains("spec.provider.address is required")
        );
    }

    #[test]
    fn datadog_templates_carry_flaggers_keys_masked() {
        let t = template(json!({"type": "datadog", "address": "http://dd"}));
        let keys = secret(&[("datadog_api_key", "k1"), ("datadog_application_key", "k2")]);
        let (real, shown) = metric(&t, "errors", "avg:x{*}", None, Some(&keys)).unwrap();
        let d = real.provider.datadog.unwrap();
        assert_eq!(
            (
                d["apiKey"].as_str(),
                d["appKey"].as_str(),
                d["address"].as_str()
            ),
            (Some("k1"), Some("k2"), Some("http://dd"))
        );
        let shown = format!("{shown:?}");
        assert!(!shown.contains("k1") && !shown.contains("k2"), "{shown}");
        assert!(
            metric(&t, "e", "q", None, None)
                .unwrap_err()
                .contains("spec.provider.secretRef is required")
        );
    }

    #[test]
    fn answers_reduce_to_flaggers_one_number() {
        let list = |v: &[f64]| Value::List(v.iter().copied().map(Value::Number).collect());
        assert_eq!(
            reduce(MetricProviderType::Graphite, list(&[1.0, 2.0])),
            Ok(Some(2.0))
        );
        assert_eq!(
            reduce(MetricProviderType::Influxdb, list(&[1.0, 2.0])),
            Ok(Some(1.0))
        );
        assert_eq!(
            reduce(MetricProviderType::Prometheus, list(&[3.0])),
            Ok(Some(3.0))
        );
        assert!(
            reduce(MetricProviderType::Prometheus, list(&[1.0, 2.0]))
                .unwrap_err()
                .contains("2 series")
        );
        assert_eq!(reduce(MetricProviderType::Graphite, list(&[])), Ok(None));
        assert_eq!(
            reduce(MetricProviderType::Prometheus, Value::Number(0.5)),
            Ok(Some(0.5))
        );
        assert!(
            reduce(
                MetricProviderType::Influxdb,
                Value::List(vec![Value::String("x".into())])
            )
            .is_err()
        );
    }
}
