//! `Experiment` (`argoproj.io/v1alpha1`): ReplicaSets of given pod templates run side by side for a
//! while, judged by AnalysisRuns.
//!
//! Field names, optionality and status fields follow Argo Rollouts
//! (`pkg/apis/rollouts/v1alpha1/experiment_types.go`), so Experiments written for Argo, Argo's
//! kubectl plugin and Argo CD's health check keep working. Defaults are applied by accessors,
//! never written into the schema. This module describes data only; decisions live in
//! `crate::engine::experiment`.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::analysis::{AnalysisPhase, Argument, DryRun, MeasurementRetention, phase_or_empty};
use super::rollout::{PodTemplateMetadata, TemplateService, parse_duration_seconds};

/// Annotation on an experiment's ReplicaSet: the Experiment's name (Argo's key).
pub const EXPERIMENT_NAME_ANNOTATION: &str = "experiment.argoproj.io/name";
/// Annotation on an experiment's ReplicaSet: the template it runs (Argo's key).
pub const EXPERIMENT_TEMPLATE_NAME_ANNOTATION: &str = "experiment.argoproj.io/template-name";
/// Label on an experiment's ReplicaSets and pods: the Experiment's name, so a query (a later
/// statistical judge, a dashboard) can select one experiment's pods. A Sluice addition.
pub const EXPERIMENT_NAME_LABEL: &str = "sluice.dev/experiment";
/// Label on an experiment's ReplicaSets and pods: the template's name (`baseline`, `canary`, ...).
pub const EXPERIMENT_TEMPLATE_LABEL: &str = "sluice.dev/experiment-template";

/// The desired state of an Experiment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Experiment",
    plural = "experiments",
    singular = "experiment",
    shortname = "exp",
    namespaced,
    status = "ExperimentStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase","description":"Experiment status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since resource was created"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSpec {
    /// The pod templates to run, each as its own ReplicaSet.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub templates: Vec<ExperimentTemplate>,
    /// How long to run once every template is available (`30s`, `5m`); unset runs until the
    /// analyses required for completion finish, or until terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Seconds a template may take to become available before the experiment fails (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub progress_deadline_seconds: Option<i32>,
    /// Set to end the experiment now (`kubectl argo rollouts terminate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate: Option<bool>,
    /// AnalysisRuns to start once every template is available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub analyses: Vec<ExperimentAnalysisTemplateRef>,
    /// Seconds to keep the ReplicaSets up after the experiment ends (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i32>,
    /// Metrics (by regular expression) the analyses evaluate without affecting the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRun>,
    /// How many measurements the analyses keep per metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurement_retention: Vec<MeasurementRetention>,
    /// Labels and annotations put on the AnalysisRuns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_run_metadata: Option<PodTemplateMetadata>,
}

/// One pod template of an experiment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentTemplate {
    /// Unique within the experiment; names the ReplicaSet (`<experiment>-<name>`).
    pub name: String,
    /// Pods to run (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Seconds a new pod must be ready before it counts as available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: Option<i32>,
    /// Label selector for the pods; must match the template's labels.
    pub selector: LabelSelector,
    /// The pods to create.
    pub template: PodTemplateSpec,
    /// Create a Service selecting this template's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<TemplateService>,
}

/// An AnalysisRun an experiment starts from an AnalysisTemplate (or ClusterAnalysisTemplate).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentAnalysisTemplateRef {
    /// Unique within the experiment; names the run (`<experiment>-<name>`).
    pub name: String,
    /// The template to run.
    pub template_name: String,
    /// `templateName` names a ClusterAnalysisTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_scope: Option<bool>,
    /// Arguments for the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    /// The experiment ends when every analysis marked so has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_for_completion: Option<bool>,
}

/// Observed state of an Experiment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    /// Pending, Running, Successful, Failed, Error or Inconclusive.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "phase_or_empty"
    )]
    pub phase: Option<AnalysisPhase>,
    /// Why the experiment is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_statuses: Vec<TemplateStatus>,
    /// When every template first became available (the start of `duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at: Option<Time>,
    /// InvalidSpec, Progressing, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ExperimentCondition>,
    /// One entry per analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis_runs: Vec<ExperimentAnalysisRunStatus>,
}

