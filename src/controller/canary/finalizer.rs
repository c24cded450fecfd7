//! `revertOnDeletion`: the finalizer `finalizer.flagger.app` (Flagger's name) and what it does
//! when the Canary is deleted — hand the target back to the user before the generated objects
//! go: the target Deployment is scaled back to the primary's replicas, once it is ready the apex
//! Service selects the target's pods again (and Sluice gives up its ownership of the apex, so it
//! outlives the Canary), then the finalizer is removed and garbage collection takes the primary,
//! the `-primary` / `-canary` Services and the config copies.
//!
//! While it reverts, the Canary's phase is `Terminating` (Events "Terminating canary ..." and,
//! once the finalizer is gone, "Terminated canary ...", as Flagger's).
//!
//! The finalizer is added while `spec.revertOnDeletion` is true and removed (without reverting)
//! when it is turned off. A target that does not become ready within the progress deadline is
//! handed back anyway, with a Warning Event: the user asked for the Canary to go.
//!
//! A Service the user made before the Canary (`takeover`) gets its own ports and selector back
//! instead, and keeps no trace of Sluice; a route object the user made (`routing`, adopted
//! without an owner reference) gets its original `spec` back.
//!
//! This module never decides a run; it writes only the target's `spec.replicas`, the Services
//! of the Canary's names and the Canary's finalizers.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Ctx, Error, FIELD_MANAGER, selector_label, takeover, workload};
use crate::api::flagger::canary::{Canary, CanaryStatus};
use crate::engine::flagger::{Readiness, readiness};

/// Flagger's finalizer name, so Canaries move between Flagger and Sluice unchanged.
pub const FINALIZER: &str = "finalizer.flagger.app";
/// How often a revert in progress looks again.
const REVERT_POLL: Duration = Duration::from_secs(1);

fn has_finalizer(canary: &Canary) -> bool {
    canary.finalizers().iter().any(|f| f == FINALIZER)
}

impl Ctx {
    /// Keeps the finalizer in step with `spec.revertOnDeletion` and reverts a deleted Canary.
    /// `Some` ends this reconcile with that requeue; `None` lets the tick go on.
    pub(super) async fn finalizer(&self, canary: &Canary) -> Result<Option<Requeue>, Error> {
        let deleting = canary.meta().deletion_timestamp.is_some();
        let has = has_finalizer(canary);
        if deleting {
            if !has {
                return Ok(Some(Requeue::await_change()));
            }
            if !canary.revert_on_deletion() {
                self.set_finalizer(canary, false).await?;
                return Ok(Some(Requeue::await_change()));
            }
            // The revert's first step is not held back by the status write (the target starts
            // scaling up at once); the finalizer goes with the resourceVersion that write made.
            let reverted = self.revert(canary).await?;
            let mut current = canary.clone();
            if let Some(version) = self.set_terminating(canary).await? {
                current.metadata.resource_version = Some(version);
            }
            if !reverted {
                return Ok(Some(Requeue::requeue(REVERT_POLL)));
            }
            self.set_finalizer(&current, false).await?;
            let status = canary.status.clone().unwrap_or_default();
            let message = format!(
                "Terminated canary {}.{}",
                canary.name_any(),
                canary.namespace().unwrap_or_default()
            );
            self.event(canary, "", &status, false, &message).await;
            return Ok(Some(Requeue::await_change()));
        }
        match (canary.revert_on_deletion(), has) {
            // The change to the Canary ticks it again.
            (true, false) => self
                .set_finalizer(canary, true)
                .await
                .map(|()| Some(Requeue::await_change())),
            (false, true) => self
                .set_finalizer(canary, false)
                .await
                .map(|()| Some(Requeue::await_change())),
            _ => Ok(None),
        }
    }

    /// Writes the `Terminating` phase (and tells it, as upstream does) unless the status says it
    /// already; the new resourceVersion when it wrote.
    async fn set_terminating(&self, canary: &Canary) -> Result<Option<String>, Error> {
        let status = canary.status.clone().unwrap_or_default();
        let kind = &canary.spec.target_ref.kind;
        let Some(next) = crate::engine::flagger::terminating(&status, kind, Timestamp::now())
        else {
            return Ok(None);
        };
        let version = super::write_status(canary, &next, self).await?;
        let message = format!(
            "Terminating canary {}.{}",
            canary.name_any(),
            canary.namespace().unwrap_or_default()
        );
        self.event(canary, "", &next, false, &message).await;
        Ok(Some(version))
    }

