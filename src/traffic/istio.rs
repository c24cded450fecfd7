//! The Istio router: canary weights on VirtualService routes, DestinationRule subsets for
//! subset-level splits, header routes and mirror routes, configured as in Argo Rollouts
//! (`trafficRouting.istio.{virtualService, virtualServices, destinationRule}`).
//!
//! What it decides, as upstream (`rollout/trafficrouting/istio`):
//! - **Which routes carry the split.** HTTP: the routes named in `routes`; without names, the one
//!   route that is not a managed route (more is a configuration error). Managed mirror routes
//!   get the same weights, so mirroring never changes the split. TLS / TCP: the routes whose
//!   matches have exactly the configured port (and SNI hosts); without `tlsRoutes` / `tcpRoutes`,
//!   the first one when it routes to the canary and the stable destinations.
//! - **Which destinations.** Host-level split: destinations whose host (up to the first `.`) is
//!   the canary / stable Service. Subset-level split (`destinationRule`): destinations with the
//!   canary / stable subset, and the DestinationRule's canary / stable subsets get the label
//!   `rollouts-pod-template-hash` = the canary / stable pod-template hash, written before any
//!   weight so a weight never points at the wrong pods. Canary gets `canary`, stable
//!   the rest; other destinations and subsets are left as they are (upstream deletes them).
//! - **Experiment templates** (`experiment:` step templates with `weight`): a destination to the
//!   template's Service (host only, as upstream, also for a subset split) with its weight,
//!   appended to each split route while the Experiment runs, and taken out again after; a
//!   destination whose host the VirtualService's manifest does not name is one Sluice added
//!   (the declared hosts come from the originals Sluice recorded). Upstream also adds a
//!   DestinationRule subset per template that no route uses; Sluice does not.
//! - **Managed routes.** `setHeaderRoute` adds an HTTP route named after the managed route that
//!   matches the headers and sends everything to the canary; `setMirrorRoute` adds one with the
//!   step's matches, the split route's destinations, `mirror` = the canary and
//!   `mirrorPercentage`. Managed routes go first, in `managedRoutes` order, before the user's.
//!   A step without matches removes its route.
//! - **maxTrafficWeight**: only 100. Weights are percentages, as upstream (whose Istio router
//!   writes `100 - weight` for stable and whose validation refuses `maxTrafficWeight` for Istio);
//!   `crate::engine::validate` reports any other value as `InvalidSpec`.
//! - **Observed weight**: the canary weight on every split route of every VirtualService when
//!   they all agree (and the DestinationRule's subsets carry the expected hashes); else `None`.
//!
//! VirtualServices and DestinationRules belong to Git: every write goes through
//! [`super::ownership::apply`] (only `spec.http` / `spec.tls` / `spec.tcp` / `spec.subsets`,
//! under Sluice's field manager, originals recorded) and [`Router::release`] gives them back
//! with [`super::ownership::release`]: the object is again exactly its manifest (weights as
//! declared, managed routes and hash labels gone) and Sluice owns none of its fields. For a
//! subset-level split the stable subset then selects by its declared labels only, so release
//! after the old pods are gone.
//!
//! What it must never do: touch a field other than those lists, a route it was not configured
//! for (beyond managed routes), or a VirtualService in a namespace it was not told about.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Map, Value, json};

use super::ownership::{self, FieldPath, Target};
use super::{HeaderRoute, MirrorRoute, Observed, Router, RouterContext, TrafficError, Weights};
use crate::api::argo::rollout::{IstioTrafficRouting, IstioVirtualService, StringMatch};

const ROUTER: &str = "istio";

/// The pod-template hash label subsets select on (Argo's `DefaultRolloutUniqueLabelKey`).
pub const HASH_LABEL: &str = "rollouts-pod-template-hash";

const GROUP: &str = "networking.istio.io";
const VERSION: &str = "v1beta1";

/// The Istio router of one Rollout.
pub struct IstioRouter {
    config: IstioTrafficRouting,
    managed_routes: Vec<String>,
}

/// Who gets the canary share and who the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub canary_service: String,
    pub stable_service: String,
    /// `(canary, stable)` subset names for a subset-level split.
    pub subsets: Option<(String, String)>,
    /// Experiment templates' Services and their weights: destinations by host, added to the
    /// split routes when missing.
    pub additional: Vec<(String, i32)>,
    /// Hosts the VirtualService's manifest routes to (short names); `None`: not known, every
    /// other destination is left alone. A destination to any other host is an experiment's that
    /// Sluice added: removed once no longer wanted, and reported as such.
    pub declared: Option<BTreeSet<String>>,
}

impl Targets {
    fn new(config: &IstioTrafficRouting, w: &Weights) -> Targets {
        Targets {
            canary_service: w.canary_service.clone(),
            stable_service: w.stable_service.clone(),
            subsets: config
                .destination_rule
                .as_ref()
                .map(|d| (d.canary_subset_name.clone(), d.stable_subset_name.clone())),
            additional: w
                .additional
                .iter()
                .map(|d| (d.service_name.clone(), d.weight))
                .collect(),
            declared: None,
        }
    }

    /// The targets for one VirtualService, knowing which hosts its manifest declares.
    fn declared_by(&self, live: &DynamicObject, spec: &Value) -> Targets {
        Targets {
            declared: Some(declared_hosts(live, spec)),
            ..self.clone()
        }
    }

    /// An experiment destination Sluice added (its host is not the manifest's).
    fn added<'a>(&self, destination: &'a Value) -> Option<&'a str> {
        let host = short_host(destination)?;
        let declared = self.declared.as_ref()?;
        (!declared.contains(host) && self.side(destination).is_none()).then_some(host)
    }
    fn side(&self, destination: &Value) -> Option<Side> {
        let dest = destination.get("destination")?;
        match &self.subsets {
            Some((canary, stable)) => match dest.get("subset").and_then(Value::as_str) {
                Some(s) if s == canary => Some(Side::Canary),
                Some(s) if s == stable => Some(Side::Stable),
                _ => None,
            },
            None => {
                let host = dest.get("host").and_then(Value::as_str)?;
                let short = host.split('.').next().unwrap_or(host);
                if short == self.canary_service {
                    Some(Side::Canary)
                } else if short == self.stable_service {
                    Some(Side::Stable)
                } else {
                    None
                }
            }
        }
    }
}

