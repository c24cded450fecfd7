//! Watch caches that more than one controller reads: Deployments (a Rollout's `workloadRef`, a
//! Canary's target and primary) and Services (a Rollout's stable / canary Services, the Services a
//! Canary generates). One watch and one copy of each object per process, however many
//! controllers read it: at a thousand Canaries each kept its own copy of every Deployment and
//! Service before.
//!
//! Every subscriber gets each changed object, in the order the watch delivered it, to map to the
//! objects it reconciles; the cache itself decides nothing. Managed fields and kubectl's
//! last-applied annotation are dropped: no controller reads them, and they are often most of
//! the object.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// One watch of `K`, shared by the controllers that [`subscribe`](Self::subscribe) before it
/// [`start`](Self::start)s.
pub struct SharedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Vec<mpsc::UnboundedSender<K>>,
}

/// What one controller reads from a [`SharedWatch`]: the cache, and every changed object.
pub struct Subscription<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    changes: mpsc::UnboundedReceiver<K>,
}

impl<K> Subscription<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// The changed objects, as a controller's `watches_stream` takes them. Dropping the stream
    /// (or the subscription) unsubscribes from the changes; the store stays.
    pub fn changes(self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        futures::stream::unfold(self.changes, |mut rx| async move {
            rx.recv().await.map(|object| (Ok(object), rx))
        })
    }
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        SharedWatch {
            api,
            store,
            writer,
            subscribers: Vec::new(),
        }
    }

    pub fn subscribe(&mut self) -> Subscription<K> {
        let (tx, changes) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        Subscription {
            store: self.store.clone(),
            changes,
        }
    }

    /// Starts the watch in a task of its own, for the life of the process.
    pub fn start(self) {
        let SharedWatch {
            api,
            writer,
            mut subscribers,
            ..
        } = self;
        let kind = K::kind(&());
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|object: &mut K| {
                object.meta_mut().managed_fields = None;
                if let Some(annotations) = object.meta_mut().annotations.as_mut() {
                    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            });
        let mut changes = reflector::reflector(writer, events)
            .touched_objects()
            .boxed();
        tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                match change {
                    // The stores need the watch even when no subscriber wants the changes.
                    Ok(object) => subscribers.retain(|tx| tx.send(object.clone()).is_ok()),
                    // The watcher retries with backoff; the caches keep serving what they have.
                    Err(error) => tracing::warn!(%kind, %error, "shared watch"),
                }
            }
        });
    }
}
