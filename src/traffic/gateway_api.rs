//! The Gateway API router: canary weights, header routes and mirror routes on HTTPRoutes (and
//! GRPCRoutes; weights only on TCPRoutes and TLSRoutes), configured exactly like the upstream
//! plugin, `trafficRouting.plugins["argoproj-labs/gatewayAPI"]`:
//! `{httpRoute, httpRoutes: [{name, useHeaderRoutes}], grpcRoute(s), tcpRoute(s), tlsRoute(s),
//! namespace, configMap}`. A single `httpRoute` (`grpcRoute`, ...) counts as a list entry with
//! `useHeaderRoutes: true`, as upstream; `namespace` defaults to the Rollout's. `configMap` is
//! accepted and ignored: Sluice keeps its state on the route itself (below), not in a ConfigMap.
//!
//! What it decides, per route:
//! - **Weights**: every `backendRef` naming the canary Service gets `weight = canary`, every one
//!   naming the stable Service `weight = maxTrafficWeight - canary`, in every rule the user wrote
//!   (as upstream). A route naming neither is a configuration error.
//! - **Header routes** (`setHeaderRoute`, routes with `useHeaderRoutes`): one extra rule per
//!   managed route, a copy of the first rule that sends to the canary (its matches and filters),
//!   each match ANDed with the step's header matches, and one backendRef, the canary Service.
//!   Gateway API prefers the rule with more header matches, so matching requests go to the
//!   canary whatever the weights. (Upstream replaces the original match's headers and method; a
//!   header route here never catches a request its base rule would not.) `prefix` becomes the
//!   regular expression `^<escaped prefix>.*`.
//! - **Mirror routes** (`setMirrorRoute`, HTTPRoutes with `useHeaderRoutes`; upstream does not
//!   support them): an extra rule with the step's matches, the base rule's weighted backendRefs
//!   and a `RequestMirror` filter to the canary (`percent` when not 100).
//! - **Observed weight**: the canary weight found on the user's rules, when every canary ref
//!   carries the same weight and every stable ref the rest; `None` otherwise.
//!
//! The route's `spec.rules` is an atomic list to server-side apply: any write of one weight
//! takes the whole list away from the GitOps agent's field manager. Rules are therefore always
//! rendered from the *original* rules (the user's, recorded before Sluice's first write by
//! [`super::ownership`] in the annotation `sluice.dev/original-fields`), the weights and the
//! managed routes (kept as their step definitions in [`MANAGED_ROUTES_ANNOTATION`]), and
//! written with [`super::ownership::apply`]. [`super::ownership::release`] puts the recorded
//! original rules back and hands `spec.rules` back to the managers that owned it (Argo CD's
//! `argocd-controller`, ...), so after a completed or aborted rollout a dry-run apply of the Git
//! manifest changes nothing and Sluice owns no field of the route (Argo Rollouts #3854).
//!
//! Routes are read and written as JSON (`DynamicObject`), not through the `gateway-api` crate's
//! types: `rules` is written back whole, and typed structs would silently drop every field the
//! crate's Gateway API version does not know (experimental or newer fields such as
//! `sessionPersistence`, `retry`, CORS filters), which on an atomic list means deleting them
//! from the user's route.
//!
//! What it must never do: change a rule it was not configured for beyond the canary and stable
//! backendRefs' weights, drop a field of the user's rules, or leave Sluice owning anything on
//! the route after [`Router::release`].

use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ownership::{self, FieldPath, Target};
use super::{HeaderRoute, MirrorRoute, Observed, Router, RouterContext, TrafficError, Weights};
use crate::api::argo::rollout::{HeaderRoutingMatch, RouteMatch, StringMatch};

/// The plugin name Rollouts written for the upstream plugin use.
pub const PLUGIN_NAME: &str = "argoproj-labs/gatewayAPI";

/// Annotation holding the managed (header / mirror) routes' step definitions, as JSON.
pub const MANAGED_ROUTES_ANNOTATION: &str = "sluice.dev/gateway-api-managed-routes";

const ROUTER: &str = "gatewayAPI";

/// The upstream plugin's configuration, as written in the Rollout.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    #[serde(default)]
    pub http_route: Option<String>,
    #[serde(default)]
    pub http_routes: Vec<RouteEntry>,
    #[serde(default)]
    pub grpc_route: Option<String>,
    #[serde(default)]
    pub grpc_routes: Vec<RouteEntry>,
    #[serde(default)]
    pub tcp_route: Option<String>,
    #[serde(default)]
    pub tcp_routes: Vec<RouteEntry>,
    #[serde(default)]
    pub tls_route: Option<String>,
    #[serde(default)]
    pub tls_routes: Vec<RouteEntry>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Upstream's state ConfigMap; Sluice keeps its state on the routes.
    #[serde(default)]
    pub config_map: Option<String>,
    #[serde(default)]
    pub http_route_selector: Option<Value>,
    #[serde(default)]
    pub grpc_route_selector: Option<Value>,
    #[serde(default)]
    pub tcp_route_selector: Option<Value>,
    #[serde(default)]
    pub tls_route_selector: Option<Value>,
}

/// One `httpRoutes[]` (`grpcRoutes[]`, ...) entry.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteEntry {
    pub name: String,
    #[serde(default)]
    pub use_header_routes: bool,
}

