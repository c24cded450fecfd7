//! The primary's autoscaler (`spec.autoscalerRef`, upstream `hpa_reconciler.go`): the target's
//! HorizontalPodAutoscaler (autoscaling/v2) is copied as `<hpa>-primary`, scaling
//! `<target>-primary`, owned by the Canary; `autoscalerRef.primaryScalerReplicas` overrides its
//! `minReplicas` / `maxReplicas`. The copy is made when the primary is created and refreshed at
//! every promotion, so edits to the target's HPA reach the primary with the next release, as
//! upstream.
//!
//! The target's HPA is read only then (no watch, no read per tick). KEDA ScaledObjects are not
//! supported yet: a Warning Event says so. This module never writes the target's HPA.

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::{Ctx, Error, FIELD_MANAGER, generated_annotations, owner};
use crate::api::flagger::canary::{AutoscalerReference, Canary, CanaryStatus};

/// The only autoscaler kind supported.
pub const HPA_KIND: &str = "HorizontalPodAutoscaler";

/// The `<hpa>-primary` object: the target HPA's spec scaling `primary`, with the override.
pub fn primary_hpa(
    reference: &AutoscalerReference,
    target_hpa: &Value,
    primary: &str,
) -> (String, Value) {
    let name = format!("{}-primary", reference.name);
    let mut spec = target_hpa.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["scaleTargetRef"]["name"] = json!(primary);
    if let Some(replicas) = &reference.primary_scaler_replicas {
        if let Some(min) = replicas.min_replicas {
            spec["minReplicas"] = json!(min);
        }
        if let Some(max) = replicas.max_replicas {
            spec["maxReplicas"] = json!(max);
        }
    }
    let labels = target_hpa
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let body = json!({
        "apiVersion": "autoscaling/v2",
        "kind": HPA_KIND,
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    });
    (name, body)
}

impl Ctx {
    /// Creates or refreshes `<hpa>-primary` from the target's HPA.
    pub(super) async fn reconcile_primary_scaler(
        &self,
        canary: &Canary,
        status: &CanaryStatus,
    ) -> Result<(), Error> {
        let Some(reference) = canary.spec.autoscaler_ref.as_ref() else {
            return Ok(());
        };
        if reference.kind != HPA_KIND {
            let message = format!(
                "autoscalerRef kind {:?} is not supported yet: only {HPA_KIND} (autoscaling/v2) gets a -primary copy",
                reference.kind
            );
            self.event(canary, "", status, true, &message).await;
            return Ok(());
        }
        let namespace = canary.namespace().unwrap_or_default();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("autoscaling", "v2", HPA_KIND));
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.shared.client.clone(), &namespace, &resource);
        let target = api.get(&reference.name).await.map_err(|e| {
            Self::write_error(
                canary,
                "reading",
                "HorizontalPodAutoscaler",
                &reference.name,
                e,
            )
        })?;
        let target = serde_json::to_value(&target).unwrap_or(Value::Null);
        let primary = format!("{}-primary", canary.spec.target_ref.name);
        let (name, mut body) = primary_hpa(reference, &target, &primary);
        body["metadata"]["namespace"] = json!(namespace);
        body["metadata"]["annotations"] = json!(generated_annotations());
        body["metadata"]["ownerReferences"] = json!(owner(canary).into_iter().collect::<Vec<_>>());
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| Self::write_error(canary, "applying", "HorizontalPodAutoscaler", &name, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::flagger::canary::ScalerReplicas;
    use pretty_assertions::assert_eq;

    #[test]
    fn the_copy_scales_the_primary_with_the_override() {
        let target = json!({
            "metadata": {"name": "podinfo", "labels": {"app": "podinfo"}, "resourceVersion": "7"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                     "minReplicas": 2, "maxReplicas": 4,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50}}}]},
            "status": {"currentReplicas": 2},
        });
        let mut reference = AutoscalerReference {
            api_version: "autoscaling/v2".into(),
            kind: HPA_KIND.into(),
            name: "podinfo".into(),
            ..Default::default()
        };
        let (name, body) = primary_hpa(&reference, &target, "podinfo-primary");
        assert_eq!(name, "podinfo-primary");
        assert_eq!(body["spec"]["scaleTargetRef"]["name"], "podinfo-primary");
        assert_eq!(body["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(
            (
                body["spec"]["minReplicas"].clone(),
                body["spec"]["maxReplicas"].clone()
            ),
            (json!(2), json!(4))
        );
        assert_eq!(body["spec"]["metrics"], target["spec"]["metrics"]);
        assert_eq!(body["metadata"]["labels"], json!({"app": "podinfo"}));
        assert!(body.get("status").is_none());
        reference.primary_scaler_replicas = Some(ScalerReplicas {
            min_replicas: Some(3),
            max_replicas: None,
        });
        let (_, body) = primary_hpa(&reference, &target, "podinfo-primary");
        assert_eq!(
            (
                body["spec"]["minReplicas"].clone(),
                body["spec"]["maxReplicas"].clone()
            ),
            (json!(3), json!(4))
        );
    }
}
