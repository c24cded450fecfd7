//! Leader election on a `coordination.k8s.io/v1` Lease, so that with several replicas of the
//! controller only one acts.
//!
//! The holder renews the Lease every [`RENEW_EVERY`]; a candidate takes it over once
//! `renewTime + leaseDurationSeconds` has passed. Every write is a replace with the
//! resourceVersion that was read, so two candidates can never both win. A leader that cannot
//! renew within [`LEASE_DURATION`] stops: the process exits non-zero and the Deployment restarts
//! it as a candidate, which is simpler and safer than stopping controllers in place. On a clean
//! shutdown the Lease is released (its duration set to 1 s), so the next leader starts at once.
//!
//! This module decides only who leads; it never touches Rollouts or runs.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews and a candidate retries.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Errors of the election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "lost the leader Lease {namespace}/{name}: not renewed for {seconds}s (last error: {last}); \
         exiting so another replica can lead"
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

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        let mut last_holder = String::new();
        loop {
            match self.attempt().await {
                Attempt::Won => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Attempt::HeldByOther(holder) => {
                    if holder != last_holder {
                        tracing::info!(lease = %self.name, %holder, "standing by: another replica leads");
                        last_holder = holder;
                    }
                }
                Attempt::Failed(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election attempt failed")
                }
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renews the Lease until renewal has failed for a whole lease duration; returns that error.
    pub async fn keep(&self) -> Error {
        let mut last_success = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let last = match self.attempt().await {
                Attempt::Won => {
                    last_success = tokio::time::Instant::now();
                    continue;
                }
                Attempt::HeldByOther(holder) => format!("the Lease is now held by {holder}"),
                Attempt::Failed(e) => e,
            };
            // Give up before the Lease can expire, so two leaders never overlap.
            if last_success.elapsed() + RENEW_EVERY >= LEASE_DURATION
                || last.starts_with("the Lease is now held")
            {
                return Error::Lost {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    seconds: last_success.elapsed().as_secs(),
                    last,
                };
            }
            tracing::warn!(lease = %self.name, error = %last, "renewing the leader Lease failed; retrying");
        }
    }

    /// Lets the next candidate take over at once (best effort, on clean shutdown).
    pub async fn release(&self) {
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
