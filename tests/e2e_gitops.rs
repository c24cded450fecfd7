//! A real GitOps agent in the loop (issue 19): Flux's source-controller and kustomize-controller
//! sync a Git repository on the environment's Git server into the test's namespace, and Sluice
//! delivers what Git declares through the real Traefik Gateway API data plane, gated by an
//! analysis on the environment's Prometheus.
//!
//! The repository's `app/` directory holds what a user writes: a Rollout (canary through the
//! Gateway API plugin config: 20%, an analysis step, 50%, an indefinite pause), its two Services,
//! the Gateway and the HTTPRoute, and the AnalysisTemplate. The Kustomization checks the
//! Rollout's health with the CEL expressions `deploy/README.md` documents and tells Flux, with an
//! `ignore` rules, that the route's `spec.rules` and the selectors of the Services a Rollout
//! manages may be changed by someone else: Sluice's server-side apply owns the rules during an
//! update (Flux strips fields another apply manager owns), and Sluice adds the
//! `rollouts-pod-template-hash` key to a selector, which is an atomic map, so Flux's forced
//! apply would take the whole selector back without the key on every reconcile (seen here).
//!
//! Scenario 1 (commit → canary → promote) and 3 (no drift): a commit of a new image tag is
//! synced by Flux, Sluice runs the steps, the Kustomization never claims health before the
//! Rollout is promoted and does once it is; a reconcile forced at 50% changes nothing Git
//! declares (routes, Services, the Rollout), leaves Sluice's weights on the route and in
//! Traefik, and records no change; after the promotion another forced reconcile changes nothing
//! either, and the route is Git's again.
//!
//! Scenario 2 (bad commit → rollback): the new version's metric breaches the threshold, Sluice
//! aborts and sends all traffic back to v1, and the Kustomization fails its health check naming
//! the Rollout as Failed (Flux's CEL health checks carry no message of the object's, so Sluice's
//! own message is on the Rollout's `Stalled` condition, not in Flux's); no drift after it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use sluice::api::argo::rollout::Rollout;

use common::controller::{ControllerProcess, sluice_bin};
use common::exporter::Exporter;
use common::gitops::{
    Repo, condition, flux_events, force_reconcile, git_repository, inventory, kustomization,
    status_str,
};
use common::{GatewayEnv, TestEnv, eventually};

const APP: &str = "app";
/// A Kustomization waits this long for health before it reports HealthCheckFailed.
const FLUX_TIMEOUT: &str = "20s";
/// Generous: Flux polls every 2 s, but the machine running the tests is shared and busy.
const WAIT: Duration = Duration::from_secs(180);

/// The Rollout as Git holds it, with image tag `tag`.
fn rollout_yaml(tag: &str, echo_port: u16) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: app
spec:
  replicas: 2
  selector:
    matchLabels: {{app: app}}
  template:
    metadata:
      labels: {{app: app}}
    spec:
      containers:
      - name: app
        image: registry.invalid/app:{tag}
        ports: [{{containerPort: {echo_port}}}]
  strategy:
    canary:
      canaryService: app-canary
      stableService: app-stable
      trafficRouting:
        plugins:
          argoproj-labs/gatewayAPI:
            httpRoute: app
      steps:
      - setWeight: 20
      - analysis:
          templates: [{{templateName: app-health}}]
      - setWeight: 50
      - pause: {{}}
"#
    )
}

