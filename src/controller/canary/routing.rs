//! Flagger's routers for Canaries: the routing objects Flagger *generates* for a provider, applied
//! with the weights the scheduling core decided, and the weights read back from a watch cache.
//!
//! | provider | generated objects (owned by the Canary) |
//! |---|---|
//! | `gatewayapi`, `gatewayapi:v1`, `gatewayapi:v1beta1` | HTTPRoute `<apex>` |
//! | `istio` | VirtualService `<apex>`, DestinationRules `<apex>-primary`, `<apex>-canary` |
//! | `smi:v1alpha2`, `smi:v1alpha3`, `smi:v1alpha4`, `linkerd` | TrafficSplit `<apex>`, in the version the cluster serves (v1alpha4, v1alpha3 or v1alpha2: the same `service` / `backends` shape) |
//! | `traefik` | TraefikService `<apex>` |
//! | `nginx` | Ingress `<ingressRef>-canary`: a copy of `spec.ingressRef` whose backends name `<apex>-canary`, with `nginx.ingress.kubernetes.io/canary*` annotations |
//!
//! The shapes follow upstream (`pkg/router` of fluxcd/flagger): a weighted rule from
//! `service.match` (default: path prefix `/`) with `<apex>-primary` / `<apex>-canary` backends;
//! for A/B (`analysis.match`) that rule's matches become the analysis matches merged into the
//! service matches, and a second rule sends everything else to the primary, so during the
//! iterations (weights 0/100) only matching requests reach the canary; Blue/Green mirroring adds
//! a `RequestMirror` filter (Gateway API) or `mirror` (Istio) to the canary. Weights are read
//! back from the rule with both backends, as upstream's `GetRoutes`.
//!
//! Objects are written with server-side apply under [`FIELD_MANAGER`], carry the Flux / Helm
//! no-drift annotations of every generated object and [`CHECKSUM_ANNOTATION`] (what they were
//! rendered from, so a changed Canary spec or a deleted route is rewritten at the weights in
//! effect — upstream's `Reconcile` — without comparing defaulted specs).
//!
//! **A write is not a weight.** After each write the Canary is not ticked again until the watch
//! cache shows the written generation and, for Gateway API, every parent in the route's status
//! has `Accepted=True` for that generation (the Gateway controller has taken it); only then does
//! the core see the read-back weight and may step further. A route no Gateway controller accepts
//! therefore holds the run instead of being analysed at a weight nobody routes.
//!
//! Deliberate differences from upstream: a `prefix` header or query match becomes the regular
//! expression `^<escaped prefix>.*` (upstream refuses it); `analysis.mirror` or `analysis.match`
//! with a provider whose objects cannot express them (SMI, Traefik) is an error instead of a run
//! that sends all traffic to the canary or never leaves its mirroring step; session affinity is
//! not generated yet (an error says so).
//!
//! This module must never decide a weight (that is [`crate::engine::flagger`]), never read a
//! route through the API per tick (watch caches only), and never write an object the Canary
//! does not own by name and provider.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::{FLUX_RECONCILE_ANNOTATION, HELM_DRIFT_ANNOTATION};
use crate::api::flagger::canary::{
    Canary, CanaryPhase, CanaryService, HttpMatchRequest, StringMatch,
};
use crate::controller::FIELD_MANAGER;
use crate::engine::flagger::RouterWeights;

/// Annotation with the checksum of what a generated routing object was rendered from.
pub const CHECKSUM_ANNOTATION: &str = "sluice.dev/route-checksum";
/// Total weight.
const TOTAL: i32 = 100;
/// How long a tick waits for a route watch cache's first list.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a Canary's routes could not be rendered, read or written.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "Canary {namespace}/{name}: provider {provider:?} is not routed by Sluice yet; use gatewayapi:v1, gatewayapi:v1beta1, istio, smi:v1alpha2/3/4, linkerd, traefik, nginx or kubernetes"
    )]
    Unsupported {
        namespace: String,
        name: String,
        provider: String,
    },
    #[error("Canary {namespace}/{name} (provider {provider}): {reason}")]
    Spec {
        namespace: String,
        name: String,
        provider: String,
        reason: String,
    },
    #[error(
        "Canary {namespace}/{name}: the cluster serves no {kind} in {api_version}, which provider {provider:?} routes through: install its CRDs, then restart sluice"
    )]
    NotServed {
        namespace: String,
        name: String,
        provider: String,
        kind: &'static str,
        api_version: String,
    },
    #[error("applying {kind} {namespace}/{object} for Canary {canary}: {source}")]
    Apply {
        kind: String,
        namespace: String,
        object: String,
        canary: String,
        source: Box<kube::Error>,
    },
}

/// A kind of routing object Sluice generates and watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Ingress,
    HttpRoute,
    VirtualService,
    TrafficSplit,
    TraefikService,
}

impl RouteKind {
    const ALL: [RouteKind; 5] = [
        RouteKind::Ingress,
        RouteKind::HttpRoute,
        RouteKind::VirtualService,
        RouteKind::TrafficSplit,
        RouteKind::TraefikService,
    ];

