//! Whether the controller is stuck on the apiserver, for `/healthz`: the kube client's layer
//! ([`super::client_metrics::CountLayer::with_liveness`]) notes when requests go out and when
//! answers come back.
//!
//! `/healthz` fails when, for longer than the stall bound, either requests have been going out
//! and not one got an HTTP answer (a frozen connection: the watches are dead and every
//! reconcile waits), or one request has waited that long for its answer (one hung connection
//! holding a reconcile or a re-list while others work). A watch counts as answered when its
//! stream opens. An idle controller sends no requests (or only Lease renewals that are
//! answered), so it can never look stuck; a transport error (connection refused) is not an
//! answer either, as a controller that cannot reach its apiserver does no work.
//!
//! This module only observes; it never changes, delays or retries a request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default stall bound (`--healthz-stall-seconds`).
pub const DEFAULT_STALL: Duration = Duration::from_secs(60);

/// Requests in flight and answers, shared by the client layer and `/healthz`.
pub struct Liveness {
    stall: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Requests awaiting their answer, by id: when each went out.
    in_flight: BTreeMap<u64, Instant>,
    /// When the first request went out since the last answer (`None`: answered since).
    unanswered_since: Option<Instant>,
}

impl Liveness {
    pub fn new(stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            stall,
            state: Mutex::default(),
        })
    }

    /// `Err` with what is stuck and since when, once something has been for longer than the bound.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let Ok(state) = self.state.lock() else {
            return Err("liveness state poisoned".into());
        };
        if let Some(since) = state.unanswered_since
            && now.duration_since(since) > self.stall
        {
            return Err(format!(
                "no answer from the apiserver for {}s although requests went out",
                now.duration_since(since).as_secs()
            ));
        }
        let oldest = state.in_flight.values().min().copied();
        if let Some(sent) = oldest
            && now.duration_since(sent) > self.stall
        {
            return Err(format!(
                "a request to the apiserver has waited {}s for its answer",
                now.duration_since(sent).as_secs()
            ));
        }
        Ok(())
    }

    /// A request goes out now; it ends when the returned guard drops.
    pub fn sent(self: &Arc<Self>) -> Pending {
        Pending {
            id: self.record_sent(Instant::now()),
            liveness: self.clone(),
            answered: false,
        }
    }

    fn record_sent(&self, now: Instant) -> u64 {
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        state.next_id += 1;
        let id = state.next_id;
        state.in_flight.insert(id, now);
        state.unanswered_since.get_or_insert(now);
        id
    }

    fn ended(&self, id: u64, answered: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.in_flight.remove(&id);
            if answered {
                state.unanswered_since = None;
            }
        }
    }
}

/// Ends a request's record when its future completes or is dropped (a timed-out request).
pub struct Pending {
    liveness: Arc<Liveness>,
    id: u64,
    /// Set when an HTTP answer came back.
    pub answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.liveness.ended(self.id, self.answered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    #[test]
    fn an_idle_controller_is_alive_forever() {
        let l = Liveness::new(STALL);
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(l.check(later), Ok(()));
    }

    #[test]
    fn requests_without_any_answer_are_stuck_after_the_bound() {
        let l = Liveness::new(STALL);
        let t0 = Instant::now();
        // Each attempt times out (dropped unanswered), the next goes out.
        for i in 0..40u64 {
            let id = l.record_sent(t0 + Duration::from_secs(2 * i));
            l.ended(id, false);
        }
        assert!(l.check(t0 + Duration::from_secs(59)).is_ok());
        let err = l.check(t0 + Duration::from_secs(61)).unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        // One answer and it is alive again.
        let id = l.record_sent(t0 + Duration::from_secs(80));
        l.ended(id, true);
        assert_eq!(l.check(t0 + Duration::from_secs(200)), Ok(()));
    }

    #[test]
    fn one_hung_request_is_stuck_even_while_others_are_answered() {
        let l = Liveness::new(STALL);
        let t0 = Instant::now();
        let _hung = l.record_sent(t0);
        for i in 1..40u64 {
            let id = l.record_sent(t0 + Duration::from_secs(2 * i));
            l.ended(id, true);
        }
        let err = l.check(t0 + Duration::from_secs(61)).unwrap_err();
        assert!(err.contains("waited 61s"), "{err}");
    }
}
