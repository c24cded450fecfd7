//! `Canary` (`flagger.app/v1beta1`): the wire type of a Flagger canary release.
//!
//! Decides which fields a Canary has, how they are spelled on the wire, which values the apiserver
//! rejects (CEL rules in the generated CRD) and what an absent field means (the accessors, which
//! apply Flagger's documented defaults). Field names and types follow upstream Flagger
//! (`pkg/apis/flagger/v1beta1/canary.go`, `status.go`, `artifacts/flagger/crd.yaml`) so manifests
//! written for Flagger apply unchanged.
//!
//! This module must never reject a manifest that upstream documents and accepts, never drop a
//! field a user wrote (deep Istio / Gateway API structures Sluice passes through are kept as
//! preserved JSON), never put `default:` values into the schema (defaults live in the accessors,
//! so that what the user wrote round-trips byte for byte), and never talk to a cluster.
//!
//! Lists, maps and strings that carry CEL rules have generous bounds (`metrics` and `webhooks` at
//! most 64 entries, `match` 32, header maps 32 keys, `stepWeights` 101, durations 64 characters):
//! the apiserver estimates a rule's cost from the largest value a field could hold and refuses a
//! CRD whose estimate exceeds its budget. Upstream has no such bounds; no documented manifest comes
//! near them.
//!
//! Sluice extensions are marked as such in their docs; today there is one,
//! [`CanaryWebhook::gate_timeout`], plus [`CanaryStatus::observed_generation`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default analysis interval when `analysis.interval` is absent or unparsable (Flagger: 60s).
pub const DEFAULT_ANALYSIS_INTERVAL: Duration = Duration::from_secs(60);
/// Flagger never ticks faster than this, whatever `analysis.interval` says.
pub const MIN_ANALYSIS_INTERVAL: Duration = Duration::from_secs(10);
/// Default `progressDeadlineSeconds` (Flagger: 600).
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// Default `analysis.threshold` when absent or not positive (Flagger: 1).
pub const DEFAULT_THRESHOLD: i32 = 1;
/// Default `primaryReadyThreshold` / `canaryReadyThreshold`, in percent (Flagger: 100).
pub const DEFAULT_READY_THRESHOLD: i32 = 100;
/// Default `analysis.maxWeight` when absent or 0 (Flagger: 100).
pub const DEFAULT_MAX_WEIGHT: i32 = 100;
/// Default metric query window `metrics[].interval` (Flagger: `1m`).
pub const DEFAULT_METRIC_INTERVAL: &str = "1m";
/// Default webhook request timeout (Flagger: 10s).
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest webhook request timeout: a longer `timeout` is cut to it, with a Warning Event (a call
/// holds one of the controller's workers; Flagger has no bound).
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Default session affinity cookie max age in seconds (Flagger: 86400, one day).
pub const DEFAULT_COOKIE_MAX_AGE: i64 = 86_400;
/// The only condition type Flagger sets on a Canary.
pub const PROMOTED_CONDITION: &str = "Promoted";

/// Parses a Go `time.ParseDuration` string (`"30s"`, `"1m30s"`, `"500ms"`). Negative durations
/// and garbage give `None`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let parsed: kube::core::Duration = s.parse().ok()?;
    if parsed.is_negative() {
        None
    } else {
        Some(parsed.into())
    }
}

/// The desired behaviour of a canary release: what is released, how traffic is exposed and how the
/// new revision is analysed before promotion.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "Canary",
    plural = "canaries",
    singular = "canary",
    namespaced,
    category = "all",
    status = "CanaryStatus",
    derive = "PartialEq",
    doc = "Canary is the configuration for a canary release, which automatically manages the bootstrap, analysis, traffic shifting, promotion or rollback of an app revision (Flagger flagger.app/v1beta1).",
    // Raw JSON: the structured printcolumn(...) form repeats `type_`/`priority`, which clippy's
    // duplicated_attributes lint rejects.
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"string","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend","priority":1}"#,
    printcolumn = r#"{"name":"FailedChecks","type":"string","jsonPath":".status.failedChecks","priority":1}"#,
    printcolumn = r#"{"name":"Interval","type":"string","jsonPath":".spec.analysis.interval","priority":1}"#,
    printcolumn = r#"{"name":"Mirror","type":"boolean","jsonPath":".spec.analysis.mirror","priority":1}"#,
    printcolumn = r#"{"name":"StepWeight","type":"string","jsonPath":".spec.analysis.stepWeight","priority":1}"#,
    printcolumn = r#"{"name":"StepWeights","type":"string","jsonPath":".spec.analysis.stepWeights","priority":1}"#,
    printcolumn = r#"{"name":"MaxWeight","type":"string","jsonPath":".spec.analysis.maxWeight","priority":1}"#,
    printcolumn = r#"{"name":"LastTransitionTime","type":"string","jsonPath":".status.lastTransitionTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Traffic management provider for this canary (overrides the controller's `-mesh-provider`),
    /// e.g. `istio`, `nginx`, `gatewayapi:v1`, `kubernetes`, `linkerd`, `smi:v1alpha3`.
    /// Kept as a string: an unknown provider is a controller decision, not a schema error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,

    /// Metrics server URL for this canary (overrides the controller's `-metrics-server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,

    /// The workload released: a Deployment, DaemonSet or Service.
    pub target_ref: LocalObjectReference,

    /// The autoscaler of the target (HorizontalPodAutoscaler or KEDA ScaledObject); a `-primary`
    /// copy is managed for the primary workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerReference>,

    /// The NGINX Ingress whose canary copy carries the traffic split (provider `nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_ref: Option<LocalObjectReference>,

    /// The APISIX route whose canary copy carries the traffic split (provider `apisix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_ref: Option<LocalObjectReference>,

    /// The Gloo Upstream whose configuration is copied to the generated upstreams (provider `gloo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ref: Option<CrossNamespaceObjectReference>,

    /// How the ClusterIP Services and the mesh / ingress routing objects are generated.
    /// Upstream's Go type always has one; its CRD does not require it, so neither does Sluice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<CanaryService>,

    /// How a new revision is analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,

    /// Deprecated alias of `analysis`, read only when `analysis` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_analysis: Option<CanaryAnalysis>,

    /// Seconds the canary may go without progress before it is rolled back (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be greater than or equal to 0"))]
    pub progress_deadline_seconds: Option<i32>,

    /// Promote without analysis (readiness and the progress deadline are still checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,

    /// On deletion of the Canary, hand the target back to the user (finalizer `finalizer.flagger.app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_on_deletion: Option<bool>,

    /// Suspend all canary runs; a run in progress is frozen until unsuspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// A reference to an object in the Canary's namespace (`targetRef`, `ingressRef`, `routeRef`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// API version of the referent, e.g. `apps/v1`.
    pub api_version: String,
    /// Kind of the referent, e.g. `Deployment`.
    pub kind: String,
    /// Name of the referent.
    pub name: String,
}

