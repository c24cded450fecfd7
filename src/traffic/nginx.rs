//! The NGINX Ingress router: a generated canary Ingress beside each stable Ingress, as in Argo
//! Rollouts (`trafficRouting.nginx.{stableIngress, stableIngresses, annotationPrefix,
//! additionalIngressAnnotations}`, `maxTrafficWeight`).
//!
//! What it decides, per stable Ingress, as upstream (`rollout/trafficrouting/nginx`):
//! - the canary Ingress is named `<rollout>-<stableIngress>-canary` (cut to 253 characters), so
//!   one taken over from Argo Rollouts is the same object;
//! - its rules are the stable Ingress's rules that have a path whose backend is the stable
//!   Service, with those backends switched to the canary Service (other rules are left out; none
//!   is a configuration error); TLS, `ingressClassName` and `kubernetes.io/ingress.class` are
//!   copied; nothing else of the stable Ingress is;
//! - annotations (`<prefix>` = `annotationPrefix`, default `nginx.ingress.kubernetes.io`):
//!   `additionalIngressAnnotations` (prefixed unless they already are), `<prefix>/canary: "true"`,
//!   `<prefix>/canary-weight`, `<prefix>/canary-weight-total` when `maxTrafficWeight` is not 100;
//! - a header route (Sluice's addition; upstream has none for NGINX) sets
//!   `<prefix>/canary-by-header` and `-value` (exact) or `-pattern` (regex; a prefix becomes
//!   `^<escaped prefix>.*`). NGINX matches one header, so a step with several matches is
//!   refused. The step itself is kept in the annotation [`HEADER_ROUTE_ANNOTATION`] so later
//!   weight changes keep it;
//! - it is owned by the Rollout (controller ownerReference), so deleting the Rollout deletes it,
//!   and [`Router::release`] deletes it (upstream leaves it behind, Argo Rollouts #4751).
//!
//! The canary Ingress is Sluice's own object, written whole with server-side apply. The stable
//! Ingress belongs to Git: it is only read, never written.
//!
//! What it must never do: modify a stable Ingress, or touch a canary Ingress another object
//! controls.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

use super::{FIELD_MANAGER, HeaderRoute, Observed, Router, RouterContext, TrafficError, Weights};
use crate::api::argo::rollout::NginxTrafficRouting;

const ROUTER: &str = "nginx";

/// The default annotation prefix.
pub const DEFAULT_PREFIX: &str = "nginx.ingress.kubernetes.io";

/// Annotation on the canary Ingress holding the header route step, as JSON `{name, matches}`.
pub const HEADER_ROUTE_ANNOTATION: &str = "sluice.dev/header-route";

/// The NGINX router of one Rollout.
pub struct NginxRouter {
    config: NginxTrafficRouting,
}

/// The canary Ingress name for a stable Ingress (Argo's `GetCanaryIngressName`).
pub fn canary_ingress_name(rollout: &str, stable_ingress: &str) -> String {
    const SUFFIX: &str = "-canary";
    let mut prefix = format!("{rollout}-{stable_ingress}");
    if prefix.len() > 253 - SUFFIX.len() {
        prefix.truncate(253 - SUFFIX.len());
    }
    format!("{prefix}{SUFFIX}")
}

/// Escapes regular-expression metacharacters (NGINX uses PCRE-like patterns).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The header annotations for a header route (without prefix).
pub fn header_annotations(route: &HeaderRoute) -> Result<BTreeMap<String, String>, String> {
    let [m] = route.matches.as_slice() else {
        return Err(format!(
            "setHeaderRoute '{}' has {} matches; NGINX can match exactly one header",
            route.name,
            route.matches.len()
        ));
    };
    let mut out = BTreeMap::new();
    out.insert("canary-by-header".to_string(), m.header_name.clone());
    let v = &m.header_value;
    if let Some(exact) = &v.exact {
        out.insert("canary-by-header-value".into(), exact.clone());
    } else if let Some(regex) = &v.regex {
        out.insert("canary-by-header-pattern".into(), regex.clone());
    } else if let Some(prefix) = &v.prefix {
        out.insert(
            "canary-by-header-pattern".into(),
            format!("^{}.*", regex_escape(prefix)),
        );
    } else {
        return Err(format!(
            "setHeaderRoute '{}': header {} has no exact, prefix or regex value",
            route.name, m.header_name
        ));
    }
    Ok(out)
}

