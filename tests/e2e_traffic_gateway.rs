//! The Gateway API router against the real cluster and a real data plane: Traefik (started by
//! `tests/env/up`) proxies to kwok pods served by the echo backend in the pods' network
//! namespace, which answers with the pod IP a request reached.
//!
//! Each test owns a namespace with two stable and two canary Pods, Services `app-stable` /
//! `app-canary`, a Gateway (class `traefik`, its own hostname) and an HTTPRoute applied the way
//! Argo CD does it (server-side apply, field manager `argocd-controller`). The router is driven
//! directly, as the Rollout controller will drive it. After every weight the test waits until
//! Traefik's API shows the new weights, then sends N requests and checks the canary count lies
//! in the exact 99.9% binomial interval of the weight. After `release` the route must be Git's
//! again: a dry-run apply of the manifest under `argocd-controller` changes nothing, and no
//! manager but `argocd-controller` owns any of the route's spec (Argo Rollouts #3854).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use sluice::api::argo::rollout::{HeaderRoutingMatch, StringMatch};
use sluice::traffic::gateway_api::GatewayApiRouter;
use sluice::traffic::{HeaderRoute, Router, RouterContext, Weights};

use common::traffic::binomial_interval;
use common::{GatewayEnv, TestEnv, eventually};

const GITOPS_MANAGER: &str = "argocd-controller";
/// Requests per measurement: the 99.9% interval at p = 0.3 is about ±30, so a router that is
/// off by 10 points fails while the test stays well under a second per step.
const N: usize = 400;

fn gvk_api(env: &TestEnv, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind);
    Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

fn routes(env: &TestEnv, ns: &str) -> Api<DynamicObject> {
    gvk_api(env, ns, "HTTPRoute", "httproutes")
}

/// The HTTPRoute as Git declares it.
fn route_manifest(ns: &str, host: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "app", "namespace": ns, "labels": {"app.kubernetes.io/instance": "demo"}},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": [host],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"name": "app-stable", "port": 80, "weight": 100},
                    {"name": "app-canary", "port": 80, "weight": 0},
                ],
            }],
        },
    })
}

struct App {
    ns: String,
    host: String,
    gw: GatewayEnv,
    /// Pod IP → "stable" / "canary".
    tracks: BTreeMap<String, &'static str>,
    http: reqwest::Client,
}

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

/// Reads through the API (the Rollout controller's route caches are exercised by
/// `e2e_rollout_routers`).
fn ctx(env: &TestEnv, ns: &str) -> RouterContext {
    RouterContext::direct(env.client.clone(), ns, "demo", "")
}

/// Pods, Services, Gateway and the Git-owned HTTPRoute; waits until Traefik serves the route.
async fn set_up(env: &TestEnv, gw: GatewayEnv, ns: &str) -> App {
    let host = format!("{ns}.sluice.test");
    for (track, i) in [("stable", 0), ("stable", 1), ("canary", 0), ("canary", 1)] {
        env.create(ns,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("app-{track}-{i}"), "labels": {"app": "demo", "track": track}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:v1",
                                         "ports": [{"containerPort": gw.echo_port}]}]},
            }),
        )
        .await;
    }
    for track in ["stable", "canary"] {
        env.create(
            ns,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("app-{track}")},
                "spec": {"selector": {"app": "demo", "track": track},
                         "ports": [{"port": 80, "targetPort": gw.echo_port}]},
            }),
        )
        .await;
    }
    env.create(
        ns,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": gw.class, "listeners": [
                {"name": "web", "protocol": "HTTP", "port": gw.port, "hostname": host},
            ]},
        }),
    )
    .await;
    apply_as_gitops(env, ns, &route_manifest(ns, &host), false)
        .await
        .expect("applying the route as argocd-controller");

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let tracks = eventually(Duration::from_secs(60), "4 ready pods with IPs", || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let mut out = BTreeMap::new();
        for p in list.items {
            let status = p.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let track = p.metadata.labels?.get("track")?.clone();
            if !ready {
                return None;
            }
            out.insert(
                status.pod_ip?,
                if track == "canary" {
                    "canary"
                } else {
                    "stable"
                },
            );
        }
        (out.len() == 4).then_some(out)
    })
    .await;
    let app = App {
        ns: ns.into(),
        host,
        gw,
        tracks,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client"),
    };
    // Endpoints published, route programmed: all traffic on stable.
    wait_for_weights(&app, 0).await;
    eventually(
        Duration::from_secs(60),
        "the route to serve stable pods",
        || async {
            let (s, c) = app.sample(20, &[]).await.ok()?;
            (s == 20 && c == 0).then_some(())
        },
    )
    .await;
    app
}

