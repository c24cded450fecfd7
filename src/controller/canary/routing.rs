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
//! back from the last rule with both backends (upstream's `GetRoutes`; cookie rules come first).
//!
//! Objects are written with server-side apply under [`FIELD_MANAGER`], carry the Flux / Helm
//! no-drift annotations of every generated object and [`CHECKSUM_ANNOTATION`] (what they were
//! rendered from, so a changed Canary spec or a deleted route is rewritten at the weights in
//! effect — upstream's `Reconcile` — without comparing defaulted specs).
//!
//! **A write is not a weight.** After each write the Canary is not ticked again until the watch
//! cache shows the written generation and, for Gateway API, every parent in the route's status
//! has `Accepted=True` for that generation (the Gateway controller has taken it); only then does
//! the core see the read-back weight and may step further.
//!
//! **A route no Gateway accepts holds the run.** Once the Canary is initialised (the
//! initialisation writes the route at weight 0), before every tick the cached HTTPRoute's
//! `status.parents` must show `Accepted=True` for its current generation from every parentRef
//! (`spec.service.gatewayRefs`), whoever wrote it last and whether or not the controller restarted
//! since; until then the core is not ticked, so the weight never steps on a route nobody serves.
//! The Canary gets one Warning Event per cause naming the route, the Gateway and the reason: at
//! once when a parent reports `Accepted=False` (`NotAllowedByListeners`, `NoMatchingParent`,
//! `NoMatchingListenerHostname`, ...), after a grace of three analysis intervals (at least 10 s)
//! when no Gateway controller reports at all (a Gateway that does not exist). A route whose
//! Canary spec changed (a fixed gatewayRef) is rewritten first, so fixing the ref lets the run go on.
//!
//! **Session affinity** (`analysis.sessionAffinity`, Gateway API), as upstream's
//! `getSessionAffinityRouteRules`: while the canary weight is above 0, the canary backendRef of
//! the weighted rule gets a `ResponseHeaderModifier` adding `Set-Cookie: <cookieName>=<value>;
//! Max-Age=<maxAge>` (plus the Domain / Path / SameSite / Secure / HttpOnly / Partitioned
//! attributes asked for), and a first rule sends requests whose `Cookie` header matches the
//! regular expression `.*<cookieName>=<value>.*` 100% to the canary (with `primaryCookieName`, a
//! second one pins the primary's clients the same way, its cookie living one interval). At weight
//! 0 (promotion, rollback) the cookie becomes `status.previousSessionAffinityCookie` and its rule
//! sends it to the primary with `Set-Cookie: ...; Max-Age=-1`, which expires it in the browser.
//! The value is drawn here, never in the engine, once per run, and written to
//! `status.sessionAffinityCookie` (`primarySessionAffinityCookie`) before the route that uses it,
//! so a restarted controller renders the same cookie.
//!
//! Deliberate differences from upstream: a `prefix` header or query match becomes the regular
//! expression `^<escaped prefix>.*` (upstream refuses it); `analysis.mirror` or `analysis.match`
//! with a provider whose objects cannot express them (SMI, Traefik) is an error instead of a run
//! that sends all traffic to the canary or never leaves its mirroring step; the session cookie
//! regular expression is `.*<name>=<value>.*`, escaped (upstream's `.*<name>.*<value>.*` also
//! matches other cookies); session affinity is generated for Gateway API only and not together
//! with `analysis.match` (an error says so; upstream merges the two into a rule that matches
//! neither as written); upstream emits a duplicate of the weighted rule when there is no cookie
//! rule, Sluice does not.
//!
//! **A kind the controller may not watch** (RBAC: the chart's `rbac.trafficRouters` turned one
//! off, or a narrowed ClusterRole) is found out at start with SelfSubjectAccessReviews for list
//! and watch (a 403 on the first list counts too): it is not watched, one warning is logged
//! naming the kind, the resource, the missing verbs and what to grant, and it does not hold the
//! controller's readiness; Canaries whose provider routes through it get
//! [`RoutingError::NotPermitted`] (the controller tells each once per generation and writes
//! nothing for them), the others run as usual. A watch refused later (RBAC removed while
//! running) is logged with backoff and does not flip readiness: see [`Access::observe`].
//!
//! **A route object the user made** (it exists without the Canary's owner reference) is adopted:
//! written without an owner reference, its original `spec` recorded on it ([`ADOPTED_ANNOTATION`])
//! and given back by `revertOnDeletion` ([`Routing::give_back`]).
//!
//! What is remembered per Canary (writes to wait for, cookies, holds) is kept by uid
//! ([`super::PerCanary`]) and dropped for Canaries that are gone ([`Routing::forget_absent`]).
//!
//! This module must never decide a weight (that is [`crate::engine::flagger`]), never read a
//! route through the API per tick (watch caches only), never write an object the Canary
//! does not own (or adopted) by name and provider, and never write a status field other than
//! the three session-affinity cookies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::{FLUX_RECONCILE_ANNOTATION, HELM_DRIFT_ANNOTATION, PerCanary};
use crate::api::flagger::canary::{
    Canary, CanaryPhase, CanaryService, CanaryStatus, DEFAULT_ANALYSIS_INTERVAL, HttpMatchRequest,
    SameSite, SessionAffinity, StringMatch, parse_go_duration,
};
use crate::controller::FIELD_MANAGER;
use crate::engine::flagger::RouterWeights;

