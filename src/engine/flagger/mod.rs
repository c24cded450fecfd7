//! The pure scheduling core of a Flagger `Canary`: one analysis tick, decided.
//!
//! ```text
//!   Canary (spec + status) + provider + interval + Observations (target template hash and
//!   readiness, primary readiness, config checksums, router weights, check verdicts, now)
//!        ──tick()──▶  Outcome::Need(Check)   run this webhook / metric check, then tick again
//!                     Outcome::Plan(Plan)    { status, actions, requeue_after, ticked }
//! ```
//!
//! It follows upstream `advanceCanary` (fluxcd/flagger `pkg/controller/scheduler.go`) step by
//! step: initialise (primary, Services, target to zero) → Initialized; a new pod-template hash or
//! config checksum starts a run (confirm-rollout gate → Waiting, scale up → Progressing); each
//! tick checks readiness, rollback hooks, the failed-check threshold, runs pre-rollout hooks at
//! weight 0 or the analysis, then steps the weight (canary), the iterations (A/B with `match`,
//! Blue/Green without; the `kubernetes` provider forces Blue/Green with 10 iterations) and at the
//! end the confirm-promotion gate → Promoting → Finalising → Succeeded, or rolls back → Failed.
//!
//! Webhooks and metric checks are I/O, so the core asks for them one at a time
//! ([`Outcome::Need`]); the controller runs the check, records the [`Verdict`] in
//! [`Observations::verdicts`] and ticks again from the same inputs. Only checks the tick really
//! reaches are asked for, in Flagger's order.
//!
//! Deliberate differences from upstream, each a documented complaint:
//! - a weighted run never routes more than `maxWeight` to the canary (upstream overshoots: max 50,
//!   step 20 gives 60; fluxcd/flagger#189);
//! - `status.canaryWeight` of a weighted run keeps the weight really routed while
//!   WaitingPromotion and Promoting (upstream writes 0 and re-reads the mesh), so a restart
//!   without a router read resumes (Blue/Green and A/B write no weight, as upstream);
//! - gates may time out (`gateTimeout`, fluxcd/flagger#1450): measured from
//!   `status.lastTransitionTime`, a closed gate older than that fails the run.
//!
//! This module must never do I/O, read a clock, draw random numbers or panic: the time is
//! [`Observations::now`], and every verdict is an input.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::flagger::canary::{
    AlertSeverity, Canary, CanaryAnalysis, CanaryCondition, CanaryPhase, CanaryStatus, HookType,
    PROMOTED_CONDITION,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// The provider that has no router: Blue/Green by switching the apex Service only.
pub const KUBERNETES_PROVIDER: &str = "kubernetes";
/// Iterations the `kubernetes` provider uses when the analysis sets none (as upstream).
pub const KUBERNETES_DEFAULT_ITERATIONS: i32 = 10;
/// Total traffic weight.
const TOTAL_WEIGHT: i32 = 100;

/// What the core reads besides the Canary.
#[derive(Clone, Debug, PartialEq)]
pub struct Input<'a> {
    /// The Canary: name, namespace, spec and status.
    pub canary: &'a Canary,
    /// The traffic provider in effect (`spec.provider`, else the controller's default).
    pub provider: &'a str,
    /// The analysis interval in effect (the controller applies its minimum).
    pub interval: Duration,
    pub observed: &'a Observations,
}

/// What the controller saw, and the verdicts of the checks already run this tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    /// The current time (whole seconds are written to status).
    pub now: Timestamp,
    /// When the previous tick of this Canary ran (`None`: none since the controller started,
    /// which ticks at once, as upstream does when a job is (re)created).
    pub last_tick: Option<Timestamp>,
    /// The target Deployment; `None` when it does not exist.
    pub target: Option<Target>,
    /// The `<target>-primary` Deployment; `None` when it does not exist yet.
    pub primary: Option<Workload>,
    /// Checksums of the ConfigMaps and Secrets the target references, by `<kind>/<name>`.
    pub configs: BTreeMap<String, String>,
    /// The weights the router reports as applied; `None` without a router (the `kubernetes`
    /// provider) or before the first read: `status.canaryWeight` is used.
    pub router: Option<RouterWeights>,
    /// Verdicts of the checks run so far in this tick.
    pub verdicts: BTreeMap<Check, Verdict>,
}

/// The target Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Hash of its pod template (what `status.lastAppliedSpec` records).
    pub template_hash: String,
    pub workload: Workload,
}

/// What readiness needs of a Deployment (upstream `isDeploymentReady`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub generation: i64,
    pub observed_generation: i64,
    /// `spec.replicas` (absent means 1).
    pub spec_replicas: i32,
    /// `status.replicas`.
    pub replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    /// The `Progressing` condition says `ProgressDeadlineExceeded`.
    pub progress_deadline_exceeded: bool,
    /// Since when the `Available` condition has said `False` / `MinimumReplicasUnavailable`.
    pub unavailable_since: Option<Timestamp>,
}

/// Weights read back from the router.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterWeights {
    pub canary_weight: i32,
    pub mirrored: bool,
}

/// A check only the controller can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// Every `confirm-rollout` webhook answers 2xx.
    ConfirmRollout,
    /// Every `pre-rollout` webhook answers 2xx.
    PreRollout,
    /// Every `rollout` webhook answers 2xx, then every metric passes (builtins, then templates).
    Analysis,
    /// Every `confirm-traffic-increase` webhook answers 2xx.
    ConfirmTrafficIncrease,
    /// Every `confirm-promotion` webhook answers 2xx.
    ConfirmPromotion,
    /// Some `rollback` webhook answers 2xx (`ok` means: roll back now).
    Rollback,
}