/// A reference to an object that may live in another namespace (`upstreamRef`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceObjectReference {
    /// API version of the referent.
    pub api_version: String,
    /// Kind of the referent.
    pub kind: String,
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent (default: the Canary's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A reference by name, optionally in another namespace (`templateRef`, `providerRef`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedReference {
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent (default: the Canary's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The autoscaler of the target (`autoscalerRef`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerReference {
    /// API version of the scaler, e.g. `autoscaling/v2` or `keda.sh/v1alpha1`.
    pub api_version: String,
    /// Kind of the scaler: `HorizontalPodAutoscaler` or `ScaledObject`.
    pub kind: String,
    /// Name of the scaler.
    pub name: String,
    /// Queries for the primary scaler, by trigger id (KEDA ScaledObject triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_queries: Option<BTreeMap<String, String>>,
    /// Replica bounds for the primary scaler, overriding the target scaler's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_replicas: Option<ScalerReplicas>,
}

/// Replica bounds for the primary autoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct ScalerReplicas {
    /// Minimum replicas of the primary (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be at least 1"))]
    pub min_replicas: Option<i32>,
    /// Maximum replicas of the primary (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be at least 1"))]
    pub max_replicas: Option<i32>,
}

/// How the apex, `-primary` and `-canary` Services and the routing objects are generated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryService {
    /// Name of the generated apex Service (default: `targetRef.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port of the generated Services.
    // The apiserver refuses a Service port outside 1-65535; refusing the Canary says so at once.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("must be between 1 and 65535, inclusive"))]
    pub port: i32,
    /// Name of the Service port (default `http`; use `grpc` for gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Container port number or name the Services target (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `appProtocol` of the Service port (`tcp` gives an Istio TCP route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// `trafficDistribution` of the generated Services (`PreferClose`, `PreferSameZone`, `PreferSameNode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// Add every other container port of the target to the generated Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_discovery: Option<bool>,
    /// Generate headless Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headless: Option<bool>,
    /// HTTP or gRPC request timeout on the generated route, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Backend request timeout (Gateway API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<String>,
    /// Istio gateways the generated VirtualService is bound to (default: the mesh gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Gateway API parents the generated HTTPRoute attaches to (required with `gatewayapi` providers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_refs: Vec<ParentReference>,
    /// Hosts of the generated VirtualService or HTTPRoute (default: the Service name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Generate an Istio delegate VirtualService (no hosts, no gateways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<bool>,
    /// Istio DestinationRule traffic policy, passed through as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub traffic_policy: Option<serde_json::Value>,
    /// Match conditions of the generated route (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub r#match: Vec<HttpMatchRequest>,
    /// Istio HTTP rewrite, passed through as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub rewrite: Option<serde_json::Value>,
    /// Istio retry policy, passed through as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub retries: Option<serde_json::Value>,
    /// Gateway API request mirror filters (`backendRef`, ...), passed through as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_object_list")]
    pub mirror: Vec<serde_json::Value>,
    /// Istio header operations (`request` / `response` `add`, `set`, `remove`), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub headers: Option<serde_json::Value>,
    /// Istio CORS policy, passed through as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub cors_policy: Option<serde_json::Value>,
    /// App Mesh mesh name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_name: Option<String>,
    /// App Mesh backends of the generated virtual nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// Labels and annotations for the apex Service (also put on the mesh object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apex: Option<CustomMetadata>,
    /// Labels and annotations for the `-primary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CustomMetadata>,
    /// Labels and annotations for the `-canary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CustomMetadata>,
    /// Metadata keys on generated objects that the controller leaves alone (upstream places this
    /// under `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged_metadata: Option<UnmanagedMetadata>,
}

fn preserved_object_list(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = crate::api::schema::preserve_unknown_object(generator);
    schemars::json_schema!({ "type": "array", "items": item })
}

/// A Gateway API `ParentReference` (`service.gatewayRefs[]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group of the parent (Gateway API default `gateway.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the parent (Gateway API default `Gateway`; `Service` for GAMMA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace of the parent (default: the Canary's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the parent.
    pub name: String,
    /// Listener name on the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Port on the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// Labels and annotations put on a generated object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetadata {
    /// Labels to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Metadata keys the controller must not strip from generated objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedMetadata {
    /// Label keys left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Annotation keys left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<String>,
}

/// An Istio-style HTTP match condition (`service.match[]`, `analysis.match[]`).
///
/// The union of the fields upstream's CRD declares in both places; A/B testing reads `headers`
/// (header and cookie matches), `queryParams` and `sourceLabels`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Name of the match, copied into generated route names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URI match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// URI scheme match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// HTTP method match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Authority (host) match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Header matches by lower-case header name (`cookie` matches cookies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub headers: Option<BTreeMap<String, StringMatch>>,
    /// Headers that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub without_headers: Option<BTreeMap<String, StringMatch>>,
    /// Query parameter matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub query_params: Option<BTreeMap<String, StringMatch>>,
    /// Port the request is addressed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Labels of the calling workload (Istio, mesh gateway only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Gateways the match applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Case-insensitive URI matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
}

