//! The pure experiment engine: every decision about an Experiment, and nothing else.
//!
//! ```text
//!   ExperimentSpec + ExperimentStatus + Observed (ReplicaSets and Services by template,
//!   AnalysisRuns by name, the current time)  ──plan()──▶  Plan { status, actions, requeue_after }
//! ```
//!
//! Argo's semantics (`experiments/experiment.go`): each template gets a ReplicaSet
//! (`<experiment>-<template>`); the experiment is Pending until every template is available, then
//! Running (`availableAt` set) for `duration`, or until the analyses `requiredForCompletion` have
//! succeeded, or forever; a failed, errored or inconclusive analysis ends it with that phase; a
//! template that is not available within `progressDeadlineSeconds` fails it; `terminate: true` ends
//! it (Successful unless an analysis failed). Once it ends, its analyses are terminated and its
//! ReplicaSets scaled to zero after `scaleDownDelaySeconds`.
//!
//! This module must never do I/O: no client, no clock, no randomness. Actions are declarative and
//! idempotent, so executing a plan twice does no harm.

mod analyses;
mod args;
mod templates;
#[cfg(test)]
mod tests;

pub use analyses::run_name;
pub use templates::{replica_set_name, template_hash, without_hash_label};

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::argo::analysis::{AnalysisPhase, Argument, DryRun, MeasurementRetention};
use crate::api::argo::experiment::{
    ExperimentCondition, ExperimentSpec, ExperimentStatus, TemplateStatusCode,
};
use crate::engine::{Event, ReplicaSetObservation};

/// Everything the engine reads besides the Experiment itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The current time.
    pub now: Timestamp,
    /// The ReplicaSet the experiment controls for each template, by template name.
    pub replica_sets: BTreeMap<String, ReplicaSetObservation>,
    /// The Service the experiment controls for each template, by template name: its name.
    pub services: BTreeMap<String, String>,
    /// AnalysisRuns the experiment controls, by run name.
    pub analysis_runs: BTreeMap<String, (AnalysisPhase, Option<String>)>,
}

/// What the engine needs.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The Experiment's name (ReplicaSet and AnalysisRun names derive from it).
    pub name: &'a str,
    pub spec: &'a ExperimentSpec,
    pub status: &'a ExperimentStatus,
    pub observed: &'a Observed,
}

/// The engine's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: ExperimentStatus,
    pub actions: Vec<Action>,
    /// Look again after this long even if nothing changes (duration, deadlines, scale-down).
    pub requeue_after: Option<Duration>,
}

/// Something the controller should make true. Every action is idempotent.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the template's ReplicaSet (`<experiment>-<template>`), its pods labelled with
    /// `pod_template_hash`.
    CreateReplicaSet {
        template: String,
        pod_template_hash: String,
        replicas: i32,
    },
    /// Set `spec.replicas` of the template's ReplicaSet.
    ScaleReplicaSet { template: String, replicas: i32 },
    /// Set (or clear) the `scale-down-deadline` annotation of the template's ReplicaSet.
    SetScaleDownDeadline {
        template: String,
        deadline: Option<Timestamp>,
    },
    /// Create a Service named `service` selecting the template's pods (`pod_template_hash`),
    /// with the ports of its containers.
    CreateService {
        template: String,
        service: String,
        pod_template_hash: String,
    },
    /// Delete the template's Service.
    DeleteService { template: String, service: String },
    /// Create an AnalysisRun (skipped if the name exists).
    CreateAnalysisRun(RunRequest),
    /// Set `spec.terminate` on a running AnalysisRun.
    TerminateAnalysisRun { name: String },
    /// Record a Kubernetes Event on the Experiment.
    Event(Event),
}

/// Everything needed to create one of the experiment's AnalysisRuns.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    pub name: String,
    /// `(templateName, clusterScope)`.
    pub template: (String, bool),
    pub args: Vec<Argument>,
    pub dry_run: Vec<DryRun>,
    pub measurement_retention: Vec<MeasurementRetention>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Plan the next state of an Experiment.
