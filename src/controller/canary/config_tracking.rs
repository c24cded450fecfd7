//! Config tracking for Canaries (Flagger's `ConfigTracker`): the ConfigMaps and Secrets a target's
//! pod template references (volumes, projected volumes, `env[].valueFrom`, `envFrom`, in
//! containers and init containers) are checksummed into `status.trackedConfigs` (keys
//! `configmap/<name>` and `secret/<name>`), so a change to one of them starts a run like a
//! template change does; at initialisation and promotion each is copied as `<name>-primary`
//! (owned by the Canary) and the primary's pod template is rewritten to reference the copies.
//!
//! ConfigMaps and Secrets are observed through watch caches that keep no data: the checksum is
//! computed when an object arrives and only it (and the metadata) stays in memory. The data is
//! read from the API only when a copy is made. A ConfigMap or Secret annotated
//! `flagger.app/config-tracking: disabled` is not tracked, nor are Secrets of types other than
//! Opaque, basic-auth, ssh-auth and TLS (registry credentials belong to service accounts), as
//! upstream.
//!
//! Checksums are FNV-64a over the data's JSON, not upstream's SHA-256 prefix: a Canary taken over
//! from Flagger runs once after the takeover.
//!
//! If the controller may not list and watch ConfigMaps or Secrets (RBAC; the Helm chart grants
//! Secrets only through `secrets.configTracking`), that kind is disabled: asked once at start with
//! SelfSubjectAccessReviews (and a 403 on the first list disables it too), one warning is logged,
//! no watch retries, and the cache counts as ready; the controller tells each Canary whose target
//! references such a config once, with a Warning Event. A cache that is still loading holds every
//! Canary's tick back, so a restart never mistakes a config it has not seen yet for a removed one.
//!
//! This module never writes the user's ConfigMaps or Secrets, only their `-primary` copies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::{Error, FIELD_MANAGER, Shared, generated_annotations, owner};
use crate::api::flagger::canary::Canary;

/// Annotation on a ConfigMap or Secret; `disabled` opts it out of tracking.
pub const TRACKING_ANNOTATION: &str = "flagger.app/config-tracking";
/// Where the cache keeps an object's checksum (in memory only, never written).
const CHECKSUM_ANNOTATION: &str = "sluice.internal/config-checksum";
/// Secret types that are tracked (upstream's list; an absent type is Opaque).
const TRACKED_SECRET_TYPES: [&str; 4] = [
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/tls",
];
/// The key prefix of a ConfigMap in `status.trackedConfigs`.
pub const CONFIG_MAP: &str = "configmap";
/// The key prefix of a Secret in `status.trackedConfigs`.
pub const SECRET: &str = "secret";

/// The ConfigMaps and Secrets a pod spec references, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

/// What a pod spec references: volumes (also projected), `env[].valueFrom` and `envFrom` of its
/// containers and init containers.
pub fn references(spec: &PodSpec) -> References {
    let mut refs = References::default();
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(name);
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            if let Some(cm) = &source.config_map {
                refs.config_maps.insert(cm.name.clone());
            }
            if let Some(secret) = &source.secret {
                refs.secrets.insert(secret.name.clone());
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        for env in container.env.iter().flatten() {
            let Some(from) = &env.value_from else {
                continue;
            };
            if let Some(cm) = &from.config_map_key_ref {
                refs.config_maps.insert(cm.name.clone());
            }
            if let Some(secret) = &from.secret_key_ref {
                refs.secrets.insert(secret.name.clone());
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                refs.config_maps.insert(cm.name.clone());
            }
            if let Some(secret) = &from.secret_ref {
                refs.secrets.insert(secret.name.clone());
            }
        }
    }
    refs.config_maps.retain(|n| !n.is_empty());
    refs.secrets.retain(|n| !n.is_empty());
    refs
}

