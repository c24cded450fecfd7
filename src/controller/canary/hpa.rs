//! The primary's autoscaler (`spec.autoscalerRef`, upstream `hpa_reconciler.go`): the target's
//! HorizontalPodAutoscaler (autoscaling/v2) is copied as `<hpa>-primary`, scaling
//! `<target>-primary`, owned by the Canary; `autoscalerRef.primaryScalerReplicas` overrides its
//! `minReplicas` / `maxReplicas`. The copy is made when the primary is created and refreshed at
//! every promotion, so edits to the target's HPA reach the primary with the next release, as
//! upstream.
//!
//! The target's HPA is read only then (no watch, no read per tick). KEDA ScaledObjects (any
//! other kind) are not supported yet: such a Canary is an invalid spec, reported once per
//! generation with a Warning Event (reason `InvalidSpec`) and not acted upon, since scaling the
//! target to zero would fight the autoscaler. This module never writes the target's HPA.

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::{Ctx, Error, FIELD_MANAGER, generated_annotations, owner};
use crate::api::flagger::canary::{AutoscalerReference, Canary};

/// The only autoscaler kind supported.
pub const HPA_KIND: &str = "HorizontalPodAutoscaler";
/// KEDA's autoscaler kind (Flagger supports it; Sluice does not yet).
pub const SCALED_OBJECT_KIND: &str = "ScaledObject";

/// Why the Canary's `autoscalerRef` cannot be honoured, if it cannot: a kind other than
/// [`HPA_KIND`].
pub fn unsupported(canary: &Canary) -> Option<String> {
    let reference = canary.spec.autoscaler_ref.as_ref()?;
    if reference.kind == HPA_KIND {
        return None;
    }
    let kind = if reference.kind == SCALED_OBJECT_KIND {
        "ScaledObject (KEDA)".to_string()
    } else {
        format!("{:?}", reference.kind)
    };
    Some(format!(
        "{kind} autoscalerRef is not supported by Sluice yet: only a {HPA_KIND} (autoscaling/v2) gets a -primary copy. Canary {}/{} is not acted upon (no initialisation, no run, no traffic change) until spec.autoscalerRef is removed or names a {HPA_KIND}",
        canary.namespace().unwrap_or_default(),
        canary.name_any()
    ))
}

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
    pub(super) async fn reconcile_primary_scaler(&self, canary: &Canary) -> Result<(), Error> {
        let Some(reference) = canary.spec.autoscaler_ref.as_ref() else {
            return Ok(());
        };
        // Other kinds never reach a tick (`unsupported`).
        if reference.kind != HPA_KIND {
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

    fn canary(autoscaler: Option<Value>) -> Canary {
        let mut spec = json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
        });
        if let Some(a) = autoscaler {
            spec["autoscalerRef"] = a;
        }
        serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_scaled_object_is_an_invalid_spec_and_an_hpa_is_not() {
        assert_eq!(unsupported(&canary(None)), None);
        let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "name": "podinfo"});
        assert_eq!(unsupported(&canary(Some(hpa))), None);
        let keda = json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "name": "podinfo"});
        let message = unsupported(&canary(Some(keda))).expect("a ScaledObject is refused");
        assert!(
            message.starts_with("ScaledObject (KEDA) autoscalerRef is not supported by Sluice yet"),
            "{message}"
        );
        assert!(message.contains("test/podinfo"), "{message}");
        assert!(message.contains("not acted upon"), "{message}");
        let other = json!({"apiVersion": "x/v1", "kind": "Scaler", "name": "podinfo"});
        let message = unsupported(&canary(Some(other))).expect("any other kind is refused");
        assert!(message.starts_with("\"Scaler\" autoscalerRef"), "{message}");
    }

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