/// The result of a [`Check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Passed (for [`Check::Rollback`]: a rollback was requested).
    pub ok: bool,
    /// What happened, for Events (the failing hook or metric and why).
    pub message: String,
}

impl Verdict {
    pub fn pass() -> Self {
        Self {
            ok: true,
            message: String::new(),
        }
    }
    pub fn fail(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }
}

/// What a tick decided, or the check it needs first.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Run this check, add its verdict to [`Observations::verdicts`] and tick again.
    Need(Check),
    Plan(Box<Plan>),
}

/// The decision of one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: CanaryStatus,
    /// In order; each is idempotent.
    pub actions: Vec<Action>,
    /// Tick again after this long even if nothing changes; `None`: only a change to the Canary,
    /// its target or its configs needs a new tick.
    pub requeue_after: Option<Duration>,
    /// This was a full tick (the controller records the time as [`Observations::last_tick`]);
    /// `false` when it was not due yet, or the Canary is suspended.
    pub ticked: bool,
}

/// Something the controller makes true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create `<target>-primary` as a copy of the target, if it does not exist.
    CreatePrimary,
    /// Create or update the apex (→ primary), `-primary` and `-canary` Services.
    EnsureServices,
    /// Set the target's `spec.replicas`.
    ScaleTarget { replicas: i32 },
    /// Copy the target's pod template (and tracked configs) to the primary.
    Promote,
    /// Route traffic (a no-op for the `kubernetes` provider).
    SetRoutes {
        primary_weight: i32,
        canary_weight: i32,
        mirrored: bool,
    },
    /// Call the webhooks of this type and ignore their answers (post-rollout).
    RunHooks(HookType),
    /// A Kubernetes Event (reason `Synced`), also sent to `event` webhooks.
    Event { warning: bool, message: String },
    /// An alert through the AlertProviders whose severity admits it.
    Alert {
        severity: AlertSeverity,
        message: String,
        /// Include the canary's metadata fields (target, interval, ...).
        metadata: bool,
    },
}

/// Phases in which the run is underway and ticks keep the interval.
pub fn is_running(phase: CanaryPhase) -> bool {
    matches!(
        phase,
        CanaryPhase::Progressing
            | CanaryPhase::Waiting
            | CanaryPhase::WaitingPromotion
            | CanaryPhase::Promoting
            | CanaryPhase::Finalising
    )
}

/// One tick of the Canary.
pub fn tick(input: &Input<'_>) -> Outcome {
    let mut t = Tick::new(input);
    match t.run() {
        Ok(()) => Outcome::Plan(Box::new(t.finish())),
        Err(check) => Outcome::Need(check),
    }
}

/// The readiness of a Deployment, as upstream `isDeploymentReady`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not yet; look again.
    Waiting(String),
    /// Will not become ready in time: roll back.
    Stuck(String),
}

/// Upstream `isDeploymentReady`: `threshold` percent of the updated replicas available, no old
/// replicas left; stuck past the deadline.
pub fn readiness(
    name: &str,
    workload: &Workload,
    threshold: i32,
    deadline: Duration,
    now: Timestamp,
) -> Readiness {
    if workload.generation > workload.observed_generation {
        return Readiness::Waiting(
            "waiting for rollout to finish: observed deployment generation less than desired generation"
                .into(),
        );
    }
    let deadline = i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX);
    let stuck = workload
        .unavailable_since
        .is_some_and(|since| since.as_second().saturating_add(deadline) < now.as_second());
    let wait = |message: String| {
        if stuck {
            Readiness::Stuck(message)
        } else {
            Readiness::Waiting(message)
        }
    };
    // Integer percent as float32 truncated, as upstream.
    let needed = (i64::from(workload.updated_replicas) * i64::from(threshold.clamp(0, 100))) / 100;
    if workload.progress_deadline_exceeded {
        Readiness::Stuck(format!(
            "deployment {name:?} exceeded its progress deadline"
        ))
    } else if workload.updated_replicas < workload.spec_replicas {
        wait(format!(
            "waiting for rollout to finish: {} out of {} new replicas have been updated",
            workload.updated_replicas, workload.spec_replicas
        ))
    } else if workload.replicas > workload.updated_replicas {
        wait(format!(
            "waiting for rollout to finish: {} old replicas are pending termination",
            workload.replicas - workload.updated_replicas
        ))
    } else if i64::from(workload.available_replicas) < needed {
        wait(format!(
            "waiting for rollout to finish: {} of {} (readyThreshold {}%) updated replicas are available",
            workload.available_replicas, workload.updated_replicas, threshold
        ))
    } else {
        Readiness::Ready
    }
}