pub fn plan(input: Input<'_>) -> Plan {
    let mut planner = Planner::new(input);
    if let Some(error) = invalid_spec(input.spec) {
        planner.invalid(error);
        return planner.finish();
    }
    // An ended experiment passes here too: its scale-down and run terminations remain.
    for template in &input.spec.templates {
        templates::reconcile(&mut planner, template);
    }
    for analysis in &input.spec.analyses {
        analyses::reconcile(&mut planner, analysis);
    }
    planner.assess();
    planner.finish()
}

/// The first problem of a spec the engine cannot run, naming the field.
fn invalid_spec(spec: &ExperimentSpec) -> Option<String> {
    if let Err(e) = spec.duration_seconds() {
        return Some(format!("spec.duration: {e}"));
    }
    if spec.templates.is_empty() {
        return Some("spec.templates: an experiment needs at least one template".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, template) in spec.templates.iter().enumerate() {
        if !names.insert(template.name.as_str()) {
            return Some(format!(
                "spec.templates[{i}].name: template name {:?} is used twice",
                template.name
            ));
        }
        if let Some(error) = templates::selector_error(template) {
            return Some(format!("spec.templates[{i}].selector: {error}"));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, analysis) in spec.analyses.iter().enumerate() {
        if !names.insert(analysis.name.as_str()) {
            return Some(format!(
                "spec.analyses[{i}].name: analysis name {:?} is used twice",
                analysis.name
            ));
        }
    }
    None
}

/// The state shared by the template and analysis passes.
pub(super) struct Planner<'a> {
    input: Input<'a>,
    status: ExperimentStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    /// Argo's `isTerminating`, computed from the status the plan started from.
    terminating: bool,
}

impl<'a> Planner<'a> {
    fn new(input: Input<'a>) -> Self {
        Self {
            input,
            status: input.status.clone(),
            actions: Vec::new(),
            requeue: None,
            terminating: is_terminating(input.spec, input.status),
        }
    }

    fn now(&self) -> Timestamp {
        // Status times are whole seconds on the wire.
        let now = self.input.observed.now;
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }

    fn finished(&self) -> bool {
        self.input
            .status
            .phase
            .is_some_and(AnalysisPhase::is_completed)
    }

    /// Look again at `at` at the latest.
    fn requeue_at(&mut self, at: Timestamp) {
        let wait = at.duration_since(self.now()).as_secs().max(1);
        let wait = Duration::from_secs(wait.unsigned_abs());
        self.requeue = Some(self.requeue.map_or(wait, |r| r.min(wait)));
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.actions.push(Action::Event(Event {
            warning,
            reason,
            message,
        }));
    }

    fn invalid(&mut self, message: String) {
        let changed = self.status.phase != Some(AnalysisPhase::Error)
            || self.status.message.as_deref() != Some(message.as_str());
        if changed {
            self.event(true, "InvalidSpec", message.clone());
        }
        self.status.phase = Some(AnalysisPhase::Error);
        self.status.message = Some(message.clone());
        self.set_condition("InvalidSpec", "True", "InvalidSpec", message);
        // Nothing is created for a spec that cannot run; what exists is scaled down.
        for (template, rs) in &self.input.observed.replica_sets {
            if rs.replicas != 0 {
                self.actions.push(Action::ScaleReplicaSet {
                    template: template.clone(),
                    replicas: 0,
                });
            }
        }
    }

    fn set_condition(&mut self, type_: &str, status: &str, reason: &str, message: String) {
        let now = Time(self.now());
        match self.status.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == status && c.reason == reason && c.message == message => {}
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now.clone();
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message;
                c.last_update_time = now;
            }
            None => self.status.conditions.push(ExperimentCondition {
                type_: type_.into(),
                status: status.into(),
                last_update_time: now.clone(),
                last_transition_time: now,
                reason: reason.into(),
                message,
            }),
        }
    }

    /// Argo's `calculateStatus`: the experiment's phase from its templates and analyses.
    fn assess(&mut self) {
        let previous = self.status.phase;
        match previous {
            None => self.status.phase = Some(AnalysisPhase::Pending),
            Some(AnalysisPhase::Pending | AnalysisPhase::Running) => self.assess_running(),
            Some(_) => {}
        }
        if let Some(phase) = self.status.phase.filter(|p| Some(*p) != previous) {
            let warning = matches!(
                phase,
                AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
            );
            let mut message = format!("Experiment transitioned to {phase}");
            if let Some(why) = self.status.message.as_deref().filter(|m| !m.is_empty()) {
                message = format!("{message}: {why}");
            }
            self.event(warning, phase_reason(phase), message);
        }
        self.status
            .conditions
            .retain(|c| c.type_ != "InvalidSpec" || c.status != "True");
    }

    fn assess_running(&mut self) {
        let (templates, template_message) = templates::assess(self);
        let (analyses, analyses_message) = analyses::assess(self);
        if templates == AnalysisPhase::Running && self.status.available_at.is_none() {
            self.status.available_at = Some(Time(self.now()));
        }
        let (phase, message) = if templates.is_completed() {
            let analyses_done =
                analyses.is_completed() || has_required(self.input.spec) || self.user_terminated();
            if templates == AnalysisPhase::Successful && analyses_done {
                (analyses, analyses_message)
            } else {
                (templates, template_message)
            }
        } else if (analyses.is_completed() && analyses != AnalysisPhase::Successful)
            || required_successful(self.input.spec, &self.status)
        {
            // An analysis ended the experiment early, or every required one succeeded.
            (analyses, analyses_message)
        } else {
            (templates, template_message)
        };
        self.status.phase = Some(phase);
        self.status.message = message.filter(|m| !m.is_empty());
        if phase == AnalysisPhase::Running {
            self.requeue_for_duration();
        }
    }

    /// `spec.terminate` is set.
    fn user_terminated(&self) -> bool {
        self.input.spec.terminate == Some(true)
    }

    fn requeue_for_duration(&mut self) {
        let Ok(Some(seconds)) = self.input.spec.duration_seconds() else {
            return;
        };
        if let Some(at) = &self.status.available_at {
            let end = at.0 + Duration::from_secs(seconds.unsigned_abs());
            self.requeue_at(end);
        }
    }

    /// `availableAt + duration` has passed (by the status the plan started from, as Argo).
    fn passed_duration(&self) -> bool {
        let (Ok(Some(seconds)), Some(at)) = (
            self.input.spec.duration_seconds(),
            self.input.status.available_at.as_ref(),
        ) else {
            return false;
        };
        self.now() >= at.0 + Duration::from_secs(seconds.unsigned_abs())
    }

    fn finish(self) -> Plan {
        Plan {
            status: self.status,
            actions: self.actions,
            requeue_after: self.requeue,
        }
    }
}

