//! Where routers read their objects: [`RouteObjects`], watch caches of route objects shared by
//! every Rollout of the controller, or [`Direct`] reads through the API (tests, one-off tools).
//!
//! What [`RouteObjects`] decides:
//! - **which kinds are watched**: a kind is watched from the first time a router reads one of
//!   its objects (third-party CRDs may be absent, so nothing is watched up front). The cluster is
//!   asked once whether it serves the kind (`kube::discovery::pinned_kind`); a kind it does not
//!   serve is the error [`ReadError::NotServed`], remembered for [`NOT_SERVED_RETRY`] so a
//!   Rollout waiting for a CRD does not ask discovery on every reconcile;
//! - **the scope**: the controller's `--namespace` if set, else the whole cluster. An object
//!   outside the scope (an Istio VirtualService `name.other-namespace`) is read through the API;
//! - **until a kind's cache has synced, reads go to the API** (one GET), so the first reconcile
//!   after a start (or after a Rollout names a new kind) works at once instead of waiting for a
//!   whole list; the next ones read the cache;
//! - **our own writes win over an older cached copy** until the watch shows them (or for
//!   [`WRITE_TTL`] at most): a reconcile right after a write must not see the object as it was
//!   before, or it would write again, or release nothing;
//! - **who uses what**: every read names the Rollout it is made for; a change to an object on
//!   the watch is sent, as that Rollout's `(namespace, name)`, on the stream [`RouteObjects::new`]
//!   returns, so a route changed by someone else (a Git re-sync) wakes its Rollout at once.
//!   Names only are kept; a Rollout that stops using an object is only woken once more for it,
//!   and [`RouteObjects::forget`] drops a deleted Rollout.
//!
//! Cached objects keep the managedFields entries of the main resource (the routers' ownership
//! record is built from them, and whether Sluice holds a field decides what a route means), but
//! not those of the status subresource (a gateway controller rewrites them all the time), nor
//! their timestamps, nor `kubectl.kubernetes.io/last-applied-configuration`.
//!
//! This module never decides a weight and never writes an object.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt, Stream, StreamExt};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

/// How long a kind the cluster does not serve is taken as such before discovery is asked again.
pub const NOT_SERVED_RETRY: Duration = Duration::from_secs(30);
/// How long a write of ours is preferred over an older cached copy at most.
pub const WRITE_TTL: Duration = Duration::from_secs(30);

/// `(namespace, name)` of the object (a Rollout) a read is made for.
pub type User = (String, String);

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "the cluster serves no {kind} in {api_version} ({reason}); install its CRD or remove the router from trafficRouting"
    )]
    NotServed {
        api_version: String,
        kind: String,
        reason: String,
    },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Reads route objects for routers.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// The object `namespace/name` of kind `ar` (`None`: it does not exist), read for `user`.
    async fn get(
        &self,
        ar: &ApiResource,
        namespace: &str,
        name: &str,
        user: (&str, &str),
    ) -> Result<Option<DynamicObject>, ReadError>;

    /// `object`, of kind `ar`, as the apiserver stored it after our write.
    fn wrote(&self, _ar: &ApiResource, _object: &DynamicObject) {}

    /// We deleted `namespace/name` of kind `ar`: what we wrote before no longer counts.
    fn deleted(&self, _ar: &ApiResource, _namespace: &str, _name: &str) {}

    /// `kind` of `group` in the version the cluster prefers (SMI's TrafficSplit).
    async fn recommended(&self, group: &str, kind: &str) -> Result<ApiResource, ReadError>;
}

/// Reads through the API, every time.
pub struct Direct(pub kube::Client);

#[async_trait]
impl ObjectSource for Direct {
    async fn get(
        &self,
        ar: &ApiResource,
        namespace: &str,
        name: &str,
        _user: (&str, &str),
    ) -> Result<Option<DynamicObject>, ReadError> {
        get(&self.0, ar, namespace, name).await
    }

    async fn recommended(&self, group: &str, kind: &str) -> Result<ApiResource, ReadError> {
        recommended(&self.0, group, kind).await
    }
}

async fn recommended(
    client: &kube::Client,
    group: &str,
    kind: &str,
) -> Result<ApiResource, ReadError> {
    let not_served = |reason: String| ReadError::NotServed {
        api_version: format!("{group}/*"),
        kind: kind.to_string(),
        reason,
    };
    let served = kube::discovery::group(client, group)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if !s.is_not_found() => ReadError::Kube(kube::Error::Api(s)),
            e => not_served(e.to_string()),
        })?;
    served
        .recommended_kind(kind)
        .map(|(ar, _)| ar)
        .ok_or_else(|| not_served(format!("{group} has no {kind}")))
}