/// A destination's host up to the first `.` (the Service name).
fn short_host(destination: &Value) -> Option<&str> {
    let host = destination.get("destination")?.get("host")?.as_str()?;
    host.split('.').next()
}

/// Short hosts of every destination of `routes` lists (`http`, `tls`, `tcp`).
fn hosts_of(spec: &Value, key: &str, out: &mut BTreeSet<String>) {
    let routes = spec
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for d in routes.flat_map(|r| {
        r.get("route")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }) {
        if let Some(h) = short_host(d) {
            out.insert(h.to_string());
        }
    }
}

/// The hosts the VirtualService's owner declared: from the values Sluice recorded before its
/// first write of each list, else (not borrowed yet) the live lists.
fn declared_hosts(live: &DynamicObject, spec: &Value) -> BTreeSet<String> {
    let record = ownership::read_record(live)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    for key in ["http", "tls", "tcp"] {
        let recorded = record
            .fields
            .iter()
            .find(|f| f.path == ownership::path(&["spec", key]));
        match recorded {
            Some(f) => {
                let value = json!({ key: f.value.clone().unwrap_or(Value::Null) });
                hosts_of(&value, key, &mut out);
            }
            None => hosts_of(spec, key, &mut out),
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Canary,
    Stable,
}

/// `name` or Argo's `name.namespace`.
pub fn split_name<'a>(name: &'a str, default_namespace: &'a str) -> (&'a str, &'a str) {
    match name.split_once('.') {
        Some((n, ns)) if !ns.is_empty() => (ns, n),
        _ => (default_namespace, name),
    }
}

fn route_name(route: &Value) -> Option<&str> {
    route.get("name").and_then(Value::as_str)
}

/// Sets the weight of every canary / stable destination of `route`, and of the experiment
/// destinations (added after the others when missing, removed when no longer wanted); whether
/// it has both canary and stable.
fn weigh(route: &mut Value, t: &Targets, canary: i32, stable: i32) -> (bool, bool) {
    let (mut has_canary, mut has_stable) = (false, false);
    if let Some(dests) = route.get_mut("route").and_then(Value::as_array_mut) {
        let mut missing = t.additional.clone();
        dests.retain_mut(|d| {
            match t.side(d) {
                Some(Side::Canary) => {
                    has_canary = true;
                    d["weight"] = json!(canary);
                }
                Some(Side::Stable) => {
                    has_stable = true;
                    d["weight"] = json!(stable);
                }
                None => {
                    let host = short_host(d).unwrap_or_default().to_string();
                    if let Some(i) = missing.iter().position(|(s, _)| *s == host) {
                        d["weight"] = json!(missing.remove(i).1);
                    } else if t.added(d).is_some() {
                        return false;
                    }
                }
            }
            true
        });
        // Upstream's order: the experiment destinations after the route's own.
        if has_canary && has_stable {
            for (host, weight) in missing {
                dests.push(json!({"destination": {"host": host}, "weight": weight}));
            }
        }
    }
    (has_canary, has_stable)
}

/// The weights of the experiment destinations Sluice added to `route`, by host.
fn added_weights(route: &Value, t: &Targets) -> BTreeMap<String, i32> {
    let dests = route.get("route").and_then(Value::as_array);
    dests
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let host = t.added(d)?;
            let weight = d.get("weight").and_then(Value::as_i64).unwrap_or(0);
            Some((host.to_string(), i32::try_from(weight).ok()?))
        })
        .collect()
}

/// The canary weight on `route` (absent weight = 0, Istio's default for a listed destination).
fn canary_weight(route: &Value, t: &Targets) -> Option<i32> {
    let dests = route.get("route")?.as_array()?;
    let d = dests.iter().find(|d| t.side(d) == Some(Side::Canary))?;
    Some(
        d.get("weight")
            .and_then(Value::as_i64)
            .map_or(0, |w| w as i32),
    )
}

/// Indexes of the HTTP routes that carry the split.
pub fn http_split_routes(
    http: &[Value],
    vs: &IstioVirtualService,
    managed: &[String],
) -> Result<Vec<usize>, String> {
    let names = vs.routes.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    if names.is_empty() {
        let unmanaged: Vec<usize> = (0..http.len())
            .filter(|&i| route_name(&http[i]).is_none_or(|n| !managed.iter().any(|m| m == n)))
            .collect();
        match unmanaged.as_slice() {
            [one] => out.push(*one),
            [] => return Err("spec.http has no route to split".into()),
            _ => {
                return Err(format!(
                    "spec.http has {} routes; name the ones to split in \
                     trafficRouting.istio.virtualService.routes",
                    unmanaged.len()
                ));
            }
        }
    } else {
        for name in names {
            let i = http
                .iter()
                .position(|r| route_name(r) == Some(name.as_str()))
                .ok_or_else(|| format!("HTTP route '{name}' is not in spec.http"))?;
            out.push(i);
        }
    }
    Ok(out)
}

/// Managed mirror routes present in `http` (they follow the split's weights).
fn mirror_routes(http: &[Value], managed: &[String]) -> Vec<usize> {
    (0..http.len())
        .filter(|&i| http[i].get("mirror").is_some())
        .filter(|&i| route_name(&http[i]).is_some_and(|n| managed.iter().any(|m| m == n)))
        .collect()
}

/// Ports and SNI hosts of a TLS / TCP route's matches: `Some(port)` when they name one port
/// (0 when none).
fn route_port(route: &Value) -> Option<i64> {
    let mut ports: Vec<i64> = route
        .get("match")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("port").and_then(Value::as_i64))
                .collect()
        })
        .unwrap_or_default();
    ports.sort_unstable();
    ports.dedup();
    match ports.as_slice() {
        [] => Some(0),
        [p] => Some(*p),
        _ => None,
    }
}

