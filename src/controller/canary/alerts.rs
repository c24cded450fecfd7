//! Sends a Canary's alerts (the core's `Action::Alert`) through the AlertProviders its
//! `analysis.alerts` subscribe with ([`crate::alert`]), or, for a Canary with no `alerts` at
//! all, through the controller-wide notifier (`--slack-url` / `--msteams-url`, every severity, as
//! Flagger's global notifier), off the tick path.
//!
//! ```text
//!  tick ──Ctx::alert (never waits)──▶ bounded queue ──dispatcher──▶ one lane per Canary
//!                 full: dropped, counted, logged          (bounded; sends in order, one at a time)
//! ```
//!
//! A tick only queues its alerts: a slow or silent chat endpoint (5 s timeout per send, no retry,
//! as [`crate::alert::send`]) delays later alerts of the same Canary, never its tick and never
//! another Canary's alerts. When the queue (or a Canary's lane) is full the alert is dropped,
//! counted in `sluice_alerts_dropped_total` and logged: an alert is never worth holding a run.
//! A failed alert is logged and recorded as a Warning Event on the Canary. On shutdown the
//! controller waits a bounded time for the queued alerts to go out.
//!
//! This module never decides anything about a run and never blocks a tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::ResourceExt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinSet;

use super::Ctx;
use crate::alert::{self, Alert};
use crate::api::flagger::canary::{AlertSeverity, Canary, CanaryAlert, CanaryStatus};
use crate::controller::metrics::Metrics;

/// Alerts waiting for the dispatcher, across every Canary.
const QUEUE: usize = 1024;
/// Alerts waiting in one Canary's lane.
const LANE: usize = 64;
/// A Canary's lane stops after this long without an alert (a new one starts it again).
const LANE_IDLE: Duration = Duration::from_secs(60);

/// One alert to send to the subscriptions that admit it.
pub(super) struct Job {
    canary: Canary,
    status: CanaryStatus,
    alert: Alert,
    subscriptions: Vec<CanaryAlert>,
    /// Through the controller-wide notifier (the Canary subscribes to no AlertProvider).
    global: bool,
}

/// The sending side of the alert queue, held by [`Ctx`].
pub(super) struct Queue {
    tx: mpsc::Sender<Job>,
    /// Alerts queued and not yet sent or dropped.
    pending: Arc<AtomicUsize>,
}

/// The receiving side, for [`run`].
pub(super) struct Receiver {
    rx: mpsc::Receiver<Job>,
    pending: Arc<AtomicUsize>,
}

impl Queue {
    pub(super) fn new() -> (Self, Receiver) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        (
            Self {
                tx,
                pending: pending.clone(),
            },
            Receiver { rx, pending },
        )
    }

    /// Queues `job` without waiting; when the queue is full it is dropped (counted, logged).
    fn push(&self, metrics: &Metrics, job: Job) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let (job, why) = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => (job, "the alert queue is full"),
            Err(TrySendError::Closed(job)) => (job, "the alert sender has stopped"),
        };
        dropped(metrics, &self.pending, &job, why);
    }

    /// Waits until every queued alert is sent or dropped, at most `limit` (shutdown).
    pub(super) async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.pending.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(alerts = left, "canary alerts not sent before shutdown");
        }
    }
}

fn dropped(metrics: &Metrics, pending: &AtomicUsize, job: &Job, why: &str) {
    metrics.alerts_dropped.inc();
    pending.fetch_sub(1, Ordering::AcqRel);
    tracing::warn!(canary = %job.alert.name, namespace = %job.alert.namespace, message = %job.alert.message, "alert dropped: {why} (sluice_alerts_dropped_total counts them)");
}

impl Ctx {
    /// Queues an alert for the subscriptions that admit `severity`; never waits.
    pub(super) fn alert(
        &self,
        canary: &Canary,
        status: &CanaryStatus,
        severity: AlertSeverity,
        message: &str,
        metadata: bool,
    ) {
        let subscriptions = alert::subscriptions(canary, severity);
        let global = self.alerting.notifier.is_some()
            && canary.analysis().is_none_or(|a| a.alerts.is_empty());
        if subscriptions.is_empty() && !global {
            return;
        }
        let job = Job {
            canary: canary.clone(),
            status: status.clone(),
            alert: Alert {
                name: canary.name_any(),
                namespace: canary.namespace().unwrap_or_default(),
                message: message.to_string(),
                fields: if metadata {
                    alert::metadata_fields(canary)
                } else {
                    Vec::new()
                },
                severity,
            },
            subscriptions,
            global,
        };
        self.alerts.push(&self.shared.metrics, job);
    }