/// Annotation with the checksum of what a generated routing object was rendered from.
pub const CHECKSUM_ANNOTATION: &str = "sluice.dev/route-checksum";
/// Total weight.
const TOTAL: i32 = 100;
/// How long a tick waits for a route watch cache's first list.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A watch refused again within this long after its last warning is logged at debug only.
const REFUSED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(300);
/// The verbs a route watch cache needs.
const WATCH_VERBS: [&str; 2] = ["list", "watch"];

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
    #[error(
        "Canary {namespace}/{name}: the controller is not permitted to watch {kind} ({group}/{resource}: {verbs} refused), which provider {provider:?} routes through, so nothing is done for this Canary (no primary, no Services, no route, no traffic shift); {grant}, then restart sluice",
        kind = .route.kind_name(),
        group = .route.watched().0,
        resource = .route.watched().2,
        grant = .route.grant()
    )]
    NotPermitted {
        namespace: String,
        name: String,
        provider: String,
        route: RouteKind,
        /// The verbs refused, e.g. `list, watch`.
        verbs: String,
    },
    #[error(
        "writing the session-affinity cookies to the status of Canary {namespace}/{name}: {source}"
    )]
    Cookies {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
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

    /// The providers routing through this kind, the Helm value that grants it, and every
    /// resource of its group the controller writes for it.
    fn rbac(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            RouteKind::Ingress => ("nginx", "nginx", &["ingresses"]),
            RouteKind::HttpRoute => ("gatewayapi", "gatewayAPI", &["httproutes"]),
            RouteKind::VirtualService => {
                ("istio", "istio", &["virtualservices", "destinationrules"])
            }
            RouteKind::TrafficSplit => ("smi, linkerd", "smi", &["trafficsplits"]),
            RouteKind::TraefikService => ("traefik", "traefik", &["traefikservices"]),
        }
    }

    /// What to grant so the controller may watch and write this kind.
    fn grant(self) -> String {
        let (group, ..) = self.watched();
        let (_, value, resources) = self.rbac();
        format!(
            "set the Helm value rbac.trafficRouters.{value}=true, or give the controller's ServiceAccount a ClusterRole rule {{apiGroups: [{group}], resources: [{}], verbs: [get, list, watch, create, update, patch]}}",
            resources.join(", ")
        )
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

/// `Unsupported` when Sluice cannot route `provider_name` (contour, gloo, kuma, ...): such a
/// Canary must not start, or it would promote without ever shifting traffic.
pub fn routable(canary: &Canary, provider_name: &str) -> Result<(), RoutingError> {
    match Provider::parse(provider_name) {
        Parsed::Unsupported => Err(RoutingError::Unsupported {
            namespace: canary.namespace().unwrap_or_default(),
            name: canary.name_any(),
            provider: provider_name.into(),
        }),
        Parsed::NoRouter | Parsed::Routed(_) => Ok(()),
    }
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
        if !matches!(provider, Provider::GatewayApi(_)) {
            return Err(
                "analysis.sessionAffinity is generated by Sluice for the gatewayapi providers only: use gatewayapi:v1, or remove it"
                    .into(),
            );
        }
        if !analysis.r#match.is_empty() {
            return Err(
                "analysis.sessionAffinity cannot be combined with analysis.match (A/B testing): remove one of them"
                    .into(),
            );
        }
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
        // The apex metadata's labels over the object's own (the user's Ingress's, for NGINX).
        let mut labels: BTreeMap<String, Value> = meta["labels"]
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        for (k, v) in apex_meta.labels.iter().flatten() {
            labels.insert(k.clone(), json!(v));
        }
        if !labels.is_empty() {
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
const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";

/// Upstream's NGINX router: a copy of the user's Ingress whose backends naming the apex Service
/// name the canary Service, with `canary: "true"` and the weight or (A/B) header annotations.
/// Its labels and annotations are copied as upstream copies them (`kubernetes.io/ingress.class`
/// included), but for Argo CD's tracking id ([`copied_to_canary_ingress`]).
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
        .filter(|(k, _)| copied_to_canary_ingress(k))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let labels = ingress
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
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
        "metadata": {"name": format!("{}-canary", reference.name), "labels": labels,
            "annotations": annotations},
        "spec": spec,
    }))
}