impl App {
    /// Sends `n` requests through the gateway; (stable, canary) counts.
    async fn sample(&self, n: usize, headers: &[(&str, &str)]) -> Result<(usize, usize), String> {
        let (mut stable, mut canary) = (0, 0);
        for _ in 0..n {
            let mut req = self
                .http
                .get(format!("{}/", self.gw.url))
                .header(reqwest::header::HOST, &self.host);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {body}"));
            }
            match self.tracks.get(body.trim()) {
                Some(&"canary") => canary += 1,
                Some(_) => stable += 1,
                None => return Err(format!("answer from an unknown pod IP '{body}'")),
            }
        }
        Ok((stable, canary))
    }
}

/// Traefik's weighted service for this route, as (stable weight, canary weight).
async fn traefik_weights(app: &App) -> Option<(i64, i64)> {
    common::traffic::traefik_weight_sets(
        &app.gw.api_url,
        &app.ns,
        "app",
        ("app-stable", "app-canary"),
    )
    .await
    .into_iter()
    .next()
}

async fn wait_for_weights(app: &App, canary: i64) {
    eventually(
        Duration::from_secs(30),
        &format!("Traefik to apply canary weight {canary}"),
        || async {
            let (s, c) = traefik_weights(app).await?;
            (c == canary && s == 100 - canary).then_some(())
        },
    )
    .await;
}

#[test]
fn binomial_interval_is_sane() {
    let (lo, hi) = binomial_interval(400, 0.3);
    assert!(
        (85..=95).contains(&lo) && (145..=155).contains(&hi),
        "{lo}..{hi}"
    );
    assert_eq!(binomial_interval(400, 1.0), (400, 400));
    assert_eq!(binomial_interval(400, 0.0), (0, 0));
}

async fn check_split(app: &App, canary_weight: i32) {
    let (stable, canary) = app
        .sample(N, &[])
        .await
        .unwrap_or_else(|e| panic!("requests through the gateway failed: {e}"));
    let (lo, hi) = binomial_interval(N, f64::from(canary_weight) / 100.0);
    eprintln!(
        "weight {canary_weight}: {canary}/{N} on canary (99.9% interval {lo}..={hi}), {stable} on stable"
    );
    assert!(
        (lo..=hi).contains(&canary),
        "weight {canary_weight}: {canary} of {N} requests reached the canary, outside the 99.9% \
         interval {lo}..={hi}"
    );
}

/// Server-side apply of the Git manifest under Argo CD's field manager (`dry_run`: dryRun=All).
async fn apply_as_gitops(
    env: &TestEnv,
    ns: &str,
    manifest: &Value,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let mut pp = PatchParams::apply(GITOPS_MANAGER);
    pp.dry_run = dry_run;
    routes(env, ns)
        .patch("app", &pp, &Patch::Apply(manifest))
        .await
}

fn spec_owners(route: &DynamicObject) -> BTreeSet<String> {
    route
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some())
        })
        .filter_map(|e| e.manager.clone())
        .collect()
}

