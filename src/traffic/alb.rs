//! The AWS ALB router: the AWS Load Balancer Controller's Ingress annotations, as in Argo
//! Rollouts (`trafficRouting.alb.{ingress, ingresses, rootService, servicePort,
//! annotationPrefix, stickinessConfig}`, `managedRoutes`).
//!
//! What it decides, as upstream (`rollout/trafficrouting/alb`, `utils/ingress`), per Ingress
//! (`<prefix>` = `annotationPrefix`, default `alb.ingress.kubernetes.io`):
//! - **the split**: `<prefix>/actions.<rootService or stableService>` holds a forward action,
//!   byte for byte the JSON Argo writes (the load balancer controller parses it):
//!   `{"Type":"forward","ForwardConfig":{"TargetGroups":[canary, stable]}}` with `ServicePort` =
//!   `servicePort` as a string, canary `weight`, each experiment template's Service with its
//!   `weight` (an `experiment:` step's templates while the Experiment runs), and stable with the
//!   rest, plus `TargetGroupStickinessConfig` when `stickinessConfig.enabled` (1 s to 7 days). The Ingress
//!   must have a path whose backend is that service (`port.name: use-annotation`);
//! - **header routes** (`setHeaderRoute`): `<prefix>/actions.<route>` forwards everything to the
//!   canary, `<prefix>/conditions.<route>` holds the `http-header` conditions (exact values, ALB
//!   wildcards `*` `?`; matches on one header name are merged into one condition, as upstream;
//!   prefix and regex matches are an `InvalidSpec` (`crate::engine::validate`), upstream sends an
//!   empty value), and every rule gets a first path `/*` to the backend
//!   `<route>:use-annotation`, paths ordered by `managedRoutes`. A step without matches removes
//!   the route;
//! - **mirror routes**: the ALB cannot mirror; a `setMirrorRoute` step is an `InvalidSpec`
//!   (upstream ignores the step);
//! - **observed weight**: the canary target group's weight (and the other groups') when all groups
//!   add up to `maxTrafficWeight` and every Ingress says the same; no action annotation is
//!   weight 0.
//!
//! Who owns what. The `actions.<service>` annotation is the ALB's route itself: a manifest
//! usually does not declare it (the rule's backend only says `use-annotation`), and an Ingress
//! without it has no target. Such an annotation, and the header route annotations, are Sluice's
//! own: written with server-side apply under [`OWN_MANAGER`], and at release the split action
//! stays, sending everything to stable (upstream's steady state) while the header annotations
//! go. An action annotation some other manager wrote (declared in Git, or left by Argo
//! Rollouts) is borrowed instead, like the header routes' `spec.rules` (an atomic list):
//! through [`super::ownership::apply`], and [`Router::release`] gives both back exactly as
//! declared with [`super::ownership::release`] — unless the declared action does not send
//! everything to stable (with `pingPong` the stable Service alternates between two, and a
//! manifest names one): then Sluice's own stable-only action replaces it. With `pingPong` the
//! stable and canary target groups are the ping and pong Services in their current roles.
//!
//! What it must never do: write any other annotation or field of the Ingress, call AWS
//! (target-group verification is refused by the controller's flags), or leave the split action
//! pointing anywhere but stable after release.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, TypeMeta};
use serde::Serialize;
use serde_json::{Value, json};

use super::ownership::{self, Target};
use super::{HeaderRoute, Observed, Router, RouterContext, TrafficError, Weights};
use crate::api::argo::rollout::{AlbTrafficRouting, HeaderRoutingMatch, StickinessConfig};

const ROUTER: &str = "alb";
const KIND: &str = "Ingress";

/// The default annotation prefix (the AWS Load Balancer Controller's).
pub const DEFAULT_PREFIX: &str = "alb.ingress.kubernetes.io";

/// The field manager of the annotations that are Sluice's own (see the module doc); distinct
/// from [`super::FIELD_MANAGER`], whose fields are borrowed and given back.
pub const OWN_MANAGER: &str = "sluice-alb";

/// The port name that tells the load balancer controller to read the action annotation.
pub const USE_ANNOTATION: &str = "use-annotation";

/// Longest target-group stickiness the AWS API accepts (7 days).
const MAX_STICKINESS_SECONDS: i64 = 604_800;

// === the annotation JSON (field names and order as Argo's Go structs) ===

