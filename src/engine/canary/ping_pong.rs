//! Argo Rollouts' `pingPong`: two Services (`pingService`, `pongService`) that trade the stable
//! and canary roles at every promotion instead of the stable Service's selector moving to the
//! promoted pods. `status.canary.stablePingPong` says which one serves stable (`ping`; anything
//! else — `pong` or empty — means the pong Service, as Argo's `IsStablePing`); it flips when a
//! new ReplicaSet becomes stable, the first deploy included (so that one ends as `ping`).
//!
//! Which routers send traffic to these Services (ALB; Istio only without stableService and
//! canaryService) is the spec's and `crate::traffic`'s business; this module only names the roles
//! and must never decide a weight or a selector.

use super::Planner;
use crate::api::argo::rollout::{CanaryStatus, CanaryStrategy};

/// `status.canary.stablePingPong` when the ping Service serves stable.
pub const PING: &str = "ping";
/// `status.canary.stablePingPong` when the pong Service serves stable.
pub const PONG: &str = "pong";

/// The (stable, canary) Services of `pingPong` now, when it is set.
pub fn roles<'a>(canary: &'a CanaryStrategy, status: &CanaryStatus) -> Option<(&'a str, &'a str)> {
    let ping_pong = canary.ping_pong.as_ref()?;
    let (ping, pong) = (
        ping_pong.ping_service.as_str(),
        ping_pong.pong_service.as_str(),
    );
    Some(if status.stable_ping_pong == PING {
        (ping, pong)
    } else {
        (pong, ping)
    })
}

/// `stablePingPong` after a promotion: the canary's Service now serves stable.
pub fn swapped(stable_ping_pong: &str) -> &'static str {
    if stable_ping_pong == PING { PONG } else { PING }
}

impl<'a> Planner<'a> {
    /// A new ReplicaSet became stable: with `pingPong`, its Service takes the stable role.
    pub(super) fn swap_ping_pong(&mut self) {
        if self.canary().ping_pong.is_some() {
            let next = swapped(&self.status.canary.stable_ping_pong);
            self.status.canary.stable_ping_pong = next.to_owned();
        }
    }

    /// The Services that reach each side, (stable, canary): `stableService` / `canaryService`
    /// and `pingPong`'s two in their current roles.
    pub(super) fn role_services(&self) -> (Vec<&'a str>, Vec<&'a str>) {
        let canary = self.canary();
        let ping_pong = roles(canary, &self.status.canary);
        let stable = [canary.stable_service.as_deref(), ping_pong.map(|r| r.0)];
        let canary_side = [canary.canary_service.as_deref(), ping_pong.map(|r| r.1)];
        (
            stable.into_iter().flatten().collect(),
            canary_side.into_iter().flatten().collect(),
        )
    }
}
