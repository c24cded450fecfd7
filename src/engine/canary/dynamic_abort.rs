//! An abort with `dynamicStableScale`, Argo Rollouts' semantics: the stable ReplicaSet (scaled
//! down while the canary took traffic) cannot take all traffic back at once, so traffic steps
//! back through the `setWeight` steps as the stable's pods become available, and the canary's
//! pods go only as traffic leaves them (Argo's `GetDesiredCanaryWeight` and
//! `calculateDesiredWeightOnAbortOrStableRollback`). The canary Service goes back to the stable
//! pods once no traffic is left on the canary.
//!
//! Without an explicit `abortScaleDownDelaySeconds` the canary follows the weight down; with one,
//! it keeps its pods until the scale-down deadline as on any routed abort.
//!
//! Going back to the stable template in the middle of an update (`undo`) is the same hand-back
//! (Argo's `IsDynamicallyRollingBackToStable`): traffic stays split between the stable and the
//! *previous* canary, named by the recorded weights, until the stable's pods can take it all. Must never put more
//! traffic on the stable side than its available pods can serve, nor more on the canary than it
//! had when the abort began.

use crate::engine::replicas;

use super::Planner;

impl Planner<'_> {
    /// An abort that hands traffic back step by step (dynamicStableScale with a router).
    pub(super) fn dynamic_abort(&self) -> bool {
        self.status.abort
            && !self.promoted()
            && self.has_router()
            && self.canary().dynamic_stable_scale()
            && self.rs(self.current()).is_some()
            && self.rs(&self.status.stable_rs).is_some()
    }

    /// The previous canary's hash while the template is back on the stable one with
    /// dynamicStableScale and a router, and the stable is not yet fully available: that canary
    /// keeps its pods, the canary Service and its share of traffic until the stable can serve it.
    pub(super) fn dynamic_stable_rollback(&self) -> Option<String> {
        if !self.promoted() || !self.has_router() || !self.canary().dynamic_stable_scale() {
            return None;
        }
        let previous = &self.old.canary.weights.as_ref()?.canary.pod_template_hash;
        if previous == self.current() || self.rs(previous).is_none() {
            return None;
        }
        let stable = self.rs(self.current())?;
        (stable.available_replicas < self.spec.replicas()).then(|| previous.clone())
    }

    /// The previous canary of such a rollback while it still holds traffic: it stays named by
    /// the weights and the canary Service, and keeps its pods, until the routers report none left
    /// on it (Argo's `isReplicaSetReferenced`), however the stable's availability moves.
    pub(super) fn previous_canary(&self) -> Option<String> {
        if let Some(previous) = self.dynamic_stable_rollback() {
            return Some(previous);
        }
        if !self.promoted() || !self.has_router() || !self.canary().dynamic_stable_scale() {
            return None;
        }
        let previous = &self.old.canary.weights.as_ref()?.canary.pod_template_hash;
        let holds_traffic = self
            .observed
            .traffic
            .as_ref()
            .is_some_and(|t| t.canary_weight > 0);
        (previous != self.current() && self.rs(previous).is_some() && holds_traffic)
            .then(|| previous.clone())
    }

    /// The canary keeps following the weight down (no scale-down deadline): Argo's
    /// `shouldDelayScaleDownOnAbort` is false with dynamicStableScale unless
    /// `abortScaleDownDelaySeconds` is set explicitly.
    pub(super) fn abort_follows_weight(&self) -> bool {
        self.dynamic_abort() && self.canary().abort_scale_down_delay_seconds.is_none()
    }

    /// Argo's `GetDesiredCanaryWeight` on such an abort: the largest `setWeight` step that needs
    /// fewer pods than the canary must still serve (those the stable cannot serve yet, or the
    /// canary's available pods, whichever is more); 0 when none does.
    pub(super) fn dynamic_abort_canary_weight(&self) -> i32 {
        let (Some(new), Some(stable)) = (self.rs(self.current()), self.rs(&self.status.stable_rs))
        else {
            return 0;
        };
        let spec_replicas = self.spec.replicas();
        let max = self.canary().max_traffic_weight();
        let unserved = spec_replicas - stable.available_replicas;
        let needed = if self.canary().abort_scale_down_delay_seconds.is_some() {
            // The canary keeps its pods until its deadline: they must not hold the weight up.
            unserved
        } else {
            unserved.max(new.available_replicas)
        };
        self.steps()
            .iter()
            .rev()
            .filter_map(|s| s.set_weight)
            .find(|&w| replicas::weight_to_replicas(spec_replicas, w, max) < needed)
            .unwrap_or(0)
    }

    /// Argo's `calculateDesiredWeightOnAbortOrStableRollback`: the router weight for `desired`,
    /// never lowered below what the stable's available pods cannot serve and never raised above
    /// what is applied now.
    pub(super) fn dynamic_abort_router_weight(&self, desired: i32) -> i32 {
        let spec_replicas = self.spec.replicas();
        let Some(stable) = self.rs(&self.status.stable_rs) else {
            return 0;
        };
        if spec_replicas <= 0 {
            return 0;
        }
        let max = self.canary().max_traffic_weight();
        let stable_weight = max * stable.available_replicas / spec_replicas;
        let expected = (max - stable_weight).max(0);
        // What the routers report, else what the status last recorded (Argo reads only the
        // latter); with neither, nothing says the stable cannot take it all back.
        let recorded = self.old.canary.weights.as_ref().map(|w| w.canary.weight);
        let Some(current) = self
            .observed
            .traffic
            .as_ref()
            .map(|t| t.canary_weight)
            .or(recorded)
        else {
            return 0;
        };
        if desired <= 0 {
            // A stable whose availability flaps never pulls traffic back to the canary.
            return expected.min(current);
        }
        if stable_weight < max - desired {
            // The stable is still scaling up: keep the weight as it is.
            return current;
        }
        desired.min(current)
    }
}
