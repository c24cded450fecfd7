//! The rollout phase as Argo computes it (`CalculateRolloutPhase`), the health Argo CD derives
//! from the status fields (its `argoproj.io/Rollout` health check), so tests can prove the two
//! always agree, and the kstatus conditions (Ready / Reconciling / Stalled) that
//! `kubectl wait --for=condition=Ready` and Flux read. Pure functions of spec and status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::argo::rollout::{RolloutCondition, RolloutPhase, RolloutSpec, RolloutStatus};

/// Condition types and reasons, as Argo writes them.
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const PAUSED: &str = "Paused";
    pub const COMPLETED: &str = "Completed";
    pub const HEALTHY: &str = "Healthy";

    pub const AVAILABLE_REASON: &str = "AvailableReason";
    pub const REPLICA_SET_UPDATED: &str = "ReplicaSetUpdated";
    pub const NEW_REPLICA_SET_AVAILABLE: &str = "NewReplicaSetAvailable";
    pub const ROLLOUT_ABORTED: &str = "RolloutAborted";
    pub const ROLLOUT_PAUSED: &str = "RolloutPaused";
    pub const ROLLOUT_RESUMED: &str = "RolloutResumed";
    pub const ROLLOUT_RETRY: &str = "RolloutRetry";
    pub const ROLLOUT_COMPLETED: &str = "RolloutCompleted";
    pub const ROLLOUT_HEALTHY: &str = "RolloutHealthy";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const ROLLOUT_STEP_COMPLETED: &str = "RolloutStepCompleted";
    pub const ROLLOUT_UPDATED: &str = "RolloutUpdated";
    pub const ROLLOUT_PROMOTED_FULL: &str = "RolloutPromotedFull";
    pub const ANALYSIS_RUN_FAILED: &str = "AnalysisRunFailed";
    pub const ANALYSIS_RUN_ERROR: &str = "AnalysisRunError";
    pub const ANALYSIS_RUN_INCONCLUSIVE: &str = "AnalysisRunInconclusive";
    pub const TRAFFIC_WEIGHT_UPDATED: &str = "TrafficWeightUpdated";
    pub const FAST_ROLLBACK: &str = "FastRollback";
    /// Every pod created before `spec.restartAt` was replaced (Sluice's reason; Argo logs it).
    pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";
}

/// Argo CD's view of a Rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Progressing,
    Suspended,
    Degraded,
}

fn condition<'a>(
    status: &'a RolloutStatus,
    type_: &str,
) -> Option<&'a crate::api::argo::rollout::RolloutCondition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// `true` when the status shows an abort, an invalid spec or an exceeded progress deadline.
fn degraded_message(status: &RolloutStatus) -> Option<String> {
    if let Some(c) = condition(status, reason::INVALID_SPEC).filter(|c| c.status == "True") {
        return Some(format!("{}: {}", reason::INVALID_SPEC, c.message));
    }
    let progressing = condition(status, reason::PROGRESSING)?;
    (progressing.reason == reason::ROLLOUT_ABORTED
        || progressing.reason == reason::PROGRESS_DEADLINE_EXCEEDED)
        .then(|| format!("{}: {}", progressing.reason, progressing.message))
}

/// Replica checks shared by Argo's phase and Argo CD's health.
///
/// With a traffic router, old pods kept for `scaleDownDelaySeconds` (or the
/// `scaleDownDelayRevisionLimit`) receive no traffic and do not hold the phase back: Argo reports
/// Healthy at once and scales them down at their `scale-down-deadline`.
fn replicas_progressing(spec: &RolloutSpec, status: &RolloutStatus) -> Option<&'static str> {
    if status.updated_replicas < spec.replicas() {
        return Some("more replicas need to be updated");
    }
    // Routed canaries and blue-green keep old pods until their scale-down deadline by design.
    if status.replicas > status.updated_replicas
        && !routed(spec)
        && spec.strategy.blue_green.is_none()
    {
        return Some("old replicas are pending termination");
    }
    if status.available_replicas < status.updated_replicas {
        return Some("updated replicas are still becoming available");
    }
    None
}

/// A canary with `trafficRouting`: old ReplicaSets may keep pods until their scale-down deadline.
pub fn routed(spec: &RolloutSpec) -> bool {
    spec.strategy
        .canary
        .as_ref()
        .is_some_and(|c| c.traffic_routing.is_some())
}

/// A blue-green Rollout whose active Service does not select the current pods yet.
fn cutover_pending(spec: &RolloutSpec, status: &RolloutStatus) -> bool {
    spec.strategy.blue_green.is_some()
        && status.blue_green.active_selector != status.current_pod_hash
}

