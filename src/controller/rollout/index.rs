//! Secondary indexes over the watch caches, so a reconcile (or a watch mapper) touches only the
//! objects of its own Rollout instead of scanning every cached object: ReplicaSets and
//! AnalysisRuns by the name of their controlling owner, pods by their ReplicaSet, EndpointSlices
//! by their Service, Rollouts by the Services and Deployment they name.
//!
//! Each index is fed the same watch events as its store (after the store applied them), and
//! follows a re-list the way the store does: objects not listed again are dropped. An index holds
//! names only; objects are read from the store, which stays the single copy in memory.
//!
//! This module never talks to the cluster and never decides anything.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::watcher;

/// `(namespace, key)`: an index key is always looked up within a namespace.
type Slot = (String, String);

#[derive(Default)]
struct Inner {
    /// Names of the objects under each key.
    by_key: HashMap<Slot, HashSet<String>>,
    /// The keys each object (namespace, name) is filed under.
    keys_of: HashMap<Slot, Vec<String>>,
    /// Objects seen since a re-list started (`None` outside one).
    relisted: Option<HashSet<Slot>>,
}

/// Names of objects of kind `K`, by keys computed from each object.
pub struct Index<K> {
    keys: fn(&K) -> Vec<String>,
    inner: Mutex<Inner>,
}

impl<K: kube::Resource> Index<K> {
    /// An empty index filing each object under `keys(object)`.
    pub fn new(keys: fn(&K) -> Vec<String>) -> Self {
        Self {
            keys,
            inner: Mutex::default(),
        }
    }

    /// Follows one watch event.
    pub fn apply(&self, event: &watcher::Event<K>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        match event {
            watcher::Event::Apply(object) => inner.upsert(object, self.keys),
            watcher::Event::Delete(object) => {
                inner.remove(&(object.namespace().unwrap_or_default(), object.name_any()))
            }
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                inner.upsert(object, self.keys);
                let slot = (object.namespace().unwrap_or_default(), object.name_any());
                if let Some(seen) = inner.relisted.as_mut() {
                    seen.insert(slot);
                }
            }
            watcher::Event::InitDone => {
                let seen = inner.relisted.take().unwrap_or_default();
                let gone: Vec<Slot> = inner
                    .keys_of
                    .keys()
                    .filter(|slot| !seen.contains(*slot))
                    .cloned()
                    .collect();
                for slot in gone {
                    inner.remove(&slot);
                }
            }
        }
    }

    /// Names of the objects in `namespace` filed under `key`.
    pub fn get(&self, namespace: &str, key: &str) -> Vec<String> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .by_key
            .get(&(namespace.to_string(), key.to_string()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Inner {
    fn upsert<K: kube::Resource>(&mut self, object: &K, keys: fn(&K) -> Vec<String>) {
        let namespace = object.namespace().unwrap_or_default();
        let slot = (namespace.clone(), object.name_any());
        let keys = keys(object);
        if self.keys_of.get(&slot) == Some(&keys) {
            return;
        }
        self.remove(&slot);
        for key in &keys {
            self.by_key
                .entry((namespace.clone(), key.clone()))
                .or_default()
                .insert(slot.1.clone());
        }
        if !keys.is_empty() {
            self.keys_of.insert(slot, keys);
        }
    }

    fn remove(&mut self, slot: &Slot) {
        let Some(keys) = self.keys_of.remove(slot) else {
            return;
        };
        for key in keys {
            let at = (slot.0.clone(), key);
            if let Some(names) = self.by_key.get_mut(&at) {
                names.remove(&slot.1);
                if names.is_empty() {
                    self.by_key.remove(&at);
                }
            }
        }
    }
}

/// The name of the object's controlling owner of kind `kind`, as a one-key list.
pub fn controller_named<K: kube::Resource>(object: &K, kind: &str) -> Vec<String> {
    object
        .owner_references()
        .iter()
        .filter(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(name: &str, key: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([("k".to_string(), key.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn by_label(c: &ConfigMap) -> Vec<String> {
        c.labels().get("k").cloned().into_iter().collect()
    }

    #[test]
    fn follows_applies_deletes_moves_and_relists() {
        let index = Index::new(by_label);
        index.apply(&watcher::Event::Apply(cm("a", "r1")));
        index.apply(&watcher::Event::Apply(cm("b", "r1")));
        let mut got = index.get("ns", "r1");
        got.sort();
        assert_eq!(got, ["a", "b"]);
        // A changed key moves the object.
        index.apply(&watcher::Event::Apply(cm("b", "r2")));
        assert_eq!(index.get("ns", "r1"), ["a"]);
        assert_eq!(index.get("ns", "r2"), ["b"]);
        assert!(index.get("other", "r2").is_empty());
        index.apply(&watcher::Event::Delete(cm("a", "r1")));
        assert!(index.get("ns", "r1").is_empty());
        // A re-list that no longer has b drops it.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(cm("c", "r2")));
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.get("ns", "r2"), ["c"]);
    }
}
