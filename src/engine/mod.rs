//! The pure rollout engine: every decision about a Rollout, and nothing else.
//!
//! ```text
//!   RolloutSpec + RolloutStatus + Observations (ReplicaSets, router weights, Services,
//!   AnalysisRuns, the current time)  ──plan()──▶  Plan { status, actions, requeue_after }
//! ```
//!
//! User intents arrive the way Argo's kubectl plugin sends them, as fields of the spec and status
//! (`status.abort`, `status.promoteFull`, cleared `status.pauseConditions`, `spec.paused`,
//! `status.currentStepIndex`); [`intent`] mirrors those patches. Actions are declarative ("this
//! ReplicaSet should have N replicas"), so executing a plan twice does no harm, and the engine
//! advances through every step that is already satisfied, so planning again on its own output
//! changes nothing.
//!
//! This module must never do I/O: no kube client, no HTTP, no tokio, no clock reads, no randomness.
//! The time is an input ([`Observations::now`]).

pub mod analysis;
mod argo_events;
mod ephemeral;
pub mod experiment;
pub mod flagger;
pub mod git_revert;
pub mod hash;
pub mod health;
pub mod intent;
pub mod label_prefix;
mod quantity;
pub mod replicas;
mod restart;
pub mod sim;
pub mod validate;

#[cfg(test)]
mod bluegreen_tests;
mod canary;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::argo::rollout::{
    AnalysisRunArgument, DryRun, MeasurementRetention, PodTemplateMetadata, RolloutSpec,
    RolloutStatus, ScaleDown, WeightDestination,
};

pub use crate::api::argo::analysis::AnalysisPhase;
pub use canary::{ping_pong, plan};

/// Everything the engine reads besides the Rollout itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Observations {
    /// The current time. Sub-second precision is dropped: status times are whole seconds on the wire.
    pub now: Timestamp,
    /// `metadata.generation` of the Rollout.
    pub generation: i64,
    /// ReplicaSets owned by the Rollout.
    pub replica_sets: Vec<ReplicaSetObservation>,
    /// What the traffic routers report as really applied; `None` without a router or before the
    /// first read.
    pub traffic: Option<TrafficObservation>,
    /// The Services named by `canaryService` / `stableService`, by name.
    pub services: BTreeMap<String, ServiceObservation>,
    /// Services that still carry this Rollout's managed-by annotation and a
    /// `rollouts-pod-template-hash` selector although the spec no longer names them (the strategy
    /// or a Service name changed).
    pub unreferenced_services: Vec<String>,
    /// AnalysisRuns owned by the Rollout.
    pub analysis_runs: Vec<AnalysisRunObservation>,
    /// The Deployment named by `workloadRef`, when the Rollout has one and it was found.
    pub workload: Option<WorkloadObservation>,
    /// Pods of the Rollout's ReplicaSets (only read while `spec.restartAt` asks for a restart).
    pub pods: Vec<PodObservation>,
    /// Why the traffic routers `trafficRouting` names cannot be used (an unknown plugin, a router
    /// without its object): the plan is InvalidSpec.
    pub traffic_config_error: Option<String>,
    /// The AnalysisTemplates (`false`) and ClusterAnalysisTemplates (`true`) the spec's analyses
    /// reference, nested references included, by name; one missing here does not exist. `None`
    /// when templates were not observed (offline simulations): they are then not checked.
    pub analysis_templates: Option<AnalysisTemplates>,
    /// Experiments owned by the Rollout (its `experiment:` steps).
    pub experiments: Vec<ExperimentObservation>,
}

/// Templates by `(name, clusterScope)`.
pub type AnalysisTemplates =
    BTreeMap<(String, bool), crate::api::argo::analysis::AnalysisTemplateSpec>;

impl Observations {
    /// Observations with nothing observed yet.
    pub fn at(now: Timestamp) -> Self {
        Self {
            now,
            generation: 1,
            replica_sets: Vec::new(),
            traffic: None,
            services: BTreeMap::new(),
            unreferenced_services: Vec::new(),
            analysis_runs: Vec::new(),
            workload: None,
            pods: Vec::new(),
            traffic_config_error: None,
            analysis_templates: None,
            experiments: Vec::new(),
        }
    }
}