/// A string match: at most one of `exact`, `prefix`, `suffix`, `regex` (RE2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.suffix), has(self.regex)].filter(x, x).size() <= 1").message("at most one of exact, prefix, suffix and regex may be set"))]
pub struct StringMatch {
    /// Exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// RE2 regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// CEL: a duration string as upstream's CRD pattern accepts it (`^[0-9]+(m|s)`).
const DURATION_RULE: &str = "self.matches('^[0-9]+(m|s)')";
const DURATION_MESSAGE: &str =
    "must be a duration starting with a number of seconds or minutes, e.g. 30s or 1m";
/// CEL: a complete Go duration (`90s`, `1h30m`), for Sluice's own fields.
const GO_DURATION_RULE: &str = "self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$')";
const GO_DURATION_MESSAGE: &str = "must be a Go duration, e.g. 30m or 2h";

/// How a new revision is analysed: timing, traffic steps, metrics, webhooks and alerts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.stepWeight) || !has(self.stepWeights)").message("stepWeight and stepWeights are mutually exclusive"))]
pub struct CanaryAnalysis {
    /// Time between two analysis ticks (default 60s, minimum 10s), e.g. `1m`, `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub interval: Option<String>,
    /// Number of analysis ticks for A/B testing (with `match`) and Blue/Green (without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be greater than or equal to 0"))]
    pub iterations: Option<i32>,
    /// Mirror traffic to the canary (Blue/Green, or one pre-step of a canary run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    /// Percentage of traffic mirrored, 0-100 (Istio only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub mirror_weight: Option<i32>,
    /// Largest canary weight before promotion, in percent (0 or absent means 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub max_weight: Option<i32>,
    /// Weight added to the canary per successful tick, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0 && self <= 100").message("must be between 1 and 100"))]
    pub step_weight: Option<i32>,
    /// Explicit canary weights, in increasing order; the last one acts as `maxWeight`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 101))]
    #[x_kube(
        validation = Rule::new("self.all(w, w >= 0 && w <= 100)").message("every weight must be between 0 and 100"),
        validation = Rule::new("self.isSorted() && self.all(w, self.exists_one(v, v == w))").message("weights must be strictly increasing")
    )]
    pub step_weights: Vec<i32>,
    /// Weight moved back to the primary per tick after promotion (0 or absent: all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub step_weight_promotion: Option<i32>,
    /// Failed checks (cumulative per run) before rollback (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be greater than or equal to 0"))]
    pub threshold: Option<i32>,
    /// Percentage of primary pods that must be available for the primary to count as ready (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub primary_ready_threshold: Option<i32>,
    /// Percentage of canary pods that must be available for the canary to count as ready (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("must be between 0 and 100"))]
    pub canary_ready_threshold: Option<i32>,
    /// Alerts sent through AlertProviders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<CanaryAlert>,
    /// Metric checks run every tick (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub metrics: Vec<CanaryMetric>,
    /// Webhooks: gates, tests, load generation, notifications (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub webhooks: Vec<CanaryWebhook>,
    /// A/B testing match conditions (headers, cookies, query parameters, source labels; at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub r#match: Vec<HttpMatchRequest>,
    /// Sticky sessions during a canary run (Istio, Gateway API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

/// Cookie-based session affinity for a canary run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Name of the cookie that pins a user to the canary.
    pub cookie_name: String,
    /// Name of the cookie that pins a user to the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
    /// Cookie lifetime in seconds (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be greater than or equal to 0"))]
    pub max_age: Option<i64>,
    /// Cookie `Domain` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Cookie `Path` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Cookie `SameSite` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
    /// Cookie `Secure` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Cookie `HttpOnly` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// Cookie `Partitioned` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<bool>,
}

/// The `SameSite` attribute of a session affinity cookie.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None`.
    None,
}

/// An alert sent through an AlertProvider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAlert {
    /// Name of the alert.
    pub name: String,
    /// Which events are sent (default `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<AlertSeverity>,
    /// The AlertProvider to send through.
    pub provider_ref: NamespacedReference,
}

/// Alert filtering by severity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertSeverity {
    /// Written as `""`; means `info`.
    #[serde(rename = "")]
    Unspecified,
    /// Every alert.
    Info,
    /// Approvals (gates) and failures.
    Warn,
    /// Failures only.
    Error,
}

/// A metric check: a builtin (`request-success-rate`, `request-duration`), an inline query
/// (deprecated) or a MetricTemplate reference, and the accepted range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryMetric {
    /// Name of the metric (builtins are recognised by name).
    pub name: String,
    /// Query window, substituted as `{{ interval }}` (default `1m`). Not parsed as a Go duration:
    /// some providers take their own syntax (Graphite `1min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub interval: Option<String>,
    /// Deprecated: maximum accepted value (replaced by `thresholdRange.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<serde_json::Number>,
    /// Accepted range of the metric value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<CanaryThresholdRange>,
    /// Deprecated: inline Prometheus query (replaced by `templateRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The MetricTemplate that provides the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<NamespacedReference>,
    /// Extra variables for the template, available as `{{ variables.<key> }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<BTreeMap<String, String>>,
}

/// The accepted range of a metric value; numbers keep the form they were written in (`99` stays
/// an integer on the wire), read them with [`CanaryThresholdRange::min_value`] / `max_value`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)").message("min must not exceed max"))]
pub struct CanaryThresholdRange {
    /// Smallest accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Number>,
    /// Largest accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Number>,
}

/// When a webhook runs and what its answer means.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookType {
    /// Written as `""`; means `rollout`.
    #[serde(rename = "")]
    Unspecified,
    /// Gate before the canary is scaled up; a non-2xx answer keeps the canary Waiting.
    ConfirmRollout,
    /// Once, before the first traffic shift; a failure counts as a failed check.
    PreRollout,
    /// Every tick, before the metric checks (the default); a failure counts as a failed check.
    Rollout,
    /// Gate before promotion; a non-2xx answer keeps the canary WaitingPromotion.
    ConfirmPromotion,
    /// After the run succeeded or failed; failures are only logged.
    PostRollout,
    /// Receives every event the controller emits.
    Event,
    /// Polled while Progressing / Waiting / WaitingPromotion; a 2xx answer rolls back at once.
    Rollback,
    /// Gate before each weight increase; blocks without counting a failure.
    ConfirmTrafficIncrease,
}

impl HookType {
    /// The hook types that hold a run until they answer 2xx.
    pub fn is_gate(self) -> bool {
        matches!(
            self,
            Self::ConfirmRollout | Self::ConfirmPromotion | Self::ConfirmTrafficIncrease
        )
    }
}

