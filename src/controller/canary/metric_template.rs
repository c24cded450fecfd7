//! Flagger MetricTemplates as the Prometheus provider runs them: a template's `provider`
//! (`address`, `headers`, `insecureSkipVerify`, and `secretRef` holding basic-auth `username` /
//! `password` or a bearer `token`, Flagger's keys) becomes the settings of Argo's Prometheus
//! metric, so one client serves both APIs.
//!
//! Decides which provider types Sluice queries (only `prometheus`: any other is refused by name,
//! never sent PromQL) and how credentials map onto the request. Must never put a Secret's value
//! anywhere but the request itself: the masked copy every message and status is made from
//! carries `*****` instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;

use crate::api::argo::analysis::{Authentication, PrometheusMetric, WebMetricHeader};
use crate::api::flagger::metric_template::{MetricProviderType, MetricTemplate};

/// What stands in for a Secret's value in everything shown.
const MASK: &str = "*****";

/// Why a MetricTemplate the Canary names cannot be queried: its `spec.provider.type` is not one
/// Sluice implements. `None` for `prometheus`.
pub fn unsupported_type(template: &MetricTemplate) -> Option<String> {
    let kind = template.spec.provider.r#type;
    if kind == MetricProviderType::Prometheus {
        return None;
    }
    let shown = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Some(format!(
        "MetricTemplate {}/{}: spec.provider.type {shown:?} is not supported by Sluice yet (only prometheus); its query is never sent",
        template.namespace().unwrap_or_default(),
        template.name_any(),
    ))
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
pub fn credentials(secret: &Secret) -> Result<Credentials, String> {
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
pub fn prometheus(
    template: &MetricTemplate,
    query: &str,
    default_address: Option<String>,
    credentials: Option<&Credentials>,
) -> (PrometheusMetric, PrometheusMetric) {
    let provider = &template.spec.provider;
    // Go's http.Header is multi-valued; one header line with the values comma-joined means the
    // same to HTTP.
    let mut headers: Vec<WebMetricHeader> = provider
        .headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(key, values)| WebMetricHeader {
            key,
            value: values.join(", "),
        })
        .collect();
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
    fn only_prometheus_is_queried() {
        assert_eq!(
            unsupported_type(&template(json!({"type": "prometheus"}))),
            None
        );
        let message = unsupported_type(&template(json!({"type": "datadog"}))).unwrap();
        assert!(
            message.contains("spec.provider.type \"datadog\""),
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
}