/// Everything the canary Ingress depends on besides the stable Ingress.
pub struct CanarySpec<'a> {
    pub name: &'a str,
    pub rollout: &'a str,
    pub rollout_uid: &'a str,
    pub config: &'a NginxTrafficRouting,
    pub weights: &'a Weights,
    pub header_route: Option<&'a HeaderRoute>,
}

/// The desired canary Ingress for `stable`.
pub fn render_canary_ingress(stable: &Ingress, c: &CanarySpec<'_>) -> Result<Ingress, String> {
    let prefix = c
        .config
        .annotation_prefix
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    let stable_name = stable.metadata.name.clone().unwrap_or_default();
    let w = c.weights;
    let spec = stable.spec.clone().unwrap_or_default();
    let mut rules = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let mut rule = rule.clone();
        let mut uses_stable = false;
        if let Some(http) = rule.http.as_mut() {
            for p in http.paths.iter_mut() {
                if let Some(svc) = p.backend.service.as_mut()
                    && svc.name == w.stable_service
                {
                    svc.name = w.canary_service.clone();
                    uses_stable = true;
                }
            }
        }
        if uses_stable {
            rules.push(rule);
        }
    }
    if rules.is_empty() {
        return Err(format!(
            "Ingress {stable_name} has no rule with a path to the stable Service {}",
            w.stable_service
        ));
    }
    let mut annotations = BTreeMap::new();
    if let Some(class) = stable
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"))
    {
        annotations.insert("kubernetes.io/ingress.class".to_string(), class.clone());
    }
    for (k, v) in c.config.additional_ingress_annotations.iter().flatten() {
        let key = if k.starts_with(&prefix) {
            k.clone()
        } else {
            format!("{prefix}/{k}")
        };
        annotations.insert(key, v.clone());
    }
    // Full annotation names, as written, over the prefixed ones (Argo's order).
    for (k, v) in c.config.canary_ingress_annotations.iter().flatten() {
        annotations.insert(k.clone(), v.clone());
    }
    if let Some(route) = c.header_route {
        for (k, v) in header_annotations(route)? {
            annotations.insert(format!("{prefix}/{k}"), v);
        }
        let json = serde_json::json!({ "name": route.name, "matches": route.matches });
        annotations.insert(HEADER_ROUTE_ANNOTATION.to_string(), json.to_string());
    }
    annotations.insert(format!("{prefix}/canary"), "true".into());
    annotations.insert(format!("{prefix}/canary-weight"), w.canary.to_string());
    if w.max_weight != 100 {
        annotations.insert(
            format!("{prefix}/canary-weight-total"),
            w.max_weight.to_string(),
        );
    }
    Ok(Ingress {
        metadata: ObjectMeta {
            name: Some(c.name.to_string()),
            namespace: stable.metadata.namespace.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "argoproj.io/v1alpha1".into(),
                kind: "Rollout".into(),
                name: c.rollout.to_string(),
                uid: c.rollout_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::networking::v1::IngressSpec {
            ingress_class_name: spec.ingress_class_name.clone(),
            tls: spec.tls.clone(),
            rules: Some(rules),
            default_backend: None,
        }),
        status: None,
    })
}

/// The canary weight a canary Ingress applies (`None` when absent or unreadable).
pub fn observe_weight(canary: &Ingress, prefix: &str) -> Option<i32> {
    canary
        .metadata
        .annotations
        .as_ref()?
        .get(&format!("{prefix}/canary-weight"))?
        .parse()
        .ok()
}

/// The header route kept on a canary Ingress.
pub fn stored_header_route(canary: &Ingress) -> Option<HeaderRoute> {
    let text = canary
        .metadata
        .annotations
        .as_ref()?
        .get(HEADER_ROUTE_ANNOTATION)?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(HeaderRoute {
        name: v.get("name")?.as_str()?.to_string(),
        matches: serde_json::from_value(v.get("matches")?.clone()).ok()?,
    })
}

