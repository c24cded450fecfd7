//! Adopting the ReplicaSets another controller made for a Rollout — Argo Rollouts, before a team
//! switched to Sluice. Argo names them with its own hash of the pod template (FNV over a
//! Go-specific dump of the struct, which Sluice does not reproduce), so without this a migrated
//! Rollout would start a needless update. Like Argo's `FindNewReplicaSet`, a ReplicaSet whose pod
//! template equals the Rollout's (ignoring the hash label, with Kubernetes' defaults applied) is
//! the Rollout's current one.
//!
//! The same comparison finds Sluice's own ReplicaSet when a Rollout's template comes back with
//! Kubernetes' defaults spelled out — `kubectl argo rollouts undo` copies a ReplicaSet's template,
//! as the apiserver stored it, into the Rollout — so an undo reuses (and renumbers) that
//! ReplicaSet as Argo does instead of starting a new one.
//!
//! The defaults are applied by the apiserver itself, through a server-side dry-run create of the
//! ReplicaSet Sluice would make, instead of being re-implemented. A match is recorded on the
//! ReplicaSet as the `sluice.dev/template-hash` annotation (Sluice sets it on every ReplicaSet it
//! creates too), so each migrated template costs one dry-run and one patch, once. Sluice's own
//! ReplicaSets are compared without reading them again: the cache drops their pod specs (most of
//! the object) and keeps a fingerprint of each instead ([`slim_replica_set`]).
//!
//! This module only decides whether two pod templates are equal; what the Rollout then does with
//! the ReplicaSet is the engine's decision.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::execute;
use super::fresh::{self, Fresh};
use super::observe::{TEMPLATE_HASH_ANNOTATION, runs_template};
use crate::api::argo::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutSpec};
use crate::controller::FIELD_MANAGER;
use crate::engine::hash::pod_template_hash;

/// Finds a ReplicaSet of `rollout` whose pod template is `spec`'s though its hash is not — made by
/// another controller, or Sluice's own for a template now written with Kubernetes' defaults
/// spelled out (`kubectl argo rollouts undo` copies a ReplicaSet's defaulted template back) — and
/// marks it as running `spec`'s template. Returns whether one was adopted (plan again then).
pub async fn adopt(
    client: &kube::Client,
    rollout: &Rollout,
    spec: &RolloutSpec,
    replica_sets: &[Arc<ReplicaSet>],
    written: &Fresh<ReplicaSet>,
) -> Result<bool, kube::Error> {
    let Some(template) = &spec.template else {
        return Ok(false);
    };
    let status = rollout.status.clone().unwrap_or_default();
    let current = pod_template_hash(template, status.collision_count);
    if replica_sets.is_empty() || replica_sets.iter().any(|rs| runs_template(rs, &current)) {
        return Ok(false);
    }
    let namespace = rollout.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &namespace);
    let Some(wanted) = defaulted(&api, rollout, spec, &current).await? else {
        return Ok(false);
    };
    let found = foreign_match(replica_sets, &status.current_pod_hash, &wanted)
        .or_else(|| own_match(replica_sets, &wanted));
    let Some(found) = found else {
        return Ok(false);
    };
    let patch = json!({"metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: current}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut updated = api
        .patch(&found.name_any(), &params, &Patch::Merge(&patch))
        .await?;
    updated.managed_fields_mut().clear();
    tracing::info!(rollout = %rollout.name_any(), %namespace, replica_set = %found.name_any(), "adopted a ReplicaSet whose pod template is the Rollout's");
    written.wrote(
        fresh::key(found.as_ref()),
        found.resource_version(),
        Some(updated),
    );
    Ok(true)
}

/// The ReplicaSet Sluice would make for `spec`, with the apiserver's defaults applied (a
/// server-side dry-run create), as compared; `None` when a ReplicaSet of that name exists but is
/// not this Rollout's (creating it will say so).
async fn defaulted(
    api: &Api<ReplicaSet>,
    rollout: &Rollout,
    spec: &RolloutSpec,
    hash: &str,
) -> Result<Option<Value>, kube::Error> {
    let desired = execute::replica_set(rollout, spec, hash, 0, 0);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match api.create(&params, &desired).await {
        Ok(rs) => Ok(template_of(&rs).map(comparable)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// A ReplicaSet made elsewhere (no annotation; kept whole in the cache for this comparison) with
/// the `wanted` template: the one the status names first, then the newest.
fn foreign_match<'a>(
    replica_sets: &'a [Arc<ReplicaSet>],
    status_hash: &str,
    wanted: &Value,
) -> Option<&'a Arc<ReplicaSet>> {
    let mut foreign: Vec<&Arc<ReplicaSet>> = replica_sets
        .iter()
        .filter(|rs| !rs.annotations().contains_key(TEMPLATE_HASH_ANNOTATION))
        .filter(|rs| template_of(rs).is_some_and(|t| t.spec.is_some()))
        .collect();
    foreign.sort_by_key(|rs| {
        (
            rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) != Some(status_hash),
            std::cmp::Reverse(rs.creation_timestamp()),
        )
    });
    foreign
        .into_iter()
        .find(|rs| template_of(rs).map(comparable).as_ref() == Some(wanted))
}

/// One of Sluice's own ReplicaSets with the `wanted` template, newest first, compared by
/// fingerprint (the cache keeps no pod spec of theirs; one just written may still carry it).
fn own_match<'a>(
    replica_sets: &'a [Arc<ReplicaSet>],
    wanted: &Value,
) -> Option<&'a Arc<ReplicaSet>> {
    let wanted = fingerprint(wanted);
    let mut ours: Vec<&Arc<ReplicaSet>> = replica_sets
        .iter()
        .filter(|rs| rs.annotations().contains_key(TEMPLATE_HASH_ANNOTATION))
        .collect();
    ours.sort_by_key(|rs| std::cmp::Reverse(rs.creation_timestamp()));
    ours.into_iter().find(|rs| {
        let known = match template_of(rs).filter(|t| t.spec.is_some()) {
            Some(template) => Some(fingerprint(&comparable(template))),
            None => rs.annotations().get(FINGERPRINT_ANNOTATION).cloned(),
        };
        known.as_deref() == Some(wanted.as_str())
    })
}