/// Services, Gateway, HTTPRoute and AnalysisTemplate, as Git holds them.
fn objects_yaml(gw: &GatewayEnv, host: &str, prometheus: &str, query: &str) -> String {
    let services: String = ["stable", "canary"]
        .iter()
        .map(|track| {
            format!(
                r#"apiVersion: v1
kind: Service
metadata:
  name: app-{track}
spec:
  selector: {{app: app}}
  ports: [{{port: 80, targetPort: {port}}}]
---
"#,
                port = gw.echo_port
            )
        })
        .collect();
    format!(
        r#"{services}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  gatewayClassName: {class}
  listeners:
  - {{name: web, protocol: HTTP, port: {port}, hostname: "{host}"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["{host}"]
  rules:
  - backendRefs:
    - {{name: app-stable, port: 80, weight: 100}}
    - {{name: app-canary, port: 80, weight: 0}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: app-health
spec:
  metrics:
  - name: error-rate
    count: 2
    interval: 1s
    successCondition: result[0] < 0.05
    failureCondition: result[0] >= 0.05
    provider:
      prometheus:
        address: {prometheus}
        query: '{query}'
"#,
        class = gw.class,
        port = gw.port,
    )
}

/// The Kustomization a user writes for Sluice: health of Rollouts by CEL (`deploy/README.md`),
/// and the route's rules left to whoever else applies them.
fn kustomization_manifest(ns: &str) -> Value {
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": APP},
        "spec": {
            "interval": "2s",
            "retryInterval": "2s",
            "timeout": FLUX_TIMEOUT,
            "path": "./app",
            "prune": true,
            "wait": true,
            "targetNamespace": ns,
            "sourceRef": {"kind": "GitRepository", "name": APP},
            "healthCheckExprs": [{
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Rollout",
                "current": "status.conditions.filter(e, e.type == 'Ready').all(e, e.status == 'True' && e.observedGeneration == metadata.generation)",
                "failed": "status.conditions.filter(e, e.type == 'Stalled').all(e, e.status == 'True')",
            }],
            "ignore": [
                {
                    "paths": ["/spec/rules"],
                    "target": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
                },
                {
                    "paths": ["/spec/selector"],
                    "target": {
                        "kind": "Service",
                        "annotationSelector": "argo-rollouts.argoproj.io/managed-by-rollouts",
                    },
                },
            ],
        },
    })
}

fn routes(env: &TestEnv, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "httproutes"),
    )
}

/// (stable, canary) weights the route declares.
fn route_weights(route: &DynamicObject) -> Option<(i64, i64)> {
    let refs = route
        .data
        .pointer("/spec/rules/0/backendRefs")?
        .as_array()?;
    let weight = |svc: &str| {
        refs.iter()
            .find(|r| r["name"] == svc)
            .and_then(|r| r["weight"].as_i64())
    };
    Some((weight("app-stable")?, weight("app-canary")?))
}

/// (stable, canary) weights Traefik really applies for the route.
async fn traefik_weights(gw: &GatewayEnv, ns: &str) -> Option<(i64, i64)> {
    common::traffic::traefik_weight_sets(&gw.api_url, ns, APP, ("app-stable", "app-canary"))
        .await
        .into_iter()
        .next()
}

/// The resourceVersions of the objects Git declares (besides the Rollout, whose status Sluice
/// writes), by kind/name: Flux writing any of them changes its version.
async fn declared_versions(env: &TestEnv, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    for name in ["app-stable", "app-canary"] {
        let s = services.get(name).await.expect("a Service Git declares");
        out.insert(
            format!("Service/{name}"),
            s.metadata.resource_version.unwrap_or_default(),
        );
    }
    for (kind, plural, name) in [
        ("HTTPRoute", "httproutes", APP),
        ("Gateway", "gateways", "gw"),
    ] {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind);
        let api: Api<DynamicObject> = Api::namespaced_with(
            env.client.clone(),
            ns,
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        );
        let o = api.get(name).await.expect("an object Git declares");
        out.insert(
            format!("{kind}/{name}"),
            o.metadata.resource_version.unwrap_or_default(),
        );
    }
    let templates: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "AnalysisTemplate"),
            "analysistemplates",
        ),
    );
    let t = templates
        .get("app-health")
        .await
        .expect("the AnalysisTemplate");
    out.insert(
        "AnalysisTemplate/app-health".into(),
        t.metadata.resource_version.unwrap_or_default(),
    );
    out
}

/// What must not change when Flux reconciles with nothing new in Git: every declared object's
/// version, the Rollout's generation and spec, the Kustomization's inventory, and no Event of
/// kustomize-controller saying it created, configured or deleted anything.
struct Snapshot {
    versions: BTreeMap<String, String>,
    rollout_generation: Option<i64>,
    rollout_spec: Value,
    inventory: Vec<String>,
    events: Vec<(String, i32, String, String)>,
}

async fn snapshot(env: &TestEnv, ns: &str, rollouts: &Api<Rollout>) -> Snapshot {
    let ro = rollouts.get(APP).await.expect("the Rollout");
    Snapshot {
        versions: declared_versions(env, ns).await,
        rollout_generation: ro.metadata.generation,
        rollout_spec: serde_json::to_value(&ro.spec).expect("Rollout spec"),
        inventory: inventory(&kustomization(env, ns, APP).await),
        events: flux_events(env, ns).await,
    }
}

