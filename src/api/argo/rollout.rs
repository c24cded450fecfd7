//! `Rollout` (`argoproj.io/v1alpha1`): a Deployment look-alike with a progressive strategy.
//!
//! Field names, optionality and status fields follow Argo Rollouts (`pkg/apis/rollouts/v1alpha1/types.go`)
//! so existing manifests, Argo CD's health checks and `kubectl argo rollouts` keep working. Spec fields
//! are `Option`s so that a manifest round-trips unchanged (an explicit `paused: false` stays). Defaults
//! are applied by accessor methods, never written into the schema, so no object Git owns ever gains a
//! field it did not declare. This module describes data only; decisions live in `crate::engine`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};

pub use super::analysis::{DryRun, FieldRef, MeasurementRetention};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label put on ReplicaSets and their pods, holding the pod-template hash.
pub const POD_TEMPLATE_HASH_LABEL: &str = "rollouts-pod-template-hash";
/// Annotation on an old ReplicaSet: when it may be scaled down.
pub const SCALE_DOWN_DEADLINE_ANNOTATION: &str = "scale-down-deadline";
/// Annotation on a ReplicaSet recording the `canaryMetadata` / `stableMetadata` (JSON) injected
/// into its pod template and pods, so it can be taken off again (Argo's key and format).
pub const EPHEMERAL_METADATA_ANNOTATION: &str = "rollout.argoproj.io/ephemeral-metadata";
/// Annotation on a Service or route managed on behalf of a Rollout.
pub const MANAGED_BY_ROLLOUTS_ANNOTATION: &str = "argo-rollouts.argoproj.io/managed-by-rollouts";
/// Annotation on a ReplicaSet: the Rollout revision it belongs to.
pub const REVISION_ANNOTATION: &str = "rollout.argoproj.io/revision";

/// The desired state of a Rollout.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Rollout",
    plural = "rollouts",
    singular = "rollout",
    shortname = "ro",
    namespaced,
    status = "RolloutStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.HPAReplicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas","description":"Number of desired pods"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.replicas","description":"Total number of non-terminated pods targeted by this rollout"}"#,
    printcolumn = r#"{"name":"Up-to-date","type":"integer","jsonPath":".status.updatedReplicas","description":"Total number of non-terminated pods targeted by this rollout that have the desired template spec"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableReplicas","description":"Total number of available pods (ready for at least minReadySeconds) targeted by this rollout"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since resource was created"}"#
)]
#[x_kube(validation = Rule::new("has(self.template) || has(self.workloadRef)").message("spec.template or spec.workloadRef is required"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Number of desired pods (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Label selector for pods; must match the template's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The pods to create. Absent when `workloadRef` names the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// A workload (Deployment, ReplicaSet or PodTemplate) that provides the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<ObjectRef>,
    /// Seconds a new pod must be ready before it counts as available (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: Option<i32>,
    /// The window in which a rollback to a recent revision is fast-tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_window: Option<RollbackWindowSpec>,
    /// The deployment strategy.
    pub strategy: RolloutStrategy,
    /// Old ReplicaSets to keep (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,
    /// Pauses the rollout at its current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Seconds a rollout may go without progress before it is reported as failed (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,
    /// Abort the update when the progress deadline is exceeded (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_abort: Option<bool>,
    /// Restart every pod created before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<Time>,
    /// How many finished AnalysisRuns to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRunStrategy>,
}

/// A reference to the workload that provides the pod template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What happens to the referenced Deployment's replicas: never, onsuccess or progressively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDown>,
}

/// How a workloadRef Deployment is scaled down.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScaleDown {
    Never,
    OnSuccess,
    Progressively,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackWindowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStrategy {
    /// Successful runs to keep (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_run_history_limit: Option<i32>,
    /// Failed, errored or inconclusive runs to keep (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsuccessful_run_history_limit: Option<i32>,
}

/// Exactly one of `canary` or `blueGreen`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.canary) != has(self.blueGreen)").message("exactly one of spec.strategy.canary or spec.strategy.blueGreen must be set"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
}

/// Blue/green parameters (wire type; the engine drives canaries first).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    pub active_service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub preview_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub auto_promotion_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_revision_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<RolloutAnalysis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<AntiAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<RolloutAnalysis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_metadata: Option<PodTemplateMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_metadata: Option<PodTemplateMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub abort_scale_down_delay_seconds: Option<i32>,
}