/// An HTTP webhook called during the analysis.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gateTimeout) || (has(self.type) && self.type.startsWith('confirm-'))").message("gateTimeout is only allowed on confirm-rollout, confirm-promotion and confirm-traffic-increase webhooks"))]
pub struct CanaryWebhook {
    /// Name of the webhook.
    pub name: String,
    /// When the webhook runs (default `rollout`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub r#type: Option<HookType>,
    /// URL the payload is POSTed to.
    pub url: String,
    /// Request timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub timeout: Option<String>,
    /// Do not send alerts for this webhook's failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_alert: Option<bool>,
    /// Key-value pairs sent in the payload (`cmd`, `type` for the load tester).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Retries of a failed call within one tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must be greater than or equal to 0"))]
    pub retries: Option<i32>,
    /// Skip TLS certificate verification for this webhook.
    #[serde(
        default,
        rename = "disableTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_tls: Option<bool>,
    /// **Sluice extension** (not in Flagger; upstream complaint fluxcd/flagger#1450): how long a
    /// gate (`confirm-rollout`, `confirm-promotion`, `confirm-traffic-increase`) may stay closed
    /// before Sluice gives up and fails the run (rollback, phase Failed). Absent: wait forever,
    /// as Flagger does. Flagger's CRD does not declare it, so Flagger prunes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(GO_DURATION_RULE).message(GO_DURATION_MESSAGE))]
    pub gate_timeout: Option<String>,
}

/// The analysis phase of a Canary, with Flagger's exact strings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CanaryPhase {
    /// Written as `""` by a controller that has not initialised the canary yet.
    #[serde(rename = "")]
    Unspecified,
    /// Creating the primary, Services and routes.
    Initializing,
    /// Primary, Services and routes exist; all traffic goes to the primary.
    Initialized,
    /// Held by a `confirm-rollout` gate.
    Waiting,
    /// Analysis underway.
    Progressing,
    /// Held by a `confirm-promotion` gate; analysis keeps running.
    WaitingPromotion,
    /// The canary spec is being copied to the primary.
    Promoting,
    /// Traffic is going back to the primary.
    Finalising,
    /// Promoted.
    Succeeded,
    /// Rolled back.
    Failed,
    /// Being deleted (finalizer running).
    Terminating,
    /// Finalised.
    Terminated,
}

/// The observed state of a Canary; written only through the `status` subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Analysis phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CanaryPhase>,
    /// Failed checks in the current run (cumulative, not consecutive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_checks: Option<i32>,
    /// Traffic weight currently routed to the canary, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    /// Analysis ticks completed in the current A/B or Blue/Green run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i32>,
    /// Checksums of the ConfigMaps and Secrets the target uses, by `<kind>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked_configs: Option<BTreeMap<String, String>>,
    /// Hash of the last target pod template seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_spec: Option<String>,
    /// Hash of the last promoted pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promoted_spec: Option<String>,
    /// Change fence of the canary target (upstream, newer Flagger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tracked_revision: Option<String>,
    /// When the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Session affinity cookie of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_cookie: Option<String>,
    /// Primary session affinity cookie of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_session_affinity_cookie: Option<String>,
    /// Session affinity cookie of the previous run (expired on the next one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_session_affinity_cookie: Option<String>,
    /// Conditions; Flagger sets one, `Promoted` (reason = phase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::schema::conditions::<CanaryCondition>")]
    pub conditions: Vec<CanaryCondition>,
    /// **Sluice addition**: the `metadata.generation` this status reflects (for kstatus-style
    /// readiness checks). Flagger never writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A Canary status condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryCondition {
    /// Type of the condition (`Promoted`).
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the condition was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Machine-readable reason (the phase, for `Promoted`).
    pub reason: String,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Canary {
    /// The analysis in effect: `spec.analysis`, else the deprecated `spec.canaryAnalysis`.
    pub fn analysis(&self) -> Option<&CanaryAnalysis> {
        self.spec
            .analysis
            .as_ref()
            .or(self.spec.canary_analysis.as_ref())
    }

    /// Whether the run promotes without analysis: `spec.skipAnalysis`, or no analysis at all.
    pub fn skip_analysis(&self) -> bool {
        self.analysis().is_none() || self.spec.skip_analysis.unwrap_or(false)
    }

    /// Whether canary runs are suspended (`spec.suspend`, default false).
    pub fn suspended(&self) -> bool {
        self.spec.suspend.unwrap_or(false)
    }

    /// Whether deleting the Canary hands the target back (`spec.revertOnDeletion`, default false).
    pub fn revert_on_deletion(&self) -> bool {
        self.spec.revert_on_deletion.unwrap_or(false)
    }

    /// `spec.progressDeadlineSeconds`, default 600.
    pub fn progress_deadline_seconds(&self) -> i32 {
        self.spec
            .progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
    }

    /// [`Canary::progress_deadline_seconds`] as a duration (negative values count as 0).
    pub fn progress_deadline(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.progress_deadline_seconds()).unwrap_or(0))
    }

    /// The analysis tick interval: `analysis.interval`, default 60s (also when absent, unparsable,
    /// or there is no analysis), never below 10s.
    pub fn analysis_interval(&self) -> Duration {
        self.analysis()
            .map_or(DEFAULT_ANALYSIS_INTERVAL, CanaryAnalysis::interval)
    }

    /// The names of the apex, primary and canary Services: `service.name` (default
    /// `targetRef.name`), `<apex>-primary`, `<apex>-canary`.
    pub fn service_names(&self) -> (String, String, String) {
        let apex = self
            .spec
            .service
            .as_ref()
            .and_then(|s| s.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.spec.target_ref.name.clone());
        let primary = format!("{apex}-primary");
        let canary = format!("{apex}-canary");
        (apex, primary, canary)
    }
}

impl CanaryAnalysis {
    /// `interval`, default 60s (also when unparsable), never below 10s.
    pub fn interval(&self) -> Duration {
        let interval = self
            .interval
            .as_deref()
            .and_then(parse_go_duration)
            .unwrap_or(DEFAULT_ANALYSIS_INTERVAL);
        interval.max(MIN_ANALYSIS_INTERVAL)
    }