/// Forces a reconcile and asserts Flux changed nothing and reported no change.
async fn assert_no_drift(
    env: &TestEnv,
    ns: &str,
    rollouts: &Api<Rollout>,
    when: &str,
) -> DynamicObject {
    let before = snapshot(env, ns, rollouts).await;
    let k = force_reconcile(env, ns, APP, WAIT).await;
    let after = snapshot(env, ns, rollouts).await;
    assert_eq!(
        after.versions, before.versions,
        "{when}: a forced reconcile wrote objects Git declares (Flux saw drift)"
    );
    assert_eq!(
        after.rollout_generation, before.rollout_generation,
        "{when}: a forced reconcile changed the Rollout's spec"
    );
    assert_eq!(
        after.rollout_spec, before.rollout_spec,
        "{when}: Rollout spec"
    );
    assert_eq!(after.inventory, before.inventory, "{when}: inventory");
    let changes: Vec<_> = after
        .events
        .iter()
        .filter(|e| !before.events.contains(e))
        .filter(|(_, _, _, msg)| {
            ["created", "configured", "deleted"]
                .iter()
                .any(|w| msg.contains(w))
        })
        .collect();
    assert!(
        changes.is_empty(),
        "{when}: kustomize-controller reported changes: {changes:?}"
    );
    k
}

/// Waits until Flux has attempted `sha` (`lastAttemptedRevision`; `lastAppliedRevision` moves
/// only once the health checks pass too).
async fn wait_attempted(env: &TestEnv, ns: &str, sha: &str) -> DynamicObject {
    let want = format!("main@sha1:{sha}");
    eventually(WAIT, &format!("Flux to apply {want}"), || async {
        let k = kustomization(env, ns, APP).await;
        (status_str(&k, "lastAttemptedRevision") == want).then_some(k)
    })
    .await
}