/// An annotation of the user's Ingress its canary copy carries: all but NGINX's canary ones,
/// kubectl's last applied configuration, Flux's (replaced by the no-drift ones) and Argo CD's
/// tracking id (Argo CD would claim the copy as the app's own).
fn copied_to_canary_ingress(key: &str) -> bool {
    !key.starts_with(NGINX_CANARY)
        && key != "kubectl.kubernetes.io/last-applied-configuration"
        && !key.contains("toolkit.fluxcd.io")
        && !key.starts_with("argocd.argoproj.io/")
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
    format!("^{}.*", escape_regex(prefix))
}

/// `text` with the metacharacters every regular-expression dialect of the routers shares
/// escaped (RE2, ECMAScript, PCRE); nothing else, so the expression stays readable.
fn escape_regex(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
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

/// The session-affinity cookies a route is rendered with, each `<name>=<value>`, as kept in
/// the Canary's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cookies {
    /// `status.sessionAffinityCookie`: pins a client to the canary during a run.
    pub canary: Option<String>,
    /// `status.primarySessionAffinityCookie`: pins a client to the primary during a run.
    pub primary: Option<String>,
    /// `status.previousSessionAffinityCookie`: the last run's canary cookie, expired at weight 0.
    pub previous: Option<String>,
}

impl Cookies {
    pub fn of(status: Option<&CanaryStatus>) -> Self {
        let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        status.map_or_else(Cookies::default, |s| Cookies {
            canary: nonempty(&s.session_affinity_cookie),
            primary: nonempty(&s.primary_session_affinity_cookie),
            previous: nonempty(&s.previous_session_affinity_cookie),
        })
    }

    fn write_to(&self, status: &mut CanaryStatus) {
        status.session_affinity_cookie = self.canary.clone();
        status.primary_session_affinity_cookie = self.primary.clone();
        status.previous_session_affinity_cookie = self.previous.clone();
    }

    /// The cookies for a route at `canary_weight` (upstream's rules): a run keeps the cookies it
    /// drew, a weight above 0 draws the missing ones with `fresh`, weight 0 ends the run (its
    /// canary cookie becomes the previous one, to expire).
    pub fn next(
        &self,
        affinity: &SessionAffinity,
        canary_weight: i32,
        mut fresh: impl FnMut() -> String,
    ) -> Cookies {
        if canary_weight > 0 {
            let canary = match &self.canary {
                Some(c) if c.starts_with(&format!("{}=", affinity.cookie_name)) => c.clone(),
                _ => format!("{}={}", affinity.cookie_name, fresh()),
            };
            let primary = affinity
                .primary_cookie_name
                .as_ref()
                .filter(|n| !n.is_empty())
                .map(|name| match &self.primary {
                    Some(c) if c.starts_with(&format!("{name}=")) => c.clone(),
                    _ => format!("{name}={}", fresh()),
                });
            Cookies {
                canary: Some(canary),
                primary,
                previous: self.previous.clone(),
            }
        } else {
            Cookies {
                canary: None,
                primary: None,
                previous: self.canary.clone().or_else(|| self.previous.clone()),
            }
        }
    }
}

/// 16 random letters and digits (a cookie value), from the standard library's randomly keyed
/// hasher: no dependency, and never called by the engine.
pub fn random_cookie_value() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::new();
    while out.len() < 16 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        let mut n = hasher.finish();
        // 62^8 < 2^64: eight letters per hash.
        for _ in 0..8 {
            out.push(char::from(ALPHABET[usize::try_from(n % 62).unwrap_or(0)]));
            n /= 62;
        }
    }
    out
}

/// A `Set-Cookie` value: `<name>=<value>; Max-Age=<max_age>` and the attributes asked for.
fn set_cookie(cookie: &str, max_age: i64, affinity: &SessionAffinity) -> String {
    let mut value = format!("{cookie}; Max-Age={max_age}");
    if let Some(domain) = affinity.domain.as_ref().filter(|d| !d.is_empty()) {
        value.push_str(&format!("; Domain={domain}"));
    }
    if let Some(path) = affinity.path.as_ref().filter(|p| !p.is_empty()) {
        value.push_str(&format!("; Path={path}"));
    }
    if let Some(same_site) = affinity.same_site {
        let same_site = match same_site {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        };
        value.push_str(&format!("; SameSite={same_site}"));
    }
    for (set, attribute) in [
        (affinity.secure, "Secure"),
        (affinity.http_only, "HttpOnly"),
        (affinity.partitioned, "Partitioned"),
    ] {
        if set == Some(true) {
            value.push_str(&format!("; {attribute}"));
        }
    }
    value
}

