//! Records a Rollout's Events as Argo's controller does: `core/v1` Events with `count`,
//! `firstTimestamp` and `lastTimestamp` (Argo's kubectl plugin and `kubectl describe` print
//! those), one Event per occurrence, and in the order the engine planned them.
//!
//! Order matters: tools (and Argo's e2e suite) read a Rollout's Events as its history. Events
//! are written in the background, so each Rollout's go through one lane (a task that writes
//! them one after the other), chosen by its uid: a later reconcile's Events never overtake an
//! earlier one's.
//!
//! This module decides nothing: what to record is the engine's plan, and Argo's
//! `RolloutAddedToInformer` when the watch first shows a Rollout ([`Added`]).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::api::argo::rollout::Rollout;
use crate::controller::metrics::Metrics;

/// Lanes writing Events at the same time (one Rollout's always share a lane).
const LANES: usize = 8;

/// The component Events name as their source.
const COMPONENT: &str = "sluice";

/// One Event to record.
#[derive(Clone, Debug)]
pub struct Record {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

struct Job {
    reference: ObjectReference,
    records: Vec<Record>,
    /// Told once the records are written (or given up on).
    written: Option<oneshot::Sender<()>>,
}

/// Writes Events in order per object.
pub struct EventSink {
    lanes: Vec<mpsc::UnboundedSender<Job>>,
}

impl EventSink {
    /// Starts the lanes (on the current Tokio runtime).
    pub fn new(client: Client) -> Self {
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane(client.clone(), rx));
                tx
            })
            .collect();
        Self { lanes }
    }

    /// Queues `records` on `reference`, after every Event queued on it before.
    pub fn send(&self, reference: ObjectReference, records: Vec<Record>) {
        self.queue(reference, records, None);
    }

    /// Queues `records` like [`send`](Self::send) and waits, at most `bound`, until they and
    /// every Event queued on `reference` before them are written.
    pub async fn send_and_wait(
        &self,
        reference: ObjectReference,
        records: Vec<Record>,
        bound: std::time::Duration,
    ) {
        let (tx, rx) = oneshot::channel();
        if self.queue(reference, records, Some(tx)) {
            let _ = tokio::time::timeout(bound, rx).await;
        }
    }

    /// Whether a job was queued.
    fn queue(
        &self,
        reference: ObjectReference,
        records: Vec<Record>,
        written: Option<oneshot::Sender<()>>,
    ) -> bool {
        if records.is_empty() {
            return false;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        reference.uid.hash(&mut hasher);
        let lane = (hasher.finish() as usize) % self.lanes.len();
        // A closed lane means the runtime is shutting down; the Events go with it.
        let job = Job {
            reference,
            records,
            written,
        };
        self.lanes[lane].send(job).is_ok()
    }
}

async fn lane(client: Client, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut last = LastEvents::default();
    while let Some(job) = jobs.recv().await {
        let namespace = job.reference.namespace.clone().unwrap_or_default();
        let api: Api<CoreEvent> = Api::namespaced(client.clone(), &namespace);
        for record in &job.records {
            if last.repeats(&job.reference, record, std::time::Instant::now()) {
                continue;
            }
            let event = core_event(&job.reference, record, Timestamp::now());
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(
                    object = ?job.reference.name,
                    namespace = %namespace,
                    reason = %record.reason,
                    %error,
                    "recording an event"
                );
            }
        }
        if let Some(written) = job.written {
            let _ = written.send(());
        }
    }
}

/// A plan made again before a watch shows what the previous one did (a Service selector just
/// switched) repeats its action, which is harmless, and would repeat its Event: an Event equal to
/// the last one recorded on the same object within [`REPEAT_WINDOW`] is dropped.
const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The last Event recorded per object (uid) of one lane.
#[derive(Default)]
struct LastEvents(std::collections::HashMap<String, (String, String, std::time::Instant)>);

impl LastEvents {
    /// Whether `record` repeats the last Event on `reference`; remembers it otherwise.
    fn repeats(
        &mut self,
        reference: &ObjectReference,
        record: &Record,
        now: std::time::Instant,
    ) -> bool {
        let uid = reference.uid.clone().unwrap_or_default();
        if let Some((reason, message, at)) = self.0.get(&uid)
            && *reason == record.reason
            && *message == record.message
            && now.duration_since(*at) < REPEAT_WINDOW
        {
            return true;
        }
        if self.0.len() > 1024 {
            self.0
                .retain(|_, (_, _, at)| now.duration_since(*at) < REPEAT_WINDOW);
        }
        self.0
            .insert(uid, (record.reason.clone(), record.message.clone(), now));
        false
    }
}