    /// `threshold`, default 1 (also when 0).
    pub fn threshold(&self) -> i32 {
        self.threshold
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_THRESHOLD)
    }

    /// `iterations`, default 0 (a weighted canary run).
    pub fn iterations(&self) -> i32 {
        self.iterations.unwrap_or(0)
    }

    /// `mirror`, default false.
    pub fn mirror(&self) -> bool {
        self.mirror.unwrap_or(false)
    }

    /// The largest canary weight of a weighted run: the last `stepWeights` entry, else
    /// `maxWeight`, else 100 (also when `maxWeight` is 0).
    pub fn max_weight(&self) -> i32 {
        match self.step_weights.last() {
            Some(last) => *last,
            None => self
                .max_weight
                .filter(|w| *w > 0)
                .unwrap_or(DEFAULT_MAX_WEIGHT),
        }
    }

    /// `stepWeight`, default 0 (no linear steps).
    pub fn step_weight(&self) -> i32 {
        self.step_weight.unwrap_or(0)
    }

    /// `stepWeightPromotion`, default 0 (traffic goes back to the primary in one jump).
    pub fn step_weight_promotion(&self) -> i32 {
        self.step_weight_promotion.unwrap_or(0)
    }

    /// `primaryReadyThreshold`, default 100 (percent of primary pods available).
    pub fn primary_ready_threshold(&self) -> i32 {
        self.primary_ready_threshold
            .unwrap_or(DEFAULT_READY_THRESHOLD)
    }

    /// `canaryReadyThreshold`, default 100 (percent of canary pods available).
    pub fn canary_ready_threshold(&self) -> i32 {
        self.canary_ready_threshold
            .unwrap_or(DEFAULT_READY_THRESHOLD)
    }

    /// The webhooks of one type (an absent or empty `type` counts as `rollout`).
    pub fn webhooks_of(&self, hook_type: HookType) -> impl Iterator<Item = &CanaryWebhook> {
        self.webhooks
            .iter()
            .filter(move |w| w.hook_type() == hook_type)
    }
}

impl CanaryMetric {
    /// `interval`, default `1m`, as written (it is substituted into queries verbatim).
    pub fn interval(&self) -> &str {
        self.interval.as_deref().unwrap_or(DEFAULT_METRIC_INTERVAL)
    }

    /// The deprecated `threshold` as a float.
    pub fn threshold_value(&self) -> Option<f64> {
        self.threshold.as_ref().and_then(serde_json::Number::as_f64)
    }
}

impl CanaryThresholdRange {
    /// `min` as a float.
    pub fn min_value(&self) -> Option<f64> {
        self.min.as_ref().and_then(serde_json::Number::as_f64)
    }

    /// `max` as a float.
    pub fn max_value(&self) -> Option<f64> {
        self.max.as_ref().and_then(serde_json::Number::as_f64)
    }

    /// Whether `value` lies within the range (bounds included; an absent bound is open).
    pub fn contains(&self, value: f64) -> bool {
        self.min_value().is_none_or(|min| value >= min)
            && self.max_value().is_none_or(|max| value <= max)
    }
}

impl CanaryWebhook {
    /// The hook type in effect: `type`, with absent or `""` meaning `rollout`.
    pub fn hook_type(&self) -> HookType {
        match self.r#type {
            None | Some(HookType::Unspecified) => HookType::Rollout,
            Some(t) => t,
        }
    }

    /// The request timeout: `timeout`, default 10s (also when unparsable; upstream fails the call),
    /// at most [`MAX_WEBHOOK_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(parse_go_duration)
            .unwrap_or(DEFAULT_WEBHOOK_TIMEOUT)
            .min(MAX_WEBHOOK_TIMEOUT)
    }

    /// Whether `timeout` asks for more than [`MAX_WEBHOOK_TIMEOUT`] (and is cut to it).
    pub fn timeout_above_max(&self) -> bool {
        self.timeout
            .as_deref()
            .and_then(parse_go_duration)
            .is_some_and(|t| t > MAX_WEBHOOK_TIMEOUT)
    }

    /// **Sluice extension**: how long this gate may stay closed before the run fails; `None`
    /// (absent, unparsable, or not a gate) means wait forever, as Flagger does.
    pub fn gate_timeout(&self) -> Option<Duration> {
        if !self.hook_type().is_gate() {
            return None;
        }
        self.gate_timeout.as_deref().and_then(parse_go_duration)
    }

    /// `muteAlert`, default false.
    pub fn mute_alert(&self) -> bool {
        self.mute_alert.unwrap_or(false)
    }

    /// `disableTLS`, default false.
    pub fn disable_tls(&self) -> bool {
        self.disable_tls.unwrap_or(false)
    }

    /// `retries`, default 0.
    pub fn retries(&self) -> i32 {
        self.retries.unwrap_or(0)
    }
}

impl CanaryAlert {
    /// The severity in effect: `severity`, with absent or `""` meaning `info`.
    pub fn severity_level(&self) -> AlertSeverity {
        match self.severity {
            None | Some(AlertSeverity::Unspecified) => AlertSeverity::Info,
            Some(s) => s,
        }
    }
}

impl SessionAffinity {
    /// `maxAge` in seconds, default 86400 (also when 0).
    pub fn max_age(&self) -> i64 {
        self.max_age
            .filter(|a| *a > 0)
            .unwrap_or(DEFAULT_COOKIE_MAX_AGE)
    }
}

impl CanaryStatus {
    /// The `Promoted` condition, if set.
    pub fn promoted_condition(&self) -> Option<&CanaryCondition> {
        self.conditions
            .iter()
            .find(|c| c.r#type == PROMOTED_CONDITION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::round_trip;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn cel(value: serde_json::Value) -> Result<(), Vec<String>> {
        let canary: Canary = serde_json::from_value(value).unwrap();
        kube::core::cel::validate_cel(&canary)
            .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
    }

    fn with_analysis(analysis: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": "podinfo"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "service": {"port": 9898},
                "analysis": analysis,
            },
        })
    }

    // From docs/gitbook/usage/how-it-works.md.
    const HOW_IT_WORKS: &str = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  service:
    port: 9898
  analysis:
    interval: 1m
    threshold: 10
    maxWeight: 50
    stepWeight: 5
    metrics:
      - name: request-success-rate
        thresholdRange:
          min: 99
        interval: 1m
      - name: request-duration
        thresholdRange:
          max: 500
        interval: 1m
    webhooks:
      - name: load-test
        url: http://flagger-loadtester.test/
        metadata:
          cmd: "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"