    /// Group, kind, plural and the versions that may be watched, preferred first (SMI's
    /// versions share the TrafficSplit shape Sluice writes; a cluster often serves only one).
    fn watched(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    ) {
        match self {
            RouteKind::Ingress => ("networking.k8s.io", "Ingress", "ingresses", &["v1"]),
            RouteKind::HttpRoute => (
                "gateway.networking.k8s.io",
                "HTTPRoute",
                "httproutes",
                &["v1"],
            ),
            RouteKind::VirtualService => (
                "networking.istio.io",
                "VirtualService",
                "virtualservices",
                &["v1beta1"],
            ),
            RouteKind::TrafficSplit => (
                "split.smi-spec.io",
                "TrafficSplit",
                "trafficsplits",
                &["v1alpha4", "v1alpha3", "v1alpha2"],
            ),
            RouteKind::TraefikService => (
                "traefik.io",
                "TraefikService",
                "traefikservices",
                &["v1alpha1"],
            ),
        }
    }

    fn kind_name(self) -> &'static str {
        self.watched().1
    }
}

/// A provider Sluice routes Canaries through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// HTTPRoute in this version (`v1` or `v1beta1`).
    GatewayApi(&'static str),
    Istio,
    /// TrafficSplit in this version (`v1alpha2` or `v1alpha3`).
    Smi(&'static str),
    Traefik,
    /// A `<ingressRef>-canary` Ingress with NGINX's canary annotations.
    Nginx,
}

/// What parsing a provider name gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// `kubernetes`: the apex Service alone, no routing object.
    NoRouter,
    Routed(Provider),
    Unsupported,
}

impl Provider {
    /// Upstream's factory: by prefix, versions after a colon.
    pub fn parse(name: &str) -> Parsed {
        let (base, version) = name.split_once(':').unwrap_or((name, ""));
        match (base, version) {
            ("kubernetes", _) => Parsed::NoRouter,
            ("gatewayapi", "v1beta1") => Parsed::Routed(Provider::GatewayApi("v1beta1")),
            ("gatewayapi", "" | "v1") => Parsed::Routed(Provider::GatewayApi("v1")),
            ("istio", _) => Parsed::Routed(Provider::Istio),
            ("smi", "v1alpha2") | ("linkerd", _) => Parsed::Routed(Provider::Smi("v1alpha2")),
            ("smi", "v1alpha3") => Parsed::Routed(Provider::Smi("v1alpha3")),
            ("smi", "v1alpha4") => Parsed::Routed(Provider::Smi("v1alpha4")),
            ("traefik", _) => Parsed::Routed(Provider::Traefik),
            ("nginx", _) => Parsed::Routed(Provider::Nginx),
            _ => Parsed::Unsupported,
        }
    }

    /// The kind whose object carries the weights.
    pub fn route_kind(self) -> RouteKind {
        match self {
            Provider::GatewayApi(_) => RouteKind::HttpRoute,
            Provider::Istio => RouteKind::VirtualService,
            Provider::Smi(_) => RouteKind::TrafficSplit,
            Provider::Traefik => RouteKind::TraefikService,
            Provider::Nginx => RouteKind::Ingress,
        }
    }
}

/// The split to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub primary: i32,
    pub canary: i32,
    pub mirrored: bool,
}

impl Split {
    fn from_router(w: RouterWeights) -> Self {
        Split {
            primary: TOTAL - w.canary_weight,
            canary: w.canary_weight,
            mirrored: w.mirrored,
        }
    }
}

/// The name of the object that carries the weights.
pub fn route_name(canary: &Canary, provider: Provider) -> String {
    match (provider, &canary.spec.ingress_ref) {
        (Provider::Nginx, Some(ingress)) => format!("{}-canary", ingress.name),
        _ => canary.service_names().0,
    }
}

