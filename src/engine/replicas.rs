//! Replica math for the canary strategy, ported from Argo Rollouts' `utils/replicaset/canary.go`
//! so that a Rollout scales exactly as it did under Argo.
//!
//! Without a router the weight is a replica ratio bounded by maxSurge / maxUnavailable; with a router
//! the canary follows the weight (or setCanaryScale) and the stable stays full unless
//! dynamicStableScale is on. Pure integer arithmetic; never panics on any input.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The counts of one ReplicaSet the math needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsCounts {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// Resolve an int-or-percent against `total`. Strings without `%` read as percentages, as Argo's
/// deprecated parser does (its own default is the string "25").
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or(s);
            let percent: i64 = digits
                .parse()
                .map_err(|_| format!("invalid value {s:?}: must be an integer or a percentage"))?;
            let scaled = i64::from(total) * percent;
            let value = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            i32::try_from(value).map_err(|_| format!("value {s:?} is out of range"))
        }
    }
}

/// Argo's `resolveFenceposts`: maxSurge rounds up, maxUnavailable down, and if both resolve to 0
/// maxUnavailable becomes 1. Defaults are 25% each.
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let default = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&default), desired, true)?;
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&default), desired, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge.max(0), unavailable.clamp(0, desired.max(0))))
}

/// Argo's `approximateWeightedCanaryStableReplicaCounts`: the canary and stable counts closest to
/// the weight. The total is `replicas` or `replicas + 1` (only with surge); when the weight is
/// 1..=99 neither side rounds to zero unless a single replica cannot surge. Ties round up.
pub fn approximate_weighted_counts(replicas: i32, weight: i32, max_surge: i32) -> (i32, i32) {
    if replicas <= 0 {
        return (0, 0);
    }
    let weight = weight.clamp(0, 100);
    let product = i64::from(replicas) * i64::from(weight);
    let ceil = ((product + 99) / 100) as i32;
    let floor = (product / 100) as i32;
    let tied = |total: i32| (i64::from(total) * i64::from(weight)) % 100 == 50;
    let zero_allowed = weight == 100 || weight == 0 || (replicas == 1 && max_surge == 0);

    let mut options: Vec<(i32, i32)> = Vec::with_capacity(4);
    if ceil < replicas || zero_allowed {
        options.push((ceil, replicas));
    }
    if !tied(replicas) && (floor != 0 || zero_allowed) {
        options.push((floor, replicas));
    }
    if max_surge > 0 {
        options.push((ceil, replicas + 1));
        if !tied(replicas + 1) && (floor != 0 || zero_allowed) {
            options.push((floor, replicas + 1));
        }
    }
    let delta = |(canary, total): (i32, i32)| {
        (f64::from(canary) * 100.0 / f64::from(total) - f64::from(weight)).abs()
    };
    let Some(mut best) = options.first().copied() else {
        return (0, replicas);
    };
    for option in options.into_iter().skip(1) {
        if delta(option) < delta(best) {
            best = option;
        }
    }
    (best.0, best.1 - best.0)
}

/// Inputs of the replica-ratio canary (no traffic router).
#[derive(Clone, Debug)]
pub struct BasicCanary {
    pub spec_replicas: i32,
    pub weight: i32,
    pub max_surge: i32,
    pub max_unavailable: i32,
    /// The ReplicaSet of the current template, if it exists.
    pub new_rs: Option<RsCounts>,
    /// The stable ReplicaSet, if it exists and differs from the new one.
    pub stable_rs: Option<RsCounts>,
    /// Sum of `spec.replicas` of every other ReplicaSet.
    pub other_replicas: i32,
}

