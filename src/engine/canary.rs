//! The canary step machine: Argo Rollouts' canary semantics as one pure function, [`plan`].
//!
//! Order of decisions (mirroring Argo's `rolloutCanary`): validate → identify the revision →
//! user intents (abort, retry, promote-full) → steps → background analysis → promotion →
//! replica targets → old ReplicaSets and history → Services → traffic → conditions and phase.
//! Whenever data is missing or doubtful, the decision moves traffic towards the stable version.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::argo::rollout::{
    CanaryStep, CanaryStrategy, PauseCondition, PauseReason, PodTemplateHashValue, RolloutAnalysis,
    RolloutAnalysisRunStatus, RolloutCondition, RolloutSpec, RolloutStatus, ScaleDown,
    TrafficWeights, WeightDestination,
};
use crate::engine::health::{self, reason};
use crate::engine::replicas::{self, BasicCanary, RoutedCanary, RsCounts};
use crate::engine::restart::{self, Restart};
use crate::engine::{
    Action, AnalysisKind, AnalysisPhase, AnalysisRunRequest, Event, Input, Plan,
    ReplicaSetObservation, argo_events, ephemeral, hash, validate,
};

mod bluegreen;
mod dynamic_abort;
mod experiment_step;
pub mod ping_pong;

/// What a blue-green Rollout's canary helpers see: no steps, no router, no Services.
static NO_CANARY: std::sync::LazyLock<CanaryStrategy> =
    std::sync::LazyLock::new(CanaryStrategy::default);

/// Plan the next status and actions for a Rollout. Pure and total: never panics.
pub fn plan(input: Input<'_>) -> Plan {
    let mut planner = Planner::new(input);
    planner.run();
    let mut plan = planner.finish();
    argo_events::arrange(&input, &mut plan);
    plan
}

/// How often a restart in progress looks again (pods are not watched; ReplicaSet changes also wake it).
const RESTART_CHECK_SECONDS: i64 = 2;

/// How often unverified router weights are checked again (Argo's verify retry interval).
const TRAFFIC_VERIFY_INTERVAL: Duration = Duration::from_secs(10);

struct Planner<'a> {
    name: &'a str,
    spec: &'a RolloutSpec,
    old: &'a RolloutStatus,
    observed: &'a crate::engine::Observations,
    now: Timestamp,
    status: RolloutStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    /// Something moved forward in this plan (resets the progress deadline).
    progressed: bool,
    abort_message: Option<String>,
    /// The step index when this plan started: a user's resume applies to that step only.
    start_index: i32,
    /// Why a Progressing rollout is waiting (shown as `status.message`), when the phase alone
    /// does not say it.
    wait_message: Option<String>,
}

/// The pods a plan wants for the current and the stable ReplicaSet, and the canary weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Targets {
    new: i32,
    stable: i32,
    /// Canary weight in router units (0..=maxTrafficWeight).
    weight: i32,
}

impl<'a> Planner<'a> {
    fn new(input: Input<'a>) -> Self {
        let now =
            Timestamp::from_second(input.observed.now.as_second()).unwrap_or(input.observed.now);
        Self {
            name: input.name,
            spec: input.spec,
            old: input.status,
            observed: input.observed,
            now,
            status: input.status.clone(),
            actions: Vec::new(),
            requeue: None,
            progressed: false,
            abort_message: None,
            start_index: input.status.current_step_index.unwrap_or(0),
            wait_message: None,
        }
    }

    fn finish(mut self) -> Plan {
        let (phase, message) = health::phase(self.spec, &self.status, self.observed.generation);
        self.status.phase = Some(phase);
        self.status.message = match self.wait_message {
            Some(wait) if phase == crate::api::argo::rollout::RolloutPhase::Progressing => wait,
            _ => message,
        };
        Plan {
            status: self.status,
            actions: self.actions,
            requeue_after: self.requeue,
        }
    }

    // === helpers ===