/// Anti-affinity injected against the previous ReplicaSet's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AntiAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_during_scheduling_ignored_during_execution: Option<PreferredAntiAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<RequiredAntiAffinity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PreferredAntiAffinity {
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RequiredAntiAffinity {}

/// Canary parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.all(s, !has(s.setWeight) || s.setWeight <= (has(self.trafficRouting) && has(self.trafficRouting.maxTrafficWeight) ? self.trafficRouting.maxTrafficWeight : 100))").message("setWeight must not exceed trafficRouting.maxTrafficWeight (default 100)").field_path(".steps"))]
#[x_kube(validation = Rule::new("!(has(self.dynamicStableScale) && self.dynamicStableScale && has(self.scaleDownDelaySeconds))").message("dynamicStableScale cannot be combined with scaleDownDelaySeconds").field_path(".dynamicStableScale"))]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// Service that selects only canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_service: Option<String>,
    /// Service that selects only stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_service: Option<String>,
    /// The steps of the canary, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub steps: Option<Vec<CanaryStep>>,
    /// Routers that shift traffic by weight instead of by replica ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<RolloutTrafficRouting>,
    /// Pods that may be unavailable during the update (default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Pods that may be created above the desired count (default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Background analysis that runs while the steps execute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysisBackground>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<AntiAffinity>,
    /// Labels and annotations put on canary pods while they are the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_metadata: Option<PodTemplateMetadata>,
    /// Labels and annotations put on stable pods while they are the stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_metadata: Option<PodTemplateMetadata>,
    /// Delay before the previous ReplicaSet is scaled down, with a router (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_revision_limit: Option<i32>,
    /// Delay before canary pods are scaled down after an abort, with a router (default 30; 0 keeps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub abort_scale_down_delay_seconds: Option<i32>,
    /// Scale the stable down as traffic moves to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_stable_scale: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_pong: Option<PingPongSpec>,
    /// Minimum pods in a non-empty stable or canary ReplicaSet, with a router (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_pods_per_replica_set: Option<i32>,
    /// How much of the canary must be available before a step counts as done (default 100%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_progress_threshold: Option<ReplicaProgressThreshold>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingPongSpec {
    pub ping_service: String,
    pub pong_service: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaProgressThreshold {
    #[serde(rename = "type")]
    pub kind: ReplicaProgressThresholdType,
    #[schemars(range(min = 0))]
    pub value: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReplicaProgressThresholdType {
    Percent,
    Pod,
}

/// Labels and annotations added to pods or objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PodTemplateMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One step of a canary. As in Argo's validation, at most one of setWeight, pause, experiment and
/// analysis, and at least one field; setCanaryScale, setHeaderRoute, setMirrorRoute and plugin may
/// join another action (Argo's own `examples/apisix/rollout.yaml` pairs setCanaryScale with
/// setHeaderRoute).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.setWeight), has(self.pause), has(self.experiment), has(self.analysis)].filter(x, x).size() <= 1").message("a canary step sets at most one of setWeight, pause, experiment or analysis"))]
#[x_kube(validation = Rule::new("[has(self.setWeight), has(self.pause), has(self.experiment), has(self.analysis), has(self.setCanaryScale), has(self.setHeaderRoute), has(self.setMirrorRoute), has(self.plugin)].exists(x, x)").message("a canary step must set one of setWeight, pause, experiment, analysis, setCanaryScale, setHeaderRoute, setMirrorRoute or plugin"))]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percentage of traffic (or replicas, without a router) for the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub set_weight: Option<i32>,
    /// Pause for a duration, or until promoted when no duration is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<RolloutPause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<RolloutExperimentStep>,
    /// An inline, blocking AnalysisRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
    /// Scale the canary independently of the traffic weight (needs a router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<SetCanaryScale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<SetHeaderRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mirror_route: Option<SetMirrorRoute>,
    /// A step plugin: `{name, config}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginStep>,
}

/// `pause: {}` (indefinite) or `pause: {duration: 30 | "30s"}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RolloutPause {
    /// Seconds (`10`, `"10"`) or a duration (`"30s"`, `"5m"`, `"1h"`); absent: until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pause_duration_schema")]
    pub duration: Option<IntOrString>,
}

/// An int-or-string whose string form must be a duration. A `pattern` rather than a CEL rule: the
/// apiserver prices a regex CEL rule on an unbounded string far over its budget, and `pattern`
/// applies to strings only, so integers pass.
fn pause_duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": true,
        "minimum": 0,
        "pattern": "^[0-9]+$|^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PluginStep {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub config: Option<serde_json::Value>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.weight), has(self.replicas), has(self.matchTrafficWeight) && self.matchTrafficWeight].filter(x, x).size() <= 1").message("setCanaryScale takes only one of weight, replicas or matchTrafficWeight"))]
