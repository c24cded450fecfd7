//! Carries out the engine's "revert in Git" ([`crate::engine::git_revert`]) for a Rollout whose
//! update was just aborted, and records it: one Event and the `GitReverted` status condition,
//! whose message names the aborted pod template so the engine never asks twice for one abort.
//!
//! Must never decide whether to revert (the engine does), and never put anything read from the
//! credentials Secret into the Event, the log or the status ([`crate::gitops`] keeps it out of
//! its errors).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::{Ctx, Error, events, write_status};
use crate::api::argo::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutSpec, RolloutStatus};
use crate::engine::git_revert::{self, ANNOTATION, CONDITION};
use crate::gitops::{self, Outcome};

/// (container, image) of a pod template.
fn images(template: Option<&PodTemplateSpec>) -> Vec<(String, String)> {
    template
        .and_then(|t| t.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// The stable ReplicaSet's images, read through the API (the watch cache drops the pod spec of
/// Sluice's own ReplicaSets); once per abort of an opted-in Rollout.
async fn stable_images(
    status: &RolloutStatus,
    replica_sets: &[Arc<ReplicaSet>],
    ctx: &Ctx,
) -> Option<Vec<(String, String)>> {
    let stable = replica_sets
        .iter()
        .find(|rs| rs.labels().get(POD_TEMPLATE_HASH_LABEL) == Some(&status.stable_rs))?;
    let api: Api<ReplicaSet> = Api::namespaced(
        ctx.shared.client.clone(),
        &stable.namespace().unwrap_or_default(),
    );
    let rs = api.get(&stable.name_any()).await.ok()?;
    Some(images(rs.spec.as_ref()?.template.as_ref()))
}

/// Reverts the aborted update in Git when the engine says so (`status`: the status just
/// written), then records the outcome.
pub async fn run(
    rollout: &Rollout,
    spec: &RolloutSpec,
    status: &RolloutStatus,
    replica_sets: &[Arc<ReplicaSet>],
    ctx: &Ctx,
) -> Result<(), Error> {
    let annotation = rollout.annotations().get(ANNOTATION).map(String::as_str);
    // Read only when the engine may want them.
    if annotation.is_none() || git_revert::recorded(status, &status.current_pod_hash) {
        return Ok(());
    }
    let current = images(spec.template.as_ref());
    let stable = stable_images(status, replica_sets, ctx).await;
    let Some(decision) = git_revert::plan(annotation, status, &current, stable.as_deref()) else {
        return Ok(());
    };
    let hash = status.current_pod_hash.clone();
    let (ok, reason, outcome) = match decision {
        Err(e) => (false, "InvalidAnnotation", e.to_string()),
        Ok(revert) => match gitops::revert(&ctx.shared.client, rollout, &revert).await {
            Ok(Outcome::Pushed { commit, url, path }) => (
                true,
                "Pushed",
                format!(
                    "reverted in Git: commit {commit} pushed to {url} ({path}) after \"{}\"",
                    revert.reason
                ),
            ),
            Ok(Outcome::AlreadyInGit { url, path }) => (
                true,
                "AlreadyInGit",
                format!("already reverted in Git: {path} in {url} declares the stable images"),
            ),
            Err(e) => (false, "RevertFailed", format!("not reverted in Git: {e}")),
        },
    };
    tracing::info!(rollout = %rollout.name_any(), namespace = ?rollout.namespace(), ok, reason, "{outcome}");
    ctx.events.send(
        rollout.object_ref(&()),
        vec![events::Record {
            warning: !ok,
            reason: if ok { "GitReverted" } else { "GitRevertFailed" }.into(),
            message: format!("{outcome} ({})", git_revert::marker(&hash)),
        }],
    );
    record(
        rollout,
        git_revert::condition(&hash, ok, reason, &outcome, Timestamp::now()),
        ctx,
    )
    .await
}

/// Adds the condition to the Rollout's stored status.
async fn record(
    rollout: &Rollout,
    condition: crate::api::argo::rollout::RolloutCondition,
    ctx: &Ctx,
) -> Result<(), Error> {
    let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
    let api: Api<Rollout> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let fresh = api.get(&name).await.map_err(|source| Error::WriteStatus {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;
    let mut status = fresh.status.clone().unwrap_or_default();
    status.conditions.retain(|c| c.type_ != CONDITION);
    status.conditions.push(condition);
    write_status(&fresh, &status, ctx).await
}
