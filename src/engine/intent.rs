//! User intents, expressed exactly as Argo's kubectl plugin and Argo CD's actions patch them.
//!
//! The engine never receives an "intent" message: it reads the fields these patches set. This
//! module is the single description of those patches: the CLI sends [`patches`], and tests apply
//! them with [`apply`] to drive the engine like a user would.

use serde_json::{Value, json};

use crate::api::argo::rollout::{Rollout, RolloutSpec, RolloutStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// `promote`: resume a paused rollout, or skip the current step if it is not paused.
    Promote,
    /// `promote --skip-current-step`.
    SkipCurrentStep,
    /// `promote --skip-all-steps`.
    SkipAllSteps,
    /// `promote --full`: skip the remaining steps and analysis.
    PromoteFull,
    /// `abort`: traffic and replicas back to stable.
    Abort,
    /// `retry`: clear an abort and start the update again.
    Retry,
    /// `pause`: `spec.paused = true`.
    Pause,
    /// Argo CD's "resume" action: `spec.paused = false` and pause conditions cleared.
    Resume,
}

/// The merge patches the plugin sends: (patch of the main resource, patch of `/status`).
pub fn patches(intent: Intent, rollout: &Rollout) -> (Option<Value>, Option<Value>) {
    let status = rollout.status.clone().unwrap_or_default();
    let steps = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map_or(0, |c| c.steps().len() as i32);
    let index = status.current_step_index.unwrap_or(0);
    let next = if index < steps { index + 1 } else { index };
    match intent {
        Intent::Promote => {
            let spec = rollout
                .spec
                .paused()
                .then(|| json!({"spec": {"paused": false}}));
            let status_patch = if !status.pause_conditions.is_empty() {
                json!({"status": {"pauseConditions": null}})
            } else if rollout.spec.strategy.canary.is_some() && steps > 0 {
                json!({"status": {"pauseConditions": null, "controllerPause": false, "currentStepIndex": next}})
            } else {
                json!({"status": {"pauseConditions": null}})
            };
            (spec, Some(status_patch))
        }
        Intent::SkipCurrentStep => (
            None,
            Some(json!({"status": {"pauseConditions": null, "currentStepIndex": next}})),
        ),
        Intent::SkipAllSteps => (None, Some(json!({"status": {"currentStepIndex": steps}}))),
        Intent::PromoteFull => {
            let patch = (status.current_pod_hash != status.stable_rs)
                .then(|| json!({"status": {"promoteFull": true}}));
            (None, patch)
        }
        Intent::Abort => (None, Some(json!({"status": {"abort": true}}))),
        Intent::Retry => (None, Some(json!({"status": {"abort": false}}))),
        Intent::Pause => (Some(json!({"spec": {"paused": true}})), None),
        Intent::Resume => (
            Some(json!({"spec": {"paused": false}})),
            Some(json!({"status": {"pauseConditions": null}})),
        ),
    }
}

/// Apply an intent's patches to a spec and status, as the apiserver would (JSON merge patch).
pub fn apply(
    intent: Intent,
    spec: &RolloutSpec,
    status: &RolloutStatus,
) -> (RolloutSpec, RolloutStatus) {
    let rollout = Rollout {
        metadata: Default::default(),
        spec: spec.clone(),
        status: Some(status.clone()),
    };
    let (spec_patch, status_patch) = patches(intent, &rollout);
    let mut value = serde_json::to_value(&rollout).expect("a Rollout serializes");
    for patch in [spec_patch, status_patch].into_iter().flatten() {
        merge(&mut value, &patch);
    }
    let patched: Rollout =
        serde_json::from_value(value).expect("a merge-patched Rollout still parses");
    (patched.spec, patched.status.unwrap_or_default())
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}