fn ownership_view(route: &DynamicObject) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = route
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.fields_v1
                    .as_ref()
                    .map(|f| f.0.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// (a) a dry-run apply of Git's manifest under argocd-controller changes nothing, and (b) no
/// manager but argocd-controller owns anything of the route's spec; Sluice owns nothing at all.
async fn assert_no_drift(env: &TestEnv, app: &App) {
    let live = routes(env, &app.ns).get("app").await.expect("the route");
    let manifest = route_manifest(&app.ns, &app.host);
    let dry = apply_as_gitops(env, &app.ns, &manifest, true)
        .await
        .unwrap_or_else(|e| panic!("dry-run apply of the Git manifest as {GITOPS_MANAGER}: {e}"));
    assert_eq!(
        dry.data["spec"], live.data["spec"],
        "a dry-run apply of the Git manifest would change the route's spec"
    );
    assert_eq!(
        dry.metadata.annotations, live.metadata.annotations,
        "a dry-run apply of the Git manifest would change the route's annotations"
    );
    assert_eq!(dry.metadata.labels, live.metadata.labels);
    assert_eq!(
        ownership_view(&dry),
        ownership_view(&live),
        "a dry-run apply of the Git manifest would change field ownership"
    );
    assert_eq!(
        spec_owners(&live),
        BTreeSet::from([GITOPS_MANAGER.to_string()]),
        "managers owning the route's spec (managedFields: {:#?})",
        live.metadata.managed_fields
    );
    assert!(
        !live
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|e| e.manager.as_deref() == Some(sluice::traffic::FIELD_MANAGER)),
        "Sluice still has a managedFields entry: {:#?}",
        live.metadata.managed_fields
    );
    assert!(
        live.metadata
            .annotations
            .iter()
            .flatten()
            .all(|(k, _)| !k.starts_with("sluice.dev/")),
        "Sluice's annotations are left on the route: {:?}",
        live.metadata.annotations
    );
    assert_eq!(
        live.data["spec"]["rules"][0]["backendRefs"][1]["weight"],
        json!(0),
        "Git's canary weight is back"
    );
}

fn router() -> GatewayApiRouter {
    GatewayApiRouter::from_plugin_config(&json!({"httpRoute": "app"})).expect("a valid config")
}

#[tokio::test]
async fn gateway_api_weights_header_route_and_release_through_traefik() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let ns = env.namespace("gw-complete").await;
    let app = set_up(&env, gw, &ns.name).await;
    let router = router();
    let ctx = ctx(&env, &ns.name);

    for (i, w) in [10, 30, 60, 100].into_iter().enumerate() {
        router
            .set_weight(&ctx, &weights(w))
            .await
            .expect("set_weight");
        let observed = router.observe(&ctx, &weights(w)).await.expect("observe");
        assert_eq!(observed.canary, Some(w), "observed: {observed:?}");
        wait_for_weights(&app, i64::from(w)).await;
        check_split(&app, w).await;

        if i == 0 {
            // setHeaderRoute: requests with the header all reach the canary.
            let header = HeaderRoute {
                name: "canary-header".into(),
                matches: vec![HeaderRoutingMatch {
                    header_name: "x-canary".into(),
                    header_value: StringMatch {
                        exact: Some("yes".into()),
                        ..Default::default()
                    },
                }],
            };
            router
                .set_header_route(&ctx, &weights(w), &header)
                .await
                .expect("set_header_route");
            let observed = router.observe(&ctx, &weights(w)).await.expect("observe");
            assert_eq!(observed.canary, Some(w));
            assert_eq!(observed.managed_routes, vec!["canary-header".to_string()]);
            let (stable, canary) = eventually(
                Duration::from_secs(30),
                "the header route to reach Traefik",
                || async {
                    let r = app.sample(20, &[("x-canary", "yes")]).await.ok()?;
                    (r.0 == 0).then_some(r)
                },
            )
            .await;
            assert_eq!((stable, canary), (0, 20));
            let (stable, canary) = app
                .sample(N, &[("x-canary", "yes")])
                .await
                .expect("requests with the header");
            assert_eq!((stable, canary), (0, N), "requests with the header");
            check_split(&app, w).await; // and the others still split by weight
        }
    }

    // Completion: managed routes go, traffic back on the (now promoted) stable, then release.
    router
        .remove_managed_routes(&ctx)
        .await
        .expect("remove_managed_routes");
    let observed = router.observe(&ctx, &weights(100)).await.expect("observe");
    assert!(observed.managed_routes.is_empty(), "{observed:?}");
    router
        .set_weight(&ctx, &weights(0))
        .await
        .expect("set_weight 0");
    router.release(&ctx, &weights(0)).await.expect("release");
    router
        .release(&ctx, &weights(0))
        .await
        .expect("release is idempotent");
    assert_no_drift(&env, &app).await;
    wait_for_weights(&app, 0).await;
    check_split(&app, 0).await;
}