/// Argo's `CalculateRolloutPhase`: the phase and its message.
pub fn phase(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    generation: i64,
) -> (RolloutPhase, String) {
    if status.observed_generation != generation.to_string() {
        return (
            RolloutPhase::Progressing,
            "waiting for rollout spec update to be observed".into(),
        );
    }
    if let Some(message) = degraded_message(status) {
        return (RolloutPhase::Degraded, message);
    }
    if spec.paused() {
        return (RolloutPhase::Paused, "manually paused".into());
    }
    if let Some(pause) = status.pause_conditions.first() {
        let reason = serde_json::to_value(pause.reason)
            .ok()
            .and_then(|v| v.as_str().map(String::from));
        return (RolloutPhase::Paused, reason.unwrap_or_default());
    }
    if spec
        .restart_at
        .as_ref()
        .is_some_and(|at| status.restarted_at.as_ref() != Some(at))
    {
        return (RolloutPhase::Progressing, "rollout is restarting".into());
    }
    if let Some(message) = replicas_progressing(spec, status) {
        return (RolloutPhase::Progressing, message.into());
    }
    if cutover_pending(spec, status) {
        return (
            RolloutPhase::Progressing,
            "active service cutover pending".into(),
        );
    }
    if status.stable_rs != status.current_pod_hash {
        return (
            RolloutPhase::Progressing,
            "waiting for all steps to complete".into(),
        );
    }
    (RolloutPhase::Healthy, String::new())
}

/// Argo CD's health for a Rollout, recomputed from status fields (not from `status.phase`; Argo
/// CD reads the phase when there is one, so both must agree, old pods of a routed canary included).
pub fn argocd_health(spec: &RolloutSpec, status: &RolloutStatus, generation: i64) -> Health {
    if !argocd_observed(status, generation) {
        return Health::Progressing;
    }
    if degraded_message(status).is_some() {
        return Health::Degraded;
    }
    if spec.paused() || !status.pause_conditions.is_empty() {
        return Health::Suspended;
    }
    if replicas_progressing(spec, status).is_some() || cutover_pending(spec, status) {
        return Health::Progressing;
    }
    if status.stable_rs == status.current_pod_hash {
        Health::Healthy
    } else {
        Health::Progressing
    }
}

/// Argo CD's `isGenerationObserved`: a numeric `observedGeneration` must be the generation; a
/// hash (Argo Rollouts before v0.10) or a number past it counts as observed. An empty one is a
/// status not written yet (Argo CD: no status, still Progressing).
fn argocd_observed(status: &RolloutStatus, generation: i64) -> bool {
    match status.observed_generation.parse::<f64>() {
        _ if status.observed_generation.is_empty() => false,
        Ok(observed) if observed <= generation as f64 => observed == generation as f64,
        _ => true,
    }
}

/// The Argo CD health a phase maps to (Paused shows as Suspended).
pub fn health_of_phase(phase: RolloutPhase) -> Health {
    match phase {
        RolloutPhase::Healthy => Health::Healthy,
        RolloutPhase::Progressing => Health::Progressing,
        RolloutPhase::Paused => Health::Suspended,
        RolloutPhase::Degraded => Health::Degraded,
    }
}

/// The kstatus condition types (sigs.k8s.io/cli-utils `kstatus`), beside Argo's own.
pub mod kstatus {
    /// The rollout reached its desired state: Healthy in Argo's terms.
    pub const READY: &str = "Ready";
    /// The controller is still moving it there (progressing, paused between steps, or a new
    /// generation not yet observed).
    pub const RECONCILING: &str = "Reconciling";
    /// It cannot get there without a person (aborted, progress deadline exceeded, invalid spec).
    pub const STALLED: &str = "Stalled";

    /// Reason of Reconciling while a new generation is not yet observed (kstatus' own word).
    pub const LATEST_GENERATION_NOT_OBSERVED: &str = "LatestGenerationNotObserved";
}

/// One kstatus condition as decided: (type, status, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KstatusCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The three kstatus conditions for a status the engine computed: exactly one of them is True.
///
/// Derived from Argo's phase, so they can never disagree with `status.phase` or Argo CD's
/// health: Healthy is Ready, Degraded is Stalled, Progressing and Paused are Reconciling (a pause
/// is a planned state, not a failure, so Flux keeps waiting instead of failing the release).
pub fn kstatus_conditions(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    generation: i64,
) -> [KstatusCondition; 3] {
    let (phase, message) = phase(spec, status, generation);
    let phase_name = |p: RolloutPhase| {
        serde_json::to_value(p)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let (ready, reconciling, stalled) = match phase {
        RolloutPhase::Healthy => (true, false, false),
        RolloutPhase::Degraded => (false, false, true),
        RolloutPhase::Progressing | RolloutPhase::Paused => (false, true, false),
    };
    let reason = if status.observed_generation != generation.to_string() {
        kstatus::LATEST_GENERATION_NOT_OBSERVED.to_string()
    } else if phase == RolloutPhase::Degraded {
        // "InvalidSpec: ..." or "RolloutAborted: ...": the cause is the reason.
        message
            .split_once(':')
            .map(|(r, _)| r.to_string())
            .unwrap_or_else(|| phase_name(phase))
    } else {
        phase_name(phase)
    };
    let message = if message.is_empty() {
        format!("Rollout is {}", phase_name(phase))
    } else {
        message
    };
    let condition = |type_, status| KstatusCondition {
        type_,
        status,
        reason: reason.clone(),
        message: message.clone(),
    };
    [
        condition(kstatus::READY, ready),
        condition(kstatus::RECONCILING, reconciling),
        condition(kstatus::STALLED, stalled),
    ]
}

/// Writes the kstatus conditions into `status.conditions`, with `observedGeneration`.
///
/// Times change only with the condition: lastTransitionTime when its status flips,
/// lastUpdateTime when anything about it changes, so planning twice writes nothing new.
pub fn set_kstatus_conditions(
    spec: &RolloutSpec,
    status: &mut RolloutStatus,
    generation: i64,
    now: Timestamp,
) {
    // Status times are whole seconds on the wire.
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    for wanted in kstatus_conditions(spec, status, generation) {
        let value = if wanted.status { "True" } else { "False" };
        match status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == wanted.type_)
        {
            Some(c)
                if c.status == value
                    && c.reason == wanted.reason
                    && c.message == wanted.message
                    && c.observed_generation == Some(generation) => {}
            Some(c) => {
                if c.status != value {
                    c.last_transition_time = now.clone();
                }
                c.status = value.into();
                c.reason = wanted.reason;
                c.message = wanted.message;
                c.observed_generation = Some(generation);
                c.last_update_time = now.clone();
            }
            None => status.conditions.push(RolloutCondition {
                type_: wanted.type_.into(),
                status: value.into(),
                last_update_time: now.clone(),
                last_transition_time: now.clone(),
                reason: wanted.reason,
                message: wanted.message,
                observed_generation: Some(generation),
            }),
        }
    }
}

