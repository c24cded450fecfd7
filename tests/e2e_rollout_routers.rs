//! Every traffic router driven by a real Rollout through `sluice controller`, on the real cluster
//! with the real CRDs (Istio VirtualService / DestinationRule, NGINX's core Ingress, SMI
//! TrafficSplit, Traefik TraefikService, Gateway API GRPCRoute).
//!
//! Each test owns a namespace, the Rollout's Services (`web-stable`, `web-canary`) and the route
//! objects, applied the way Argo CD does it (server-side apply under `argocd-controller`). It
//! starts `sluice controller` for that namespace, creates a Rollout whose `trafficRouting` names
//! the router(s), waits for the first revision, changes the image and then, at every pause, checks
//! that the weight written in every route object is the step's weight and that
//! `status.canary.weights` says the same, verified. Header and mirror routes are checked where
//! the router has them. The end is a completion (promote), an abort (the `status.abort` patch
//! `kubectl argo rollouts abort` sends) or the Rollout's deletion mid-update; after each, every
//! object Git owns must be exactly its manifest again (a server-side dry-run apply of the
//! manifest under `argocd-controller` changes nothing, and Sluice owns none of its fields), and
//! Sluice's own objects (NGINX's canary Ingress, the SMI TrafficSplit) send nothing to the
//! canary.
//!
//! An `experiment:` step whose template has a `weight` (SMI, Istio host and subset split) is
//! checked the same way: the template's Service gets its share beside canary and stable while
//! the Experiment runs, and loses it when the step ends (`experiment_weight`).
//!
//! Pauses are indefinite (`pause: {}`) where a step is checked, so a check can never race a
//! timer; one timed pause (`1s`) sits between steps that are checked later.

mod common;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use sluice::api::argo::rollout::{Rollout, RolloutPhase};
use sluice::engine::intent::{self, Intent};
use sluice::traffic::nginx::canary_ingress_name;

use common::controller::ControllerProcess;
use common::traffic::{
    api_for, assert_as_declared, experiment_split_verified, first_template_status, gitops_apply,
    name_of, wait_released,
};
use common::{TestEnv, TestNamespace, eventually};

const ROLLOUT: &str = "web";
const STABLE_SVC: &str = "web-stable";
const CANARY_SVC: &str = "web-canary";
/// Upper bound for anything the controller does in reaction to a change (a loaded 2-core
/// machine runs several of these tests and their controllers at once).
const TIMEOUT: Duration = Duration::from_secs(120);

// === the routers' objects ===

/// One router a Rollout can name, with the objects it works on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Istio host-level split: a VirtualService with the stable and canary Services.
    IstioHost,
    /// Istio subset-level split: a VirtualService with subsets of one host, and the
    /// DestinationRule defining them.
    IstioSubset,
    /// NGINX: a stable Ingress; Sluice generates the canary Ingress.
    Nginx,
    /// SMI: Sluice creates the TrafficSplit.
    Smi,
    /// Traefik: a weighted TraefikService.
    Traefik,
    /// Gateway API through the upstream plugin's config: two GRPCRoutes, one named by
    /// `grpcRoute`, one by `grpcRoutes[]`.
    GrpcRoutes,
}

fn virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "labels": {"app.kubernetes.io/instance": "web"}},
        "spec": {
            "hosts": ["web"],
            "http": [
                {"name": "primary", "retries": {"attempts": 3, "perTryTimeout": "2s"}, "route": [
                    {"destination": {"host": STABLE_SVC, "port": {"number": 80}}, "weight": 100},
                    {"destination": {"host": CANARY_SVC, "port": {"number": 80}}, "weight": 0},
                ]},
            ],
        },
    })
}

fn subset_virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "web-subsets"},
        "spec": {
            "hosts": ["web"],
            "http": [{"name": "primary", "route": [
                {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
                {"destination": {"host": "web", "subset": "canary"}, "weight": 0},
            ]}],
        },
    })
}

fn destination_rule() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {
            "host": "web",
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}},
            "subsets": [
                {"name": "canary", "labels": {"app": "web"}},
                {"name": "stable", "labels": {"app": "web"}},
            ],
        },
    })
}

fn stable_ingress() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "annotations": {"kubernetes.io/ingress.class": "nginx"}},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": "web.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": STABLE_SVC, "port": {"number": 80}}}},
            ]}}],
        },
    })
}

fn traefik_service() -> Value {
    json!({
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "TraefikService",
        "metadata": {"name": "web-wrr"},
        "spec": {"weighted": {
            "services": [
                {"name": STABLE_SVC, "port": 80, "weight": 100},
                {"name": CANARY_SVC, "port": 80, "weight": 0},
            ],
            "sticky": {"cookie": {"name": "lvl1"}},
        }},
    })
}

fn grpc_route(name: &str, service: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": [format!("{name}.grpc.example")],
            "rules": [{
                "matches": [{"method": {"type": "Exact", "service": service}}],
                "backendRefs": [
                    {"name": STABLE_SVC, "port": 80, "weight": 100},
                    {"name": CANARY_SVC, "port": 80, "weight": 0},
                ],
            }],
        },
    })
}

impl Kind {
    /// The objects Git owns for this router.
    fn manifests(self) -> Vec<Value> {
        match self {
            Kind::IstioHost => vec![virtual_service()],
            Kind::IstioSubset => vec![destination_rule(), subset_virtual_service()],
            Kind::Nginx => vec![stable_ingress()],
            Kind::Smi => vec![],
            Kind::Traefik => vec![traefik_service()],
            Kind::GrpcRoutes => vec![
                grpc_route("grpc-single", "demo.Echo"),
                grpc_route("grpc-listed", "demo.Admin"),
            ],
        }
    }