fn route_sni_hosts(route: &Value) -> Vec<String> {
    let mut hosts: Vec<String> = route
        .get("match")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("sniHosts").and_then(Value::as_array))
                .flatten()
                .filter_map(|h| h.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Indexes of the TLS (`sni` = true) or TCP routes that carry the split; `explicit` when the
/// Rollout named them (then every entry must match something).
fn l4_split_routes(
    routes: &[Value],
    wanted: &[(i64, Option<Vec<String>>)],
    kind: &str,
) -> Result<(Vec<usize>, bool), String> {
    if wanted.is_empty() {
        return Ok((
            (!routes.is_empty()).then_some(0).into_iter().collect(),
            false,
        ));
    }
    let mut out = Vec::new();
    for (port, sni) in wanted {
        let found: Vec<usize> = (0..routes.len())
            .filter(|&i| route_port(&routes[i]) == Some(*port))
            .filter(|&i| {
                sni.as_ref().is_none_or(|want| {
                    let mut want = want.clone();
                    want.sort();
                    want.dedup();
                    route_sni_hosts(&routes[i]) == want
                })
            })
            .collect();
        if found.is_empty() {
            return Err(format!(
                "no {kind} route in the VirtualService matches port {port}{}",
                sni.as_ref()
                    .map(|s| format!(" and SNI hosts {s:?}"))
                    .unwrap_or_default()
            ));
        }
        out.extend(found);
    }
    Ok((out, true))
}

/// The TLS / TCP routes a VirtualService entry names: `(port, SNI hosts)`.
fn l4_wanted(vs: &IstioVirtualService, key: &str) -> Vec<(i64, Option<Vec<String>>)> {
    if key == "tls" {
        vs.tls_routes
            .iter()
            .flatten()
            .map(|r| {
                (
                    r.port.unwrap_or(0),
                    Some(r.sni_hosts.clone().unwrap_or_default()),
                )
            })
            .collect()
    } else {
        vs.tcp_routes
            .iter()
            .flatten()
            .map(|r| (r.port.unwrap_or(0), None))
            .collect()
    }
}

fn missing_side(t: &Targets, canary: bool, stable: bool) -> Option<String> {
    let (c, s) = match &t.subsets {
        Some((c, s)) => (format!("subset '{c}'"), format!("subset '{s}'")),
        None => (
            format!("canary Service '{}'", t.canary_service),
            format!("stable Service '{}'", t.stable_service),
        ),
    };
    if !canary {
        Some(format!("{c} is not a destination of the route"))
    } else if !stable {
        Some(format!("{s} is not a destination of the route"))
    } else {
        None
    }
}

/// The VirtualService lists after setting `canary` / `stable`: `(path, new value)` for every
/// list that exists (changed or not, so an unchanged object is recognised and left alone).
pub fn render_weights(
    spec: &Value,
    vs: &IstioVirtualService,
    managed: &[String],
    t: &Targets,
    canary: i32,
    stable: i32,
) -> Result<Vec<(FieldPath, Value)>, String> {
    let mut out = Vec::new();
    if let Some(http) = spec.get("http").and_then(Value::as_array) {
        let mut http = http.clone();
        for i in http_split_routes(&http, vs, managed)? {
            let (c, s) = weigh(&mut http[i], t, canary, stable);
            if let Some(why) = missing_side(t, c, s) {
                let name = route_name(&http[i]).unwrap_or("(unnamed)").to_string();
                return Err(format!("HTTP route {name}: {why}"));
            }
        }
        for i in mirror_routes(&http, managed) {
            weigh(&mut http[i], t, canary, stable);
        }
        out.push((ownership::path(&["spec", "http"]), Value::Array(http)));
    } else if vs.routes.as_ref().is_some_and(|r| !r.is_empty())
        && l4_wanted(vs, "tls").is_empty()
        && l4_wanted(vs, "tcp").is_empty()
    {
        // As Argo: named HTTP routes of a VirtualService without `http` are passed over when
        // TLS or TCP routes carry the split (Argo's own TLS-only example names both).
        return Err("spec.http not found but trafficRouting names HTTP routes".into());
    }
    for key in ["tls", "tcp"] {
        let wanted = l4_wanted(vs, key);
        let routes = spec.get(key).and_then(Value::as_array);
        let Some(routes) = routes else {
            if !wanted.is_empty() {
                return Err(format!(
                    "spec.{key} not found but trafficRouting names {key} routes"
                ));
            }
            continue;
        };
        let mut routes = routes.clone();
        let (idx, explicit) = l4_split_routes(&routes, &wanted, &key.to_uppercase())?;
        let mut changed = false;
        for i in idx {
            let mut candidate = routes[i].clone();
            let (c, s) = weigh(&mut candidate, t, canary, stable);
            match missing_side(t, c, s) {
                Some(why) if explicit => {
                    return Err(format!("{} route {i}: {why}", key.to_uppercase()));
                }
                // The first route, not named by the Rollout, without both sides: not ours.
                Some(_) => {}
                None => {
                    routes[i] = candidate;
                    changed = true;
                }
            }
        }
        if changed {
            out.push((ownership::path(&["spec", key]), Value::Array(routes)));
        }
    }
    if out.is_empty() {
        return Err("the VirtualService has no http, tls or tcp routes".into());
    }
    Ok(out)
}

/// The canary weight the VirtualService applies: the same on every split route (HTTP, TLS and
/// TCP), else `None`.
pub fn observe_weight(
    spec: &Value,
    vs: &IstioVirtualService,
    managed: &[String],
    t: &Targets,
) -> Option<i32> {
    observe_split(spec, vs, managed, t).map(|(canary, _)| canary)
}

/// The canary weight and the experiment destinations' weights the VirtualService applies: the
/// same on every split route (HTTP, TLS and TCP), else `None`.
pub fn observe_split(
    spec: &Value,
    vs: &IstioVirtualService,
    managed: &[String],
    t: &Targets,
) -> Option<(i32, BTreeMap<String, i32>)> {
    let mut weights: Vec<Option<(i32, BTreeMap<String, i32>)>> = Vec::new();
    let seen = |route: &Value| Some((canary_weight(route, t)?, added_weights(route, t)));
    if let Some(http) = spec.get("http").and_then(Value::as_array) {
        let idx = http_split_routes(http, vs, managed).ok()?;
        weights.extend(idx.iter().map(|&i| seen(&http[i])));
    }
    // TLS / TCP routes carrying the split, chosen as render_weights chooses them.
    for key in ["tls", "tcp"] {
        let Some(routes) = spec.get(key).and_then(Value::as_array) else {
            continue;
        };
        let (idx, explicit) = l4_split_routes(routes, &l4_wanted(vs, key), key).ok()?;
        for i in idx {
            let mut r = routes[i].clone();
            if explicit || weigh(&mut r, t, 0, 0) == (true, true) {
                weights.push(seen(&routes[i]));
            }
        }
    }
    let (first, rest) = weights.split_first()?;
    let first = first.clone()?;
    rest.iter()
        .all(|w| w.as_ref() == Some(&first))
        .then_some(first)
}

fn string_match(m: &StringMatch) -> Value {
    let mut out = Map::new();
    for (k, v) in [
        ("exact", &m.exact),
        ("prefix", &m.prefix),
        ("regex", &m.regex),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            out.insert(k.into(), json!(v));
        }
    }
    Value::Object(out)
}