/// The state of one template's ReplicaSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    pub name: String,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// Progressing, Running, Successful, Failed or Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TemplateStatusCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash: Option<String>,
}

/// A template's state, spelled as Argo spells it; ordered from best to worst as Argo ranks them.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum TemplateStatusCode {
    Successful,
    Running,
    Progressing,
    Error,
    Failed,
}

impl TemplateStatusCode {
    /// Successful, Failed or Error: the template's ReplicaSet is no longer wanted.
    pub fn is_completed(self) -> bool {
        matches!(self, Self::Successful | Self::Failed | Self::Error)
    }
}

/// A condition of an Experiment (Argo's shape).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentCondition {
    /// InvalidSpec, Completed, Progressing, Running or ReplicaFailure.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub last_update_time: Time,
    pub last_transition_time: Time,
    pub reason: String,
    pub message: String,
}

/// The state of one analysis of an experiment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentAnalysisRunStatus {
    /// The analysis' name in the spec.
    pub name: String,
    /// The AnalysisRun's name (empty until created).
    #[serde(default)]
    pub analysis_run: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "phase_or_empty"
    )]
    pub phase: Option<AnalysisPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The Experiment CRD as served: without a `status` subresource, as Argo's (its controller and
/// Sluice's write status through the main resource).
pub fn experiment_crd() -> CustomResourceDefinition {
    let mut crd = Experiment::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    crd
}

// === Accessors: the documented defaults ===

impl ExperimentSpec {
    /// `progressDeadlineSeconds`, default 600 (Argo's).
    pub fn progress_deadline_seconds(&self) -> i64 {
        i64::from(self.progress_deadline_seconds.unwrap_or(600))
    }

    /// `scaleDownDelaySeconds`, default 30 (Argo's).
    pub fn scale_down_delay_seconds(&self) -> i64 {
        i64::from(self.scale_down_delay_seconds.unwrap_or(30))
    }

    /// `duration` in seconds; `None` when unset; `Err` naming the bad value.
    pub fn duration_seconds(&self) -> Result<Option<i64>, String> {
        self.duration
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(parse_duration_seconds)
            .transpose()
    }
}

impl ExperimentTemplate {
    /// `replicas`, default 1.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }
}

impl ExperimentAnalysisTemplateRef {
    /// `requiredForCompletion`, default false.
    pub fn required_for_completion(&self) -> bool {
        self.required_for_completion.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argo_example_round_trips() {
        let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: Experiment
metadata: {name: guestbook}
spec:
  duration: 5m
  progressDeadlineSeconds: 30
  templates:
  - name: baseline
    replicas: 1
    minReadySeconds: 5
    selector: {matchLabels: {app: guestbook}}
    template:
      metadata: {labels: {app: guestbook}}
      spec:
        containers:
        - {name: guestbook, image: "argoproj/rollouts-demo:blue"}
    service: {name: baseline-svc}
  analyses:
  - name: purple
    templateName: args-test
    clusterScope: false
    requiredForCompletion: true
    args:
    - {name: foo, value: bar}
status:
  phase: Running
  availableAt: "2026-01-01T00:00:00Z"
  templateStatuses:
  - {name: baseline, replicas: 1, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1, status: Running, serviceName: baseline-svc, podTemplateHash: abc}
  analysisRuns:
  - {name: purple, analysisRun: guestbook-purple, phase: Running}
"#;
        let exp: Experiment = crate::api::round_trip(yaml);
        assert_eq!(exp.spec.duration_seconds(), Ok(Some(300)));
        assert_eq!(exp.spec.scale_down_delay_seconds(), 30);
    }

    #[test]
    fn template_codes_rank_as_argo_does() {
        use TemplateStatusCode::*;
        assert!(Failed > Error && Error > Progressing && Progressing > Running);
        assert!(Running > Successful);
    }
}
