//! The canary `experiment:` step (Argo's `rollout/experiment.go`): the step asks for an Experiment
//! named `<rollout>-<podhash>-<revision>-<stepindex>` (a `-N` suffix for a later attempt, as
//! Argo's collision handling), is done when it is Successful, aborts the update when it Failed or
//! Errored, pauses (`InconclusiveExperiment`) when it is Inconclusive; every other Experiment of
//! the Rollout still running is terminated.
//!
//! While the step's Experiment is Running, each of its templates with a `weight` gets that share
//! of traffic through the routers, at the template's Service (Argo's traffic-routed experiments,
//! `calculateWeightDestinationsFromExperiment`); the stable side gives it up, the canary keeps its
//! weight. Before the Experiment runs, and once it ended, was terminated, or the update aborted or
//! was promoted, there is none: the routers send that share back to stable.
//!
//! Decides only from the observed Experiments (name, phase, template Services); building the
//! Experiment from the ReplicaSets' pod templates is the controller's
//! (`controller/rollout/experiment.rs`).

use crate::api::argo::rollout::{
    PauseReason, PodTemplateHashValue, RolloutExperimentStep, WeightDestination,
};
use crate::engine::{Action, AnalysisPhase, ExperimentObservation, ExperimentRequest};

use super::Planner;

