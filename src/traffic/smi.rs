//! The SMI router: a TrafficSplit (`split.smi-spec.io`) with the canary and stable Services as
//! backends, as in Argo Rollouts (`trafficRouting.smi.{trafficSplitName, rootService}`).
//!
//! What it decides, as upstream (`rollout/trafficrouting/smi`):
//! - the TrafficSplit is named `trafficSplitName` (default: the Rollout's name); its `service`
//!   is `rootService` (default: the stable Service); its backends are the canary Service with
//!   the canary weight, each experiment template's Service with its weight (an `experiment:`
//!   step's templates with `weight`, while the Experiment runs), and the stable Service with the
//!   rest, in that order;
//! - it is Sluice's own object, owned by the Rollout (controller ownerReference, so deleting the
//!   Rollout deletes it) and written whole with server-side apply; a TrafficSplit of that name
//!   the Rollout does not control is an error, never overwritten;
//! - the API version is the one the cluster serves (the group's preferred version), not a flag
//!   as upstream's `--smi-api-version`: `v1alpha1` takes weights as quantities (`"30"`),
//!   `v1alpha2` and later as integers;
//! - [`Router::release`] leaves it sending everything to the stable Service (weight 0), as
//!   upstream does at the end of a rollout; the Rollout's deletion removes it.
//!
//! Header and mirror routes: not supported (SMI has none; `HTTPRouteGroup` matches are out of
//! scope, as upstream).
//!
//! What it must never do: modify a TrafficSplit another object controls.

use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::ownership::Target;
use super::{FIELD_MANAGER, Observed, Router, RouterContext, TrafficError, Weights};
use crate::api::argo::rollout::SmiTrafficRouting;

const ROUTER: &str = "smi";
const GROUP: &str = "split.smi-spec.io";
const KIND: &str = "TrafficSplit";

/// The SMI router of one Rollout.
pub struct SmiRouter {
    config: SmiTrafficRouting,
    resource: OnceCell<ApiResource>,
}

/// The TrafficSplit to apply for `w`, in API version `version` (`v1alpha1` .. `v1alpha4`).
pub fn render_traffic_split(
    version: &str,
    name: &str,
    root_service: &str,
    rollout: &str,
    rollout_uid: &str,
    w: &Weights,
) -> Value {
    let weight = |n: i32| {
        if version == "v1alpha1" {
            json!(n.to_string())
        } else {
            json!(n)
        }
    };
    // Upstream's order: canary, the experiment templates' Services, stable last.
    let mut backends = vec![json!({ "service": w.canary_service, "weight": weight(w.canary) })];
    backends.extend(
        w.additional
            .iter()
            .map(|d| json!({ "service": d.service_name, "weight": weight(d.weight) })),
    );
    backends.push(json!({ "service": w.stable_service, "weight": weight(w.stable()) }));
    json!({
        "apiVersion": format!("{GROUP}/{version}"),
        "kind": KIND,
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Rollout",
                "name": rollout,
                "uid": rollout_uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "service": root_service,
            "backends": backends,
        },
    })
}

/// The backends of a TrafficSplit: each Service and its weight (`None`: not a whole number).
fn backends(split: &Value) -> Vec<(&str, Option<i32>)> {
    split
        .get("spec")
        .and_then(|s| s.get("backends"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let service = b.get("service").and_then(Value::as_str)?;
            Some((service, b.get("weight").and_then(weight_of)))
        })
        .collect()
}

/// The weight of `service`'s backend (integer, number or quantity string).
pub fn backend_weight(split: &Value, service: &str) -> Option<i32> {
    backends(split)
        .into_iter()
        .find(|(s, _)| *s == service)
        .and_then(|(_, w)| w)
}

