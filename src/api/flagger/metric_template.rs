//! `MetricTemplate` (`flagger.app/v1beta1`): a reusable metric query and the provider that runs it.
//!
//! Decides the wire shape of a MetricTemplate (upstream `pkg/apis/flagger/v1beta1/metric.go` and
//! `artifacts/flagger/crd.yaml`) and the provider types it may name. It never runs a query, never
//! renders the template (`{{ name }}`, `{{ interval }}`, `{{ variables.x }}` are the engine's
//! business), and never reads the referenced Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A metric query template, referenced from `Canary.spec.analysis.metrics[].templateRef`.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "MetricTemplate",
    plural = "metrictemplates",
    singular = "metrictemplate",
    namespaced,
    category = "all",
    status = "MetricTemplateStatus",
    derive = "PartialEq",
    doc = "MetricTemplate is a specification for a canary analysis metric: a query and the provider that runs it (Flagger flagger.app/v1beta1).",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider.type")
)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateSpec {
    /// The metrics provider that runs the query.
    pub provider: MetricTemplateProvider,
    /// The query, a Go-template-style string with `{{ name }}`, `{{ namespace }}`, `{{ target }}`,
    /// `{{ service }}`, `{{ ingress }}`, `{{ route }}`, `{{ interval }}`, `{{ variables.<key> }}`.
    pub query: String,
}

/// Where and how a query runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateProvider {
    /// Type of the provider.
    pub r#type: MetricProviderType,
    /// API address of the provider (for Prometheus, default: the controller's metrics server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// HTTP headers added to every request (multi-valued, as Go's `http.Header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    /// Secret in the template's namespace holding the provider credentials (`username` /
    /// `password`, `token`, or provider-specific keys such as `datadog_api_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Region of the provider (CloudWatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Skip TLS certificate verification of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// A Secret in the referencing object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    pub name: String,
}

/// The metrics providers upstream's CRD accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricProviderType {
    /// Prometheus (PromQL).
    #[default]
    Prometheus,
    /// InfluxDB (Flux).
    Influxdb,
    /// Datadog.
    Datadog,
    /// Kubernetes external metrics API.
    Externalmetrics,
    /// Google Cloud Monitoring (MQL).
    Stackdriver,
    /// Amazon CloudWatch (`GetMetricData` JSON).
    Cloudwatch,
    /// New Relic (NRQL).
    Newrelic,
    /// Graphite.
    Graphite,
    /// Dynatrace.
    Dynatrace,
    /// Keptn.
    Keptn,
    /// Splunk Observability (SignalFlow).
    Splunk,
}

/// Status of a MetricTemplate (upstream declares the subresource; nothing writes it today).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateStatus {
    /// Conditions of the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::schema::conditions::<TemplateCondition>")]
    pub conditions: Vec<TemplateCondition>,
}

/// A status condition of a MetricTemplate or AlertProvider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateCondition {
    /// Type of the condition.
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the condition was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl MetricTemplateProvider {
    /// `insecureSkipVerify`, default false.
    pub fn insecure_skip_verify(&self) -> bool {
        self.insecure_skip_verify.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::round_trip;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;

    // docs/gitbook/usage/metrics.md, Prometheus with authentication.
    #[test]
    fn prometheus_template_round_trips() {
        let template: MetricTemplate = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: not-found-percentage
  namespace: istio-system
spec:
  provider:
    type: prometheus
    address: http://prometheus.istio-system:9090
    secretRef:
      name: prom-auth
    headers:
      X-Scope-OrgID: ["tenant-1"]
    insecureSkipVerify: true
  query: |
    100 - sum(
        rate(
            istio_requests_total{
              reporter="destination",
              destination_workload_namespace="{{ namespace }}",
              destination_workload="{{ target }}",
              response_code!="404"
            }[{{ interval }}]
        )
    )
"#,
        );
        assert_eq!(
            template.spec.provider.r#type,
            MetricProviderType::Prometheus
        );
        assert!(template.spec.provider.insecure_skip_verify());
        assert!(template.spec.query.contains("{{ target }}"));
    }

    // docs/gitbook/usage/metrics.md, CloudWatch.
    #[test]
    fn cloudwatch_template_round_trips() {
        let template: MetricTemplate = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: cloudwatch-error-rate
spec:
  provider:
    type: cloudwatch
    region: ap-northeast-1
  query: |
    [{"Id": "e1", "Expression": "m1 / m2", "Label": "ErrorRate"}]
"#,
        );
        assert_eq!(
            template.spec.provider.region.as_deref(),
            Some("ap-northeast-1")
        );
        assert!(!template.spec.provider.insecure_skip_verify());
    }

    #[test]
    fn every_upstream_provider_type_parses() {
        for name in [
            "prometheus",
            "influxdb",
            "datadog",
            "externalmetrics",
            "stackdriver",
            "cloudwatch",
            "newrelic",
            "graphite",
            "dynatrace",
            "keptn",
            "splunk",
        ] {
            let parsed: MetricProviderType =
                serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(
                serde_json::to_value(parsed).unwrap(),
                serde_json::json!(name)
            );
        }
        assert!(serde_json::from_value::<MetricProviderType>(serde_json::json!("statsd")).is_err());
    }

    #[test]
    fn crd_names_and_columns_match_upstream() {
        let crd = MetricTemplate::crd();
        assert_eq!(crd.spec.names.plural, "metrictemplates");
        assert_eq!(crd.spec.names.categories, Some(vec!["all".to_string()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert_eq!(columns.len(), 1);
        assert_eq!(
            (columns[0].name.as_str(), columns[0].json_path.as_str()),
            ("Provider", ".spec.provider.type")
        );
        assert!(!serde_json::to_string(&crd).unwrap().contains("\"default\""));
    }
}