    /// The router's part of `trafficRouting`.
    fn routing(self) -> (&'static str, Value) {
        match self {
            Kind::IstioHost => (
                "istio",
                json!({"virtualService": {"name": "web", "routes": ["primary"]}}),
            ),
            Kind::IstioSubset => (
                "istio",
                json!({
                    "virtualService": {"name": "web-subsets", "routes": ["primary"]},
                    "destinationRule": {"name": "web", "canarySubsetName": "canary",
                                        "stableSubsetName": "stable"},
                }),
            ),
            Kind::Nginx => (
                "nginx",
                json!({"stableIngress": "web",
                       "additionalIngressAnnotations": {"canary-by-cookie": "beta"}}),
            ),
            Kind::Smi => ("smi", json!({"rootService": "web-root"})),
            Kind::Traefik => ("traefik", json!({"weightedTraefikServiceName": "web-wrr"})),
            Kind::GrpcRoutes => (
                "plugins",
                json!({"argoproj-labs/gatewayAPI": {
                    "grpcRoute": "grpc-single",
                    "grpcRoutes": [{"name": "grpc-listed", "useHeaderRoutes": true}],
                }}),
            ),
        }
    }

    /// The canary weight written in this router's objects, checking that stable gets the rest
    /// (and, for subsets, that the DestinationRule selects the Rollout's current hashes).
    async fn weight(self, h: &Harness, r: &Rollout) -> Result<i64, String> {
        let status = r.status.clone().unwrap_or_default();
        match self {
            Kind::IstioHost => {
                let spec = h.spec_of(&virtual_service()).await?;
                let route = http_route(&spec, "primary")?;
                split(&route, |d| d["destination"]["host"] == CANARY_SVC)
            }
            Kind::IstioSubset => {
                let dr = h.spec_of(&destination_rule()).await?;
                let expected = json!([
                    {"name": "canary", "labels": {"app": "web",
                        "rollouts-pod-template-hash": status.current_pod_hash}},
                    {"name": "stable", "labels": {"app": "web",
                        "rollouts-pod-template-hash": status.stable_rs}},
                ]);
                if dr["subsets"] != expected {
                    return Err(format!(
                        "DestinationRule subsets {} are not {expected}",
                        dr["subsets"]
                    ));
                }
                let spec = h.spec_of(&subset_virtual_service()).await?;
                let route = http_route(&spec, "primary")?;
                split(&route, |d| d["destination"]["subset"] == "canary")
            }
            Kind::Nginx => {
                let ingresses: Api<Ingress> = Api::namespaced(h.env.client.clone(), &h.ns.name);
                let Some(canary) = ingresses
                    .get_opt(&canary_ingress_name(ROLLOUT, "web"))
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(0); // no canary Ingress: NGINX sends the canary nothing
                };
                let a = canary.metadata.annotations.unwrap_or_default();
                if a.get("nginx.ingress.kubernetes.io/canary")
                    .map(String::as_str)
                    != Some("true")
                {
                    return Err(format!("canary Ingress without canary: \"true\": {a:?}"));
                }
                if a.get("nginx.ingress.kubernetes.io/canary-by-cookie")
                    .map(String::as_str)
                    != Some("beta")
                {
                    return Err(format!("additionalIngressAnnotations missing: {a:?}"));
                }
                a.get("nginx.ingress.kubernetes.io/canary-weight")
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| format!("no canary-weight annotation: {a:?}"))
            }
            Kind::Smi => {
                let ts = h.traffic_split().await?;
                let owner = ts.metadata.owner_references.clone().unwrap_or_default();
                if !owner
                    .iter()
                    .any(|o| o.kind == "Rollout" && o.name == ROLLOUT)
                {
                    return Err(format!("TrafficSplit not owned by the Rollout: {owner:?}"));
                }
                if ts.data["spec"]["service"] != "web-root" {
                    return Err(format!("rootService not used: {}", ts.data["spec"]));
                }
                let backends = ts.data["spec"]["backends"].clone();
                let weight_of = |svc: &str| {
                    backends.as_array().into_iter().flatten().find_map(|b| {
                        (b["service"] == svc).then(|| match &b["weight"] {
                            Value::String(s) => s.parse::<i64>().ok(),
                            w => w.as_i64(),
                        })?
                    })
                };
                match (weight_of(CANARY_SVC), weight_of(STABLE_SVC)) {
                    (Some(c), Some(s)) if c + s == 100 => Ok(c),
                    _ => Err(format!("TrafficSplit backends {backends}")),
                }
            }
            Kind::Traefik => {
                let spec = h.spec_of(&traefik_service()).await?;
                if spec["weighted"]["sticky"] != traefik_service()["spec"]["weighted"]["sticky"] {
                    return Err(format!("sticky changed: {spec}"));
                }
                split(&spec["weighted"]["services"], |s| s["name"] == CANARY_SVC)
            }
            Kind::GrpcRoutes => {
                let mut seen = Vec::new();
                for m in self.manifests() {
                    let spec = h.spec_of(&m).await?;
                    seen.push(split(&spec["rules"][0]["backendRefs"], |b| {
                        b["name"] == CANARY_SVC
                    })?);
                }
                if seen.windows(2).any(|w| w[0] != w[1]) {
                    return Err(format!("the GRPCRoutes disagree: {seen:?}"));
                }
                Ok(seen[0])
            }
        }
    }
}

