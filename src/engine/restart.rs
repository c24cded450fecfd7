//! `spec.restartAt`: a rolling recreate of every pod created before that time, without a new
//! revision and without the canary steps, as Argo Rollouts' pod restarter does it.
//!
//! Argo's budget: at most `max(maxUnavailable, 1)` pods may be unavailable, counted against
//! `max(spec.replicas, pods the ReplicaSets want)`; each decision evicts as many old pods as
//! that leaves room for (`maxUnavailable: 75%` of 4 evicts 3 at once). An eviction a
//! PodDisruptionBudget refuses is simply tried again on a later decision. ReplicaSets are visited
//! stable first, then the current one, then the others oldest first. When no pod is older than
//! `restartAt` (terminating ones included), `status.restartedAt` records it. While pods are
//! missing from the observations (the cache lags behind the ReplicaSet), nothing is decided: a
//! restart never completes, nor evicts, on data that could be incomplete.
//!
//! Pure, like the rest of the engine: the caller executes the evictions and writes the status.

use k8s_openapi::jiff::Timestamp;

use crate::engine::{PodObservation, ReplicaSetObservation};

/// What the restart wants now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// No restart asked for, or it is done.
    Idle,
    /// `restartAt` is this many seconds in the future.
    Later(i64),
    /// No room in the budget (or the cache lags, or old pods are still terminating).
    Wait,
    /// Evict these pods.
    Evict(Vec<String>),
    /// Every pod is newer than `restartAt`.
    Done,
}

/// How many pods may be unavailable during the restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `maxUnavailable` resolved against `spec.replicas`.
    pub max_unavailable: i32,
}

