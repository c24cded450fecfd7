//! A plan's Events as Argo's controller records them: the same reasons, at the same moments, in
//! the same order (Argo's e2e suite and tools reading a Rollout's history compare the sequence).
//!
//! The step machine records what it decides (`RolloutUpdated`, `RolloutStepCompleted`,
//! `SwitchService`, `RolloutAborted`, analysis verdicts, ...). This pass adds what Argo records
//! from the plan's effects — `NewReplicaSetCreated` and `ScalingReplicaSet` for each ReplicaSet
//! created or scaled, and the state changes `RolloutNotCompleted`, `RolloutPaused`,
//! `RolloutResumed` and `RolloutCompleted` from the old and new status (as Argo's
//! `sendStateChangeEvents` and `promoteStable` do) — and orders them as one Argo reconcile
//! would: the new revision, the steps, the scaling, then the settling events.
//!
//! Pure: it rearranges [`Action::Event`]s and never touches another action.

use crate::api::argo::rollout::RolloutStatus;
use crate::engine::health::reason;
use crate::engine::{Action, Event, Input, Plan};

const NEW_REPLICA_SET_CREATED: &str = "NewReplicaSetCreated";
const SCALING_REPLICA_SET: &str = "ScalingReplicaSet";
const ROLLOUT_NOT_COMPLETED: &str = "RolloutNotCompleted";
const SWITCH_SERVICE: &str = "SwitchService";

/// Rewrites the Events of `plan` (made from `input`) into Argo's sequence.
pub fn arrange(input: &Input<'_>, plan: &mut Plan) {
    let invalid = plan
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == reason::INVALID_SPEC && c.status == "True");
    if invalid {
        return;
    }
    let mut revision_events = Vec::new();
    let mut step_events = Vec::new();
    let mut settle_events = Vec::new();
    for action in &plan.actions {
        let Action::Event(event) = action else {
            continue;
        };
        match event.reason {
            // Derived below from the status, as Argo does; Argo records no retry Event.
            reason::ROLLOUT_PAUSED | reason::ROLLOUT_COMPLETED | reason::ROLLOUT_RETRY => {}
            reason::ROLLOUT_UPDATED | reason::FAST_ROLLBACK => revision_events.push(event.clone()),
            SWITCH_SERVICE | reason::ROLLOUT_ABORTED => settle_events.push(event.clone()),
            _ => step_events.push(event.clone()),
        }
    }
    let view = View { input, plan };
    revision_events.extend(view.created());
    revision_events.extend(view.not_completed());
    step_events.extend(view.paused_or_resumed());
    settle_events.extend(view.completed());
    // Argo scales for the step it is on before completing it, so a step completed here comes
    // before the scaling for the next one; a promotion scales the old stable down before it
    // records the completion.
    let mut events = revision_events;
    events.extend(step_events);
    events.extend(view.scaled());
    events.extend(settle_events);

    plan.actions.retain(|a| !matches!(a, Action::Event(_)));
    plan.actions.extend(events.into_iter().map(Action::Event));
}

struct View<'p, 'a> {
    input: &'p Input<'a>,
    plan: &'p Plan,
}

fn normal(reason: &'static str, message: String) -> Event {
    Event {
        warning: false,
        reason,
        message,
    }
}

impl View<'_, '_> {
    fn before(&self) -> &RolloutStatus {
        self.input.status
    }

    fn after(&self) -> &RolloutStatus {
        &self.plan.status
    }

    fn rs_name(&self, hash: &str) -> String {
        format!("{}-{hash}", self.input.name)
    }

    /// The revision the ReplicaSet with `hash` has once the plan is carried out.
    fn revision(&self, hash: &str) -> i64 {
        self.plan
            .actions
            .iter()
            .find_map(|a| match a {
                Action::CreateReplicaSet {
                    pod_template_hash,
                    revision,
                    ..
                }
                | Action::SetRevision {
                    pod_template_hash,
                    revision,
                } if pod_template_hash == hash => Some(*revision),
                _ => None,
            })
            .or_else(|| {
                self.input
                    .observed
                    .replica_sets
                    .iter()
                    .find(|rs| rs.pod_template_hash == hash)
                    .map(|rs| rs.revision)
            })
            .unwrap_or(1)
    }