#[cfg(test)]
mod kstatus_tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn healthy() -> (RolloutSpec, RolloutStatus) {
        let spec = RolloutSpec::default();
        let status = RolloutStatus {
            observed_generation: "3".into(),
            current_pod_hash: "abc".into(),
            stable_rs: "abc".into(),
            replicas: spec.replicas(),
            updated_replicas: spec.replicas(),
            available_replicas: spec.replicas(),
            ready_replicas: spec.replicas(),
            ..Default::default()
        };
        (spec, status)
    }

    fn get<'a>(status: &'a RolloutStatus, type_: &str) -> &'a RolloutCondition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn exactly_one_condition_is_true_and_follows_the_phase() {
        let (spec, mut status) = healthy();
        let c = kstatus_conditions(&spec, &status, 3);
        assert_eq!(
            c.iter().map(|c| c.status).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(c[0].reason, "Healthy");

        status.stable_rs = "old".into();
        let c = kstatus_conditions(&spec, &status, 3);
        assert_eq!(
            c.iter().map(|c| c.status).collect::<Vec<_>>(),
            [false, true, false]
        );

        status.conditions.push(RolloutCondition {
            type_: reason::PROGRESSING.into(),
            status: "False".into(),
            last_update_time: Time(at(1)),
            last_transition_time: Time(at(1)),
            reason: reason::ROLLOUT_ABORTED.into(),
            message: "aborted by a user".into(),
            observed_generation: None,
        });
        let c = kstatus_conditions(&spec, &status, 3);
        assert_eq!(
            c.iter().map(|c| c.status).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(c[2].reason, reason::ROLLOUT_ABORTED);
    }

    #[test]
    fn argo_cd_takes_a_hash_or_a_later_observed_generation_as_observed() {
        let (spec, mut status) = healthy();
        assert_eq!(argocd_health(&spec, &status, 3), Health::Healthy);
        assert_eq!(argocd_health(&spec, &status, 4), Health::Progressing);
        status.observed_generation = "7bcdbf7bd9".into();
        assert_eq!(argocd_health(&spec, &status, 4), Health::Healthy);
        status.observed_generation = "5".into();
        assert_eq!(argocd_health(&spec, &status, 4), Health::Healthy);
        status.observed_generation = String::new();
        assert_eq!(argocd_health(&spec, &status, 4), Health::Progressing);
    }

    #[test]
    fn a_new_generation_is_reconciling_until_observed() {
        let (spec, status) = healthy();
        let c = kstatus_conditions(&spec, &status, 4);
        assert!(c[1].status);
        assert_eq!(c[1].reason, kstatus::LATEST_GENERATION_NOT_OBSERVED);
    }

    #[test]
    fn setting_twice_changes_nothing_and_times_follow_transitions() {
        let (spec, mut status) = healthy();
        set_kstatus_conditions(&spec, &mut status, 3, at(10));
        let once = status.clone();
        set_kstatus_conditions(&spec, &mut status, 3, at(20));
        assert_eq!(status, once);
        assert_eq!(get(&status, kstatus::READY).observed_generation, Some(3));
        assert_eq!(get(&status, kstatus::READY).status, "True");

        status.stable_rs = "old".into();
        set_kstatus_conditions(&spec, &mut status, 3, at(30));
        let ready = get(&status, kstatus::READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, Time(at(30)));
        let stalled = get(&status, kstatus::STALLED);
        assert_eq!(stalled.status, "False");
        assert_eq!(stalled.last_transition_time, Time(at(10)));
        assert_eq!(stalled.last_update_time, Time(at(30)));
    }
}
