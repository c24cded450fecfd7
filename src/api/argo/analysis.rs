//! AnalysisTemplate, ClusterAnalysisTemplate and AnalysisRun (`argoproj.io/v1alpha1`).
//!
//! Decides the wire shape of Argo Rollouts' analysis objects: field names, which fields are
//! int-or-string, what the apiserver may reject, and the documented defaults (applied by accessor
//! methods such as [`Metric::consecutive_error_limit`], never written into the schema). Field names and
//! types follow upstream `pkg/apis/rollouts/v1alpha1/analysis_types.go`, so a manifest written for Argo
//! Rollouts parses here and serialises back to the same JSON.
//!
//! This module must never:
//! - reject a documented manifest that Argo Rollouts accepts (the apiserver rules below only encode
//!   checks the upstream controller also makes: exactly one provider per metric, unique metric
//!   names). Checks that depend on `{{args.*}}` values (such as "count above 1 needs an interval")
//!   are made by the accessors, once arguments are resolved;
//! - prune a field a user wrote: providers Sluice does not run yet are kept verbatim as
//!   `x-kubernetes-preserve-unknown-fields` objects, and so is `authentication` beyond its known keys;
//! - talk to a cluster, a metric provider or a clock. Measuring and judging live in `crate::engine`.
//!
//! Sluice additions (ignored by Argo, which prunes unknown status fields on its own CRDs):
//! [`Measurement::query`] and [`Measurement::condition`], so a run explains what it asked and why it
//! decided.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;

use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::api::schema::preserve_unknown_object;

/// `consecutiveErrorLimit` when unset (upstream `DefaultConsecutiveErrorLimit`).
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: i32 = 4;
/// Measurements kept per metric when no `measurementRetention` applies (or its limit is 0).
pub const DEFAULT_MEASUREMENT_RETENTION: i32 = 10;
/// Prometheus query timeout in seconds when `timeout` is unset.
pub const DEFAULT_PROMETHEUS_TIMEOUT_SECONDS: i64 = 30;
/// Web request timeout in seconds when `timeoutSeconds` is unset.
pub const DEFAULT_WEB_TIMEOUT_SECONDS: i64 = 10;
/// Longest request timeout (Prometheus `timeout`, web `timeoutSeconds`) the CRD schema accepts: a
/// measurement holding a connection longer is a mistake, and holds a worker (Argo has no bound).
pub const MAX_HTTP_TIMEOUT_SECONDS: i64 = 300;
/// Web `jsonPath` when unset: the whole response body.
pub const DEFAULT_WEB_JSON_PATH: &str = "{$}";
/// Web `method` when unset.
pub const DEFAULT_WEB_METHOD: &str = "GET";
/// Upper bound on `metrics` per object. Far above any real template; it exists because the apiserver
/// prices CEL rules inside a list by the list's largest possible length, and an unbounded list would
/// make the per-metric rules too expensive for the CRD to be accepted.
pub const MAX_METRICS: usize = 1000;

/// CEL: exactly one provider per metric (upstream rejects zero or several when it creates a run).
const ONE_PROVIDER_RULE: &str = "(has(self.prometheus) ? 1 : 0) + (has(self.web) ? 1 : 0) \
    + (has(self.job) ? 1 : 0) + (has(self.datadog) ? 1 : 0) + (has(self.newRelic) ? 1 : 0) \
    + (has(self.wavefront) ? 1 : 0) + (has(self.kayenta) ? 1 : 0) + (has(self.cloudWatch) ? 1 : 0) \
    + (has(self.graphite) ? 1 : 0) + (has(self.influxdb) ? 1 : 0) + (has(self.skywalking) ? 1 : 0) \
    + (has(self.plugin) ? 1 : 0) + (has(self.judge) ? 1 : 0) == 1";

// === Custom resources ===

/// The spec shared by AnalysisTemplate and ClusterAnalysisTemplate: how to measure a release.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    plural = "analysistemplates",
    singular = "analysistemplate",
    shortname = "at",
    namespaced,
    cel,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since resource was created"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    /// The measurements to take. Optional when `templates` supplies them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_METRICS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Vec<Metric>,
    /// Arguments, referenced as `{{args.<name>}}`; one without a value must be supplied by the caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    /// Metrics (by regular expression on the name) evaluated without affecting the run's phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRun>,
    /// How many measurements to keep per metric (by regular expression on the name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurement_retention: Vec<MeasurementRetention>,
    /// Other templates whose metrics and args are merged into this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<AnalysisTemplateRef>,
}

/// The spec of a ClusterAnalysisTemplate: the same as an AnalysisTemplate's.
// One Rust struct can root only one custom resource, hence this wrapper. It is transparent on the
// wire (both kinds share one schema) and derefs to `AnalysisTemplateSpec` in Rust.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    plural = "clusteranalysistemplates",
    singular = "clusteranalysistemplate",
    shortname = "cat",
    cel,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since resource was created"}"#
)]
#[serde(transparent)]
pub struct ClusterAnalysisTemplateSpec {
    /// The template itself.
    pub template: AnalysisTemplateSpec,
}

impl Deref for ClusterAnalysisTemplateSpec {
    type Target = AnalysisTemplateSpec;
    fn deref(&self) -> &AnalysisTemplateSpec {
        &self.template
    }
}

impl DerefMut for ClusterAnalysisTemplateSpec {
    fn deref_mut(&mut self) -> &mut AnalysisTemplateSpec {
        &mut self.template
    }
}

impl From<AnalysisTemplateSpec> for ClusterAnalysisTemplateSpec {
    fn from(template: AnalysisTemplateSpec) -> Self {
        Self { template }
    }
}

impl AsRef<AnalysisTemplateSpec> for ClusterAnalysisTemplateSpec {
    fn as_ref(&self) -> &AnalysisTemplateSpec {
        &self.template
    }
}

/// An instantiation of one or more templates: resolved metrics and args, measured until completion.
///
/// Served like upstream's, without a status subresource: Argo's controller writes a
/// run's status through the main resource, and must keep working on Sluice's CRDs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "AnalysisRun",
    plural = "analysisruns",
    singular = "analysisrun",
    shortname = "ar",
    namespaced,
    cel,
    status = "AnalysisRunStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase","description":"AnalysisRun status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since resource was created"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunSpec {
    /// The measurements to take.
    #[schemars(length(max = MAX_METRICS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Vec<Metric>,
    /// Arguments used in this run (values resolved from templates and the caller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    /// Set to stop the run early (for example, the rollout finished and needs no more analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate: Option<bool>,
    /// Metrics (by regular expression on the name) evaluated without affecting the run's phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRun>,
    /// How many measurements to keep per metric (by regular expression on the name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurement_retention: Vec<MeasurementRetention>,
    /// When a completed run may be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_strategy: Option<TtlStrategy>,
}

/// The AnalysisRun CRD as served: the derive's, without the `status` subresource it adds for the
/// typed `status` field. Argo's CRD has none, and its controller writes status through the main
/// resource, which a `/status` subresource would silently drop; Sluice's controller finds the
/// route by discovery (`controller::status_route`).
pub fn analysis_run_crd() -> CustomResourceDefinition {
    let mut crd = AnalysisRun::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    crd
}