/// The port of the split route's first destination, for managed routes' destinations.
fn split_port(http: &[Value], vs: &IstioVirtualService, managed: &[String]) -> Option<Value> {
    let i = *http_split_routes(http, vs, managed).ok()?.first()?;
    http[i]
        .get("route")?
        .as_array()?
        .first()?
        .get("destination")?
        .get("port")
        .cloned()
}

fn canary_destination(t: &Targets, canary_host: &str, port: Option<Value>) -> Value {
    let mut d = json!({ "host": canary_host });
    if let Some(port) = port {
        d["port"] = port;
    }
    if let Some((canary, _)) = &t.subsets {
        d["subset"] = json!(canary);
    }
    d
}

/// The HTTP route a `setHeaderRoute` step adds: its matches, everything to the canary.
pub fn header_route(route: &HeaderRoute, destination: Value) -> Value {
    let matches: Vec<Value> = route
        .matches
        .iter()
        .map(|m| json!({ "headers": { m.header_name.clone(): string_match(&m.header_value) } }))
        .collect();
    json!({
        "name": route.name,
        "match": matches,
        "route": [{ "destination": destination, "weight": 100 }],
    })
}

/// The HTTP route a `setMirrorRoute` step adds: its matches, the split route's destinations
/// (current weights), and a mirror to the canary.
pub fn mirror_route(route: &MirrorRoute, split_destinations: Value, mirror: Value) -> Value {
    let matches: Vec<Value> = route
        .matches
        .iter()
        .map(|m| {
            let mut out = Map::new();
            if let Some(method) = &m.method {
                out.insert("method".into(), string_match(method));
            }
            if let Some(path) = &m.path {
                out.insert("uri".into(), string_match(path));
            }
            if let Some(headers) = &m.headers {
                let h: Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.clone(), string_match(v)))
                    .collect();
                out.insert("headers".into(), Value::Object(h));
            }
            Value::Object(out)
        })
        .collect();
    json!({
        "name": route.name,
        "match": matches,
        "route": split_destinations,
        "mirror": mirror,
        "mirrorPercentage": { "value": route.percentage.unwrap_or(100) },
    })
}

/// Managed routes first, in `managedRoutes` order, then the others as they were.
pub fn order_routes(http: Vec<Value>, managed: &[String]) -> Vec<Value> {
    let (mut mine, others): (Vec<Value>, Vec<Value>) = http
        .into_iter()
        .partition(|r| route_name(r).is_some_and(|n| managed.iter().any(|m| m == n)));
    mine.sort_by_key(|r| {
        managed
            .iter()
            .position(|m| Some(m.as_str()) == route_name(r))
            .unwrap_or(usize::MAX)
    });
    mine.extend(others);
    mine
}

/// `http` without the routes named in `names`.
pub fn remove_routes(http: &[Value], names: &[String]) -> Vec<Value> {
    http.iter()
        .filter(|r| route_name(r).is_none_or(|n| !names.iter().any(|m| m == n)))
        .cloned()
        .collect()
}

/// The DestinationRule's `spec.subsets` with the hash labels set (removed for an empty hash).
pub fn render_subsets(
    spec: &Value,
    canary_subset: &str,
    stable_subset: &str,
    canary_hash: &str,
    stable_hash: &str,
) -> Result<Value, String> {
    let mut subsets = spec
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .ok_or("spec.subsets not found")?;
    for (name, hash) in [(canary_subset, canary_hash), (stable_subset, stable_hash)] {
        let subset = subsets
            .iter_mut()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("subset '{name}' not found in spec.subsets"))?;
        let labels = &mut subset["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(map) = labels.as_object_mut() {
            if hash.is_empty() {
                map.remove(HASH_LABEL);
            } else {
                map.insert(HASH_LABEL.into(), json!(hash));
            }
        }
        if labels.as_object().is_some_and(Map::is_empty)
            && let Some(s) = subset.as_object_mut()
        {
            s.remove("labels");
        }
    }
    Ok(Value::Array(subsets))
}

