//! A recorder of every distinct state one object goes through: a watch on it from before it is
//! created, keeping each version whose `metadata.generation` or `status` differs from the last
//! one kept. Tests then judge every status the controller wrote, not only those a poll happened
//! to see (e.g. run Argo CD's health script on each, `super::argocd`).
//!
//! Writes the test makes itself (a spec change, the status patch of a `promote`) can be marked
//! with [`StatusRecorder::by_test`] using the resourceVersion the apiserver answered, so that
//! checks of what the controller wrote can leave them out.
//!
//! ```ignore
//! let recorder = StatusRecorder::start::<Rollout>(&env.client, &ns.name, "web").await;
//! // ... create the Rollout, drive it ...
//! for record in recorder.records() { /* record.object, record.by_test */ }
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One kept version of the object.
#[derive(Clone, Debug)]
pub struct Record {
    /// The whole object as the apiserver served it (metadata, spec, status).
    pub object: Value,
    pub resource_version: String,
    /// Written by the test itself ([`StatusRecorder::by_test`]), not by the controller.
    pub by_test: bool,
}

impl Record {
    pub fn status(&self) -> &Value {
        &self.object["status"]
    }

    pub fn generation(&self) -> i64 {
        self.object["metadata"]["generation"].as_i64().unwrap_or(0)
    }
}

#[derive(Default)]
struct Shared {
    records: Vec<Record>,
    by_test: BTreeSet<String>,
    /// Every resourceVersion the watch delivered, kept or not.
    seen: BTreeSet<String>,
}

/// Records one object's distinct states until dropped.
pub struct StatusRecorder {
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Drop for StatusRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusRecorder {
    /// Starts watching `name` of kind `K` in `namespace`; returns once the watch is established,
    /// so an object created afterwards is seen from its first version.
    pub async fn start<K: Resource<DynamicType = ()>>(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> StatusRecorder {
        Self::start_with(client, namespace, &ApiResource::erase::<K>(&()), name).await
    }

    /// Like [`start`](Self::start), for any resource.
    pub async fn start_with(
        client: &Client,
        namespace: &str,
        resource: &ApiResource,
        name: &str,
    ) -> StatusRecorder {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(record(
            watcher(api, config).default_backoff(),
            shared.clone(),
            ready_tx,
        ));
        ready_rx
            .await
            .unwrap_or_else(|_| panic!("the watch of {name} in {namespace} ended before it began"));
        StatusRecorder { shared, task }
    }

    /// Marks the version `resource_version` (from the apiserver's answer to a write the test
    /// made) as written by the test.
    pub fn by_test(&self, resource_version: Option<String>) {
        if let Some(rv) = resource_version {
            self.lock().by_test.insert(rv);
        }
    }

    /// Waits until the watch has delivered the version `resource_version` (e.g. of an object the
    /// test just read), so [`records`](Self::records) holds everything up to it.
    pub async fn wait_seen(&self, resource_version: Option<String>) {
        let rv = resource_version.expect("an object read from the apiserver has a resourceVersion");
        super::eventually(
            std::time::Duration::from_secs(30),
            &format!("the recorder's watch to deliver resourceVersion {rv}"),
            || async { self.lock().seen.contains(&rv).then_some(()) },
        )
        .await;
    }

    /// Every distinct state so far, oldest first.
    pub fn records(&self) -> Vec<Record> {
        let shared = self.lock();
        shared
            .records
            .iter()
            .cloned()
            .map(|mut r| {
                r.by_test = shared.by_test.contains(&r.resource_version);
                r
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic elsewhere while holding the lock leaves the records as they were: still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn record(
    events: impl futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>>,
    shared: Arc<Mutex<Shared>>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let object = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
            Ok(watcher::Event::InitDone) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            // Deletions, relists and watch errors (retried with backoff) carry no new status.
            Ok(watcher::Event::Delete(_) | watcher::Event::Init) | Err(_) => continue,
        };
        let object = serde_json::to_value(&object).unwrap_or_default();
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.seen.insert(rv.clone());
        let same = shared.records.last().is_some_and(|last| {
            last.object["metadata"]["generation"] == object["metadata"]["generation"]
                && last.object["status"] == object["status"]
        });
        if !same {
            shared.records.push(Record {
                resource_version: rv,
                object,
                by_test: false,
            });
        }
    }
}