/// Renders every object `provider` generates for `canary` at `split`; the first carries the
/// weights. `source` is the user's Ingress (`spec.ingressRef`) for NGINX. Pure: errors name the
/// field to fix.
pub fn render(
    canary: &Canary,
    provider: Provider,
    split: Split,
    source: Option<&Value>,
) -> Result<Vec<Value>, String> {
    let service = canary
        .spec
        .service
        .as_ref()
        .ok_or("spec.service is required to generate routes")?;
    let analysis = canary.analysis().cloned().unwrap_or_default();
    if analysis.session_affinity.is_some() {
        return Err("analysis.sessionAffinity is not generated by Sluice yet".into());
    }
    let (apex, primary, canary_svc) = canary.service_names();
    let mut objects = match provider {
        Provider::GatewayApi(version) => vec![http_route(
            canary,
            service,
            version,
            &apex,
            &primary,
            &canary_svc,
            split,
        )?],
        Provider::Istio => istio(canary, service, &apex, &primary, &canary_svc, split)?,
        Provider::Smi(version) => {
            no_match_or_mirror(canary, "smi")?;
            vec![json!({
                "apiVersion": format!("split.smi-spec.io/{version}"),
                "kind": "TrafficSplit",
                "metadata": {"name": apex},
                "spec": {"service": apex, "backends": [
                    {"service": primary, "weight": split.primary},
                    {"service": canary_svc, "weight": split.canary},
                ]},
            })]
        }
        Provider::Traefik => {
            no_match_or_mirror(canary, "traefik")?;
            vec![json!({
                "apiVersion": "traefik.io/v1alpha1",
                "kind": "TraefikService",
                "metadata": {"name": apex},
                "spec": {"weighted": {"services": [
                    {"name": primary, "port": service.port, "weight": split.primary},
                    {"name": canary_svc, "port": service.port, "weight": split.canary},
                ]}},
            })]
        }
        Provider::Nginx => vec![nginx(canary, source, &apex, &canary_svc, split)?],
    };
    let namespace = canary.namespace().unwrap_or_default();
    let owner = canary.controller_owner_ref(&());
    let apex_meta = service.apex.clone().unwrap_or_default();
    for object in &mut objects {
        let mut annotations = apex_meta.annotations.clone().unwrap_or_default();
        // The object's own annotations (NGINX's canary ones) win over the apex metadata.
        if let Some(own) = object["metadata"]["annotations"].as_object() {
            for (k, v) in own {
                annotations.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        }
        annotations.insert(FLUX_RECONCILE_ANNOTATION.into(), "disabled".into());
        annotations.insert(HELM_DRIFT_ANNOTATION.into(), "disabled".into());
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(namespace);
        meta["annotations"] = json!(annotations);
        if let Some(labels) = &apex_meta.labels {
            meta["labels"] = json!(labels);
        }
        meta["ownerReferences"] = json!(owner.iter().collect::<Vec<_>>());
        // Over everything rendered, so any change to what the object should be rewrites it.
        let checksum = checksum(object);
        object["metadata"]["annotations"][CHECKSUM_ANNOTATION] = json!(checksum);
    }
    Ok(objects)
}

/// NGINX annotations of the canary Ingress.
const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";

/// Upstream's NGINX router: a copy of the user's Ingress whose backends naming the apex Service
/// name the canary Service, with `canary: "true"` and the weight or (A/B) header annotations.
/// Only the Ingress's `nginx.ingress.kubernetes.io/*` annotations are copied (upstream copies
/// all, GitOps tracking annotations included, so Argo CD would claim the copy).
fn nginx(
    canary: &Canary,
    source: Option<&Value>,
    apex: &str,
    canary_svc: &str,
    split: Split,
) -> Result<Value, String> {
    let analysis = canary.analysis().cloned().unwrap_or_default();
    if analysis.mirror() {
        return Err(
            "analysis.mirror cannot be routed by provider nginx: use gatewayapi or istio, or remove it"
                .into(),
        );
    }
    let reference = canary
        .spec
        .ingress_ref
        .as_ref()
        .ok_or("spec.ingressRef is required with provider nginx")?;
    let ingress = source.ok_or_else(|| {
        format!(
            "spec.ingressRef: Ingress {} does not exist in the Canary's namespace",
            reference.name
        )
    })?;
    let mut spec = ingress.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut found = false;
    let mut retarget = |backend: Option<&mut Value>| {
        if let Some(name) = backend.and_then(|b| b.pointer_mut("/service/name"))
            && name.as_str() == Some(apex)
        {
            *name = json!(canary_svc);
            found = true;
        }
    };
    retarget(spec.get_mut("defaultBackend"));
    if let Some(rules) = spec.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules {
            if let Some(paths) = rule
                .pointer_mut("/http/paths")
                .and_then(Value::as_array_mut)
            {
                for path in paths {
                    retarget(path.get_mut("backend"));
                }
            }
        }
    }
    if !found {
        return Err(format!(
            "spec.ingressRef: Ingress {} has no backend naming Service {apex}: point it at the apex Service",
            reference.name
        ));
    }
    let mut annotations: BTreeMap<String, String> = ingress
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(NGINX_PREFIX) && !k.starts_with(NGINX_CANARY))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    annotations.insert(NGINX_CANARY.into(), "true".into());
    let key = |suffix: &str| format!("{NGINX_CANARY}-{suffix}");
    if split.canary > 0 && !analysis.r#match.is_empty() {
        // A/B: matching requests only (NGINX prefers the header and cookie over the weight).
        annotations.insert(key("weight"), "0".into());
        for m in &analysis.r#match {
            for (name, value) in m.headers.iter().flatten() {
                if name == "cookie" {
                    if let Some(exact) = &value.exact {
                        annotations.insert(key("by-cookie"), exact.clone());
                    }
                    continue;
                }
                annotations.insert(key("by-header"), name.clone());
                if let Some(exact) = &value.exact {
                    annotations.insert(key("by-header-value"), exact.clone());
                } else if let Some(regex) = &value.regex {
                    annotations.insert(key("by-header-pattern"), regex.clone());
                } else if let Some(prefix) = &value.prefix {
                    annotations.insert(key("by-header-pattern"), prefix_regex(prefix));
                }
            }
        }
    } else {
        annotations.insert(key("weight"), split.canary.to_string());
    }
    Ok(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": format!("{}-canary", reference.name), "annotations": annotations},
        "spec": spec,
    }))
}

fn checksum(object: &Value) -> String {
    let text = serde_json::to_string(object).unwrap_or_default();
    crate::engine::hash::safe_encode(&crate::engine::hash::fnv32a(text.as_bytes()).to_string())
}

fn no_match_or_mirror(canary: &Canary, provider: &str) -> Result<(), String> {
    let analysis = canary.analysis().cloned().unwrap_or_default();
    if !analysis.r#match.is_empty() {
        return Err(format!(
            "analysis.match (A/B testing) cannot be routed by provider {provider}: use gatewayapi or istio, or remove it"
        ));
    }
    if analysis.mirror() {
        return Err(format!(
            "analysis.mirror cannot be routed by provider {provider}: use gatewayapi or istio, or remove it"
        ));
    }
    Ok(())
}

/// `^<prefix, regex-escaped>.*`.
fn prefix_regex(prefix: &str) -> String {
    let mut out = String::from("^");
    for c in prefix.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str(".*");
    out
}