/// Whether the subsets carry the expected hashes.
pub fn subsets_match(
    spec: &Value,
    canary_subset: &str,
    stable_subset: &str,
    canary_hash: &str,
    stable_hash: &str,
) -> bool {
    render_subsets(spec, canary_subset, stable_subset, canary_hash, stable_hash)
        .is_ok_and(|s| spec.get("subsets") == Some(&s))
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

fn virtual_service_resource() -> ApiResource {
    resource("VirtualService", "virtualservices")
}

fn destination_rule_resource() -> ApiResource {
    resource("DestinationRule", "destinationrules")
}

impl IstioRouter {
    /// The router for `trafficRouting.istio`, with `managedRoutes` names in order.
    pub fn new(
        config: &IstioTrafficRouting,
        managed_routes: Vec<String>,
    ) -> Result<IstioRouter, TrafficError> {
        let router = IstioRouter {
            config: config.clone(),
            managed_routes,
        };
        if router.virtual_services().is_empty() {
            return Err(TrafficError::Config(
                "istio: set virtualService or virtualServices".into(),
            ));
        }
        Ok(router)
    }

    fn virtual_services(&self) -> Vec<IstioVirtualService> {
        let mut out: Vec<IstioVirtualService> =
            self.config.virtual_service.iter().cloned().collect();
        out.extend(self.config.virtual_services.iter().flatten().cloned());
        out
    }

    async fn get(
        ctx: &RouterContext,
        ar: &ApiResource,
        target: &Target<'_>,
    ) -> Result<(DynamicObject, Value), TrafficError> {
        let obj = ctx
            .read(ar, target.namespace, target.name)
            .await
            .map_err(|e| target.read(e))?
            .ok_or_else(|| target.not_found())?;
        let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        Ok((obj, spec))
    }

    /// The host managed routes send to: the DestinationRule's host for a subset split.
    async fn canary_host(&self, ctx: &RouterContext, w: &Weights) -> Result<String, TrafficError> {
        let Some(dr) = &self.config.destination_rule else {
            return Ok(w.canary_service.clone());
        };
        let target = Target {
            router: ROUTER,
            kind: "DestinationRule",
            namespace: &ctx.namespace,
            name: &dr.name,
        };
        let (_, spec) = Self::get(ctx, &destination_rule_resource(), &target).await?;
        spec.get("host")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| target.invalid("spec.host not set".into()))
    }

    /// Reads each VirtualService, lets `edit` compute its new `spec.http`, writes it.
    async fn edit_http<F>(&self, ctx: &RouterContext, mut edit: F) -> Result<(), TrafficError>
    where
        F: FnMut(&IstioVirtualService, &[Value]) -> Result<Vec<Value>, String> + Send,
    {
        for vs in self.virtual_services() {
            let (ns, name) = split_name(&vs.name, &ctx.namespace);
            let target = Target {
                router: ROUTER,
                kind: "VirtualService",
                namespace: ns,
                name,
            };
            let ar = virtual_service_resource();
            let (live, spec) = Self::get(ctx, &ar, &target).await?;
            let http = spec
                .get("http")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| target.invalid("spec.http not found".into()))?;
            let new = edit(&vs, &http).map_err(|e| target.invalid(e))?;
            let new = order_routes(new, &self.managed_routes);
            ownership::apply(
                ctx,
                &ar,
                &target,
                &live,
                &[(ownership::path(&["spec", "http"]), Value::Array(new))],
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Router for IstioRouter {
    fn name(&self) -> &'static str {
        ROUTER
    }

    async fn set_weight(&self, ctx: &RouterContext, w: &Weights) -> Result<(), TrafficError> {
        percent_weights(w)?;
        let t = Targets::new(&self.config, w);
        // Subsets first: a weight must never reach a subset that selects the wrong pods.
        if let Some(dr) = &self.config.destination_rule {
            let target = Target {
                router: ROUTER,
                kind: "DestinationRule",
                namespace: &ctx.namespace,
                name: &dr.name,
            };
            let ar = destination_rule_resource();
            let (live, spec) = Self::get(ctx, &ar, &target).await?;
            let subsets = render_subsets(
                &spec,
                &dr.canary_subset_name,
                &dr.stable_subset_name,
                &w.canary_hash,
                &w.stable_hash,
            )
            .map_err(|e| target.invalid(e))?;
            ownership::apply(
                ctx,
                &ar,
                &target,
                &live,
                &[(ownership::path(&["spec", "subsets"]), subsets)],
            )
            .await?;
        }
        for vs in self.virtual_services() {
            let (ns, name) = split_name(&vs.name, &ctx.namespace);
            let target = Target {
                router: ROUTER,
                kind: "VirtualService",
                namespace: ns,
                name,
            };
            let ar = virtual_service_resource();
            let (live, spec) = Self::get(ctx, &ar, &target).await?;
            let mut desired = render_weights(
                &spec,
                &vs,
                &self.managed_routes,
                &t.declared_by(&live, &spec),
                w.canary,
                w.stable(),
            )
            .map_err(|e| target.invalid(e))?;
            for (p, v) in desired.iter_mut() {
                if p.last().map(String::as_str) == Some("http")
                    && let Value::Array(http) = v
                {
                    *v = Value::Array(order_routes(std::mem::take(http), &self.managed_routes));
                }
            }
            ownership::apply(ctx, &ar, &target, &live, &desired).await?;
        }
        Ok(())
    }

    async fn observe(&self, ctx: &RouterContext, w: &Weights) -> Result<Observed, TrafficError> {
        let t = Targets::new(&self.config, w);
        let mut observed = Observed::default();
        let mut weights = Vec::new();
        for vs in self.virtual_services() {
            let (ns, name) = split_name(&vs.name, &ctx.namespace);
            let target = Target {
                router: ROUTER,
                kind: "VirtualService",
                namespace: ns,
                name,
            };
            let (live, spec) = Self::get(ctx, &virtual_service_resource(), &target).await?;
            let split = observe_split(
                &spec,
                &vs,
                &self.managed_routes,
                &t.declared_by(&live, &spec),
            );
            observed.detail.insert(
                format!("virtualService/{ns}/{name}"),
                split
                    .as_ref()
                    .map_or("unknown".into(), |(c, a)| format!("{c}, added {a:?}")),
            );
            weights.push(split);
            for r in spec
                .get("http")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(n) = route_name(r)
                    && self.managed_routes.iter().any(|m| m == n)
                    && !observed.managed_routes.iter().any(|m| m == n)
                {
                    observed.managed_routes.push(n.to_string());
                }
            }
        }
        let (mut canary, additional) = match weights.split_first() {
            Some((Some((c, a)), rest))
                if rest.iter().all(|w| w.as_ref() == Some(&(*c, a.clone()))) =>
            {
                (Some(*c), a.clone())
            }
            _ => (None, BTreeMap::new()),
        };
        observed.additional = additional;
        if let Some(dr) = &self.config.destination_rule {
            let target = Target {
                router: ROUTER,
                kind: "DestinationRule",
                namespace: &ctx.namespace,
                name: &dr.name,
            };
            let (_, spec) = Self::get(ctx, &destination_rule_resource(), &target).await?;
            let ok = subsets_match(
                &spec,
                &dr.canary_subset_name,
                &dr.stable_subset_name,
                &w.canary_hash,
                &w.stable_hash,
            );
            observed.detail.insert(
                format!("destinationRule/{}", dr.name),
                if ok { "hashes set" } else { "hashes not set" }.into(),
            );
            // Subsets decide which pods a share reaches, so a weight above 0 is only verified
            // with the hashes in place. At 0 every request goes to the stable subset: the
            // DestinationRule as its manifest declares it (after a release) is fine, and asking
            // for the hashes again would re-write what was just given back, over and over.
            if !ok && canary != Some(0) {
                canary = None;
            }
        }
        observed.canary = canary;
        Ok(observed)
    }

    async fn set_header_route(
        &self,
        ctx: &RouterContext,
        w: &Weights,
        route: &HeaderRoute,
    ) -> Result<(), TrafficError> {
        let t = Targets::new(&self.config, w);
        let host = self.canary_host(ctx, w).await?;
        let managed = self.managed_routes.clone();
        self.edit_http(ctx, |vs, http| {
            let mut out = remove_routes(http, std::slice::from_ref(&route.name));
            if !route.matches.is_empty() {
                let dest = canary_destination(&t, &host, split_port(http, vs, &managed));
                out.push(header_route(route, dest));
            }
            Ok(out)
        })
        .await
    }

    async fn set_mirror_route(
        &self,
        ctx: &RouterContext,
        w: &Weights,
        route: &MirrorRoute,
    ) -> Result<(), TrafficError> {
        let t = Targets::new(&self.config, w);
        let host = self.canary_host(ctx, w).await?;
        let managed = self.managed_routes.clone();
        self.edit_http(ctx, |vs, http| {
            let mut out = remove_routes(http, std::slice::from_ref(&route.name));
            if !route.matches.is_empty() {
                let i = *http_split_routes(http, vs, &managed)?
                    .first()
                    .ok_or("no HTTP route carries the split")?;
                let dests = http[i].get("route").cloned().unwrap_or(json!([]));
                let mirror = canary_destination(&t, &host, split_port(http, vs, &managed));
                out.push(mirror_route(route, dests, mirror));
            }
            Ok(out)
        })
        .await
    }

    async fn remove_managed_routes(&self, ctx: &RouterContext) -> Result<(), TrafficError> {
        if self.managed_routes.is_empty() {
            return Ok(());
        }
        let managed = self.managed_routes.clone();
        self.edit_http(ctx, |_, http| Ok(remove_routes(http, &managed)))
            .await
    }

    async fn release(&self, ctx: &RouterContext, _w: &Weights) -> Result<(), TrafficError> {
        for vs in self.virtual_services() {
            let (ns, name) = split_name(&vs.name, &ctx.namespace);
            let target = Target {
                router: ROUTER,
                kind: "VirtualService",
                namespace: ns,
                name,
            };
            ownership::release(ctx, &virtual_service_resource(), &target).await?;
        }
        if let Some(dr) = &self.config.destination_rule {
            let target = Target {
                router: ROUTER,
                kind: "DestinationRule",
                namespace: &ctx.namespace,
                name: &dr.name,
            };
            ownership::release(ctx, &destination_rule_resource(), &target).await?;
        }
        Ok(())
    }
}

/// Istio weights are percentages here, as in Argo Rollouts (its Istio router writes
/// `100 - weight` for stable, and its validation refuses `maxTrafficWeight` for Istio); the
/// engine reports another `maxTrafficWeight` as `InvalidSpec`, so this only guards the router.
pub fn percent_weights(w: &Weights) -> Result<(), TrafficError> {
    if w.max_weight == 100 {
        return Ok(());
    }
    Err(TrafficError::Unsupported {
        router: ROUTER,
        what: format!(
            "maxTrafficWeight {} (VirtualService weights are percentages; remove \
             trafficRouting.maxTrafficWeight)",
            w.max_weight
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::argo::rollout::{HeaderRoutingMatch, IstioTcpRoute, IstioTlsRoute, RouteMatch};
    use pretty_assertions::assert_eq;

    fn hosts() -> Targets {
        Targets {
            canary_service: "canary".into(),
            stable_service: "stable".into(),
            subsets: None,
            additional: Vec::new(),
            declared: None,
        }
    }

    fn vs(routes: &[&str]) -> IstioVirtualService {
        IstioVirtualService {
            name: "vs".into(),
            routes: (!routes.is_empty()).then(|| routes.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn spec() -> Value {
        json!({
            "hosts": ["app"],
            "http": [
                {"name": "primary", "retries": {"attempts": 3}, "route": [
                    {"destination": {"host": "stable.ns.svc.cluster.local", "port": {"number": 80}}, "weight": 100},
                    {"destination": {"host": "canary", "port": {"number": 80}}, "weight": 0},
                ]},
                {"name": "other", "route": [{"destination": {"host": "elsewhere"}}]},
            ]
        })
    }

    #[test]
    fn weights_are_percentages_only() {
        let mut w = Weights {
            canary: 30,
            max_weight: 100,
            canary_service: "canary".into(),
            stable_service: "stable".into(),
            canary_hash: "c".into(),
            stable_hash: "s".into(),
            additional: Vec::new(),
        };
        assert!(percent_weights(&w).is_ok());
        w.max_weight = 1000;
        let err = percent_weights(&w).unwrap_err().to_string();
        assert!(
            err.contains("maxTrafficWeight 1000") && err.contains("istio"),
            "{err}"
        );
    }

    #[test]
    fn host_split_sets_named_routes_only() {
        let out = render_weights(&spec(), &vs(&["primary"]), &[], &hosts(), 30, 70).unwrap();
        assert_eq!(out.len(), 1);
        let http = &out[0].1;
        assert_eq!(http[0]["route"][0]["weight"], json!(70));
        assert_eq!(http[0]["route"][1]["weight"], json!(30));
        assert_eq!(http[0]["retries"], json!({"attempts": 3}));
        assert_eq!(http[1], spec()["http"][1]);
        let mut applied = spec();
        applied["http"] = http.clone();
        assert_eq!(
            observe_weight(&applied, &vs(&["primary"]), &[], &hosts()),
            Some(30)
        );
    }

    #[test]
    fn experiment_destinations_are_added_weighed_and_removed_again() {
        let declared: BTreeSet<String> = ["stable", "canary"].map(String::from).into();
        let with_exp = Targets {
            additional: vec![("exp-svc".into(), 20)],
            declared: Some(declared.clone()),
            ..hosts()
        };
        let out = render_weights(&spec(), &vs(&["primary"]), &[], &with_exp, 10, 70).unwrap();
        let mut applied = spec();
        applied["http"] = out[0].1.clone();
        let route = &applied["http"][0]["route"];
        assert_eq!(route[0]["weight"], json!(70));
        assert_eq!(route[1]["weight"], json!(10));
        assert_eq!(
            route[2],
            json!({"destination": {"host": "exp-svc"}, "weight": 20})
        );
        let exp = BTreeMap::from([("exp-svc".to_string(), 20)]);
        assert_eq!(
            observe_split(&applied, &vs(&["primary"]), &[], &with_exp),
            Some((10, exp))
        );
        // The step is over: the destination Sluice added goes, the declared ones stay.
        let without = Targets {
            declared: Some(declared),
            ..hosts()
        };
        let out = render_weights(&applied, &vs(&["primary"]), &[], &without, 10, 90).unwrap();
        assert_eq!(out[0].1[0]["route"].as_array().map(Vec::len), Some(2));
        assert_eq!(out[0].1[1], spec()["http"][1]);
    }

    #[test]
    fn unnamed_config_needs_exactly_one_unmanaged_route() {
        let err = render_weights(&spec(), &vs(&[]), &[], &hosts(), 10, 90).unwrap_err();
        assert!(err.contains("name the ones to split"), "{err}");
        let one = json!({"http": [spec()["http"][0].clone()]});
        assert!(render_weights(&one, &vs(&[]), &[], &hosts(), 10, 90).is_ok());
        // A managed route beside it does not count.
        let two = json!({"http": [{"name": "hdr", "route": []}, spec()["http"][0].clone()]});
        assert!(render_weights(&two, &vs(&[]), &["hdr".into()], &hosts(), 10, 90).is_ok());
    }

    #[test]
    fn missing_route_or_destination_is_an_error() {
        let err = render_weights(&spec(), &vs(&["nope"]), &[], &hosts(), 10, 90).unwrap_err();
        assert!(err.contains("'nope'"), "{err}");
        let err = render_weights(&spec(), &vs(&["other"]), &[], &hosts(), 10, 90).unwrap_err();
        assert!(err.contains("canary Service 'canary'"), "{err}");
    }

    #[test]
    fn subset_split_uses_subsets() {
        let t = Targets {
            subsets: Some(("c".into(), "s".into())),
            ..hosts()
        };
        let spec = json!({"http": [{"route": [
            {"destination": {"host": "app", "subset": "s"}, "weight": 100},
            {"destination": {"host": "app", "subset": "c"}, "weight": 0},
        ]}]});
        let out = render_weights(&spec, &vs(&[]), &[], &t, 60, 40).unwrap();
        assert_eq!(out[0].1[0]["route"][0]["weight"], json!(40));
        assert_eq!(out[0].1[0]["route"][1]["weight"], json!(60));
    }

    #[test]
    fn tls_and_tcp_routes_match_port_and_sni() {
        let spec = json!({
            "tls": [
                {"match": [{"port": 443, "sniHosts": ["a.example"]}], "route": [
                    {"destination": {"host": "stable"}, "weight": 100},
                    {"destination": {"host": "canary"}, "weight": 0}]},
                {"match": [{"port": 443, "sniHosts": ["b.example"]}], "route": [
                    {"destination": {"host": "stable"}, "weight": 100},
                    {"destination": {"host": "canary"}, "weight": 0}]},
            ],
            "tcp": [
                {"match": [{"port": 5432}], "route": [
                    {"destination": {"host": "stable"}, "weight": 100},
                    {"destination": {"host": "canary"}, "weight": 0}]},
            ],
        });
        let v = IstioVirtualService {
            name: "vs".into(),
            tls_routes: Some(vec![IstioTlsRoute {
                port: Some(443),
                sni_hosts: Some(vec!["b.example".into()]),
            }]),
            tcp_routes: Some(vec![IstioTcpRoute { port: Some(5432) }]),
            ..Default::default()
        };
        let out = render_weights(&spec, &v, &[], &hosts(), 30, 70).unwrap();
        // Before the write the TLS routes disagree with nothing: all at 0.
        assert_eq!(observe_weight(&spec, &v, &[], &hosts()), Some(0));
        let tls = &out.iter().find(|(p, _)| p[1] == "tls").unwrap().1;
        assert_eq!(tls[0]["route"][1]["weight"], json!(0));
        assert_eq!(tls[1]["route"][1]["weight"], json!(30));
        let tcp = &out.iter().find(|(p, _)| p[1] == "tcp").unwrap().1;
        assert_eq!(tcp[0]["route"][1]["weight"], json!(30));
        let applied = json!({"tls": [spec["tls"][0].clone(), tls[1].clone()], "tcp": tcp});
        let only_b = IstioVirtualService {
            tls_routes: Some(vec![IstioTlsRoute {
                port: Some(443),
                sni_hosts: Some(vec!["b.example".into()]),
            }]),
            ..v.clone()
        };
        assert_eq!(observe_weight(&applied, &only_b, &[], &hosts()), Some(30));
        // Without a TLS config the first TLS route counts, which still says 0.
        let first_tls = IstioVirtualService {
            tls_routes: None,
            ..only_b
        };
        assert_eq!(observe_weight(&applied, &first_tls, &[], &hosts()), None);
        let bad = IstioVirtualService {
            tcp_routes: Some(vec![IstioTcpRoute { port: Some(1) }]),
            ..v
        };
        assert!(render_weights(&spec, &bad, &[], &hosts(), 30, 70).is_err());
    }

    #[test]
    fn named_http_routes_are_passed_over_when_only_tls_routes_exist() {
        // Argo's e2e istio-host-only-tls-split.yaml: `routes: [primary]`, but the VirtualService
        // has only a TLS route, which carries the split.
        let spec = json!({"tls": [
            {"match": [{"port": 3000, "sniHosts": ["h"]}], "route": [
                {"destination": {"host": "stable"}, "weight": 100},
                {"destination": {"host": "canary"}, "weight": 0}]},
        ]});
        let v = IstioVirtualService {
            name: "vs".into(),
            routes: Some(vec!["primary".into()]),
            tls_routes: Some(vec![IstioTlsRoute {
                port: Some(3000),
                sni_hosts: Some(vec!["h".into()]),
            }]),
            ..Default::default()
        };
        let out = render_weights(&spec, &v, &[], &hosts(), 10, 90).unwrap();
        let tls = &out.iter().find(|(p, _)| p[1] == "tls").unwrap().1;
        assert_eq!(tls[0]["route"][1]["weight"], json!(10));
        assert_eq!(
            observe_weight(&json!({"tls": tls}), &v, &[], &hosts()),
            Some(10)
        );
        // With nothing else to carry the split, the named HTTP routes must exist.
        let http_only = IstioVirtualService {
            tls_routes: None,
            ..v
        };
        assert!(render_weights(&spec, &http_only, &[], &hosts(), 10, 90).is_err());
    }

    #[test]
    fn header_and_mirror_routes_are_ordered_as_managed_routes_declares() {
        let h = header_route(
            &HeaderRoute {
                name: "hdr".into(),
                matches: vec![HeaderRoutingMatch {
                    header_name: "x-canary".into(),
                    header_value: StringMatch {
                        exact: Some("yes".into()),
                        ..Default::default()
                    },
                }],
            },
            json!({"host": "canary", "port": {"number": 80}}),
        );
        assert_eq!(
            h,
            json!({"name": "hdr", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                   "route": [{"destination": {"host": "canary", "port": {"number": 80}}, "weight": 100}]})
        );
        let m = mirror_route(
            &MirrorRoute {
                name: "mir".into(),
                matches: vec![RouteMatch {
                    method: Some(StringMatch {
                        exact: Some("GET".into()),
                        ..Default::default()
                    }),
                    path: Some(StringMatch {
                        prefix: Some("/api".into()),
                        ..Default::default()
                    }),
                    headers: None,
                }],
                percentage: Some(25),
            },
            json!([{"destination": {"host": "stable"}, "weight": 100}]),
            json!({"host": "canary"}),
        );
        assert_eq!(
            m["match"],
            json!([{"method": {"exact": "GET"}, "uri": {"prefix": "/api"}}])
        );
        assert_eq!(m["mirrorPercentage"], json!({"value": 25}));
        let managed = vec!["mir".to_string(), "hdr".to_string()];
        let mut http = spec()["http"].as_array().unwrap().clone();
        http.push(h);
        http.push(m);
        let ordered = order_routes(http.clone(), &managed);
        let names: Vec<_> = ordered.iter().map(|r| route_name(r).unwrap()).collect();
        assert_eq!(names, ["mir", "hdr", "primary", "other"]);
        // Mirror routes follow the split's weights.
        let spec2 = json!({"http": ordered});
        let out = render_weights(&spec2, &vs(&["primary"]), &managed, &hosts(), 30, 70).unwrap();
        assert_eq!(out[0].1[0]["route"][0]["weight"], json!(70));
        assert_eq!(out[0].1[1]["route"][0]["weight"], json!(100));
        let removed = remove_routes(&ordered, &managed);
        assert_eq!(removed, spec()["http"].as_array().unwrap().clone());
    }

    #[test]
    fn destination_rule_subsets_get_hash_labels() {
        let spec = json!({"host": "app", "subsets": [
            {"name": "canary", "labels": {"app": "x"}},
            {"name": "stable"},
            {"name": "other", "labels": {"v": "1"}},
        ]});
        let s = render_subsets(&spec, "canary", "stable", "abc", "def").unwrap();
        assert_eq!(
            s,
            json!([
                {"name": "canary", "labels": {"app": "x", HASH_LABEL: "abc"}},
                {"name": "stable", "labels": {HASH_LABEL: "def"}},
                {"name": "other", "labels": {"v": "1"}},
            ])
        );
        let applied = json!({"subsets": s});
        assert!(subsets_match(&applied, "canary", "stable", "abc", "def"));
        assert!(!subsets_match(&applied, "canary", "stable", "abc", "xyz"));
        let cleared = render_subsets(&applied, "canary", "stable", "", "").unwrap();
        assert_eq!(cleared, spec["subsets"]);
        assert!(render_subsets(&spec, "nope", "stable", "a", "b").is_err());
    }

    #[test]
    fn names_may_carry_a_namespace() {
        assert_eq!(split_name("vs", "ns"), ("ns", "vs"));
        assert_eq!(split_name("vs.other", "ns"), ("other", "vs"));
    }
}