    /// The canary strategy; an empty one for a blue-green Rollout (validated: one is set).
    fn canary(&self) -> &'a CanaryStrategy {
        self.spec.strategy.canary.as_ref().unwrap_or(&NO_CANARY)
    }

    fn steps(&self) -> &'a [CanaryStep] {
        self.canary().steps()
    }

    fn step_count(&self) -> i32 {
        self.steps().len() as i32
    }

    fn index(&self) -> i32 {
        self.status
            .current_step_index
            .unwrap_or(0)
            .clamp(0, self.step_count())
    }

    /// maxSurge and maxUnavailable resolved against spec.replicas (validated, so never an error).
    fn fenceposts(&self) -> (i32, i32) {
        let canary = self.canary();
        let blue_green = self.spec.strategy.blue_green.as_ref();
        replicas::fenceposts(
            canary.max_surge.as_ref(),
            blue_green.map_or(canary.max_unavailable.as_ref(), |b| {
                b.max_unavailable.as_ref()
            }),
            self.spec.replicas(),
        )
        .unwrap_or((1, 0))
    }

    fn has_router(&self) -> bool {
        self.canary().traffic_routing.is_some()
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.actions.push(Action::Event(Event {
            warning,
            reason,
            message,
        }));
    }

    fn requeue_in(&mut self, seconds: i64) {
        let wait = Duration::from_secs(seconds.max(1) as u64);
        self.requeue = Some(self.requeue.map_or(wait, |r| r.min(wait)));
    }

    fn after(&self, seconds: i64) -> Timestamp {
        Timestamp::from_second(self.now.as_second().saturating_add(seconds))
            .unwrap_or(Timestamp::MAX)
    }

    fn rs(&self, hash: &str) -> Option<&'a ReplicaSetObservation> {
        if hash.is_empty() {
            return None;
        }
        self.observed
            .replica_sets
            .iter()
            .find(|rs| rs.pod_template_hash == hash)
    }

    /// ReplicaSets that are neither the current nor the stable one.
    fn others(&self) -> impl Iterator<Item = &'a ReplicaSetObservation> + '_ {
        self.observed.replica_sets.iter().filter(|rs| {
            rs.pod_template_hash != self.status.current_pod_hash
                && rs.pod_template_hash != self.status.stable_rs
        })
    }

    fn current(&self) -> &str {
        &self.status.current_pod_hash
    }

    fn promoted(&self) -> bool {
        self.status.stable_rs == self.status.current_pod_hash
    }

    /// The revision of the current ReplicaSet (see [`revision_for`](Self::revision_for)).
    fn revision(&self) -> i64 {
        self.revision_for(self.current())
    }

    fn set_condition(&mut self, type_: &str, status: &str, reason: &str, message: String) {
        let now = Time(self.now);
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
            None => self.status.conditions.push(RolloutCondition {
                type_: type_.into(),
                status: status.into(),
                last_update_time: now.clone(),
                last_transition_time: now,
                reason: reason.into(),
                message,
                observed_generation: None,
            }),
        }
    }

    fn remove_condition(&mut self, type_: &str) {
        self.status.conditions.retain(|c| c.type_ != type_);
    }

    // === the plan ===

    fn run(&mut self) {
        self.status.observed_generation = self.observed.generation.to_string();
        let mut errors: Vec<String> = validate::validate(self.spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        // The controller removes workloadRef once it has read the target's template; one still
        // here means the target is missing (or of a kind Sluice cannot read).
        if self.spec.workload_ref.is_some() && validate::template_has_content(self.spec) {
            // Argo reports only this: the template that would be checked is not the one used.
            errors = vec![validate::template_with_workload_ref().to_string()];
        } else if let Some(workload) = &self.spec.workload_ref {
            errors = vec![format!(
                "spec.workloadRef: {} {:?} not found; create it, or point workloadRef at an existing Deployment",
                workload.kind.as_deref().unwrap_or("Deployment"),
                workload.name.as_deref().unwrap_or_default()
            )];
        }
        if let Some(templates) = &self.observed.analysis_templates {
            errors.extend(
                validate::analysis_templates(self.spec, templates)
                    .iter()
                    .map(ToString::to_string),
            );
        }
        if let Some(error) = &self.observed.traffic_config_error {
            errors.push(format!("spec.strategy.canary.trafficRouting: {error}"));
        }
        errors.extend(self.missing_blue_green_services());
        if !errors.is_empty() {
            let message = errors.join("; ");
            let known = self
                .old
                .conditions
                .iter()
                .any(|c| c.type_ == reason::INVALID_SPEC && c.message == message);
            self.set_condition(
                reason::INVALID_SPEC,
                "True",
                reason::INVALID_SPEC,
                message.clone(),
            );
            if !known {
                self.event(
                    true,
                    reason::INVALID_SPEC,
                    format!("The Rollout is invalid and was not acted on: {message}"),
                );
            }
            return;
        }
        self.remove_condition(reason::INVALID_SPEC);
        self.release_unreferenced_services();
        // Argo's `workloadObservedGeneration`: the workload generation this plan was made from.
        self.status.workload_observed_generation = self
            .observed
            .workload
            .as_ref()
            .map(|w| w.generation.to_string())
            .unwrap_or_default();

        self.identify_revision();
        self.user_intents();
        if self.spec.strategy.blue_green.is_some() {
            self.blue_green();
            return;
        }
        self.start_index = self.index();
        if !self.status.abort && !self.promoted() && !self.status.promote_full {
            self.run_steps();
            self.background_analysis();
        }
        self.cancel_other_experiments();
        // As Argo does: controllerPause only outlives a plan while a pause condition exists, so a
        // resume is consumed by the step it was meant for and never skips a later pause.
        if self.status.pause_conditions.is_empty() {
            self.status.controller_pause = false;
        }
        self.promote_when_ready();
        let targets = self.targets();
        self.scale_replica_sets(targets);
        self.scale_down_old_replica_sets();
        self.delete_old_history();
        self.ephemeral_metadata();
        self.services(targets);
        self.traffic(targets);
        self.counts();
        self.scale_workload();
        self.restart_pods();
        self.conditions();
    }

    /// Services the spec stopped naming get their hash selector back off (Argo's service
    /// controller does the same), else they keep selecting one ReplicaSet's pods forever.
    fn release_unreferenced_services(&mut self) {
        for service in &self.observed.unreferenced_services {
            self.actions.push(Action::ReleaseService {
                service: service.clone(),
            });
        }
    }

    /// `spec.restartAt`: evict the pods created before it, as many at a time as `maxUnavailable`
    /// allows (see [`restart`]).
    fn restart_pods(&mut self) {
        let restart_at = self.spec.restart_at.as_ref().map(|t| t.0);
        let restarted_at = self.status.restarted_at.as_ref().map(|t| t.0);
        let current = self.current().to_string();
        let stable = self.status.stable_rs.clone();
        let mut others: Vec<&ReplicaSetObservation> = self.others().collect();
        others.sort_by_key(|rs| rs.revision);
        let mut sets: Vec<&ReplicaSetObservation> = Vec::new();
        sets.extend(self.rs(&stable));
        if current != stable {
            sets.extend(self.rs(&current));
        }
        sets.extend(others);
        let budget = restart::Budget {
            replicas: self.spec.replicas(),
            max_unavailable: self.fenceposts().1,
        };
        match restart::next(
            restart_at,
            restarted_at,
            self.now,
            &sets,
            &self.observed.pods,
            budget,
        ) {
            Restart::Idle => {}
            Restart::Later(seconds) => self.requeue_in(seconds),
            Restart::Wait => self.requeue_in(RESTART_CHECK_SECONDS),
            Restart::Evict(names) => {
                self.actions
                    .extend(names.into_iter().map(|name| Action::RestartPod { name }));
                self.requeue_in(RESTART_CHECK_SECONDS);
            }
            Restart::Done => {
                self.status.restarted_at = self.spec.restart_at.clone();
                self.event(
                    false,
                    reason::ROLLOUT_RESTARTED,
                    format!(
                        "Restarted every pod created before {}",
                        restart_at.map(|t| t.to_string()).unwrap_or_default()
                    ),
                );
            }
        }
    }

    /// Scale the Deployment a workloadRef names, as `workloadRef.scaleDown` says: `progressively`
    /// hands its pods over as the Rollout's become available (and takes them back if they stop
    /// being available), `onsuccess` scales it to zero once the Rollout is fully promoted and
    /// available, `never` leaves it alone.
    fn scale_workload(&mut self) {
        let Some(workload) = &self.observed.workload else {
            return;
        };
        let spec_replicas = self.spec.replicas();
        let target = match workload.scale_down {
            ScaleDown::Never => return,
            ScaleDown::OnSuccess => {
                let complete = self.promoted()
                    && self.status.updated_replicas >= spec_replicas
                    && self.status.available_replicas >= spec_replicas;
                if !complete {
                    return;
                }
                0
            }
            ScaleDown::Progressively => {
                (spec_replicas - self.status.available_replicas).clamp(0, spec_replicas)
            }
        };
        if workload.replicas != target {
            self.actions
                .push(Action::ScaleWorkload { replicas: target });
        }
    }

    /// Work out the current pod-template hash and react to a new template or new steps.
    fn identify_revision(&mut self) {
        let template = self.spec.template.clone().unwrap_or_default();
        let matching: Vec<&ReplicaSetObservation> = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| rs.matches_current_template)
            .collect();
        let current = matching
            .iter()
            .find(|rs| rs.pod_template_hash == self.old.current_pod_hash)
            .or_else(|| matching.iter().max_by_key(|rs| rs.revision))
            .map(|rs| rs.pod_template_hash.clone())
            .unwrap_or_else(|| hash::pod_template_hash(&template, self.old.collision_count));
        let step_hash = hash::step_hash(self.canary().steps.as_ref());
        let steps = self.step_count();

        if self.old.stable_rs.is_empty() {
            // The first deploy skips the steps (Argo's behaviour): it is promoted at once.
            self.status.stable_rs = current.clone();
            self.swap_ping_pong();
            if self.old.current_pod_hash.is_empty() {
                self.event(
                    false,
                    reason::ROLLOUT_UPDATED,
                    format!(
                        "Rollout created at revision {}",
                        self.revision_for(&current)
                    ),
                );
                self.progressed = true;
            }
        } else if self.old.current_pod_hash != current
            || (self.old.current_step_hash != step_hash && self.old.stable_rs != current)
        {
            let template_changed = self.old.current_pod_hash != current;
            self.status.pause_conditions.clear();
            self.status.controller_pause = false;
            self.status.abort = false;
            self.status.aborted_at = None;
            self.status.promote_full = false;
            self.status.canary.current_step_analysis_run_status = None;
            self.status.canary.current_background_analysis_run_status = None;
            self.status.current_step_index = (steps > 0).then_some(0);
            self.progressed = true;
            if template_changed && self.spec.restart_at.is_some() {
                // As Argo does: a new revision brings up new pods anyway, so the restart is over.
                self.status.restarted_at = self.spec.restart_at.clone();
            }
            if current == self.old.stable_rs {
                self.status.current_step_index = (steps > 0).then_some(steps);
                if template_changed {
                    self.event(
                        false,
                        reason::FAST_ROLLBACK,
                        format!(
                            "Rolled back to the stable revision {} without steps",
                            self.revision_for(&current)
                        ),
                    );
                }
            } else if let Some(why) = template_changed
                .then(|| self.fast_rollback(&current))
                .flatten()
            {
                // Argo's fast rollback: straight back, without steps, pauses or analysis.
                if self.spec.strategy.blue_green.is_some() {
                    self.status.promote_full = true;
                } else {
                    self.status.current_step_index = (steps > 0).then_some(steps);
                }
                self.event(
                    false,
                    reason::FAST_ROLLBACK,
                    format!(
                        "Rolled back to revision {} {why}: without steps, pauses or analysis",
                        self.revision_for(&current)
                    ),
                );
            } else if template_changed {
                self.event(
                    false,
                    reason::ROLLOUT_UPDATED,
                    format!(
                        "Rollout updated to revision {}",
                        self.revision_for(&current)
                    ),
                );
            } else {
                self.event(
                    false,
                    reason::ROLLOUT_UPDATED,
                    "Canary steps changed: restarting at step 0".into(),
                );
            }
        }
        self.status.current_pod_hash = current;
        self.status.current_step_hash = step_hash;
        if self.promoted() || steps == 0 {
            self.status.current_step_index = (steps > 0).then_some(steps);
        }
    }

    /// Why going back to the ReplicaSet `hash` is a fast rollback (Argo's `isFastRollback`), if it
    /// is: it is older than the stable one (by revision) and either within `rollbackWindow` (fewer
    /// than `revisions` ReplicaSets between the two) or, for blue-green, still up within its
    /// scale-down delay.
    fn fast_rollback(&self, hash: &str) -> Option<&'static str> {
        let back_to = self.rs(hash)?.revision;
        let stable = self.rs(&self.old.stable_rs)?.revision;
        if back_to >= stable {
            return None;
        }
        let window = self
            .spec
            .rollback_window
            .as_ref()
            .and_then(|w| w.revisions)
            .unwrap_or(0);
        let between = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| rs.revision > back_to && rs.revision < stable)
            .count();
        if window > 0 && between < window as usize {
            return Some("within the rollback window");
        }
        let within_delay = self
            .rs(hash)
            .and_then(|rs| rs.scale_down_deadline)
            .is_some_and(|deadline| deadline > self.now);
        (self.spec.strategy.blue_green.is_some() && within_delay)
            .then_some("within its scale-down delay")
    }

    /// The revision the ReplicaSet with `hash` has as the current one: its own when it is the
    /// newest, else the next one (as Deployments and Argo do, a ReplicaSet that becomes current
    /// again, or a new one, is numbered after every other).
    fn revision_for(&self, hash: &str) -> i64 {
        let newest_other = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| rs.pod_template_hash != hash)
            .map(|rs| rs.revision)
            .max()
            .unwrap_or(0);
        match self.rs(hash) {
            Some(rs) if rs.revision > newest_other => rs.revision,
            _ => newest_other + 1,
        }
    }

    fn user_intents(&mut self) {
        // Retry: the user cleared `abort` after the controller acted on it.
        if !self.status.abort && self.status.aborted_at.is_some() {
            self.status.aborted_at = None;
            self.status.canary.current_step_analysis_run_status = None;
            self.status.canary.current_background_analysis_run_status = None;
            self.status.current_step_index = (self.step_count() > 0).then_some(0);
            self.progressed = true;
            self.set_condition(
                reason::PROGRESSING,
                "True",
                reason::ROLLOUT_RETRY,
                "Retrying the rollout".into(),
            );
            self.event(
                false,
                reason::ROLLOUT_RETRY,
                format!("Retrying the update to revision {}", self.revision()),
            );
        }
        if self.status.abort && self.status.aborted_at.is_none() && !self.promoted() {
            self.start_abort(format!(
                "Rollout aborted update to revision {}",
                self.revision()
            ));
        }
        // A verdict already in beats any later intent: a failed analysis aborts even if the user
        // asked for a full promotion in the meantime.
        if !self.status.abort
            && !self.promoted()
            && let Some(run) = self.failed_run()
        {
            self.analysis_failed(&run.name, run.phase, &run.message);
        }
        // As Argo does, a full promotion clears an abort, but never one a failed analysis of
        // this update caused (that verdict wins over any later intent).
        if self.status.promote_full
            && self.status.abort
            && !self.promoted()
            && self.failed_run().is_none()
        {
            self.status.abort = false;
            self.status.aborted_at = None;
            self.progressed = true;
            self.event(
                false,
                reason::ROLLOUT_PROMOTED_FULL,
                format!(
                    "Fully promoting the aborted update to revision {}: the abort is cleared",
                    self.revision()
                ),
            );
        }
        if self.status.promote_full && !self.status.abort && !self.promoted() {
            if self.index() < self.step_count() || !self.status.pause_conditions.is_empty() {
                self.event(
                    false,
                    reason::ROLLOUT_PROMOTED_FULL,
                    "Fully promoting: skipping the remaining steps".into(),
                );
            }
            self.status.current_step_index = (self.step_count() > 0).then_some(self.step_count());
            self.status.pause_conditions.clear();
            self.status.controller_pause = false;
            self.stop_analysis_run(AnalysisKind::Step(0));
            self.stop_analysis_run(AnalysisKind::Background);
        }
    }

    /// A Failed or Error AnalysisRun the status references for this update: the verdict.
    fn failed_run(&self) -> Option<&'a crate::engine::AnalysisRunObservation> {
        let observed = self.observed;
        [
            &self.status.canary.current_step_analysis_run_status,
            &self.status.canary.current_background_analysis_run_status,
        ]
        .into_iter()
        .flatten()
        .find_map(|reference| {
            observed.analysis_runs.iter().find(|r| {
                r.name == reference.name
                    && matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error)
            })
        })
    }

    /// Abort the update: traffic and replicas go back to stable; the phase becomes Degraded.
    fn start_abort(&mut self, message: String) {
        self.status.abort = true;
        self.status.aborted_at = Some(Time(self.now));
        self.status.pause_conditions.clear();
        self.status.controller_pause = false;
        self.status.current_step_index = (self.step_count() > 0).then_some(0);
        self.stop_analysis_run(AnalysisKind::Step(0));
        self.stop_analysis_run(AnalysisKind::Background);
        self.remove_managed_routes();
        self.event(true, reason::ROLLOUT_ABORTED, message.clone());
        self.abort_message = Some(message);
    }

    /// Header and mirror routes live only while an update progresses.
    fn remove_managed_routes(&mut self) {
        let has_managed_routes = self
            .canary()
            .traffic_routing
            .as_ref()
            .and_then(|r| r.managed_routes.as_ref())
            .is_some_and(|m| !m.is_empty());
        if has_managed_routes {
            self.actions.push(Action::RemoveManagedRoutes);
        }
    }

    /// Where the status records the run of `kind`.
    fn analysis_slot(&mut self, kind: &AnalysisKind) -> &mut Option<RolloutAnalysisRunStatus> {
        match kind {
            AnalysisKind::Step(_) => &mut self.status.canary.current_step_analysis_run_status,
            AnalysisKind::Background => {
                &mut self.status.canary.current_background_analysis_run_status
            }
            AnalysisKind::PrePromotion => {
                &mut self.status.blue_green.pre_promotion_analysis_run_status
            }
            AnalysisKind::PostPromotion => {
                &mut self.status.blue_green.post_promotion_analysis_run_status
            }
        }
    }

    fn stop_analysis_run(&mut self, kind: AnalysisKind) {
        if let Some(run) = self.analysis_slot(&kind).clone() {
            let running = self
                .observed
                .analysis_runs
                .iter()
                .any(|r| r.name == run.name && !r.phase.is_completed());
            if running {
                self.actions
                    .push(Action::TerminateAnalysisRun { name: run.name });
            }
        }
    }

    /// The user cleared the pause conditions the controller set (kubectl argo rollouts promote).
    fn resumed(&self) -> bool {
        self.status.controller_pause
            && self.status.pause_conditions.is_empty()
            && self.index() == self.start_index
    }

    fn pause(&mut self, reason_: PauseReason, message: String) {
        if !self
            .status
            .pause_conditions
            .iter()
            .any(|c| c.reason == reason_)
        {
            self.status.pause_conditions.push(PauseCondition {
                reason: reason_,
                start_time: Time(self.now),
            });
            self.status.controller_pause = true;
            self.event(false, reason::ROLLOUT_PAUSED, message);
        }
    }

    fn run_steps(&mut self) {
        self.drop_stale_step_run();
        if self.spec.paused() {
            return;
        }
        let steps = self.steps();
        for _ in 0..=steps.len() {
            let index = self.index();
            let Some(step) = steps.get(index as usize) else {
                break;
            };
            if !self.step_done(index, step) {
                break;
            }
            self.status.current_step_index = Some(index + 1);
            self.status.canary.current_step_analysis_run_status = None;
            self.progressed = true;
            self.event(
                false,
                reason::ROLLOUT_STEP_COMPLETED,
                format!(
                    "Rollout step {}/{} completed ({})",
                    index + 1,
                    steps.len(),
                    describe(step)
                ),
            );
        }
    }

    /// A user skipped past an analysis step: stop its run.
    fn drop_stale_step_run(&mut self) {
        let Some(run) = &self.status.canary.current_step_analysis_run_status else {
            return;
        };
        let base = format!(
            "{}-{}-{}-{}",
            self.name,
            self.current(),
            self.revision(),
            self.index()
        );
        let on_analysis_step = self
            .steps()
            .get(self.index() as usize)
            .is_some_and(|s| s.analysis.is_some());
        if !on_analysis_step || attempt_of(&run.name, &base).is_none() {
            self.stop_analysis_run(AnalysisKind::Step(0));
            self.status.canary.current_step_analysis_run_status = None;
        }
    }

    /// Whether a step is complete, starting whatever it needs. Pauses, aborts and actions happen here.
    fn step_done(&mut self, index: i32, step: &CanaryStep) -> bool {
        // A route may join another action in one step (Argo's examples/apisix): requested while
        // the step runs, as Argo's traffic reconcile does; the other action decides the end.
        if step.set_header_route.is_some() {
            self.actions
                .push(Action::SetHeaderRoute { step_index: index });
        }
        if step.set_mirror_route.is_some() {
            self.actions
                .push(Action::SetMirrorRoute { step_index: index });
        }
        if step.set_weight.is_some() || step.set_canary_scale.is_some() {
            let targets = self.targets();
            return self.at_targets(targets);
        }
        if let Some(pause) = &step.pause {
            let started = self
                .status
                .pause_conditions
                .iter()
                .find(|c| c.reason == PauseReason::CanaryPauseStep)
                .map(|c| c.start_time.0.as_second());
            let duration = pause.duration_seconds().ok().flatten();
            return match (started, duration) {
                (Some(start), Some(seconds))
                    if self.now.as_second() >= start.saturating_add(seconds) =>
                {
                    self.status
                        .pause_conditions
                        .retain(|c| c.reason != PauseReason::CanaryPauseStep);
                    self.status.controller_pause = false;
                    true
                }
                (Some(start), Some(seconds)) => {
                    self.requeue_in(start.saturating_add(seconds) - self.now.as_second());
                    false
                }
                (Some(_), None) => false,
                (None, Some(0)) => true,
                (None, _) if self.resumed() => {
                    self.status.controller_pause = false;
                    true
                }
                (None, _) if self.background_starting(index) => {
                    // As Argo's order of events: a pause is entered with the background analysis
                    // already running, so whoever sees Paused also sees the run that judges it.
                    self.requeue_in(1);
                    false
                }
                (None, duration) => {
                    if let Some(seconds) = duration {
                        self.requeue_in(seconds);
                    }
                    let how =
                        duration.map_or("until promoted".to_string(), |s| format!("for {s}s"));
                    self.pause(
                        PauseReason::CanaryPauseStep,
                        format!("Rollout is paused at step {} {how}", index + 1),
                    );
                    false
                }
            };
        }
        if let Some(experiment) = &step.experiment {
            return self.experiment_step(index, experiment);
        }
        if let Some(analysis) = &step.analysis {
            let (name, phase, message) = self.analysis_run(AnalysisKind::Step(index), analysis);
            return match phase {
                AnalysisPhase::Successful => true,
                AnalysisPhase::Failed | AnalysisPhase::Error => {
                    self.analysis_failed(&name, phase, &message);
                    false
                }
                AnalysisPhase::Inconclusive if self.resumed() => {
                    self.status.controller_pause = false;
                    true
                }
                AnalysisPhase::Inconclusive => {
                    self.pause(
                        PauseReason::InconclusiveAnalysisRun,
                        format!("AnalysisRun {name} is Inconclusive: {message}"),
                    );
                    false
                }
                AnalysisPhase::Pending | AnalysisPhase::Running => false,
            };
        }
        if step.set_header_route.is_some() || step.set_mirror_route.is_some() {
            return true;
        }
        // Other step kinds are rejected by validation; never advance past what we don't understand.
        false
    }

    fn analysis_failed(&mut self, name: &str, phase: AnalysisPhase, message: &str) {
        let (event_reason, verdict) = match phase {
            AnalysisPhase::Error => (reason::ANALYSIS_RUN_ERROR, "Error"),
            _ => (reason::ANALYSIS_RUN_FAILED, "Failed"),
        };
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        self.event(
            true,
            event_reason,
            format!("AnalysisRun {name} {verdict}{detail}"),
        );
        self.start_abort(format!(
            "Rollout aborted update to revision {}: AnalysisRun {name} {verdict}{detail}",
            self.revision()
        ));
    }

    /// Find, adopt or create the AnalysisRun for a step or the background, and report its phase.
    fn analysis_run(
        &mut self,
        kind: AnalysisKind,
        analysis: &RolloutAnalysis,
    ) -> (String, AnalysisPhase, String) {
        let revision = self.revision();
        let base = match kind {
            AnalysisKind::Step(i) => format!("{}-{}-{revision}-{i}", self.name, self.current()),
            AnalysisKind::Background => format!("{}-{}-{revision}", self.name, self.current()),
            // Argo's names for the blue-green runs.
            AnalysisKind::PrePromotion => {
                format!("{}-{}-{revision}-pre", self.name, self.current())
            }
            AnalysisKind::PostPromotion => {
                format!("{}-{}-{revision}-post", self.name, self.current())
            }
        };
        let referenced = self
            .analysis_slot(&kind)
            .clone()
            .filter(|r| attempt_of(&r.name, &base).is_some());

        let latest = self
            .observed
            .analysis_runs
            .iter()
            .filter_map(|r| attempt_of(&r.name, &base).map(|a| (a, r)))
            .max_by_key(|(attempt, _)| *attempt);
        let observed = self.observed;
        let chosen = match (&latest, &referenced) {
            (Some((_, run)), _) if !run.phase.is_completed() => {
                Some((run.name.clone(), run.phase, run.message.clone()))
            }
            (_, Some(reference)) => match observed
                .analysis_runs
                .iter()
                .find(|r| r.name == reference.name)
            {
                Some(run) => Some((run.name.clone(), run.phase, run.message.clone())),
                // Created by an earlier plan but not visible yet: still pending; creating it again is harmless.
                None => {
                    let request = self.analysis_request(&reference.name, kind.clone(), analysis);
                    self.actions.push(Action::CreateAnalysisRun(request));
                    Some((
                        reference.name.clone(),
                        AnalysisPhase::Pending,
                        String::new(),
                    ))
                }
            },
            _ => None,
        };
        let (name, phase, message) = match chosen {
            Some(chosen) => chosen,
            None => {
                let attempt = latest.map_or(0, |(a, _)| a + 1);
                let name = if attempt == 0 {
                    base.clone()
                } else {
                    format!("{base}.{attempt}")
                };
                let request = self.analysis_request(&name, kind.clone(), analysis);
                self.actions.push(Action::CreateAnalysisRun(request));
                (name, AnalysisPhase::Pending, String::new())
            }
        };
        let run_status = Some(RolloutAnalysisRunStatus {
            name: name.clone(),
            status: phase.as_str().into(),
            message: message.clone(),
        });
        *self.analysis_slot(&kind) = run_status;
        (name, phase, message)
    }

    fn analysis_request(
        &self,
        name: &str,
        kind: AnalysisKind,
        analysis: &RolloutAnalysis,
    ) -> AnalysisRunRequest {
        let mut args = analysis.args.clone().unwrap_or_default();
        for arg in &mut args {
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
        let metadata = analysis.analysis_run_metadata.clone().unwrap_or_default();
        let mut labels: BTreeMap<String, String> = metadata.labels.unwrap_or_default();
        labels.insert(
            crate::api::argo::rollout::POD_TEMPLATE_HASH_LABEL.into(),
            self.status.current_pod_hash.clone(),
        );
        match kind {
            AnalysisKind::Step(i) => {
                labels.insert("rollout-type".into(), "Step".into());
                labels.insert("step-index".into(), i.to_string());
            }
            AnalysisKind::Background => {
                labels.insert("rollout-type".into(), "Background".into());
            }
            AnalysisKind::PrePromotion => {
                labels.insert("rollout-type".into(), "PrePromotion".into());
            }
            AnalysisKind::PostPromotion => {
                labels.insert("rollout-type".into(), "PostPromotion".into());
            }
        }
        AnalysisRunRequest {
            name: name.to_string(),
            kind,
            pod_template_hash: self.status.current_pod_hash.clone(),
            revision: self.revision(),
            templates: analysis
                .templates
                .iter()
                .flatten()
                .map(|t| {
                    (
                        t.template_name.clone().unwrap_or_default(),
                        t.cluster_scope.unwrap_or(false),
                    )
                })
                .collect(),
            args,
            dry_run: analysis.dry_run.clone().unwrap_or_default(),
            measurement_retention: analysis.measurement_retention.clone().unwrap_or_default(),
            labels,
            annotations: metadata.annotations.unwrap_or_default(),
        }
    }

    /// Whether the background analysis is due at step `index` but no run of it is seen running
    /// yet (judged on the observation alone, so planning twice on it decides the same).
    fn background_starting(&self, index: i32) -> bool {
        let Some(background) = &self.canary().analysis else {
            return false;
        };
        let base = format!("{}-{}-{}", self.name, self.current(), self.revision());
        index >= background.starting_step.unwrap_or(0)
            && !self
                .observed
                .analysis_runs
                .iter()
                .any(|r| attempt_of(&r.name, &base).is_some() && r.phase != AnalysisPhase::Pending)
    }

    fn background_analysis(&mut self) {
        let Some(background) = &self.canary().analysis else {
            return;
        };
        if self.status.abort || self.index() < background.starting_step.unwrap_or(0) {
            return;
        }
        let resumed_from_inconclusive = self.resumed()
            && self
                .status
                .canary
                .current_background_analysis_run_status
                .as_ref()
                .is_some_and(|r| r.status == AnalysisPhase::Inconclusive.as_str());
        if resumed_from_inconclusive {
            // The user accepted the inconclusive verdict: keep watching with a fresh run.
            self.status.canary.current_background_analysis_run_status = None;
            self.status.controller_pause = false;
        }
        let (name, phase, message) =
            self.analysis_run(AnalysisKind::Background, &background.analysis);
        match phase {
            AnalysisPhase::Failed | AnalysisPhase::Error => {
                self.analysis_failed(&name, phase, &message)
            }
            AnalysisPhase::Inconclusive => self.pause(
                PauseReason::InconclusiveAnalysisRun,
                format!("AnalysisRun {name} is Inconclusive: {message}"),
            ),
            _ => {}
        }
    }

    /// Make the current ReplicaSet stable once every step is done and it serves everything.
    fn promote_when_ready(&mut self) {
        if self.status.abort
            || self.promoted()
            || self.spec.paused()
            || !self.status.pause_conditions.is_empty()
        {
            return;
        }
        if self.index() < self.step_count() {
            return;
        }
        let targets = self.targets();
        if !self.at_targets(targets) {
            return;
        }
        let revision = self.revision();
        self.status.stable_rs = self.status.current_pod_hash.clone();
        self.swap_ping_pong();
        self.status.current_step_index = (self.step_count() > 0).then_some(self.step_count());
        self.status.promote_full = false;
        self.status.pause_conditions.clear();
        self.status.controller_pause = false;
        self.remove_managed_routes();
        self.stop_analysis_run(AnalysisKind::Background);
        self.progressed = true;
        self.event(
            false,
            reason::ROLLOUT_COMPLETED,
            format!("Rollout completed update to revision {revision}"),
        );
    }

    /// The canary weight the rollout wants now, in router units.
    fn desired_weight(&self) -> i32 {
        let max = self.canary().max_traffic_weight();
        if self.promoted() {
            return 0;
        }
        if self.status.abort {
            return if self.dynamic_abort() {
                self.dynamic_abort_canary_weight()
            } else {
                0
            };
        }
        if self.status.promote_full || self.index() >= self.step_count() {
            return max;
        }
        let steps = self.steps();
        (0..=self.index() as usize)
            .rev()
            .find_map(|i| steps.get(i).and_then(|s| s.set_weight))
            .unwrap_or(0)
    }

    /// Argo's `UseSetCanaryScale`: the setCanaryScale in force, if any.
    fn canary_scale(&self) -> Option<&'a crate::api::argo::rollout::SetCanaryScale> {
        if !self.has_router() || self.promoted() || self.status.promote_full {
            return None;
        }
        if self.status.abort && self.canary().abort_scale_down_delay_seconds() != 0 {
            return None;
        }
        let steps = self.steps();
        let index = (self.index() as usize).min(steps.len().saturating_sub(1));
        if self.index() >= self.step_count() {
            return None;
        }
        for i in (0..=index).rev() {
            if let Some(scale) = steps.get(i).and_then(|s| s.set_canary_scale.as_ref()) {
                return (!scale.match_traffic_weight.unwrap_or(false)).then_some(scale);
            }
        }
        None
    }

    fn targets(&mut self) -> Targets {
        let spec_replicas = self.spec.replicas();
        let weight = self.desired_weight();
        let max = self.canary().max_traffic_weight().max(1);
        let percent = ((i64::from(weight) * 100 + i64::from(max) - 1) / i64::from(max)) as i32;
        let new_rs = self.rs(self.current());
        let stable_rs = if self.promoted() {
            None
        } else {
            self.rs(&self.status.stable_rs)
        };
        let counts = |rs: Option<&ReplicaSetObservation>| {
            rs.map(|rs| RsCounts {
                replicas: rs.replicas,
                available: rs.available_replicas,
            })
        };
        if self.promoted() {
            let weight = match self.dynamic_stable_rollback() {
                Some(_) => self.dynamic_abort_router_weight(0),
                None => 0,
            };
            return Targets {
                new: spec_replicas,
                stable: 0,
                weight,
            };
        }
        if self.has_router() {
            let canary = self.canary();
            let scale = self.canary_scale();
            let canary_replicas = scale.and_then(|s| {
                s.replicas.or_else(|| {
                    s.weight
                        .map(|w| replicas::traffic_weight_to_replicas(spec_replicas, w))
                })
            });
            let observed = self.observed.traffic.as_ref().map(|t| {
                let c = (i64::from(t.canary_weight) * 100 / i64::from(max)) as i32;
                (c, 100 - c)
            });
            let (mut new, stable) = replicas::routed_canary_counts(&RoutedCanary {
                spec_replicas,
                weight: percent,
                canary_replicas,
                dynamic_stable_scale: canary.dynamic_stable_scale(),
                min_pods_per_replica_set: canary.min_pods_per_replica_set,
                observed,
                aborted: self.status.abort,
            });
            if self.status.abort && !self.abort_follows_weight() {
                new = self.aborted_canary_replicas();
            }
            let weight = if self.dynamic_abort() {
                self.dynamic_abort_router_weight(weight)
            } else {
                weight
            };
            return Targets {
                new,
                stable,
                weight,
            };
        }
        let (surge, unavailable) = self.fenceposts();
        let other_replicas = self.others().map(|rs| rs.replicas).sum();
        let (new, stable) = replicas::basic_canary_counts(&BasicCanary {
            spec_replicas,
            weight: percent,
            max_surge: surge,
            max_unavailable: unavailable,
            new_rs: counts(new_rs).or(Some(RsCounts::default())),
            stable_rs: counts(stable_rs),
            other_replicas,
        });
        Targets {
            new,
            stable,
            weight,
        }
    }

    /// With a router (or blue-green), an aborted canary keeps its pods until the
    /// `scale-down-deadline` that [`abort_deadline`](Self::abort_deadline) sets
    /// (abortScaleDownDelaySeconds 0: forever).
    fn aborted_canary_replicas(&mut self) -> i32 {
        let Some(rs) = self.rs(self.current()) else {
            return 0;
        };
        if self.abort_scale_down_delay() == 0 {
            return rs.replicas;
        }
        match rs.scale_down_deadline {
            Some(deadline) if deadline.as_second() <= self.now.as_second() => 0,
            Some(deadline) => {
                self.requeue_in(deadline.as_second() - self.now.as_second());
                rs.replicas
            }
            None => rs.replicas,
        }
    }

    /// The deadline the current ReplicaSet should carry: Argo's abort delay, set once the stable
    /// ReplicaSet can take all traffic (the deadline scales the canary down unconditionally), and
    /// kept while aborted; none otherwise.
    fn abort_deadline(&mut self, rs: &ReplicaSetObservation) -> Option<Timestamp> {
        let delay = self.abort_scale_down_delay();
        let delays = (self.has_router() && !self.abort_follows_weight())
            || self.spec.strategy.blue_green.is_some();
        if !self.status.abort || !delays || delay == 0 || self.promoted() {
            return None;
        }
        if rs.scale_down_deadline.is_some() {
            return rs.scale_down_deadline;
        }
        let stable_ready = self
            .rs(&self.status.stable_rs)
            .is_some_and(|s| s.available_replicas >= self.spec.replicas());
        if !stable_ready || rs.replicas == 0 {
            return None;
        }
        self.requeue_in(delay);
        Some(self.after(delay))
    }

    /// Argo's `AtDesiredReplicaCountsForCanary`, plus router verification.
    fn at_targets(&self, targets: Targets) -> bool {
        let Some(new) = self.rs(self.current()) else {
            return false;
        };
        if new.replicas != targets.new || new.available_replicas != targets.new {
            return false;
        }
        let stable = self.rs(&self.status.stable_rs);
        if !self.has_router() || !self.canary().dynamic_stable_scale() {
            match stable {
                Some(s)
                    if !self.promoted()
                        && (s.replicas != targets.stable
                            || s.status_replicas != targets.stable) =>
                {
                    return false;
                }
                None if targets.stable > 0 && !self.promoted() => return false,
                _ => {}
            }
        }
        if self.has_router() {
            return self.traffic_applied(targets.weight, &self.experiment_destinations());
        }
        let others_available: i32 = self.others().map(|rs| rs.available_replicas).sum();
        others_available == 0
    }

    fn scale_replica_sets(&mut self, targets: Targets) {
        let current = self.current().to_string();
        match self.rs(&current) {
            None => self.actions.push(Action::CreateReplicaSet {
                pod_template_hash: current.clone(),
                replicas: targets.new,
                revision: self.revision(),
                ephemeral_metadata: ephemeral::desired(self.spec, &self.status, &current),
            }),
            Some(rs) => self.scale_current(rs, targets.new),
        }
        if !self.promoted()
            && let Some(rs) = self.rs(&self.status.stable_rs)
        {
            self.scale_and_keep(rs, targets.stable);
        }
    }

    /// The current ReplicaSet at `replicas`, at this update's revision, carrying the abort's
    /// scale-down deadline when there is one (none otherwise).
    fn scale_current(&mut self, rs: &ReplicaSetObservation, replicas: i32) {
        let hash = rs.pod_template_hash.clone();
        if rs.replicas != replicas {
            self.actions.push(Action::ScaleReplicaSet {
                pod_template_hash: hash.clone(),
                replicas,
            });
        }
        let revision = self.revision();
        if rs.revision != revision {
            self.actions.push(Action::SetRevision {
                pod_template_hash: hash.clone(),
                revision,
            });
        }
        let deadline = self.abort_deadline(rs);
        if rs.scale_down_deadline != deadline {
            self.actions.push(Action::SetScaleDownDeadline {
                pod_template_hash: hash,
                deadline,
            });
        }
    }

    /// abortScaleDownDelaySeconds of either strategy (default 30).
    fn abort_scale_down_delay(&self) -> i64 {
        i64::from(match &self.spec.strategy.blue_green {
            Some(blue_green) => blue_green.abort_scale_down_delay_seconds.unwrap_or(30),
            None => self.canary().abort_scale_down_delay_seconds(),
        })
    }

    /// Scale a ReplicaSet the Rollout needs and clear any scale-down deadline it carries.
    fn scale_and_keep(&mut self, rs: &ReplicaSetObservation, replicas: i32) {
        if rs.replicas != replicas {
            self.actions.push(Action::ScaleReplicaSet {
                pod_template_hash: rs.pod_template_hash.clone(),
                replicas,
            });
        }
        if rs.scale_down_deadline.is_some() {
            self.actions.push(Action::SetScaleDownDeadline {
                pod_template_hash: rs.pod_template_hash.clone(),
                deadline: None,
            });
        }
    }

    /// ReplicaSets that are neither current nor stable go to zero: with a router after their
    /// `scale-down-deadline` (so clients draining from them are not cut off), within
    /// maxUnavailable without one.
    fn scale_down_old_replica_sets(&mut self) {
        let current = self.current().to_string();
        let stable = self.status.stable_rs.clone();
        let previous_canary = self.previous_canary();
        let mut old: Vec<&ReplicaSetObservation> = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| rs.pod_template_hash != current && rs.pod_template_hash != stable)
            .filter(|rs| previous_canary.as_ref() != Some(&rs.pod_template_hash))
            .collect();
        if self.has_router() {
            old.sort_by_key(|rs| std::cmp::Reverse(rs.revision));
            self.scale_down_delayed(&old);
            return;
        }
        old.retain(|rs| rs.replicas > 0);
        if old.is_empty() {
            return;
        }
        let spec_replicas = self.spec.replicas();
        let (_, unavailable) = self.fenceposts();
        let available: i32 = self
            .observed
            .replica_sets
            .iter()
            .map(|rs| rs.available_replicas)
            .sum();
        let mut budget = (available - (spec_replicas - unavailable)).max(0);
        for rs in old {
            // Unavailable pods of an old ReplicaSet can always go; available ones within the budget.
            let unavailable_pods = (rs.replicas - rs.available_replicas).max(0);
            let take = (unavailable_pods + budget.min(rs.available_replicas)).min(rs.replicas);
            budget -= take.saturating_sub(unavailable_pods).max(0);
            if take > 0 {
                self.actions.push(Action::ScaleReplicaSet {
                    pod_template_hash: rs.pod_template_hash.clone(),
                    replicas: rs.replicas - take,
                });
            }
        }
    }

    /// Argo's `scaleDownDelayHelper`, newest old ReplicaSet first: each keeps its pods until its
    /// `scale-down-deadline` (set now + scaleDownDelaySeconds when it first becomes old), at most
    /// `scaleDownDelayRevisionLimit` of them; with dynamicStableScale a promoted rollout's old
    /// stable goes at once.
    fn scale_down_delayed(&mut self, old: &[&ReplicaSetObservation]) {
        let canary = self.canary();
        let delay = i64::from(canary.scale_down_delay_seconds());
        let limit = canary.scale_down_delay_revision_limit.unwrap_or(i32::MAX);
        let at_once = delay == 0 || (canary.dynamic_stable_scale() && self.promoted());
        let mut delayed = 0;
        for rs in old {
            if rs.replicas == 0 || at_once {
                self.scale_to_zero(rs);
                continue;
            }
            let within_limit = delayed < limit;
            delayed += 1;
            if within_limit {
                self.scale_down_after(rs, delay);
            } else {
                self.scale_to_zero(rs);
            }
        }
    }

    /// Scale `rs` to zero once its scale-down deadline has passed, setting one `delay` seconds
    /// ahead first (0: at once).
    fn scale_down_after(&mut self, rs: &ReplicaSetObservation, delay: i64) {
        match rs.scale_down_deadline {
            _ if delay == 0 => self.scale_to_zero(rs),
            Some(deadline) if deadline.as_second() <= self.now.as_second() => {
                self.scale_to_zero(rs)
            }
            Some(deadline) => self.requeue_in(deadline.as_second() - self.now.as_second()),
            None => {
                self.actions.push(Action::SetScaleDownDeadline {
                    pod_template_hash: rs.pod_template_hash.clone(),
                    deadline: Some(self.after(delay)),
                });
                self.requeue_in(delay);
            }
        }
    }

    /// Scale an old ReplicaSet to zero and drop its deadline, as Argo does on a full scale-down.
    fn scale_to_zero(&mut self, rs: &ReplicaSetObservation) {
        if rs.replicas != 0 {
            self.actions.push(Action::ScaleReplicaSet {
                pod_template_hash: rs.pod_template_hash.clone(),
                replicas: 0,
            });
        }
        if rs.scale_down_deadline.is_some() {
            self.actions.push(Action::SetScaleDownDeadline {
                pod_template_hash: rs.pod_template_hash.clone(),
                deadline: None,
            });
        }
    }

    /// Keep `revisionHistoryLimit` scaled-down old ReplicaSets; delete older ones.
    fn delete_old_history(&mut self) {
        let mut old: Vec<&ReplicaSetObservation> = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| {
                rs.pod_template_hash != self.status.current_pod_hash
                    && rs.pod_template_hash != self.status.stable_rs
                    && rs.replicas == 0
                    && rs.status_replicas == 0
            })
            .collect();
        old.sort_by_key(|rs| std::cmp::Reverse(rs.revision));
        let keep = self.spec.revision_history_limit().max(0) as usize;
        for rs in old.into_iter().skip(keep) {
            self.actions.push(Action::DeleteReplicaSet {
                pod_template_hash: rs.pod_template_hash.clone(),
            });
        }
    }

    /// `canaryMetadata` / `stableMetadata` on every ReplicaSet that stays (see [`ephemeral`]).
    fn ephemeral_metadata(&mut self) {
        let deleted: Vec<String> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteReplicaSet { pod_template_hash } => Some(pod_template_hash.clone()),
                _ => None,
            })
            .collect();
        let kept: Vec<ReplicaSetObservation> = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| !deleted.contains(&rs.pod_template_hash))
            .cloned()
            .collect();
        let actions = ephemeral::sync(self.spec, &self.status, &kept);
        self.actions.extend(actions);
    }

    /// Point the managed Services at pods that can serve: a Service never selects a ReplicaSet
    /// with no available pods while another one could serve. After an abort the canary Service
    /// goes back to stable, with dynamicStableScale once no traffic is left on the canary.
    /// `pingPong`'s Services are treated by the role they have now ([`ping_pong`]).
    fn services(&mut self, targets: Targets) {
        let stable_hash = self.status.stable_rs.clone();
        let current = self.current().to_string();
        let observed = self.observed;
        let available = |hash: &str| {
            observed
                .replica_sets
                .iter()
                .find(|rs| rs.pod_template_hash == hash)
                .map_or(0, |rs| rs.available_replicas)
        };
        let (stable_services, canary_services) = self.role_services();
        // The stable Service moves to a new ReplicaSet only once it is fully available.
        let full = observed
            .replica_sets
            .iter()
            .find(|rs| rs.pod_template_hash == stable_hash)
            .is_some_and(|rs| rs.available_replicas >= rs.replicas && rs.replicas > 0);
        let desired = (full || available(&stable_hash) > 0).then(|| stable_hash.clone());
        for service in stable_services {
            self.select(service, desired.clone());
        }
        let on_canary = !self.status.abort || (self.dynamic_abort() && targets.weight > 0);
        let canary_hash = self.previous_canary().unwrap_or(current.clone());
        let desired = if on_canary && available(&canary_hash) > 0 {
            Some(canary_hash)
        } else if available(&stable_hash) > 0 {
            Some(stable_hash.clone())
        } else {
            None
        };
        for service in canary_services {
            self.select(service, desired.clone());
        }
    }

    fn select(&mut self, service: &str, desired: Option<String>) {
        let Some(hash) = desired else { return };
        let observed = self
            .observed
            .services
            .get(service)
            .and_then(|s| s.selector_hash.as_deref());
        if observed != Some(hash.as_str()) {
            self.actions.push(Action::SetServiceSelector {
                service: service.to_string(),
                pod_template_hash: hash,
            });
        }
    }

    /// Set router weights. Traffic only goes to a Service that has ready endpoints for the pods it
    /// should reach; otherwise it stays on (or returns to) the stable side.
    fn traffic(&mut self, targets: Targets) {
        if !self.has_router() {
            return;
        }
        let canary = self.canary();
        let max = canary.max_traffic_weight();
        let current = self.current().to_string();
        let stable = self.status.stable_rs.clone();
        // Undone with dynamicStableScale: traffic is split with the previous canary until then.
        let canary_hash = self.previous_canary().unwrap_or(current.clone());
        let (stable_services, canary_services) = self.role_services();
        let service_ready = |names: &[&str], hash: &str| {
            names.iter().all(|n| {
                self.observed.services.get(*n).is_some_and(|s| {
                    s.selector_hash.as_deref() == Some(hash) && s.ready_endpoints > 0
                })
            })
        };
        let mut weight = targets.weight;
        if self.promoted() {
            // Final switch: keep everything on the canary Service until the stable Service serves
            // the promoted pods, then move traffic back to stable (both now reach the same pods).
            let observed = self.observed.traffic.as_ref().map(|t| t.canary_weight);
            if observed.is_some_and(|w| w > 0) && !service_ready(&stable_services, &current) {
                weight = observed.unwrap_or(max);
            }
        } else if weight > 0 && !service_ready(&canary_services, &current) {
            weight = 0;
        }
        let additional = self.experiment_destinations();
        let applied = self.traffic_applied(weight, &additional);
        // Released only once the stable ReplicaSet is the only one with pods: a released object is
        // the user's again, and its selectors (Istio DestinationRule subsets without Sluice's hash
        // label) may then reach every pod of the app, the aborted canary's or the old stable's
        // kept for scaleDownDelaySeconds included.
        let only_stable_has_pods = self
            .observed
            .replica_sets
            .iter()
            .filter(|rs| rs.pod_template_hash != stable)
            .all(|rs| rs.replicas == 0 && rs.status_replicas == 0);
        if applied && weight == 0 && (self.promoted() || self.status.abort) && only_stable_has_pods
        {
            self.actions.push(Action::ReleaseTraffic);
        }
        if !applied {
            self.actions.push(Action::SetWeight {
                canary_weight: weight,
                canary_hash: if weight > 0 {
                    canary_hash.clone()
                } else {
                    current.clone()
                },
                stable_hash: stable.clone(),
                additional: additional.clone(),
            });
            self.requeue = Some(
                self.requeue
                    .map_or(TRAFFIC_VERIFY_INTERVAL, |r| r.min(TRAFFIC_VERIFY_INTERVAL)),
            );
        }
        self.status.canary.weights = self.observed.traffic.as_ref().map(|t| {
            // Argo's `status.canary.weights.additional`: what the routers apply, with the hash
            // of the template they belong to.
            let observed_additional: Vec<WeightDestination> = t
                .additional
                .iter()
                .map(|(service, weight)| WeightDestination {
                    weight: *weight,
                    service_name: service.clone(),
                    pod_template_hash: additional
                        .iter()
                        .find(|d| &d.service_name == service)
                        .map(|d| d.pod_template_hash.clone())
                        .unwrap_or_default(),
                })
                .collect();
            let additional_sum: i32 = t.additional.values().sum();
            TrafficWeights {
                canary: WeightDestination {
                    weight: t.canary_weight,
                    service_name: canary_services.first().copied().unwrap_or_default().into(),
                    pod_template_hash: canary_hash.clone(),
                },
                stable: WeightDestination {
                    weight: max - t.canary_weight - additional_sum,
                    service_name: stable_services.first().copied().unwrap_or_default().into(),
                    pod_template_hash: stable.clone(),
                },
                additional: observed_additional,
                verified: Some(t.verified),
            }
        });
    }

    /// Whether every router reports `weight` on the canary and exactly `additional` besides it.
    fn traffic_applied(&self, weight: i32, additional: &[WeightDestination]) -> bool {
        self.observed.traffic.as_ref().is_some_and(|t| {
            t.verified
                && t.canary_weight == weight
                && t.additional.len() == additional.len()
                && additional
                    .iter()
                    .all(|d| t.additional.get(&d.service_name) == Some(&d.weight))
        })
    }

    fn counts(&mut self) {
        let sets = &self.observed.replica_sets;
        self.status.replicas = sets.iter().map(|rs| rs.status_replicas).sum();
        self.status.updated_replicas = self.rs(self.current()).map_or(0, |rs| rs.status_replicas);
        self.status.ready_replicas = sets.iter().map(|rs| rs.ready_replicas).sum();
        self.status.available_replicas = sets.iter().map(|rs| rs.available_replicas).sum();
        self.status.hpa_replicas = self.status.replicas;
        self.status.selector = self
            .spec
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        if (
            self.status.updated_replicas,
            self.status.ready_replicas,
            self.status.available_replicas,
        ) != (
            self.old.updated_replicas,
            self.old.ready_replicas,
            self.old.available_replicas,
        ) {
            self.progressed = true;
        }
    }

    fn conditions(&mut self) {
        let spec_replicas = self.spec.replicas();
        let rs_name = format!("{}-{}", self.name, self.current());
        let (_, unavailable) = self.fenceposts();
        if self.status.available_replicas >= spec_replicas - unavailable {
            self.set_condition(
                reason::AVAILABLE,
                "True",
                reason::AVAILABLE_REASON,
                "Rollout has minimum availability".into(),
            );
        } else {
            self.set_condition(
                reason::AVAILABLE,
                "False",
                reason::AVAILABLE_REASON,
                "Rollout does not have minimum availability".into(),
            );
        }

        let paused = self.spec.paused() || !self.status.pause_conditions.is_empty();
        let complete = self.promoted()
            && self.status.updated_replicas == spec_replicas
            && self.status.available_replicas >= spec_replicas
            // Old pods of a routed canary wait for their scale-down deadline without traffic.
            && (self.status.replicas == self.status.updated_replicas || self.has_router());
        if paused {
            self.set_condition(
                reason::PAUSED,
                "True",
                reason::ROLLOUT_PAUSED,
                "Rollout is paused".into(),
            );
        } else if self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == reason::PAUSED && c.status == "True")
        {
            self.set_condition(
                reason::PAUSED,
                "False",
                reason::ROLLOUT_RESUMED,
                "Rollout is resumed".into(),
            );
            self.progressed = true;
        }

        if self.status.abort && !self.promoted() {
            let message = self.abort_message.clone().or_else(|| {
                self.old
                    .conditions
                    .iter()
                    .find(|c| c.type_ == reason::PROGRESSING && c.reason == reason::ROLLOUT_ABORTED)
                    .map(|c| c.message.clone())
            });
            let message = message.unwrap_or_else(|| {
                format!("Rollout aborted update to revision {}", self.revision())
            });
            self.set_condition(
                reason::PROGRESSING,
                "False",
                reason::ROLLOUT_ABORTED,
                message,
            );
        } else if complete {
            self.set_condition(
                reason::PROGRESSING,
                "True",
                reason::NEW_REPLICA_SET_AVAILABLE,
                format!("ReplicaSet {rs_name:?} has successfully progressed."),
            );
        } else if paused {
            self.set_condition(
                reason::PROGRESSING,
                "Unknown",
                reason::ROLLOUT_PAUSED,
                "Rollout is paused".into(),
            );
        } else {
            self.progress_deadline(&rs_name);
        }

        if complete {
            self.set_condition(
                reason::COMPLETED,
                "True",
                reason::ROLLOUT_COMPLETED,
                "Rollout completed update to revision".into(),
            );
        } else {
            self.set_condition(
                reason::COMPLETED,
                "False",
                reason::ROLLOUT_COMPLETED,
                "Rollout not completed".into(),
            );
        }
        let (phase, _) = health::phase(self.spec, &self.status, self.observed.generation);
        let healthy = phase == crate::api::argo::rollout::RolloutPhase::Healthy;
        self.set_condition(
            reason::HEALTHY,
            if healthy { "True" } else { "False" },
            reason::ROLLOUT_HEALTHY,
            if healthy {
                "Rollout is healthy".into()
            } else {
                "Rollout is not healthy".into()
            },
        );
    }

    /// Progressing, or ProgressDeadlineExceeded when nothing has moved for progressDeadlineSeconds.
    fn progress_deadline(&mut self, rs_name: &str) {
        let deadline = i64::from(self.spec.progress_deadline_seconds());
        let existing = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == reason::PROGRESSING)
            .cloned();
        let exceeded = existing
            .as_ref()
            .is_some_and(|c| c.reason == reason::PROGRESS_DEADLINE_EXCEEDED);
        let in_progress = existing
            .as_ref()
            .filter(|c| {
                c.reason == reason::REPLICA_SET_UPDATED || c.reason == reason::ROLLOUT_RETRY
            })
            .map(|c| c.last_update_time.0.as_second());
        match in_progress {
            Some(last)
                if !self.progressed && self.now.as_second() >= last.saturating_add(deadline) =>
            {
                let message = format!("ReplicaSet {rs_name:?} has timed out progressing.");
                self.set_condition(
                    reason::PROGRESSING,
                    "False",
                    reason::PROGRESS_DEADLINE_EXCEEDED,
                    message.clone(),
                );
                self.event(true, reason::PROGRESS_DEADLINE_EXCEEDED, message.clone());
                self.progress_deadline_abort(&message);
            }
            Some(last) if !self.progressed => {
                self.requeue_in(last.saturating_add(deadline) - self.now.as_second());
            }
            // progressDeadlineAbort set after the deadline passed still aborts, as in Argo.
            _ if exceeded && !self.progressed => {
                let message = existing.map(|c| c.message).unwrap_or_default();
                self.progress_deadline_abort(&message);
            }
            _ => {
                let message = format!("ReplicaSet {rs_name:?} is progressing.");
                let fresh = existing
                    .as_ref()
                    .is_none_or(|c| c.reason != reason::REPLICA_SET_UPDATED);
                self.set_condition(
                    reason::PROGRESSING,
                    "True",
                    reason::REPLICA_SET_UPDATED,
                    message,
                );
                if let Some(c) = self
                    .status
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == reason::PROGRESSING)
                    && (self.progressed || fresh)
                {
                    c.last_update_time = Time(self.now);
                }
                self.requeue_in(deadline);
            }
        }
    }

    /// With `progressDeadlineAbort`, an update past its progress deadline aborts.
    fn progress_deadline_abort(&mut self, message: &str) {
        if !self.spec.progress_deadline_abort() || self.status.abort || self.promoted() {
            return;
        }
        self.start_abort(format!(
            "Rollout aborted update to revision {}: {message}",
            self.revision()
        ));
        self.set_condition(
            reason::PROGRESSING,
            "False",
            reason::ROLLOUT_ABORTED,
            self.abort_message.clone().unwrap_or_default(),
        );
    }
}

/// The attempt number of an AnalysisRun name: `base` is 0, `base.N` is N.
fn attempt_of(name: &str, base: &str) -> Option<u32> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix('.')?.parse().ok()
}

/// A short description of a step for events.
fn describe(step: &CanaryStep) -> String {
    if let Some(w) = step.set_weight {
        return format!("setWeight: {w}");
    }
    if let Some(p) = &step.pause {
        return match p.duration_seconds() {
            Ok(Some(s)) => format!("pause: {s}s"),
            _ => "pause".into(),
        };
    }
    if step.analysis.is_some() {
        return "analysis".into();
    }
    if step.experiment.is_some() {
        return "experiment".into();
    }
    if step.set_canary_scale.is_some() {
        return "setCanaryScale".into();
    }
    if step.set_header_route.is_some() {
        return "setHeaderRoute".into();
    }
    if step.set_mirror_route.is_some() {
        return "setMirrorRoute".into();
    }
    "step".into()
}