"#;

    #[test]
    fn how_it_works_example_round_trips() {
        let canary: Canary = round_trip(HOW_IT_WORKS);
        let analysis = canary.analysis().unwrap();
        assert_eq!(analysis.threshold(), 10);
        assert_eq!(analysis.max_weight(), 50);
        assert_eq!(analysis.step_weight(), 5);
        assert_eq!(
            analysis.metrics[0]
                .threshold_range
                .as_ref()
                .unwrap()
                .min_value(),
            Some(99.0)
        );
        assert_eq!(analysis.webhooks[0].hook_type(), HookType::Rollout);
        assert_eq!(canary.analysis_interval(), Duration::from_secs(60));
    }

    // Service section of docs/gitbook/usage/how-it-works.md and the Istio tutorial.
    #[test]
    fn service_with_istio_routing_round_trips() {
        let canary: Canary = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
  namespace: test
spec:
  provider: istio
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  progressDeadlineSeconds: 60
  autoscalerRef:
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    name: podinfo
    primaryScalerReplicas:
      minReplicas: 2
      maxReplicas: 5
  service:
    name: podinfo
    port: 9898
    portName: http
    targetPort: 9898
    portDiscovery: true
    gateways:
      - istio-system/public-gateway
    hosts:
      - app.example.com
    trafficPolicy:
      tls:
        mode: ISTIO_MUTUAL
    match:
      - uri:
          prefix: /
    rewrite:
      uri: /
    retries:
      attempts: 3
      perTryTimeout: 1s
      retryOn: "gateway-error,connect-failure,refused-stream"
    timeout: 5s
    headers:
      request:
        add:
          x-some-header: "value"
    corsPolicy:
      allowOrigins:
        - exact: example.com
      allowMethods:
        - GET
      maxAge: "24h"
    apex:
      annotations:
        test: "annotation"
      labels:
        test: "label"
  skipAnalysis: false
  analysis:
    interval: 15s
    threshold: 5
    stepWeights: [1, 2, 10, 80]
"#,
        );
        assert_eq!(canary.progress_deadline(), Duration::from_secs(60));
        assert_eq!(canary.analysis().unwrap().max_weight(), 80);
        assert_eq!(canary.analysis_interval(), Duration::from_secs(15));
        assert!(!canary.skip_analysis());
        let service = canary.spec.service.as_ref().unwrap();
        assert_eq!(service.target_port, Some(IntOrString::Int(9898)));
        assert_eq!(
            service.r#match[0].uri.as_ref().unwrap().prefix.as_deref(),
            Some("/")
        );
        assert_eq!(
            cel(serde_yaml::from_str(&serde_yaml::to_string(&canary).unwrap()).unwrap()),
            Ok(())
        );
    }

    // A/B testing, docs/gitbook/usage/deployment-strategies.md, plus every webhook type from
    // docs/gitbook/usage/webhooks.md and session affinity.
    #[test]
    fn ab_testing_webhooks_and_session_affinity_round_trip() {
        let canary: Canary = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  service:
    port: 80
    targetPort: http
    gatewayRefs:
      - name: public
        namespace: gateway
        sectionName: https
  analysis:
    interval: 1m
    iterations: 10
    threshold: 2
    match:
      - headers:
          x-canary:
            regex: ".*insider.*"
      - headers:
          cookie:
            regex: "^(.*?;)?(canary=always)(;.*)?$"
    sessionAffinity:
      cookieName: flagger-cookie
      maxAge: 21600
      sameSite: Strict
      secure: true
    alerts:
      - name: "on-call"
        severity: error
        providerRef:
          name: on-call
          namespace: flagger
    webhooks:
      - name: "start gate"
        type: confirm-rollout
        url: http://flagger-loadtester.test/gate/approve
        gateTimeout: 1h30m
      - name: "helm test"
        type: pre-rollout
        url: http://flagger-helmtester.flagger/
        timeout: 3m
        metadata:
          type: "helmv3"
          cmd: "test podinfo -n test"
      - name: "load test"
        type: rollout
        url: http://flagger-loadtester.test/
        timeout: 15s
        retries: 2
        disableTLS: true
        metadata:
          cmd: "hey -z 1m -q 5 -c 2 http://podinfo-canary.test:9898/"
      - name: "traffic gate"
        type: confirm-traffic-increase
        url: http://flagger-loadtester.test/gate/approve
      - name: "promotion gate"
        type: confirm-promotion
        url: http://flagger-loadtester.test/gate/approve
      - name: "notify"
        type: post-rollout
        url: http://telegram.bot:8080/
        timeout: 5s
        muteAlert: true
        metadata:
          some: "message"
      - name: "rollback gate"
        type: rollback
        url: http://flagger-loadtester.test/rollback/check
      - name: "send to Slack"
        type: event
        url: http://event-recevier.notifications/slack
"#,
        );
        let analysis = canary.analysis().unwrap();
        assert_eq!(analysis.iterations(), 10);
        let gate = &analysis.webhooks[0];
        assert_eq!(gate.hook_type(), HookType::ConfirmRollout);
        assert_eq!(gate.gate_timeout(), Some(Duration::from_secs(90 * 60)));
        assert_eq!(gate.timeout(), DEFAULT_WEBHOOK_TIMEOUT);
        assert_eq!(analysis.webhooks[1].timeout(), Duration::from_secs(180));
        assert!(analysis.webhooks[2].disable_tls());
        assert_eq!(analysis.webhooks[2].retries(), 2);
        assert!(analysis.webhooks[5].mute_alert());
        assert_eq!(analysis.webhooks_of(HookType::ConfirmPromotion).count(), 1);
        assert_eq!(analysis.alerts[0].severity_level(), AlertSeverity::Error);
        assert_eq!(analysis.session_affinity.as_ref().unwrap().max_age(), 21600);
        let header = &analysis.r#match[1].headers.as_ref().unwrap()["cookie"];
        assert_eq!(
            header.regex.as_deref(),
            Some("^(.*?;)?(canary=always)(;.*)?$")
        );
        assert_eq!(cel(serde_json::to_value(&canary).unwrap()), Ok(()));
    }

    #[test]
    fn deprecated_canary_analysis_is_read_when_analysis_is_absent() {
        let canary: Canary = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  service:
    port: 9898
  canaryAnalysis:
    interval: 5s
    threshold: 0
    maxWeight: 0
    stepWeight: 2
"#,
        );
        let analysis = canary.analysis().unwrap();
        assert_eq!(
            canary.analysis_interval(),
            MIN_ANALYSIS_INTERVAL,
            "never below 10s"
        );
        assert_eq!(analysis.threshold(), 1, "0 means the default");
        assert_eq!(analysis.max_weight(), 100, "0 means the default");
        assert!(!canary.skip_analysis());
    }

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": "podinfo"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"}},
        }))
        .unwrap();
        assert!(canary.skip_analysis(), "no analysis means skip");
        assert!(!canary.suspended());
        assert!(!canary.revert_on_deletion());
        assert_eq!(canary.progress_deadline_seconds(), 600);
        assert_eq!(canary.analysis_interval(), Duration::from_secs(60));
        assert_eq!(
            canary.service_names(),
            (
                "podinfo".into(),
                "podinfo-primary".into(),
                "podinfo-canary".into()
            )
        );

        let analysis = CanaryAnalysis::default();
        assert_eq!(analysis.interval(), Duration::from_secs(60));
        assert_eq!(analysis.threshold(), 1);
        assert_eq!(analysis.primary_ready_threshold(), 100);
        assert_eq!(analysis.canary_ready_threshold(), 100);
        assert_eq!(analysis.max_weight(), 100);
        assert_eq!(analysis.step_weight_promotion(), 0);
        assert!(!analysis.mirror());
        let bad = CanaryAnalysis {
            interval: Some("soon".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.interval(),
            Duration::from_secs(60),
            "unparsable falls back to 60s"
        );

        let metric = CanaryMetric {
            name: "m".into(),
            ..Default::default()
        };
        assert_eq!(metric.interval(), "1m");
        let hook = CanaryWebhook {
            name: "h".into(),
            url: "http://h".into(),
            r#type: Some(HookType::Unspecified),
            gate_timeout: Some("1m".into()),
            ..Default::default()
        };
        assert_eq!(hook.hook_type(), HookType::Rollout);
        assert_eq!(hook.timeout(), Duration::from_secs(10));
        assert_eq!(hook.gate_timeout(), None, "only gates time out");
        let alert = CanaryAlert {
            severity: Some(AlertSeverity::Unspecified),
            ..Default::default()
        };
        assert_eq!(alert.severity_level(), AlertSeverity::Info);
        assert_eq!(SessionAffinity::default().max_age(), 86_400);
    }

    #[test]
    fn service_name_overrides_target_name() {
        let mut canary = Canary::new("podinfo", CanarySpec::default());
        canary.spec.target_ref.name = "podinfo".into();
        canary.spec.service = Some(CanaryService {
            name: Some("web".into()),
            port: 80,
            ..Default::default()
        });
        assert_eq!(
            canary.service_names(),
            ("web".into(), "web-primary".into(), "web-canary".into())
        );
    }

    #[test]
    fn threshold_range_contains() {
        let range: CanaryThresholdRange =
            serde_json::from_value(json!({"min": 99, "max": 100.5})).unwrap();
        assert!(range.contains(99.0));
        assert!(range.contains(100.5));
        assert!(!range.contains(98.9));
        assert!(CanaryThresholdRange::default().contains(f64::MAX));
    }

    #[test]
    fn status_round_trips_with_flagger_strings() {
        let value = json!({
            "phase": "WaitingPromotion",
            "failedChecks": 0,
            "canaryWeight": 50,
            "iterations": 0,
            "lastAppliedSpec": "14788816656920327485",
            "lastPromotedSpec": "14788816656920327485",
            "trackedConfigs": {"configmap/podinfo-config": "6d8bf4c9b5"},
            "lastTransitionTime": "2019-07-10T08:23:18Z",
            "conditions": [{
                "lastTransitionTime": "2019-07-10T08:23:18Z",
                "lastUpdateTime": "2019-07-10T08:23:18Z",
                "message": "Canary analysis completed successfully, promotion finished.",
                "reason": "Succeeded",
                "status": "True",
                "type": "Promoted",
            }],
        });
        let status: CanaryStatus = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(status.phase, Some(CanaryPhase::WaitingPromotion));
        assert_eq!(status.promoted_condition().unwrap().reason, "Succeeded");
        assert_eq!(serde_json::to_value(&status).unwrap(), value);
        for phase in [
            "",
            "Initializing",
            "Initialized",
            "Waiting",
            "Progressing",
            "WaitingPromotion",
            "Promoting",
            "Finalising",
            "Succeeded",
            "Failed",
            "Terminating",
            "Terminated",
        ] {
            let parsed: CanaryPhase = serde_json::from_value(json!(phase)).unwrap();
            assert_eq!(serde_json::to_value(parsed).unwrap(), json!(phase));
        }
    }

    #[test]
    fn hook_types_use_flagger_strings() {
        for (name, gate) in [
            ("", false),
            ("confirm-rollout", true),
            ("pre-rollout", false),
            ("rollout", false),
            ("confirm-promotion", true),
            ("post-rollout", false),
            ("event", false),
            ("rollback", false),
            ("confirm-traffic-increase", true),
        ] {
            let hook: HookType = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(serde_json::to_value(hook).unwrap(), json!(name));
            assert_eq!(hook.is_gate(), gate, "{name}");
        }
        assert!(serde_json::from_value::<HookType>(json!("pre-promotion")).is_err());
    }

    #[test]
    fn crd_names_columns_and_subresource_match_upstream() {
        use kube::CustomResourceExt;
        let crd = Canary::crd();
        assert_eq!(crd.spec.names.plural, "canaries");
        assert_eq!(crd.spec.names.singular.as_deref(), Some("canary"));
        assert_eq!(crd.spec.names.categories, Some(vec!["all".to_string()]));
        assert_eq!(
            crd.spec.names.short_names, None,
            "upstream has no short names"
        );
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.json_path.as_str(),
                    c.priority.unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            columns,
            [
                ("Status", ".status.phase", 0),
                ("Weight", ".status.canaryWeight", 0),
                ("Suspended", ".spec.suspend", 1),
                ("FailedChecks", ".status.failedChecks", 1),
                ("Interval", ".spec.analysis.interval", 1),
                ("Mirror", ".spec.analysis.mirror", 1),
                ("StepWeight", ".spec.analysis.stepWeight", 1),
                ("StepWeights", ".spec.analysis.stepWeights", 1),
                ("MaxWeight", ".spec.analysis.maxWeight", 1),
                ("LastTransitionTime", ".status.lastTransitionTime", 0),
            ]
        );
        let schema = serde_json::to_string(&crd).unwrap();
        assert!(
            !schema.contains("\"default\""),
            "defaults belong in code, not in the schema"
        );
    }

    #[test]
    fn cel_accepts_good_analysis() {
        assert_eq!(
            cel(with_analysis(json!({
                "interval": "30s", "threshold": 0, "maxWeight": 100, "stepWeight": 100,
                "mirrorWeight": 0, "primaryReadyThreshold": 50, "canaryReadyThreshold": 100,
                "metrics": [{"name": "m", "interval": "1min", "thresholdRange": {"min": 1, "max": 1.5}}],
            }))),
            Ok(())
        );
        assert_eq!(
            cel(with_analysis(json!({"maxWeight": 0, "stepWeight": 1}))),
            Ok(())
        );
        assert_eq!(
            cel(with_analysis(json!({"stepWeights": [0, 1, 50, 100]}))),
            Ok(())
        );
        assert_eq!(
            cel(with_analysis(json!({"iterations": 10, "threshold": 2}))),
            Ok(())
        );
        assert_eq!(
            cel(with_analysis(
                json!({"metrics": [{"name": "m", "thresholdRange": {"min": 2.5, "max": 3}}]})
            )),
            Ok(())
        );
    }

    fn rejected(analysis: serde_json::Value, needle: &str) {
        let errors = cel(with_analysis(analysis.clone())).expect_err(&analysis.to_string());
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{analysis}: {errors:?} lacks {needle:?}"
        );
    }

    #[test]
    fn cel_rejects_bad_analysis() {
        rejected(json!({"stepWeight": 0}), "must be between 1 and 100");
        rejected(json!({"stepWeight": -5}), "must be between 1 and 100");
        rejected(json!({"maxWeight": 101}), "must be between 0 and 100");
        rejected(json!({"maxWeight": -1}), "must be between 0 and 100");
        rejected(
            json!({"stepWeights": [10, 120]}),
            "every weight must be between 0 and 100",
        );
        rejected(json!({"stepWeights": [10, 5, 20]}), "strictly increasing");
        rejected(json!({"stepWeights": [10, 10, 20]}), "strictly increasing");
        rejected(
            json!({"stepWeight": 10, "stepWeights": [10, 20]}),
            "mutually exclusive",
        );
        rejected(json!({"threshold": -1}), "greater than or equal to 0");
        rejected(json!({"iterations": -1}), "greater than or equal to 0");
        rejected(json!({"mirrorWeight": 150}), "between 0 and 100");
        rejected(json!({"primaryReadyThreshold": 101}), "between 0 and 100");
        rejected(json!({"canaryReadyThreshold": -1}), "between 0 and 100");
        rejected(json!({"interval": "1h"}), "duration");
        rejected(json!({"interval": "fast"}), "duration");
        rejected(
            json!({"metrics": [{"name": "m", "thresholdRange": {"min": 10, "max": 1}}]}),
            "min must not exceed max",
        );
        rejected(
            json!({"metrics": [{"name": "m", "thresholdRange": {"min": 1.5, "max": 1}}]}),
            "min must not exceed max",
        );
        rejected(
            json!({"metrics": [{"name": "m", "interval": "week"}]}),
            "duration",
        );
        rejected(
            json!({"webhooks": [{"name": "w", "url": "http://w", "timeout": "x"}]}),
            "duration",
        );
        rejected(
            json!({"webhooks": [{"name": "w", "url": "http://w", "retries": -1}]}),
            "greater than or equal to 0",
        );
        rejected(
            json!({"webhooks": [{"name": "w", "url": "http://w", "type": "rollout", "gateTimeout": "5m"}]}),
            "gateTimeout is only allowed",
        );
        rejected(
            json!({"webhooks": [{"name": "w", "url": "http://w", "gateTimeout": "5m"}]}),
            "gateTimeout is only allowed",
        );
        rejected(
            json!({"webhooks": [{"name": "w", "url": "http://w", "type": "confirm-promotion", "gateTimeout": "2 hours"}]}),
            "must be a Go duration",
        );
        rejected(
            json!({"match": [{"headers": {"x-canary": {"exact": "a", "regex": "b"}}}]}),
            "at most one of exact, prefix, suffix and regex",
        );
        rejected(
            json!({"sessionAffinity": {"cookieName": "c", "maxAge": -1}}),
            "greater than or equal to 0",
        );
    }

    #[test]
    fn cel_checks_spec_level_fields() {
        let mut value = with_analysis(json!({"interval": "1m"}));
        value["spec"]["progressDeadlineSeconds"] = json!(-1);
        assert!(cel(value).is_err());
        let mut value = with_analysis(json!({"interval": "1m"}));
        value["spec"]["autoscalerRef"] = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "podinfo",
            "primaryScalerReplicas": {"minReplicas": 5, "maxReplicas": 2},
        });
        assert!(
            cel(value.clone())
                .unwrap_err()
                .iter()
                .any(|e| e.contains("minReplicas must not exceed maxReplicas"))
        );
        value["spec"]["autoscalerRef"]["primaryScalerReplicas"] = json!({"minReplicas": 0});
        assert!(
            cel(value)
                .unwrap_err()
                .iter()
                .any(|e| e.contains("at least 1"))
        );
    }

    #[test]
    fn parse_go_duration_accepts_go_syntax() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("1min"), None);
        assert_eq!(parse_go_duration(""), None, "Go rejects an empty duration");
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
    }
}