/// (Gateway API match type, value) of a string match for headers and query parameters.
fn value_match(what: &str, m: &StringMatch) -> Result<(&'static str, String), String> {
    if let Some(v) = &m.exact {
        Ok(("Exact", v.clone()))
    } else if let Some(v) = &m.regex {
        Ok(("RegularExpression", v.clone()))
    } else if let Some(v) = &m.prefix {
        Ok(("RegularExpression", prefix_regex(v)))
    } else {
        Err(format!(
            "{what}: Gateway API matches only exact, regex and prefix"
        ))
    }
}

/// Upstream `mapRouteMatches`: Istio-style matches as Gateway API `HTTPRouteMatch`es.
fn gateway_matches(matches: &[HttpMatchRequest], field: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, m) in matches.iter().enumerate() {
        let mut g = serde_json::Map::new();
        if let Some(uri) = &m.uri {
            let (kind, value) = if let Some(v) = &uri.regex {
                ("RegularExpression", v)
            } else if let Some(v) = &uri.exact {
                ("Exact", v)
            } else if let Some(v) = &uri.prefix {
                ("PathPrefix", v)
            } else {
                return Err(format!(
                    "{field}[{i}].uri: Gateway API matches a path only by exact, prefix or regex"
                ));
            };
            g.insert("path".into(), json!({"type": kind, "value": value}));
        }
        if let Some(method) = &m.method {
            let exact = method.exact.as_ref().ok_or(format!(
                "{field}[{i}].method: Gateway API matches a method only exactly"
            ))?;
            g.insert("method".into(), json!(exact));
        }
        let mut headers = Vec::new();
        for (name, value) in m.headers.iter().flatten() {
            let (kind, value) = value_match(&format!("{field}[{i}].headers.{name}"), value)?;
            headers.push(json!({"name": name, "type": kind, "value": value}));
        }
        if !headers.is_empty() {
            g.insert("headers".into(), Value::Array(headers));
        }
        let mut params = Vec::new();
        for (name, value) in m.query_params.iter().flatten() {
            let (kind, value) = value_match(&format!("{field}[{i}].queryParams.{name}"), value)?;
            params.push(json!({"name": name, "type": kind, "value": value}));
        }
        if !params.is_empty() {
            g.insert("queryParams".into(), Value::Array(params));
        }
        if !g.is_empty() {
            out.push(Value::Object(g));
        }
    }
    Ok(out)
}

/// Upstream `mergeMatchConditions`: each analysis match's headers / query parameters on a copy
/// of each service match.
fn merge_matches(analysis: &[Value], service: &[Value]) -> Vec<Value> {
    if analysis.is_empty() {
        return service.to_vec();
    }
    if service.is_empty() {
        return analysis.to_vec();
    }
    let mut out = Vec::new();
    for a in analysis {
        for s in service {
            let mut m = s.clone();
            for field in ["headers", "queryParams"] {
                if let Some(v) = a.get(field) {
                    m[field] = v.clone();
                }
            }
            out.push(m);
        }
    }
    out
}

/// Upstream `makeFilters`: header modifiers, URL rewrite and request mirrors from `service`.
fn gateway_filters(service: &CanaryService) -> Vec<Value> {
    let mut filters = Vec::new();
    let header_ops = |ops: &Value| {
        let list = |field: &str| {
            let mut v: Vec<Value> = ops
                .get(field)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| json!({"name": k, "value": v}))
                        .collect()
                })
                .unwrap_or_default();
            v.sort_by_key(|h| h["name"].as_str().unwrap_or_default().to_string());
            v
        };
        let mut f = serde_json::Map::new();
        for field in ["add", "set"] {
            let l = list(field);
            if !l.is_empty() {
                f.insert(field.into(), Value::Array(l));
            }
        }
        if let Some(remove) = ops.get("remove").filter(|r| r.is_array()) {
            f.insert("remove".into(), remove.clone());
        }
        Value::Object(f)
    };
    if let Some(headers) = &service.headers {
        if let Some(request) = headers.get("request") {
            filters.push(json!({"type": "RequestHeaderModifier",
                                "requestHeaderModifier": header_ops(request)}));
        }
        if let Some(response) = headers.get("response") {
            filters.push(json!({"type": "ResponseHeaderModifier",
                                "responseHeaderModifier": header_ops(response)}));
        }
    }
    if let Some(rewrite) = &service.rewrite {
        let mut r = serde_json::Map::new();
        if let Some(authority) = rewrite.get("authority").and_then(Value::as_str) {
            r.insert("hostname".into(), json!(authority));
        }
        if let Some(uri) = rewrite.get("uri").and_then(Value::as_str) {
            let full = rewrite.get("type").and_then(Value::as_str) == Some("ReplaceFullPath");
            r.insert(
                "path".into(),
                if full {
                    json!({"type": "ReplaceFullPath", "replaceFullPath": uri})
                } else {
                    json!({"type": "ReplacePrefixMatch", "replacePrefixMatch": uri})
                },
            );
        }
        filters.push(json!({"type": "URLRewrite", "urlRewrite": r}));
    }
    for mirror in &service.mirror {
        filters.push(json!({"type": "RequestMirror", "requestMirror": mirror}));
    }
    filters
}

fn backend_ref(name: &str, port: i32, weight: i32) -> Value {
    json!({"group": "", "kind": "Service", "name": name, "port": port, "weight": weight})
}