#[tokio::test]
async fn gateway_api_abort_leaves_no_drift() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let ns = env.namespace("gw-abort").await;
    let app = set_up(&env, gw, &ns.name).await;
    let router = router();
    let ctx = ctx(&env, &ns.name);

    router
        .set_weight(&ctx, &weights(30))
        .await
        .expect("set_weight 30");
    wait_for_weights(&app, 30).await;
    check_split(&app, 30).await;
    let during = routes(&env, &ns.name).get("app").await.expect("the route");
    assert!(
        spec_owners(&during).contains(sluice::traffic::FIELD_MANAGER),
        "Sluice owns the rules while it shifts traffic"
    );

    // Abort: all traffic back to stable at once, then the route goes back to Git.
    router
        .set_weight(&ctx, &weights(0))
        .await
        .expect("set_weight 0");
    assert_eq!(
        router
            .observe(&ctx, &weights(0))
            .await
            .expect("observe")
            .canary,
        Some(0)
    );
    wait_for_weights(&app, 0).await;
    check_split(&app, 0).await;
    router.release(&ctx, &weights(0)).await.expect("release");
    assert_no_drift(&env, &app).await;

    // Git stays in charge: a later sync of a new weight applies without conflict.
    let mut next = route_manifest(&ns.name, &app.host);
    next["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(90);
    next["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(10);
    apply_as_gitops(&env, &ns.name, &next, false)
        .await
        .expect("Git's next sync applies without a conflict (no force)");
    wait_for_weights(&app, 10).await;
}

/// setMirrorRoute on the object (Traefik v3.6's Gateway provider implements no `RequestMirror`
/// filter, so no traffic check): the mirror rule appears after Git's rule, observe reports it,
/// and release removes it with no drift.
#[tokio::test]
async fn gateway_api_mirror_route_is_added_and_released() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let ns = env.namespace("gw-mirror").await;
    let app = set_up(&env, gw, &ns.name).await;
    let router = router();
    let ctx = ctx(&env, &ns.name);

    router
        .set_weight(&ctx, &weights(20))
        .await
        .expect("set_weight 20");
    let mirror = sluice::traffic::MirrorRoute {
        name: "mirror-gets".into(),
        matches: vec![sluice::api::argo::rollout::RouteMatch {
            method: Some(StringMatch {
                exact: Some("GET".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        percentage: Some(50),
    };
    router
        .set_mirror_route(&ctx, &weights(20), &mirror)
        .await
        .expect("set_mirror_route");
    let route = routes(&env, &ns.name).get("app").await.expect("the route");
    let rules = route.data["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 2, "Git's rule and the mirror rule: {rules:#?}");
    assert_eq!(
        rules[1]["matches"],
        json!([{"method": "GET", "path": {"type": "PathPrefix", "value": "/"}}])
    );
    assert_eq!(rules[1]["filters"][0]["type"], json!("RequestMirror"));
    assert_eq!(
        rules[1]["filters"][0]["requestMirror"]["backendRef"]["name"],
        json!("app-canary")
    );
    assert_eq!(
        rules[1]["filters"][0]["requestMirror"]["percent"],
        json!(50)
    );
    assert_eq!(rules[1]["backendRefs"], rules[0]["backendRefs"]);
    let observed = router.observe(&ctx, &weights(20)).await.expect("observe");
    assert_eq!(observed.canary, Some(20));
    assert_eq!(observed.managed_routes, vec!["mirror-gets".to_string()]);

    // A new weight keeps the mirror rule, with the new weights on its backends too.
    router
        .set_weight(&ctx, &weights(40))
        .await
        .expect("set_weight 40");
    let route = routes(&env, &ns.name).get("app").await.expect("the route");
    assert_eq!(
        route.data["spec"]["rules"][1]["backendRefs"][1]["weight"],
        json!(40)
    );

    router.release(&ctx, &weights(0)).await.expect("release");
    assert_no_drift(&env, &app).await;
}

/// Pod IP → "canary" / "stable" for the Rollout's pods, by their pod-template hash.
async fn rollout_tracks(
    env: &TestEnv,
    ns: &str,
    canary_hash: &str,
) -> BTreeMap<String, &'static str> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    pods.list(&kube::api::ListParams::default().labels("rollouts-pod-template-hash"))
        .await
        .expect("listing the Rollout's pods")
        .items
        .into_iter()
        .filter_map(|p| {
            let hash = p
                .metadata
                .labels?
                .get("rollouts-pod-template-hash")?
                .clone();
            let ip = p.status?.pod_ip?;
            Some((
                ip,
                if hash == canary_hash {
                    "canary"
                } else {
                    "stable"
                },
            ))
        })
        .collect()
}

/// A Rollout driven by `sluice controller` through the Gateway API router and real Traefik:
/// at every setWeight step the real traffic split matches the weight, the final switch sends no
/// request to an error, and the route ends exactly as Git declares it.
#[tokio::test]
async fn a_rollout_shifts_real_traffic_step_by_step_and_switches_without_errors() {
    use sluice::api::argo::rollout::Rollout;
    use sluice::engine::intent::{self, Intent};
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let ns = env.namespace("gw-rollout").await;
    let ns = ns.name.clone();
    let host = format!("{ns}.sluice.test");
    for track in ["stable", "canary"] {
        env.create(
            &ns,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("app-{track}")},
                "spec": {"selector": {"app": "web"},
                         "ports": [{"port": 80, "targetPort": gw.echo_port}]},
            }),
        )
        .await;
    }
    env.create(
        &ns,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": gw.class, "listeners": [
                {"name": "web", "protocol": "HTTP", "port": gw.port, "hostname": host},
            ]},
        }),
    )
    .await;
    apply_as_gitops(&env, &ns, &route_manifest(&ns, &host), false)
        .await
        .expect("applying the route as argocd-controller");
    let ctl =
        common::controller::ControllerProcess::start_with(&env, &ns, &["--leader-elect=false"])
            .await;

    let template = |image: &str| {
        json!({"metadata": {"labels": {"app": "web"}},
               "spec": {"containers": [{"name": "web", "image": image,
                                        "ports": [{"containerPort": gw.echo_port}]}]}})
    };
    let steps: Vec<Value> = [10, 30, 60, 100]
        .iter()
        .flat_map(|w| [json!({"setWeight": w}), json!({"pause": {}})])
        .collect();
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1"),
            "strategy": {"canary": {
                "canaryService": "app-canary", "stableService": "app-stable",
                "trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "app"}}},
                "steps": steps,
            }},
        },
    }))
    .expect("the Rollout");
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns);
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("creating the Rollout");
    let status = |r: &Rollout| r.status.clone().unwrap_or_default();
    let wait = |what: String, check: Box<dyn Fn(&Rollout) -> bool + Send + Sync>| {
        let rollouts = rollouts.clone();
        let log = ctl.log.clone();
        async move {
            eventually(
                Duration::from_secs(90),
                &format!("{what} (log: {})", log.display()),
                || async {
                    let r = rollouts.get("web").await.ok()?;
                    check(&r).then_some(r)
                },
            )
            .await
        }
    };
    wait(
        "the first revision to be Healthy".into(),
        Box::new(move |r| {
            let s = r.status.clone().unwrap_or_default();
            !s.stable_rs.is_empty()
                && s.stable_rs == s.current_pod_hash
                && s.available_replicas == 2
        }),
    )
    .await;

    let mut app = App {
        ns: ns.clone(),
        host: host.clone(),
        gw: gw.clone(),
        tracks: BTreeMap::new(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client"),
    };
    wait_for_weights(&app, 0).await;

    let patch = json!({"spec": {"template": template("registry.invalid/web:2")}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("a new revision");
    for (i, weight) in [10, 30, 60, 100].into_iter().enumerate() {
        let pause_index = 2 * i as i32 + 1;
        let r = wait(
            format!("step {pause_index} (weight {weight}) paused with the weight verified"),
            Box::new(move |r| {
                let s = r.status.clone().unwrap_or_default();
                s.current_step_index == Some(pause_index)
                    && !s.pause_conditions.is_empty()
                    && s.canary
                        .weights
                        .as_ref()
                        .is_some_and(|w| w.canary.weight == weight && w.verified == Some(true))
            }),
        )
        .await;
        wait_for_weights(&app, i64::from(weight)).await;
        app.tracks = rollout_tracks(&env, &ns, &status(&r).current_pod_hash).await;
        check_split(&app, weight).await;
        let (spec_patch, status_patch) = intent::patches(Intent::Promote, &r);
        if let Some(p) = spec_patch {
            rollouts
                .patch("web", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("promote (spec)");
        }
        if let Some(p) = status_patch {
            rollouts
                .patch_status("web", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("promote (status)");
        }
        if weight == 100 {
            break;
        }
    }

    // The final switch: requests keep flowing while stable takes over; none may fail.
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (errors, sent, stop) = (errors.clone(), sent.clone(), stop.clone());
        let (http, url, host) = (app.http.clone(), app.gw.url.clone(), host.clone());
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            while !stop.load(Relaxed) {
                let ok = http
                    .get(format!("{url}/"))
                    .header(reqwest::header::HOST, &host)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                sent.fetch_add(1, Relaxed);
                if !ok {
                    errors.fetch_add(1, Relaxed);
                }
            }
        })
    };
    let done = wait(
        "the promoted revision to be stable with all traffic back on the stable Service".into(),
        Box::new(move |r| {
            let s = r.status.clone().unwrap_or_default();
            s.stable_rs == s.current_pod_hash
                && s.canary
                    .weights
                    .as_ref()
                    .is_some_and(|w| w.canary.weight == 0)
        }),
    )
    .await;
    wait_for_weights(&app, 0).await;
    // Keep sending a little longer: the old pods go after the scale-down delay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.await;
    let (sent, errors) = (
        sent.load(std::sync::atomic::Ordering::Relaxed),
        errors.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!("final switch: {sent} requests, {errors} errors");
    assert!(
        sent > 50,
        "only {sent} requests were sent during the switch"
    );
    assert_eq!(errors, 0, "requests failed during the final switch");
    app.tracks = rollout_tracks(&env, &ns, &status(&done).current_pod_hash).await;

    // The route is Git's again once the controller has released it: after the old pods are gone
    // (scaleDownDelaySeconds, 30s by default), so that nothing the route selects can reach them.
    eventually(
        Duration::from_secs(75),
        "the route to be released",
        || async {
            let live = routes(&env, &ns).get("app").await.ok()?;
            (!live
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|e| e.manager.as_deref() == Some(sluice::traffic::FIELD_MANAGER)))
            .then_some(())
        },
    )
    .await;
    assert_no_drift(&env, &app).await;
    drop(ctl);
}