/// Where the watch cache keeps the fingerprint of a ReplicaSet's pod template once it has dropped
/// the template's spec. Only ever in the cache: never sent to the apiserver (no write is built
/// from a cached ReplicaSet's annotations).
const FINGERPRINT_ANNOTATION: &str = "sluice.dev/cached-template-fingerprint";

/// Shrinks a ReplicaSet for the watch cache: for Sluice's own, the pod template's spec (most of
/// the object; only labels, owner, replicas and status are read) gives way to its fingerprint.
/// Another controller's keep their template, to compare before adopting them.
pub fn slim_replica_set(rs: &mut ReplicaSet) {
    if !rs.annotations().contains_key(TEMPLATE_HASH_ANNOTATION) {
        return;
    }
    let Some(template) = rs.spec.as_mut().and_then(|s| s.template.as_mut()) else {
        return;
    };
    if template.spec.is_none() {
        return;
    }
    let print = fingerprint(&comparable(template));
    template.spec = None;
    rs.annotations_mut()
        .insert(FINGERPRINT_ANNOTATION.to_string(), print);
}

/// A fingerprint of a comparable template: equal templates, equal fingerprints. Kept in memory
/// only, so the process's own hasher will do.
fn fingerprint(comparable: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    comparable.to_string().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn template_of(rs: &ReplicaSet) -> Option<&PodTemplateSpec> {
    rs.spec.as_ref()?.template.as_ref()
}

/// A pod template as compared: JSON, without the hash label (Argo's `PodTemplateEqualIgnoreHash`).
fn comparable(template: &PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
        if labels.is_empty() {
            value["metadata"]
                .as_object_mut()
                .map(|m| m.remove("labels"));
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_label_is_ignored_and_nothing_else() {
        let with = |labels: Value| -> PodTemplateSpec {
            serde_json::from_value(json!({
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            }))
            .unwrap()
        };
        let argo = with(json!({"app": "a", POD_TEMPLATE_HASH_LABEL: "5d4f8c"}));
        let ours = with(json!({"app": "a", POD_TEMPLATE_HASH_LABEL: "x7b9z"}));
        assert_eq!(comparable(&argo), comparable(&ours));
        let other = with(json!({"app": "b", POD_TEMPLATE_HASH_LABEL: "x7b9z"}));
        assert_ne!(comparable(&argo), comparable(&other));
        let only_hash = with(json!({POD_TEMPLATE_HASH_LABEL: "x7b9z"}));
        let none: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }))
        .unwrap();
        assert_eq!(comparable(&only_hash), comparable(&none));
    }
}