fn controlled_by(ing: &Ingress, uid: &str) -> bool {
    ing.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn kube_err(action: &'static str, ns: &str, name: &str, e: kube::Error) -> TrafficError {
    TrafficError::Kube {
        router: ROUTER,
        action,
        kind: "Ingress".into(),
        namespace: ns.into(),
        name: name.into(),
        source: Box::new(e),
    }
}

fn read_err(ns: &str, name: &str, e: super::cache::ReadError) -> TrafficError {
    match e {
        super::cache::ReadError::Kube(e) => kube_err("get", ns, name, e),
        not_served => TrafficError::Config(format!("{ROUTER}: {not_served}")),
    }
}

fn invalid(ns: &str, name: &str, reason: String) -> TrafficError {
    TrafficError::Invalid {
        router: ROUTER,
        kind: "Ingress".into(),
        namespace: ns.into(),
        name: name.into(),
        reason,
    }
}

/// What to do about the header route when writing.
enum Header<'a> {
    Keep,
    Set(&'a HeaderRoute),
    Remove,
}

impl NginxRouter {
    /// The router for `trafficRouting.nginx`.
    pub fn new(config: &NginxTrafficRouting) -> Result<NginxRouter, TrafficError> {
        let router = NginxRouter {
            config: config.clone(),
        };
        if router.stable_ingresses().is_empty() {
            return Err(TrafficError::Config(
                "nginx: set stableIngress or stableIngresses".into(),
            ));
        }
        Ok(router)
    }

    fn stable_ingresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .config
            .stable_ingress
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        for s in self.config.stable_ingresses.iter().flatten() {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    fn prefix(&self) -> String {
        self.config
            .annotation_prefix
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string())
    }

    /// Renders and applies every canary Ingress. `weight`: `None` keeps the live weight (0 for
    /// a new Ingress).
    async fn write(
        &self,
        ctx: &RouterContext,
        w: &Weights,
        weight: Option<i32>,
        header: Header<'_>,
    ) -> Result<(), TrafficError> {
        let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let ns = ctx.namespace.as_str();
        for stable_name in self.stable_ingresses() {
            let stable = ctx
                .read_as::<Ingress>(ns, &stable_name)
                .await
                .map_err(|e| read_err(ns, &stable_name, e))?
                .ok_or_else(|| TrafficError::NotFound {
                    router: ROUTER,
                    kind: "Ingress".into(),
                    namespace: ns.into(),
                    name: stable_name.clone(),
                })?;
            let name = canary_ingress_name(&ctx.rollout, &stable_name);
            let live = ctx
                .read_as::<Ingress>(ns, &name)
                .await
                .map_err(|e| read_err(ns, &name, e))?;
            if let Some(live) = &live
                && !controlled_by(live, &ctx.rollout_uid)
            {
                return Err(invalid(
                    ns,
                    &name,
                    format!(
                        "it is not controlled by Rollout {}; delete or rename it",
                        ctx.rollout
                    ),
                ));
            }
            let stored = live.as_ref().and_then(stored_header_route);
            let header_route = match header {
                Header::Keep => stored.as_ref(),
                Header::Set(r) => Some(r),
                Header::Remove => None,
            };
            let canary = weight
                .or_else(|| {
                    live.as_ref()
                        .and_then(|l| observe_weight(l, &self.prefix()))
                })
                .unwrap_or(0);
            let weights = Weights {
                canary,
                ..w.clone()
            };
            let desired = render_canary_ingress(
                &stable,
                &CanarySpec {
                    name: &name,
                    rollout: &ctx.rollout,
                    rollout_uid: &ctx.rollout_uid,
                    config: &self.config,
                    weights: &weights,
                    header_route,
                },
            )
            .map_err(|e| invalid(ns, &stable_name, e))?;
            // Sluice's own object: written whole, forced, so no stale annotation survives.
            let stored = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .map_err(|e| kube_err("apply", ns, &name, e))?;
            ctx.wrote_as(&stored);
        }
        Ok(())
    }
}

#[async_trait]
impl Router for NginxRouter {
    fn name(&self) -> &'static str {
        ROUTER
    }

    async fn set_weight(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        self.write(ctx, w, Some(w.canary), Header::Keep).await
    }

    async fn observe(&self, ctx: &RouterContext, _w: &Weights) -> Result<Observed, TrafficError> {
        let mut observed = Observed::default();
        let mut weights = Vec::new();
        for stable_name in self.stable_ingresses() {
            let name = canary_ingress_name(&ctx.rollout, &stable_name);
            let live = ctx
                .read_as::<Ingress>(&ctx.namespace, &name)
                .await
                .map_err(|e| read_err(&ctx.namespace, &name, e))?;
            // No canary Ingress: NGINX sends the canary nothing.
            let weight = match &live {
                None => Some(0),
                Some(l) if controlled_by(l, &ctx.rollout_uid) => observe_weight(l, &self.prefix()),
                Some(_) => None,
            };
            observed.detail.insert(
                format!("ingress/{name}"),
                match (&live, weight) {
                    (None, _) => "absent".to_string(),
                    (_, Some(w)) => format!("canary-weight {w}"),
                    (_, None) => "weight unknown".to_string(),
                },
            );
            weights.push(weight);
            if let Some(r) = live.as_ref().and_then(stored_header_route)
                && !observed.managed_routes.contains(&r.name)
            {
                observed.managed_routes.push(r.name);
            }
        }
        observed.canary = match weights.split_first() {
            Some((first, rest)) if rest.iter().all(|w| w == first) => *first,
            _ => None,
        };
        Ok(observed)
    }

    async fn set_header_route(
        &self,
        ctx: &RouterContext,
        w: &Weights,
        route: &HeaderRoute,
    ) -> Result<(), TrafficError> {
        if route.matches.is_empty() {
            return self.write(ctx, w, None, Header::Remove).await;
        }
        header_annotations(route).map_err(TrafficError::Config)?;
        self.write(ctx, w, None, Header::Set(route)).await
    }

    async fn remove_managed_routes(&self, ctx: &RouterContext) -> Result<(), TrafficError> {
        let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        for stable_name in self.stable_ingresses() {
            let name = canary_ingress_name(&ctx.rollout, &stable_name);
            let Some(live) = ctx
                .read_as::<Ingress>(&ctx.namespace, &name)
                .await
                .map_err(|e| read_err(&ctx.namespace, &name, e))?
            else {
                continue;
            };
            if stored_header_route(&live).is_none() || !controlled_by(&live, &ctx.rollout_uid) {
                continue;
            }
            // Rewrite without the header annotations, keeping the live weight.
            let prefix = self.prefix();
            let mut ing = live.clone();
            if let Some(a) = ing.metadata.annotations.as_mut() {
                a.remove(HEADER_ROUTE_ANNOTATION);
                for k in [
                    "canary-by-header",
                    "canary-by-header-value",
                    "canary-by-header-pattern",
                ] {
                    if !self
                        .config
                        .additional_ingress_annotations
                        .iter()
                        .flatten()
                        .any(|(ak, _)| ak == k || *ak == format!("{prefix}/{k}"))
                    {
                        a.remove(&format!("{prefix}/{k}"));
                    }
                }
            }
            let desired = Ingress {
                metadata: ObjectMeta {
                    name: ing.metadata.name.clone(),
                    namespace: ing.metadata.namespace.clone(),
                    annotations: ing.metadata.annotations.clone(),
                    owner_references: ing.metadata.owner_references.clone(),
                    ..Default::default()
                },
                spec: ing.spec.clone(),
                status: None,
            };
            let stored = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .map_err(|e| kube_err("apply", &ctx.namespace, &name, e))?;
            ctx.wrote_as(&stored);
        }
        Ok(())
    }

    async fn release(&self, ctx: &RouterContext, _w: &Weights) -> Result<(), TrafficError> {
        let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        for stable_name in self.stable_ingresses() {
            let name = canary_ingress_name(&ctx.rollout, &stable_name);
            let Some(live) = ctx
                .read_as::<Ingress>(&ctx.namespace, &name)
                .await
                .map_err(|e| read_err(&ctx.namespace, &name, e))?
            else {
                continue;
            };
            if !controlled_by(&live, &ctx.rollout_uid) {
                continue;
            }
            // Only the object just read: never one recreated under the same name meanwhile.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: live.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            ctx.deleted_as::<Ingress>(&ctx.namespace, &name);
            match api.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(kube_err("delete", &ctx.namespace, &name, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::argo::rollout::{HeaderRoutingMatch, StringMatch};
    use pretty_assertions::assert_eq;

    fn stable() -> Ingress {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "ns",
                "annotations": {"kubernetes.io/ingress.class": "nginx", "other": "x"}},
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["a.example"], "secretName": "tls"}],
                "rules": [
                    {"host": "a.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "stable", "port": {"number": 80}}}},
                        {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "other", "port": {"number": 80}}}},
                    ]}},
                    {"host": "b.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "other", "port": {"number": 80}}}},
                    ]}},
                ]
            }
        }))
        .unwrap()
    }

    fn weights(canary: i32, max: i32) -> Weights {
        Weights {
            canary,
            max_weight: max,
            canary_service: "canary".into(),
            stable_service: "stable".into(),
            canary_hash: String::new(),
            stable_hash: String::new(),
            additional: Vec::new(),
        }
    }

    #[test]
    fn canary_ingress_copies_stable_rules_with_canary_backend() {
        let config = NginxTrafficRouting {
            stable_ingress: Some("web".into()),
            additional_ingress_annotations: Some(
                [
                    ("canary-by-cookie".to_string(), "beta".to_string()),
                    (format!("{DEFAULT_PREFIX}/load-balance"), "ewma".to_string()),
                ]
                .into(),
            ),
            canary_ingress_annotations: Some(
                [
                    (
                        format!("{DEFAULT_PREFIX}/load-balance"),
                        "round_robin".to_string(),
                    ),
                    ("example.com/team".to_string(), "web".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let w = weights(30, 100);
        let ing = render_canary_ingress(
            &stable(),
            &CanarySpec {
                name: "ro-web-canary",
                rollout: "ro",
                rollout_uid: "uid-1",
                config: &config,
                weights: &w,
                header_route: None,
            },
        )
        .unwrap();
        let v = serde_json::to_value(&ing).unwrap();
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({
                "kubernetes.io/ingress.class": "nginx",
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": "30",
                "nginx.ingress.kubernetes.io/canary-by-cookie": "beta",
                "nginx.ingress.kubernetes.io/load-balance": "round_robin",
                "example.com/team": "web",
            })
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["spec"]["ingressClassName"], "nginx");
        assert_eq!(v["spec"]["tls"][0]["secretName"], "tls");
        let rules = v["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0]["http"]["paths"][0]["backend"]["service"]["name"],
            "canary"
        );
        assert_eq!(
            rules[0]["http"]["paths"][1]["backend"]["service"]["name"],
            "other"
        );
        assert_eq!(observe_weight(&ing, DEFAULT_PREFIX), Some(30));
    }

    #[test]
    fn weight_total_prefix_and_header_route() {
        let config = NginxTrafficRouting {
            annotation_prefix: Some("custom.nginx.org".into()),
            ..Default::default()
        };
        let route = HeaderRoute {
            name: "hdr".into(),
            matches: vec![HeaderRoutingMatch {
                header_name: "x-canary".into(),
                header_value: StringMatch {
                    prefix: Some("v2.".into()),
                    ..Default::default()
                },
            }],
        };
        let w = weights(5, 1000);
        let ing = render_canary_ingress(
            &stable(),
            &CanarySpec {
                name: "c",
                rollout: "ro",
                rollout_uid: "u",
                config: &config,
                weights: &w,
                header_route: Some(&route),
            },
        )
        .unwrap();
        let a = ing.metadata.annotations.clone().unwrap();
        assert_eq!(a["custom.nginx.org/canary-weight"], "5");
        assert_eq!(a["custom.nginx.org/canary-weight-total"], "1000");
        assert_eq!(a["custom.nginx.org/canary-by-header"], "x-canary");
        assert_eq!(a["custom.nginx.org/canary-by-header-pattern"], "^v2\\..*");
        assert_eq!(stored_header_route(&ing), Some(route));
    }

    #[test]
    fn header_route_needs_exactly_one_match() {
        let m = HeaderRoutingMatch {
            header_name: "h".into(),
            header_value: StringMatch {
                exact: Some("1".into()),
                ..Default::default()
            },
        };
        let two = HeaderRoute {
            name: "r".into(),
            matches: vec![m.clone(), m.clone()],
        };
        assert!(header_annotations(&two).is_err());
        let one = HeaderRoute {
            name: "r".into(),
            matches: vec![m],
        };
        assert_eq!(
            header_annotations(&one).unwrap(),
            [
                ("canary-by-header".to_string(), "h".to_string()),
                ("canary-by-header-value".to_string(), "1".to_string())
            ]
            .into()
        );
    }

    #[test]
    fn no_rule_to_the_stable_service_is_an_error() {
        let w = Weights {
            stable_service: "nope".into(),
            ..weights(10, 100)
        };
        let err = render_canary_ingress(
            &stable(),
            &CanarySpec {
                name: "c",
                rollout: "ro",
                rollout_uid: "u",
                config: &NginxTrafficRouting::default(),
                weights: &w,
                header_route: None,
            },
        )
        .unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn canary_name_matches_argo() {
        assert_eq!(canary_ingress_name("ro", "web"), "ro-web-canary");
        let long = "x".repeat(300);
        let n = canary_ingress_name("ro", &long);
        assert_eq!(n.len(), 253);
        assert!(n.ends_with("-canary"));
    }
}