impl Kind {
    /// Every destination this router's object sends traffic to, in order, with its weight.
    async fn destinations(self, h: &Harness, _r: &Rollout) -> Result<Vec<(String, i64)>, String> {
        let weight = |w: &Value| match w {
            Value::String(s) => s.parse::<i64>().ok(),
            w => w.as_i64(),
        };
        match self {
            Kind::Smi => {
                let ts = h.traffic_split().await?;
                Ok(ts.data["spec"]["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        let service = b["service"].as_str().unwrap_or_default().to_string();
                        (service, weight(&b["weight"]).unwrap_or(-1))
                    })
                    .collect())
            }
            Kind::IstioHost | Kind::IstioSubset => {
                let vs = if self == Kind::IstioHost {
                    virtual_service()
                } else {
                    subset_virtual_service()
                };
                let route = http_route(&h.spec_of(&vs).await?, "primary")?;
                Ok(route["route"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        // A subset stands for the Service of its role.
                        let name = match d["destination"]["subset"].as_str() {
                            Some("stable") => STABLE_SVC,
                            Some("canary") => CANARY_SVC,
                            _ => d["destination"]["host"].as_str().unwrap_or_default(),
                        };
                        (name.to_string(), weight(&d["weight"]).unwrap_or(0))
                    })
                    .collect())
            }
            other => Err(format!("{other:?}: destinations not read by this test")),
        }
    }
}

/// The HTTP route `name` of a VirtualService spec.
fn http_route(spec: &Value, name: &str) -> Result<Value, String> {
    spec["http"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == name)
        .cloned()
        .ok_or_else(|| format!("no http route {name:?} in {spec}"))
}

/// The canary weight of a list of weighted destinations (Istio `route`, Traefik `services`,
/// Gateway API `backendRefs`): exactly one canary and one stable entry adding up to 100.
fn split(list: &Value, is_canary: impl Fn(&Value) -> bool) -> Result<i64, String> {
    let list = list
        .get("route")
        .unwrap_or(list)
        .as_array()
        .ok_or_else(|| format!("not a list of destinations: {list}"))?;
    let weight = |v: &Value| v["weight"].as_i64().unwrap_or(0);
    match list.iter().partition::<Vec<&Value>, _>(|d| is_canary(d)) {
        (canary, stable) if canary.len() == 1 && stable.len() == 1 => {
            let (c, s) = (weight(canary[0]), weight(stable[0]));
            if c + s == 100 {
                Ok(c)
            } else {
                Err(format!("weights {c} + {s} != 100 in {list:?}"))
            }
        }
        _ => Err(format!(
            "not one canary and one stable destination: {list:?}"
        )),
    }
}

// === the Rollout ===

struct Harness {
    env: TestEnv,
    ns: TestNamespace,
    ctl: ControllerProcess,
    rollouts: Api<Rollout>,
    /// Git's objects as Git's apply stored them, by manifest name.
    originals: Vec<(Value, DynamicObject)>,
}

fn template(image: &str) -> Value {
    json!({"metadata": {"labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": image,
                                    "ports": [{"containerPort": 8080}]}]}})
}