    /// Sends one alert to each of its subscriptions in turn.
    async fn deliver(&self, job: &Job) {
        if job.global
            && let Some(notifier) = &self.alerting.notifier
        {
            let flag = match notifier.kind {
                crate::api::flagger::alert_provider::AlertProviderType::Msteams => "--msteams-url",
                _ => "--slack-url",
            };
            if let Err(error) = alert::send(&self.http, notifier, &job.alert, flag).await {
                tracing::warn!(canary = %job.alert.name, namespace = %job.alert.namespace, %error, "alert not sent");
                let text = format!("Alert not sent: {error}");
                self.event(&job.canary, "", &job.status, true, &text).await;
            }
        }
        let global = self.alert_provider_namespace.as_deref();
        for subscription in &job.subscriptions {
            let resolved =
                alert::resolve(&self.shared.client, &job.canary, subscription, global).await;
            if let Err(error @ alert::Error::ForeignNamespace { .. }) = &resolved {
                self.refuse_foreign_provider(&job.canary, subscription, error)
                    .await;
                continue;
            }
            let sent = match resolved {
                Ok(destination) => {
                    alert::send(
                        &self.http,
                        &destination,
                        &job.alert,
                        &subscription.provider_ref.name,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match sent {
                Ok(()) => {
                    tracing::debug!(canary = %job.alert.name, namespace = %job.alert.namespace, alert = %subscription.name, "alert sent");
                }
                Err(error) => {
                    tracing::warn!(canary = %job.alert.name, namespace = %job.alert.namespace, alert = %subscription.name, %error, "alert not sent");
                    let text = format!("Alert {} not sent: {error}", subscription.name);
                    self.event(&job.canary, "", &job.status, true, &text).await;
                }
            }
        }
    }
}

impl Ctx {
    /// Tells the Canary, once per generation and subscription, that its AlertProvider is in a
    /// namespace it may not use (an invalid spec; every alert to it is refused unsent).
    async fn refuse_foreign_provider(
        &self,
        canary: &Canary,
        subscription: &CanaryAlert,
        error: &alert::Error,
    ) {
        let index = canary
            .analysis()
            .and_then(|a| a.alerts.iter().position(|s| s.name == subscription.name))
            .unwrap_or_default();
        let generation = canary.metadata.generation.unwrap_or_default();
        let message = format!("spec.analysis.alerts[{index}].providerRef.namespace: {error}");
        self.warn_once(
            canary,
            &format!("alert-provider-namespace/{generation}/{index}"),
            "InvalidSpec",
            &message,
        )
        .await;
    }
}

/// The dispatcher: hands each queued alert to its Canary's lane until the queue closes, then
/// lets the lanes finish.
pub(super) async fn run(ctx: Weak<Ctx>, receiver: Receiver, metrics: Arc<Metrics>) {
    let Receiver { mut rx, pending } = receiver;
    let mut lanes: HashMap<(String, String), mpsc::Sender<Job>> = HashMap::new();
    let mut tasks = JoinSet::new();
    while let Some(job) = rx.recv().await {
        while tasks.try_join_next().is_some() {}
        lanes.retain(|_, lane| !lane.is_closed());
        let key = (job.alert.namespace.clone(), job.alert.name.clone());
        let job = match lanes.get(&key) {
            Some(lane) => match lane.try_send(job) {
                Ok(()) => continue,
                Err(TrySendError::Full(job)) => {
                    dropped(&metrics, &pending, &job, "the Canary's alert lane is full");
                    continue;
                }
                // The lane stopped while idle: start a new one.
                Err(TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        let (tx, lane_rx) = mpsc::channel(LANE);
        if let Err(TrySendError::Full(job) | TrySendError::Closed(job)) = tx.try_send(job) {
            dropped(&metrics, &pending, &job, "the Canary's alert lane is full");
            continue;
        }
        tasks.spawn(lane(ctx.clone(), lane_rx, pending.clone()));
        lanes.insert(key, tx);
    }
    drop(lanes);
    while tasks.join_next().await.is_some() {}
}

/// One Canary's alerts, sent in order.
async fn lane(ctx: Weak<Ctx>, mut rx: mpsc::Receiver<Job>, pending: Arc<AtomicUsize>) {
    loop {
        let job = match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_idle) => {
                // No new alert is accepted from here on (the dispatcher starts a new lane);
                // those already in are sent.
                rx.close();
                while let Some(job) = rx.recv().await {
                    send(&ctx, &job, &pending).await;
                }
                return;
            }
        };
        send(&ctx, &job, &pending).await;
    }
}

async fn send(ctx: &Weak<Ctx>, job: &Job, pending: &AtomicUsize) {
    // The controller is gone (shutdown past its drain): nothing left to report through.
    if let Some(ctx) = ctx.upgrade() {
        ctx.deliver(job).await;
    }
    pending.fetch_sub(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(n: usize) -> Job {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}},
        }))
        .unwrap();
        Job {
            canary,
            status: CanaryStatus::default(),
            alert: Alert {
                name: "podinfo".into(),
                namespace: "test".into(),
                message: format!("alert {n}"),
                fields: Vec::new(),
                severity: AlertSeverity::Info,
            },
            subscriptions: Vec::new(),
            global: false,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::new();
        let (queue, mut receiver) = Queue::new();
        for n in 0..QUEUE + 3 {
            // Never waits, however slow the sender: nothing receives here.
            queue.push(&metrics, job(n));
        }
        assert_eq!(metrics.alerts_dropped.get(), 3);
        assert_eq!(queue.pending.load(Ordering::Acquire), QUEUE);
        assert!(
            metrics.encode().contains("sluice_alerts_dropped_total 3"),
            "{}",
            metrics.encode()
        );
        // The first ones are kept, in order.
        let first = receiver.rx.recv().await.unwrap();
        assert_eq!(first.alert.message, "alert 0");
        // A stopped sender drops too.
        drop(receiver);
        queue.push(&metrics, job(0));
        assert_eq!(metrics.alerts_dropped.get(), 4);
    }

    #[tokio::test]
    async fn drain_is_bounded() {
        let metrics = Metrics::new();
        let (queue, _receiver) = Queue::new();
        queue.push(&metrics, job(0));
        let started = tokio::time::Instant::now();
        queue.drain(Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(queue.pending.load(Ordering::Acquire), 1);
    }
}