#[derive(Serialize)]
struct Action<'a> {
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(rename = "ForwardConfig")]
    forward: ForwardConfig<'a>,
}

#[derive(Serialize)]
struct ForwardConfig<'a> {
    #[serde(rename = "TargetGroups")]
    target_groups: Vec<TargetGroup<'a>>,
    #[serde(
        rename = "TargetGroupStickinessConfig",
        skip_serializing_if = "Option::is_none"
    )]
    stickiness: Option<Stickiness>,
}

#[derive(Serialize)]
struct TargetGroup<'a> {
    #[serde(rename = "ServiceName")]
    service: &'a str,
    #[serde(rename = "ServicePort")]
    port: String,
    #[serde(rename = "Weight")]
    weight: i64,
}

#[derive(Serialize)]
struct Stickiness {
    #[serde(rename = "Enabled")]
    enabled: bool,
    #[serde(rename = "DurationSeconds")]
    duration_seconds: i64,
}

#[derive(Serialize)]
struct Condition<'a> {
    field: &'static str,
    #[serde(rename = "httpHeaderConfig")]
    header: HeaderConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeaderConfig<'a> {
    http_header_name: &'a str,
    values: Vec<&'a str>,
}

/// JSON as Go's `encoding/json` writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped (they can
/// only occur inside strings, so replacing them everywhere is exact).
fn go_json<T: Serialize>(value: &T) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn stickiness(config: &AlbTrafficRouting) -> Option<Stickiness> {
    config
        .stickiness_config
        .as_ref()
        .filter(|s| s.enabled)
        .map(|s| Stickiness {
            enabled: true,
            duration_seconds: s.duration_seconds,
        })
}

/// The split action: canary first, then each experiment template's Service, then stable
/// (Argo's `getForwardActionString`).
pub fn forward_action(config: &AlbTrafficRouting, w: &Weights) -> String {
    let port = config.service_port.to_string();
    let group = |service, weight: i32| TargetGroup {
        service,
        port: port.clone(),
        weight: weight.into(),
    };
    let mut target_groups = vec![group(&w.canary_service, w.canary)];
    target_groups.extend(
        w.additional
            .iter()
            .map(|d| group(&d.service_name, d.weight)),
    );
    target_groups.push(group(&w.stable_service, w.stable()));
    go_json(&Action {
        kind: "forward",
        forward: ForwardConfig {
            target_groups,
            stickiness: stickiness(config),
        },
    })
}

/// A header route's action: everything to the canary (Argo's `getTrafficForwardActionString`).
pub fn header_action(config: &AlbTrafficRouting, w: &Weights) -> String {
    go_json(&Action {
        kind: "forward",
        forward: ForwardConfig {
            target_groups: vec![TargetGroup {
                service: &w.canary_service,
                port: config.service_port.to_string(),
                weight: 100,
            }],
            stickiness: stickiness(config),
        },
    })
}

/// A header route's conditions; exact matches only (ALB header conditions have no regex).
pub fn header_conditions(route: &HeaderRoute) -> Result<String, String> {
    let mut conditions: Vec<Condition> = Vec::new();
    for HeaderRoutingMatch {
        header_name,
        header_value,
    } in &route.matches
    {
        let Some(value) = header_value.exact.as_deref() else {
            return Err(format!(
                "alb: setHeaderRoute {}: header {header_name} must match an exact value (ALB \
                 conditions take exact values with the wildcards * and ?, no prefix or regex)",
                route.name
            ));
        };
        match conditions
            .iter_mut()
            .find(|c| c.header.http_header_name == header_name)
        {
            Some(c) => c.header.values.push(value),
            None => conditions.push(Condition {
                field: "http-header",
                header: HeaderConfig {
                    http_header_name: header_name,
                    values: vec![value],
                },
            }),
        }
    }
    Ok(go_json(&conditions))
}