/// Argo's `IsTerminating`: terminate is set, the experiment ended, a template failed, an analysis
/// failed, or every required analysis succeeded.
fn is_terminating(spec: &ExperimentSpec, status: &ExperimentStatus) -> bool {
    spec.terminate == Some(true)
        || status.phase.is_some_and(AnalysisPhase::is_completed)
        || status.template_statuses.iter().any(|t| {
            matches!(
                t.status,
                Some(TemplateStatusCode::Failed | TemplateStatusCode::Error)
            )
        })
        || status.analysis_runs.iter().any(|r| {
            matches!(
                r.phase,
                Some(AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive)
            )
        })
        || required_successful(spec, status)
}

fn has_required(spec: &ExperimentSpec) -> bool {
    spec.analyses.iter().any(|a| a.required_for_completion())
}

/// At least one analysis is required for completion, and every such one succeeded.
fn required_successful(spec: &ExperimentSpec, status: &ExperimentStatus) -> bool {
    let mut required = spec
        .analyses
        .iter()
        .filter(|a| a.required_for_completion())
        .peekable();
    required.peek().is_some()
        && required.all(|a| {
            status
                .analysis_runs
                .iter()
                .any(|r| r.name == a.name && r.phase == Some(AnalysisPhase::Successful))
        })
}

fn phase_reason(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Pending => "ExperimentPending",
        AnalysisPhase::Running => "ExperimentRunning",
        AnalysisPhase::Successful => "ExperimentSuccessful",
        AnalysisPhase::Failed => "ExperimentFailed",
        AnalysisPhase::Error => "ExperimentError",
        AnalysisPhase::Inconclusive => "ExperimentInconclusive",
    }
}