impl Harness {
    /// A namespace with the Rollout's Services and a controller for it, or `None` without a
    /// test environment.
    async fn start(prefix: &str) -> Option<Harness> {
        let env = common::test_env().await?;
        let ns = env.namespace(prefix).await;
        for svc in [STABLE_SVC, CANARY_SVC] {
            env.create(
                &ns.name,
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": svc},
                    "spec": {"selector": {"app": "web"},
                             "ports": [{"port": 80, "targetPort": 8080}]},
                }),
            )
            .await;
        }
        let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
        let rollouts = Api::namespaced(env.client.clone(), &ns.name);
        Some(Harness {
            env,
            ns,
            ctl,
            rollouts,
            originals: Vec::new(),
        })
    }

    /// Applies `manifest` as Git would and remembers what was stored.
    async fn apply_git(&mut self, manifest: Value) {
        let stored = gitops_apply(&self.env.client, &self.ns.name, &manifest).await;
        self.originals
            .retain(|(m, _)| name_of(m) != name_of(&manifest) || m["kind"] != manifest["kind"]);
        self.originals.push((manifest, stored));
    }

    /// The SMI TrafficSplit Sluice made for the Rollout.
    async fn traffic_split(&self) -> Result<DynamicObject, String> {
        let (ar, _) = kube::discovery::group(&self.env.client, "split.smi-spec.io")
            .await
            .map_err(|e| e.to_string())?
            .recommended_kind("TrafficSplit")
            .ok_or("the cluster serves no TrafficSplit")?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.env.client.clone(), &self.ns.name, &ar);
        api.get(ROLLOUT).await.map_err(|e| e.to_string())
    }

    async fn spec_of(&self, manifest: &Value) -> Result<Value, String> {
        let api = api_for(&self.env.client, &self.ns.name, manifest).await;
        api.get(name_of(manifest))
            .await
            .map(|o| o.data["spec"].clone())
            .map_err(|e| format!("{}: {e}", name_of(manifest)))
    }

    /// Creates the Rollout (`routing` is its whole `trafficRouting`) and waits until its first
    /// revision is Healthy.
    async fn create_rollout(&self, routing: Value, steps: Value) {
        self.submit_rollout(routing, steps).await;
        self.wait("the first revision to be Healthy", |s| {
            !s.stable_rs.is_empty()
                && s.stable_rs == s.current_pod_hash
                && s.available_replicas == 2
                && s.phase == Some(RolloutPhase::Healthy)
        })
        .await;
    }

    /// Creates the Rollout.
    async fn submit_rollout(&self, routing: Value, steps: Value) {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": ROLLOUT},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template("registry.invalid/web:1"),
                "strategy": {"canary": {
                    "canaryService": CANARY_SVC, "stableService": STABLE_SVC,
                    "trafficRouting": routing,
                    "steps": steps,
                }},
            },
        }))
        .expect("the Rollout");
        self.rollouts
            .create(&PostParams::default(), &rollout)
            .await
            .expect("creating the Rollout");
    }

    /// A new revision (the image changes), as a Git commit would make it.
    async fn update(&self) {
        let patch = json!({"spec": {"template": template("registry.invalid/web:2")}});
        self.rollouts
            .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("a new revision");
    }

    /// Waits until the Rollout's status satisfies `check`.
    async fn wait(
        &self,
        what: &str,
        check: impl Fn(&sluice::api::argo::rollout::RolloutStatus) -> bool,
    ) -> Rollout {
        let what = format!("{what} (controller log: {})", self.ctl.log.display());
        let check = &check;
        eventually(TIMEOUT, &what, || async move {
            let r = self.rollouts.get(ROLLOUT).await.ok()?;
            let s = r.status.clone().unwrap_or_default();
            check(&s).then_some(r)
        })
        .await
    }

    /// Waits until the update pauses at step `index` with the routers verified at `weight`, then
    /// checks every router's objects say `weight`.
    async fn paused_at(&self, index: i32, weight: i32, kinds: &[Kind]) -> Rollout {
        let r = self
            .wait(
                &format!("a pause at step {index} with weight {weight} verified"),
                |s| {
                    s.current_step_index == Some(index)
                        && !s.pause_conditions.is_empty()
                        && s.current_pod_hash != s.stable_rs
                        && s.canary.weights.as_ref().is_some_and(|w| {
                            w.canary.weight == weight
                                && w.stable.weight == 100 - weight
                                && w.verified == Some(true)
                        })
                },
            )
            .await;
        self.assert_weights(&r, weight, kinds).await;
        r
    }

    async fn assert_weights(&self, r: &Rollout, weight: i32, kinds: &[Kind]) {
        for kind in kinds {
            let written = kind
                .weight(self, r)
                .await
                .unwrap_or_else(|e| panic!("{kind:?} at weight {weight}: {e}"));
            assert_eq!(
                written,
                i64::from(weight),
                "{kind:?}: the weight written in the route object"
            );
        }
    }

    /// Sends what `kubectl argo rollouts <intent>` sends.
    async fn intent(&self, intent: Intent) {
        let r = self.rollouts.get(ROLLOUT).await.expect("the Rollout");
        let (spec_patch, status_patch) = intent::patches(intent, &r);
        if let Some(p) = spec_patch {
            self.rollouts
                .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("intent (spec)");
        }
        if let Some(p) = status_patch {
            self.rollouts
                .patch_status(ROLLOUT, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("intent (status)");
        }
    }

    /// Waits for the promoted revision to be stable with all traffic back on the stable Service.
    async fn completed(&self) -> Rollout {
        self.wait(
            "the update to complete with traffic back on the stable Service",
            |s| {
                s.stable_rs == s.current_pod_hash
                    && s.phase == Some(RolloutPhase::Healthy)
                    && s.canary
                        .weights
                        .as_ref()
                        .is_some_and(|w| w.canary.weight == 0 && w.verified == Some(true))
            },
        )
        .await
    }

    /// Every object Git owns is released and exactly as declared; Sluice's own objects send
    /// the canary nothing.
    async fn assert_given_back(&self, kinds: &[Kind]) {
        let client = &self.env.client;
        let mut released = Vec::new();
        for (manifest, original) in &self.originals {
            let live = wait_released(client, &self.ns.name, manifest, TIMEOUT).await;
            assert_as_declared(client, &self.ns.name, manifest, original).await;
            released.push((manifest, live.metadata.resource_version));
        }
        // Given back for good: nothing writes them again (a router that reads the released
        // object as "not applied" would take it back, release it, and so on).
        tokio::time::sleep(Duration::from_secs(3)).await;
        for (manifest, version) in released {
            let api = api_for(client, &self.ns.name, manifest).await;
            let live = api
                .get(name_of(manifest))
                .await
                .expect("the released object");
            assert_eq!(
                live.metadata.resource_version,
                version,
                "{} was written again after its release",
                name_of(manifest)
            );
        }
        let r = self.rollouts.get_opt(ROLLOUT).await.expect("get");
        if kinds.contains(&Kind::Nginx) {
            let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &self.ns.name);
            eventually(
                TIMEOUT,
                "the canary Ingress to be deleted at release",
                || async {
                    ingresses
                        .get_opt(&canary_ingress_name(ROLLOUT, "web"))
                        .await
                        .ok()?
                        .is_none()
                        .then_some(())
                },
            )
            .await;
        }
        if let (Some(r), true) = (r, kinds.contains(&Kind::Smi)) {
            assert_eq!(
                Kind::Smi.weight(self, &r).await,
                Ok(0),
                "the TrafficSplit sends everything to stable"
            );
        }
    }
}

fn header_step() -> Value {
    json!({"setHeaderRoute": {"name": "header", "match": [
        {"headerName": "x-canary", "headerValue": {"exact": "yes"}},
    ]}})
}

fn mirror_step() -> Value {
    json!({"setMirrorRoute": {"name": "mirror", "percentage": 50, "match": [
        {"path": {"prefix": "/api"}},
    ]}})
}