async fn get(
    client: &kube::Client,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<Option<DynamicObject>, ReadError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    Ok(api.get_opt(name).await?)
}

/// `(group, version, kind)`.
type KindKey = (String, String, String);
/// An object: its kind, namespace and name.
type ObjectKey = (KindKey, String, String);

fn kind_key(ar: &ApiResource) -> KindKey {
    (ar.group.clone(), ar.version.clone(), ar.kind.clone())
}

enum KindState {
    Watched {
        resource: ApiResource,
        store: Store<DynamicObject>,
    },
    NotServed {
        since: Instant,
        reason: String,
    },
}

/// What discovery said about a `(group, kind)`.
enum Discovered {
    Served(ApiResource),
    NotServed { since: Instant, reason: String },
}

/// Which users read which objects, both ways.
#[derive(Default)]
pub(crate) struct Users {
    by_object: HashMap<ObjectKey, HashSet<User>>,
    by_user: HashMap<User, HashSet<ObjectKey>>,
}

impl Users {
    fn add(&mut self, object: ObjectKey, user: User) {
        if self
            .by_object
            .get(&object)
            .is_some_and(|users| users.contains(&user))
        {
            return;
        }
        self.by_user
            .entry(user.clone())
            .or_default()
            .insert(object.clone());
        self.by_object.entry(object).or_default().insert(user);
    }