// === Spec building blocks ===

/// One metric: what to query, how often, and how to judge each measurement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// Name of the metric, unique within the template or run.
    pub name: String,
    /// Time between measurements ("30s", "5m", "1h"). Unset: a single measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long to wait before the first measurement ("5m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// Number of measurements. Unset with no interval: 1. Unset with an interval: until terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<IntOrString>,
    /// Expression over `result`; true means the measurement succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// Expression over `result`; true means the measurement failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated before the metric fails (default 0; -1 disables the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<IntOrString>,
    /// Inconclusive measurements tolerated before the metric is Inconclusive (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<IntOrString>,
    /// Consecutive errors tolerated before the metric is Error (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<IntOrString>,
    /// Consecutive successes after which the metric is Successful (default 0: not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_success_limit: Option<IntOrString>,
    /// Where the measurement comes from: exactly one provider.
    pub provider: MetricProvider,
}

/// The external system a metric is measured with. Exactly one field is set.
///
/// Prometheus, web, job and plugin are modelled field by field. The other providers are kept as free
/// objects, preserved verbatim, until Sluice runs them: their documented fields are listed on each.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new(ONE_PROVIDER_RULE).message("exactly one metric provider must be set (prometheus, web, job, datadog, newRelic, wavefront, kayenta, cloudWatch, graphite, influxdb, skywalking, plugin or judge)")
)]
#[serde(rename_all = "camelCase")]
pub struct MetricProvider {
    /// A Prometheus query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// An HTTP request whose JSON response is the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    /// A Kubernetes Job; it succeeding is the measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobMetric>,
    /// Datadog: `apiVersion` (v1|v2), `query`, `queries`, `formula`, `interval`, `aggregator`, … (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub datadog: Option<Map<String, Value>>,
    /// New Relic: `profile`, `query` (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub new_relic: Option<Map<String, Value>>,
    /// Wavefront: `address`, `query` (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub wavefront: Option<Map<String, Value>>,
    /// Kayenta: `address`, `application`, `canaryConfigName`, account names, `threshold`, `scopes` (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub kayenta: Option<Map<String, Value>>,
    /// CloudWatch: `interval`, `metricDataQueries` (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub cloud_watch: Option<Map<String, Value>>,
    /// Graphite: `address`, `query` (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub graphite: Option<Map<String, Value>>,
    /// InfluxDB: `profile`, `query` (kept verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub influxdb: Option<Map<String, Value>>,
    /// Apache SkyWalking: `address`, `query`, `interval` (kept verbatim). Note the lower-case wire name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "skywalking"
    )]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub skywalking: Option<Map<String, Value>>,
    /// Metric plugins: plugin name (`"<org>/<name>"`) to its own configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub plugin: Option<BTreeMap<String, Value>>,
    /// **Sluice extension**: the built-in statistical judge, canary against baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<super::judge::JudgeProvider>,
}

/// Which provider a metric uses, as [`MetricProvider::kind`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// `prometheus`
    Prometheus,
    /// `web`
    Web,
    /// `job`
    Job,
    /// `datadog`
    Datadog,
    /// `newRelic`
    NewRelic,
    /// `wavefront`
    Wavefront,
    /// `kayenta`
    Kayenta,
    /// `cloudWatch`
    CloudWatch,
    /// `graphite`
    Graphite,
    /// `influxdb`
    Influxdb,
    /// `skywalking`
    SkyWalking,
    /// `plugin`, with the plugin's name (the single key of the map).
    Plugin(String),
    /// `judge` (Sluice extension)
    Judge,
}

impl ProviderKind {
    /// The provider's field name on the wire (`"plugin"` for every plugin).
    pub fn wire_name(&self) -> &'static str {
        match self {
            Self::Prometheus => "prometheus",
            Self::Web => "web",
            Self::Job => "job",
            Self::Datadog => "datadog",
            Self::NewRelic => "newRelic",
            Self::Wavefront => "wavefront",
            Self::Kayenta => "kayenta",
            Self::CloudWatch => "cloudWatch",
            Self::Graphite => "graphite",
            Self::Influxdb => "influxdb",
            Self::SkyWalking => "skywalking",
            Self::Plugin(_) => "plugin",
            Self::Judge => "judge",
        }
    }
}

/// A Prometheus instant (or range) query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// Server URL. Unset: the controller's configured default address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// PromQL, after `{{args.*}}` substitution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// How to authenticate (SigV4 for Amazon Managed Prometheus, OAuth2 client credentials, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Query timeout in **seconds** (an integer, not a duration string); default 30, at most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_HTTP_TIMEOUT_SECONDS))]
    pub timeout: Option<i64>,
    /// Skip TLS verification of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Extra HTTP headers (for example `X-Scope-OrgID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebMetricHeader>,
    /// Run a range query instead of an instant query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_query: Option<PrometheusRangeQueryArgs>,
}

/// The window of a Prometheus range query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusRangeQueryArgs {
    /// Start, as an expression such as `now() - duration("1h")`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End, as an expression such as `now()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Resolution step ("30s", "5m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// Credentials for a metric provider. Keys beyond `sigv4` and `oauth2` (such as `basicAuth`) are
/// kept verbatim, so nothing a user writes is pruned.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Authentication {
    /// AWS SigV4 request signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<Sigv4Config>,
    /// OAuth2 client-credentials flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Config>,
    /// Any other authentication method, as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, Value>,
}

/// AWS SigV4 signing parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sigv4Config {
    /// AWS region to sign for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Credentials profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// IAM role to assume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// OAuth2 client-credentials parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Config {
    /// Token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// Client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Client secret (usually `{{args.<secret-arg>}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Scopes to request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// An HTTP header sent with a query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WebMetricHeader {
    /// Header name.
    pub key: String,
    /// Header value (may use `{{args.*}}`).
    pub value: String,
}

/// An HTTP request; the JSON response (or the part `jsonPath` selects) is the result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebMetric {
    /// GET (default), POST or PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// URL to call.
    pub url: String,
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebMetricHeader>,
    /// Request body as a string (POST/PUT only; not together with `jsonBody`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Request timeout in seconds; default 10, at most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_HTTP_TIMEOUT_SECONDS))]
    pub timeout_seconds: Option<i64>,
    /// JSONPath into the response used as `result`; default `{$}` (the whole body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// Skip TLS verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// Request body as a JSON object (POST/PUT only), kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub json_body: Option<Map<String, Value>>,
    /// How to authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// A Kubernetes Job run as a measurement: it completing successfully is a successful measurement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct JobMetric {
    /// Labels and annotations copied onto the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JobMetricMetadata>,
    /// The Job to run.
    pub spec: JobSpec,
}

/// The metadata a job metric may set on its Job (upstream keeps only these two maps).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct JobMetricMetadata {
    /// Labels for the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations for the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A template argument: a name and, optionally, a default value or where to read one from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Argument {
    /// Name, referenced as `{{args.<name>}}`.
    pub name: String,
    /// The value (a string; quote numbers in YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where to read the value from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
}