fn set_cookie_filter(value: &str) -> Value {
    json!({"type": "ResponseHeaderModifier",
           "responseHeaderModifier": {"add": [{"name": "Set-Cookie", "value": value}]}})
}

/// A match on requests carrying `cookie` (`<name>=<value>`) among their cookies.
fn cookie_match(cookie: &str) -> Value {
    json!({"headers": [{"name": "Cookie", "type": "RegularExpression",
                        "value": format!(".*{}.*", escape_regex(cookie))}]})
}

/// `analysis.interval` in seconds (default 60): the primary cookie's lifetime, as upstream.
fn interval_seconds(canary: &Canary) -> i64 {
    let interval = canary
        .analysis()
        .and_then(|a| a.interval.as_deref())
        .and_then(parse_go_duration)
        .unwrap_or(DEFAULT_ANALYSIS_INTERVAL);
    i64::try_from(interval.as_secs()).unwrap_or(i64::MAX)
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
    if let Some(affinity) = &analysis.session_affinity {
        let mut weighted = weighted;
        let service_matches = gateway_matches(&service.r#match, "spec.service.match")?;
        let cookies = Cookies::of(canary.status.as_ref());
        let sticky = |cookie: &str, primary_weight: i32, extra: Option<Value>| {
            let matches = merge_matches(&[cookie_match(cookie)], &service_matches);
            let mut filters = filters.clone();
            filters.extend(extra);
            rule(
                matches,
                filters,
                vec![
                    backend_ref(primary, service.port, primary_weight),
                    backend_ref(canary_svc, service.port, TOTAL - primary_weight),
                ],
            )
        };
        if split.canary > 0 {
            if let Some(cookie) = &cookies.canary {
                let value = set_cookie(cookie, affinity.max_age(), affinity);
                weighted[1]["filters"] = json!([set_cookie_filter(&value)]);
                rules.push(sticky(cookie, 0, None));
            }
            if let Some(cookie) = &cookies.primary {
                let value = set_cookie(cookie, interval_seconds(canary), affinity);
                weighted[0]["filters"] = json!([set_cookie_filter(&value)]);
                rules.push(sticky(cookie, TOTAL, None));
            }
        } else if let Some(cookie) = &cookies.previous {
            // The last run's clients go to the primary, and their cookie is expired.
            let value = set_cookie(cookie, -1, affinity);
            rules.push(sticky(
                cookie,
                split.primary,
                Some(set_cookie_filter(&value)),
            ));
        }
        rules.push(rule(matches, weighted_filters, weighted));
    } else if analysis.r#match.is_empty() {
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

/// Upstream's Istio router: a VirtualService on the apex host (plus `service.hosts`; none with
/// `service.delegation`, a delegate of the user's root VirtualService) and one
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
    let mut spec = json!({"http": http});
    if service.delegation == Some(true) {
        // A delegate VirtualService is bound by its root one: it may name no host or gateway.
        if !service.hosts.is_empty() || !service.gateways.is_empty() {
            return Err(
                "service.delegation: a delegate VirtualService has no hosts and no gateways: remove service.hosts and service.gateways, or delegation"
                    .into(),
            );
        }
    } else {
        let mut hosts = service.hosts.clone();
        if !hosts.iter().any(|h| h == apex) {
            hosts.push(apex.to_string());
        }
        spec["hosts"] = json!(hosts);
        if !service.gateways.is_empty() {
            spec["gateways"] = json!(service.gateways);
        }
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
            // The last: session-affinity cookie rules (0/100, 100/0) precede the weighted one.
            let weights = rules.iter().rev().find_map(|r| {
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
    /// No Gateway accepts the route (why): the run is held. `warning` is the Warning Event to
    /// record, once per cause.
    NotAccepted {
        reason: String,
        warning: Option<String>,
    },
}

/// Whether the Gateways a route names accepted its current generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    Accepted,
    /// Some parentRefs have no report on this generation yet: (gateway, what is missing).
    Unreported(Vec<(String, String)>),
    /// A parent reports `Accepted=False`.
    Refused {
        gateway: String,
        reason: String,
        message: String,
    },
}

/// Grace before a route no Gateway controller reports on is warned about: three analysis
/// intervals, at least 10 s.
fn acceptance_grace(canary: &Canary) -> std::time::Duration {
    let interval = canary
        .analysis()
        .and_then(|a| a.interval.as_deref())
        .and_then(parse_go_duration)
        .unwrap_or(DEFAULT_ANALYSIS_INTERVAL);
    (interval * 3).max(std::time::Duration::from_secs(10))
}

/// Since when a Canary's route is not accepted, and the causes already warned about.
#[derive(Clone, Debug)]
struct Held {
    since: std::time::Instant,
    warned: std::collections::BTreeSet<String>,
}

/// A write the cache has not shown applied yet.
#[derive(Clone, Debug)]
struct Expected {
    kind: RouteKind,
    name: String,
    generation: i64,
    checksum: Option<String>,
}

/// Whether the controller may watch one route kind.
#[derive(Debug, Default)]
struct Access {
    /// The verbs it may not use, once known (a SelfSubjectAccessReview at start, or a 403 on the
    /// first list): the kind is then not watched and does not hold readiness.
    missing: OnceLock<Vec<&'static str>>,
    /// The first list is done (a 403 after it is RBAC changing while the controller runs).
    listed: AtomicBool,
    /// When a refused watch was last logged as a warning.
    warned: Mutex<Option<std::time::Instant>>,
}

/// What [`Access::observe`] makes of one watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Go on.
    Continue,
    /// The first list or watch was refused (403): the kind is disabled, the watch ends.
    Disabled,
    /// Refused after the first list: logged, the watcher retries with its backoff.
    Refused,
}

impl Access {
    fn disabled(&self) -> Option<&[&'static str]> {
        self.missing.get().map(Vec::as_slice)
    }

    /// Disables the kind (once, with one warning naming what is missing and what to grant).
    fn disable(&self, kind: RouteKind, missing: Vec<&'static str>) {
        let verbs = missing.join(", ");
        if self.missing.set(missing).is_ok() {
            let (group, name, plural, _) = kind.watched();
            let (providers, ..) = kind.rbac();
            tracing::warn!(
                kind = %name,
                %group,
                resource = %plural,
                missing = %verbs,
                "canary routing: {name} not watched: the controller's ServiceAccount may not {verbs} {group}/{plural}; Canaries with provider {providers} are left alone (one Warning Event each), others are not affected; to route through it, {}, then restart sluice",
                kind.grant()
            );
        }
    }

    /// Takes one event of the kind's watch. A refusal (403) before the first list disables the
    /// kind: retrying could never succeed without a new role, and would hold readiness. A
    /// refusal after it (RBAC removed while running) is logged (a warning at most every
    /// [`REFUSED_LOG_EVERY`]) while the watcher retries with its backoff; readiness does not
    /// flip back: the cache keeps its last list, every write a Canary makes is waited for until
    /// the cache shows it (so a run stops stepping instead of stepping on a stale view), and an
    /// unready controller would hold every Canary, whatever its provider.
    fn observe(
        &self,
        kind: RouteKind,
        event: &Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) -> Watch {
        let refused = match event {
            Ok(watcher::Event::InitDone) => {
                self.listed.store(true, Ordering::Release);
                return Watch::Continue;
            }
            Ok(_) => return Watch::Continue,
            Err(error) => refused_verb(error),
        };
        let Some(verb) = refused else {
            if let Err(error) = event {
                tracing::debug!(kind = %kind.kind_name(), %error, "canary routing: watch error, retrying");
            }
            return Watch::Continue;
        };
        if !self.listed.load(Ordering::Acquire) {
            self.disable(kind, vec![verb]);
            return Watch::Disabled;
        }
        let (group, name, plural, _) = kind.watched();
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.is_none_or(|at| at.elapsed() >= REFUSED_LOG_EVERY) {
            *warned = Some(std::time::Instant::now());
            tracing::warn!(
                kind = %name,
                %group,
                resource = %plural,
                %verb,
                "canary routing: the {name} watch is refused ({verb} on {group}/{plural}: RBAC changed while sluice runs); the cache keeps its last list and Canaries routed through it do not step until it works again; {}",
                kind.grant()
            );
        } else {
            tracing::debug!(kind = %name, %verb, "canary routing: watch still refused, retrying");
        }
        Watch::Refused
    }
}

/// The verb a watch error says the controller may not use, if it is a refusal (403).
fn refused_verb(error: &watcher::Error) -> Option<&'static str> {
    let (code, verb) = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => (status.code, "list"),
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => (status.code, "watch"),
        watcher::Error::WatchError(status) => (status.code, "watch"),
        _ => return None,
    };
    (code == 403).then_some(verb)
}