fn http_route(
    canary: &Canary,
    service: &CanaryService,
    version: &str,
    apex: &str,
    primary: &str,
    canary_svc: &str,
    split: Split,
) -> Result<Value, String> {
    if service.gateway_refs.is_empty() {
        return Err(
            "spec.service.gatewayRefs must name at least one Gateway with a gatewayapi provider"
                .into(),
        );
    }
    let analysis = canary.analysis().cloned().unwrap_or_default();
    let mut matches = gateway_matches(&service.r#match, "spec.service.match")?;
    if matches.is_empty() {
        matches.push(json!({"path": {"type": "PathPrefix", "value": "/"}}));
    }
    let filters = gateway_filters(service);
    let rule = |matches: Vec<Value>, mut filters: Vec<Value>, backends: Vec<Value>| {
        let mut r = json!({"matches": matches, "backendRefs": backends});
        if let Some(timeout) = &service.timeout {
            r["timeouts"] = json!({"request": timeout});
        }
        if let Some(timeout) = &service.backend_timeout {
            r["timeouts"]["backendRequest"] = json!(timeout);
        }
        filters.retain(|f| !f.is_null());
        if !filters.is_empty() {
            r["filters"] = Value::Array(filters);
        }
        r
    };
    let mut weighted_filters = filters.clone();
    if split.mirrored && analysis.iterations() > 0 {
        weighted_filters.push(
            json!({"type": "RequestMirror", "requestMirror": {"backendRef": {
            "group": "", "kind": "Service", "name": canary_svc, "port": service.port}}}),
        );
    }
    let weighted = vec![
        backend_ref(primary, service.port, split.primary),
        backend_ref(canary_svc, service.port, split.canary),
    ];
    let mut rules = Vec::new();
    if analysis.r#match.is_empty() {
        rules.push(rule(matches, weighted_filters, weighted));
    } else {
        let ab = gateway_matches(&analysis.r#match, "analysis.match")?;
        rules.push(rule(
            merge_matches(&ab, &matches),
            weighted_filters,
            weighted,
        ));
        rules.push(rule(
            matches,
            filters,
            vec![backend_ref(primary, service.port, TOTAL)],
        ));
    }
    let mut spec = json!({
        "parentRefs": service.gateway_refs,
        "rules": rules,
    });
    if !service.hosts.is_empty() {
        spec["hostnames"] = json!(service.hosts);
    }
    Ok(json!({
        "apiVersion": format!("gateway.networking.k8s.io/{version}"),
        "kind": "HTTPRoute",
        "metadata": {"name": apex},
        "spec": spec,
    }))
}

/// Upstream's Istio router: a VirtualService on the apex host (plus `service.hosts`) and one
/// DestinationRule per backend Service.
fn istio(
    canary: &Canary,
    service: &CanaryService,
    apex: &str,
    primary: &str,
    canary_svc: &str,
    split: Split,
) -> Result<Vec<Value>, String> {
    let analysis = canary.analysis().cloned().unwrap_or_default();
    let destination = |host: &str, weight: i32| json!({"destination": {"host": host, "port": {"number": service.port}}, "weight": weight});
    let route = |matches: Vec<Value>, destinations: Vec<Value>, mirror: bool| {
        let mut r = json!({"route": destinations});
        if !matches.is_empty() {
            r["match"] = Value::Array(matches);
        }
        for (field, value) in [
            ("rewrite", &service.rewrite),
            ("retries", &service.retries),
            ("headers", &service.headers),
            ("corsPolicy", &service.cors_policy),
        ] {
            if let Some(v) = value {
                r[field] = v.clone();
            }
        }
        if let Some(timeout) = &service.timeout {
            r["timeout"] = json!(timeout);
        }
        if mirror {
            r["mirror"] = json!({"host": canary_svc, "port": {"number": service.port}});
            if let Some(w) = analysis.mirror_weight.filter(|w| *w > 0) {
                r["mirrorPercentage"] = json!({"value": w});
            }
        }
        r
    };
    let to_json = |m: &[HttpMatchRequest]| -> Vec<Value> {
        m.iter()
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .collect()
    };
    let service_matches = to_json(&service.r#match);
    let weighted = vec![
        destination(primary, split.primary),
        destination(canary_svc, split.canary),
    ];
    let mirror = split.mirrored && analysis.iterations() > 0;
    let mut http = Vec::new();
    if analysis.r#match.is_empty() {
        http.push(route(service_matches, weighted, mirror));
    } else {
        // Upstream merges each analysis match into each service match, field by field.
        let ab = to_json(&analysis.r#match);
        let merged = if service_matches.is_empty() {
            ab
        } else {
            let mut out = Vec::new();
            for a in &ab {
                for s in &service_matches {
                    let mut m = s.clone();
                    if let (Some(m), Some(a)) = (m.as_object_mut(), a.as_object()) {
                        for (k, v) in a {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                    out.push(m);
                }
            }
            out
        };
        http.push(route(merged, weighted, mirror));
        http.push(route(
            service_matches,
            vec![destination(primary, TOTAL)],
            false,
        ));
    }
    let mut hosts = service.hosts.clone();
    if !hosts.iter().any(|h| h == apex) {
        hosts.push(apex.to_string());
    }
    let mut spec = json!({"hosts": hosts, "http": http});
    if !service.gateways.is_empty() {
        spec["gateways"] = json!(service.gateways);
    }
    let mut objects = vec![json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": apex},
        "spec": spec,
    })];
    for host in [primary, canary_svc] {
        let mut spec = json!({"host": host});
        if let Some(policy) = &service.traffic_policy {
            spec["trafficPolicy"] = policy.clone();
        }
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": host},
            "spec": spec,
        }));
    }
    Ok(objects)
}

