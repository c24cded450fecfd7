//! Leader election on a `coordination.k8s.io/v1` Lease, so that with several replicas of the
//! controller only one acts.
//!
//! The timing is client-go's: the holder renews every [`RENEW_EVERY`] (2 s); a candidate takes
//! the Lease over once `renewTime + leaseDurationSeconds` ([`LEASE_DURATION`], 15 s) has passed.
//! Every write is a replace with the resourceVersion that was read, so two candidates can never
//! both win.
//!
//! A leader must stop acting before any other replica may take over, even when its connection
//! to the apiserver hangs rather than fails. So every election request has its own deadline: a
//! renewal must succeed within [`RENEW_DEADLINE`] (10 s) of the start of the last successful one
//! (whose `renewTime` is never earlier than that start), else [`Elector::keep`] returns at that
//! deadline, 5 s before the Lease can expire for the others. The caller then stops at once: the
//! controllers' futures are dropped and the process exits non-zero without a graceful drain
//! (no Lease release, no last status write), and the Deployment restarts it as a candidate.
//! Exiting is chosen over stopping the controllers in place because it also stops every
//! background task (Event and alert senders) and every watch cache that may be stale, with no
//! path that could forget one. A request already on the wire when the deadline passes may still
//! reach the apiserver late, as with client-go: election bounds when the leader *sends*, not when
//! the network delivers.
//!
//! On a clean shutdown the Lease is released (its duration set to 1 s), so the next leader starts
//! at once; the release gets [`RENEW_EVERY`] at most, so a hung connection cannot hold up the exit.
//!
//! This module decides only who leads; it never touches Rollouts or runs.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader may go without a successful renewal before it stops acting; shorter than
/// [`LEASE_DURATION`] by a margin for a slow exit and clock drift.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews and a candidate retries.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Errors of the election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "lost the leader Lease {namespace}/{name}: {last} ({seconds}s after the last renewal); \
         stopped acting and exiting so another replica can lead"
    )]
    Lost {
        namespace: String,
        name: String,
        seconds: u64,
        last: String,
    },
}

/// One candidate for a Lease.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
}

enum Attempt {
    Won,
    HeldByOther(String),
    Failed(String),
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous.and_then(|s| s.holder_identity.as_deref()) == Some(&self.identity);
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: if ours {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..Default::default()
        }
    }

    /// One try to take or renew the Lease.
    async fn attempt(&self) -> Attempt {
        let now = Timestamp::now();
        let current = match self.api.get_opt(&self.name).await {
            Ok(current) => current,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Attempt::Won,
                Err(e) => Attempt::Failed(e.to_string()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != self.identity {
            let duration = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds
                    .unwrap_or(LEASE_DURATION.as_secs() as i32),
            ));
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            if renewed.is_some_and(|t| t + duration > now) {
                return Attempt::HeldByOther(holder);
            }
        }
        lease.spec = Some(self.spec(Some(&spec), now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Attempt::Won,
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// One try with its own deadline, so a hung connection counts as a failure; with when it
    /// started (the Lease's `renewTime` is never earlier).
    async fn attempt_by(&self, deadline: Instant) -> (Instant, Attempt) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout_at(deadline, self.attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Failed(format!(
                "no answer from the apiserver within {}s",
                (deadline - started).as_secs_f32().round()
            )),
        };
        (started, outcome)
    }

    /// Waits until this candidate holds the Lease; returns when the winning write started (the
    /// term's start, for [`keep`](Self::keep)).
    pub async fn acquire(&self) -> Instant {
        let mut last_holder = String::new();
        loop {
            match self.attempt_by(Instant::now() + RENEW_DEADLINE).await {
                (started, Attempt::Won) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return started;
                }
                (_, Attempt::HeldByOther(holder)) => {
                    if holder != last_holder {
                        tracing::info!(lease = %self.name, %holder, "standing by: another replica leads");
                        last_holder = holder;
                    }
                }
                (_, Attempt::Failed(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election attempt failed")
                }
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renews the Lease won at `renewed` until a renewal has not succeeded by [`RENEW_DEADLINE`]
    /// after the last success started, or another replica holds it; returns at that moment, so
    /// the caller can stop acting before the Lease expires for the others.
    pub async fn keep(&self, mut renewed: Instant) -> Error {
        let mut last = String::from("no renewal attempted");
        loop {
            let deadline = renewed + RENEW_DEADLINE;
            tokio::time::sleep_until((Instant::now() + RENEW_EVERY).min(deadline)).await;
            if Instant::now() >= deadline {
                return self.lost(
                    renewed,
                    format!(
                        "not renewed within {}s (last error: {last})",
                        RENEW_DEADLINE.as_secs()
                    ),
                );
            }
            match self.attempt_by(deadline).await {
                (started, Attempt::Won) => renewed = started,
                (_, Attempt::HeldByOther(holder)) => {
                    return self.lost(renewed, format!("the Lease is now held by {holder}"));
                }
                (_, Attempt::Failed(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the leader Lease failed; retrying");
                    last = e;
                }
            }
        }
    }

    fn lost(&self, renewed: Instant, last: String) -> Error {
        Error::Lost {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            seconds: renewed.elapsed().as_secs(),
            last,
        }
    }

    /// Lets the next candidate take over at once (best effort, on clean shutdown).
    pub async fn release(&self) {
        // A hung connection must not hold up the exit.
        let _ = tokio::time::timeout(RENEW_EVERY, self.release_now()).await;
    }

    async fn release_now(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now() - SignedDuration::from_secs(2)));
        let _ = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await;
    }
}