/// The watch cache of one route kind, in the version the cluster serves.
struct Cache {
    version: &'static str,
    resource: ApiResource,
    store: Store<DynamicObject>,
    access: Arc<Access>,
}

/// The route watch caches and the writes not yet seen applied.
pub struct Routing {
    client: kube::Client,
    caches: BTreeMap<RouteKind, Cache>,
    expected: PerCanary<Expected>,
    /// Cookies written to a Canary's status that its watch cache may not show yet.
    cookies: PerCanary<Cookies>,
    /// Canaries whose route no Gateway accepts.
    held: PerCanary<Held>,
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
            let access = Arc::new(Access::default());
            caches.insert(
                kind,
                Cache {
                    version,
                    resource: ar.clone(),
                    store: writer.as_reader(),
                    access: access.clone(),
                },
            );
            let missing =
                super::missing_verbs(&client, namespace.as_deref(), group, plural, &WATCH_VERBS)
                    .await;
            if let Some(missing) = missing.filter(|m| !m.is_empty()) {
                access.disable(kind, missing);
                continue;
            }
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default().any_semantic())
                    .default_backoff()
                    .modify(|o: &mut DynamicObject| o.managed_fields_mut().clear()),
            )
            .take_while(move |event| {
                let go_on = access.observe(kind, event) != Watch::Disabled;
                futures::future::ready(go_on)
            })
            .touched_objects()
            .filter_map(|o| futures::future::ready(o.ok()))
            .flat_map(|o| futures::stream::iter(owners(&o)))
            .boxed();
            streams.push(events);
        }
        let routing = Routing {
            client,
            caches,
            expected: PerCanary::default(),
            cookies: PerCanary::default(),
            held: PerCanary::default(),
        };
        (routing, futures::stream::select_all(streams))
    }

    /// Every route watch cache has its first list, kinds the controller may not watch excepted
    /// (the Canary controller ticks nothing before).
    pub fn synced(&self) -> bool {
        self.caches
            .values()
            .all(|c| c.access.disabled().is_some() || super::listed(&c.store))
    }

    /// `NotPermitted` when the Canary's provider routes through a kind the controller may not
    /// watch; checked before anything is written for the Canary.
    pub fn permitted(&self, canary: &Canary, provider_name: &str) -> Result<(), RoutingError> {
        let Parsed::Routed(provider) = Provider::parse(provider_name) else {
            return Ok(());
        };
        let kind = provider.route_kind();
        let Some(missing) = self.caches.get(&kind).and_then(|c| c.access.disabled()) else {
            return Ok(());
        };
        Err(RoutingError::NotPermitted {
            namespace: canary.namespace().unwrap_or_default(),
            name: canary.name_any(),
            provider: provider_name.into(),
            route: kind,
            verbs: missing.join(", "),
        })
    }

    /// Forgets what is remembered about Canaries `canaries` no longer holds.
    pub fn forget_absent(&self, canaries: &Store<Canary>) {
        self.expected.forget_absent(canaries);
        self.cookies.forget_absent(canaries);
        self.held.forget_absent(canaries);
    }

    /// Gives a route object the user made ([`adopt`]) its original `spec` back: applied under
    /// Sluice with nothing else, so Sluice's annotations and labels go with the record.
    pub async fn give_back(
        &self,
        canary: &Canary,
        provider_name: &str,
    ) -> Result<(), RoutingError> {
        let Parsed::Routed(provider) = Provider::parse(provider_name) else {
            return Ok(());
        };
        let namespace = canary.namespace().unwrap_or_default();
        let name = route_name(canary, provider);
        let Some(live) = self.cached(provider.route_kind(), &namespace, &name) else {
            return Ok(());
        };
        let Some(original) = live.annotations().get(ADOPTED_ANNOTATION) else {
            return Ok(());
        };
        let spec: Value = serde_json::from_str(original).unwrap_or(Value::Null);
        let types = live.types.clone().unwrap_or_default();
        let body = json!({
            "apiVersion": types.api_version,
            "kind": types.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, &ar);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| RoutingError::Apply {
            kind: types.kind.clone(),
            namespace: namespace.clone(),
            object: name.clone(),
            canary: canary.name_any(),
            source: Box::new(source),
        })?;
        Ok(())
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
        self.permitted(canary, name)?;
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
        let route = route_name(canary, provider);
        let cached = self.cached(kind, &namespace, &route);

        if let Some(expected) = self.expected.get(canary) {
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
            self.expected.remove(canary);
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
        // Nor gated: the initialisation writes the route at weight 0 from the current spec.
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
        let canary = &self.with_cookies(canary, provider, split.canary).await?;
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
        // After the rewrite above: a fixed gatewayRef must reach the route to be accepted.
        if let Some(held) = cached.as_ref().and_then(|r| self.gate(canary, r)) {
            return Ok(held);
        }
        Ok(Observation::Ready(weights))
    }

    /// `NotAccepted` while the cached HTTPRoute is not accepted by every Gateway it names, with
    /// a Warning the first time each cause is seen (a refusal at once, silence after the grace).
    fn gate(&self, canary: &Canary, route: &DynamicObject) -> Option<Observation> {
        if route.types.as_ref().is_none_or(|t| t.kind != "HTTPRoute") {
            return None;
        }
        let verdict = acceptance(route);
        if verdict == Acceptance::Accepted {
            self.held.remove(canary);
            return None;
        }
        let since = self.held.update(canary, |held| {
            held.get_or_insert_with(|| Held {
                since: std::time::Instant::now(),
                warned: Default::default(),
            })
            .since
        });
        let route_name = format!(
            "HTTPRoute {}/{}",
            route.namespace().unwrap_or_default(),
            route.name_any()
        );
        let weight = canary
            .status
            .as_ref()
            .and_then(|s| s.canary_weight)
            .unwrap_or(0);
        let hold = format!(
            "the canary weight is held at {weight} until every Gateway accepts the route: fix spec.service.gatewayRefs or the Gateway's listeners"
        );
        let (reason, cause, warning) = match verdict {
            Acceptance::Accepted => return None,
            Acceptance::Refused {
                gateway,
                reason,
                message,
            } => {
                let why = if message.is_empty() {
                    reason.clone()
                } else {
                    format!("{reason} ({message})")
                };
                (
                    format!("Gateway {gateway} does not accept {route_name}: {why}"),
                    format!("{gateway}/{reason}"),
                    format!("{route_name} is not accepted by Gateway {gateway}: {why}; {hold}"),
                )
            }
            Acceptance::Unreported(missing) => {
                let gateways: Vec<String> = missing.iter().map(|(g, _)| g.clone()).collect();
                let what: Vec<String> = missing
                    .iter()
                    .map(|(g, w)| format!("Gateway {g}: {w}"))
                    .collect();
                let grace = acceptance_grace(canary);
                let waited = since.elapsed();
                let reason = format!("{route_name} is not accepted yet ({})", what.join("; "));
                if waited < grace {
                    return Some(Observation::NotAccepted {
                        reason,
                        warning: None,
                    });
                }
                (
                    reason,
                    format!("{}/unreported", gateways.join(",")),
                    format!(
                        "{route_name} has not been accepted after {}s: {} (does the Gateway exist, and does a Gateway controller serve its GatewayClass?); {hold}",
                        waited.as_secs(),
                        what.join("; ")
                    ),
                )
            }
        };
        let first = self.held.update(canary, |held| {
            held.as_mut().is_some_and(|h| h.warned.insert(cause))
        });
        let warning = first.then_some(warning);
        Some(Observation::NotAccepted { reason, warning })
    }

    /// `canary` as its routes are rendered: with the session-affinity cookies for
    /// `canary_weight` in its status. Cookies drawn or retired here are written to the Canary's
    /// status first (a merge patch of those three fields only), so a restart renders the same.
    async fn with_cookies(
        &self,
        canary: &Canary,
        provider: Provider,
        canary_weight: i32,
    ) -> Result<Canary, RoutingError> {
        let mut canary = canary.clone();
        let Some(affinity) = canary
            .analysis()
            .and_then(|a| a.session_affinity.clone())
            .filter(|_| matches!(provider, Provider::GatewayApi(_)))
        else {
            return Ok(canary);
        };
        let namespace = canary.namespace().unwrap_or_default();
        let in_status = Cookies::of(canary.status.as_ref());
        let current = self.cookies.update(&canary, |written| match written {
            // The watch cache caught up.
            Some(c) if *c == in_status => {
                *written = None;
                in_status
            }
            Some(c) => c.clone(),
            None => in_status,
        });
        let next = current.next(&affinity, canary_weight, random_cookie_value);
        if next != current {
            let patch = json!({"status": {
                "sessionAffinityCookie": next.canary,
                "primarySessionAffinityCookie": next.primary,
                "previousSessionAffinityCookie": next.previous,
            }});
            let api: Api<Canary> = Api::namespaced(self.client.clone(), &namespace);
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.patch_status(&canary.name_any(), &params, &Patch::Merge(&patch))
                .await
                .map_err(|source| RoutingError::Cookies {
                    namespace: namespace.clone(),
                    name: canary.name_any(),
                    source: Box::new(source),
                })?;
            tracing::info!(canary = %canary.name_any(), %namespace, cookie = ?next.canary, previous = ?next.previous, "canary routing: session-affinity cookies written to status");
            self.cookies.insert(&canary, next.clone());
        }
        next.write_to(canary.status.get_or_insert_with(Default::default));
        Ok(canary)
    }

    /// Writes the Canary's routes at this split. `Unsupported` for providers Sluice does not
    /// route; a no-op for `kubernetes`.
    pub async fn set_routes(
        &self,
        canary: &Canary,
        provider_name: &str,
        split: Split,
    ) -> Result<(), RoutingError> {
        routable(canary, provider_name)?;
        let Parsed::Routed(provider) = Provider::parse(provider_name) else {
            return Ok(());
        };
        let provider = self.served(canary, provider_name, provider)?;
        let source = self.source(canary, provider);
        // Checked before any cookie is drawn for a spec that cannot be rendered.
        render(canary, provider, split, source.as_ref())
            .map_err(|r| Self::spec_error(canary, provider_name, r))?;
        let canary = &self.with_cookies(canary, provider, split.canary).await?;
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
        let mut objects = objects;
        let route_name = objects[0]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(live) = self.cached(provider.route_kind(), &namespace, &route_name) {
            adopt(canary, &live, &mut objects[0]);
        }
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
        if let Some(generation) = generation {
            self.expected.insert(
                canary,
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

/// Annotation on a route object the user made before the Canary: its `spec` as it was.
pub const ADOPTED_ANNOTATION: &str = "sluice.dev/original-spec";

/// A route object that exists without this Canary's owner reference is the user's (Flagger's
/// Istio script pre-creates the VirtualService): it is written without an owner reference (so
/// deleting the Canary never deletes it) and carries its original `spec` in
/// [`ADOPTED_ANNOTATION`] (the first one recorded is kept), for [`Routing::give_back`].
fn adopt(canary: &Canary, live: &DynamicObject, object: &mut Value) {
    let uid = canary.uid().unwrap_or_default();
    if live.owner_references().iter().any(|o| o.uid == uid) {
        return;
    }
    let original = live
        .annotations()
        .get(ADOPTED_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| {
            serde_json::to_string(live.data.get("spec").unwrap_or(&Value::Null)).unwrap_or_default()
        });
    let meta = &mut object["metadata"];
    if let Some(m) = meta.as_object_mut() {
        m.remove("ownerReferences");
    }
    meta["annotations"][ADOPTED_ANNOTATION] = json!(original);
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
/// (annotations: NGINX's weights); a later generation means someone wrote after us. Whether a
/// Gateway accepted an HTTPRoute is [`acceptance`].
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
    None
}

/// Whether every parentRef of `route` has a parent status whose `Accepted` condition is `True`
/// for the route's current generation. A refusal (`Accepted=False` on that generation) wins over
/// missing reports, so its reason is told at once.
pub fn acceptance(route: &DynamicObject) -> Acceptance {
    let namespace = route.namespace().unwrap_or_default();
    let generation = route.metadata.generation.unwrap_or(0);
    let parents = route
        .data
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let refs = route
        .data
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // A parentRef as (namespace, name, sectionName, port), the namespace defaulted to the route's.
    let id = |r: &Value| {
        (
            r.get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(&namespace)
                .to_string(),
            r.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            r.get("sectionName")
                .and_then(Value::as_str)
                .map(str::to_owned),
            r.get("port").and_then(Value::as_i64),
        )
    };
    let mut missing = Vec::new();
    for parent_ref in &refs {
        let wanted = id(parent_ref);
        let gateway = match &wanted.2 {
            Some(section) => format!("{}/{} (listener {section})", wanted.0, wanted.1),
            None => format!("{}/{}", wanted.0, wanted.1),
        };
        let accepted = parents
            .iter()
            .filter(|p| p.get("parentRef").is_some_and(|r| id(r) == wanted))
            .flat_map(|p| p.get("conditions").and_then(Value::as_array).cloned())
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Accepted"));
        let Some(accepted) = accepted else {
            missing.push((
                gateway,
                "no Gateway controller has reported on the route".into(),
            ));
            continue;
        };
        let observed = accepted
            .get("observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if observed < generation {
            missing.push((
                gateway,
                format!("its controller has processed generation {observed}, not {generation}"),
            ));
            continue;
        }
        if accepted.get("status").and_then(Value::as_str) != Some("True") {
            let text = |k: &str| {
                accepted
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            return Acceptance::Refused {
                gateway,
                reason: text("reason"),
                message: text("message"),
            };
        }
    }
    if missing.is_empty() {
        Acceptance::Accepted
    } else {
        Acceptance::Unreported(missing)
    }
}

#[cfg(test)]
mod tests;