/// Upstream `GetRoutes`: the weights of the rule that names both backends, and whether the
/// canary is mirrored. `None` when the object names no such rule.
pub fn read(
    provider: Provider,
    object: &Value,
    primary: &str,
    canary: &str,
) -> Option<RouterWeights> {
    if provider == Provider::Nginx {
        let annotations = object.pointer("/metadata/annotations")?.as_object()?;
        let get = |suffix: &str| annotations.get(suffix).and_then(Value::as_str);
        if get(NGINX_CANARY) != Some("true") {
            return None;
        }
        let by_match = ["by-header", "by-cookie"]
            .iter()
            .any(|s| get(&format!("{NGINX_CANARY}-{s}")).is_some());
        let weight = get(&format!("{NGINX_CANARY}-weight"))
            .and_then(|w| w.parse::<i32>().ok())
            .unwrap_or(0);
        return Some(RouterWeights {
            canary_weight: if by_match {
                TOTAL
            } else {
                weight.clamp(0, TOTAL)
            },
            mirrored: false,
        });
    }
    let spec = object.get("spec")?;
    let pair = |entries: &[Value], name: &str, default: i64| {
        let weight = |wanted: &str| {
            entries
                .iter()
                .find(|e| e.pointer(name).and_then(Value::as_str) == Some(wanted))
                .map(|e| e.get("weight").and_then(Value::as_i64).unwrap_or(default))
        };
        Some((weight(primary)?, weight(canary)?))
    };
    let (weights, mirrored) = match provider {
        Provider::GatewayApi(_) => {
            let rules = spec.get("rules")?.as_array()?;
            let name = "/name";
            let weights = rules.iter().find_map(|r| {
                let refs = r.get("backendRefs")?.as_array()?;
                (refs.len() == 2).then(|| pair(refs, name, 1)).flatten()
            })?;
            let mirrored = rules.iter().any(|r| {
                r.get("filters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|f| {
                        f.get("type").and_then(Value::as_str) == Some("RequestMirror")
                            && f.pointer("/requestMirror/backendRef/name")
                                .and_then(Value::as_str)
                                == Some(canary)
                    })
            });
            (weights, mirrored)
        }
        Provider::Istio => {
            let http = spec.get("http")?.as_array()?;
            let name = "/destination/host";
            let weights = http.iter().find_map(|r| {
                let routes = r.get("route")?.as_array()?;
                (routes.len() == 2).then(|| pair(routes, name, 0)).flatten()
            })?;
            let mirrored = http
                .iter()
                .any(|r| r.pointer("/mirror/host").and_then(Value::as_str) == Some(canary));
            (weights, mirrored)
        }
        Provider::Smi(_) => {
            let backends = spec.get("backends")?.as_array()?;
            let name = "/service";
            (pair(backends, name, 0)?, false)
        }
        Provider::Traefik => {
            let services = spec.pointer("/weighted/services")?.as_array()?;
            let name = "/name";
            (pair(services, name, 1)?, false)
        }
        Provider::Nginx => return None,
    };
    let (p, c) = weights;
    let total = p + c;
    if total <= 0 {
        return None;
    }
    // Weights are relative: report the canary's share of 100.
    let canary_weight = i32::try_from((c * i64::from(TOTAL) + total / 2) / total).ok()?;
    Some(RouterWeights {
        canary_weight,
        mirrored,
    })
}

/// What the controller learns from the routes before ticking a Canary.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The weights the router reports (`None`: no router, or no route yet).
    Ready(Option<RouterWeights>),
    /// The last write is not applied yet (why); tick again once it is.
    Pending(String),
}

/// A write the cache has not shown applied yet.
#[derive(Clone, Debug)]
struct Expected {
    kind: RouteKind,
    name: String,
    generation: i64,
    checksum: Option<String>,
}

/// The watch cache of one route kind, in the version the cluster serves.
struct Cache {
    version: &'static str,
    resource: ApiResource,
    store: Store<DynamicObject>,
}

/// The route watch caches and the writes not yet seen applied.
pub struct Routing {
    client: kube::Client,
    caches: BTreeMap<RouteKind, Cache>,
    expected: Mutex<HashMap<(String, String), Expected>>,
}