    fn created(&self) -> Vec<Event> {
        self.plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateReplicaSet {
                    pod_template_hash,
                    revision,
                    ..
                } => Some(normal(
                    NEW_REPLICA_SET_CREATED,
                    format!(
                        "Created ReplicaSet {} (revision {revision})",
                        self.rs_name(pod_template_hash)
                    ),
                )),
                _ => None,
            })
            .collect()
    }

    /// Argo's canary records its first revision as not completed before completing it; any
    /// update that makes the Completed condition False is recorded too.
    fn not_completed(&self) -> Option<Event> {
        let completed = |s: &RolloutStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == reason::COMPLETED)
                .map(|c| c.status == "True")
        };
        let (old, new) = (self.before(), self.after());
        let first = old.stable_rs.is_empty() && !new.stable_rs.is_empty();
        let blue_green = self.input.spec.strategy.blue_green.is_some();
        let now_false = completed(new) == Some(false) && completed(old) != Some(false);
        let not_completed = if first {
            // Argo's blue-green promotes its first revision within the same reconcile.
            !blue_green
        } else {
            now_false
        };
        not_completed.then(|| {
            normal(
                ROLLOUT_NOT_COMPLETED,
                format!(
                    "Rollout not completed, started update to revision {} ({})",
                    self.revision(&new.current_pod_hash),
                    new.current_pod_hash
                ),
            )
        })
    }

    fn scaled(&self) -> Vec<Event> {
        let observed = &self.input.observed.replica_sets;
        self.plan
            .actions
            .iter()
            .filter_map(|a| {
                let (hash, from, to) = match a {
                    Action::CreateReplicaSet {
                        pod_template_hash,
                        replicas,
                        ..
                    } => (pod_template_hash, 0, *replicas),
                    Action::ScaleReplicaSet {
                        pod_template_hash,
                        replicas,
                    } => {
                        let from = observed
                            .iter()
                            .find(|rs| &rs.pod_template_hash == pod_template_hash)
                            .map_or(0, |rs| rs.replicas);
                        (pod_template_hash, from, *replicas)
                    }
                    _ => return None,
                };
                (from != to).then(|| {
                    normal(
                        SCALING_REPLICA_SET,
                        format!(
                            "Scaled {} ReplicaSet {} (revision {}) from {from} to {to}",
                            if to > from { "up" } else { "down" },
                            self.rs_name(hash),
                            self.revision(hash)
                        ),
                    )
                })
            })
            .collect()
    }

    /// Argo's `sendStateChangeEvents`: a pause condition appeared, or all went without an abort.
    fn paused_or_resumed(&self) -> Option<Event> {
        let (old, new) = (self.before(), self.after());
        match (
            old.pause_conditions.is_empty(),
            new.pause_conditions.first(),
        ) {
            (true, Some(pause)) => {
                let why = serde_json::to_value(pause.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                Some(normal(
                    reason::ROLLOUT_PAUSED,
                    format!("Rollout is paused ({why})"),
                ))
            }
            (false, None) if new.aborted_at.is_none() && !new.abort => {
                Some(normal(reason::ROLLOUT_RESUMED, "Rollout is resumed".into()))
            }
            _ => None,
        }
    }

    /// Argo's `promoteStable`: the stable ReplicaSet became the current one.
    fn completed(&self) -> Option<Event> {
        let (old, new) = (self.before(), self.after());
        if new.stable_rs.is_empty()
            || new.stable_rs == old.stable_rs
            || new.stable_rs != new.current_pod_hash
        {
            return None;
        }
        let why = if old.stable_rs.is_empty() {
            "Initial deploy".to_string()
        } else if self.input.spec.strategy.blue_green.is_some() {
            "Completed blue-green update".to_string()
        } else {
            format!(
                "Completed all {} canary steps",
                self.input
                    .spec
                    .strategy
                    .canary
                    .as_ref()
                    .map_or(0, |c| c.steps().len())
            )
        };
        Some(normal(
            reason::ROLLOUT_COMPLETED,
            format!(
                "Rollout completed update to revision {} ({}): {why}",
                self.revision(&new.stable_rs),
                new.stable_rs
            ),
        ))
    }
}