impl Planner<'_> {
    /// Whether the experiment step `index` is complete, creating its Experiment first.
    pub(super) fn experiment_step(&mut self, index: i32, step: &RolloutExperimentStep) -> bool {
        // Argo: no experiment before a stable ReplicaSet exists (its templates may need it).
        if self.status.stable_rs.is_empty() || self.rs(&self.status.stable_rs).is_none() {
            return false;
        }
        let base = format!(
            "{}-{}-{}-{index}",
            self.name,
            self.current(),
            self.revision()
        );
        let Some(experiment) = self.step_experiment(&base) else {
            let name = self.next_attempt(&base);
            self.actions.push(Action::CreateExperiment(
                self.experiment_request(&name, index, step),
            ));
            self.status.canary.current_experiment = name;
            return false;
        };
        let (name, phase, message) = (
            experiment.name.clone(),
            experiment.phase,
            experiment.message.clone(),
        );
        match phase {
            AnalysisPhase::Successful => {
                self.status.canary.current_experiment.clear();
                true
            }
            AnalysisPhase::Failed | AnalysisPhase::Error => {
                let detail = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                };
                self.status.canary.current_experiment.clear();
                // Argo's words (`reconcileExperiments`).
                self.start_abort(format!(
                    "Rollout aborted update to revision {}: Experiment analysis phase is error/failed{detail}",
                    self.revision()
                ));
                false
            }
            AnalysisPhase::Inconclusive if self.resumed() => {
                self.status.controller_pause = false;
                self.status.canary.current_experiment.clear();
                true
            }
            AnalysisPhase::Inconclusive => {
                self.status.canary.current_experiment = name.clone();
                self.pause(
                    PauseReason::InconclusiveExperiment,
                    format!("Experiment {name} is Inconclusive: {message}"),
                );
                false
            }
            AnalysisPhase::Pending | AnalysisPhase::Running => {
                self.status.canary.current_experiment = name;
                false
            }
        }
    }

    /// The Experiment this step runs: the one the status names, else the latest attempt still
    /// running; `None` when a new one is needed.
    fn step_experiment(&self, base: &str) -> Option<&ExperimentObservation> {
        let observed = &self.observed.experiments;
        let referenced = &self.status.canary.current_experiment;
        if attempt(referenced, base).is_some()
            && let Some(found) = observed.iter().find(|e| &e.name == referenced)
        {
            return Some(found);
        }
        observed
            .iter()
            .filter_map(|e| attempt(&e.name, base).map(|a| (a, e)))
            .max_by_key(|(a, _)| *a)
            .map(|(_, e)| e)
            .filter(|e| !e.phase.is_completed())
    }

    /// The name of a new attempt: the base, or `<base>-N` past every existing one.
    fn next_attempt(&self, base: &str) -> String {
        let referenced = &self.status.canary.current_experiment;
        if attempt(referenced, base).is_some()
            && !self
                .observed
                .experiments
                .iter()
                .any(|e| &e.name == referenced)
        {
            // Asked for by an earlier plan and not seen yet: ask again under the same name.
            return referenced.clone();
        }
        match self
            .observed
            .experiments
            .iter()
            .filter_map(|e| attempt(&e.name, base))
            .max()
        {
            None => base.to_string(),
            Some(last) => format!("{base}-{}", last + 1),
        }
    }

    fn experiment_request(
        &self,
        name: &str,
        index: i32,
        step: &RolloutExperimentStep,
    ) -> ExperimentRequest {
        let mut analyses = step.analyses.clone().unwrap_or_default();
        for arg in analyses
            .iter_mut()
            .flat_map(|a| a.args.iter_mut().flatten())
        {
            if let Some(which) = arg
                .value_from
                .as_ref()
                .and_then(|v| v.pod_template_hash_value)
            {
                arg.value = Some(match which {
                    PodTemplateHashValue::Stable => self.status.stable_rs.clone(),
                    PodTemplateHashValue::Latest => self.status.current_pod_hash.clone(),
                });
                arg.value_from = None;
            }
        }
        ExperimentRequest {
            name: name.to_string(),
            step_index: index,
            revision: self.revision(),
            stable_hash: self.status.stable_rs.clone(),
            canary_hash: self.status.current_pod_hash.clone(),
            analyses,
        }
    }

    /// The traffic the current experiment step's templates get besides the canary and stable
    /// (empty unless its Experiment is Running and its templates' Services exist).
    pub(super) fn experiment_destinations(&self) -> Vec<WeightDestination> {
        if self.status.abort || self.status.promote_full || self.promoted() {
            return Vec::new();
        }
        let Some(step) = self
            .steps()
            .get(self.index() as usize)
            .and_then(|s| s.experiment.as_ref())
        else {
            return Vec::new();
        };
        let name = &self.status.canary.current_experiment;
        let Some(experiment) = self.observed.experiments.iter().find(|e| &e.name == name) else {
            return Vec::new();
        };
        if experiment.phase != AnalysisPhase::Running || experiment.terminating {
            return Vec::new();
        }
        step.templates
            .iter()
            .filter_map(|template| {
                let weight = template.weight?;
                let observed = experiment
                    .templates
                    .iter()
                    .find(|t| t.name == template.name)?;
                // No Service yet: nothing a router could send traffic to.
                (!observed.service_name.is_empty() && !observed.pod_template_hash.is_empty()).then(
                    || WeightDestination {
                        weight,
                        service_name: observed.service_name.clone(),
                        pod_template_hash: observed.pod_template_hash.clone(),
                    },
                )
            })
            .collect()
    }

    /// Terminate every running Experiment of the Rollout but the one the current step runs
    /// (Argo's `cancelExperiments`): the step moved on, the update aborted or was promoted.
    pub(super) fn cancel_other_experiments(&mut self) {
        let on_step = !self.status.abort
            && !self.status.promote_full
            && self
                .steps()
                .get(self.index() as usize)
                .is_some_and(|s| s.experiment.is_some());
        let keep = if on_step {
            self.status.canary.current_experiment.clone()
        } else {
            self.status.canary.current_experiment.clear();
            String::new()
        };
        let observed = self.observed;
        for experiment in &observed.experiments {
            if experiment.name != keep
                && !experiment.terminating
                && !experiment.phase.is_completed()
            {
                self.actions.push(Action::TerminateExperiment {
                    name: experiment.name.clone(),
                });
            }
        }
    }
}

/// The attempt number of an Experiment name for `base` (0 for the base itself, N for `<base>-N`).
fn attempt(name: &str, base: &str) -> Option<u32> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix('-')?.parse().ok()
}