impl Routing {
    /// Starts a watch cache for every route kind the cluster serves; the stream names the
    /// Canary owning each changed route (poll it, or the caches do not fill).
    pub async fn start(
        client: kube::Client,
        namespace: Option<String>,
    ) -> (
        Routing,
        impl Stream<Item = ObjectRef<Canary>> + Send + 'static,
    ) {
        let mut caches = BTreeMap::new();
        let mut streams = Vec::new();
        for kind in RouteKind::ALL {
            let (group, name, plural, versions) = kind.watched();
            let mut served = None;
            for version in versions {
                let gvk = GroupVersionKind::gvk(group, version, name);
                if kube::discovery::pinned_kind(&client, &gvk).await.is_ok() {
                    served = Some((*version, ApiResource::from_gvk_with_plural(&gvk, plural)));
                    break;
                }
            }
            let Some((version, ar)) = served else {
                tracing::info!(%group, kind = %name, ?versions, "canary routing: kind not served, Canaries cannot route through it");
                continue;
            };
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            let writer = Writer::new(ar.clone());
            caches.insert(
                kind,
                Cache {
                    version,
                    resource: ar.clone(),
                    store: writer.as_reader(),
                },
            );
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default().any_semantic())
                    .default_backoff()
                    .modify(|o: &mut DynamicObject| o.managed_fields_mut().clear()),
            )
            .touched_objects()
            .filter_map(|o| futures::future::ready(o.ok()))
            .flat_map(|o| futures::stream::iter(owners(&o)))
            .boxed();
            streams.push(events);
        }
        let routing = Routing {
            client,
            caches,
            expected: Mutex::default(),
        };
        (routing, futures::stream::select_all(streams))
    }

    /// Every route watch cache has its first list (the Canary controller ticks nothing before).
    pub fn synced(&self) -> bool {
        use futures::FutureExt;
        self.caches
            .values()
            .all(|c| c.store.wait_until_ready().now_or_never().is_some())
    }

    fn cached(&self, kind: RouteKind, namespace: &str, name: &str) -> Option<DynamicObject> {
        let cache = self.caches.get(&kind)?;
        cache
            .store
            .get(&ObjectRef::new_with(name, cache.resource.clone()).within(namespace))
            .map(|o| (*o).clone())
    }

    /// The provider as this cluster serves it: SMI in the TrafficSplit version watched.
    fn served(
        &self,
        canary: &Canary,
        name: &str,
        provider: Provider,
    ) -> Result<Provider, RoutingError> {
        let kind = provider.route_kind();
        let Some(cache) = self.caches.get(&kind) else {
            return Err(Self::not_served(canary, name, kind));
        };
        Ok(match provider {
            Provider::Smi(_) => Provider::Smi(cache.version),
            other => other,
        })
    }

    fn not_served(canary: &Canary, provider: &str, kind: RouteKind) -> RoutingError {
        let (group, name, _, versions) = kind.watched();
        RoutingError::NotServed {
            namespace: canary.namespace().unwrap_or_default(),
            name: canary.name_any(),
            provider: provider.into(),
            kind: name,
            api_version: format!("{group}/{}", versions.join(" | ")),
        }
    }

    fn spec_error(canary: &Canary, provider: &str, reason: String) -> RoutingError {
        RoutingError::Spec {
            namespace: canary.namespace().unwrap_or_default(),
            name: canary.name_any(),
            provider: provider.into(),
            reason,
        }
    }

    /// The weights the Canary's route reports, or `Pending` while the last write is not applied.
    /// Also upstream's `Reconcile`: a route that is missing, or was rendered from another spec,
    /// is written again at the weights in effect (then `Pending`).
    pub async fn observe(
        &self,
        canary: &Canary,
        provider_name: &str,
    ) -> Result<Observation, RoutingError> {
        let Parsed::Routed(provider) = Provider::parse(provider_name) else {
            return Ok(Observation::Ready(None));
        };
        let provider = self.served(canary, provider_name, provider)?;
        let kind = provider.route_kind();
        let cache = &self.caches[&kind];
        // Before its first list a missing route would look deleted; never wait unbounded.
        let synced = tokio::time::timeout(CACHE_WAIT, cache.store.wait_until_ready()).await;
        if !matches!(synced, Ok(Ok(()))) {
            return Ok(Observation::Pending(format!(
                "the {} ({}) watch cache has not synced yet (can sluice list and watch them?)",
                kind.kind_name(),
                cache.resource.api_version
            )));
        }
        let namespace = canary.namespace().unwrap_or_default();
        let (_, primary, canary_svc) = canary.service_names();
        let key = (namespace.clone(), canary.name_any());
        let route = route_name(canary, provider);
        let cached = self.cached(kind, &namespace, &route);

        let expected = self.expected.lock().ok().and_then(|e| e.get(&key).cloned());
        if let Some(expected) = expected {
            let object = self.cached(expected.kind, &namespace, &expected.name);
            if let Some(reason) = not_applied(
                object.as_ref(),
                expected.generation,
                expected.checksum.as_deref(),
            ) {
                return Ok(Observation::Pending(format!(
                    "{} {namespace}/{}: {reason}",
                    expected.kind.kind_name(),
                    expected.name
                )));
            }
            if let Ok(mut e) = self.expected.lock() {
                e.remove(&key);
            }
        }

        let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
        let weights = cached
            .as_ref()
            .and_then(|o| read(provider, &value(o), &primary, &canary_svc));

        // Reconcile only once initialised: before, the core's first SetRoutes creates the route.
        let phase = canary
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(CanaryPhase::Unspecified);
        if matches!(phase, CanaryPhase::Unspecified | CanaryPhase::Initializing) {
            return Ok(Observation::Ready(weights));
        }
        let split = weights.map(Split::from_router).unwrap_or_else(|| {
            let w = canary
                .status
                .as_ref()
                .and_then(|s| s.canary_weight)
                .unwrap_or(0);
            Split {
                primary: TOTAL - w,
                canary: w,
                mirrored: false,
            }
        });
        let source = self.source(canary, provider);
        let objects = render(canary, provider, split, source.as_ref())
            .map_err(|r| Self::spec_error(canary, provider_name, r))?;
        let wanted = objects[0]
            .pointer(&format!(
                "/metadata/annotations/{}",
                CHECKSUM_ANNOTATION.replace('/', "~1")
            ))
            .cloned();
        let have = cached
            .as_ref()
            .and_then(|o| o.annotations().get(CHECKSUM_ANNOTATION).cloned());
        if have.map(Value::String) != wanted {
            tracing::info!(canary = %canary.name_any(), %namespace, %route, "canary routing: route missing or out of date, rewriting it at the weights in effect");
            self.apply(canary, provider_name, provider, objects).await?;
            return Ok(Observation::Pending(format!(
                "{} {namespace}/{route} rewritten",
                kind.kind_name()
            )));
        }
        Ok(Observation::Ready(weights))
    }

    /// Writes the Canary's routes at this split. `Unsupported` for providers Sluice does not
    /// route; a no-op for `kubernetes`.
    pub async fn set_routes(
        &self,
        canary: &Canary,
        provider_name: &str,
        split: Split,
    ) -> Result<(), RoutingError> {
        let provider = match Provider::parse(provider_name) {
            Parsed::NoRouter => return Ok(()),
            Parsed::Unsupported => {
                return Err(RoutingError::Unsupported {
                    namespace: canary.namespace().unwrap_or_default(),
                    name: canary.name_any(),
                    provider: provider_name.into(),
                });
            }
            Parsed::Routed(p) => p,
        };
        let provider = self.served(canary, provider_name, provider)?;
        let source = self.source(canary, provider);
        let objects = render(canary, provider, split, source.as_ref())
            .map_err(|r| Self::spec_error(canary, provider_name, r))?;
        self.apply(canary, provider_name, provider, objects).await
    }

    /// The user's Ingress an NGINX canary copies, from the watch cache.
    fn source(&self, canary: &Canary, provider: Provider) -> Option<Value> {
        let reference = canary.spec.ingress_ref.as_ref()?;
        if provider != Provider::Nginx {
            return None;
        }
        let namespace = canary.namespace().unwrap_or_default();
        let ingress = self.cached(RouteKind::Ingress, &namespace, &reference.name)?;
        serde_json::to_value(ingress).ok()
    }

    /// Server-side applies `objects` (in reverse: the weighted route last, after what it
    /// references) and records the route's generation as the one to wait for.
    async fn apply(
        &self,
        canary: &Canary,
        _provider_name: &str,
        provider: Provider,
        objects: Vec<Value>,
    ) -> Result<(), RoutingError> {
        let namespace = canary.namespace().unwrap_or_default();
        let mut generation = None;
        let checksum = objects[0]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
            .as_str()
            .map(str::to_owned);
        for (i, object) in objects.iter().enumerate().rev() {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &namespace, &ar);
            let written = api
                .patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(object),
                )
                .await
                .map_err(|source| RoutingError::Apply {
                    kind: kind.to_string(),
                    namespace: namespace.clone(),
                    object: name.to_string(),
                    canary: canary.name_any(),
                    source: Box::new(source),
                })?;
            if i == 0 {
                generation = written.metadata.generation;
            }
        }
        let kind = provider.route_kind();
        let name = objects[0]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let (Some(generation), Ok(mut e)) = (generation, self.expected.lock()) {
            e.insert(
                (namespace, canary.name_any()),
                Expected {
                    kind,
                    name,
                    generation,
                    checksum,
                },
            );
        }
        Ok(())
    }
}