/// `trafficRouting` naming `kinds`, with `managedRoutes`.
fn routing(kinds: &[Kind], managed: &[&str]) -> Value {
    let mut routing = serde_json::Map::new();
    for kind in kinds {
        let (field, config) = kind.routing();
        routing.insert(field.into(), config);
    }
    if !managed.is_empty() {
        let names: Vec<Value> = managed.iter().map(|n| json!({"name": n})).collect();
        routing.insert("managedRoutes".into(), Value::Array(names));
    }
    Value::Object(routing)
}

/// setWeight 20, pause, setWeight 60, pause: pauses at steps 1 and 3.
fn two_weights() -> Value {
    json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}])
}

/// One router through a whole update: weights 20 and 60 checked at their pauses, promoted to
/// completion, every object given back.
async fn completes(prefix: &str, kind: Kind) {
    let Some(mut h) = Harness::start(prefix).await else {
        return;
    };
    for m in kind.manifests() {
        h.apply_git(m).await;
    }
    h.create_rollout(routing(&[kind], &[]), two_weights()).await;
    h.update().await;
    h.paused_at(1, 20, &[kind]).await;
    h.intent(Intent::Promote).await;
    h.paused_at(3, 60, &[kind]).await;
    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&[kind]).await;
}

/// A canary `experiment:` step whose template has a `weight` (Argo's traffic-routed
/// experiments): while its Experiment runs, the router sends that share to the template's
/// Service, taken from stable (setWeight 20 + template 10: 20 / 10 / 70), and
/// `status.canary.weights.additional` says so, verified; once the step is promoted the share goes
/// back to stable (20 / 80, no extra destination); at the end every object is given back.
async fn experiment_weight(prefix: &str, kind: Kind) {
    let Some(mut h) = Harness::start(prefix).await else {
        return;
    };
    for m in kind.manifests() {
        h.apply_git(m).await;
    }
    let steps = json!([
        {"setWeight": 20},
        {"experiment": {"templates": [{"name": "exp", "specRef": "canary", "weight": 10}]}},
        {"pause": {}},
    ]);
    h.create_rollout(routing(&[kind], &[]), steps).await;
    h.update().await;
    let r = h
        .wait(
            "the experiment step with its template's weight verified",
            |s| s.current_step_index == Some(1) && experiment_split_verified(s, 20, 10),
        )
        .await;
    let status = r.status.clone().unwrap_or_default();
    let template =
        first_template_status(&h.env.client, &h.ns.name, &status.canary.current_experiment).await;
    let service = template
        .service_name
        .clone()
        .expect("the template's Service");
    let additional = &status.canary.weights.as_ref().unwrap().additional[0];
    assert_eq!(
        additional.service_name, service,
        "status names the template's Service"
    );
    assert_eq!(
        Some(additional.pod_template_hash.clone()),
        template.pod_template_hash,
        "status names the template's pod-template hash"
    );
    let mut written = kind.destinations(&h, &r).await.expect("the route object");
    written.sort();
    let mut expected = vec![
        (CANARY_SVC.to_string(), 20),
        (service.clone(), 10),
        (STABLE_SVC.to_string(), 70),
    ];
    expected.sort();
    assert_eq!(
        written, expected,
        "{kind:?}: the destinations written during the experiment step"
    );
    h.intent(Intent::Promote).await;
    let r = h.paused_at(2, 20, &[kind]).await;
    assert_eq!(
        r.status
            .unwrap_or_default()
            .canary
            .weights
            .unwrap()
            .additional,
        vec![],
        "no extra destination once the experiment step is over"
    );
    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&[kind]).await;
}

// === one test per router ===

#[tokio::test]
async fn istio_host_split_with_header_and_mirror_routes_through_a_rollout() {
    let Some(mut h) = Harness::start("ro-istio-host").await else {
        return;
    };
    h.apply_git(virtual_service()).await;
    let steps = json!([
        {"setWeight": 20}, {"pause": {}},
        header_step(), mirror_step(), {"pause": {"duration": "1s"}},
        {"setWeight": 60}, {"pause": {}},
    ]);
    h.create_rollout(routing(&[Kind::IstioHost], &["header", "mirror"]), steps)
        .await;
    h.update().await;

    let r = h.paused_at(1, 20, &[Kind::IstioHost]).await;
    let spec = h
        .spec_of(&virtual_service())
        .await
        .expect("the VirtualService");
    let names: Vec<&str> = spec["http"]
        .as_array()
        .expect("http")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["primary"], "no managed route before its step");
    assert_eq!(
        spec["http"][0]["retries"],
        virtual_service()["spec"]["http"][0]["retries"],
        "Git's fields of the split route are kept"
    );
    drop(r);
    h.intent(Intent::Promote).await;

    h.paused_at(6, 60, &[Kind::IstioHost]).await;
    let spec = h
        .spec_of(&virtual_service())
        .await
        .expect("the VirtualService");
    let names: Vec<&str> = spec["http"]
        .as_array()
        .expect("http")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["header", "mirror", "primary"],
        "managed routes first, in managedRoutes order"
    );
    let header = http_route(&spec, "header").expect("header route");
    assert_eq!(
        header["match"],
        json!([{"headers": {"x-canary": {"exact": "yes"}}}])
    );
    assert_eq!(
        header["route"],
        json!([{"destination": {"host": CANARY_SVC, "port": {"number": 80}}, "weight": 100}])
    );
    let mirror = http_route(&spec, "mirror").expect("mirror route");
    assert_eq!(mirror["match"], json!([{"uri": {"prefix": "/api"}}]));
    assert_eq!(
        mirror["mirror"],
        json!({"host": CANARY_SVC, "port": {"number": 80}})
    );
    assert_eq!(mirror["mirrorPercentage"], json!({"value": 50}));
    assert_eq!(
        split(&mirror, |d| d["destination"]["host"] == CANARY_SVC),
        Ok(60),
        "the mirror route carries the step's split"
    );

    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&[Kind::IstioHost]).await;
}