    /// Adds or removes the finalizer, guarded by the resourceVersion it was decided from.
    async fn set_finalizer(&self, canary: &Canary, present: bool) -> Result<(), Error> {
        let namespace = canary.namespace().unwrap_or_default();
        let name = canary.name_any();
        let mut finalizers: Vec<String> = canary
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if present {
            finalizers.push(FINALIZER.to_string());
        }
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": canary.resource_version(),
        }});
        let api: Api<Canary> = Api::namespaced(self.shared.client.clone(), &namespace);
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict { namespace, name }),
            // Already gone: nothing left to finalize.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(Self::write_error(
                canary,
                "updating the finalizers of",
                "Canary",
                &name,
                e,
            )),
        }
    }

    /// One step of handing the target back; `true` once done.
    async fn revert(&self, canary: &Canary) -> Result<bool, Error> {
        let namespace = canary.namespace().unwrap_or_default();
        let Some(target) = self.target(canary) else {
            return Ok(true);
        };
        let target_name = target.name_any();
        let primary = self
            .deployments
            .get(&ObjectRef::new(&format!("{target_name}-primary")).within(&namespace));
        let replicas = primary
            .as_ref()
            .and_then(|p| p.spec.as_ref()?.replicas)
            .filter(|r| *r > 0)
            .unwrap_or(1);
        let current = target.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if current == 0 || (primary.is_some() && current != replicas) {
            let api: Api<k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(self.shared.client.clone(), &namespace);
            api.patch(
                &target_name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map_err(|e| Self::write_error(canary, "scaling", "Deployment", &target_name, e))?;
            return Ok(false);
        }
        let status = canary.status.clone().unwrap_or_default();
        match readiness(
            &target_name,
            &workload(&target),
            100,
            canary.progress_deadline(),
            Timestamp::now(),
        ) {
            Readiness::Ready => {}
            Readiness::Waiting(_) => return Ok(false),
            Readiness::Stuck(message) => {
                let text = format!(
                    "Reverting {}.{namespace} on deletion: {message}; handing the target back anyway",
                    canary.name_any()
                );
                self.event(canary, "", &status, true, &text).await;
            }
        }
        self.hand_back_apex(canary, &target, &status).await?;
        let provider = super::provider(canary, &self.mesh_provider);
        self.routing.give_back(canary, &provider).await?;
        Ok(true)
    }

    /// Points the apex Service at the target's pods and drops Sluice's owner reference and
    /// annotations (server-side apply of only the selector and ports), so it outlives the Canary.
    async fn hand_back_apex(
        &self,
        canary: &Canary,
        target: &k8s_openapi::api::apps::v1::Deployment,
        status: &CanaryStatus,
    ) -> Result<(), Error> {
        let namespace = canary.namespace().unwrap_or_default();
        let (apex, primary, canary_svc) = canary.service_names();
        // Services the user made get what they had back (`takeover`); the -primary / -canary
        // ones Sluice made go with the Canary.
        for name in [&primary, &canary_svc] {
            if let Some(service) = self.services.get(&ObjectRef::new(name).within(&namespace))
                && let Some(patch) = takeover::give_back_patch(&service)
            {
                self.json_patch_service(canary, "giving back", name, patch)
                    .await?;
            }
        }
        let Some(service) = self.services.get(&ObjectRef::new(&apex).within(&namespace)) else {
            return Ok(());
        };
        if takeover::is_foreign(&service, canary) {
            if let Some(patch) = takeover::give_back_patch(&service) {
                self.json_patch_service(canary, "giving back", &apex, patch)
                    .await?;
            }
            let message = format!(
                "Canary {}.{namespace} deleted: {} handed back, Service {apex} has its own ports and selector again",
                canary.name_any(),
                target.name_any()
            );
            self.event(canary, "", status, false, &message).await;
            return Ok(());
        }
        let Some((label, value)) = selector_label(target) else {
            return Ok(());
        };
        let spec = service.spec.clone().unwrap_or_default();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": apex, "namespace": namespace},
            "spec": {
                "selector": {&label: value},
                "ports": spec.ports.unwrap_or_default(),
            },
        });
        let api: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.shared.client.clone(), &namespace);
        api.patch(
            &apex,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| Self::write_error(canary, "handing back", "Service", &apex, e))?;
        let message = format!(
            "Canary {}.{namespace} deleted: {} handed back, Service {apex} routes to it",
            canary.name_any(),
            target.name_any()
        );
        self.event(canary, "", status, false, &message).await;
        Ok(())
    }
}