/// The Gateway API route kinds the router writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    Grpc,
    Tcp,
    Tls,
}

impl RouteKind {
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }
    fn version(self) -> &'static str {
        match self {
            RouteKind::Http | RouteKind::Grpc => "v1",
            RouteKind::Tcp | RouteKind::Tls => "v1alpha2",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            RouteKind::Http => "httproutes",
            RouteKind::Grpc => "grpcroutes",
            RouteKind::Tcp => "tcproutes",
            RouteKind::Tls => "tlsroutes",
        }
    }
    pub fn api_resource(self) -> ApiResource {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", self.version(), self.kind());
        ApiResource::from_gvk_with_plural(&gvk, self.plural())
    }
    /// Whether rules of this kind can match on headers (and so carry header routes).
    fn has_header_matches(self) -> bool {
        matches!(self, RouteKind::Http | RouteKind::Grpc)
    }
}

/// One route the router manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRef {
    pub kind: RouteKind,
    pub name: String,
    pub use_header_routes: bool,
}

/// A managed route as stored in [`MANAGED_ROUTES_ANNOTATION`]: the step that made it, so every
/// write renders it again from the current weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ManagedRoute {
    Header {
        name: String,
        matches: Vec<HeaderRoutingMatch>,
    },
    Mirror {
        name: String,
        matches: Vec<RouteMatch>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percentage: Option<i32>,
    },
}

impl ManagedRoute {
    pub fn name(&self) -> &str {
        match self {
            ManagedRoute::Header { name, .. } | ManagedRoute::Mirror { name, .. } => name,
        }
    }
}

/// The Gateway API router of one Rollout.
#[derive(Clone, Debug)]
pub struct GatewayApiRouter {
    pub routes: Vec<RouteRef>,
    /// `namespace` from the config; `None` means the Rollout's.
    pub namespace: Option<String>,
}

fn config_error(msg: impl std::fmt::Display) -> TrafficError {
    TrafficError::Config(format!("plugins[\"{PLUGIN_NAME}\"]: {msg}"))
}

impl GatewayApiRouter {
    /// Reads `trafficRouting.plugins["argoproj-labs/gatewayAPI"]` as the upstream plugin does.
    pub fn from_plugin_config(config: &Value) -> Result<Self, TrafficError> {
        let cfg: PluginConfig = serde_json::from_value(config.clone())
            .map_err(|e| config_error(format!("{e}; see the upstream plugin's documentation")))?;
        for (field, sel) in [
            ("httpRouteSelector", &cfg.http_route_selector),
            ("grpcRouteSelector", &cfg.grpc_route_selector),
            ("tcpRouteSelector", &cfg.tcp_route_selector),
            ("tlsRouteSelector", &cfg.tls_route_selector),
        ] {
            if sel.is_some() {
                return Err(TrafficError::Unsupported {
                    router: ROUTER,
                    what: format!("{field} (route discovery by label); name the routes instead"),
                });
            }
        }
        let mut routes = Vec::new();
        for (kind, list, single) in [
            (RouteKind::Http, &cfg.http_routes, &cfg.http_route),
            (RouteKind::Grpc, &cfg.grpc_routes, &cfg.grpc_route),
            (RouteKind::Tcp, &cfg.tcp_routes, &cfg.tcp_route),
            (RouteKind::Tls, &cfg.tls_routes, &cfg.tls_route),
        ] {
            for entry in list {
                routes.push(RouteRef {
                    kind,
                    name: entry.name.clone(),
                    use_header_routes: entry.use_header_routes,
                });
            }
            // Upstream appends the single form after the list, with header routes on.
            if let Some(name) = single.as_ref().filter(|n| !n.is_empty()) {
                routes.push(RouteRef {
                    kind,
                    name: name.clone(),
                    use_header_routes: true,
                });
            }
        }
        if let Some(r) = routes.iter().find(|r| r.name.is_empty()) {
            return Err(config_error(format!(
                "a {} entry has no name",
                r.kind.kind()
            )));
        }
        if routes.is_empty() {
            return Err(config_error(
                "names no route: set httpRoute, httpRoutes, grpcRoute(s), tcpRoute(s) or tlsRoute(s)",
            ));
        }
        Ok(GatewayApiRouter {
            routes,
            namespace: cfg.namespace.filter(|n| !n.is_empty()),
        })
    }

    fn namespace<'a>(&'a self, ctx: &'a RouterContext) -> &'a str {
        self.namespace.as_deref().unwrap_or(&ctx.namespace)
    }
}

// ---- pure render / observe ------------------------------------------------------------------

fn rules_path() -> FieldPath {
    ownership::path(&["spec", "rules"])
}

fn managed_path() -> FieldPath {
    ownership::path(&["metadata", "annotations", MANAGED_ROUTES_ANNOTATION])
}

/// Whether a backendRef points at the Service `name` in the route's namespace.
fn is_service_ref(backend: &Value, name: &str) -> bool {
    let str_or = |key: &str, default: &'static str| -> String {
        backend
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    backend.get("name").and_then(Value::as_str) == Some(name)
        && str_or("group", "").is_empty()
        && str_or("kind", "Service") == "Service"
        && backend.get("namespace").is_none_or(Value::is_null)
}