#[serde(rename_all = "camelCase")]
pub struct SetCanaryScale {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetHeaderRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<Vec<HeaderRoutingMatch>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoutingMatch {
    pub header_name: String,
    pub header_value: StringMatch,
}

/// Exactly one of exact, prefix or regex.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SetMirrorRoute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<Vec<RouteMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percentage: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatch>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutExperimentStep {
    pub templates: Vec<RolloutExperimentTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyses: Option<Vec<RolloutExperimentStepAnalysisTemplateRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<Vec<DryRun>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_run_metadata: Option<PodTemplateMetadata>,
    /// Seconds to wait before the experiment's ReplicaSets are scaled down (Argo's default 30).
    /// Kept on the wire; Sluice refuses experiment steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutExperimentTemplate {
    pub name: String,
    /// `stable` or `canary`.
    pub spec_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodTemplateMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<TemplateService>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutExperimentStepAnalysisTemplateRef {
    pub name: String,
    pub template_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_scope: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<AnalysisRunArgument>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_for_completion: Option<bool>,
}

/// An AnalysisRun created from templates, inline as a step or in the background.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<RolloutAnalysisTemplate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<AnalysisRunArgument>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<Vec<DryRun>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_retention: Option<Vec<MeasurementRetention>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_run_metadata: Option<PodTemplateMetadata>,
}

/// Background analysis: a [`RolloutAnalysis`] plus the step it starts at.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysisBackground {
    #[serde(flatten)]
    pub analysis: RolloutAnalysis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_step: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysisTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_scope: Option<bool>,
}

/// An argument passed to the AnalysisRun: a literal `value` or `valueFrom`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunArgument {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ArgumentValueFrom>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgumentValueFrom {
    /// `Stable` or `Latest`: the pod-template hash of that ReplicaSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash_value: Option<PodTemplateHashValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PodTemplateHashValue {
    Stable,
    Latest,
}

/// Traffic routers. Several may be set at once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioTrafficRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxTrafficRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alb: Option<AlbTrafficRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smi: Option<SmiTrafficRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambassador: Option<AmbassadorTrafficRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_mesh: Option<AppMeshTrafficRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traefik: Option<TraefikTrafficRouting>,
    /// Routes the controller manages (header and mirror routes), in precedence order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_routes: Option<Vec<ManagedRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apisix: Option<ApisixTrafficRouting>,
    /// Router plugin configuration by plugin name, e.g. `argoproj-labs/gatewayAPI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_object")]
    pub plugins: Option<BTreeMap<String, serde_json::Value>>,
    /// The weight that means "all traffic" (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_traffic_weight: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ManagedRoute {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<IstioVirtualService>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<IstioDestinationRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_services: Option<Vec<IstioVirtualService>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioVirtualService {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_routes: Option<Vec<IstioTlsRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_routes: Option<Vec<IstioTcpRoute>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioTlsRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_hosts: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IstioTcpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioDestinationRule {
    pub name: String,
    pub canary_subset_name: String,
    pub stable_subset_name: String,
    /// Subsets of the DestinationRule that are not the Rollout's: Argo leaves the weights of route
    /// destinations naming them untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_subset_names: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NginxTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_ingress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_ingress_annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_ingresses: Option<Vec<String>>,
    /// Annotations put on the canary Ingress as written (no prefix added), overriding
    /// `additionalIngressAnnotations`; `canary` and `canary-weight` are always the router's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ingress_annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlbTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    pub service_port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness_config: Option<StickinessConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingresses: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StickinessConfig {
    pub enabled: bool,
    pub duration_seconds: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmiTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_split_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AmbassadorTrafficRouting {
    pub mappings: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppMeshTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub virtual_service: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub virtual_node_group: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraefikTrafficRouting {
    pub weighted_traefik_service_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ApisixTrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<ApisixRoute>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ApisixRoute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<String>>,
}

// === status ===

/// The observed state of a Rollout, as Argo Rollouts writes it.
///
/// Plain fields with `omitempty`-style skipping: the controller owns status, and Argo's clients
/// (kubectl plugin, Argo CD health) read exactly these names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Set by a user (`kubectl argo rollouts abort`) to cancel the update.
    #[serde(default, skip_serializing_if = "is_false")]
    pub abort: bool,
    /// Why the rollout is paused; cleared by the user to resume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_conditions: Vec<PauseCondition>,
    /// The controller paused the rollout (stays true after a user clears pauseConditions).
    #[serde(default, skip_serializing_if = "is_false")]
    pub controller_pause: bool,
    /// When the controller acted on an abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<Time>,
    /// Hash of the current pod template.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_pod_hash: String,
    /// Hash of the current canary steps.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_step_hash: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub updated_replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_replicas: i32,
    /// The step the rollout is on; a user may set it to skip steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// `metadata.generation` the controller last acted on, as a string (Argo's wire format).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub observed_generation: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::schema::conditions::<RolloutCondition>")]
    pub conditions: Vec<RolloutCondition>,
    #[serde(default, skip_serializing_if = "CanaryStatus::is_empty")]
    pub canary: CanaryStatus,
    #[serde(default, skip_serializing_if = "BlueGreenStatus::is_empty")]
    pub blue_green: BlueGreenStatus,
    /// Pods receiving active traffic (read by the HPA through /scale).
    #[serde(default, rename = "HPAReplicas", skip_serializing_if = "is_zero")]
    pub hpa_replicas: i32,
    /// Selector of the pods receiving active traffic (read by the HPA through /scale).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Pod-template hash of the ReplicaSet that completed a rollout.
    #[serde(default, rename = "stableRS", skip_serializing_if = "String::is_empty")]
    pub stable_rs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<Time>,
    /// Set by a user (`promote --full`) to skip the remaining steps and analysis.
    #[serde(default, skip_serializing_if = "is_false")]
    pub promote_full: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload_observed_generation: String,
    /// AWS ALB state, kept as-is for compatibility (Sluice has no ALB router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub alb: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub albs: Option<serde_json::Value>,
    /// How long the last update took and how it ended (`completionStatus`): written by Argo's
    /// controller after v1.10 (no release in the v1.10 line has it). Kept as-is so a status Argo
    /// wrote survives on Sluice's CRDs; Sluice does not write it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub duration: Option<serde_json::Value>,
}