/// Argo's `CalculateReplicaCountsForBasicCanary`: the next (new, stable) counts, moving towards the
/// weight without breaking maxSurge or maxUnavailable.
pub fn basic_canary_counts(c: &BasicCanary) -> (i32, i32) {
    let (mut desired_new, mut desired_stable) =
        approximate_weighted_counts(c.spec_replicas, c.weight, c.max_surge);
    let mut new_count = c.new_rs.map_or(0, |rs| rs.replicas);
    let mut stable_count = 0;
    match c.stable_rs {
        Some(rs) => stable_count = rs.replicas,
        None => {
            desired_new = c.spec_replicas;
            desired_stable = 0;
        }
    }

    let max_allowed = c.spec_replicas + c.max_surge;
    let total = c.other_replicas + new_count + c.stable_rs.map_or(0, |rs| rs.replicas);
    let mut scale_up = max_allowed - total;

    if let Some(stable) = c.stable_rs
        && stable.replicas < desired_stable
        && scale_up > 0
    {
        if stable.replicas + scale_up < desired_stable {
            stable_count = stable.replicas + scale_up;
            scale_up = 0;
        } else {
            stable_count = desired_stable;
            scale_up -= desired_stable - stable.replicas;
        }
    }
    if let Some(new) = c.new_rs
        && new.replicas < desired_new
        && scale_up > 0
    {
        new_count = (new.replicas + scale_up).min(desired_new);
    }

    if c.other_replicas > 0 {
        // Older ReplicaSets are scaled down first.
        return (new_count, stable_count);
    }

    let min_available = c.spec_replicas - c.max_unavailable;
    let increasing = c.new_rs.is_none_or(|new| desired_new >= new.replicas);
    let to_scale_down = replicas_for_scale_down(c.new_rs, !increasing)
        + replicas_for_scale_down(c.stable_rs, increasing);
    if to_scale_down <= min_available {
        return (new_count, stable_count);
    }
    let scale_down = to_scale_down - min_available;
    if !increasing {
        new_count = scale_down_count(c.new_rs, desired_new, scale_down, new_count);
        (new_count, stable_count) = adjust_within_limits(
            c.new_rs,
            c.stable_rs,
            new_count,
            stable_count,
            max_allowed,
            min_available,
        );
    } else if c.stable_rs.is_some() {
        stable_count = scale_down_count(c.stable_rs, desired_stable, scale_down, stable_count);
        (stable_count, new_count) = adjust_within_limits(
            c.stable_rs,
            c.new_rs,
            stable_count,
            new_count,
            max_allowed,
            min_available,
        );
    }
    (new_count, stable_count)
}

fn replicas_for_scale_down(rs: Option<RsCounts>, ignore_availability: bool) -> i32 {
    match rs {
        None => 0,
        Some(rs) if rs.replicas < rs.available => rs.replicas,
        Some(rs) if ignore_availability => rs.replicas,
        Some(rs) => rs.available,
    }
}

fn scale_down_count(drain: Option<RsCounts>, desired: i32, scale_down: i32, current: i32) -> i32 {
    match drain {
        Some(rs) if rs.replicas > desired => desired.max(rs.replicas - scale_down),
        _ => current,
    }
}

fn adjust_within_limits(
    drain: Option<RsCounts>,
    adjust: Option<RsCounts>,
    mut drain_count: i32,
    mut adjust_count: i32,
    max_allowed: i32,
    min_available: i32,
) -> (i32, i32) {
    let mut over_limit = (adjust_count + drain_count - max_allowed).max(0);
    let mut total_available = drain.map_or(0, |rs| rs.available.min(drain_count));
    if let Some(adjust) = adjust {
        adjust_count -= over_limit;
        total_available += adjust.available.min(adjust_count);
        let extra_available = (adjust.available - adjust_count).max(0);
        let more_needed = (min_available - total_available).max(0);
        adjust_count += extra_available.min(more_needed);
        over_limit = (adjust_count + drain_count - max_allowed).max(0);
        drain_count -= over_limit;
    }
    (drain_count, adjust_count)
}

/// `ceil(replicas * weight / 100)`: replicas needed to serve a traffic weight.
pub fn traffic_weight_to_replicas(replicas: i32, weight: i32) -> i32 {
    weight_to_replicas(replicas, weight, 100)
}