fn backend_refs(rule: &Value) -> &[Value] {
    rule.get("backendRefs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The user's rules with the canary and stable backendRefs' weights set. Errors when neither
/// Service is referenced (the route is not this Rollout's).
pub fn render_weights(rules: &[Value], weights: &Weights) -> Result<Vec<Value>, String> {
    let stable = weights.max_weight - weights.canary;
    let (mut canary_refs, mut stable_refs) = (0, 0);
    let mut out = rules.to_vec();
    for rule in &mut out {
        let Some(refs) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) else {
            continue;
        };
        for backend in refs {
            let weight = if is_service_ref(backend, &weights.canary_service) {
                canary_refs += 1;
                weights.canary
            } else if is_service_ref(backend, &weights.stable_service) {
                stable_refs += 1;
                stable
            } else {
                continue;
            };
            if let Some(obj) = backend.as_object_mut() {
                obj.insert("weight".into(), json!(weight));
            }
        }
    }
    match (canary_refs, stable_refs) {
        (0, 0) => Err(format!(
            "no rule has a backendRef to the canary Service '{}' or the stable Service '{}'; add \
             both to the rule that carries the app's traffic",
            weights.canary_service, weights.stable_service
        )),
        (0, _) => Err(format!(
            "no rule has a backendRef to the canary Service '{}'; add it beside the stable \
             Service '{}' (weight 0)",
            weights.canary_service, weights.stable_service
        )),
        (_, 0) => Err(format!(
            "no rule has a backendRef to the stable Service '{}'; add it beside the canary \
             Service '{}'",
            weights.stable_service, weights.canary_service
        )),
        _ => Ok(out),
    }
}

/// The rule managed routes are based on: the first one sending to both Services, else the
/// first sending to the canary.
fn base_rule<'a>(rules: &'a [Value], weights: &Weights) -> Option<&'a Value> {
    let has = |rule: &Value, svc: &str| backend_refs(rule).iter().any(|b| is_service_ref(b, svc));
    rules
        .iter()
        .find(|r| has(r, &weights.canary_service) && has(r, &weights.stable_service))
        .or_else(|| rules.iter().find(|r| has(r, &weights.canary_service)))
}

/// A backendRef to the canary Service, with the port the base rule uses for it.
fn canary_ref(base: &Value, weights: &Weights) -> Value {
    let port = backend_refs(base)
        .iter()
        .find(|b| is_service_ref(b, &weights.canary_service))
        .and_then(|b| b.get("port"))
        .cloned();
    let mut r = json!({"group": "", "kind": "Service", "name": weights.canary_service});
    if let (Some(port), Some(obj)) = (port, r.as_object_mut()) {
        obj.insert("port".into(), port);
    }
    r
}

/// An Argo header match as a Gateway API header match (`HTTPHeaderMatch` / `GRPCHeaderMatch`).
pub fn header_match(m: &HeaderRoutingMatch) -> Result<Value, String> {
    let (kind, value) = string_match(&m.header_value, || format!("header '{}'", m.header_name))?;
    Ok(json!({"name": m.header_name, "type": kind, "value": value}))
}

/// (`Exact` | `RegularExpression`, value) for an Argo string match.
fn string_match(
    m: &StringMatch,
    what: impl Fn() -> String,
) -> Result<(&'static str, String), String> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => Ok(("Exact", v.clone())),
        (None, Some(p), None) => Ok(("RegularExpression", format!("^{}.*", regex::escape(p)))),
        (None, None, Some(r)) => Ok(("RegularExpression", r.clone())),
        _ => Err(format!(
            "{}: set exactly one of exact, prefix or regex",
            what()
        )),
    }
}

