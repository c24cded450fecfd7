//! The Traefik router: weights of a weighted TraefikService (`traefik.io/v1alpha1`), as in Argo
//! Rollouts (`trafficRouting.traefik.weightedTraefikServiceName`).
//!
//! What it decides, as upstream (`rollout/trafficrouting/traefik`): in
//! `spec.weighted.services`, the entry named after the canary Service gets the canary weight and
//! the entry named after the stable Service `maxTrafficWeight - canary` (Traefik weights are
//! relative, so any total works). Both entries must exist; every other field of the list is left
//! as written. Header and mirror routes: not supported (as upstream).
//!
//! The TraefikService belongs to Git: `spec.weighted.services` is an atomic list to server-side
//! apply, so writes go through [`super::ownership::apply`] (originals recorded, Sluice's field
//! manager) and [`Router::release`] gives it back with [`super::ownership::release`]: the
//! TraefikService is again exactly its manifest and Sluice owns none of its fields.
//!
//! What it must never do: write any other field of the TraefikService, or add or remove an entry.

use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::ownership::{self, Target};
use super::{Observed, Router, RouterContext, TrafficError, Weights};
use crate::api::argo::rollout::TraefikTrafficRouting;

const ROUTER: &str = "traefik";
const KIND: &str = "TraefikService";

/// The Traefik router of one Rollout.
pub struct TraefikRouter {
    config: TraefikTrafficRouting,
}

fn entry_name(s: &Value) -> Option<&str> {
    s.get("name").and_then(Value::as_str)
}

/// `spec.weighted.services` with the canary / stable weights set.
pub fn render_services(spec: &Value, w: &Weights) -> Result<Value, String> {
    let mut services = spec
        .get("weighted")
        .and_then(|x| x.get("services"))
        .and_then(Value::as_array)
        .cloned()
        .ok_or("spec.weighted.services not found")?;
    for (name, weight) in [
        (&w.canary_service, w.canary),
        (&w.stable_service, w.max_weight - w.canary),
    ] {
        let entry = services
            .iter_mut()
            .find(|s| entry_name(s) == Some(name.as_str()))
            .ok_or_else(|| format!("spec.weighted.services has no entry named {name}"))?;
        entry["weight"] = json!(weight);
    }
    Ok(Value::Array(services))
}

/// The canary weight applied, when the canary and stable entries add up to `max_weight`.
pub fn observe_weight(spec: &Value, w: &Weights) -> Option<i32> {
    let services = spec.get("weighted")?.get("services")?.as_array()?;
    let weight = |name: &str| {
        services
            .iter()
            .find(|s| entry_name(s) == Some(name))
            .map(|s| s.get("weight").and_then(Value::as_i64).unwrap_or(0) as i32)
    };
    let canary = weight(&w.canary_service)?;
    let stable = weight(&w.stable_service)?;
    (canary + stable == w.max_weight).then_some(canary)
}

impl TraefikRouter {
    /// The router for `trafficRouting.traefik`.
    pub fn new(config: &TraefikTrafficRouting) -> Result<TraefikRouter, TrafficError> {
        if config.weighted_traefik_service_name.is_empty() {
            return Err(TrafficError::Config(
                "traefik: set weightedTraefikServiceName".into(),
            ));
        }
        Ok(TraefikRouter {
            config: config.clone(),
        })
    }

    fn target<'a>(&'a self, ctx: &'a RouterContext) -> Target<'a> {
        Target {
            router: ROUTER,
            kind: KIND,
            namespace: &ctx.namespace,
            name: &self.config.weighted_traefik_service_name,
        }
    }

    async fn get(&self, ctx: &RouterContext) -> Result<DynamicObject, TrafficError> {
        let target = self.target(ctx);
        ctx.read(&resource(), target.namespace, target.name)
            .await
            .map_err(|e| target.read(e))?
            .ok_or_else(|| target.not_found())
    }
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("traefik.io", "v1alpha1", KIND),
        "traefikservices",
    )
}

#[async_trait]
impl Router for TraefikRouter {
    fn name(&self) -> &'static str {
        ROUTER
    }

    async fn set_weight(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        let live = self.get(ctx).await?;
        let target = self.target(ctx);
        let spec = live.data.get("spec").cloned().unwrap_or(Value::Null);
        let services = render_services(&spec, w).map_err(|e| target.invalid(e))?;
        ownership::apply(
            ctx,
            &resource(),
            &target,
            &live,
            &[(ownership::path(&["spec", "weighted", "services"]), services)],
        )
        .await?;
        Ok(())
    }

    async fn observe(&self, ctx: &RouterContext, w: &Weights) -> Result<Observed, TrafficError> {
        let live = self.get(ctx).await?;
        let spec = live.data.get("spec").cloned().unwrap_or(Value::Null);
        let canary = observe_weight(&spec, w);
        let mut observed = Observed {
            canary,
            ..Default::default()
        };
        observed.detail.insert(
            format!(
                "traefikService/{}",
                self.config.weighted_traefik_service_name
            ),
            canary.map_or("weights do not add up".into(), |c| format!("canary {c}")),
        );
        Ok(observed)
    }

    async fn remove_managed_routes(&self, _ctx: &RouterContext) -> Result<(), TrafficError> {
        Ok(())
    }

    async fn release(&self, ctx: &RouterContext, _w: &Weights) -> Result<(), TrafficError> {
        ownership::release(ctx, &resource(), &self.target(ctx)).await
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
    fn sets_canary_and_stable_entries_only() {
        let spec = json!({"weighted": {"services": [
            {"name": "stable", "port": 80, "weight": 100},
            {"name": "canary", "port": 80},
            {"name": "other", "port": 80, "weight": 5, "kind": "Service"},
        ], "sticky": {"cookie": {}}}});
        let s = render_services(&spec, &w(30)).unwrap();
        assert_eq!(
            s,
            json!([
                {"name": "stable", "port": 80, "weight": 70},
                {"name": "canary", "port": 80, "weight": 30},
                {"name": "other", "port": 80, "weight": 5, "kind": "Service"},
            ])
        );
        let applied = json!({"weighted": {"services": s}});
        assert_eq!(observe_weight(&applied, &w(30)), Some(30));
        // Before any write the canary entry has no weight: 0 of 100.
        assert_eq!(observe_weight(&spec, &w(0)), Some(0));
    }

    #[test]
    fn missing_entry_is_an_error() {
        let spec = json!({"weighted": {"services": [{"name": "stable", "port": 80}]}});
        let err = render_services(&spec, &w(10)).unwrap_err();
        assert!(err.contains("canary"), "{err}");
        assert!(render_services(&json!({}), &w(10)).is_err());
    }
}
