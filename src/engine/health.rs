//! The rollout phase as Argo computes it (`CalculateRolloutPhase`), and the health Argo CD derives
//! from the status fields (its `argoproj.io/Rollout` health check), so tests can prove the two
//! always agree. Pure functions of spec and status.

use crate::api::argo::rollout::{RolloutPhase, RolloutSpec, RolloutStatus};

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
fn replicas_progressing(spec: &RolloutSpec, status: &RolloutStatus) -> Option<&'static str> {
    if status.updated_replicas < spec.replicas() {
        return Some("more replicas need to be updated");
    }
    if status.replicas > status.updated_replicas {
        return Some("old replicas are pending termination");
    }
    if status.available_replicas < status.updated_replicas {
        return Some("updated replicas are still becoming available");
    }
    None
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
    if status.stable_rs != status.current_pod_hash {
        return (
            RolloutPhase::Progressing,
            "waiting for all steps to complete".into(),
        );
    }
    (RolloutPhase::Healthy, String::new())
}

/// Argo CD's health for a Rollout, recomputed from status fields (not from `status.phase`).
pub fn argocd_health(spec: &RolloutSpec, status: &RolloutStatus, generation: i64) -> Health {
    if status.observed_generation != generation.to_string() {
        return Health::Progressing;
    }
    if degraded_message(status).is_some() {
        return Health::Degraded;
    }
    if spec.paused() || !status.pause_conditions.is_empty() {
        return Health::Suspended;
    }
    if replicas_progressing(spec, status).is_some() {
        return Health::Progressing;
    }
    if status.stable_rs == status.current_pod_hash {
        Health::Healthy
    } else {
        Health::Progressing
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