    fn of(&self, object: &ObjectKey) -> Vec<User> {
        self.by_object
            .get(object)
            .map(|users| users.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn forget(&mut self, user: &User) {
        for object in self.by_user.remove(user).unwrap_or_default() {
            if let Some(users) = self.by_object.get_mut(&object) {
                users.remove(user);
                if users.is_empty() {
                    self.by_object.remove(&object);
                }
            }
        }
    }
}

/// A write of ours, preferred over the cache while the cache holds an older version.
struct Written {
    object: Arc<DynamicObject>,
    at: Instant,
}

/// Whether our write `ours` is fresher than the cached copy. resourceVersions are opaque to
/// clients, but every apiserver backed by etcd gives integers that grow; anything else (or a
/// cached copy with the same or a later version) lets the cache win.
fn ours_is_newer(ours: &DynamicObject, cached: Option<&DynamicObject>) -> bool {
    let version = |o: &DynamicObject| {
        o.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (version(ours), cached) {
        (Some(_), None) => true,
        (Some(ours), Some(cached)) => version(cached).is_some_and(|c| c < ours),
        (None, _) => false,
    }
}

/// The object as cached: see the module doc for what is dropped.
pub fn slim(object: &mut DynamicObject) {
    if let Some(entries) = object.metadata.managed_fields.as_mut() {
        entries.retain(|e| e.subresource.as_deref().unwrap_or_default().is_empty());
        for entry in entries.iter_mut() {
            entry.time = None;
        }
    }
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Watch caches of route objects, started per kind on first use (see the module doc).
pub struct RouteObjects {
    client: kube::Client,
    /// The controller's `--namespace`.
    scope: Option<String>,
    kinds: Mutex<HashMap<KindKey, KindState>>,
    users: Arc<Mutex<Users>>,
    written: Mutex<HashMap<ObjectKey, Written>>,
    /// [`ObjectSource::recommended`] answers, by `(group, kind)`.
    recommended: Mutex<HashMap<(String, String), Discovered>>,
    wake: mpsc::UnboundedSender<User>,
}

impl RouteObjects {
    /// The caches (none started yet) and the stream of users of changed objects. Poll the
    /// stream (the Rollout controller's `reconcile_on`); the caches fill without it.
    pub fn new(
        client: kube::Client,
        scope: Option<String>,
    ) -> (Arc<RouteObjects>, impl Stream<Item = User> + Send + 'static) {
        let (wake, woken) = mpsc::unbounded_channel();
        let objects = Arc::new(RouteObjects {
            client,
            scope,
            kinds: Mutex::default(),
            users: Arc::default(),
            written: Mutex::default(),
            recommended: Mutex::default(),
            wake,
        });
        let stream = futures::stream::unfold(woken, |mut rx| async move {
            rx.recv().await.map(|user| (user, rx))
        });
        (objects, stream)
    }

    /// Drops what `user` (a deleted Rollout) read.
    pub fn forget(&self, user: &User) {
        if let Ok(mut users) = self.users.lock() {
            users.forget(user);
        }
    }

    /// The kinds watched so far, as `group/version/kind` (for logs and tests).
    pub fn watched(&self) -> Vec<String> {
        let Ok(kinds) = self.kinds.lock() else {
            return Vec::new();
        };
        let mut out: Vec<String> = kinds
            .iter()
            .filter(|(_, s)| matches!(s, KindState::Watched { .. }))
            .map(|((g, v, k), _)| format!("{g}/{v}/{k}"))
            .collect();
        out.sort();
        out
    }

    fn in_scope(&self, namespace: &str) -> bool {
        self.scope.as_deref().is_none_or(|s| s == namespace)
    }

    /// The cache of `ar`'s kind: `Ok(None)` while it has not synced yet.
    async fn store(
        &self,
        ar: &ApiResource,
    ) -> Result<Option<(ApiResource, Store<DynamicObject>)>, ReadError> {
        let key = kind_key(ar);
        match self.kinds.lock().ok().as_deref().and_then(|k| k.get(&key)) {
            Some(KindState::Watched { resource, store }) => {
                return Ok(ready(store).then(|| (resource.clone(), store.clone())));
            }
            Some(KindState::NotServed { since, reason }) if since.elapsed() < NOT_SERVED_RETRY => {
                return Err(not_served(ar, reason.clone()));
            }
            _ => {}
        }
        let gvk = GroupVersionKind::gvk(&ar.group, &ar.version, &ar.kind);
        let served = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, _)) => resource,
            Err(e @ (kube::Error::Discovery(_) | kube::Error::Api(_))) => {
                let is_missing = match &e {
                    kube::Error::Api(s) => s.is_not_found(),
                    _ => true,
                };
                if !is_missing {
                    return Err(e.into());
                }
                let reason = e.to_string();
                if let Ok(mut kinds) = self.kinds.lock() {
                    kinds.insert(
                        key,
                        KindState::NotServed {
                            since: Instant::now(),
                            reason: reason.clone(),
                        },
                    );
                }
                return Err(not_served(ar, reason));
            }
            Err(e) => return Err(e.into()),
        };
        let Ok(mut kinds) = self.kinds.lock() else {
            return Ok(None);
        };
        if let Some(KindState::Watched { .. }) = kinds.get(&key) {
            // Another reconcile started it meanwhile.
            return Ok(None);
        }
        let store = self.watch(&served, key.clone());
        tracing::info!(kind = %served.kind, api_version = %served.api_version, scope = ?self.scope, "route objects: watching a new kind");
        kinds.insert(
            key,
            KindState::Watched {
                resource: served,
                store,
            },
        );
        Ok(None)
    }

    /// Starts the watch of one kind; every changed object wakes its users.
    fn watch(&self, ar: &ApiResource, key: KindKey) -> Store<DynamicObject> {
        let api: Api<DynamicObject> = match &self.scope {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        };
        let writer = Writer::new(ar.clone());
        let store = writer.as_reader();
        let users = self.users.clone();
        let wake = self.wake.clone();
        let kind = ar.kind.clone();
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(slim);
        tokio::spawn(
            reflector::reflector(writer, events)
                .touched_objects()
                .for_each(move |object| {
                    match object {
                        Ok(object) => {
                            let changed = (
                                key.clone(),
                                object.namespace().unwrap_or_default(),
                                object.name_any(),
                            );
                            let woken = users.lock().map(|u| u.of(&changed)).unwrap_or_default();
                            for user in woken {
                                let _ = wake.send(user);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%kind, %error, "route objects: watch failed, retrying");
                        }
                    }
                    futures::future::ready(())
                }),
        );
        store
    }

    /// Our write, if it is fresher than `cached` (and drops it once it is not).
    fn fresher(&self, key: &ObjectKey, cached: Option<&DynamicObject>) -> Option<DynamicObject> {
        let mut written = self.written.lock().ok()?;
        let entry = written.get(key)?;
        if entry.at.elapsed() < WRITE_TTL && ours_is_newer(&entry.object, cached) {
            return Some((*entry.object).clone());
        }
        written.remove(key);
        None
    }
}

fn ready(store: &Store<DynamicObject>) -> bool {
    store.wait_until_ready().now_or_never().is_some()
}

fn not_served(ar: &ApiResource, reason: String) -> ReadError {
    ReadError::NotServed {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
        reason,
    }
}

#[async_trait]
impl ObjectSource for RouteObjects {
    async fn get(
        &self,
        ar: &ApiResource,
        namespace: &str,
        name: &str,
        user: (&str, &str),
    ) -> Result<Option<DynamicObject>, ReadError> {
        let key = (kind_key(ar), namespace.to_string(), name.to_string());
        if let Ok(mut users) = self.users.lock() {
            users.add(key.clone(), (user.0.to_string(), user.1.to_string()));
        }
        if !self.in_scope(namespace) {
            return get(&self.client, ar, namespace, name).await;
        }
        let Some((resource, store)) = self.store(ar).await? else {
            // Not synced yet: one read through the API (the cache is used from the next one).
            return get(&self.client, ar, namespace, name).await;
        };
        let cached = store.get(&ObjectRef::new_with(name, resource).within(namespace));
        Ok(self
            .fresher(&key, cached.as_deref())
            .or_else(|| cached.map(|o| (*o).clone())))
    }