/// The next restart decision. `sets` are the ReplicaSets in restart order.
pub fn next(
    restart_at: Option<Timestamp>,
    restarted_at: Option<Timestamp>,
    now: Timestamp,
    sets: &[&ReplicaSetObservation],
    pods: &[PodObservation],
    budget: Budget,
) -> Restart {
    let Some(at) = restart_at else {
        return Restart::Idle;
    };
    if restarted_at == Some(at) {
        return Restart::Idle;
    }
    if now < at {
        return Restart::Later(at.as_second() - now.as_second());
    }
    let mut old_pods: Vec<&PodObservation> = Vec::new();
    let mut old_terminating = false;
    let (mut wanted, mut available) = (0, 0);
    for rs in sets {
        let hash = rs.pod_template_hash.as_str();
        let of_rs: Vec<&PodObservation> = pods
            .iter()
            .filter(|p| p.pod_template_hash == hash)
            .collect();
        let live = of_rs.iter().filter(|p| !p.terminating).count();
        let live = i32::try_from(live).unwrap_or(i32::MAX);
        if live < rs.status_replicas {
            // Pods the ReplicaSet reports are not all visible yet.
            return Restart::Wait;
        }
        wanted += rs.replicas.max(0);
        // A pod just evicted may still count as available in the ReplicaSet's status (its watch
        // lags behind the pods'): terminating pods are never counted, at worst twice; nor are
        // its replacements until they are Ready (gone at once, as pods without a grace period
        // are, the evicted pods leave no trace but a status that still counts them).
        let terminating = of_rs.iter().filter(|p| p.terminating).count();
        let terminating = i32::try_from(terminating).unwrap_or(i32::MAX);
        let ready = of_rs.iter().filter(|p| !p.terminating && p.ready).count();
        let ready = i32::try_from(ready).unwrap_or(i32::MAX);
        available += (rs.available_replicas - terminating)
            .min(ready)
            .clamp(0, live);
        old_terminating |= of_rs.iter().any(|p| p.terminating && p.created < at);
        let mut old: Vec<&PodObservation> = of_rs
            .into_iter()
            .filter(|p| !p.terminating && p.created < at)
            .collect();
        old.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        old_pods.extend(old);
    }
    if old_pods.is_empty() {
        return if old_terminating {
            Restart::Wait
        } else {
            Restart::Done
        };
    }
    let concurrent = budget.max_unavailable.max(1);
    let min_available = budget.replicas.max(wanted) - concurrent;
    let room = usize::try_from(available - min_available).unwrap_or(0);
    if room == 0 {
        return Restart::Wait;
    }
    Restart::Evict(
        old_pods
            .into_iter()
            .take(room)
            .map(|p| p.name.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn rs(hash: &str, replicas: i32, available: i32) -> ReplicaSetObservation {
        ReplicaSetObservation {
            pod_template_hash: hash.into(),
            replicas,
            status_replicas: replicas,
            ready_replicas: available,
            available_replicas: available,
            revision: 1,
            ..Default::default()
        }
    }

    fn pod(name: &str, hash: &str, created: i64, terminating: bool) -> PodObservation {
        PodObservation {
            name: name.into(),
            pod_template_hash: hash.into(),
            created: t(created),
            terminating,
            ready: !terminating,
        }
    }

    fn budget(replicas: i32, max_unavailable: i32) -> Budget {
        Budget {
            replicas,
            max_unavailable,
        }
    }

    fn evict(names: &[&str]) -> Restart {
        Restart::Evict(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn restarts_as_many_pods_as_max_unavailable_allows() {
        let (s2, s3, c1) = (rs("s", 2, 2), rs("s", 3, 3), rs("c", 1, 1));
        let (short, empty, lagging) = (rs("s", 2, 1), rs("s", 0, 0), rs("s", 2, 2));
        struct Case<'a> {
            what: &'static str,
            at: Option<i64>,
            done: Option<i64>,
            sets: Vec<&'a ReplicaSetObservation>,
            pods: Vec<PodObservation>,
            budget: Budget,
            want: Restart,
        }
        let stable_pods = || vec![pod("a", "s", 1, false), pod("b", "s", 2, false)];
        let cases = vec![
            Case {
                what: "no restartAt",
                at: None,
                done: None,
                sets: vec![&s2],
                pods: stable_pods(),
                budget: budget(2, 0),
                want: Restart::Idle,
            },
            Case {
                what: "already restarted at that time",
                at: Some(50),
                done: Some(50),
                sets: vec![&s2],
                pods: stable_pods(),
                budget: budget(2, 0),
                want: Restart::Idle,
            },
            Case {
                what: "restartAt in the future",
                at: Some(130),
                done: None,
                sets: vec![&s2],
                pods: stable_pods(),
                budget: budget(2, 0),
                want: Restart::Later(30),
            },
            Case {
                what: "Argo's TestRolloutRestart: maxUnavailable 3 of 4 evicts 3 at once, stable first",
                at: Some(50),
                done: None,
                sets: vec![&s3, &c1],
                pods: vec![
                    pod("c1", "c", 0, false),
                    pod("d", "s", 3, false),
                    pod("b", "s", 2, false),
                    pod("a", "s", 1, false),
                ],
                budget: budget(4, 3),
                want: evict(&["a", "b", "d"]),
            },
            Case {
                what: "maxUnavailable 0 still restarts one pod at a time",
                at: Some(50),
                done: None,
                sets: vec![&s2],
                pods: stable_pods(),
                budget: budget(2, 0),
                want: evict(&["a"]),
            },
            Case {
                what: "surge pods count: the budget is against what the ReplicaSets want",
                at: Some(50),
                done: None,
                sets: vec![&s3, &c1],
                pods: vec![
                    pod("a", "s", 1, false),
                    pod("b", "s", 2, false),
                    pod("d", "s", 3, false),
                    pod("c1", "c", 4, false),
                ],
                budget: budget(3, 1),
                want: evict(&["a"]),
            },
            Case {
                what: "no room while a pod is unavailable",
                at: Some(50),
                done: None,
                sets: vec![&short],
                pods: stable_pods(),
                budget: budget(2, 0),
                want: Restart::Wait,
            },
            Case {
                what: "a terminating pod no longer counts as available",
                at: Some(50),
                done: None,
                sets: vec![&lagging],
                pods: vec![
                    pod("a", "s", 1, true),
                    pod("b", "s", 2, false),
                    pod("a2", "s", 60, false),
                ],
                budget: budget(2, 0),
                want: Restart::Wait,
            },
            Case {
                what: "evicted pods gone at once, the status still counting them: replacements \
                       count only once Ready",
                at: Some(50),
                done: None,
                sets: vec![&s3, &c1],
                pods: vec![
                    pod("c1", "c", 0, false),
                    PodObservation {
                        ready: false,
                        ..pod("a2", "s", 60, false)
                    },
                    PodObservation {
                        ready: false,
                        ..pod("b2", "s", 60, false)
                    },
                    PodObservation {
                        ready: false,
                        ..pod("d2", "s", 60, false)
                    },
                ],
                budget: budget(4, 3),
                want: Restart::Wait,
            },
            Case {
                what: "pods not in the cache yet: wait, never done",
                at: Some(50),
                done: None,
                sets: vec![&s2],
                pods: vec![pod("a", "s", 60, false)],
                budget: budget(2, 0),
                want: Restart::Wait,
            },
            Case {
                what: "only terminating old pods left: wait for them",
                at: Some(50),
                done: None,
                sets: vec![&s2],
                pods: vec![
                    pod("a", "s", 1, true),
                    pod("a2", "s", 60, false),
                    pod("b2", "s", 61, false),
                ],
                budget: budget(2, 0),
                want: Restart::Wait,
            },
            Case {
                what: "every pod newer: done (scaled-down sets are skipped)",
                at: Some(50),
                done: Some(10),
                sets: vec![&empty, &c1],
                pods: vec![pod("c1", "c", 70, false)],
                budget: budget(1, 0),
                want: Restart::Done,
            },
        ];
        for case in cases {
            let got = next(
                case.at.map(t),
                case.done.map(t),
                t(100),
                &case.sets,
                &case.pods,
                case.budget,
            );
            assert_eq!(got, case.want, "{}", case.what);
        }
    }
}