/// The Canaries owning `object` (controller owner references of kind Canary).
fn owners(object: &DynamicObject) -> Vec<ObjectRef<Canary>> {
    let namespace = object.namespace().unwrap_or_default();
    object
        .owner_references()
        .iter()
        .filter(|o| o.kind == "Canary" && o.api_version.starts_with("flagger.app/"))
        .map(|o| ObjectRef::new(&o.name).within(&namespace))
        .collect()
}

/// Why the cached `object` does not show the write of `generation` (carrying `checksum`)
/// applied; `None` when it does. The checksum catches writes that do not bump the generation
/// (annotations: NGINX's weights); a later generation means someone wrote after us. HTTPRoutes
/// also need every parent to report `Accepted=True` for that generation.
pub fn not_applied(
    object: Option<&DynamicObject>,
    generation: i64,
    checksum: Option<&str>,
) -> Option<String> {
    let Some(object) = object else {
        return Some("not in the watch cache yet".into());
    };
    let seen = object.metadata.generation.unwrap_or(0);
    if seen < generation {
        return Some(format!(
            "the watch cache shows generation {seen}, waiting for {generation}"
        ));
    }
    let cached_sum = object
        .annotations()
        .get(CHECKSUM_ANNOTATION)
        .map(String::as_str);
    if seen == generation && checksum.is_some() && cached_sum != checksum {
        return Some("the watch cache does not show the last write yet".into());
    }
    let is_route = object.types.as_ref().is_some_and(|t| t.kind == "HTTPRoute");
    if !is_route {
        return None;
    }
    let parents = object
        .data
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if parents.is_empty() {
        return Some("no Gateway has reported on the route yet".into());
    }
    for parent in &parents {
        let gateway = parent
            .pointer("/parentRef/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let accepted = parent
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Accepted"));
        let Some(accepted) = accepted else {
            return Some(format!("Gateway {gateway} has not accepted the route yet"));
        };
        let observed = accepted
            .get("observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if observed < generation {
            return Some(format!(
                "Gateway {gateway} has processed generation {observed}, waiting for {generation}"
            ));
        }
        if accepted.get("status").and_then(Value::as_str) != Some("True") {
            let message = accepted
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Some(format!(
                "Gateway {gateway} does not accept the route: {message}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
