//! What this controller wrote, kept until the watch cache shows it: a reconcile that runs before
//! the watch event for our own write has arrived would otherwise plan from the older object and
//! do (or announce) the same thing twice.
//!
//! Each entry remembers the resourceVersion the write replaced. While the cache still holds that
//! version (or, for a creation, still holds nothing), our copy is the fresher one; as soon as the
//! cache shows anything else, the cache wins and the entry is dropped. Entries expire after
//! [`TTL`], so an object deleted by someone else before our watch saw it cannot linger.
//!
//! This module never decides anything and never talks to the cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::{Resource, ResourceExt};

/// How long a write is trusted over the cache at most.
const TTL: Duration = Duration::from_secs(30);

/// `(namespace, name)`.
pub type Key = (String, String);

struct Written<K> {
    /// The resourceVersion our write replaced (`None`: we created the object).
    replaced: Option<String>,
    /// What we wrote (`None`: we deleted the object).
    ours: Option<Arc<K>>,
    at: Instant,
}

/// Our recent writes of one kind.
pub struct Fresh<K> {
    written: Mutex<HashMap<Key, Written<K>>>,
}

impl<K> Default for Fresh<K> {
    fn default() -> Self {
        Self {
            written: Mutex::default(),
        }
    }
}

pub fn key<K: Resource>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl<K: Resource> Fresh<K> {
    /// Remember that we replaced version `replaced` of `key` with `ours` (`None`: deleted it).
    pub fn wrote(&self, key: Key, replaced: Option<String>, ours: Option<K>) {
        if let Ok(mut written) = self.written.lock() {
            written.insert(
                key,
                Written {
                    replaced,
                    ours: ours.map(Arc::new),
                    at: Instant::now(),
                },
            );
        }
    }

    /// Forget what we wrote to `key` (after an error, the cache is the only truth).
    pub fn forget(&self, key: &Key) {
        if let Ok(mut written) = self.written.lock() {
            written.remove(key);
        }
    }

    /// The freshest view of `key`, given what the cache holds for it.
    pub fn view(&self, key: &Key, cached: Option<Arc<K>>) -> Option<Arc<K>> {
        let Ok(mut written) = self.written.lock() else {
            return cached;
        };
        let Some(entry) = written.get(key) else {
            return cached;
        };
        let cached_version = cached.as_ref().and_then(|c| c.resource_version());
        if entry.at.elapsed() < TTL && cached_version == entry.replaced {
            return entry.ours.clone();
        }
        written.remove(key);
        cached
    }

    /// Objects we created that the cache does not show yet, among those `wanted` accepts.
    pub fn created_since(
        &self,
        wanted: impl Fn(&K) -> bool,
        in_cache: impl Fn(&Key) -> bool,
    ) -> Vec<Arc<K>> {
        let Ok(written) = self.written.lock() else {
            return Vec::new();
        };
        written
            .iter()
            .filter(|(key, w)| w.replaced.is_none() && w.at.elapsed() < TTL && !in_cache(key))
            .filter_map(|(_, w)| w.ours.clone())
            .filter(|o| wanted(o))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(rv: &str, data: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some([("k".to_string(), data.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn our_write_wins_until_the_cache_moves_on() {
        let fresh = Fresh::<ConfigMap>::default();
        let k = ("ns".to_string(), "a".to_string());
        fresh.wrote(k.clone(), Some("1".into()), Some(cm("2", "ours")));
        let stale = Some(Arc::new(cm("1", "old")));
        assert_eq!(
            fresh.view(&k, stale).unwrap().resource_version().unwrap(),
            "2"
        );
        let newer = Some(Arc::new(cm("3", "theirs")));
        assert_eq!(
            fresh
                .view(&k, newer.clone())
                .unwrap()
                .resource_version()
                .unwrap(),
            "3"
        );
        // The entry is gone: even the stale copy is now believed.
        assert_eq!(
            fresh
                .view(&k, Some(Arc::new(cm("1", "old"))))
                .unwrap()
                .resource_version()
                .unwrap(),
            "1"
        );
    }

    #[test]
    fn creations_and_deletions_show_before_the_cache_has_them() {
        let fresh = Fresh::<ConfigMap>::default();
        let k = ("ns".to_string(), "a".to_string());
        fresh.wrote(k.clone(), None, Some(cm("5", "new")));
        assert_eq!(fresh.created_since(|_| true, |_| false).len(), 1);
        assert!(fresh.view(&k, None).is_some());
        fresh.wrote(k.clone(), Some("5".into()), None);
        assert!(fresh.view(&k, Some(Arc::new(cm("5", "new")))).is_none());
        assert!(fresh.view(&k, None).is_none());
    }
}