/// The conditions with `Promoted` set for `phase` (upstream `MakeStatusConditions`): `None` when
/// the current one already says the same. Other conditions (the controller's `Stalled`) are kept.
pub fn promoted_conditions(
    current: &[CanaryCondition],
    phase: CanaryPhase,
    kind: &str,
    now: Timestamp,
) -> Option<Vec<CanaryCondition>> {
    use CanaryPhase::*;
    let (status, message) = match phase {
        Initialized => ("True", format!("{kind} initialization completed.")),
        Waiting | WaitingPromotion => ("Unknown", "Waiting for approval.".to_string()),
        Progressing => (
            "Unknown",
            "New revision detected, progressing canary analysis.".to_string(),
        ),
        Promoting => (
            "Unknown",
            "Canary analysis completed, starting primary rolling update.".to_string(),
        ),
        Finalising => (
            "Unknown",
            "Canary analysis completed, routing all traffic to primary.".to_string(),
        ),
        Succeeded => (
            "True",
            "Canary analysis completed successfully, promotion finished.".to_string(),
        ),
        Failed => (
            "False",
            format!("Canary analysis failed, {kind} scaled to zero."),
        ),
        _ => (
            "Unknown",
            format!("New {kind} detected, starting initialization."),
        ),
    };
    let reason = phase_name(phase);
    let existing = current.iter().find(|c| c.r#type == PROMOTED_CONDITION);
    if existing.is_some_and(|c| c.status == status && c.reason == reason) {
        return None;
    }
    let now = Time(now);
    let transition = match existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    let promoted = CanaryCondition {
        r#type: PROMOTED_CONDITION.into(),
        status: status.into(),
        last_update_time: Some(now),
        last_transition_time: transition,
        reason: reason.into(),
        message: Some(message),
    };
    let mut conditions = vec![promoted];
    conditions.extend(
        current
            .iter()
            .filter(|c| c.r#type != PROMOTED_CONDITION)
            .cloned(),
    );
    Some(conditions)
}

/// The `phase` a check's webhooks are sent, as upstream sends it: the Canary's own phase to
/// `confirm-rollout` and `rollback` hooks, `Progressing` to the hooks of a run under way
/// (pre-rollout, rollout, confirm-traffic-increase, confirm-promotion).
pub fn hook_phase(check: Check, phase: CanaryPhase) -> CanaryPhase {
    match check {
        Check::ConfirmRollout | Check::Rollback => phase,
        Check::PreRollout
        | Check::Analysis
        | Check::ConfirmTrafficIncrease
        | Check::ConfirmPromotion => CanaryPhase::Progressing,
    }
}

/// The status of a Canary whose deletion is being finalised (`revertOnDeletion`), as upstream's
/// `SetStatusPhase(Terminating)` writes it; `None` when it already says so.
pub fn terminating(status: &CanaryStatus, kind: &str, now: Timestamp) -> Option<CanaryStatus> {
    if status.phase == Some(CanaryPhase::Terminating) {
        return None;
    }
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut next = status.clone();
    next.phase = Some(CanaryPhase::Terminating);
    next.canary_weight = Some(0);
    next.iterations = Some(0);
    next.last_transition_time = Some(Time(now));
    if let Some(conditions) =
        promoted_conditions(&status.conditions, CanaryPhase::Terminating, kind, now)
    {
        next.conditions = conditions;
    }
    Some(next)
}

/// Flagger's string for a phase.
pub fn phase_name(phase: CanaryPhase) -> &'static str {
    use CanaryPhase::*;
    match phase {
        Unspecified => "",
        Initializing => "Initializing",
        Initialized => "Initialized",
        Waiting => "Waiting",
        Progressing => "Progressing",
        WaitingPromotion => "WaitingPromotion",
        Promoting => "Promoting",
        Finalising => "Finalising",
        Succeeded => "Succeeded",
        Failed => "Failed",
        Terminating => "Terminating",
        Terminated => "Terminated",
    }
}

/// The fields of a Canary's analysis a run does not follow as written, each as a message naming
/// the field: upstream reinterprets them silently, so the user is told (a Warning Event).
pub fn reinterpreted(canary: &Canary, provider: &str) -> Vec<String> {
    let analysis = canary.analysis().cloned().unwrap_or_default();
    let weighted = analysis.step_weight() > 0 || !analysis.step_weights.is_empty();
    let mut found = Vec::new();
    if analysis.max_weight == Some(0) && analysis.step_weights.is_empty() {
        found.push(format!(
            "spec.analysis.maxWeight: 0 is read as the default {}; set the largest canary weight you want",
            crate::api::flagger::canary::DEFAULT_MAX_WEIGHT
        ));
    }
    if provider == KUBERNETES_PROVIDER && weighted {
        found.push(
            "spec.analysis.stepWeight: the kubernetes provider has no router, so the run is Blue/Green by iterations and stepWeight/stepWeights are ignored; remove them or use a routing provider".into(),
        );
    } else if analysis.iterations() > 0 && weighted {
        found.push(
            "spec.analysis.iterations: set together with stepWeight/stepWeights, the run counts iterations (Blue/Green, or A/B with match) and the weights are ignored; remove one of them".into(),
        );
    }
    let scaler = canary.spec.autoscaler_ref.as_ref();
    if scaler
        .is_some_and(|s| s.kind == "HorizontalPodAutoscaler" && s.primary_scaler_queries.is_some())
    {
        found.push(
            "spec.autoscalerRef.primaryScalerQueries: only KEDA ScaledObjects have scaler queries, so with a HorizontalPodAutoscaler they are not used (as in Flagger); remove them".into(),
        );
    }
    if analysis.metrics.is_empty() && analysis.webhooks.is_empty() {
        found.push(
            "spec.analysis.metrics: the Canary has no metrics and no webhooks, so every check passes and a new revision is promoted without any evidence; add a metric or a webhook".into(),
        );
    }
    found
}

/// The next weight increment of a weighted run (upstream `nextStepWeight`).
pub fn next_step_weight(analysis: &CanaryAnalysis, canary_weight: i32) -> i32 {
    let steps = &analysis.step_weights;
    if analysis.step_weight() > 0 || steps.is_empty() {
        return analysis.step_weight();
    }
    let max_step = TOTAL_WEIGHT - canary_weight;
    if max_step <= 0 {
        // At 100 already: any positive step leads to promotion.
        return 1;
    }
    if canary_weight == 0 {
        return steps[0].min(max_step);
    }
    for pair in steps.windows(2) {
        if pair[0] == canary_weight {
            return (pair[1] - canary_weight).min(max_step);
        }
    }
    // Between steps (a changed spec): jump to the next one above, else finish.
    steps
        .iter()
        .find(|w| **w > canary_weight)
        .map_or(max_step, |w| (w - canary_weight).min(max_step))
}

/// The tick's working state: the status being built and the actions so far.
struct Tick<'a> {
    input: &'a Input<'a>,
    canary: &'a Canary,
    analysis: CanaryAnalysis,
    old: CanaryStatus,
    status: CanaryStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    ticked: bool,
    name: String,
    namespace: String,
}