/// Rewrites every reference to a tracked config (`tracked` keys, `configmap/<name>` /
/// `secret/<name>`) to its `-primary` copy (upstream `ApplyPrimaryConfigs`).
pub fn rewrite(spec: &mut PodSpec, tracked: &BTreeMap<String, String>) {
    let is = |kind: &str, name: &str| tracked.contains_key(&format!("{kind}/{name}"));
    let primary = |name: &mut String| name.push_str("-primary");
    for volume in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = volume.config_map.as_mut()
            && is(CONFIG_MAP, &cm.name)
        {
            primary(&mut cm.name);
        }
        if let Some(name) = volume.secret.as_mut().and_then(|s| s.secret_name.as_mut())
            && is(SECRET, name)
        {
            primary(name);
        }
        let sources = volume.projected.as_mut().and_then(|p| p.sources.as_mut());
        for source in sources.into_iter().flatten() {
            if let Some(cm) = source.config_map.as_mut()
                && is(CONFIG_MAP, &cm.name)
            {
                primary(&mut cm.name);
            }
            if let Some(secret) = source.secret.as_mut()
                && is(SECRET, &secret.name)
            {
                primary(&mut secret.name);
            }
        }
    }
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        for env in container.env.iter_mut().flatten() {
            let Some(from) = env.value_from.as_mut() else {
                continue;
            };
            if let Some(cm) = from.config_map_key_ref.as_mut()
                && is(CONFIG_MAP, &cm.name)
            {
                primary(&mut cm.name);
            }
            if let Some(secret) = from.secret_key_ref.as_mut()
                && is(SECRET, &secret.name)
            {
                primary(&mut secret.name);
            }
        }
        for from in container.env_from.iter_mut().flatten() {
            if let Some(cm) = from.config_map_ref.as_mut()
                && is(CONFIG_MAP, &cm.name)
            {
                primary(&mut cm.name);
            }
            if let Some(secret) = from.secret_ref.as_mut()
                && is(SECRET, &secret.name)
            {
                primary(&mut secret.name);
            }
        }
    }
}

fn fnv64a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The checksum of a config's data: FNV-64a of its JSON (maps serialise with sorted keys).
pub fn checksum<T: Serialize>(data: &T) -> String {
    let json = serde_json::to_vec(data).unwrap_or_default();
    format!("{:016x}", fnv64a(&json))
}

/// Keeps the checksum and drops the data and managedFields, so the cache stays small.
fn strip_config_map(cm: &mut ConfigMap) {
    let sum = checksum(&(&cm.data, &cm.binary_data));
    cm.data = None;
    cm.binary_data = None;
    cm.managed_fields_mut().clear();
    cm.annotations_mut()
        .insert(CHECKSUM_ANNOTATION.to_string(), sum);
}

fn strip_secret(secret: &mut Secret) {
    let sum = checksum(&(&secret.data, &secret.string_data));
    secret.data = None;
    secret.string_data = None;
    secret.managed_fields_mut().clear();
    secret
        .annotations_mut()
        .insert(CHECKSUM_ANNOTATION.to_string(), sum);
}

fn tracked<K: Resource>(object: &K) -> Option<String> {
    let annotations = object.meta().annotations.as_ref();
    let disabled = annotations
        .and_then(|a| a.get(TRACKING_ANNOTATION))
        .is_some_and(|v| v == "disabled");
    if disabled {
        return None;
    }
    annotations
        .and_then(|a| a.get(CHECKSUM_ANNOTATION))
        .cloned()
}

/// The ConfigMap and Secret caches of the Canary controller.
#[derive(Clone)]
pub struct Caches {
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    config_maps_disabled: Arc<AtomicBool>,
    secrets_disabled: Arc<AtomicBool>,
}

/// A cache's change stream.
pub type Changes<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// One tracked kind: its resource name for RBAC and what to tell the operator when the controller
/// may not watch it.
struct Kind {
    /// `ConfigMap` or `Secret`.
    name: &'static str,
    /// The core-group resource (`configmaps`, `secrets`).
    resource: &'static str,
    /// How to grant the permission.
    grant: &'static str,
}