/// The canary weight an action annotation applies, and the weights of its other target groups
/// (experiment templates' Services) by Service, when all of them add up to `max_weight` (a
/// missing canary group, or a group without `Weight`, has 0, as the load balancer reads it).
pub fn observe_split(action: &str, w: &Weights) -> Option<(i32, BTreeMap<String, i32>)> {
    let action: Value = serde_json::from_str(action).ok()?;
    let groups = action
        .get("ForwardConfig")?
        .get("TargetGroups")?
        .as_array()?;
    let mut canary = 0;
    let mut stable = None;
    let mut others = BTreeMap::new();
    for g in groups {
        let service = g.get("ServiceName").and_then(Value::as_str)?;
        let weight = i32::try_from(g.get("Weight").and_then(Value::as_i64).unwrap_or(0)).ok()?;
        if service == w.canary_service {
            canary = weight;
        } else if service == w.stable_service {
            stable = Some(weight);
        } else {
            others.insert(service.to_string(), weight);
        }
    }
    // No canary group (Argo's reset action, a manifest's own): the canary gets nothing.
    let total = i64::from(canary)
        + i64::from(stable?)
        + others.values().map(|v| i64::from(*v)).sum::<i64>();
    (total == i64::from(w.max_weight)).then_some((canary, others))
}

/// [`observe_split`]'s canary weight.
pub fn observe_weight(action: &str, w: &Weights) -> Option<i32> {
    observe_split(action, w).map(|(canary, _)| canary)
}

// === spec.rules: the header routes' paths ===

fn backend_service(path: &Value) -> Option<&str> {
    path.get("backend")?.get("service")?.get("name")?.as_str()
}

fn rule_paths_mut(rule: &mut Value) -> Option<&mut Vec<Value>> {
    rule.get_mut("http")?.get_mut("paths")?.as_array_mut()
}

/// Whether any rule has a path whose backend is `service` (Argo's `HasRuleWithService`).
pub fn has_rule_with_service(rules: &Value, service: &str) -> bool {
    rules.as_array().into_iter().flatten().any(|rule| {
        rule.get("http")
            .and_then(|h| h.get("paths"))
            .and_then(Value::as_array)
            .is_some_and(|paths| paths.iter().any(|p| backend_service(p) == Some(service)))
    })
}

/// `spec.rules` with the header route `route` added (`/*` first in every rule, when no rule has
/// it yet) or removed, paths then ordered by `managed` (Argo's `CreateAnnotationBasedPath`,
/// `RemovePathByServiceName`, `SortHttpPaths`).
pub fn rules_with_route(rules: &Value, route: &str, add: bool, managed: &[String]) -> Value {
    let mut rules = rules.clone();
    let present = has_rule_with_service(&rules, route);
    for rule in rules.as_array_mut().into_iter().flatten() {
        let Some(paths) = rule_paths_mut(rule) else {
            continue;
        };
        if add && !present {
            paths.insert(
                0,
                json!({"path": "/*", "pathType": "ImplementationSpecific", "backend": {
                    "service": {"name": route, "port": {"name": USE_ANNOTATION}}}}),
            );
        }
        if !add && let Some(i) = paths.iter().position(|p| backend_service(p) == Some(route)) {
            paths.remove(i);
        }
        let rank = |p: &Value| {
            backend_service(p)
                .and_then(|s| managed.iter().position(|m| m == s))
                .unwrap_or(managed.len())
        };
        paths.sort_by_key(rank);
    }
    rules
}

// === field ownership ===

/// Whether `manager`'s managedFields entries own the annotation `key`.
fn manager_owns(live: &DynamicObject, key: &str, manager: impl Fn(&str) -> bool) -> bool {
    live.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| manager(e.manager.as_deref().unwrap_or_default()))
        .any(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:metadata"))
                .and_then(|m| m.get("f:annotations"))
                .and_then(|a| a.get(format!("f:{key}")))
                .is_some()
        })
}

/// The annotations Sluice's own manager holds, with their live values.
fn own_annotations(live: &DynamicObject) -> BTreeMap<String, String> {
    live.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| manager_owns(live, k, |m| m == OWN_MANAGER))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether the annotation `key` belongs to someone else (declared in Git, written by Argo), or
/// was borrowed from them already: then it is written through [`ownership`] and given back.
fn borrowed(live: &DynamicObject, key: &str) -> bool {
    let recorded = ownership::read_record(live)
        .ok()
        .flatten()
        .is_some_and(|r| r.fields.iter().any(|f| f.path == annotation_path(key)));
    recorded || manager_owns(live, key, |m| m != OWN_MANAGER && m != super::FIELD_MANAGER)
}

fn annotation_path(key: &str) -> ownership::FieldPath {
    ownership::path(&["metadata", "annotations", key])
}

fn resource() -> ApiResource {
    ApiResource::erase::<Ingress>(&())
}

/// The ALB router of one Rollout.
pub struct AlbRouter {
    config: AlbTrafficRouting,
    /// `trafficRouting.managedRoutes`, in order.
    managed_routes: Vec<String>,
}