type Step = Result<(), Check>;

impl<'a> Tick<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let canary = input.canary;
        let mut analysis = canary.analysis().cloned().unwrap_or_default();
        if input.provider == KUBERNETES_PROVIDER {
            // No router: Blue/Green only (upstream forces it the same way).
            analysis.r#match.clear();
            if analysis.iterations() < 1 {
                analysis.iterations = Some(KUBERNETES_DEFAULT_ITERATIONS);
            }
        }
        let old = canary.status.clone().unwrap_or_default();
        Self {
            input,
            canary,
            analysis,
            status: old.clone(),
            old,
            actions: Vec::new(),
            requeue: None,
            ticked: true,
            name: canary.metadata.name.clone().unwrap_or_default(),
            namespace: canary.metadata.namespace.clone().unwrap_or_default(),
        }
    }

    fn obs(&self) -> &'a Observations {
        self.input.observed
    }

    fn phase(&self) -> CanaryPhase {
        self.status.phase.unwrap_or(CanaryPhase::Unspecified)
    }

    fn kind(&self) -> &str {
        &self.canary.spec.target_ref.kind
    }

    fn target(&self) -> &str {
        &self.canary.spec.target_ref.name
    }

    fn event(&mut self, warning: bool, message: String) {
        self.actions.push(Action::Event { warning, message });
    }

    fn alert(&mut self, severity: AlertSeverity, message: impl Into<String>, metadata: bool) {
        self.actions.push(Action::Alert {
            severity,
            message: message.into(),
            metadata,
        });
    }

    fn has_hooks(&self, hook: HookType) -> bool {
        self.analysis.webhooks_of(hook).next().is_some()
    }

    /// The verdict of `check`, or a request to run it.
    fn verdict(&self, check: Check) -> Result<Verdict, Check> {
        self.obs().verdicts.get(&check).cloned().ok_or(check)
    }

    /// How long until the next interval tick is due (`None`: due now, or never ticked).
    fn until_due(&self) -> Option<Duration> {
        let last = self.obs().last_tick?;
        let due = last
            .as_millisecond()
            .saturating_add(i64::try_from(self.input.interval.as_millis()).unwrap_or(i64::MAX));
        let now = self.obs().now.as_millisecond();
        (now < due).then(|| Duration::from_millis(u64::try_from(due - now).unwrap_or(0)))
    }

    fn run(&mut self) -> Step {
        let phase = self.phase();
        if self.canary.suspended() {
            // Frozen where it is, as upstream; a spec change brings it back.
            self.ticked = false;
            return Ok(());
        }
        if is_running(phase)
            && let Some(wait) = self.until_due()
        {
            self.ticked = false;
            self.requeue = Some(wait);
            return Ok(());
        }
        if is_running(phase)
            || matches!(phase, CanaryPhase::Unspecified | CanaryPhase::Initializing)
        {
            self.requeue = Some(self.input.interval);
        }

        let Some(target) = self.obs().target.clone() else {
            let (kind, target) = (self.kind().to_string(), self.target().to_string());
            let namespace = self.namespace.clone();
            self.event(
                true,
                format!("{kind} {target}.{namespace} not found: create it or fix spec.targetRef"),
            );
            self.requeue = Some(self.input.interval);
            return Ok(());
        };

        if matches!(phase, CanaryPhase::Unspecified | CanaryPhase::Initializing) {
            return self.initialize(&target);
        }
        if self.obs().primary.is_none() {
            // Someone deleted it: make it again before anything relies on it.
            self.actions.push(Action::CreatePrimary);
            self.requeue = Some(self.input.interval);
            return Ok(());
        }
        self.actions.push(Action::EnsureServices);

        // Upstream `shouldAdvance`.
        let changed = self.target_changed(&target) || self.configs_changed();
        if phase == CanaryPhase::Failed {
            // Keep lastAppliedSpec and trackedConfigs current even after a failure.
            self.sync_hashes(&target);
        }
        if !is_running(phase) && !changed {
            return Ok(());
        }

        let skip = self.canary.skip_analysis();
        if !skip {
            let primary_name = format!("{}-primary", self.target());
            let threshold = self.analysis.primary_ready_threshold();
            let primary = self.obs().primary.clone().unwrap_or_default();
            match readiness(
                &primary_name,
                &primary,
                threshold,
                self.canary.progress_deadline(),
                self.obs().now,
            ) {
                Readiness::Ready => {}
                Readiness::Waiting(message) => {
                    self.event(true, message);
                    return Ok(());
                }
                Readiness::Stuck(message) => {
                    self.event(true, message);
                    self.rollback(&target);
                    return Ok(());
                }
            }
        }

        let (mut canary_weight, mirrored) = match self.obs().router {
            Some(r) => (r.canary_weight, r.mirrored),
            None => (self.status.canary_weight.unwrap_or(0), false),
        };
        let mut primary_weight = TOTAL_WEIGHT - canary_weight;

        // Upstream `checkCanaryStatus`: start a run.
        if !matches!(
            phase,
            CanaryPhase::Progressing
                | CanaryPhase::WaitingPromotion
                | CanaryPhase::Promoting
                | CanaryPhase::Finalising
        ) {
            if self.has_hooks(HookType::ConfirmRollout) {
                let verdict = self.verdict(Check::ConfirmRollout)?;
                if !verdict.ok {
                    self.gate_closed(
                        HookType::ConfirmRollout,
                        CanaryPhase::Waiting,
                        format!(
                            "Halt {}.{} advancement waiting for approval {}",
                            self.name, self.namespace, verdict.message
                        ),
                        "Canary is waiting for approval.",
                        &target,
                    );
                    return Ok(());
                }
            }
            let message = format!(
                "New revision detected! Scaling up {}.{}",
                self.target(),
                self.namespace
            );
            self.event(false, message);
            self.alert(
                AlertSeverity::Info,
                "New revision detected, progressing canary analysis.",
                true,
            );
            let replicas = self.scale_up_replicas(&target);
            self.actions.push(Action::ScaleTarget { replicas });
            self.sync(&target, CanaryPhase::Progressing, 0, 0, 0);
            self.requeue = Some(self.input.interval);
            return Ok(());
        }

        // Upstream `hasCanaryRevisionChanged`: a new revision mid-run restarts the analysis.
        if matches!(
            phase,
            CanaryPhase::Progressing | CanaryPhase::WaitingPromotion
        ) && changed
        {
            self.set_routes(TOTAL_WEIGHT, 0, false);
            self.sync(&target, CanaryPhase::Progressing, 0, 0, 0);
            let message = format!(
                "New revision detected! Restarting analysis for {}.{}",
                self.target(),
                self.namespace
            );
            self.event(false, message);
            return Ok(());
        }

        // Canary readiness (the target Deployment), in every phase of the run, as upstream.
        {
            let threshold = self.analysis.canary_ready_threshold();
            let scaled_to_zero = target.workload.spec_replicas == 0;
            let ready = if scaled_to_zero {
                Readiness::Waiting(format!(
                    "halt advancement {}.{} is scaled to zero",
                    self.target(),
                    self.namespace
                ))
            } else {
                readiness(
                    self.target(),
                    &target.workload,
                    threshold,
                    self.canary.progress_deadline(),
                    self.obs().now,
                )
            };
            match ready {
                Readiness::Ready => {}
                Readiness::Waiting(message) => {
                    self.event(true, message);
                    return Ok(());
                }
                Readiness::Stuck(message) => {
                    let text = format!(
                        "Rolling back {}.{} progress deadline exceeded {message}",
                        self.name, self.namespace
                    );
                    self.event(true, text);
                    self.alert(
                        AlertSeverity::Error,
                        format!("Progress deadline exceeded {message}"),
                        false,
                    );
                    self.rollback(&target);
                    return Ok(());
                }
            }
        }

        // Upstream `shouldSkipAnalysis`.
        if skip {
            self.set_routes(TOTAL_WEIGHT, 0, false);
            let message = format!(
                "Copying {}.{} template spec to {}-primary.{}",
                self.target(),
                self.namespace,
                self.target(),
                self.namespace
            );
            self.event(false, message);
            self.actions.push(Action::Promote);
            self.actions.push(Action::ScaleTarget { replicas: 0 });
            self.set_phase(CanaryPhase::Succeeded);
            self.status.canary_weight = Some(0);
            self.actions.push(Action::RunHooks(HookType::PostRollout));
            let message = format!(
                "Promotion completed! Canary analysis was skipped for {}.{}",
                self.target(),
                self.namespace
            );
            self.event(false, message);
            self.alert(
                AlertSeverity::Info,
                "Canary analysis was skipped, promotion finished.",
                false,
            );
            return Ok(());
        }

        // Manual rollback through a webhook.
        if matches!(
            phase,
            CanaryPhase::Progressing | CanaryPhase::Waiting | CanaryPhase::WaitingPromotion
        ) && self.has_hooks(HookType::Rollback)
            && self.verdict(Check::Rollback)?.ok
        {
            let message = format!(
                "Rolling back {}.{} manual webhook invoked",
                self.name, self.namespace
            );
            self.event(true, message);
            self.alert(
                AlertSeverity::Warn,
                "Rolling back manual webhook invoked",
                false,
            );
            self.rollback(&target);
            return Ok(());
        }

        if phase == CanaryPhase::Promoting {
            self.promotion_traffic_shift(canary_weight, primary_weight);
            return Ok(());
        }

        if phase == CanaryPhase::Finalising {
            self.actions.push(Action::ScaleTarget { replicas: 0 });
            self.set_phase(CanaryPhase::Succeeded);
            self.status.canary_weight = Some(0);
            self.actions.push(Action::RunHooks(HookType::PostRollout));
            let message = format!(
                "Promotion completed! Scaling down {}.{}",
                self.target(),
                self.namespace
            );
            self.event(false, message);
            self.alert(
                AlertSeverity::Info,
                "Canary analysis completed successfully, promotion finished.",
                false,
            );
            self.requeue = None;
            return Ok(());
        }

        let threshold = self.analysis.threshold();
        if matches!(
            phase,
            CanaryPhase::Progressing | CanaryPhase::WaitingPromotion
        ) && self.status.failed_checks.unwrap_or(0) >= threshold
        {
            self.rollback(&target);
            return Ok(());
        }

        let iterations = self.status.iterations.unwrap_or(0);
        if canary_weight == 0 && iterations == 0 && !(self.analysis.mirror() && mirrored) {
            let message = format!(
                "Starting canary analysis for {}.{}",
                self.target(),
                self.namespace
            );
            self.event(false, message);
            if self.has_hooks(HookType::PreRollout) {
                let verdict = self.verdict(Check::PreRollout)?;
                if !verdict.ok {
                    self.event(true, verdict.message);
                    self.failed_check();
                    return Ok(());
                }
            }
        } else if self.needs_analysis() {
            let verdict = self.verdict(Check::Analysis)?;
            if !verdict.ok {
                self.event(true, verdict.message);
                self.failed_check();
                return Ok(());
            }
        }

        let wanted = self.analysis.iterations();
        if !self.analysis.r#match.is_empty() && wanted > 0 {
            return self.run_ab(&target);
        }
        if wanted > 0 {
            return self.run_blue_green(&target, mirrored);
        }
        let step = next_step_weight(&self.analysis, canary_weight);
        if step > 0 {
            if !mirrored
                && !matches!(
                    phase,
                    CanaryPhase::Promoting
                        | CanaryPhase::WaitingPromotion
                        | CanaryPhase::Finalising
                )
                && self.has_hooks(HookType::ConfirmTrafficIncrease)
            {
                let verdict = self.verdict(Check::ConfirmTrafficIncrease)?;
                if !verdict.ok {
                    let message = format!(
                        "Halt {}.{} advancement waiting for traffic increase approval {}",
                        self.name, self.namespace, verdict.message
                    );
                    if self.gate_timed_out(HookType::ConfirmTrafficIncrease) {
                        self.gate_timeout_rollback(HookType::ConfirmTrafficIncrease, &target);
                    } else {
                        self.event(false, message);
                    }
                    return Ok(());
                }
            }
            let max_weight = self.analysis.max_weight().clamp(0, TOTAL_WEIGHT);
            if canary_weight < max_weight {
                if self.analysis.mirror() && canary_weight == 0 {
                    // One step of mirroring before any live traffic.
                    let mirror = !mirrored;
                    if mirror {
                        primary_weight = TOTAL_WEIGHT;
                        canary_weight = 0;
                    } else {
                        canary_weight = step.min(max_weight);
                        primary_weight = TOTAL_WEIGHT - canary_weight;
                    }
                    self.set_routes(primary_weight, canary_weight, mirror);
                } else {
                    canary_weight = (canary_weight + step).clamp(0, max_weight);
                    primary_weight = TOTAL_WEIGHT - canary_weight;
                    self.set_routes(primary_weight, canary_weight, false);
                }
                self.status.canary_weight = Some(canary_weight);
                let message = format!(
                    "Advance {}.{} canary weight {canary_weight}",
                    self.name, self.namespace
                );
                self.event(false, message);
                return Ok(());
            }
            if !self.confirm_promotion(&target)? {
                return Ok(());
            }
            self.promote();
        }
        Ok(())
    }

    fn initialize(&mut self, target: &Target) -> Step {
        if self.phase() == CanaryPhase::Unspecified {
            self.set_phase(CanaryPhase::Initializing);
            // Upstream's status always has its counters (`failedChecks: 0` while initialising).
            for counter in [
                &mut self.status.failed_checks,
                &mut self.status.canary_weight,
                &mut self.status.iterations,
            ] {
                counter.get_or_insert(0);
            }
        }
        let Some(primary) = self.obs().primary.clone() else {
            self.actions.push(Action::CreatePrimary);
            return Ok(());
        };
        if !self.canary.skip_analysis() {
            let name = format!("{}-primary", self.target());
            match readiness(
                &name,
                &primary,
                self.analysis.primary_ready_threshold(),
                self.canary.progress_deadline(),
                self.obs().now,
            ) {
                Readiness::Ready => {}
                // Traffic moves to the primary only once it serves (zero-downtime onboarding).
                // Initialisation follows every change of the primary, but says it is waiting
                // once per interval, not on each of those changes.
                Readiness::Waiting(message) | Readiness::Stuck(message) => {
                    match self.until_due() {
                        Some(wait) => {
                            self.ticked = false;
                            self.requeue = Some(wait);
                        }
                        None => self.event(true, message),
                    }
                    return Ok(());
                }
            }
        }
        self.actions.push(Action::EnsureServices);
        self.actions.push(Action::ScaleTarget { replicas: 0 });
        self.set_routes(TOTAL_WEIGHT, 0, false);
        self.sync(target, CanaryPhase::Initialized, 0, 0, 0);
        self.status.last_promoted_spec = Some(target.template_hash.clone());
        let message = format!("Initialization done! {}.{}", self.name, self.namespace);
        self.event(false, message);
        let kind = self.kind().to_string();
        self.alert(
            AlertSeverity::Info,
            format!("New {kind} detected, initialization completed."),
            true,
        );
        self.requeue = None;
        Ok(())
    }

    fn needs_analysis(&self) -> bool {
        self.has_hooks(HookType::Rollout) || !self.analysis.metrics.is_empty()
    }

    fn target_changed(&self, target: &Target) -> bool {
        let applied = self.old.last_applied_spec.as_deref().unwrap_or("");
        if applied.is_empty() {
            return true;
        }
        let hash = target.template_hash.as_str();
        // A manual revert to the promoted template starts nothing (upstream).
        if self.old.last_promoted_spec.as_deref() == Some(hash) {
            return false;
        }
        applied != hash
    }

    fn configs_changed(&self) -> bool {
        let tracked = self.old.tracked_configs.clone().unwrap_or_default();
        tracked != self.obs().configs
    }

    fn tracked(&self) -> Option<BTreeMap<String, String>> {
        let configs = &self.obs().configs;
        (!configs.is_empty()).then(|| configs.clone())
    }

    fn sync_hashes(&mut self, target: &Target) {
        self.status.last_applied_spec = Some(target.template_hash.clone());
        self.status.tracked_configs = self.tracked();
    }

    /// Upstream `SyncStatus`: phase and counters, the current hashes, the condition.
    fn sync(
        &mut self,
        target: &Target,
        phase: CanaryPhase,
        weight: i32,
        failed: i32,
        iterations: i32,
    ) {
        self.status.phase = Some(phase);
        self.status.canary_weight = Some(weight);
        self.status.failed_checks = Some(failed);
        self.status.iterations = Some(iterations);
        self.sync_hashes(target);
        self.condition(phase);
    }

    /// Upstream `SetStatusPhase` (keeping the routed weight, see the module docs).
    fn set_phase(&mut self, phase: CanaryPhase) {
        self.status.phase = Some(phase);
        match phase {
            CanaryPhase::Progressing | CanaryPhase::Waiting => {}
            CanaryPhase::WaitingPromotion => {
                self.status.iterations = Some((self.analysis.iterations() - 1).max(0));
            }
            // Upstream keeps the weight and the iterations while promoting.
            CanaryPhase::Promoting => {}
            _ => {
                self.status.canary_weight = Some(0);
                self.status.iterations = Some(0);
            }
        }
        if matches!(phase, CanaryPhase::Initialized | CanaryPhase::Succeeded) {
            self.status.last_promoted_spec = self.status.last_applied_spec.clone();
        }
        self.condition(phase);
    }

    fn condition(&mut self, phase: CanaryPhase) {
        let kind = self.kind().to_string();
        if let Some(conditions) =
            promoted_conditions(&self.status.conditions, phase, &kind, self.now())
        {
            self.status.conditions = conditions;
        }
    }

    fn now(&self) -> Timestamp {
        let now = self.obs().now;
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }

    fn set_routes(&mut self, primary_weight: i32, canary_weight: i32, mirrored: bool) {
        self.actions.push(Action::SetRoutes {
            primary_weight,
            canary_weight,
            mirrored,
        });
    }

    fn failed_check(&mut self) {
        self.status.failed_checks = Some(self.status.failed_checks.unwrap_or(0) + 1);
    }

    fn scale_up_replicas(&self, target: &Target) -> i32 {
        if target.workload.spec_replicas > 0 {
            return target.workload.spec_replicas;
        }
        self.obs()
            .primary
            .as_ref()
            .map_or(1, |p| p.spec_replicas.max(1))
    }

    /// The smallest `gateTimeout` of this gate's hooks has passed since the phase last changed.
    fn gate_timed_out(&self, hook: HookType) -> bool {
        let Some(timeout) = self
            .analysis
            .webhooks_of(hook)
            .filter_map(|w| w.gate_timeout())
            .min()
        else {
            return false;
        };
        let Some(since) = self.old.last_transition_time.as_ref() else {
            return false;
        };
        let waited = self
            .obs()
            .now
            .as_second()
            .saturating_sub(since.0.as_second());
        u64::try_from(waited).is_ok_and(|w| w >= timeout.as_secs())
    }

    fn gate_timeout_rollback(&mut self, hook: HookType, target: &Target) {
        let hook = serde_json::to_value(hook)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let message = format!(
            "Rolling back {}.{}: the {hook} gate stayed closed longer than its gateTimeout",
            self.name, self.namespace
        );
        self.event(true, message.clone());
        self.alert(AlertSeverity::Error, message, false);
        self.rollback(target);
    }

    /// A closed gate: enter (or stay in) `waiting`, or fail the run past its `gateTimeout`.
    fn gate_closed(
        &mut self,
        hook: HookType,
        waiting: CanaryPhase,
        message: String,
        alert: &str,
        target: &Target,
    ) {
        if self.phase() == waiting {
            if self.gate_timed_out(hook) {
                self.gate_timeout_rollback(hook, target);
            } else {
                self.event(true, message);
            }
            return;
        }
        if waiting == CanaryPhase::Waiting {
            // The checksum the gate was asked about is recorded, as upstream's SyncStatus does.
            self.sync_hashes(target);
        }
        self.set_phase(waiting);
        self.event(true, message);
        let muted = self.analysis.webhooks_of(hook).all(|w| w.mute_alert());
        if !muted {
            self.alert(AlertSeverity::Warn, alert, false);
        }
    }

    /// The confirm-promotion gate; `Ok(false)` when closed.
    fn confirm_promotion(&mut self, target: &Target) -> Result<bool, Check> {
        if !self.has_hooks(HookType::ConfirmPromotion) {
            return Ok(true);
        }
        let verdict = self.verdict(Check::ConfirmPromotion)?;
        if verdict.ok {
            let message = format!("Confirm-promotion check passed {}", verdict.message);
            self.event(false, message.trim_end().to_string());
            return Ok(true);
        }
        let message = format!(
            "Halt {}.{} advancement waiting for promotion approval {}",
            self.name, self.namespace, verdict.message
        );
        self.gate_closed(
            HookType::ConfirmPromotion,
            CanaryPhase::WaitingPromotion,
            message,
            "Canary promotion is waiting for approval.",
            target,
        );
        Ok(false)
    }

    fn promote(&mut self) {
        let message = format!(
            "Copying {}.{} template spec to {}-primary.{}",
            self.target(),
            self.namespace,
            self.target(),
            self.namespace
        );
        self.event(false, message);
        self.actions.push(Action::Promote);
        self.set_phase(CanaryPhase::Promoting);
    }

    fn run_ab(&mut self, target: &Target) -> Step {
        let wanted = self.analysis.iterations();
        let done = self.status.iterations.unwrap_or(0);
        if wanted > done {
            self.set_routes(0, TOTAL_WEIGHT, false);
            self.status.iterations = Some(done + 1);
            let message = format!(
                "Advance {}.{} canary iteration {}/{wanted}",
                self.name,
                self.namespace,
                done + 1
            );
            self.event(false, message);
            return Ok(());
        }
        if !self.confirm_promotion(target)? {
            return Ok(());
        }
        if wanted == self.status.iterations.unwrap_or(0) {
            self.promote();
        }
        Ok(())
    }

    fn run_blue_green(&mut self, target: &Target, mirrored: bool) -> Step {
        let wanted = self.analysis.iterations();
        let done = self.status.iterations.unwrap_or(0);
        let routed = self.input.provider != KUBERNETES_PROVIDER;
        if wanted > done {
            if routed && self.analysis.mirror() && !mirrored {
                self.set_routes(TOTAL_WEIGHT, 0, true);
            }
            self.status.iterations = Some(done + 1);
            let message = format!(
                "Advance {}.{} canary iteration {}/{wanted}",
                self.name,
                self.namespace,
                done + 1
            );
            self.event(false, message);
            return Ok(());
        }
        if !self.confirm_promotion(target)? {
            return Ok(());
        }
        let done = self.status.iterations.unwrap_or(0);
        if wanted == done {
            if routed {
                let message = if self.analysis.mirror() {
                    "Stop traffic mirroring and route all traffic to canary"
                } else {
                    "Routing all traffic to canary"
                };
                self.event(false, message.into());
                // Routed, but not written to status: upstream's Blue/Green never reports a
                // weight (only the router says it).
                self.set_routes(0, TOTAL_WEIGHT, false);
            }
            self.status.iterations = Some(done + 1);
            return Ok(());
        }
        if wanted < done {
            self.promote();
        }
        Ok(())
    }

    fn promotion_traffic_shift(&mut self, canary_weight: i32, primary_weight: i32) {
        if self.input.provider == KUBERNETES_PROVIDER {
            self.set_phase(CanaryPhase::Finalising);
            return;
        }
        let step = self.analysis.step_weight_promotion();
        if step <= 0 || canary_weight <= 0 {
            self.event(false, "Routing all traffic to primary".into());
            self.set_routes(TOTAL_WEIGHT, 0, false);
            self.set_phase(CanaryPhase::Finalising);
            return;
        }
        let primary = (primary_weight + step).min(TOTAL_WEIGHT);
        self.set_routes(primary, TOTAL_WEIGHT - primary, false);
        let message = format!(
            "Advance {}.{} primary weight {primary}",
            self.name, self.namespace
        );
        self.event(false, message);
        if primary == TOTAL_WEIGHT {
            self.set_phase(CanaryPhase::Finalising);
        } else {
            self.status.canary_weight = Some(TOTAL_WEIGHT - primary);
        }
    }

    /// Upstream `rollback`: all traffic to the primary, the canary to zero, Failed.
    fn rollback(&mut self, target: &Target) {
        let failed = self.status.failed_checks.unwrap_or(0);
        if failed >= self.analysis.threshold() {
            let message = format!(
                "Rolling back {}.{} failed checks threshold reached {failed}",
                self.name, self.namespace
            );
            self.event(true, message);
            self.alert(
                AlertSeverity::Error,
                format!("Failed checks threshold reached {failed}"),
                false,
            );
        }
        self.set_routes(TOTAL_WEIGHT, 0, false);
        let message = format!(
            "Canary failed! Scaling down {}.{}",
            self.name, self.namespace
        );
        self.event(true, message);
        self.actions.push(Action::ScaleTarget { replicas: 0 });
        self.sync(target, CanaryPhase::Failed, 0, 0, 0);
        self.actions.push(Action::RunHooks(HookType::PostRollout));
        self.requeue = None;
    }

    fn finish(mut self) -> Plan {
        if self.status != self.old {
            // Upstream stamps every status write.
            self.status.last_transition_time = Some(Time(self.now()));
        }
        if self.ticked && is_running(self.phase()) {
            self.requeue = Some(self.input.interval);
        }
        Plan {
            status: self.status,
            actions: self.actions,
            requeue_after: self.requeue,
            ticked: self.ticked,
        }
    }
}