const CONFIG_MAP_KIND: Kind = Kind {
    name: "ConfigMap",
    resource: "configmaps",
    grant: "grant list and watch on configmaps (the Helm chart does by default)",
};

const SECRET_KIND: Kind = Kind {
    name: "Secret",
    resource: "secrets",
    grant: SECRETS_GRANT,
};

/// The chart values that let the controller watch Secrets.
pub const SECRETS_GRANT: &str = "enable the Helm value secrets.configTracking (with the namespaces in secrets.namespaces, or secrets.clusterWide)";

/// Whether the controller may list and watch `resource` (core group) where it watches, asked with
/// SelfSubjectAccessReviews: `None` when the apiserver could not be asked.
async fn may_watch(shared: &Shared, resource: &str) -> Option<bool> {
    super::missing_verbs(
        &shared.client,
        shared.namespace.as_deref(),
        "",
        resource,
        &["list", "watch"],
    )
    .await
    .map(|missing| missing.is_empty())
}

fn disable(kind: &Kind, disabled: &AtomicBool) {
    if !disabled.swap(true, Ordering::AcqRel) {
        tracing::warn!(
            kind = %kind.name,
            "{} tracking disabled: the controller's ServiceAccount may not list/watch {}; {} to track {}s",
            kind.name,
            kind.resource,
            kind.grant,
            kind.name
        );
    }
}