/// The source of an argument's value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    /// A key of a Secret in the run's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A field of the owning object (for example `metadata.labels['env']`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
}

/// A key in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// A field path in the owning object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    /// Path such as `metadata.labels['region']` or `status.alb.canaryTargetGroup.name`.
    pub field_path: String,
}

/// Run the metrics whose names match `metricName` (a regular expression, unanchored) in dry-run mode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// Regular expression on metric names (`.*` for all).
    pub metric_name: String,
}

/// Keep `limit` measurements for the metrics whose names match `metricName` (a regular expression).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementRetention {
    /// Regular expression on metric names (`.*` for all).
    pub metric_name: String,
    /// Measurements to keep; 0 means the default of 10.
    pub limit: i32,
}

/// A reference to another AnalysisTemplate (or, with `clusterScope`, a ClusterAnalysisTemplate).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    /// Name of the template.
    pub template_name: String,
    /// True to reference a ClusterAnalysisTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_scope: Option<bool>,
}

/// When a completed AnalysisRun may be garbage-collected.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TtlStrategy {
    /// Seconds to keep any completed run (fallback for the two below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_after_completion: Option<i32>,
    /// Seconds to keep a Failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_after_failure: Option<i32>,
    /// Seconds to keep a Successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_after_success: Option<i32>,
}

// === Status ===

/// The phase of an AnalysisRun, a metric result or a single measurement, spelled as Argo spells it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnalysisPhase {
    /// Not started yet.
    Pending,
    /// Measuring.
    Running,
    /// Completed and passed.
    Successful,
    /// Completed and failed (the rollout aborts).
    Failed,
    /// Completed because of too many errors (the rollout aborts).
    Error,
    /// Completed without a verdict (the rollout pauses for a human).
    Inconclusive,
}

impl AnalysisPhase {
    /// Every phase, in declaration order.
    pub const ALL: [AnalysisPhase; 6] = [
        Self::Pending,
        Self::Running,
        Self::Successful,
        Self::Failed,
        Self::Error,
        Self::Inconclusive,
    ];

    /// The wire spelling ("Successful", …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Successful => "Successful",
            Self::Failed => "Failed",
            Self::Error => "Error",
            Self::Inconclusive => "Inconclusive",
        }
    }

    /// Whether the phase is final (Successful, Failed, Error or Inconclusive), as upstream `Completed()`.
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            Self::Successful | Self::Failed | Self::Error | Self::Inconclusive
        )
    }
}

impl std::fmt::Display for AnalysisPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnalysisPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown analysis phase {s:?}"))
    }
}

/// A plain string on the wire, as upstream declares it (no enum constraint, so objects written by
/// other Argo tooling are never rejected over a phase spelling).
impl JsonSchema for AnalysisPhase {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnalysisPhase".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Pending, Running, Successful, Failed, Error or Inconclusive.",
        })
    }
}

/// Observed state of an AnalysisRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStatus {
    /// Phase of the run. Unset (or `""`, as upstream writes for a new run) means not started.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "phase_or_empty"
    )]
    pub phase: Option<AnalysisPhase>,
    /// Why the run is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per-metric results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_results: Vec<MetricResult>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Counts of metric verdicts (dry-run metrics excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_summary: Option<RunSummary>,
    /// Counts of dry-run metric verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_summary: Option<RunSummary>,
    /// When the run completed (basis of `ttlStrategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// Counts of metrics by verdict. Zero counts are omitted on the wire, as upstream does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Metrics counted (Successful + Failed + Inconclusive + Error).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: i32,
    /// Successful metrics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub successful: i32,
    /// Failed metrics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    /// Inconclusive metrics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inconclusive: i32,
    /// Errored metrics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub error: i32,
}

/// The results of one metric: its recent measurements and running counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// Metric name.
    pub name: String,
    /// Aggregate phase of the metric.
    pub phase: AnalysisPhase,
    /// Most recent measurements (see `measurementRetention`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Why the metric is in this phase (for example the last error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Measurements taken without error (Successful + Failed + Inconclusive).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: i32,
    /// Successful measurements.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub successful: i32,
    /// Failed measurements.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    /// Inconclusive measurements.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inconclusive: i32,
    /// Measurements that errored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub error: i32,
    /// Errors in a row; reset by any non-error measurement.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_error: i32,
    /// Successes in a row (for `consecutiveSuccessLimit`); reset by any other verdict.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_success: i32,
    /// Whether the metric ran in dry-run mode.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Provider state (for example Prometheus' resolved query).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// One measurement of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Verdict of this measurement.
    pub phase: AnalysisPhase,
    /// Why (for example an error message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the measurement started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the value was collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The measured value, as text (`[0.97]`, `NaN`, `true`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Provider state (for example a job name or a Kayenta run id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// When to resume an asynchronous measurement (job, Kayenta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Time>,
    /// **Sluice addition**: the exact query sent, after argument substitution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// **Sluice addition**: how the conditions judged the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionVerdict>,
}

/// **Sluice addition**: the success and failure conditions as evaluated for one measurement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionVerdict {
    /// The success condition evaluated (after argument substitution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// Whether it held. Unset when there was no success condition or it could not be evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition_met: Option<bool>,
    /// The failure condition evaluated (after argument substitution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Whether it held. Unset when there was no failure condition or it could not be evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition_met: Option<bool>,
    /// How the verdict followed, in words (for example "neither condition held: Inconclusive").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Reads a run phase, treating `""` (what upstream writes before a run starts) as unset.
pub(crate) fn phase_or_empty<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<AnalysisPhase>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

// === Accessors: the documented defaults ===