#[tokio::test]
async fn istio_subset_split_through_a_rollout() {
    completes("ro-istio-subset", Kind::IstioSubset).await;
}

#[tokio::test]
async fn nginx_canary_ingress_with_a_header_route_through_a_rollout() {
    let Some(mut h) = Harness::start("ro-nginx").await else {
        return;
    };
    h.apply_git(stable_ingress()).await;
    let steps = json!([
        {"setWeight": 20}, {"pause": {}},
        header_step(), {"setWeight": 60}, {"pause": {}},
    ]);
    h.create_rollout(routing(&[Kind::Nginx], &["header"]), steps)
        .await;
    h.update().await;
    h.paused_at(1, 20, &[Kind::Nginx]).await;
    h.intent(Intent::Promote).await;
    h.paused_at(4, 60, &[Kind::Nginx]).await;
    let ingresses: Api<Ingress> = Api::namespaced(h.env.client.clone(), &h.ns.name);
    let canary = ingresses
        .get(&canary_ingress_name(ROLLOUT, "web"))
        .await
        .expect("the canary Ingress");
    let a = canary.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        a.get("nginx.ingress.kubernetes.io/canary-by-header")
            .map(String::as_str),
        Some("x-canary")
    );
    assert_eq!(
        a.get("nginx.ingress.kubernetes.io/canary-by-header-value")
            .map(String::as_str),
        Some("yes")
    );
    let backend = canary
        .spec
        .clone()
        .unwrap_or_default()
        .rules
        .unwrap_or_default()[0]
        .http
        .as_ref()
        .expect("http")
        .paths[0]
        .backend
        .service
        .clone()
        .expect("a Service backend");
    assert_eq!(backend.name, CANARY_SVC);
    let owner = canary.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owner.iter().map(|o| o.kind.as_str()).collect::<Vec<_>>(),
        ["Rollout"]
    );
    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&[Kind::Nginx]).await;
    // The stable Ingress was only ever read.
    let stable = api_for(&h.env.client, &h.ns.name, &stable_ingress())
        .await
        .get("web")
        .await
        .expect("the stable Ingress");
    assert_eq!(
        stable.metadata.resource_version, h.originals[0].1.metadata.resource_version,
        "the stable Ingress is never written"
    );
}

#[tokio::test]
async fn smi_traffic_split_through_a_rollout() {
    completes("ro-smi", Kind::Smi).await;
}

#[tokio::test]
async fn smi_experiment_step_template_weight_through_a_rollout() {
    experiment_weight("ro-smi-exp", Kind::Smi).await;
}

#[tokio::test]
async fn istio_host_split_experiment_step_template_weight_through_a_rollout() {
    experiment_weight("ro-istio-exp", Kind::IstioHost).await;
}

#[tokio::test]
async fn istio_subset_split_experiment_step_template_weight_through_a_rollout() {
    experiment_weight("ro-istio-sub-exp", Kind::IstioSubset).await;
}

#[tokio::test]
async fn traefik_weighted_service_through_a_rollout() {
    completes("ro-traefik", Kind::Traefik).await;
}

/// `kubectl argo rollouts abort` at weight 60: all traffic back to stable at once, then the
/// object is Git's again.
#[tokio::test]
async fn traefik_abort_through_a_rollout_gives_the_object_back() {
    let Some(mut h) = Harness::start("ro-traefik-abort").await else {
        return;
    };
    h.apply_git(traefik_service()).await;
    h.create_rollout(routing(&[Kind::Traefik], &[]), two_weights())
        .await;
    h.update().await;
    h.paused_at(1, 20, &[Kind::Traefik]).await;
    h.intent(Intent::Promote).await;
    h.paused_at(3, 60, &[Kind::Traefik]).await;
    h.intent(Intent::Abort).await;
    let r = h
        .wait("the abort to put all traffic back on stable", |s| {
            s.abort
                && s.phase == Some(RolloutPhase::Degraded)
                && s.canary
                    .weights
                    .as_ref()
                    .is_some_and(|w| w.canary.weight == 0 && w.verified == Some(true))
        })
        .await;
    let status = r.status.clone().unwrap_or_default();
    assert_ne!(
        status.stable_rs, status.current_pod_hash,
        "an abort does not promote"
    );
    h.assert_given_back(&[Kind::Traefik]).await;
}