/// One watch cache of a tracked kind. Not started when the controller may not list and watch the
/// kind; stopped when its first list is refused (403) anyway. Either way the kind is disabled: one
/// warning, and the cache counts as ready (empty) instead of retrying forever.
async fn cache<K>(
    shared: &Shared,
    strip: fn(&mut K),
    kind: &'static Kind,
    disabled: Arc<AtomicBool>,
) -> (Store<K>, Changes<K>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    if may_watch(shared, kind.resource).await == Some(false) {
        disable(kind, &disabled);
        return (store, futures::stream::empty().boxed());
    }
    let listed = Arc::new(AtomicBool::new(false));
    let events = reflector::reflector(
        writer,
        watcher(shared.api::<K>(), watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(strip),
    )
    .take_while(move |event| {
        let refused_first_list = match event {
            Ok(watcher::Event::InitDone) => {
                listed.store(true, Ordering::Release);
                false
            }
            Err(
                watcher::Error::InitialListFailed(kube::Error::Api(status))
                | watcher::Error::WatchStartFailed(kube::Error::Api(status)),
            ) => status.code == 403 && !listed.load(Ordering::Acquire),
            _ => false,
        };
        if refused_first_list {
            disable(kind, &disabled);
        }
        futures::future::ready(!refused_first_list)
    })
    .touched_objects()
    .boxed();
    (store, events)
}

impl Caches {
    /// The caches and their change streams (ConfigMaps, Secrets).
    pub async fn new(shared: &Shared) -> (Self, Changes<ConfigMap>, Changes<Secret>) {
        let config_maps_disabled = Arc::new(AtomicBool::new(false));
        let secrets_disabled = Arc::new(AtomicBool::new(false));
        let (config_maps, cm_events) = cache(
            shared,
            strip_config_map,
            &CONFIG_MAP_KIND,
            config_maps_disabled.clone(),
        )
        .await;
        let (secrets, secret_events) =
            cache(shared, strip_secret, &SECRET_KIND, secrets_disabled.clone()).await;
        (
            Self {
                config_maps,
                secrets,
                config_maps_disabled,
                secrets_disabled,
            },
            cm_events,
            secret_events,
        )
    }

    /// Both caches have their first list (or their kind is disabled).
    pub fn ready(&self) -> bool {
        let synced = |ready: Option<()>, disabled: &AtomicBool| {
            ready.is_some() || disabled.load(Ordering::Acquire)
        };
        synced(
            self.config_maps
                .wait_until_ready()
                .now_or_never()
                .and_then(Result::ok),
            &self.config_maps_disabled,
        ) && synced(
            self.secrets
                .wait_until_ready()
                .now_or_never()
                .and_then(Result::ok),
            &self.secrets_disabled,
        )
    }

    /// Secrets are not tracked: the controller may not list/watch them.
    pub fn secrets_disabled(&self) -> bool {
        self.secrets_disabled.load(Ordering::Acquire)
    }

    /// The checksums of the tracked configs `spec` references, keyed as `status.trackedConfigs`.
    /// A referenced config that does not exist is not tracked (as upstream).
    pub fn observe(&self, namespace: &str, spec: Option<&PodSpec>) -> BTreeMap<String, String> {
        let mut configs = BTreeMap::new();
        let Some(spec) = spec else {
            return configs;
        };
        let refs = references(spec);
        for name in &refs.config_maps {
            let cm = self
                .config_maps
                .get(&ObjectRef::new(name).within(namespace));
            if let Some(sum) = cm.as_deref().and_then(tracked) {
                configs.insert(format!("{CONFIG_MAP}/{name}"), sum);
            }
        }
        for name in &refs.secrets {
            let secret = self.secrets.get(&ObjectRef::new(name).within(namespace));
            let Some(secret) = secret else { continue };
            let kind = secret.type_.as_deref().unwrap_or("Opaque");
            if !TRACKED_SECRET_TYPES.contains(&kind) {
                continue;
            }
            if let Some(sum) = tracked(secret.as_ref()) {
                configs.insert(format!("{SECRET}/{name}"), sum);
            }
        }
        configs
    }

    /// The Canaries whose target references this ConfigMap (`kind` = [`CONFIG_MAP`]) or Secret.
    pub fn canaries_using(
        canaries: &Store<Canary>,
        deployments: &Store<Deployment>,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Vec<ObjectRef<Canary>> {
        canaries
            .state()
            .iter()
            .filter(|c| c.namespace().as_deref() == Some(namespace))
            .filter(|c| {
                let target =
                    deployments.get(&ObjectRef::new(&c.spec.target_ref.name).within(namespace));
                let Some(spec) = target.as_ref().and_then(|d| d.spec.as_ref()) else {
                    return false;
                };
                let Some(pod) = spec.template.spec.as_ref() else {
                    return false;
                };
                let refs = references(pod);
                match kind {
                    CONFIG_MAP => refs.config_maps.contains(name),
                    _ => refs.secrets.contains(name),
                }
            })
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect()
    }
}

/// Copies each tracked config to `<name>-primary`, owned by the Canary (upstream
/// `CreatePrimaryConfigs`). The data is read from the API here (the caches hold none).
pub async fn copy_to_primary(
    shared: &Shared,
    canary: &Canary,
    tracked: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let write_error = |action, kind, name: &str, source| Error::Write {
        action,
        kind,
        namespace: namespace.clone(),
        name: name.to_string(),
        canary: canary.name_any(),
        source,
    };
    for key in tracked.keys() {
        let Some((kind, name)) = key.split_once('/') else {
            continue;
        };
        let copy = format!("{name}-primary");
        let metadata = |labels: BTreeMap<String, String>| {
            json!({
                "name": copy,
                "namespace": namespace,
                "labels": labels,
                "annotations": generated_annotations(),
                "ownerReferences": owner(canary).into_iter().collect::<Vec<_>>(),
            })
        };
        match kind {
            CONFIG_MAP => {
                let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &namespace);
                let Some(source) = api
                    .get_opt(name)
                    .await
                    .map_err(|e| write_error("reading", "ConfigMap", name, e))?
                else {
                    continue;
                };
                let body = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": metadata(source.labels().clone()),
                    "data": source.data.clone().unwrap_or_default(),
                    "binaryData": source.binary_data.clone().unwrap_or_default(),
                });
                api.patch(&copy, &params, &Patch::Apply(&body))
                    .await
                    .map_err(|e| write_error("applying", "ConfigMap", &copy, e))?;
            }
            SECRET => {
                let api: Api<Secret> = Api::namespaced(shared.client.clone(), &namespace);
                let Some(source) = api
                    .get_opt(name)
                    .await
                    .map_err(|e| write_error("reading", "Secret", name, e))?
                else {
                    continue;
                };
                let body = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": metadata(source.labels().clone()),
                    "type": source.type_.clone().unwrap_or_else(|| "Opaque".into()),
                    "data": source.data.clone().unwrap_or_default(),
                });
                api.patch(&copy, &params, &Patch::Apply(&body))
                    .await
                    .map_err(|e| write_error("applying", "Secret", &copy, e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn pod() -> PodSpec {
        serde_json::from_value(json!({
            "containers": [{"name": "app",
                "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "a"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "b"}}},
                    {"name": "C", "value": "plain"},
                ],
                "envFrom": [{"configMapRef": {"name": "from-cm"}}, {"secretRef": {"name": "from-secret"}}]}],
            "initContainers": [{"name": "init",
                "envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "vol-cm"}},
                {"name": "v2", "secret": {"secretName": "vol-secret"}},
                {"name": "v3", "projected": {"sources": [
                    {"configMap": {"name": "proj-cm"}}, {"secret": {"name": "proj-secret"}}]}},
                {"name": "v4", "emptyDir": {}},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn references_cover_volumes_env_and_init_containers() {
        let refs = references(&pod());
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            refs.config_maps,
            set(&["env-cm", "from-cm", "init-cm", "proj-cm", "vol-cm"])
        );
        assert_eq!(
            refs.secrets,
            set(&["env-secret", "from-secret", "proj-secret", "vol-secret"])
        );
    }

    #[test]
    fn rewrite_suffixes_only_tracked_configs() {
        let mut spec = pod();
        let tracked = BTreeMap::from([
            ("configmap/vol-cm".to_string(), "x".to_string()),
            ("configmap/env-cm".to_string(), "x".to_string()),
            ("configmap/init-cm".to_string(), "x".to_string()),
            ("secret/proj-secret".to_string(), "x".to_string()),
            ("secret/from-secret".to_string(), "x".to_string()),
        ]);
        rewrite(&mut spec, &tracked);
        let refs = references(&spec);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            refs.config_maps,
            set(&[
                "env-cm-primary",
                "from-cm",
                "init-cm-primary",
                "proj-cm",
                "vol-cm-primary"
            ])
        );
        assert_eq!(
            refs.secrets,
            set(&[
                "env-secret",
                "from-secret-primary",
                "proj-secret-primary",
                "vol-secret"
            ])
        );
    }

    #[test]
    fn checksum_changes_with_the_data_only() {
        let mut a: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "c", "resourceVersion": "1"}, "data": {"k": "v1"}}))
        .unwrap();
        let mut b = a.clone();
        b.metadata.resource_version = Some("2".into());
        let mut c = a.clone();
        c.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
        for cm in [&mut a, &mut b, &mut c] {
            strip_config_map(cm);
            assert!(cm.data.is_none(), "the cache keeps no data");
        }
        assert_eq!(tracked(&a), tracked(&b));
        assert_ne!(tracked(&a), tracked(&c));
        assert_eq!(tracked(&a).map(|s| s.len()), Some(16));
    }

    #[test]
    fn disabled_annotation_opts_out() {
        let mut cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "c", "annotations": {"flagger.app/config-tracking": "disabled"}},
            "data": {"k": "v"}}))
        .unwrap();
        strip_config_map(&mut cm);
        assert_eq!(tracked(&cm), None);
    }

    #[test]
    fn fnv64a_matches_known_vectors() {
        assert_eq!(fnv64a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