/// The extra rule of a header route: the base rule's matches (or one catch-all match) each
/// ANDed with the header matches, its filters, and the canary as the only backend.
pub fn header_rule(
    kind: RouteKind,
    rules: &[Value],
    weights: &Weights,
    matches: &[HeaderRoutingMatch],
) -> Result<Value, String> {
    if !kind.has_header_matches() {
        return Err(format!("{} rules cannot match on headers", kind.kind()));
    }
    if matches.is_empty() {
        return Err("a header route needs at least one match".into());
    }
    let base = base_rule(rules, weights).ok_or_else(|| {
        format!(
            "no rule sends to the canary Service '{}'",
            weights.canary_service
        )
    })?;
    let headers: Vec<Value> = matches.iter().map(header_match).collect::<Result<_, _>>()?;
    let names: Vec<String> = headers
        .iter()
        .filter_map(|h| h.get("name").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    let base_matches: Vec<Value> = match base.get("matches").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m.clone(),
        _ if kind == RouteKind::Http => vec![default_http_match()],
        _ => vec![json!({})],
    };
    let new_matches: Vec<Value> = base_matches
        .into_iter()
        .map(|mut m| {
            // The step's header matches win over the base match's for the same header.
            let mut all: Vec<Value> = m
                .get("headers")
                .and_then(Value::as_array)
                .map(|hs| {
                    hs.iter()
                        .filter(|h| {
                            h.get("name")
                                .and_then(Value::as_str)
                                .is_none_or(|n| !names.contains(&n.to_ascii_lowercase()))
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            all.extend(headers.iter().cloned());
            if let Some(obj) = m.as_object_mut() {
                obj.insert("headers".into(), Value::Array(all));
            }
            m
        })
        .collect();
    let mut rule = json!({
        "matches": new_matches,
        "backendRefs": [canary_ref(base, weights)],
    });
    if let (Some(filters), Some(obj)) = (base.get("filters"), rule.as_object_mut()) {
        obj.insert("filters".into(), filters.clone());
    }
    Ok(rule)
}

/// The match the apiserver defaults an empty `HTTPRouteMatch` to; rendered explicitly so a
/// rendered rule equals the stored one and an unchanged route is not written again.
fn default_http_match() -> Value {
    json!({"path": {"type": "PathPrefix", "value": "/"}})
}

/// An Argo route match as an `HTTPRouteMatch`.
fn http_route_match(m: &RouteMatch) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    if m.path.is_none() {
        out.insert("path".into(), default_http_match()["path"].clone());
    }
    if let Some(method) = &m.method {
        match (&method.exact, &method.prefix, &method.regex) {
            (Some(v), None, None) => {
                out.insert("method".into(), json!(v.to_ascii_uppercase()));
            }
            _ => return Err("Gateway API matches methods exactly: use method.exact".into()),
        }
    }
    if let Some(path) = &m.path {
        let (kind, value) = match (&path.exact, &path.prefix, &path.regex) {
            (Some(v), None, None) => ("Exact", v.clone()),
            (None, Some(v), None) => ("PathPrefix", v.clone()),
            (None, None, Some(v)) => ("RegularExpression", v.clone()),
            _ => return Err("path: set exactly one of exact, prefix or regex".into()),
        };
        out.insert("path".into(), json!({"type": kind, "value": value}));
    }
    if let Some(headers) = &m.headers {
        let hs: Vec<Value> = headers
            .iter()
            .map(|(name, v)| {
                string_match(v, || format!("header '{name}'"))
                    .map(|(kind, value)| json!({"name": name, "type": kind, "value": value}))
            })
            .collect::<Result<_, _>>()?;
        out.insert("headers".into(), Value::Array(hs));
    }
    Ok(Value::Object(out))
}

/// The extra rule of a mirror route: the step's matches, the base rule's (weighted) backends
/// and filters, plus a `RequestMirror` filter to the canary.
pub fn mirror_rule(
    kind: RouteKind,
    weighted_rules: &[Value],
    weights: &Weights,
    matches: &[RouteMatch],
    percentage: Option<i32>,
) -> Result<Value, String> {
    if kind != RouteKind::Http {
        return Err(format!(
            "mirror routes on a {} are not supported",
            kind.kind()
        ));
    }
    let base = base_rule(weighted_rules, weights).ok_or_else(|| {
        format!(
            "no rule sends to the canary Service '{}'",
            weights.canary_service
        )
    })?;
    let matches: Vec<Value> = if matches.is_empty() {
        vec![default_http_match()]
    } else {
        matches
            .iter()
            .map(http_route_match)
            .collect::<Result<_, _>>()?
    };
    let mut mirror = json!({"backendRef": canary_ref(base, weights)});
    if let (Some(p), Some(obj)) = (percentage.filter(|p| *p != 100), mirror.as_object_mut()) {
        obj.insert("percent".into(), json!(p));
    }
    let mut filters: Vec<Value> = base
        .get("filters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    filters.push(json!({"type": "RequestMirror", "requestMirror": mirror}));
    Ok(json!({
        "matches": matches,
        "filters": filters,
        "backendRefs": backend_refs(base),
    }))
}

/// The whole `spec.rules` to write: the user's rules (already weighted) followed by one rule per
/// managed route.
pub fn render_rules(
    kind: RouteKind,
    weighted: Vec<Value>,
    weights: &Weights,
    managed: &[ManagedRoute],
) -> Result<Vec<Value>, String> {
    let mut extra = Vec::with_capacity(managed.len());
    for m in managed {
        let rule = match m {
            ManagedRoute::Header { matches, .. } => header_rule(kind, &weighted, weights, matches),
            ManagedRoute::Mirror {
                matches,
                percentage,
                ..
            } => mirror_rule(kind, &weighted, weights, matches, *percentage),
        }
        .map_err(|e| format!("managed route '{}': {e}", m.name()))?;
        extra.push(rule);
    }
    let mut out = weighted;
    out.extend(extra);
    Ok(out)
}

/// The canary weight the user's rules carry: every canary ref the same weight (absent = 1, the
/// Gateway API default) and every stable ref the rest. `Err` says why there is none.
pub fn observe_rules(rules: &[Value], weights: &Weights) -> Result<i32, String> {
    let weight_of = |b: &Value| b.get("weight").and_then(Value::as_i64).unwrap_or(1);
    let mut canary = Vec::new();
    let mut stable = Vec::new();
    for b in rules.iter().flat_map(backend_refs) {
        if is_service_ref(b, &weights.canary_service) {
            canary.push(weight_of(b));
        } else if is_service_ref(b, &weights.stable_service) {
            stable.push(weight_of(b));
        }
    }
    let Some(&c) = canary.first() else {
        return Err(format!(
            "no backendRef to the canary Service '{}'",
            weights.canary_service
        ));
    };
    if canary.iter().any(|w| *w != c) {
        return Err(format!(
            "the canary backendRefs disagree: weights {canary:?}"
        ));
    }
    let rest = i64::from(weights.max_weight) - c;
    if stable.iter().any(|w| *w != rest) {
        return Err(format!(
            "canary weight {c} but stable weights {stable:?} (expected {rest} each)"
        ));
    }
    i32::try_from(c).map_err(|_| format!("canary weight {c} out of range"))
}

// ---- I/O --------------------------------------------------------------------------------------

/// What one route looks like now, from Sluice's point of view.
struct RouteState {
    live: DynamicObject,
    /// The user's rules: the recorded original while Sluice holds `spec.rules`, else the live.
    original: Vec<Value>,
    /// The managed routes currently on the route.
    managed: Vec<ManagedRoute>,
}

fn target<'a>(route: &'a RouteRef, namespace: &'a str) -> Target<'a> {
    Target {
        router: ROUTER,
        kind: route.kind.kind(),
        namespace,
        name: &route.name,
    }
}

fn invalid(route: &RouteRef, namespace: &str, reason: String) -> TrafficError {
    TrafficError::Invalid {
        router: ROUTER,
        kind: route.kind.kind().to_string(),
        namespace: namespace.to_string(),
        name: route.name.clone(),
        reason,
    }
}

impl GatewayApiRouter {
    async fn state(
        &self,
        ctx: &RouterContext,
        route: &RouteRef,
    ) -> Result<RouteState, TrafficError> {
        let ns = self.namespace(ctx);
        let target = target(route, ns);
        let live = ctx
            .read(&route.kind.api_resource(), ns, &route.name)
            .await
            .map_err(|e| target.read(e))?
            .ok_or_else(|| target.not_found())?;
        let entries = live.metadata.managed_fields.clone().unwrap_or_default();
        let live_rules = live
            .data
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let record = ownership::read_record(&live).map_err(|e| invalid(route, ns, e))?;
        let recorded_rules = record.as_ref().and_then(|r| {
            r.fields
                .iter()
                .find(|f| f.path == rules_path())
                .map(|f| f.value.clone())
        });
        let original = match recorded_rules {
            Some(value) if ownership::sluice_owns(&entries, &rules_path()) => value
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
            _ => live_rules,
        };
        let managed = match live
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MANAGED_ROUTES_ANNOTATION))
        {
            // Managed routes live only as long as Sluice holds the rules they are in.
            Some(text) if ownership::sluice_owns(&entries, &rules_path()) => {
                serde_json::from_str(text).map_err(|e| {
                    invalid(
                        route,
                        ns,
                        format!("annotation {MANAGED_ROUTES_ANNOTATION} is not Sluice's: {e}"),
                    )
                })?
            }
            _ => Vec::new(),
        };
        Ok(RouteState {
            live,
            original,
            managed,
        })
    }

    /// Renders and writes one route's rules and managed-route annotation.
    async fn write(
        &self,
        ctx: &RouterContext,
        route: &RouteRef,
        state: &RouteState,
        weighted: Vec<Value>,
        weights: &Weights,
        managed: &[ManagedRoute],
    ) -> Result<(), TrafficError> {
        let ns = self.namespace(ctx);
        let rules = render_rules(route.kind, weighted, weights, managed)
            .map_err(|e| invalid(route, ns, e))?;
        let managed_json =
            serde_json::to_string(managed).map_err(|e| invalid(route, ns, e.to_string()))?;
        let desired = [
            (rules_path(), Value::Array(rules)),
            (managed_path(), Value::String(managed_json)),
        ];
        ownership::apply(
            ctx,
            &route.kind.api_resource(),
            &target(route, ns),
            &state.live,
            &desired,
        )
        .await
        .map(|_| ())
    }

    /// Adds or replaces the managed route `m` on every route with `useHeaderRoutes`.
    async fn put_managed(
        &self,
        ctx: &RouterContext,
        weights: &Weights,
        m: ManagedRoute,
    ) -> Result<(), TrafficError> {
        let ns = self.namespace(ctx);
        for route in self.routes.iter().filter(|r| r.use_header_routes) {
            if matches!(m, ManagedRoute::Mirror { .. }) && route.kind != RouteKind::Http {
                continue; // mirroring is HTTPRoute-only; other kinds keep their weights
            }
            if !route.kind.has_header_matches() {
                continue;
            }
            let state = self.state(ctx, route).await?;
            let weighted =
                render_weights(&state.original, weights).map_err(|e| invalid(route, ns, e))?;
            let mut managed = state.managed.clone();
            match managed.iter_mut().find(|x| x.name() == m.name()) {
                Some(slot) => *slot = m.clone(),
                None => managed.push(m.clone()),
            }
            self.write(ctx, route, &state, weighted, weights, &managed)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Router for GatewayApiRouter {
    fn name(&self) -> &'static str {
        ROUTER
    }

    async fn set_weight(&self, ctx: &RouterContext, weights: &Weights) -> Result<(), TrafficError> {
        let ns = self.namespace(ctx);
        for route in &self.routes {
            let state = self.state(ctx, route).await?;
            let weighted =
                render_weights(&state.original, weights).map_err(|e| invalid(route, ns, e))?;
            let managed = state.managed.clone();
            self.write(ctx, route, &state, weighted, weights, &managed)
                .await?;
        }
        Ok(())
    }

    async fn observe(
        &self,
        ctx: &RouterContext,
        weights: &Weights,
    ) -> Result<Observed, TrafficError> {
        let ns = self.namespace(ctx);
        let mut observed = Observed::default();
        let mut weight: Option<Option<i32>> = None;
        for route in &self.routes {
            let state = self.state(ctx, route).await?;
            let live_rules = state
                .live
                .data
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // The user's rules come first; managed ones were appended after them.
            let n = state.original.len().min(live_rules.len());
            let key = format!("{} {ns}/{}", route.kind.kind(), route.name);
            let w = match observe_rules(&live_rules[..n], weights) {
                Ok(w) => {
                    observed.detail.insert(key, format!("canary weight {w}"));
                    Some(w)
                }
                Err(e) => {
                    observed.detail.insert(key, e);
                    None
                }
            };
            weight = Some(match weight {
                None => w,
                Some(prev) if prev == w => w,
                Some(_) => None,
            });
            for m in &state.managed {
                if !observed.managed_routes.iter().any(|x| x == m.name()) {
                    observed.managed_routes.push(m.name().to_string());
                }
            }
        }
        observed.canary = weight.flatten();
        Ok(observed)
    }

    async fn set_header_route(
        &self,
        ctx: &RouterContext,
        weights: &Weights,
        route: &HeaderRoute,
    ) -> Result<(), TrafficError> {
        let m = ManagedRoute::Header {
            name: route.name.clone(),
            matches: route.matches.clone(),
        };
        self.put_managed(ctx, weights, m).await
    }

    async fn set_mirror_route(
        &self,
        ctx: &RouterContext,
        weights: &Weights,
        route: &MirrorRoute,
    ) -> Result<(), TrafficError> {
        if !self
            .routes
            .iter()
            .any(|r| r.use_header_routes && r.kind == RouteKind::Http)
        {
            return Err(TrafficError::Unsupported {
                router: ROUTER,
                what: "setMirrorRoute without an HTTPRoute that has useHeaderRoutes".into(),
            });
        }
        let m = ManagedRoute::Mirror {
            name: route.name.clone(),
            matches: route.matches.clone(),
            percentage: route.percentage,
        };
        self.put_managed(ctx, weights, m).await
    }

    async fn remove_managed_routes(&self, ctx: &RouterContext) -> Result<(), TrafficError> {
        let ns = self.namespace(ctx);
        for route in &self.routes {
            let state = self.state(ctx, route).await?;
            if state.managed.is_empty() {
                continue;
            }
            let live_rules = state
                .live
                .data
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let n = state.original.len();
            if live_rules.len() < n {
                return Err(invalid(
                    route,
                    ns,
                    format!(
                        "has {} rules, fewer than the {n} it had before Sluice's first write; \
                         re-sync it from Git",
                        live_rules.len()
                    ),
                ));
            }
            // The user's rules keep their current weights; the managed ones go.
            let kept = live_rules[..n].to_vec();
            let managed_json = "[]".to_string();
            let desired = [
                (rules_path(), Value::Array(kept)),
                (managed_path(), Value::String(managed_json)),
            ];
            ownership::apply(
                ctx,
                &route.kind.api_resource(),
                &target(route, ns),
                &state.live,
                &desired,
            )
            .await?;
        }
        Ok(())
    }

    async fn release(&self, ctx: &RouterContext, _weights: &Weights) -> Result<(), TrafficError> {
        let ns = self.namespace(ctx);
        for route in &self.routes {
            // The hand-back is guarded by resourceVersion, and the gateway controller writes
            // the route's status at any time: a conflict only means "read again".
            let mut attempt = 0;
            loop {
                let ar = route.kind.api_resource();
                match ownership::release(ctx, &ar, &target(route, ns)).await {
                    Err(TrafficError::Kube { source, .. })
                        if attempt < 4
                            && matches!(source.as_ref(), kube::Error::Api(s) if s.code == 409) =>
                    {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                    }
                    other => break other?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn weights(canary: i32) -> Weights {
        Weights {
            canary,
            max_weight: 100,
            canary_service: "app-canary".into(),
            stable_service: "app-stable".into(),
            canary_hash: "c".into(),
            stable_hash: "s".into(),
            additional: Vec::new(),
        }
    }

    fn rules() -> Vec<Value> {
        vec![json!({
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-env", "value": "prod"}]}}],
            "backendRefs": [
                {"group": "", "kind": "Service", "name": "app-stable", "port": 80, "weight": 100},
                {"group": "", "kind": "Service", "name": "app-canary", "port": 80, "weight": 0},
            ],
            "sessionPersistence": {"sessionName": "keep-me"},
        })]
    }

    #[test]
    fn config_reads_the_upstream_forms() {
        let r = GatewayApiRouter::from_plugin_config(&json!({
            "httpRoutes": [{"name": "a", "useHeaderRoutes": true}, {"name": "b"}],
            "httpRoute": "legacy",
            "grpcRoute": "g",
            "namespace": "edge",
            "configMap": "argo-gatewayapi-configmap",
        }))
        .expect("valid config");
        let names: Vec<(RouteKind, &str, bool)> = r
            .routes
            .iter()
            .map(|r| (r.kind, r.name.as_str(), r.use_header_routes))
            .collect();
        assert_eq!(
            names,
            vec![
                (RouteKind::Http, "a", true),
                (RouteKind::Http, "b", false),
                (RouteKind::Http, "legacy", true),
                (RouteKind::Grpc, "g", true),
            ]
        );
        assert_eq!(r.namespace.as_deref(), Some("edge"));
    }

    #[test]
    fn routers_for_builds_the_plugin_and_refuses_unknown_plugins() {
        use crate::api::argo::rollout::RolloutTrafficRouting;
        let mut tr = RolloutTrafficRouting {
            plugins: Some([(PLUGIN_NAME.to_string(), json!({"httpRoute": "r"}))].into()),
            ..Default::default()
        };
        let routers = super::super::routers_for(&tr).expect("builds");
        assert_eq!(
            routers.iter().map(|r| r.name()).collect::<Vec<_>>(),
            vec![ROUTER]
        );
        tr.plugins = Some([("acme/mesh".to_string(), json!({}))].into());
        let e = super::super::routers_for(&tr)
            .err()
            .expect("unknown plugin");
        assert!(e.to_string().contains("acme/mesh"), "{e}");
    }

    #[test]
    fn config_errors_say_what_to_fix() {
        let e = GatewayApiRouter::from_plugin_config(&json!({})).unwrap_err();
        assert!(e.to_string().contains("names no route"), "{e}");
        let e = GatewayApiRouter::from_plugin_config(&json!({"httpRoutes": "x"})).unwrap_err();
        assert!(e.to_string().contains(PLUGIN_NAME), "{e}");
        let e =
            GatewayApiRouter::from_plugin_config(&json!({"httpRouteSelector": {}})).unwrap_err();
        assert!(matches!(e, TrafficError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn weights_touch_only_the_two_services_and_keep_unknown_fields() {
        let mut rs = rules();
        rs.push(json!({"backendRefs": [{"name": "other", "port": 80, "weight": 7}]}));
        let out = render_weights(&rs, &weights(30)).expect("renders");
        assert_eq!(out[0]["backendRefs"][0]["weight"], json!(70));
        assert_eq!(out[0]["backendRefs"][1]["weight"], json!(30));
        assert_eq!(out[0]["sessionPersistence"], rs[0]["sessionPersistence"]);
        assert_eq!(out[1], rs[1]);
        assert_eq!(observe_rules(&out, &weights(30)), Ok(30));
    }

    #[test]
    fn weights_use_max_traffic_weight() {
        let mut w = weights(250);
        w.max_weight = 1000;
        let out = render_weights(&rules(), &w).expect("renders");
        assert_eq!(out[0]["backendRefs"][0]["weight"], json!(750));
        assert_eq!(observe_rules(&out, &w), Ok(250));
    }

    #[test]
    fn a_service_in_another_namespace_or_kind_is_not_ours() {
        let rs = vec![json!({"backendRefs": [
            {"name": "app-stable", "namespace": "elsewhere"},
            {"name": "app-canary", "kind": "ServiceImport", "group": "multicluster.x-k8s.io"},
        ]})];
        let e = render_weights(&rs, &weights(10)).unwrap_err();
        assert!(
            e.contains("canary Service 'app-canary' or the stable"),
            "{e}"
        );
    }

    #[test]
    fn missing_canary_ref_is_an_error_naming_it() {
        let rs = vec![json!({"backendRefs": [{"name": "app-stable", "port": 80}]})];
        let e = render_weights(&rs, &weights(10)).unwrap_err();
        assert!(e.contains("canary Service 'app-canary'"), "{e}");
    }

    #[test]
    fn observe_defaults_missing_weights_to_one_and_reports_disagreement() {
        let rs = vec![json!({"backendRefs": [{"name": "app-stable"}, {"name": "app-canary"}]})];
        let e = observe_rules(&rs, &weights(0)).unwrap_err();
        assert!(e.contains("canary weight 1"), "{e}");
        let rs = vec![
            json!({"backendRefs": [{"name": "app-canary", "weight": 10}, {"name": "app-stable", "weight": 90}]}),
            json!({"backendRefs": [{"name": "app-canary", "weight": 20}]}),
        ];
        assert!(
            observe_rules(&rs, &weights(10))
                .unwrap_err()
                .contains("disagree")
        );
    }

    #[test]
    fn header_rule_ands_the_headers_with_the_base_match() {
        let m = vec![
            HeaderRoutingMatch {
                header_name: "X-Canary".into(),
                header_value: StringMatch {
                    exact: Some("yes".into()),
                    ..Default::default()
                },
            },
            HeaderRoutingMatch {
                header_name: "x-user".into(),
                header_value: StringMatch {
                    prefix: Some("a.b".into()),
                    ..Default::default()
                },
            },
        ];
        let mut rs = rules();
        rs[0]["matches"][0]["headers"] = json!([
            {"name": "x-canary", "type": "Exact", "value": "old"},
            {"name": "x-tenant", "type": "Exact", "value": "t1"},
        ]);
        let rule = header_rule(RouteKind::Http, &rs, &weights(0), &m).expect("renders");
        assert_eq!(
            rule,
            json!({
                "matches": [{
                    "path": {"type": "PathPrefix", "value": "/"},
                    "headers": [
                        {"name": "x-tenant", "type": "Exact", "value": "t1"},
                        {"name": "X-Canary", "type": "Exact", "value": "yes"},
                        {"name": "x-user", "type": "RegularExpression", "value": "^a\\.b.*"},
                    ],
                }],
                "filters": rs[0]["filters"],
                "backendRefs": [{"group": "", "kind": "Service", "name": "app-canary", "port": 80}],
            })
        );
    }

    #[test]
    fn header_rule_without_base_matches_gets_one_match() {
        let rs = vec![
            json!({"backendRefs": [{"name": "app-stable"}, {"name": "app-canary", "port": 8080}]}),
        ];
        let m = vec![HeaderRoutingMatch {
            header_name: "x".into(),
            header_value: StringMatch {
                regex: Some("a|b".into()),
                ..Default::default()
            },
        }];
        let rule = header_rule(RouteKind::Grpc, &rs, &weights(0), &m).expect("renders");
        assert_eq!(
            rule["matches"],
            json!([{"headers": [{"name": "x", "type": "RegularExpression", "value": "a|b"}]}])
        );
        assert_eq!(rule["backendRefs"][0]["port"], json!(8080));
        let bad = vec![HeaderRoutingMatch {
            header_name: "x".into(),
            header_value: StringMatch::default(),
        }];
        assert!(header_rule(RouteKind::Http, &rs, &weights(0), &bad).is_err());
        assert!(header_rule(RouteKind::Tcp, &rs, &weights(0), &m).is_err());
    }

    #[test]
    fn mirror_rule_keeps_the_weighted_backends_and_mirrors_to_canary() {
        let w = weights(20);
        let weighted = render_weights(&rules(), &w).expect("renders");
        let m = vec![RouteMatch {
            method: Some(StringMatch {
                exact: Some("get".into()),
                ..Default::default()
            }),
            path: Some(StringMatch {
                prefix: Some("/api".into()),
                ..Default::default()
            }),
            headers: None,
        }];
        let rule = mirror_rule(RouteKind::Http, &weighted, &w, &m, Some(50)).expect("renders");
        assert_eq!(
            rule["matches"],
            json!([{"method": "GET", "path": {"type": "PathPrefix", "value": "/api"}}])
        );
        assert_eq!(rule["backendRefs"], weighted[0]["backendRefs"]);
        assert_eq!(
            rule["filters"][1],
            json!({"type": "RequestMirror", "requestMirror": {
                "backendRef": {"group": "", "kind": "Service", "name": "app-canary", "port": 80},
                "percent": 50,
            }})
        );
        let full = mirror_rule(RouteKind::Http, &weighted, &w, &m, Some(100)).expect("renders");
        assert!(full["filters"][1]["requestMirror"].get("percent").is_none());
        assert!(mirror_rule(RouteKind::Grpc, &weighted, &w, &m, None).is_err());
    }

    #[test]
    fn render_appends_managed_routes_after_the_users_rules() {
        let w = weights(10);
        let weighted = render_weights(&rules(), &w).expect("renders");
        let managed = vec![
            ManagedRoute::Header {
                name: "h".into(),
                matches: vec![HeaderRoutingMatch {
                    header_name: "x".into(),
                    header_value: StringMatch {
                        exact: Some("1".into()),
                        ..Default::default()
                    },
                }],
            },
            ManagedRoute::Mirror {
                name: "m".into(),
                matches: vec![],
                percentage: None,
            },
        ];
        let out = render_rules(RouteKind::Http, weighted.clone(), &w, &managed).expect("renders");
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], weighted[0]);
        // Observing the user's rules only ignores the header route's lone canary ref.
        assert_eq!(observe_rules(&out[..1], &w), Ok(10));
        let text = serde_json::to_string(&managed).expect("serializes");
        let back: Vec<ManagedRoute> = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, managed);
    }
    #[test]
    fn grpc_routes_get_weights_and_header_rules_on_their_method_matches() {
        let grpc = vec![json!({
            "matches": [{"method": {"type": "Exact", "service": "demo.Echo", "method": "Say"}}],
            "backendRefs": [
                {"name": "app-stable", "port": 9090, "weight": 100},
                {"name": "app-canary", "port": 9090, "weight": 0},
            ],
        })];
        let w = weights(30);
        let weighted = render_weights(&grpc, &w).expect("renders");
        assert_eq!(weighted[0]["backendRefs"][0]["weight"], json!(70));
        assert_eq!(weighted[0]["backendRefs"][1]["weight"], json!(30));
        assert_eq!(weighted[0]["matches"], grpc[0]["matches"]);
        let header = ManagedRoute::Header {
            name: "h".into(),
            matches: vec![HeaderRoutingMatch {
                header_name: "x-canary".into(),
                header_value: StringMatch {
                    exact: Some("yes".into()),
                    ..Default::default()
                },
            }],
        };
        let out = render_rules(RouteKind::Grpc, weighted.clone(), &w, &[header]).expect("renders");
        assert_eq!(
            out[1],
            json!({
                "matches": [{
                    "method": {"type": "Exact", "service": "demo.Echo", "method": "Say"},
                    "headers": [{"name": "x-canary", "type": "Exact", "value": "yes"}],
                }],
                "backendRefs": [{"group": "", "kind": "Service", "name": "app-canary", "port": 9090}],
            })
        );
        assert_eq!(observe_rules(&out[..1], &w), Ok(30));
        // GRPCRoute has no RequestMirror filter: a mirror route is refused, naming the kind.
        let mirror = ManagedRoute::Mirror {
            name: "m".into(),
            matches: vec![],
            percentage: None,
        };
        let err = render_rules(RouteKind::Grpc, weighted, &w, &[mirror]).unwrap_err();
        assert!(err.contains("GRPCRoute"), "{err}");
    }
}
