//! The `sluice.dev/traffic` finalizer: held on a routed Rollout from the start of an update (before
//! its first traffic action) until its routes are released, so that deleting a Rollout mid-way
//! first gives every route object back as its manifest declares it. Without it the route would keep sending the canary's
//! share to a Service whose pods are being garbage-collected (Argo Rollouts has no such step).
//! A settled Rollout carries no finalizer, so uninstalling Sluice never blocks deleting one.
//!
//! This module only adds and removes the finalizer; when it is needed is decided by the caller
//! from the engine's plan, and the release itself goes through the routers.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::argo::rollout::Rollout;

/// The finalizer's name.
pub const TRAFFIC_FINALIZER: &str = "sluice.dev/traffic";

/// Whether `rollout` carries the finalizer.
pub fn has(rollout: &Rollout) -> bool {
    rollout.finalizers().iter().any(|f| f == TRAFFIC_FINALIZER)
}

fn api(client: &kube::Client, rollout: &Rollout) -> Api<Rollout> {
    Api::namespaced(client.clone(), &rollout.namespace().unwrap_or_default())
}

/// Adds the finalizer, only if the Rollout is still the version the caller planned from (the
/// merge patch replaces the whole list, so a finalizer someone added meanwhile is never lost: the
/// apiserver refuses the write with 409 instead).
pub async fn add(client: &kube::Client, rollout: &Rollout) -> Result<Rollout, kube::Error> {
    let mut finalizers = rollout.finalizers().to_vec();
    finalizers.push(TRAFFIC_FINALIZER.to_string());
    let patch = json!({"metadata": {
        "resourceVersion": rollout.resource_version(),
        "finalizers": finalizers,
    }});
    let mut updated = api(client, rollout)
        .patch(
            &rollout.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    updated.managed_fields_mut().clear();
    Ok(updated)
}

/// Removes the finalizer by position, guarded by a JSON-patch `test` of that position, so a list
/// changed meanwhile makes the write fail (and the caller retry) rather than remove another
/// finalizer. A Rollout already gone is fine.
pub async fn remove(client: &kube::Client, rollout: &Rollout) -> Result<(), kube::Error> {
    let Some(index) = rollout
        .finalizers()
        .iter()
        .position(|f| f == TRAFFIC_FINALIZER)
    else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": TRAFFIC_FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .expect("a well-formed JSON patch");
    match api(client, rollout)
        .patch(
            &rollout.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