/// The Event as client-go's recorder writes it (`<name>.<nanoseconds in hex>`, count 1), with
/// the newer `eventTime` / reporting fields as well.
fn core_event(reference: &ObjectReference, record: &Record, now: Timestamp) -> CoreEvent {
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| COMPONENT.into());
    let name = reference.name.clone().unwrap_or_else(|| COMPONENT.into());
    let event = json!({
        "metadata": {
            "name": format!("{name}.{:x}", now.as_nanosecond()),
            "namespace": reference.namespace,
        },
        "involvedObject": reference,
        "reason": record.reason,
        "message": super::super::event_note(&record.message),
        "type": if record.warning { "Warning" } else { "Normal" },
        "count": 1,
        "firstTimestamp": Time(now),
        "lastTimestamp": Time(now),
        "eventTime": MicroTime(now),
        "source": {"component": COMPONENT},
        "action": "Reconcile",
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
    });
    serde_json::from_value(event).unwrap_or_default()
}

/// The Rollouts this controller has seen on its watch, to record Argo's
/// `RolloutAddedToInformer` once per Rollout and controller process, as Argo's informer does.
pub struct Added {
    seen: Mutex<HashSet<String>>,
    events: Arc<EventSink>,
    metrics: Arc<Metrics>,
}

impl Added {
    pub fn new(events: Arc<EventSink>, metrics: Arc<Metrics>) -> Self {
        Self {
            seen: Mutex::default(),
            events,
            metrics,
        }
    }

    /// Records `RolloutAddedToInformer` for a Rollout the watch shows for the first time.
    pub fn apply(&self, event: &watcher::Event<Rollout>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        match event {
            watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                let uid = r.uid().unwrap_or_default();
                if seen.insert(uid) {
                    let (namespace, name) = (r.namespace().unwrap_or_default(), r.name_any());
                    let message = format!("Rollout resource added to informer: {namespace}/{name}");
                    // Counted before it is published, as every other Rollout Event.
                    let reason = "RolloutAddedToInformer";
                    self.metrics
                        .argo
                        .rollout_event(&namespace, &name, false, reason);
                    self.events.send(
                        r.object_ref(&()),
                        vec![Record {
                            warning: false,
                            reason: reason.into(),
                            message,
                        }],
                    );
                }
            }
            watcher::Event::Delete(r) => {
                seen.remove(&r.uid().unwrap_or_default());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_repeated_at_once_is_dropped() {
        let reference = ObjectReference {
            uid: Some("u".into()),
            ..Default::default()
        };
        let record = |reason: &str| Record {
            warning: false,
            reason: reason.into(),
            message: "Switched selector for service 'web' from '' to 'abc'".into(),
        };
        let mut last = LastEvents::default();
        let t0 = std::time::Instant::now();
        assert!(!last.repeats(&reference, &record("SwitchService"), t0));
        assert!(last.repeats(&reference, &record("SwitchService"), t0));
        assert!(!last.repeats(&reference, &record("Other"), t0));
        assert!(!last.repeats(&reference, &record("SwitchService"), t0));
        assert!(!last.repeats(
            &reference,
            &record("SwitchService"),
            t0 + REPEAT_WINDOW + REPEAT_WINDOW
        ));
    }

    #[test]
    fn events_carry_the_legacy_count_and_timestamps() {
        let reference = ObjectReference {
            kind: Some("Rollout".into()),
            name: Some("web".into()),
            namespace: Some("team".into()),
            uid: Some("u".into()),
            ..Default::default()
        };
        let record = Record {
            warning: true,
            reason: "RolloutAborted".into(),
            message: "Rollout aborted update to revision 2".into(),
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let event = core_event(&reference, &record, now);
        assert_eq!(event.count, Some(1));
        assert_eq!(event.first_timestamp, Some(Time(now)));
        assert_eq!(event.last_timestamp, Some(Time(now)));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("RolloutAborted"));
        assert_eq!(event.involved_object.name.as_deref(), Some("web"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("team"));
        assert!(event.metadata.name.unwrap().starts_with("web."));
    }
}