impl AlbRouter {
    /// The router for `trafficRouting.alb`; errors name the field to fix.
    pub fn new(
        config: &AlbTrafficRouting,
        managed_routes: Vec<String>,
    ) -> Result<AlbRouter, TrafficError> {
        let router = AlbRouter {
            config: config.clone(),
            managed_routes,
        };
        if router.ingresses().is_empty() {
            return Err(TrafficError::Config(
                "alb: set alb.ingress or alb.ingresses".into(),
            ));
        }
        if !(1..=65535).contains(&config.service_port) {
            return Err(TrafficError::Config(format!(
                "alb.servicePort {} is not a port (1-65535)",
                config.service_port
            )));
        }
        if let Some(StickinessConfig {
            enabled: true,
            duration_seconds,
        }) = &config.stickiness_config
            && !(1..=MAX_STICKINESS_SECONDS).contains(duration_seconds)
        {
            return Err(TrafficError::Config(format!(
                "alb.stickinessConfig.durationSeconds {duration_seconds} must be between 1 and \
                 {MAX_STICKINESS_SECONDS} (7 days), as AWS requires"
            )));
        }
        Ok(router)
    }

    /// `ingresses` when set and not empty, else `ingress`.
    fn ingresses(&self) -> Vec<String> {
        match (&self.config.ingresses, &self.config.ingress) {
            (Some(list), _) if !list.is_empty() => list.clone(),
            (_, Some(one)) if !one.is_empty() => vec![one.clone()],
            _ => Vec::new(),
        }
    }

    fn prefix(&self) -> &str {
        self.config
            .annotation_prefix
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PREFIX)
    }

    /// The service whose action carries the split (`rootService`, else `stableService`).
    fn action_service<'a>(&'a self, w: &'a Weights) -> &'a str {
        self.config
            .root_service
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(&w.stable_service)
    }

    fn action_key(&self, service: &str) -> String {
        format!("{}/actions.{service}", self.prefix())
    }

    fn condition_key(&self, route: &str) -> String {
        format!("{}/conditions.{route}", self.prefix())
    }

    async fn get(&self, ctx: &RouterContext, name: &str) -> Result<DynamicObject, TrafficError> {
        let target = target(ctx, name);
        let mut live = ctx
            .read(&resource(), &ctx.namespace, name)
            .await
            .map_err(|e| target.read(e))?
            .ok_or_else(|| target.not_found())?;
        // Listed objects carry no apiVersion / kind; ownership's apply body needs them.
        live.types.get_or_insert_with(|| TypeMeta {
            api_version: "networking.k8s.io/v1".into(),
            kind: KIND.into(),
        });
        Ok(live)
    }

    /// Writes the split action on one Ingress (borrowed or Sluice's own, see the module doc).
    async fn write_action(
        &self,
        ctx: &RouterContext,
        live: &DynamicObject,
        w: &Weights,
    ) -> Result<(), TrafficError> {
        let name = live.metadata.name.as_deref().unwrap_or_default();
        let key = self.action_key(self.action_service(w));
        let value = forward_action(&self.config, w);
        if borrowed(live, &key) {
            ownership::apply(
                ctx,
                &resource(),
                &target(ctx, name),
                live,
                &[(annotation_path(&key), Value::String(value))],
            )
            .await?;
            return Ok(());
        }
        let mut own = own_annotations(live);
        own.insert(key, value);
        apply_own(ctx, live, own).await
    }

    /// Adds (`Some`) or removes (`None`) the header route `name` on one Ingress: annotations
    /// before the path that uses them, the path gone before its annotations.
    async fn write_header_route(
        &self,
        ctx: &RouterContext,
        ingress: &str,
        name: &str,
        annotations: Option<(String, String)>,
    ) -> Result<(), TrafficError> {
        let live = self.get(ctx, ingress).await?;
        let (action_key, condition_key) = (self.action_key(name), self.condition_key(name));
        let mut own = own_annotations(&live);
        let add = annotations.is_some();
        if let Some((action, conditions)) = annotations {
            own.insert(action_key, action);
            own.insert(condition_key, conditions);
            apply_own(ctx, &live, own).await?;
        }
        let live = self.get(ctx, ingress).await?;
        let rules = live
            .data
            .get("spec")
            .and_then(|s| s.get("rules"))
            .cloned()
            .unwrap_or(Value::Null);
        let desired = rules_with_route(&rules, name, add, &self.managed_routes);
        if desired != rules {
            ownership::apply(
                ctx,
                &resource(),
                &target(ctx, ingress),
                &live,
                &[(ownership::path(&["spec", "rules"]), desired)],
            )
            .await?;
        }
        if !add {
            let live = self.get(ctx, ingress).await?;
            let mut own = own_annotations(&live);
            own.remove(&self.action_key(name));
            own.remove(&self.condition_key(name));
            apply_own(ctx, &live, own).await?;
        }
        Ok(())
    }
}

