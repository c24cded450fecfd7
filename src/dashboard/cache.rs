//! The dashboard's one shared watch: reflector stores of Rollouts, Canaries, AnalysisRuns,
//! ReplicaSets and Events, and a change counter every open page waits on.
//!
//! Pages and Server-Sent Events read only these stores, so a hundred viewers cost the apiserver
//! the same five watches as one. `managedFields` are dropped on arrival (the biggest part of most
//! objects, never shown), and nothing else is kept per viewer.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Event;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::api::argo::analysis::AnalysisRun;
use crate::api::argo::rollout::Rollout;
use crate::api::flagger::canary::Canary;

/// The stores and the change counter.
#[derive(Clone)]
pub struct Cache {
    pub rollouts: Store<Rollout>,
    pub canaries: Store<Canary>,
    pub runs: Store<AnalysisRun>,
    pub replica_sets: Store<ReplicaSet>,
    pub events: Store<Event>,
    changes: watch::Receiver<u64>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

/// What a page is rendered from: the stores' contents at one moment.
#[derive(Default)]
pub struct Snapshot {
    pub rollouts: Vec<Arc<Rollout>>,
    pub canaries: Vec<Arc<Canary>>,
    pub runs: Vec<Arc<AnalysisRun>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub events: Vec<Arc<Event>>,
}

impl Cache {
    /// Starts the five watches (in `namespace`, or everywhere) on the current runtime.
    pub fn start(client: Client, namespace: Option<&str>) -> Cache {
        let (tx, changes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let cache = Cache {
            rollouts: watch_kind(api(&client, namespace), &tx),
            canaries: watch_kind(api(&client, namespace), &tx),
            runs: watch_kind(api(&client, namespace), &tx),
            replica_sets: watch_kind(api(&client, namespace), &tx),
            events: watch_kind(api(&client, namespace), &tx),
            changes,
            synced: Arc::default(),
        };
        let stores = cache.clone();
        tokio::spawn(async move {
            let all = futures::future::try_join5(
                stores.rollouts.wait_until_ready(),
                stores.canaries.wait_until_ready(),
                stores.runs.wait_until_ready(),
                stores.replica_sets.wait_until_ready(),
                stores.events.wait_until_ready(),
            );
            if all.await.is_ok() {
                stores
                    .synced
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        });
        cache
    }

    /// Whether every store has had its first full list (before that, pages would miss objects).
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver that wakes on every change of any store.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            rollouts: self.rollouts.state(),
            canaries: self.canaries.state(),
            runs: self.runs.state(),
            replica_sets: self.replica_sets.state(),
            events: self.events.state(),
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One reflector; every applied or deleted object bumps the counter.
fn watch_kind<K>(api: Api<K>, changed: &Arc<watch::Sender<u64>>) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.send_modify(|n| *n = n.wrapping_add(1)),
                // The watcher retries with back-off; the pages show the last known state.
                Err(e) => tracing::warn!(error = %e, "dashboard watch failed, retrying"),
            }
        }
    });
    reader
}