/// A field whose value cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// An int-or-string field holds a string that is not an integer (often an unresolved `{{args.x}}`).
    #[error("{field}: {value:?} is not an integer")]
    NotAnInteger {
        /// Wire name of the field.
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// A duration field is not a Go duration ("30s", "5m", "1h30m") or is negative.
    #[error("{field}: {value:?} is not a duration: {reason}")]
    BadDuration {
        /// Wire name of the field.
        field: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `count` is above 1 but no `interval` says how far apart the measurements are.
    #[error("count: {count} measurements need an interval")]
    CountNeedsInterval {
        /// The count as resolved.
        count: i32,
    },
    /// A metric sets no provider or several.
    #[error("metric provider: expected exactly one provider, found {found:?}")]
    ProviderCount {
        /// Wire names of the providers that are set.
        found: Vec<&'static str>,
    },
    /// The `plugin` provider must name exactly one plugin.
    #[error("metric provider: plugin must name exactly one plugin, found {found:?}")]
    PluginCount {
        /// The plugin names found.
        found: Vec<String>,
    },
}

/// The integer in an int-or-string field, or the default when unset.
///
/// Upstream's `IntValue()` silently reads a non-numeric string as 0; Sluice reports it instead.
fn int_or_default(
    value: Option<&IntOrString>,
    field: &'static str,
    default: i32,
) -> Result<i32, FieldError> {
    match value {
        None => Ok(default),
        Some(IntOrString::Int(n)) => Ok(*n),
        Some(IntOrString::String(s)) => s.parse().map_err(|_| FieldError::NotAnInteger {
            field,
            value: s.clone(),
        }),
    }
}

/// Parses a Go duration string; `None` when unset or empty.
fn duration(
    value: Option<&str>,
    field: &'static str,
) -> Result<Option<std::time::Duration>, FieldError> {
    let Some(text) = value.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = |reason: String| FieldError::BadDuration {
        field,
        value: text.to_owned(),
        reason,
    };
    let parsed = kube::core::Duration::from_str(text).map_err(|e| bad(e.to_string()))?;
    if parsed.is_negative() {
        return Err(bad("negative".into()));
    }
    Ok(Some(parsed.into()))
}

impl Metric {
    /// The interval between measurements; `None` when unset (a single measurement).
    pub fn interval(&self) -> Result<Option<std::time::Duration>, FieldError> {
        duration(self.interval.as_deref(), "interval")
    }

    /// The delay before the first measurement; `None` when unset.
    pub fn initial_delay(&self) -> Result<Option<std::time::Duration>, FieldError> {
        duration(self.initial_delay.as_deref(), "initialDelay")
    }

    /// How many measurements to take, as upstream `EffectiveCount()`: `Some(n)` for a bounded metric,
    /// `None` to measure until the run is terminated.
    ///
    /// Count unset or 0: 1 without an interval, unbounded with one. Otherwise the count as written;
    /// a count above 1 without an interval is an error (upstream refuses such a metric when it
    /// creates the run).
    pub fn effective_count(&self) -> Result<Option<i32>, FieldError> {
        let count = int_or_default(self.count.as_ref(), "count", 0)?;
        let has_interval = self.interval.as_deref().is_some_and(|i| !i.is_empty());
        match (count, has_interval) {
            (0, false) => Ok(Some(1)),
            (0, true) => Ok(None),
            (n, false) if n > 1 => Err(FieldError::CountNeedsInterval { count: n }),
            (n, _) => Ok(Some(n)),
        }
    }

    /// Failed measurements tolerated before the metric fails: default 0. A negative value
    /// (documented: -1) disables the limit.
    pub fn failure_limit(&self) -> Result<i32, FieldError> {
        int_or_default(self.failure_limit.as_ref(), "failureLimit", 0)
    }

    /// Inconclusive measurements tolerated before the metric is Inconclusive: default 0.
    pub fn inconclusive_limit(&self) -> Result<i32, FieldError> {
        int_or_default(self.inconclusive_limit.as_ref(), "inconclusiveLimit", 0)
    }

    /// Consecutive errors tolerated before the metric is Error: default 4
    /// ([`DEFAULT_CONSECUTIVE_ERROR_LIMIT`]).
    pub fn consecutive_error_limit(&self) -> Result<i32, FieldError> {
        int_or_default(
            self.consecutive_error_limit.as_ref(),
            "consecutiveErrorLimit",
            DEFAULT_CONSECUTIVE_ERROR_LIMIT,
        )
    }

    /// Consecutive successes that make the metric Successful: default 0, meaning not used.
    pub fn consecutive_success_limit(&self) -> Result<i32, FieldError> {
        int_or_default(
            self.consecutive_success_limit.as_ref(),
            "consecutiveSuccessLimit",
            0,
        )
    }
}

impl MetricProvider {
    /// The single provider this metric uses, or an error naming what was found instead.
    pub fn kind(&self) -> Result<ProviderKind, FieldError> {
        let mut kinds = self.kinds();
        if kinds.len() != 1 {
            return Err(FieldError::ProviderCount {
                found: kinds.iter().map(ProviderKind::wire_name).collect(),
            });
        }
        let kind = kinds.remove(0);
        if let ProviderKind::Plugin(_) = kind {
            let names: Vec<String> = self.plugin.iter().flat_map(|p| p.keys().cloned()).collect();
            if names.len() != 1 {
                return Err(FieldError::PluginCount { found: names });
            }
            return Ok(ProviderKind::Plugin(names[0].clone()));
        }
        Ok(kind)
    }

    /// Every provider that is set (more than one is invalid; see [`MetricProvider::kind`]).
    pub fn kinds(&self) -> Vec<ProviderKind> {
        let plugin_name = self.plugin.as_ref().and_then(|p| p.keys().next().cloned());
        [
            (self.prometheus.is_some(), ProviderKind::Prometheus),
            (self.web.is_some(), ProviderKind::Web),
            (self.job.is_some(), ProviderKind::Job),
            (self.datadog.is_some(), ProviderKind::Datadog),
            (self.new_relic.is_some(), ProviderKind::NewRelic),
            (self.wavefront.is_some(), ProviderKind::Wavefront),
            (self.kayenta.is_some(), ProviderKind::Kayenta),
            (self.cloud_watch.is_some(), ProviderKind::CloudWatch),
            (self.graphite.is_some(), ProviderKind::Graphite),
            (self.influxdb.is_some(), ProviderKind::Influxdb),
            (self.skywalking.is_some(), ProviderKind::SkyWalking),
            (
                self.plugin.is_some(),
                ProviderKind::Plugin(plugin_name.unwrap_or_default()),
            ),
            (self.judge.is_some(), ProviderKind::Judge),
        ]
        .into_iter()
        .filter_map(|(set, kind)| set.then_some(kind))
        .collect()
    }
}

impl PrometheusMetric {
    /// Query timeout: `timeout` seconds, default 30 ([`DEFAULT_PROMETHEUS_TIMEOUT_SECONDS`]).
    pub fn timeout(&self) -> std::time::Duration {
        seconds(self.timeout, DEFAULT_PROMETHEUS_TIMEOUT_SECONDS)
    }

    /// Whether to skip TLS verification (default false).
    pub fn insecure(&self) -> bool {
        self.insecure.unwrap_or(false)
    }
}

impl WebMetric {
    /// HTTP method, default GET.
    pub fn method(&self) -> &str {
        self.method
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(DEFAULT_WEB_METHOD)
    }

    /// Request timeout: `timeoutSeconds`, default 10 ([`DEFAULT_WEB_TIMEOUT_SECONDS`]).
    pub fn timeout(&self) -> std::time::Duration {
        seconds(self.timeout_seconds, DEFAULT_WEB_TIMEOUT_SECONDS)
    }

    /// JSONPath selecting the result, default `{$}` (the whole body).
    pub fn json_path(&self) -> &str {
        self.json_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_WEB_JSON_PATH)
    }

    /// Whether to skip TLS verification (default false).
    pub fn insecure(&self) -> bool {
        self.insecure.unwrap_or(false)
    }
}

/// A positive number of seconds, or the default when unset or not positive (as upstream treats 0).
fn seconds(value: Option<i64>, default: i64) -> std::time::Duration {
    // The schema bounds it; objects stored before that bound are held to it too.
    let secs = value
        .filter(|s| *s > 0)
        .unwrap_or(default)
        .min(MAX_HTTP_TIMEOUT_SECONDS);
    std::time::Duration::from_secs(secs.unsigned_abs())
}

impl AnalysisTemplateSpec {
    /// The metric with this name.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The argument with this name.
    pub fn arg(&self, name: &str) -> Option<&Argument> {
        self.args.iter().find(|a| a.name == name)
    }
}