fn target<'a>(ctx: &'a RouterContext, name: &'a str) -> Target<'a> {
    Target {
        router: ROUTER,
        kind: KIND,
        namespace: &ctx.namespace,
        name,
    }
}

/// Server-side apply of every annotation Sluice's own manager holds on the Ingress (one it
/// leaves out is deleted). Skipped when nothing would change.
async fn apply_own(
    ctx: &RouterContext,
    live: &DynamicObject,
    desired: BTreeMap<String, String>,
) -> Result<(), TrafficError> {
    let name = live.metadata.name.as_deref().unwrap_or_default();
    if own_annotations(live) == desired
        && desired
            .iter()
            .all(|(k, v)| live.metadata.annotations.as_ref().and_then(|a| a.get(k)) == Some(v))
    {
        return Ok(());
    }
    let body = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": KIND,
        "metadata": {"name": name, "annotations": desired},
    });
    let stored = ctx
        .api(&resource(), &ctx.namespace)
        .patch(
            name,
            &PatchParams::apply(OWN_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| target(ctx, name).kube("apply", e))?;
    ctx.wrote(&resource(), &stored);
    Ok(())
}

#[async_trait]
impl Router for AlbRouter {
    fn name(&self) -> &'static str {
        ROUTER
    }

    fn prefers_ping_pong(&self) -> bool {
        true
    }

    async fn set_weight(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        let service = self.action_service(w);
        for name in self.ingresses() {
            let live = self.get(ctx, &name).await?;
            let rules = live.data.get("spec").and_then(|s| s.get("rules"));
            if !rules.is_some_and(|r| has_rule_with_service(r, service)) {
                return Err(target(ctx, &name).invalid(format!(
                    "no rule has a path whose backend is service {service} (port name \
                     {USE_ANNOTATION}); add one, or set alb.rootService to the service it names"
                )));
            }
            self.write_action(ctx, &live, w).await?;
        }
        Ok(())
    }

    async fn observe(&self, ctx: &RouterContext, w: &Weights) -> Result<Observed, TrafficError> {
        let key = self.action_key(self.action_service(w));
        let mut observed = Observed::default();
        let mut weights = Vec::new();
        for name in self.ingresses() {
            let live = self.get(ctx, &name).await?;
            let annotations = live.metadata.annotations.clone().unwrap_or_default();
            // No action: the load balancer sends the canary nothing.
            let split = annotations
                .get(&key)
                .map_or(Some((0, BTreeMap::new())), |a| observe_split(a, w));
            observed.detail.insert(
                format!("ingress/{name}"),
                split
                    .as_ref()
                    .map_or("action unreadable".into(), |(c, others)| {
                        format!("canary {c}, others {others:?}")
                    }),
            );
            weights.push(split);
            for route in &self.managed_routes {
                if annotations.contains_key(&self.condition_key(route))
                    && !observed.managed_routes.contains(route)
                {
                    observed.managed_routes.push(route.clone());
                }
            }
        }
        // The Ingresses must agree on the whole split.
        if let Some((first, rest)) = weights.split_first()
            && rest.iter().all(|w| w == first)
            && let Some((canary, others)) = first.clone()
        {
            observed.canary = Some(canary);
            observed.additional = others;
        }
        Ok(observed)
    }

    async fn set_header_route(
        &self,
        ctx: &RouterContext,
        w: &Weights,
        route: &HeaderRoute,
    ) -> Result<(), TrafficError> {
        let annotations = if route.matches.is_empty() {
            None
        } else {
            let conditions = header_conditions(route).map_err(TrafficError::Config)?;
            Some((header_action(&self.config, w), conditions))
        };
        for ingress in self.ingresses() {
            self.write_header_route(ctx, &ingress, &route.name, annotations.clone())
                .await?;
        }
        Ok(())
    }

    async fn remove_managed_routes(&self, ctx: &RouterContext) -> Result<(), TrafficError> {
        for ingress in self.ingresses() {
            for route in &self.managed_routes {
                let live = self.get(ctx, &ingress).await?;
                let rules = live.data.get("spec").and_then(|s| s.get("rules"));
                let present = live
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(&self.condition_key(route)))
                    || rules.is_some_and(|r| has_rule_with_service(r, route));
                if present {
                    self.write_header_route(ctx, &ingress, route, None).await?;
                }
            }
        }
        Ok(())
    }

    async fn release(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        let stable_only = Weights {
            canary: 0,
            ..w.clone()
        };
        let key = self.action_key(self.action_service(w));
        for name in self.ingresses() {
            // Borrowed fields first (the header paths leave before their annotations).
            ownership::release(ctx, &resource(), &target(ctx, &name)).await?;
            let Some(live) = ctx
                .read(&resource(), &ctx.namespace, &name)
                .await
                .map_err(|e| target(ctx, &name).read(e))?
            else {
                continue;
            };
            let mut own = own_annotations(&live);
            for route in &self.managed_routes {
                own.remove(&self.action_key(route));
                own.remove(&self.condition_key(route));
            }
            // A declared action is given back only if it sends everything to stable: with
            // pingPong the stable Service alternates, and the manifest names one of the two.
            let declared_on_stable = live
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(&key))
                .and_then(|a| observe_split(a, &stable_only))
                .is_some_and(|(canary, others)| canary == 0 && others.values().all(|w| *w == 0));
            if !borrowed(&live, &key) || !declared_on_stable {
                own.insert(key.clone(), forward_action(&self.config, &stable_only));
            }
            apply_own(ctx, &live, own).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::argo::rollout::{StringMatch, WeightDestination};
    use pretty_assertions::assert_eq;

    fn config() -> AlbTrafficRouting {
        AlbTrafficRouting {
            ingress: Some("ing".into()),
            service_port: 80,
            root_service: Some("root".into()),
            ..Default::default()
        }
    }

    fn w(canary: i32) -> Weights {
        Weights {
            canary,
            max_weight: 100,
            canary_service: "canary-svc".into(),
            stable_service: "stable-svc".into(),
            canary_hash: String::new(),
            stable_hash: String::new(),
            additional: Vec::new(),
        }
    }

    fn exact(name: &str, value: &str) -> HeaderRoutingMatch {
        HeaderRoutingMatch {
            header_name: name.into(),
            header_value: StringMatch {
                exact: Some(value.into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn forward_action_is_argos_json() {
        assert_eq!(
            forward_action(&config(), &w(20)),
            r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"canary-svc","ServicePort":"80","Weight":20},{"ServiceName":"stable-svc","ServicePort":"80","Weight":80}]}}"#
        );
        let sticky = AlbTrafficRouting {
            stickiness_config: Some(StickinessConfig {
                enabled: true,
                duration_seconds: 3600,
            }),
            ..config()
        };
        assert_eq!(
            forward_action(&sticky, &w(0)),
            r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"canary-svc","ServicePort":"80","Weight":0},{"ServiceName":"stable-svc","ServicePort":"80","Weight":100}],"TargetGroupStickinessConfig":{"Enabled":true,"DurationSeconds":3600}}}"#
        );
        assert_eq!(
            header_action(&config(), &w(30)),
            r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"canary-svc","ServicePort":"80","Weight":100}]}}"#
        );
    }

    #[test]
    fn experiment_templates_get_their_groups_between_canary_and_stable() {
        let mut with_experiment = w(10);
        with_experiment.additional = vec![WeightDestination {
            weight: 20,
            service_name: "exp-svc".into(),
            pod_template_hash: "abc".into(),
        }];
        let a = forward_action(&config(), &with_experiment);
        // Argo's e2e `actionTemplateWithExperiment`, byte for byte.
        assert_eq!(
            a,
            r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"canary-svc","ServicePort":"80","Weight":10},{"ServiceName":"exp-svc","ServicePort":"80","Weight":20},{"ServiceName":"stable-svc","ServicePort":"80","Weight":70}]}}"#
        );
        let others = BTreeMap::from([("exp-svc".to_string(), 20)]);
        assert_eq!(observe_split(&a, &w(0)), Some((10, others)));
        // Without the experiment's group the split no longer adds up to stable's 70.
        let dropped = a.replace(
            r#"{"ServiceName":"exp-svc","ServicePort":"80","Weight":20},"#,
            "",
        );
        assert_eq!(observe_split(&dropped, &w(0)), None);
    }

    #[test]
    fn observed_weight_reads_the_canary_group() {
        let a = forward_action(&config(), &w(35));
        assert_eq!(observe_weight(&a, &w(0)), Some(35));
        // Groups that do not add up, or a foreign action: unknown.
        let odd = r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"canary-svc","Weight":10},{"ServiceName":"stable-svc","Weight":10}]}}"#;
        assert_eq!(observe_weight(odd, &w(0)), None);
        assert_eq!(observe_weight("not json", &w(0)), None);
        let reset = r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"stable-svc","ServicePort":"80","Weight":100}]}}"#;
        assert_eq!(observe_weight(reset, &w(0)), Some(0));
        let elsewhere = r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"other","Weight":100}]}}"#;
        assert_eq!(observe_weight(elsewhere, &w(0)), None);
    }

    #[test]
    fn conditions_merge_one_header_and_escape_as_go() {
        let route = HeaderRoute {
            name: "hdr".into(),
            matches: vec![
                exact("Custom-Header", "Mozilla*"),
                exact("x-b", "<&>"),
                exact("Custom-Header", "curl?"),
            ],
        };
        assert_eq!(
            header_conditions(&route).unwrap(),
            r#"[{"field":"http-header","httpHeaderConfig":{"httpHeaderName":"Custom-Header","values":["Mozilla*","curl?"]}},{"field":"http-header","httpHeaderConfig":{"httpHeaderName":"x-b","values":["\u003c\u0026\u003e"]}}]"#
        );
        let regex = HeaderRoute {
            name: "hdr".into(),
            matches: vec![HeaderRoutingMatch {
                header_name: "h".into(),
                header_value: StringMatch {
                    regex: Some("a.*".into()),
                    ..Default::default()
                },
            }],
        };
        assert!(header_conditions(&regex).unwrap_err().contains("exact"));
    }

    #[test]
    fn header_paths_go_first_in_managed_order_and_leave_again() {
        let rules = json!([{"host": "a", "http": {"paths": [
            {"path": "/*", "pathType": "Prefix", "backend": {"service": {"name": "root", "port": {"name": "use-annotation"}}}}
        ]}}, {"host": "b"}]);
        let managed = vec!["one".to_string(), "two".to_string()];
        let with_two = rules_with_route(&rules, "two", true, &managed);
        let with_both = rules_with_route(&with_two, "one", true, &managed);
        let names: Vec<_> = with_both[0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| backend_service(p).unwrap().to_string())
            .collect();
        assert_eq!(names, ["one", "two", "root"]);
        assert_eq!(
            with_both[0]["http"]["paths"][0],
            json!({"path": "/*", "pathType": "ImplementationSpecific", "backend": {
                "service": {"name": "one", "port": {"name": "use-annotation"}}}})
        );
        // Adding again changes nothing; removing both gives the rules back.
        assert_eq!(
            rules_with_route(&with_both, "one", true, &managed),
            with_both
        );
        let back = rules_with_route(
            &rules_with_route(&with_both, "one", false, &managed),
            "two",
            false,
            &managed,
        );
        assert_eq!(back, rules);
    }

    #[test]
    fn bad_config_names_the_field() {
        let no_ingress = AlbTrafficRouting {
            ingress: None,
            ..config()
        };
        let err = AlbRouter::new(&no_ingress, vec![]).err().unwrap();
        assert!(err.to_string().contains("alb.ingress"), "{err}");
        let sticky = AlbTrafficRouting {
            stickiness_config: Some(StickinessConfig {
                enabled: true,
                duration_seconds: 0,
            }),
            ..config()
        };
        let err = AlbRouter::new(&sticky, vec![]).err().unwrap();
        assert!(err.to_string().contains("durationSeconds"), "{err}");
        let port = AlbTrafficRouting {
            service_port: 0,
            ..config()
        };
        assert!(AlbRouter::new(&port, vec![]).is_err());
        let many = AlbTrafficRouting {
            ingresses: Some(vec!["a".into(), "b".into()]),
            ..config()
        };
        assert_eq!(
            AlbRouter::new(&many, vec![]).unwrap().ingresses(),
            ["a", "b"]
        );
    }
}
