//! Records a Rollout's Events as Argo's controller does: `core/v1` Events with `count`,
//! `firstTimestamp` and `lastTimestamp` (Argo's kubectl plugin and `kubectl describe` print
//! those), one Event per occurrence, and in the order the engine planned them.
//!
//! Order matters: tools (and Argo's e2e suite) read a Rollout's Events as its history. Events
//! are written in the background, so each Rollout's go through one lane (a task that writes
//! them one after the other), chosen by its uid: a later reconcile's Events never overtake an
//! earlier one's.
//!
//! This module decides nothing: what to record is the engine's plan.

use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::mpsc;

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
        if records.is_empty() {
            return;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        reference.uid.hash(&mut hasher);
        let lane = (hasher.finish() as usize) % self.lanes.len();
        // A closed lane means the runtime is shutting down; the Events go with it.
        let _ = self.lanes[lane].send(Job { reference, records });
    }
}

async fn lane(client: Client, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        let namespace = job.reference.namespace.clone().unwrap_or_default();
        let api: Api<CoreEvent> = Api::namespaced(client.clone(), &namespace);
        for record in &job.records {
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

#[cfg(test)]
mod tests {
    use super::*;

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