/// Why a rollout is paused, and since when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseCondition {
    pub reason: PauseReason,
    pub start_time: Time,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PauseReason {
    #[serde(rename = "CanaryPauseStep")]
    CanaryPauseStep,
    #[serde(rename = "BlueGreenPause")]
    BlueGreenPause,
    #[serde(rename = "InconclusiveAnalysisRun")]
    InconclusiveAnalysisRun,
    #[serde(rename = "InconclusiveExperiment")]
    InconclusiveExperiment,
}

/// The rollout phase, as `CalculateRolloutPhase` computes it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    Healthy,
    Degraded,
    Progressing,
    Paused,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCondition {
    /// InvalidSpec, Available, Progressing, ReplicaFailure, Paused, Completed or Healthy.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub last_update_time: Time,
    pub last_transition_time: Time,
    pub reason: String,
    pub message: String,
    /// `metadata.generation` the condition was computed from (set on the kstatus conditions
    /// Ready, Reconciling and Stalled; Argo's own condition types leave it unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_background_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_experiment: String,
    /// The weights last set on (and verified by) the traffic router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<TrafficWeights>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stable_ping_pong: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::schema::preserve_unknown_nullable")]
    pub step_plugin_statuses: Option<serde_json::Value>,
}

impl CanaryStatus {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preview_selector: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub active_selector: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub scale_up_preview_check_point: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis_run_status: Option<RolloutAnalysisRunStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis_run_status: Option<RolloutAnalysisRunStatus>,
}