fn weight_of(weight: &Value) -> Option<i32> {
    match weight {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .and_then(|n| i32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn controlled_by(obj: &DynamicObject, uid: &str) -> bool {
    obj.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

impl SmiRouter {
    /// The router for `trafficRouting.smi`.
    pub fn new(config: &SmiTrafficRouting) -> SmiRouter {
        SmiRouter {
            config: config.clone(),
            resource: OnceCell::new(),
        }
    }

    fn split_name(&self, ctx: &RouterContext) -> String {
        self.config
            .traffic_split_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ctx.rollout.clone())
    }

    /// The TrafficSplit resource in the version the cluster prefers (looked up once per
    /// controller, not per reconcile).
    async fn resource(&self, ctx: &RouterContext) -> Result<&ApiResource, TrafficError> {
        self.resource
            .get_or_try_init(|| async {
                ctx.objects.recommended(GROUP, KIND).await.map_err(|e| {
                    TrafficError::Config(format!(
                        "smi: the cluster serves no {KIND} in {GROUP} ({e}); install the SMI \
                             TrafficSplit CRD or remove trafficRouting.smi"
                    ))
                })
            })
            .await
    }

    async fn live(
        &self,
        ctx: &RouterContext,
        ar: &ApiResource,
        target: &Target<'_>,
    ) -> Result<Option<DynamicObject>, TrafficError> {
        ctx.read(ar, target.namespace, target.name)
            .await
            .map_err(|e| target.read(e))
    }

    async fn write(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        let ar = self.resource(ctx).await?;
        let name = self.split_name(ctx);
        let target = Target {
            router: ROUTER,
            kind: KIND,
            namespace: &ctx.namespace,
            name: &name,
        };
        let live = self.live(ctx, ar, &target).await?;
        if let Some(live) = &live
            && !controlled_by(live, &ctx.rollout_uid)
        {
            return Err(target.invalid(format!(
                "it is not controlled by Rollout {}; delete it or set \
                 trafficRouting.smi.trafficSplitName to another name",
                ctx.rollout
            )));
        }
        let root = self
            .config
            .root_service
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| w.stable_service.clone());
        let body =
            render_traffic_split(&ar.version, &name, &root, &ctx.rollout, &ctx.rollout_uid, w);
        if let Some(live) = &live
            && same_split(live, &body)
        {
            // Nothing to write: a settled Rollout costs no API call.
            return Ok(());
        }
        let stored = ctx
            .api(ar, &ctx.namespace)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| target.kube("apply", e))?;
        ctx.wrote(ar, &stored);
        Ok(())
    }
}

/// Whether `live` already says what `body` would write.
fn same_split(live: &DynamicObject, body: &Value) -> bool {
    live.data.get("spec") == body.get("spec")
}

#[async_trait]
impl Router for SmiRouter {
    fn name(&self) -> &'static str {
        ROUTER
    }

    async fn set_weight(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        self.write(ctx, w).await
    }

    async fn observe(&self, ctx: &RouterContext, w: &Weights) -> Result<Observed, TrafficError> {
        let ar = self.resource(ctx).await?;
        let name = self.split_name(ctx);
        let target = Target {
            router: ROUTER,
            kind: KIND,
            namespace: &ctx.namespace,
            name: &name,
        };
        let mut observed = Observed::default();
        observed
            .detail
            .insert("apiVersion".into(), format!("{GROUP}/{}", ar.version));
        let Some(live) = self.live(ctx, ar, &target).await? else {
            observed
                .detail
                .insert(format!("trafficSplit/{name}"), "absent".into());
            return Ok(observed);
        };
        let v = serde_json::to_value(&live).map_err(|e| target.invalid(e.to_string()))?;
        let canary = backend_weight(&v, &w.canary_service);
        let stable = backend_weight(&v, &w.stable_service);
        let mut others = Some(0);
        for (service, weight) in backends(&v) {
            if service != w.canary_service && service != w.stable_service {
                observed
                    .additional
                    .insert(service.to_string(), weight.unwrap_or(-1));
                others = others.zip(weight).map(|(sum, w)| sum + w);
            }
        }
        // Every backend must add up to the whole: a canary weight alone could be against any
        // total.
        observed.canary = match (canary, stable, others) {
            (Some(c), Some(s), Some(o)) if c + s + o == w.max_weight => Some(c),
            _ => None,
        };
        observed.detail.insert(
            format!("trafficSplit/{name}"),
            format!("canary {canary:?}, stable {stable:?}"),
        );
        Ok(observed)
    }

    async fn remove_managed_routes(&self, _ctx: &RouterContext) -> Result<(), TrafficError> {
        Ok(())
    }

    async fn release(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        let ar = self.resource(ctx).await?;
        let name = self.split_name(ctx);
        let target = Target {
            router: ROUTER,
            kind: KIND,
            namespace: &ctx.namespace,
            name: &name,
        };
        match self.live(ctx, ar, &target).await? {
            Some(live) if controlled_by(&live, &ctx.rollout_uid) => {
                self.write(
                    ctx,
                    &Weights {
                        canary: 0,
                        ..w.clone()
                    },
                )
                .await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn w(canary: i32) -> Weights {
        Weights {
            canary,
            max_weight: 100,
            canary_service: "canary".into(),
            stable_service: "stable".into(),
            canary_hash: String::new(),
            stable_hash: String::new(),
            additional: Vec::new(),
        }
    }

    #[test]
    fn renders_backends_and_owner() {
        let ts = render_traffic_split("v1alpha4", "ro", "root", "ro", "uid", &w(30));
        assert_eq!(ts["apiVersion"], "split.smi-spec.io/v1alpha4");
        assert_eq!(
            ts["spec"],
            json!({"service": "root", "backends": [
                {"service": "canary", "weight": 30},
                {"service": "stable", "weight": 70},
            ]})
        );
        assert_eq!(ts["metadata"]["ownerReferences"][0]["uid"], "uid");
        assert_eq!(backend_weight(&ts, "canary"), Some(30));
        assert_eq!(backend_weight(&ts, "stable"), Some(70));
        assert_eq!(backend_weight(&ts, "nope"), None);
    }

    #[test]
    fn experiment_templates_are_backends_between_canary_and_stable() {
        let mut with_experiment = w(5);
        with_experiment.additional = vec![crate::api::argo::rollout::WeightDestination {
            weight: 5,
            service_name: "exp".into(),
            pod_template_hash: "abc".into(),
        }];
        let ts = render_traffic_split("v1alpha1", "ro", "root", "ro", "uid", &with_experiment);
        // Argo's order and values (its e2e TestSMIExperimentStep: 5 / 5 / 90).
        assert_eq!(
            ts["spec"]["backends"],
            json!([
                {"service": "canary", "weight": "5"},
                {"service": "exp", "weight": "5"},
                {"service": "stable", "weight": "90"},
            ])
        );
        assert_eq!(
            backends(&ts),
            vec![("canary", Some(5)), ("exp", Some(5)), ("stable", Some(90))]
        );
    }

    #[test]
    fn v1alpha1_weights_are_quantities() {
        let ts = render_traffic_split("v1alpha1", "ro", "root", "ro", "uid", &w(10));
        assert_eq!(ts["spec"]["backends"][0]["weight"], json!("10"));
        assert_eq!(backend_weight(&ts, "stable"), Some(90));
        let float = json!({"spec": {"backends": [{"service": "canary", "weight": 10.0}]}});
        assert_eq!(backend_weight(&float, "canary"), Some(10));
    }
}