/// One ReplicaSet owned by the Rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaSetObservation {
    /// Its `rollouts-pod-template-hash` label.
    pub pod_template_hash: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas` (pods that exist).
    pub status_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    /// Its `rollout.argoproj.io/revision` annotation.
    pub revision: i64,
    /// Its `scale-down-deadline` annotation, when set.
    pub scale_down_deadline: Option<Timestamp>,
    /// The `canaryMetadata` / `stableMetadata` it and its pods carry (its
    /// `rollout.argoproj.io/ephemeral-metadata` annotation).
    pub ephemeral_metadata: Option<PodTemplateMetadata>,
    /// Its pod template equals the Rollout's current template (ignoring the hash label).
    ///
    /// Lets the engine adopt a ReplicaSet made by another controller (Argo) instead of starting an
    /// update only because the hash algorithm differs.
    pub matches_current_template: bool,
}

/// One pod of a ReplicaSet the Rollout owns (what `restartAt` needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObservation {
    pub name: String,
    /// Its `rollouts-pod-template-hash` label: the ReplicaSet it belongs to.
    pub pod_template_hash: String,
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// It has a `deletionTimestamp`.
    pub terminating: bool,
    /// Its Ready condition is True.
    pub ready: bool,
}

/// The Deployment a `workloadRef` names: its template is already in the spec; this is what the
/// engine needs to scale it down as `workloadRef.scaleDown` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadObservation {
    /// `workloadRef.scaleDown` (default `never`).
    pub scale_down: ScaleDown,
    /// The Deployment's `spec.replicas`.
    pub replicas: i32,
    /// The Deployment's `metadata.generation`: written to `status.workloadObservedGeneration`.
    pub generation: i64,
}

/// The canary weight the routers report, in percent of all traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficObservation {
    pub canary_weight: i32,
    /// Every router reports that weight as applied.
    pub verified: bool,
    /// The weights routers give Services besides the canary and stable ones (an `experiment:`
    /// step's templates with `weight`), by Service name.
    pub additional: BTreeMap<String, i32>,
}

/// A Service the Rollout manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceObservation {
    /// Its `rollouts-pod-template-hash` selector, if any.
    pub selector_hash: Option<String>,
    /// Ready endpoints behind it right now.
    pub ready_endpoints: i32,
}

/// One AnalysisRun owned by the Rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisRunObservation {
    pub name: String,
    pub phase: AnalysisPhase,
    pub message: String,
}

/// One Experiment owned by the Rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExperimentObservation {
    pub name: String,
    pub phase: AnalysisPhase,
    pub message: String,
    /// Its `spec.terminate` is set.
    pub terminating: bool,
    /// Its `status.templateStatuses`, in order.
    pub templates: Vec<ExperimentTemplateObservation>,
}

/// One template of an observed Experiment: where a router can send its share of traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExperimentTemplateObservation {
    pub name: String,
    /// The Service the Experiment made for it (empty: none yet).
    pub service_name: String,
    /// Its ReplicaSet's pod-template hash (empty: not known yet).
    pub pod_template_hash: String,
}

/// Everything needed to create the Experiment of a canary `experiment:` step besides the step
/// itself and the two ReplicaSets' pod templates.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentRequest {
    pub name: String,
    pub step_index: i32,
    pub revision: i64,
    /// The ReplicaSets `specRef: stable` and `specRef: canary` copy.
    pub stable_hash: String,
    pub canary_hash: String,
    /// The step's analyses, pod-template-hash argument values resolved.
    pub analyses: Vec<crate::api::argo::rollout::RolloutExperimentStepAnalysisTemplateRef>,
}

/// The result of planning: the next status, what to do, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: RolloutStatus,
    pub actions: Vec<Action>,
    /// Look again after this long even if nothing changes (timed pauses, deadlines). `None`: only
    /// a change to the Rollout or what it owns needs a new plan.
    pub requeue_after: Option<Duration>,
}

/// Something the controller should make true. Every action is idempotent.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the ReplicaSet for the current template (named `<rollout>-<hash>`), its pods
    /// carrying `ephemeral_metadata` (recorded in Argo's annotation).
    CreateReplicaSet {
        pod_template_hash: String,
        replicas: i32,
        revision: i64,
        ephemeral_metadata: Option<PodTemplateMetadata>,
    },
    /// Make a ReplicaSet's pod template and its existing pods carry `desired` instead of
    /// `previous` (keys only in `previous` are removed), then record `desired` on it.
    SetEphemeralMetadata {
        pod_template_hash: String,
        previous: Option<PodTemplateMetadata>,
        desired: Option<PodTemplateMetadata>,
    },
    /// Set `spec.replicas` of an existing ReplicaSet.
    ScaleReplicaSet {
        pod_template_hash: String,
        replicas: i32,
    },
    /// Set the `rollout.argoproj.io/revision` annotation of a ReplicaSet that is current again.
    SetRevision {
        pod_template_hash: String,
        revision: i64,
    },
    /// Set (or clear, with `None`) the `scale-down-deadline` annotation.
    SetScaleDownDeadline {
        pod_template_hash: String,
        deadline: Option<Timestamp>,
    },
    /// Delete an old ReplicaSet beyond `revisionHistoryLimit`.
    DeleteReplicaSet { pod_template_hash: String },
    /// Point a managed Service at the pods of one ReplicaSet.
    SetServiceSelector {
        service: String,
        pod_template_hash: String,
    },
    /// Give a Service the spec no longer names back: remove the `rollouts-pod-template-hash`
    /// selector and the managed-by annotation, as Argo does, so it selects every pod of the app.
    ReleaseService { service: String },
    /// Set the traffic routers' weights: `canary_weight` percent to the canary, each of
    /// `additional` its weight (an experiment step's templates), the rest to stable.
    SetWeight {
        canary_weight: i32,
        canary_hash: String,
        stable_hash: String,
        additional: Vec<WeightDestination>,
    },
    /// Add a header-based route (managed route `name`) that sends matching requests to the canary.
    SetHeaderRoute { step_index: i32 },
    /// Add a mirror route (managed route `name`) that copies matching requests to the canary.
    SetMirrorRoute { step_index: i32 },
    /// Remove every managed header and mirror route.
    RemoveManagedRoutes,
    /// The rollout has settled with no traffic on the canary (promoted, or aborted): give every
    /// route object back to its owner as its manifest declares it. Idempotent; planned on every
    /// settled reconcile, so a crash before it ran is made good by the next one.
    ReleaseTraffic,
    /// Create an AnalysisRun from the Rollout's templates (skipped if the name exists).
    CreateAnalysisRun(AnalysisRunRequest),
    /// Set `spec.terminate` on a running AnalysisRun.
    TerminateAnalysisRun { name: String },
    /// Create the Experiment of an `experiment:` step (skipped if the name exists).
    CreateExperiment(ExperimentRequest),
    /// Set `spec.terminate` on a running Experiment.
    TerminateExperiment { name: String },
    /// Set `spec.replicas` of the Deployment named by `workloadRef`.
    ScaleWorkload { replicas: i32 },
    /// Evict one pod so its ReplicaSet replaces it (`spec.restartAt`).
    RestartPod { name: String },
    /// Record a Kubernetes Event on the Rollout.
    Event(Event),
}

/// Why an AnalysisRun is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnalysisKind {
    /// An inline analysis step, by index.
    Step(i32),
    /// The background analysis of the canary.
    Background,
    /// Blue-green `prePromotionAnalysis`: gates the switch of the active Service.
    PrePromotion,
    /// Blue-green `postPromotionAnalysis`: runs after the switch, before the old pods go.
    PostPromotion,
}

/// Everything needed to create an AnalysisRun; argument values from pod-template hashes are
/// already resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisRunRequest {
    pub name: String,
    pub kind: AnalysisKind,
    pub pod_template_hash: String,
    pub revision: i64,
    /// `(templateName, clusterScope)` pairs, in order.
    pub templates: Vec<(String, bool)>,
    pub args: Vec<AnalysisRunArgument>,
    pub dry_run: Vec<DryRun>,
    pub measurement_retention: Vec<MeasurementRetention>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A Kubernetes Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the engine needs besides the spec, status and observations.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The Rollout's name (AnalysisRun names derive from it).
    pub name: &'a str,
    /// The spec, with `template` and `selector` already resolved from `workloadRef` and
    /// `workloadRef` removed (its scale-down mode goes to [`Observations::workload`]). A spec that
    /// still has a `workloadRef` means its target could not be read: the plan is InvalidSpec.
    pub spec: &'a RolloutSpec,
    pub status: &'a RolloutStatus,
    pub observed: &'a Observations,
}