/// Waits until the Kustomization is Ready (health checks passed) on `sha`.
async fn wait_ready(env: &TestEnv, ns: &str, sha: &str, ctl: &ControllerProcess) -> DynamicObject {
    let want = format!("main@sha1:{sha}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let k = kustomization(env, ns, APP).await;
        let ready = condition(&k, "Ready").is_some_and(|(s, _, _)| s == "True");
        if ready && status_str(&k, "lastAppliedRevision") == want {
            return k;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "Kustomization {ns}/{APP} not Ready on {want} after {WAIT:?}: {}\ncontroller log (end):\n{}",
                serde_json::to_string_pretty(&k.data["status"]).unwrap_or_default(),
                ctl.log_end()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn image_of(ro: &Rollout) -> String {
    ro.spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Healthy: the stable ReplicaSet is the current one and the phase says so.
fn healthy_on(ro: &Rollout, image: &str) -> bool {
    let Some(status) = ro.status.as_ref() else {
        return false;
    };
    image_of(ro) == image
        && !status.current_pod_hash.is_empty()
        && status.stable_rs == status.current_pod_hash
        && serde_json::to_value(status.phase).ok() == Some(json!("Healthy"))
}

/// One test's world: its namespace, metric, controller, Git repository and Flux objects, with
/// v1 of the app synced, Healthy and settled.
struct GitopsApp {
    env: TestEnv,
    gw: GatewayEnv,
    ns: String,
    exporter: Exporter,
    ctl: ControllerProcess,
    rollouts: Api<Rollout>,
    repo: Repo,
    v1: String,
    _ns_guard: common::TestNamespace,
}

/// `None` when the environment lacks the cluster, the data plane or Flux (the test skips).
async fn set_up(prefix: &str) -> Option<GitopsApp> {
    let env = common::test_env().await?;
    let gw = env.gateway_or_skip()?;
    let gitops = env.gitops_or_skip()?;
    let ns_guard = env.namespace(prefix).await;
    let ns = ns_guard.name.clone();
    let exporter = Exporter::start(&env, "gitops").await;
    exporter.set("errors", 0.0);
    exporter.wait_scraped("errors", 0.0).await;
    let ctl = ControllerProcess::start_with(&env, &ns, &["--leader-elect=false"]).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns);
    let host = format!("{ns}.sluice.test");

    // Git: v1 of the app.
    let repo = Repo::create(&gitops, &ns);
    let objects = objects_yaml(
        &gw,
        &host,
        &env.prometheus_url,
        &exporter.selector("errors"),
    );
    repo.write("app/objects.yaml", &objects);
    repo.write("app/rollout.yaml", &rollout_yaml("v1", gw.echo_port));
    let v1 = repo.commit_and_push("app v1");
    env.create(&ns, git_repository(APP, &repo.url)).await;
    env.create(&ns, kustomization_manifest(&ns)).await;

    // Flux creates everything; the first version is Healthy at once, and so is the Kustomization.
    wait_ready(&env, &ns, &v1, &ctl).await;
    eventually(WAIT, "the Rollout Healthy on v1", || async {
        let ro = rollouts.get(APP).await.ok()?;
        healthy_on(&ro, "registry.invalid/app:v1").then_some(())
    })
    .await;
    eventually(WAIT, "Traefik to send everything to stable", || async {
        (traefik_weights(&gw, &ns).await? == (100, 0)).then_some(())
    })
    .await;
    Some(GitopsApp {
        env,
        gw,
        ns,
        exporter,
        ctl,
        rollouts,
        repo,
        v1,
        _ns_guard: ns_guard,
    })
}

#[tokio::test]
async fn a_commit_is_synced_by_flux_delivered_by_sluice_and_never_seen_as_drift() {
    let Some(app) = set_up("gitops-promote").await else {
        return;
    };
    let GitopsApp {
        env,
        gw,
        ns,
        exporter: _exporter,
        ctl,
        rollouts,
        repo,
        v1,
        _ns_guard,
    } = app;
    assert_no_drift(&env, &ns, &rollouts, "v1 settled").await;

    // A commit of a new image tag: Flux applies it, Sluice runs 20% → analysis → 50% → pause.
    repo.write("app/rollout.yaml", &rollout_yaml("v2", gw.echo_port));
    let v2 = repo.commit_and_push("app v2");
    wait_attempted(&env, &ns, &v2).await;
    let route_api = routes(&env, &ns);
    eventually(WAIT, "the Rollout paused at 50% (step 4 of 4)", || async {
        let ro = rollouts.get(APP).await.ok()?;
        let status = ro.status?;
        let paused = status.current_step_index == Some(3) && !status.pause_conditions.is_empty();
        let route = route_api.get(APP).await.ok()?;
        (paused && route_weights(&route)? == (50, 50)).then_some(())
    })
    .await;
    eventually(WAIT, "Traefik to apply 50/50", || async {
        (traefik_weights(&gw, &ns).await? == (50, 50)).then_some(())
    })
    .await;
    let ro = rollouts.get(APP).await.expect("the Rollout");
    assert_eq!(image_of(&ro), "registry.invalid/app:v2");

    // No drift at 50%: Flux leaves Sluice's weights alone and reports no change. The forced
    // reconcile ends with the health check: the Kustomization does not call the release
    // healthy while the canary waits.
    let k = assert_no_drift(&env, &ns, &rollouts, "canary at 50%").await;
    let ready = condition(&k, "Ready").unwrap_or_default();
    assert_ne!(
        ready.0, "True",
        "Flux reports Ready while the Rollout is paused at 50%: {ready:?}"
    );
    assert!(
        ["HealthCheckFailed", "Progressing"].contains(&ready.1.as_str()),
        "the Kustomization is not Ready for another reason than the health check: {ready:?}"
    );
    let healthy = condition(&k, "Healthy").unwrap_or_default();
    assert_ne!(healthy.0, "True", "Flux calls the canary at 50% Healthy");
    assert_eq!(
        status_str(&k, "lastAppliedRevision"),
        format!("main@sha1:{v1}"),
        "Flux recorded v2 as applied (healthy) while its canary waits at 50%"
    );
    assert_eq!(
        status_str(&k, "lastAttemptedRevision"),
        format!("main@sha1:{v2}")
    );
    let route = route_api.get(APP).await.expect("the route");
    assert_eq!(
        route_weights(&route),
        Some((50, 50)),
        "Flux undid Sluice's weights"
    );
    assert_eq!(traefik_weights(&gw, &ns).await, Some((50, 50)));
    let ro = rollouts.get(APP).await.expect("the Rollout");
    assert_eq!(
        ro.status.as_ref().and_then(|s| s.current_step_index),
        Some(3),
        "the forced reconcile moved the Rollout"
    );

    // Promote (what `kubectl argo rollouts promote` sends): the release completes, the route is
    // Git's again, and the Kustomization turns Ready with healthy checks on v2.
    let out = std::process::Command::new(sluice_bin())
        .args(["promote", APP, "-n", &ns, "--kubeconfig"])
        .arg(&env.kubeconfig)
        .output()
        .expect("running sluice promote");
    assert!(
        out.status.success(),
        "sluice promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(WAIT, "the Rollout Healthy on v2", || async {
        let ro = rollouts.get(APP).await.ok()?;
        healthy_on(&ro, "registry.invalid/app:v2").then_some(())
    })
    .await;
    let k = wait_ready(&env, &ns, &v2, &ctl).await;
    let healthy = condition(&k, "Healthy");
    assert_eq!(
        healthy.as_ref().map(|(s, _, _)| s.as_str()),
        Some("True"),
        "Kustomization Healthy condition after the promotion: {healthy:?}"
    );
    eventually(WAIT, "the route back on stable", || async {
        let route = route_api.get(APP).await.ok()?;
        (route_weights(&route)? == (100, 0)).then_some(())
    })
    .await;
    eventually(
        WAIT,
        "Traefik to send everything to stable again",
        || async { (traefik_weights(&gw, &ns).await? == (100, 0)).then_some(()) },
    )
    .await;
    assert_no_drift(&env, &ns, &rollouts, "v2 promoted").await;
}

#[tokio::test]
async fn a_bad_commit_is_rolled_back_by_sluice_and_flux_reports_the_rollout_failed() {
    let Some(app) = set_up("gitops-rollback").await else {
        return;
    };
    let GitopsApp {
        env,
        gw,
        ns,
        exporter,
        ctl,
        rollouts,
        repo,
        v1,
        _ns_guard,
    } = app;
    assert_no_drift(&env, &ns, &rollouts, "v1 settled").await;

    // The new version's error rate breaches the analysis' threshold.
    exporter.set("errors", 1.0);
    exporter.wait_scraped("errors", 1.0).await;
    repo.write("app/rollout.yaml", &rollout_yaml("v2", gw.echo_port));
    let v2 = repo.commit_and_push("app v2 (bad)");
    wait_attempted(&env, &ns, &v2).await;

    // Sluice aborts: all traffic back on v1, the Rollout Degraded and Stalled with its reason.
    let route_api = routes(&env, &ns);
    let stalled = eventually(
        WAIT,
        "the Rollout aborted, its route back on stable",
        || async {
            let ro = rollouts.get(APP).await.ok()?;
            let status = ro.status?;
            let degraded =
                status.abort && serde_json::to_value(status.phase).ok() == Some(json!("Degraded"));
            let stalled = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Stalled" && c.status == "True")?
                .clone();
            let route = route_api.get(APP).await.ok()?;
            (degraded && route_weights(&route)? == (100, 0)).then_some(stalled)
        },
    )
    .await;
    assert!(
        !stalled.message.is_empty(),
        "the Rollout's Stalled condition has no message: {stalled:?}"
    );
    eventually(
        WAIT,
        "Traefik to send everything back to stable",
        || async { (traefik_weights(&gw, &ns).await? == (100, 0)).then_some(()) },
    )
    .await;

    // Flux: not Ready, failed health check naming the Rollout; v1 stays the last applied.
    let k = eventually(
        WAIT,
        "the Kustomization to fail its health check",
        || async {
            let k = kustomization(&env, &ns, APP).await;
            let (status, reason, message) = condition(&k, "Ready")?;
            (status == "False"
                && reason == "HealthCheckFailed"
                && message.contains(&format!("Rollout/{ns}/{APP}"))
                && message.contains("Failed"))
            .then_some(k)
        },
    )
    .await;
    assert_eq!(
        status_str(&k, "lastAppliedRevision"),
        format!("main@sha1:{v1}"),
        "Flux recorded the bad v2 as applied; controller log (end):\n{}",
        ctl.log_end()
    );
    // No drift after the rollback either: the aborted Rollout's spec is still Git's.
    assert_no_drift(&env, &ns, &rollouts, "v2 rolled back").await;
    let route = route_api.get(APP).await.expect("the route");
    assert_eq!(route_weights(&route), Some((100, 0)));
}