impl BlueGreenStatus {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficWeights {
    pub canary: WeightDestination,
    pub stable: WeightDestination,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional: Vec<WeightDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeightDestination {
    pub weight: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_template_hash: String,
}

/// The state of an AnalysisRun the rollout started, as the rollout reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RolloutAnalysisRunStatus {
    pub name: String,
    /// The run's phase (Pending, Running, Successful, Failed, Error, Inconclusive).
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

// === defaults (Argo's documented values) ===

impl RolloutSpec {
    /// `spec.replicas`, default 1.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }
    /// `spec.revisionHistoryLimit`, default 10.
    pub fn revision_history_limit(&self) -> i32 {
        self.revision_history_limit.unwrap_or(10)
    }
    /// `spec.progressDeadlineSeconds`, default 600.
    pub fn progress_deadline_seconds(&self) -> i32 {
        self.progress_deadline_seconds.unwrap_or(600)
    }
    pub fn paused(&self) -> bool {
        self.paused.unwrap_or(false)
    }
    pub fn progress_deadline_abort(&self) -> bool {
        self.progress_deadline_abort.unwrap_or(false)
    }
    pub fn min_ready_seconds(&self) -> i32 {
        self.min_ready_seconds.unwrap_or(0)
    }
}

impl CanaryStrategy {
    pub fn steps(&self) -> &[CanaryStep] {
        self.steps.as_deref().unwrap_or_default()
    }
    /// `trafficRouting.maxTrafficWeight`, default 100.
    pub fn max_traffic_weight(&self) -> i32 {
        self.traffic_routing
            .as_ref()
            .and_then(|t| t.max_traffic_weight)
            .unwrap_or(100)
    }
    /// `scaleDownDelaySeconds`, default 30 (applies only with a router).
    pub fn scale_down_delay_seconds(&self) -> i32 {
        self.scale_down_delay_seconds.unwrap_or(30)
    }
    /// `abortScaleDownDelaySeconds`, default 30 (applies only with a router; 0 keeps the pods).
    pub fn abort_scale_down_delay_seconds(&self) -> i32 {
        self.abort_scale_down_delay_seconds.unwrap_or(30)
    }
    pub fn dynamic_stable_scale(&self) -> bool {
        self.dynamic_stable_scale.unwrap_or(false)
    }
    /// `minPodsPerReplicaSet`, default 1.
    pub fn min_pods_per_replica_set(&self) -> i32 {
        self.min_pods_per_replica_set.unwrap_or(1)
    }
}

impl RolloutPause {
    /// The pause length in seconds; `None` for an indefinite pause; `Err` for an unparseable value.
    pub fn duration_seconds(&self) -> Result<Option<i64>, String> {
        match &self.duration {
            None => Ok(None),
            Some(IntOrString::Int(n)) if *n >= 0 => Ok(Some(i64::from(*n))),
            Some(IntOrString::Int(n)) => Err(format!("negative duration {n}")),
            Some(IntOrString::String(s)) => parse_duration_seconds(s).map(Some),
        }
    }
}

/// Parse an Argo duration string: a plain integer (seconds) or a Go duration such as `1h30m`.
///
/// Sub-second precision is dropped, as Argo's `DurationSeconds` does.
pub fn parse_duration_seconds(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return if n >= 0 {
            Ok(n)
        } else {
            Err(format!("negative duration {s:?}"))
        };
    }
    let bad = || format!("invalid duration {s:?}: use seconds or a value such as 30s, 5m, 1h");
    let mut total_ns: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total_ns += value * scale;
        rest = &rest[unit_len..];
    }
    Ok((total_ns / 1e9) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(value: serde_json::Value) {
        let rollout: Rollout = serde_json::from_value(value.clone()).expect("parses");
        assert_eq!(serde_json::to_value(&rollout).unwrap(), value);
    }

    #[test]
    fn int_or_string_durations_and_empty_pause_round_trip() {
        round_trip(json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "demo"},
            "spec": {
                "replicas": 5,
                "paused": false,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {
                    "metadata": {"labels": {"app": "demo"}},
                    "spec": {"containers": [{"name": "app", "image": "demo:1"}]}
                },
                "strategy": {"canary": {
                    "maxSurge": "25%",
                    "maxUnavailable": 1,
                    "steps": [
                        {"setWeight": 20},
                        {"pause": {}},
                        {"pause": {"duration": 10}},
                        {"pause": {"duration": "1h"}},
                        {"setCanaryScale": {"matchTrafficWeight": true}}
                    ]
                }}
            }
        }));
    }

    #[test]
    fn status_uses_argo_wire_names() {
        let status = RolloutStatus {
            hpa_replicas: 3,
            stable_rs: "abc".into(),
            observed_generation: "2".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(
            value,
            json!({"HPAReplicas": 3, "stableRS": "abc", "observedGeneration": "2"})
        );
    }

    #[test]
    fn pause_durations() {
        let p = |d: IntOrString| RolloutPause { duration: Some(d) }.duration_seconds();
        assert_eq!(p(IntOrString::Int(10)), Ok(Some(10)));
        assert_eq!(p(IntOrString::String("30".into())), Ok(Some(30)));
        assert_eq!(p(IntOrString::String("5m".into())), Ok(Some(300)));
        assert_eq!(p(IntOrString::String("1h30m".into())), Ok(Some(5400)));
        assert_eq!(p(IntOrString::String("1.5s".into())), Ok(Some(1)));
        assert!(p(IntOrString::String("ten".into())).is_err());
        assert!(p(IntOrString::String("5d".into())).is_err());
        assert_eq!(RolloutPause::default().duration_seconds(), Ok(None));
    }

    #[test]
    fn defaults_follow_argo() {
        let spec = RolloutSpec::default();
        assert_eq!(spec.replicas(), 1);
        assert_eq!(spec.revision_history_limit(), 10);
        assert_eq!(spec.progress_deadline_seconds(), 600);
        let canary = CanaryStrategy::default();
        assert_eq!(canary.max_traffic_weight(), 100);
        assert_eq!(canary.scale_down_delay_seconds(), 30);
        assert_eq!(canary.abort_scale_down_delay_seconds(), 30);
    }
}

