//! When to retry an object whose reconcile failed: after [`FIRST`] (5 s), doubling with each
//! further failure up to [`CAP`] (5 min), and from the start again after a success. So a
//! broken object costs a handful of API calls and log lines an hour instead of one every 5 s.
//!
//! It also decides which failures are worth a WARN line: the 1st, 2nd, 4th, 8th, ... of a
//! streak (the rest are DEBUG), each with its attempt count.
//!
//! State is per object uid. It never reconciles, writes or sleeps; the controllers' error
//! policies ask it, and their reconcilers report successes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;

/// The first retry after a failure.
pub const FIRST: Duration = Duration::from_secs(5);
/// The longest wait between retries.
pub const CAP: Duration = Duration::from_secs(300);

/// What to do after one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retry after this long.
    pub after: Duration,
    /// Which failure in a row this is (1 for the first).
    pub attempt: u32,
    /// Whether this failure should be logged as a WARN (the first, then at each doubling).
    pub warn: bool,
}

/// How long to wait after the `attempt`-th failure in a row (1-based).
pub fn delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    FIRST.saturating_mul(1 << doublings).min(CAP)
}

/// The failure streaks of one kind's objects.
#[derive(Default)]
pub struct Backoff {
    failing: Mutex<HashMap<String, Streak>>,
}

struct Streak {
    attempts: u32,
    last: Instant,
}

fn key<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    meta.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    })
}

impl Backoff {
    /// Records one more failure of `object`; says when to retry and whether to warn.
    pub fn failed<K: Resource>(&self, object: &K) -> Retry {
        let Ok(mut failing) = self.failing.lock() else {
            return retry(1);
        };
        let now = Instant::now();
        // A streak untouched for two caps belongs to an object that is gone or recovered by
        // other means: forget it, so the map never outgrows the objects failing now.
        failing.retain(|_, s| now.duration_since(s.last) < 2 * CAP);
        let streak = failing.entry(key(object)).or_insert(Streak {
            attempts: 0,
            last: now,
        });
        streak.attempts = streak.attempts.saturating_add(1);
        streak.last = now;
        retry(streak.attempts)
    }

    /// Records one more failure of `object` and logs it: a WARN with the attempt count on the
    /// first and at each doubling, DEBUG otherwise. Returns when to retry.
    pub fn retry_after<K>(&self, object: &K, error: &dyn std::fmt::Display) -> Duration
    where
        K: Resource<DynamicType = ()>,
    {
        let retry = self.failed(object);
        let (kind, meta) = (K::kind(&()), object.meta());
        let (name, namespace) = (meta.name.as_deref(), meta.namespace.as_deref());
        if retry.warn {
            tracing::warn!(%kind, name, namespace, %error, attempt = retry.attempt, retry_in = ?retry.after, "reconcile failed");
        } else {
            tracing::debug!(%kind, name, namespace, %error, attempt = retry.attempt, retry_in = ?retry.after, "reconcile failed again");
        }
        retry.after
    }

    /// `object` was reconciled: its next failure waits [`FIRST`] again.
    pub fn succeeded<K: Resource>(&self, object: &K) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.remove(&key(object));
        }
    }

    /// Passes a reconcile's `result` through, recording a success (failures are recorded by
    /// the error policy, which alone knows which errors count).
    pub fn record<K: Resource, T, E>(&self, object: &K, result: Result<T, E>) -> Result<T, E> {
        if result.is_ok() {
            self.succeeded(object);
        }
        result
    }
}

fn retry(attempt: u32) -> Retry {
    Retry {
        after: delay(attempt),
        attempt,
        warn: attempt.is_power_of_two(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn object(uid: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn doubles_from_five_seconds_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|a| delay(a).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert_eq!(delay(u32::MAX), CAP);
    }

    #[test]
    fn warns_on_the_first_failure_then_at_each_doubling() {
        let backoff = Backoff::default();
        let warned: Vec<u32> = (0..20)
            .map(|_| backoff.failed(&object("a")))
            .filter(|r| r.warn)
            .map(|r| r.attempt)
            .collect();
        assert_eq!(warned, [1, 2, 4, 8, 16]);
    }

    #[test]
    fn a_success_starts_over_and_objects_are_apart() {
        let backoff = Backoff::default();
        for _ in 0..3 {
            backoff.failed(&object("a"));
        }
        assert_eq!(backoff.failed(&object("b")).after, FIRST);
        assert_eq!(backoff.failed(&object("a")).after, Duration::from_secs(40));
        backoff.succeeded(&object("a"));
        let again = backoff.failed(&object("a"));
        assert_eq!((again.attempt, again.after, again.warn), (1, FIRST, true));
    }
}