/// `ceil(replicas * weight / max_weight)`: replicas needed to serve a weight in router units.
pub fn weight_to_replicas(replicas: i32, weight: i32, max_weight: i32) -> i32 {
    let max = max_weight.max(1);
    let product = i64::from(replicas.max(0)) * i64::from(weight.clamp(0, max));
    ((product + i64::from(max) - 1) / i64::from(max)) as i32
}

/// Inputs of the traffic-routed canary.
#[derive(Clone, Debug)]
pub struct RoutedCanary {
    pub spec_replicas: i32,
    /// Desired canary weight as a percentage of all traffic (0..=100).
    pub weight: i32,
    /// An explicit canary replica count from setCanaryScale.
    pub canary_replicas: Option<i32>,
    pub dynamic_stable_scale: bool,
    pub min_pods_per_replica_set: Option<i32>,
    /// Weights the router reports now, as percentages: (canary, stable).
    pub observed: Option<(i32, i32)>,
    pub aborted: bool,
}

/// Argo's `CalculateReplicaCountsForTrafficRoutedCanary`: (canary, stable) target counts.
pub fn routed_canary_counts(c: &RoutedCanary) -> (i32, i32) {
    let min_pods = |count: i32| match c.min_pods_per_replica_set {
        Some(min) if count > 0 => count.max(min),
        _ => count,
    };
    let mut canary = match c.canary_replicas {
        Some(n) => n.max(0),
        None => min_pods(traffic_weight_to_replicas(c.spec_replicas, c.weight)),
    };
    if !c.dynamic_stable_scale {
        return (canary, c.spec_replicas);
    }
    let mut stable = traffic_weight_to_replicas(c.spec_replicas, 100 - c.weight);
    if let Some((observed_canary, observed_stable)) = c.observed {
        stable = stable.max(traffic_weight_to_replicas(c.spec_replicas, observed_stable));
        if c.aborted {
            // Keep canary pods until traffic has really left them.
            canary = canary.max(traffic_weight_to_replicas(c.spec_replicas, observed_canary));
        }
    }
    (min_pods(canary), min_pods(stable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32, available: i32) -> Option<RsCounts> {
        Some(RsCounts {
            replicas,
            available,
        })
    }

    fn basic(
        spec: i32,
        weight: i32,
        surge: i32,
        unavailable: i32,
        new: Option<RsCounts>,
        stable: Option<RsCounts>,
    ) -> (i32, i32) {
        basic_canary_counts(&BasicCanary {
            spec_replicas: spec,
            weight,
            max_surge: surge,
            max_unavailable: unavailable,
            new_rs: new,
            stable_rs: stable,
            other_replicas: 0,
        })
    }

    /// The examples in Argo's doc comment on CalculateReplicaCountsForBasicCanary.
    #[test]
    fn argo_documented_examples() {
        assert_eq!(basic(10, 10, 1, 1, rs(0, 0), rs(10, 10)), (1, 9));
        assert_eq!(basic(10, 30, 3, 0, rs(0, 0), rs(10, 10)), (3, 10));
        assert_eq!(basic(10, 30, 0, 5, rs(0, 0), rs(10, 10)), (0, 7));
        // Upstream's comment says (1, 9): it predates the nearest-weight approximation, which
        // surges to 1 of 11 pods (9%, closer to 5% than 1 of 10) and keeps the stable at 10.
        assert_eq!(basic(10, 5, 1, 1, rs(0, 0), rs(10, 10)), (1, 10));
        assert_eq!(basic(1, 5, 1, 0, rs(0, 0), rs(1, 1)), (1, 1));
        assert_eq!(basic(1, 95, 1, 0, rs(0, 0), rs(1, 1)), (1, 1));
    }

    /// "Nearest whole number, ties round up, at least one pod each side for weights 1..=99."
    #[test]
    fn weighted_counts_round_to_nearest() {
        assert_eq!(approximate_weighted_counts(10, 20, 0), (2, 8));
        assert_eq!(approximate_weighted_counts(10, 25, 0), (3, 7)); // tie: 2.5 rounds up
        assert_eq!(approximate_weighted_counts(3, 50, 0), (2, 1)); // tie: 1.5 rounds up
        assert_eq!(approximate_weighted_counts(10, 1, 0), (1, 9)); // never zero canary
        assert_eq!(approximate_weighted_counts(10, 99, 0), (9, 1)); // never zero stable
        assert_eq!(approximate_weighted_counts(4, 50, 1), (2, 2));
        assert_eq!(approximate_weighted_counts(10, 25, 1), (3, 8)); // surge gives 27% (closer)
        assert_eq!(approximate_weighted_counts(1, 50, 0), (1, 0)); // one pod, no surge
        assert_eq!(approximate_weighted_counts(1, 50, 1), (1, 1)); // one pod with surge
        assert_eq!(approximate_weighted_counts(5, 0, 1), (0, 5));
        assert_eq!(approximate_weighted_counts(5, 100, 1), (5, 0));
        assert_eq!(approximate_weighted_counts(0, 50, 1), (0, 0));
    }

    #[test]
    fn fenceposts_follow_argo() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(fenceposts(None, None, 10), Ok((3, 2))); // 25%: surge rounds up, unavailable down
        assert_eq!(
            fenceposts(Some(&pct("0%")), Some(&pct("0%")), 10),
            Ok((0, 1))
        );
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(0)), Some(&pct("10%")), 4),
            Ok((0, 1))
        );
        assert_eq!(fenceposts(Some(&pct("25")), None, 4), Ok((1, 1))); // Argo reads "25" as 25%
        assert!(fenceposts(Some(&pct("many")), None, 4).is_err());
    }

    #[test]
    fn basic_canary_moves_within_surge_and_unavailable() {
        // 4 replicas, 50%, surge 1 / unavailable 0: first surge one canary, keep stable full.
        assert_eq!(basic(4, 50, 1, 0, rs(0, 0), rs(4, 4)), (1, 4));
        // Canary available: stable may drop by one.
        assert_eq!(basic(4, 50, 1, 0, rs(1, 1), rs(4, 4)), (1, 3));
        // Next: grow the canary into the freed slot.
        assert_eq!(basic(4, 50, 1, 0, rs(1, 1), rs(3, 3)), (2, 3));
        assert_eq!(basic(4, 50, 1, 0, rs(2, 2), rs(3, 3)), (2, 2));
        // Abort (weight 0): canary drains, stable returns.
        assert_eq!(basic(4, 0, 1, 0, rs(2, 2), rs(2, 2)), (2, 3));
        assert_eq!(basic(4, 0, 1, 0, rs(2, 2), rs(3, 3)), (1, 3));
    }

    #[test]
    fn no_stable_means_full_new() {
        assert_eq!(basic(3, 20, 1, 0, rs(0, 0), None), (3, 0));
    }

    #[test]
    fn routed_canary_follows_weight_and_keeps_stable_full() {
        let c = RoutedCanary {
            spec_replicas: 10,
            weight: 25,
            canary_replicas: None,
            dynamic_stable_scale: false,
            min_pods_per_replica_set: None,
            observed: None,
            aborted: false,
        };
        assert_eq!(routed_canary_counts(&c), (3, 10));
        assert_eq!(
            routed_canary_counts(&RoutedCanary {
                canary_replicas: Some(2),
                ..c.clone()
            }),
            (2, 10)
        );
        assert_eq!(
            routed_canary_counts(&RoutedCanary {
                weight: 1,
                min_pods_per_replica_set: Some(2),
                ..c.clone()
            }),
            (2, 10)
        );
        // Dynamic stable scale keeps the stable up to the weight it still serves.
        let dynamic = RoutedCanary {
            dynamic_stable_scale: true,
            weight: 60,
            observed: Some((25, 75)),
            ..c.clone()
        };
        assert_eq!(routed_canary_counts(&dynamic), (6, 8));
        let aborting = RoutedCanary {
            dynamic_stable_scale: true,
            weight: 0,
            observed: Some((60, 40)),
            aborted: true,
            ..c
        };
        assert_eq!(routed_canary_counts(&aborting), (6, 10));
    }
}
