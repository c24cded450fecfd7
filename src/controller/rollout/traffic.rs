//! The Rollout's traffic routers, as the controller drives them: read back the weight each router
//! really applies (the engine's `Observations::traffic`), and carry out the engine's traffic
//! actions (weights, header and mirror routes, release) through every router the Rollout names.
//!
//! A router that cannot be read makes the observation unknown (`None`), and routers that disagree
//! make it unverified, so the engine never advances a step on doubtful data.
//!
//! Routers read their objects through the controller's shared route caches
//! ([`RouteObjects`]), never with a GET per reconcile; each read also files the object under this
//! Rollout, so a change to it wakes the Rollout.
//!
//! This module must never choose a weight or a route: they come from the plan and the spec.

use crate::api::argo::rollout::{
    CanaryStatus, CanaryStrategy, Rollout, RolloutSpec, RolloutStatus, WeightDestination,
};
use crate::engine::{Action, TrafficObservation, ping_pong};
use std::sync::Arc;

use crate::traffic::cache::RouteObjects;
use crate::traffic::{
    HeaderRoute, MirrorRoute, Router, RouterContext, TrafficError, Weights, routers_for,
};
use kube::ResourceExt;

/// The routers of one Rollout, ready to use.
pub struct Traffic {
    routers: Vec<Box<dyn Router>>,
    ctx: RouterContext,
    canary: CanaryStrategy,
    /// `status.currentPodHash` and `status.stableRS` when planning started.
    current_hash: String,
    stable_hash: String,
    /// `status.canary`, for pingPong's roles: as planning started, then as planned
    /// ([`Self::follow`]).
    canary_status: CanaryStatus,
}

impl Traffic {
    /// The routers `spec` names, or `None` for a Rollout without `trafficRouting`.
    pub fn new(
        client: &kube::Client,
        objects: &Arc<RouteObjects>,
        rollout: &Rollout,
        spec: &RolloutSpec,
    ) -> Result<Option<Self>, TrafficError> {
        let Some(canary) = spec.strategy.canary.as_ref() else {
            return Ok(None);
        };
        let Some(routing) = canary.traffic_routing.as_ref() else {
            return Ok(None);
        };
        let status = rollout.status.clone().unwrap_or_default();
        Ok(Some(Self {
            routers: routers_for(routing)?,
            ctx: RouterContext {
                client: client.clone(),
                namespace: rollout.namespace().unwrap_or_default(),
                rollout: rollout.name_any(),
                rollout_uid: rollout.uid().unwrap_or_default(),
                objects: objects.clone(),
            },
            canary: canary.clone(),
            current_hash: status.current_pod_hash,
            stable_hash: status.stable_rs,
            canary_status: status.canary,
        }))
    }

    /// Execute the plan's actions with the pingPong roles it decided (a promotion swaps them).
    pub fn follow(&mut self, planned: &RolloutStatus) {
        self.canary_status = planned.canary.clone();
    }

    /// What `router` is asked: its stable and canary Services are `stableService` /
    /// `canaryService`, or pingPong's in their current roles where Argo routes to those.
    fn weights(
        &self,
        router: &dyn Router,
        canary: i32,
        canary_hash: &str,
        stable_hash: &str,
        additional: &[WeightDestination],
    ) -> Weights {
        let mut stable_service = self.canary.stable_service.clone().unwrap_or_default();
        let mut canary_service = self.canary.canary_service.clone().unwrap_or_default();
        if let Some((stable, canary)) = ping_pong::roles(&self.canary, &self.canary_status)
            && (router.prefers_ping_pong()
                || (stable_service.is_empty() && canary_service.is_empty()))
        {
            stable_service = stable.to_owned();
            canary_service = canary.to_owned();
        }
        Weights {
            canary,
            max_weight: self.canary.max_traffic_weight(),
            canary_service,
            stable_service,
            canary_hash: canary_hash.to_string(),
            stable_hash: stable_hash.to_string(),
            additional: additional.to_vec(),
        }
    }

    /// The weights the routers apply: `None` when any router cannot be read, unverified when
    /// they disagree (then the highest weight any of them gives the canary is reported, and the
    /// additional destinations of the first).
    pub async fn observe(&self) -> Option<TrafficObservation> {
        let mut seen = Vec::with_capacity(self.routers.len());
        for router in &self.routers {
            let weights = self.weights(
                router.as_ref(),
                0,
                &self.current_hash,
                &self.stable_hash,
                &[],
            );
            match router.observe(&self.ctx, &weights).await {
                Ok(observed) => seen.push((observed.canary?, observed.additional)),
                Err(error) => {
                    tracing::warn!(rollout = %self.ctx.rollout, router = router.name(), %error, "reading the applied weight");
                    return None;
                }
            }
        }
        let canary_weight = seen.iter().map(|(w, _)| *w).max()?;
        let additional = seen.first().map(|(_, a)| a.clone()).unwrap_or_default();
        Some(TrafficObservation {
            canary_weight,
            verified: seen
                .iter()
                .all(|(w, a)| *w == canary_weight && *a == additional),
            additional,
        })
    }

    /// Carries out a traffic action through every router; other actions are not ours. A router
    /// that fails does not keep the others from acting (an object created after the Rollout, or
    /// deleted, must not hold the routers that can act); the first failure is returned, so the
    /// reconcile is retried and the weights stay unverified meanwhile.
    pub async fn execute(&self, action: &Action) -> Result<(), TrafficError> {
        let mut first_error = None;
        for router in &self.routers {
            if let Err(error) = self.execute_on(router.as_ref(), action).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn execute_on(&self, router: &dyn Router, action: &Action) -> Result<(), TrafficError> {
        let current = self.weights(router, 0, &self.current_hash, &self.stable_hash, &[]);
        match action {
            Action::SetWeight {
                canary_weight,
                canary_hash,
                stable_hash,
                additional,
            } => {
                let weights =
                    self.weights(router, *canary_weight, canary_hash, stable_hash, additional);
                router.set_weight(&self.ctx, &weights).await
            }
            Action::SetHeaderRoute { step_index } => {
                let Some(step) = self
                    .step(*step_index)
                    .and_then(|s| s.set_header_route.as_ref())
                else {
                    return Ok(());
                };
                let route = HeaderRoute {
                    name: step.name.clone().unwrap_or_default(),
                    matches: step.r#match.clone().unwrap_or_default(),
                };
                router.set_header_route(&self.ctx, &current, &route).await
            }
            Action::SetMirrorRoute { step_index } => {
                let Some(step) = self
                    .step(*step_index)
                    .and_then(|s| s.set_mirror_route.as_ref())
                else {
                    return Ok(());
                };
                let route = MirrorRoute {
                    name: step.name.clone(),
                    matches: step.r#match.clone().unwrap_or_default(),
                    percentage: step.percentage,
                };
                router.set_mirror_route(&self.ctx, &current, &route).await
            }
            Action::RemoveManagedRoutes => router.remove_managed_routes(&self.ctx).await,
            Action::ReleaseTraffic => router.release(&self.ctx, &current).await,
            _ => Ok(()),
        }
    }

    fn step(&self, index: i32) -> Option<&crate::api::argo::rollout::CanaryStep> {
        let index = usize::try_from(index).ok()?;
        self.canary.steps.as_ref()?.get(index)
    }
}