impl AnalysisRunSpec {
    /// The metric with this name.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The argument with this name.
    pub fn arg(&self, name: &str) -> Option<&Argument> {
        self.args.iter().find(|a| a.name == name)
    }

    /// Whether the run was asked to stop (default false).
    pub fn is_terminated(&self) -> bool {
        self.terminate.unwrap_or(false)
    }

    /// Whether `metric` runs in dry-run mode. `matches(pattern, metric)` decides whether an entry's
    /// `metricName` selects the metric; upstream uses an unanchored regular-expression match, and this
    /// module compiles no regular expressions itself.
    pub fn is_dry_run(&self, metric: &str, matches: impl Fn(&str, &str) -> bool) -> bool {
        self.dry_run.iter().any(|d| matches(&d.metric_name, metric))
    }

    /// How many measurements to keep for `metric`: the last matching `measurementRetention` entry
    /// wins (as upstream, which overwrites per match); no match, or a limit of 0 or less, gives the
    /// default of 10 ([`DEFAULT_MEASUREMENT_RETENTION`]).
    pub fn measurement_retention(&self, metric: &str, matches: impl Fn(&str, &str) -> bool) -> i32 {
        self.measurement_retention
            .iter()
            .rev()
            .find(|r| matches(&r.metric_name, metric))
            .map(|r| r.limit)
            .filter(|limit| *limit > 0)
            .unwrap_or(DEFAULT_MEASUREMENT_RETENTION)
    }
}

impl TtlStrategy {
    /// Seconds a run completed in `phase` may live, or `None` to keep it. A Successful run uses
    /// `secondsAfterSuccess`, a Failed run `secondsAfterFailure`; either falls back to
    /// `secondsAfterCompletion`, which also covers Error and Inconclusive runs. Runs still in
    /// progress get `None`.
    pub fn seconds_for(&self, phase: AnalysisPhase) -> Option<i32> {
        let specific = match phase {
            AnalysisPhase::Successful => self.seconds_after_success,
            AnalysisPhase::Failed => self.seconds_after_failure,
            _ => None,
        };
        phase
            .is_completed()
            .then(|| specific.or(self.seconds_after_completion))
            .flatten()
    }
}

impl AnalysisRunStatus {
    /// The run's phase; unset counts as Pending.
    pub fn phase(&self) -> AnalysisPhase {
        self.phase.unwrap_or(AnalysisPhase::Pending)
    }

    /// The result of the metric with this name.
    pub fn metric_result(&self, name: &str) -> Option<&MetricResult> {
        self.metric_results.iter().find(|r| r.name == name)
    }
}

