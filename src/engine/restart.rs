//! `spec.restartAt`: a rolling recreate of every pod created before that time, without a new
//! revision and without the canary steps (Argo Rollouts' pod restarter).
//!
//! One pod at a time: a pod is evicted only when its ReplicaSet is fully available and none of its
//! pods is already terminating; the ReplicaSet controller then replaces it. ReplicaSets are visited
//! stable first, then the current one, then the others oldest first. When no pod is older than
//! `restartAt`, `status.restartedAt` records it. While pods are missing from the observations
//! (the cache lags behind the ReplicaSet), nothing is decided: a restart never completes on data
//! that could be incomplete.
//!
//! Pure, like the rest of the engine: the caller executes the eviction and writes the status.

use k8s_openapi::jiff::Timestamp;

use crate::engine::{PodObservation, ReplicaSetObservation};

/// What the restart wants now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// No restart asked for, or it is done.
    Idle,
    /// `restartAt` is this many seconds in the future.
    Later(i64),
    /// A ReplicaSet is not fully available yet, or a pod is still terminating.
    Wait,
    /// Evict this pod.
    Evict(String),
    /// Every pod is newer than `restartAt`.
    Done,
}

/// The next restart decision. `sets` are the ReplicaSets in restart order.
pub fn next(
    restart_at: Option<Timestamp>,
    restarted_at: Option<Timestamp>,
    now: Timestamp,
    sets: &[&ReplicaSetObservation],
    pods: &[PodObservation],
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
    for rs in sets.iter().filter(|rs| rs.replicas > 0) {
        let hash = rs.pod_template_hash.as_str();
        let of_rs = || pods.iter().filter(move |p| p.pod_template_hash == hash);
        let live = of_rs().filter(|p| !p.terminating).count();
        if i32::try_from(live).unwrap_or(i32::MAX) < rs.status_replicas {
            // Pods the ReplicaSet reports are not all visible yet.
            return Restart::Wait;
        }
        let oldest = of_rs()
            .filter(|p| !p.terminating && p.created < at)
            .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        let Some(oldest) = oldest else {
            continue;
        };
        let busy = of_rs().any(|p| p.terminating) || rs.available_replicas < rs.replicas;
        if busy {
            return Restart::Wait;
        }
        return Restart::Evict(oldest.name.clone());
    }
    Restart::Done
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
        }
    }

    #[test]
    fn restarts_one_pod_at_a_time_oldest_first() {
        let stable = rs("s", 2, 2);
        let canary = rs("c", 1, 1);
        let busy = rs("s", 2, 1);
        let empty = rs("s", 0, 0);
        struct Case<'a> {
            what: &'static str,
            at: Option<i64>,
            done: Option<i64>,
            now: i64,
            sets: Vec<&'a ReplicaSetObservation>,
            pods: Vec<PodObservation>,
            want: Restart,
        }
        let (stable, canary, busy, empty) = (&stable, &canary, &busy, &empty);
        let cases = vec![
            Case {
                what: "no restartAt",
                at: None,
                done: None,
                now: 100,
                sets: vec![stable],
                pods: vec![pod("a", "s", 0, false), pod("b", "s", 1, false)],
                want: Restart::Idle,
            },
            Case {
                what: "already restarted at that time",
                at: Some(50),
                done: Some(50),
                now: 100,
                sets: vec![stable],
                pods: vec![pod("a", "s", 0, false), pod("b", "s", 1, false)],
                want: Restart::Idle,
            },
            Case {
                what: "restartAt in the future",
                at: Some(130),
                done: None,
                now: 100,
                sets: vec![stable],
                pods: vec![pod("a", "s", 0, false), pod("b", "s", 1, false)],
                want: Restart::Later(30),
            },
            Case {
                what: "the oldest pod of the stable ReplicaSet goes first",
                at: Some(50),
                done: None,
                now: 100,
                sets: vec![stable, canary],
                pods: vec![
                    pod("c1", "c", 0, false),
                    pod("b", "s", 2, false),
                    pod("a", "s", 1, false),
                ],
                want: Restart::Evict("a".into()),
            },
            Case {
                what: "a terminating pod holds the next one back",
                at: Some(50),
                done: None,
                now: 100,
                sets: vec![stable],
                pods: vec![
                    pod("a", "s", 1, true),
                    pod("b", "s", 2, false),
                    pod("a2", "s", 60, false),
                ],
                want: Restart::Wait,
            },
            Case {
                what: "a ReplicaSet that is not fully available waits",
                at: Some(50),
                done: None,
                now: 100,
                sets: vec![busy],
                pods: vec![pod("a", "s", 60, false), pod("b", "s", 2, false)],
                want: Restart::Wait,
            },
            Case {
                what: "pods not in the cache yet: wait, never done",
                at: Some(50),
                done: None,
                now: 100,
                sets: vec![stable],
                pods: vec![pod("a", "s", 60, false)],
                want: Restart::Wait,
            },
            Case {
                what: "stable done, the canary next",
                at: Some(50),
                done: None,
                now: 100,
                sets: vec![stable, canary],
                pods: vec![
                    pod("a", "s", 60, false),
                    pod("b", "s", 61, false),
                    pod("c1", "c", 0, false),
                ],
                want: Restart::Evict("c1".into()),
            },
            Case {
                what: "every pod newer: done (scaled-down sets are skipped)",
                at: Some(50),
                done: Some(10),
                now: 100,
                sets: vec![empty, canary],
                pods: vec![pod("c1", "c", 70, false)],
                want: Restart::Done,
            },
        ];
        for case in cases {
            let got = next(
                case.at.map(t),
                case.done.map(t),
                t(case.now),
                &case.sets,
                &case.pods,
            );
            assert_eq!(got, case.want, "{}", case.what);
        }
    }
}