/// Deleting the Rollout mid-update (weight 20, a header route in place) must not leave Git's
/// object half-shifted: the controller releases it before the Rollout goes (finalizer
/// `sluice.dev/traffic`).
#[tokio::test]
async fn deleting_a_rollout_mid_update_gives_the_virtual_service_back() {
    let Some(mut h) = Harness::start("ro-istio-delete").await else {
        return;
    };
    h.apply_git(virtual_service()).await;
    let steps = json!([{"setWeight": 20}, header_step(), {"pause": {}}, {"setWeight": 60}]);
    h.create_rollout(routing(&[Kind::IstioHost], &["header"]), steps)
        .await;
    h.update().await;
    let r = h.paused_at(2, 20, &[Kind::IstioHost]).await;
    let spec = h
        .spec_of(&virtual_service())
        .await
        .expect("the VirtualService");
    assert!(
        http_route(&spec, "header").is_ok(),
        "precondition: the header route is in place: {spec}"
    );
    assert_eq!(
        r.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|f| f.as_str() == "sluice.dev/traffic")
            .count(),
        1,
        "the Rollout holds the traffic finalizer while traffic is shifted (finalizers: {:?})",
        r.metadata.finalizers
    );
    h.rollouts
        .delete(ROLLOUT, &DeleteParams::default())
        .await
        .expect("deleting the Rollout");
    eventually(TIMEOUT, "the Rollout to be gone", || async {
        h.rollouts
            .get_opt(ROLLOUT)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    h.assert_given_back(&[Kind::IstioHost]).await;
}

// === several routers on one Rollout ===

/// NGINX, SMI and Traefik on one Rollout. The TraefikService is missing when the update starts
/// (Git has not synced it yet): the other routers take weight 20 but the step waits, because
/// one router cannot confirm it. Once Git applies it, every router gets every weight, and all
/// are given back at the end.
#[tokio::test]
async fn several_routers_on_one_rollout_move_together() {
    let Some(mut h) = Harness::start("ro-several").await else {
        return;
    };
    let kinds = [Kind::Nginx, Kind::Smi, Kind::Traefik];
    h.apply_git(stable_ingress()).await;
    h.apply_git(traefik_service()).await;
    h.create_rollout(routing(&kinds, &[]), two_weights()).await;

    // Git prunes the TraefikService (to re-create it later)...
    api_for(&h.env.client, &h.ns.name, &traefik_service())
        .await
        .delete("web-wrr", &DeleteParams::default())
        .await
        .expect("deleting the TraefikService");
    h.update().await;
    // ... so NGINX and SMI take the step's weight, but the step cannot be confirmed.
    let r = h
        .wait("the new revision to start", |s| {
            !s.current_pod_hash.is_empty() && s.current_pod_hash != s.stable_rs
        })
        .await;
    eventually(TIMEOUT, "NGINX and SMI at weight 20", || async {
        let r = h.rollouts.get(ROLLOUT).await.ok()?;
        let nginx = Kind::Nginx.weight(&h, &r).await.ok()?;
        let smi = Kind::Smi.weight(&h, &r).await.ok()?;
        (nginx == 20 && smi == 20).then_some(())
    })
    .await;
    drop(r);
    for _ in 0..20 {
        let r = h.rollouts.get(ROLLOUT).await.expect("the Rollout");
        let s = r.status.clone().unwrap_or_default();
        assert_eq!(
            s.current_step_index,
            Some(0),
            "the setWeight step must wait for every router (status: {s:?})"
        );
        assert!(
            s.canary
                .weights
                .as_ref()
                .is_none_or(|w| w.verified != Some(true)),
            "weights verified without the Traefik router: {:?}",
            s.canary.weights
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    h.apply_git(traefik_service()).await;
    h.paused_at(1, 20, &kinds).await;
    h.intent(Intent::Promote).await;
    h.paused_at(3, 60, &kinds).await;
    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&kinds).await;
}

// === Gateway API GRPCRoute ===

/// Two GRPCRoutes, one named by the plugin config's `grpcRoute`, one by `grpcRoutes[]`: both
/// get every weight and the header route (a rule matching the method and the header, to the
/// canary), and are Git's again after completion.
#[tokio::test]
async fn gateway_api_grpc_routes_through_a_rollout() {
    let Some(mut h) = Harness::start("ro-grpc").await else {
        return;
    };
    for m in Kind::GrpcRoutes.manifests() {
        h.apply_git(m).await;
    }
    let steps = json!([
        {"setWeight": 20}, {"pause": {}},
        header_step(), {"setWeight": 60}, {"pause": {}},
    ]);
    h.create_rollout(routing(&[Kind::GrpcRoutes], &["header"]), steps)
        .await;
    h.update().await;
    h.paused_at(1, 20, &[Kind::GrpcRoutes]).await;
    h.intent(Intent::Promote).await;
    h.paused_at(4, 60, &[Kind::GrpcRoutes]).await;
    for (m, service) in Kind::GrpcRoutes
        .manifests()
        .iter()
        .zip(["demo.Echo", "demo.Admin"])
    {
        let spec = h.spec_of(m).await.expect("the GRPCRoute");
        let rules = spec["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 2, "Git's rule and the header rule: {spec}");
        assert_eq!(
            rules[1]["matches"],
            json!([{
                "method": {"type": "Exact", "service": service},
                "headers": [{"name": "x-canary", "type": "Exact", "value": "yes"}],
            }]),
            "{}: the header rule ANDs Git's method match with the header",
            name_of(m)
        );
        let refs = rules[1]["backendRefs"].as_array().expect("backendRefs");
        assert_eq!(
            refs.iter()
                .map(|b| (b["name"].clone(), b["port"].clone()))
                .collect::<Vec<_>>(),
            [(json!(CANARY_SVC), json!(80))],
            "the header rule sends to the canary alone"
        );
    }
    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&[Kind::GrpcRoutes]).await;
}

// === route changes wake the Rollout ===

/// The sum of the samples in `/metrics` text whose name and first labels start with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A Git re-sync puts a GRPCRoute's weights back to its manifest (100/0) mid-update, during an
/// indefinite pause, when nothing else wakes the Rollout (no timer, no pod or ReplicaSet
/// change). The controller watches route objects: the change wakes the Rollout, which reads the
/// route from its cache, sees weight 0 and writes 20 again within seconds, with nothing about the
/// Rollout changed by anyone. (Without the route watch the next look would be the progress
/// deadline's, minutes later.) The route re-recorded after the re-sync is Git's again at the end.
#[tokio::test]
async fn a_git_resync_of_a_route_mid_update_is_undone_through_the_route_watch() {
    let Some(mut h) = Harness::start("ro-resync").await else {
        return;
    };
    for m in Kind::GrpcRoutes.manifests() {
        h.apply_git(m).await;
    }
    h.create_rollout(routing(&[Kind::GrpcRoutes], &[]), two_weights())
        .await;
    h.update().await;
    h.paused_at(1, 20, &[Kind::GrpcRoutes]).await;
    // Settled: the status written at the pause has been seen, nothing is pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = h.rollouts.get(ROLLOUT).await.expect("the Rollout");

    // The same manifest again (what Git declares did not change): `originals` stays as is.
    let manifest = grpc_route("grpc-listed", "demo.Admin");
    let reset = gitops_apply(&h.env.client, &h.ns.name, &manifest).await;
    assert_eq!(
        split(&reset.data["spec"]["rules"][0]["backendRefs"], |b| {
            b["name"] == CANARY_SVC
        }),
        Ok(0),
        "precondition: Git's re-sync sends the canary nothing"
    );
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(15),
        &format!(
            "the controller to put weight 20 back on the re-synced GRPCRoute (controller log: {})",
            h.ctl.log.display()
        ),
        || async {
            let spec = h.spec_of(&manifest).await.ok()?;
            let weight = split(&spec["rules"][0]["backendRefs"], |b| {
                b["name"] == CANARY_SVC
            });
            (weight == Ok(20)).then_some(())
        },
    )
    .await;
    eprintln!(
        "weight put back {:?} after Git's re-sync",
        started.elapsed()
    );
    let now = h.rollouts.get(ROLLOUT).await.expect("the Rollout");
    assert_eq!(
        (now.metadata.generation, &now.spec),
        (settled.metadata.generation, &settled.spec),
        "nothing about the Rollout changed: only the route's watch could wake it"
    );
    // Still paused at the same step, and both routes verified at 20 again.
    h.paused_at(1, 20, &[Kind::GrpcRoutes]).await;
    h.intent(Intent::Promote).await;
    h.paused_at(3, 60, &[Kind::GrpcRoutes]).await;

    // Reconciles of the paused Rollout (woken by an annotation each) read its two routes from
    // the cache: the controller sends no GET for a GRPCRoute.
    let before = h.ctl.metrics().await;
    for i in 0..8 {
        let poke = json!({"metadata": {"annotations": {"test.sluice.dev/poke": i.to_string()}}});
        h.rollouts
            .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&poke))
            .await
            .expect("annotating the Rollout");
        tokio::time::sleep(Duration::from_millis(1250)).await;
    }
    let after = h.ctl.metrics().await;
    let reconciles =
        sample(&after, "rollout_reconcile_count") - sample(&before, "rollout_reconcile_count");
    assert!(
        reconciles >= 4.0,
        "the annotations woke the Rollout ({reconciles} reconciles)"
    );
    let gets = |m: &str| {
        sample(
            m,
            r#"controller_clientset_k8s_request_total{kind="grpcroutes",verb="get""#,
        )
    };
    let patches = |m: &str| {
        sample(
            m,
            r#"controller_clientset_k8s_request_total{kind="grpcroutes",verb="patch""#,
        )
    };
    assert!(
        patches(&after) >= 2.0,
        "GRPCRoute requests are counted under this label (the weight writes): {after}"
    );
    assert_eq!(
        gets(&after),
        gets(&before),
        "{reconciles} reconciles of a routed Rollout sent GETs for its GRPCRoutes"
    );
    h.intent(Intent::Promote).await;
    h.completed().await;
    h.assert_given_back(&[Kind::GrpcRoutes]).await;
}