impl AnalysisRun {
    /// The run's phase; no status yet counts as Pending.
    pub fn phase(&self) -> AnalysisPhase {
        self.status
            .as_ref()
            .map_or(AnalysisPhase::Pending, AnalysisRunStatus::phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::round_trip;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;

    fn metric(yaml: &str) -> Metric {
        serde_yaml::from_str(yaml).expect("a metric")
    }

    // --- Upstream documentation examples (docs/features/analysis.md, docs/analysis/*.md) ---

    #[test]
    fn background_analysis_template_round_trips() {
        let at: AnalysisTemplate = round_trip(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: success-rate
spec:
  args:
  - name: service-name
  metrics:
  - name: success-rate
    interval: 5m
    successCondition: result[0] >= 0.95
    failureLimit: 3
    provider:
      prometheus:
        address: http://prometheus.example.com:9090
        query: |
          sum(irate(
            istio_requests_total{reporter="source",destination_service=~"{{args.service-name}}",response_code!~"5.*"}[5m]
          )) /
          sum(irate(
            istio_requests_total{reporter="source",destination_service=~"{{args.service-name}}"}[5m]
          ))
"#,
        );
        let m = at.spec.metric("success-rate").unwrap();
        assert_eq!(m.failure_limit.as_ref(), Some(&IntOrString::Int(3)));
        assert_eq!(
            m.interval().unwrap(),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            m.effective_count().unwrap(),
            None,
            "interval without count runs until terminated"
        );
        assert_eq!(m.provider.kind().unwrap(), ProviderKind::Prometheus);
        assert!(at.spec.arg("service-name").unwrap().value.is_none());
    }

    #[test]
    fn cluster_template_with_default_args_round_trips() {
        let cat: ClusterAnalysisTemplate = round_trip(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: ClusterAnalysisTemplate
metadata:
  name: success-rate
spec:
  args:
  - name: service-name
  - name: prometheus-port
    value: "9090"
  metrics:
  - name: success-rate
    successCondition: result[0] >= 0.95
    provider:
      prometheus:
        address: "http://prometheus.example.com:{{args.prometheus-port}}"
        query: sum(up)
"#,
        );
        // Derefs to the shared spec type.
        let spec: &AnalysisTemplateSpec = &cat.spec;
        assert_eq!(
            spec.arg("prometheus-port").unwrap().value.as_deref(),
            Some("9090")
        );
        assert_eq!(
            spec.metrics[0].effective_count().unwrap(),
            Some(1),
            "no interval, no count: one"
        );
        assert_eq!(ClusterAnalysisTemplate::crd().spec.scope, "Cluster");
    }

    #[test]
    fn secret_args_and_web_metric_round_trip() {
        let at: AnalysisTemplate = round_trip(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: args-example
spec:
  args:
  - name: service-name
  - name: stable-hash
  - name: latest-hash
  - name: api-url
    value: http://example/measure
  - name: api-token
    valueFrom:
      secretKeyRef:
        name: token-secret
        key: apiToken
  metrics:
  - name: webmetric
    successCondition: result == 'true'
    provider:
      web:
        url: "{{ args.api-url }}?service={{ args.service-name }}"
        headers:
          - key: Authorization
            value: "Bearer {{ args.api-token }}"
        jsonPath: "{$.results.ok}"
"#,
        );
        let token = at.spec.arg("api-token").unwrap();
        let secret = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("token-secret", "apiToken")
        );
        let web = at.spec.metrics[0].provider.web.as_ref().unwrap();
        assert_eq!(web.method(), "GET");
        assert_eq!(web.timeout(), std::time::Duration::from_secs(10));
        assert_eq!(web.json_path(), "{$.results.ok}");
    }

    #[test]
    fn web_post_with_json_body_round_trips() {
        let m: Metric = round_trip(
            r#"
name: webmetric
successCondition: result == true
provider:
  web:
    method: POST
    url: "http://my-server.com/api/v1/measurement?service={{ args.service-name }}"
    timeoutSeconds: 20
    headers:
      - key: Authorization
        value: "Bearer {{ args.api-token }}"
      - key: Content-Type
        value: "application/json"
    jsonBody:
      key1: value_1
      key2:
        nestedObj: nested value
        key3: "{{ args.service-name }}"
    jsonPath: "{$.data.ok}"
"#,
        );
        let web = m.provider.web.unwrap();
        assert_eq!(web.method(), "POST");
        assert_eq!(web.timeout(), std::time::Duration::from_secs(20));
        assert_eq!(web.json_body.unwrap()["key2"]["nestedObj"], "nested value");
    }

    #[test]
    fn job_metric_round_trips() {
        let m: Metric = round_trip(
            r#"
name: test
provider:
  job:
    metadata:
      annotations:
        foo: bar
      labels:
        foo: bar
    spec:
      backoffLimit: 1
      template:
        spec:
          containers:
          - name: test
            image: my-image:latest
            command: [my-test-script, my-service.default.svc.cluster.local]
          restartPolicy: Never
"#,
        );
        let job = m.provider.job.as_ref().unwrap();
        assert_eq!(job.spec.backoff_limit, Some(1));
        assert_eq!(m.provider.kind().unwrap(), ProviderKind::Job);
    }

    #[test]
    fn prometheus_options_round_trip() {
        let m: Metric = round_trip(
            r#"
name: success-rate
interval: 5m
successCondition: result[0] >= 0.95
failureLimit: 3
provider:
  prometheus:
    address: https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1
    timeout: 40
    insecure: true
    headers:
    - key: X-Scope-OrgID
      value: tenant_a
    query: sum(rate(http_requests_total[5m]))
    authentication:
      sigv4:
        region: us-east-1
        profile: default
        roleArn: arn:aws:iam::123456789012:role/amp
      oauth2:
        tokenUrl: https://auth.example.com/token
        clientId: rollouts
        clientSecret: "{{ args.client-secret }}"
        scopes: [read]
    rangeQuery:
      start: now() - duration("{{args.lookback}}")
      end: now()
      step: 1m
"#,
        );
        let prom = m.provider.prometheus.unwrap();
        assert_eq!(prom.timeout(), std::time::Duration::from_secs(40));
        assert!(prom.insecure());
        assert_eq!(prom.range_query.unwrap().step.as_deref(), Some("1m"));
        let auth = prom.authentication.unwrap();
        assert_eq!(
            auth.sigv4.unwrap().role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/amp")
        );
        assert!(auth.other.is_empty());
    }

    #[test]
    fn unknown_authentication_methods_are_kept() {
        let m: Metric = round_trip(
            r#"
name: m
provider:
  prometheus:
    address: http://prometheus:9090
    query: up
    authentication:
      basicAuth:
        username: "{{args.user}}"
        password: "{{args.password}}"
"#,
        );
        let auth = m.provider.prometheus.unwrap().authentication.unwrap();
        assert_eq!(auth.other["basicAuth"]["username"], "{{args.user}}");
    }

    #[test]
    fn what_upstream_writes_for_empty_structs_round_trips() {
        // Go marshals non-pointer structs even when empty: `authentication: {sigv4: {}, oauth2: {}}`.
        let _: Metric = round_trip(
            r#"
name: m
provider:
  prometheus:
    query: up
    authentication: {sigv4: {}, oauth2: {}}
"#,
        );
    }

    #[test]
    fn dry_run_retention_and_nested_templates_round_trip() {
        let spec: AnalysisTemplateSpec = round_trip(
            r#"
dryRun:
- metricName: total-5xx-errors
measurementRetention:
- metricName: .*
  limit: 20
templates:
- templateName: error-rate
- templateName: success-rate
  clusterScope: true
metrics:
- name: total-5xx-errors
  interval: 5m
  failureCondition: result[0] >= 10
  failureLimit: 3
  provider:
    prometheus:
      address: http://prometheus.example.com:9090
      query: sum(irate(istio_requests_total{response_code=~"5.*"}[5m]))
"#,
        );
        assert_eq!(spec.templates[1].cluster_scope, Some(true));
        assert_eq!(spec.dry_run[0].metric_name, "total-5xx-errors");
    }

    #[test]
    fn int_or_string_fields_keep_their_form() {
        let m: Metric = round_trip(
            r#"
name: templated
interval: "{{args.interval}}"
count: "{{args.count}}"
failureLimit: "{{args.failure-limit}}"
inconclusiveLimit: 2
consecutiveErrorLimit: "6"
consecutiveSuccessLimit: 3
provider:
  prometheus:
    query: up
"#,
        );
        assert_eq!(m.count, Some(IntOrString::String("{{args.count}}".into())));
        assert_eq!(
            m.effective_count(),
            Err(FieldError::NotAnInteger {
                field: "count",
                value: "{{args.count}}".into()
            }),
            "an unresolved argument is reported, not read as 0"
        );
        assert_eq!(
            m.consecutive_error_limit().unwrap(),
            6,
            "a numeric string is an integer"
        );
        assert_eq!(m.consecutive_success_limit().unwrap(), 3);
        assert_eq!(m.inconclusive_limit().unwrap(), 2);
        assert!(m.interval().is_err());
    }

    #[test]
    fn providers_sluice_does_not_run_yet_are_kept_verbatim() {
        for provider in [
            "datadog: {apiVersion: v2, interval: 5m, queries: {a: 'sum:requests.error{service:x}.as_count()', b: 'sum:requests{service:x}.as_count()'}, formula: a / b, aggregator: sum, secretRef: {name: dd, namespaced: true}}",
            "newRelic: {profile: my-newrelic-secret, query: \"FROM Transaction SELECT percentage(count(*), WHERE httpResponseCode != 500) as successRate\"}",
            "wavefront: {address: example.wavefront.com, query: \"sum(ts(istio.requestcount.count))\"}",
            "graphite: {address: http://graphite.example.com:9090, query: \"target=summarize(asPercent(sumSeries(stats.timers.httpServerRequests.app.x.exception.*.method.*.outcome.{CLIENT_ERROR,INFORMATIONAL,REDIRECTION,SUCCESS}.status.*.uri.*.count)),'5min','avg')\"}",
            "influxdb: {profile: my-influxdb-secret, query: 'from(bucket: \"app_istio\") |> range(start: -15m)'}",
            "skywalking: {address: http://skywalking-oap.istio-system:12800, interval: 3m, query: 'query queryData($duration: Duration!) { service_apdex: readMetricsValues(condition: { name: \"service_apdex\", entity: { scope: Service, serviceName: \"x\", normal: true } }, duration: $duration) { label values { values { value } } } }'}",
            "cloudWatch: {interval: 5m, metricDataQueries: [{id: rate, expression: errors / requests}, {id: errors, returnData: false, metricStat: {metric: {namespace: AWS/ApplicationELB, metricName: HTTPCode_Target_5XX_Count, dimensions: [{name: LoadBalancer, value: app/lb/1}]}, period: 300, stat: Sum, unit: Count}}]}",
            "kayenta: {address: https://kayenta.example.com, application: guestbook, canaryConfigName: my-test, metricsAccountName: wavefront-prod, configurationAccountName: intuit-kayenta, storageAccountName: intuit-kayenta, threshold: {pass: 90, marginal: 75}, scopes: [{name: default, controlScope: {scope: app=guestbook and rollouts-pod-template-hash=abc, step: 60, start: '{{args.start-time}}', end: '{{args.end-time}}'}, experimentScope: {scope: app=guestbook and rollouts-pod-template-hash=def, step: 60, start: '{{args.start-time}}', end: '{{args.end-time}}'}}]}",
            "plugin: {argoproj-labs/sample-prometheus: {address: http://prometheus.local, query: 'sum(up)'}}",
        ] {
            let yaml = format!("name: m\nprovider:\n  {provider}\n");
            let m: Metric = round_trip(&yaml);
            assert!(m.provider.kind().is_ok(), "{provider}");
        }
        let plugin = metric(
            "name: m\nprovider:\n  plugin: {argoproj-labs/sample-prometheus: {query: up}}\n",
        );
        assert_eq!(
            plugin.provider.kind().unwrap(),
            ProviderKind::Plugin("argoproj-labs/sample-prometheus".into())
        );
    }

    #[test]
    fn analysis_run_with_status_round_trips() {
        let run: AnalysisRun = round_trip(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: guestbook-6c54544f8f-2-1
spec:
  args:
  - name: service-name
    value: guestbook-svc.default.svc.cluster.local
  metrics:
  - name: success-rate
    successCondition: isNaN(result) || result >= 0.95
    provider:
      prometheus:
        address: http://prometheus.example.com:9090
        query: sum(up)
  terminate: true
  ttlStrategy:
    secondsAfterCompletion: 3600
    secondsAfterFailure: 86400
  dryRun:
  - metricName: .*
  measurementRetention:
  - metricName: success
    limit: 20
status:
  metricResults:
  - count: 1
    measurements:
    - finishedAt: "2021-02-10T00:15:26Z"
      phase: Successful
      startedAt: "2021-02-10T00:15:26Z"
      value: NaN
      query: sum(up)
      condition:
        successCondition: isNaN(result) || result >= 0.95
        successConditionMet: true
        message: success condition held
    name: success-rate
    phase: Successful
    successful: 1
    consecutiveSuccess: 1
    dryRun: true
    metadata:
      ResolvedPrometheusQuery: sum(up)
  phase: Successful
  message: Run Terminated
  startedAt: "2021-02-10T00:15:26Z"
  completedAt: "2021-02-10T00:15:27Z"
  runSummary: {}
  dryRunSummary:
    count: 1
    successful: 1
"#,
        );
        assert_eq!(run.phase(), AnalysisPhase::Successful);
        let status = run.status.as_ref().unwrap();
        let result = status.metric_result("success-rate").unwrap();
        assert_eq!(result.measurements[0].value.as_deref(), Some("NaN"));
        assert_eq!(
            result.measurements[0]
                .condition
                .as_ref()
                .unwrap()
                .success_condition_met,
            Some(true)
        );
        assert!(run.spec.is_terminated());
        assert_eq!(
            run.spec
                .ttl_strategy
                .as_ref()
                .unwrap()
                .seconds_for(run.phase()),
            Some(3600)
        );
    }

    #[test]
    fn empty_phase_written_by_upstream_reads_as_pending() {
        let status: AnalysisRunStatus =
            serde_json::from_value(serde_json::json!({"phase": "", "runSummary": {}})).unwrap();
        assert_eq!(status.phase, None);
        assert_eq!(status.phase(), AnalysisPhase::Pending);
        let run = AnalysisRun::new("r", AnalysisRunSpec::default());
        assert_eq!(run.phase(), AnalysisPhase::Pending);
    }

    #[test]
    fn phases_use_argo_spelling() {
        for phase in AnalysisPhase::ALL {
            let json = serde_json::to_value(phase).unwrap();
            assert_eq!(json, Value::String(phase.as_str().into()));
            assert_eq!(phase.as_str().parse::<AnalysisPhase>().unwrap(), phase);
        }
        assert_eq!(
            AnalysisPhase::ALL.map(AnalysisPhase::as_str),
            [
                "Pending",
                "Running",
                "Successful",
                "Failed",
                "Error",
                "Inconclusive"
            ]
        );
        let completed: Vec<_> = AnalysisPhase::ALL
            .into_iter()
            .filter(|p| p.is_completed())
            .collect();
        assert_eq!(
            completed,
            [
                AnalysisPhase::Successful,
                AnalysisPhase::Failed,
                AnalysisPhase::Error,
                AnalysisPhase::Inconclusive
            ]
        );
        assert!(serde_json::from_value::<AnalysisPhase>(Value::String("Bogus".into())).is_err());
    }

    // --- Accessor defaults ---

    #[test]
    fn metric_defaults_follow_upstream() {
        let m = metric("name: m\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(m.failure_limit().unwrap(), 0);
        assert_eq!(m.inconclusive_limit().unwrap(), 0);
        assert_eq!(m.consecutive_error_limit().unwrap(), 4);
        assert_eq!(m.consecutive_success_limit().unwrap(), 0);
        assert_eq!(m.effective_count().unwrap(), Some(1));
        assert_eq!(m.interval().unwrap(), None);
        assert_eq!(m.initial_delay().unwrap(), None);
        let prom = m.provider.prometheus.as_ref().unwrap();
        assert_eq!(prom.timeout(), std::time::Duration::from_secs(30));
        assert!(!prom.insecure());

        let m = metric("name: m\ninterval: 30s\ncount: 0\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(
            m.effective_count().unwrap(),
            None,
            "count 0 with an interval runs until terminated"
        );
        let m = metric(
            "name: m\ninterval: 1m30s\ncount: 5\ninitialDelay: 2m\nprovider: {prometheus: {query: up}}\n",
        );
        assert_eq!(m.effective_count().unwrap(), Some(5));
        assert_eq!(
            m.interval().unwrap(),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            m.initial_delay().unwrap(),
            Some(std::time::Duration::from_secs(120))
        );
        let m = metric("name: m\nfailureLimit: -1\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(m.failure_limit().unwrap(), -1);
        let m = metric("name: m\ninterval: -5s\nprovider: {prometheus: {query: up}}\n");
        assert!(m.interval().is_err(), "negative durations are refused");
    }

    #[test]
    fn retention_and_dry_run_selection() {
        let spec: AnalysisRunSpec = serde_yaml::from_str(
            r#"
metrics: []
dryRun:
- metricName: total-4xx
measurementRetention:
- metricName: .*
  limit: 20
- metricName: total-5xx
  limit: 0
- metricName: latency
  limit: 3
"#,
        )
        .unwrap();
        // A stand-in matcher: the engine supplies the regular-expression one.
        let matches = |pattern: &str, name: &str| pattern == ".*" || pattern == name;
        assert_eq!(
            spec.measurement_retention("latency", matches),
            3,
            "the last match wins"
        );
        assert_eq!(
            spec.measurement_retention("total-5xx", matches),
            10,
            "limit 0 means the default"
        );
        assert_eq!(spec.measurement_retention("success", matches), 20);
        assert_eq!(
            AnalysisRunSpec::default().measurement_retention("x", matches),
            10
        );
        assert!(spec.is_dry_run("total-4xx", matches));
        assert!(!spec.is_dry_run("total-5xx", matches));
        assert!(!spec.is_terminated());
    }

    #[test]
    fn ttl_strategy_picks_the_phase_specific_value() {
        let ttl = TtlStrategy {
            seconds_after_completion: Some(60),
            seconds_after_failure: Some(600),
            seconds_after_success: None,
        };
        assert_eq!(ttl.seconds_for(AnalysisPhase::Successful), Some(60));
        assert_eq!(ttl.seconds_for(AnalysisPhase::Failed), Some(600));
        assert_eq!(ttl.seconds_for(AnalysisPhase::Error), Some(60));
        assert_eq!(ttl.seconds_for(AnalysisPhase::Inconclusive), Some(60));
        assert_eq!(ttl.seconds_for(AnalysisPhase::Running), None);
        assert_eq!(
            TtlStrategy::default().seconds_for(AnalysisPhase::Failed),
            None
        );
    }

    #[test]
    fn provider_kind_reports_zero_or_several() {
        let none = MetricProvider::default();
        assert_eq!(
            none.kind(),
            Err(FieldError::ProviderCount { found: vec![] })
        );
        let two: MetricProvider =
            serde_yaml::from_str("{prometheus: {query: up}, web: {url: http://x}}").unwrap();
        assert_eq!(
            two.kind(),
            Err(FieldError::ProviderCount {
                found: vec!["prometheus", "web"]
            })
        );
        let plugins: MetricProvider = serde_yaml::from_str("{plugin: {a/b: {}, c/d: {}}}").unwrap();
        assert!(matches!(
            plugins.kind(),
            Err(FieldError::PluginCount { .. })
        ));
    }

    // --- Apiserver rules (CEL), evaluated locally ---

    fn metric_json(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn exactly_one_provider_is_enforced() {
        let one = metric_json("{prometheus: {query: up}}");
        assert!(MetricProvider::validate_cel(&one, None).is_ok());
        let plugin = metric_json("{plugin: {argoproj-labs/x: {a: 1}}}");
        assert!(MetricProvider::validate_cel(&plugin, None).is_ok());
        let opaque = metric_json("{datadog: {query: 'avg:x{*}'}}");
        assert!(MetricProvider::validate_cel(&opaque, None).is_ok());
        let none = metric_json("{}");
        assert!(MetricProvider::validate_cel(&none, None).is_err());
        let two = metric_json("{prometheus: {query: up}, job: {spec: {template: {}}}}");
        let err = MetricProvider::validate_cel(&two, None).unwrap_err();
        assert!(
            err.to_string().contains("exactly one metric provider"),
            "{err}"
        );
    }

    #[test]
    fn count_above_one_needs_an_interval() {
        let m = metric("name: m\ncount: 3\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(
            m.effective_count(),
            Err(FieldError::CountNeedsInterval { count: 3 })
        );
        let m =
            metric("name: m\ncount: \"3\"\ninterval: ''\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(
            m.effective_count(),
            Err(FieldError::CountNeedsInterval { count: 3 })
        );
        let m = metric("name: m\ncount: 1\nprovider: {prometheus: {query: up}}\n");
        assert_eq!(m.effective_count(), Ok(Some(1)));
        // Not an apiserver rule: a templated count is only known once arguments are resolved, and
        // the apiserver accepts the template as upstream's does.
        let templated = metric_json("{name: m, count: 3, provider: {prometheus: {query: up}}}");
        assert!(Metric::validate_cel(&templated, None).is_ok());
    }

    #[test]
    fn whole_objects_are_checked_with_nested_rules() {
        let good: AnalysisTemplate = serde_yaml::from_str(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: t}
spec:
  metrics:
  - name: a
    interval: 1m
    count: 3
    provider: {prometheus: {query: up}}
  - name: b
    provider: {web: {url: "http://x"}}
"#,
        )
        .unwrap();
        assert!(good.validate_cel().is_ok());
        let mut bad = good.clone();
        bad.spec.metrics[1].provider.prometheus = Some(PrometheusMetric::default());
        assert!(bad.validate_cel().is_err());
        let mut bad_run = AnalysisRun::new(
            "r",
            AnalysisRunSpec {
                metrics: good.spec.metrics.clone(),
                ..Default::default()
            },
        );
        assert!(bad_run.validate_cel().is_ok());
        bad_run.spec.metrics[0].provider = MetricProvider::default();
        let err = bad_run.validate_cel().unwrap_err();
        assert!(
            err.to_string().contains("exactly one metric provider"),
            "{err}"
        );
    }

    // --- Generated CRDs ---

    fn schema_of<K: CustomResourceExt>() -> Value {
        let crd = K::crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    fn find_key(value: &Value, key: &str) -> bool {
        match value {
            Value::Object(map) => map.contains_key(key) || map.values().any(|v| find_key(v, key)),
            Value::Array(items) => items.iter().any(|v| find_key(v, key)),
            _ => false,
        }
    }

    #[test]
    fn crds_carry_upstream_names_and_columns() {
        let at = AnalysisTemplate::crd();
        assert_eq!(at.spec.names.short_names, Some(vec!["at".to_string()]));
        assert_eq!(at.spec.scope, "Namespaced");
        let cat = ClusterAnalysisTemplate::crd();
        assert_eq!(cat.spec.names.short_names, Some(vec!["cat".to_string()]));
        assert_eq!(cat.spec.names.plural, "clusteranalysistemplates");
        let ar = analysis_run_crd();
        assert_eq!(ar.spec.names.short_names, Some(vec!["ar".to_string()]));
        let version = &ar.spec.versions[0];
        assert_eq!(
            version.subresources, None,
            "Argo's AnalysisRun CRD has none"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Status", ".status.phase"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
    }

    #[test]
    fn schemas_have_no_defaults_and_keep_free_form_fields() {
        for schema in [
            schema_of::<AnalysisTemplate>(),
            schema_of::<ClusterAnalysisTemplate>(),
            schema_of::<AnalysisRun>(),
        ] {
            assert!(
                !find_key(&schema, "default"),
                "defaults belong in accessors, not the schema"
            );
            let spec = &schema["properties"]["spec"];
            let metrics = &spec["properties"]["metrics"];
            assert_eq!(metrics["x-kubernetes-list-type"], "map");
            assert_eq!(
                metrics["x-kubernetes-list-map-keys"],
                serde_json::json!(["name"])
            );
            assert_eq!(metrics["maxItems"], MAX_METRICS);
            let provider = &metrics["items"]["properties"]["provider"]["properties"];
            for free in ["plugin", "datadog", "kayenta", "cloudWatch"] {
                assert_eq!(
                    provider[free]["x-kubernetes-preserve-unknown-fields"], true,
                    "{free}"
                );
            }
            assert_eq!(
                provider["web"]["properties"]["jsonBody"]["x-kubernetes-preserve-unknown-fields"],
                true
            );
            let auth = &provider["prometheus"]["properties"]["authentication"];
            assert_eq!(auth["x-kubernetes-preserve-unknown-fields"], true);
            assert_eq!(
                metrics["items"]["properties"]["count"]["x-kubernetes-int-or-string"],
                true
            );
            assert_eq!(
                metrics["items"]["properties"]["failureLimit"]["x-kubernetes-int-or-string"],
                true
            );
        }
        let run = schema_of::<AnalysisRun>();
        assert_eq!(
            run["properties"]["spec"]["required"],
            serde_json::json!(["metrics"])
        );
    }
}