#[cfg(test)]
mod cel_tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    fn validate(spec: serde_json::Value) -> Result<(), String> {
        let crd = Rollout::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let object = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "r"}, "spec": spec});
        kube::core::cel::Validator::new()
            .validate(&schema, &object, None)
            .map_err(|e| format!("{e:?}"))
    }

    fn canary(steps: serde_json::Value) -> serde_json::Value {
        json!({"selector": {"matchLabels": {"app": "a"}},
               "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a"}]}},
               "strategy": {"canary": {"steps": steps}}})
    }

    #[test]
    fn accepts_documented_steps() {
        validate(canary(
            json!([{"setWeight": 20}, {"pause": {}}, {"pause": {"duration": "1h30m"}},
            {"pause": {"duration": 10}}, {"setCanaryScale": {"weight": 10}}]),
        ))
        .unwrap();
    }

    #[test]
    fn rejects_a_step_with_two_actions() {
        let err = validate(canary(json!([{"setWeight": 20, "pause": {}}]))).unwrap_err();
        assert!(err.contains("at most one of setWeight"), "{err}");
    }

    #[test]
    fn accepts_what_argo_lets_join_another_action() {
        // Argo's examples/apisix/rollout.yaml.
        validate(canary(json!([{"setCanaryScale": {"replicas": 1},
            "setHeaderRoute": {"name": "h", "match": [{"headerName": "a", "headerValue": {"exact": "1"}}]}}])))
        .unwrap();
        validate(canary(
            json!([{"setWeight": 20, "setCanaryScale": {"weight": 20}}]),
        ))
        .unwrap();
    }

    #[test]
    fn rejects_an_empty_step() {
        assert!(validate(canary(json!([{}]))).is_err());
    }

    #[test]
    fn rejects_set_weight_above_max_traffic_weight() {
        let err = validate(canary(json!([{"setWeight": 101}]))).unwrap_err();
        assert!(err.contains("maxTrafficWeight"), "{err}");
        let mut spec = canary(json!([{"setWeight": 500}]));
        spec["strategy"]["canary"]["trafficRouting"] = json!({"maxTrafficWeight": 1000});
        validate(spec).unwrap();
    }

    #[test]
    fn pause_durations_are_checked_by_a_pattern_not_cel() {
        // The apiserver checks `pattern` (tests/invalid/rollout-pause-duration-words.yaml); CEL
        // would exceed its cost budget on an unbounded string.
        let crd = serde_json::to_string(&Rollout::crd()).unwrap();
        assert!(
            crd.contains(r#""pattern":"^[0-9]+$|^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$""#),
            "{crd}"
        );
        assert!(!crd.contains("string(self.duration)"));
    }

    #[test]
    fn rejects_both_strategies() {
        let mut spec = canary(json!([]));
        spec["strategy"]["blueGreen"] = json!({"activeService": "a"});
        let err = validate(spec).unwrap_err();
        assert!(err.contains("exactly one of spec.strategy.canary"), "{err}");
    }

    #[test]
    fn rejects_no_template_and_no_workload_ref() {
        let err = validate(json!({"strategy": {"canary": {}}})).unwrap_err();
        assert!(err.contains("spec.template or spec.workloadRef"), "{err}");
    }

    #[test]
    fn rejects_conflicting_set_canary_scale() {
        assert!(
            validate(canary(
                json!([{"setCanaryScale": {"weight": 10, "replicas": 2}}])
            ))
            .is_err()
        );
    }
}