// === maxTrafficWeight with Istio ===

/// Istio weights are percentages (Argo Rollouts refuses `maxTrafficWeight` for Istio too): a
/// Rollout asking for 1000 is `InvalidSpec`, naming the field, and its VirtualService is never
/// written.
#[tokio::test]
async fn istio_with_max_traffic_weight_is_an_invalid_spec() {
    let Some(mut h) = Harness::start("ro-istio-max").await else {
        return;
    };
    h.apply_git(virtual_service()).await;
    let mut routing = routing(&[Kind::IstioHost], &[]);
    routing["maxTrafficWeight"] = json!(1000);
    h.submit_rollout(routing, json!([{"setWeight": 300}, {"pause": {}}]))
        .await;
    let r = h
        .wait("an InvalidSpec condition", |s| {
            s.conditions.iter().any(|c| c.type_ == "InvalidSpec")
        })
        .await;
    let status = r.status.clone().unwrap_or_default();
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .expect("InvalidSpec");
    assert!(
        condition
            .message
            .contains("spec.strategy.canary.trafficRouting.maxTrafficWeight")
            && condition.message.contains("istio"),
        "{}",
        condition.message
    );
    assert_eq!(status.phase, Some(RolloutPhase::Degraded));
    let vs = api_for(&h.env.client, &h.ns.name, &virtual_service())
        .await
        .get("web")
        .await
        .expect("the VirtualService");
    assert_eq!(
        vs.metadata.resource_version, h.originals[0].1.metadata.resource_version,
        "the VirtualService is never written"
    );
}
