//! Writes the ephemeral metadata the engine decided on (`canaryMetadata` / `stableMetadata`,
//! `activeMetadata` / `previewMetadata`): into a ReplicaSet's pod
//! template (so pods it creates carry them), onto its existing pods, and last into its record
//! annotation (Argo's `rollout.argoproj.io/ephemeral-metadata`), so a crash part-way leaves the
//! old record and the next plan does it all again.
//!
//! This module must never decide which metadata a ReplicaSet carries (`engine::ephemeral` does)
//! nor touch a label or annotation it did not put there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::Error;
use crate::api::argo::rollout::{
    EPHEMERAL_METADATA_ANNOTATION, POD_TEMPLATE_HASH_LABEL, PodTemplateMetadata,
};

/// `{"labels": {...}, "annotations": {...}}` as a JSON merge patch of `metadata`: the desired
/// values, and `null` for each key only `previous` had.
pub fn metadata_patch(
    previous: Option<&PodTemplateMetadata>,
    desired: Option<&PodTemplateMetadata>,
) -> Value {
    let field = |pick: fn(&PodTemplateMetadata) -> Option<&BTreeMap<String, String>>| {
        let mut out = Map::new();
        for key in previous.and_then(pick).into_iter().flat_map(|m| m.keys()) {
            out.insert(key.clone(), Value::Null);
        }
        for (key, value) in desired.and_then(pick).into_iter().flatten() {
            out.insert(key.clone(), Value::String(value.clone()));
        }
        Value::Object(out)
    };
    json!({
        "labels": field(|m| m.labels.as_ref()),
        "annotations": field(|m| m.annotations.as_ref()),
    })
}

/// Adds `desired` to a new ReplicaSet: its pod template's metadata and its record annotation.
pub fn add_to_new(
    metadata: &mut ObjectMeta,
    template: &mut ObjectMeta,
    desired: Option<&PodTemplateMetadata>,
) {
    let Some(desired) = desired else { return };
    fn merge(into: &mut Option<BTreeMap<String, String>>, from: &Option<BTreeMap<String, String>>) {
        if let Some(from) = from {
            into.get_or_insert_with(BTreeMap::new)
                .extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    merge(&mut template.labels, &desired.labels);
    merge(&mut template.annotations, &desired.annotations);
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(EPHEMERAL_METADATA_ANNOTATION.into(), record(Some(desired)));
}

/// The record annotation's value (`null` removes it).
pub fn record(desired: Option<&PodTemplateMetadata>) -> String {
    desired
        .and_then(|d| serde_json::to_string(d).ok())
        .unwrap_or_default()
}

/// Merge-patches `patch` (see [`metadata_patch`]) into every pod the ReplicaSet `rs_name`
/// controls. A pod gone meanwhile is fine.
pub async fn patch_pods(
    client: &kube::Client,
    namespace: &str,
    rs_name: &str,
    hash: &str,
    rollout: &str,
    patch: &Value,
    params: &PatchParams,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{POD_TEMPLATE_HASH_LABEL}={hash}");
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.to_string(),
            name: rs_name.to_string(),
            source,
        })?;
    let body = json!({"metadata": patch});
    for pod in pods.items.iter().filter(|p| controlled_by(p, rs_name)) {
        let name = pod.name_any();
        match api.patch(&name, params, &Patch::Merge(&body)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::PatchPod {
                    namespace: namespace.to_string(),
                    name,
                    rollout: rollout.to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn controlled_by(pod: &Pod, rs_name: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "ReplicaSet" && o.name == rs_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(value: Value) -> PodTemplateMetadata {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn keys_only_previous_had_are_removed_and_desired_ones_set() {
        let previous = meta(json!({"labels": {"role": "canary"}, "annotations": {"a": "1"}}));
        let desired = meta(json!({"labels": {"role2": "canary2"}}));
        assert_eq!(
            metadata_patch(Some(&previous), Some(&desired)),
            json!({"labels": {"role": null, "role2": "canary2"}, "annotations": {"a": null}})
        );
        assert_eq!(
            metadata_patch(None, Some(&previous)),
            json!({"labels": {"role": "canary"}, "annotations": {"a": "1"}})
        );
    }

    #[test]
    fn the_record_is_argos_json() {
        let m = meta(json!({"labels": {"role": "stable"}}));
        assert_eq!(record(Some(&m)), r#"{"labels":{"role":"stable"}}"#);
        assert_eq!(record(None), "");
    }
}