    async fn recommended(&self, group: &str, kind: &str) -> Result<ApiResource, ReadError> {
        let key = (group.to_string(), kind.to_string());
        match self
            .recommended
            .lock()
            .ok()
            .as_deref()
            .and_then(|k| k.get(&key))
        {
            Some(Discovered::Served(resource)) => return Ok(resource.clone()),
            Some(Discovered::NotServed { since, reason }) if since.elapsed() < NOT_SERVED_RETRY => {
                return Err(ReadError::NotServed {
                    api_version: format!("{group}/*"),
                    kind: kind.to_string(),
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
        let answer = recommended(&self.client, group, kind).await;
        let state = match &answer {
            Ok(resource) => Discovered::Served(resource.clone()),
            Err(ReadError::NotServed { reason, .. }) => Discovered::NotServed {
                since: Instant::now(),
                reason: reason.clone(),
            },
            Err(ReadError::Kube(_)) => return answer,
        };
        if let Ok(mut known) = self.recommended.lock() {
            known.insert(key, state);
        }
        answer
    }

    fn deleted(&self, ar: &ApiResource, namespace: &str, name: &str) {
        let key = (kind_key(ar), namespace.to_string(), name.to_string());
        if let Ok(mut written) = self.written.lock() {
            written.remove(&key);
        }
    }

    fn wrote(&self, ar: &ApiResource, object: &DynamicObject) {
        let key = (
            kind_key(ar),
            object.namespace().unwrap_or_default(),
            object.name_any(),
        );
        let mut object = object.clone();
        slim(&mut object);
        if let Ok(mut written) = self.written.lock() {
            // Entries of objects never read again would stay forever.
            written.retain(|_, w| w.at.elapsed() < WRITE_TTL);
            written.insert(
                key,
                Written {
                    object: Arc::new(object),
                    at: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use serde_json::json;

    fn object(version: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "traefik.io/v1alpha1", "kind": "TraefikService",
            "metadata": {"name": "web", "namespace": "ns", "resourceVersion": version},
        }))
        .unwrap()
    }

    fn key(name: &str) -> ObjectKey {
        (
            (
                "traefik.io".into(),
                "v1alpha1".into(),
                "TraefikService".into(),
            ),
            "ns".into(),
            name.into(),
        )
    }

    #[test]
    fn users_are_found_by_object_and_forgotten() {
        let mut users = Users::default();
        let a: User = ("ns".into(), "a".into());
        let b: User = ("ns".into(), "b".into());
        users.add(key("web"), a.clone());
        users.add(key("web"), b.clone());
        users.add(key("web"), a.clone());
        users.add(key("other"), a.clone());
        let mut of = users.of(&key("web"));
        of.sort();
        assert_eq!(of, [a.clone(), b.clone()]);
        users.forget(&a);
        assert_eq!(users.of(&key("web")), std::slice::from_ref(&b));
        assert!(users.of(&key("other")).is_empty());
        assert!(!users.by_object.contains_key(&key("other")));
        users.forget(&b);
        assert!(users.by_object.is_empty() && users.by_user.is_empty());
    }

    #[test]
    fn our_write_wins_only_over_an_older_cached_copy() {
        let ours = object("12");
        assert!(ours_is_newer(&ours, None));
        assert!(ours_is_newer(&ours, Some(&object("11"))));
        assert!(!ours_is_newer(&ours, Some(&object("12"))));
        assert!(!ours_is_newer(&ours, Some(&object("13"))));
        // Versions that are not integers: the cache is the truth.
        assert!(!ours_is_newer(&object("x"), Some(&object("11"))));
        assert!(!ours_is_newer(&ours, Some(&object("y"))));
    }

    #[test]
    fn slim_keeps_spec_owners_only() {
        let mut o = object("1");
        let entry = |manager: &str, subresource: Option<&str>| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            subresource: subresource.map(String::from),
            time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        };
        o.metadata.managed_fields = Some(vec![
            entry("argocd-controller", None),
            entry("traefik", Some("status")),
            entry("sluice", Some("")),
        ]);
        o.metadata.annotations = Some(
            [
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                ),
                ("team".to_string(), "a".to_string()),
            ]
            .into(),
        );
        slim(&mut o);
        let managers: Vec<_> = o
            .managed_fields()
            .iter()
            .map(|e| (e.manager.clone().unwrap_or_default(), e.time.is_none()))
            .collect();
        assert_eq!(
            managers,
            [
                ("argocd-controller".to_string(), true),
                ("sluice".to_string(), true)
            ]
        );
        assert_eq!(o.annotations().keys().collect::<Vec<_>>(), ["team"]);
    }
}
