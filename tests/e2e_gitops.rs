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
//!
//! Scenario 4 (Git changes mid-rollout): a commit during the pause restarts the update as Argo
//! does; a commit deleting the Rollout has Flux prune it and Sluice give its route back.
//!
//! Rollback written back to Git: scenario 2 with the Rollout annotated `sluice.dev/git-revert`;
//! Sluice pushes one revert commit, Flux syncs it, the Rollout is Healthy on v1 again.
//!
//! Scenario 1 and 3 for a Flagger Canary (Gateway API through Traefik, a MetricTemplate on the
//! env's Prometheus, a `confirm-promotion` gate on `sluice loadtester`), checked by Flux's own
//! kstatus (`wait: true`, no expressions): the primary serves while the canary is analysed, so
//! the Kustomization is never `Ready=False` and is Ready on the new revision at 50% already; a
//! forced reconcile there and after the promotion changes nothing Git declares. Git's Deployment
//! has no `replicas` (Sluice scales the target to 0, as Flagger does; with `replicas` in Git
//! Flux takes the scale back on every reconcile, which this test reports as drift).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};
use sluice::api::argo::rollout::Rollout;
use sluice::api::flagger::canary::{Canary, CanaryPhase};

use common::controller::{ControllerProcess, sluice_bin};
use common::exporter::Exporter;
use common::gitops::{
    Repo, condition, flux_events, force_reconcile, git_repository, inventory, kustomization,
    status_str,
};
use common::loadtester::LoadTesterProcess;
use common::{GatewayEnv, TestEnv, eventually};

const APP: &str = "app";
/// A Kustomization waits this long for health before it reports HealthCheckFailed.
const FLUX_TIMEOUT: &str = "20s";
/// Generous: Flux polls every 2 s, but the machine running the tests is shared and busy.
const WAIT: Duration = Duration::from_secs(180);

/// The Rollout as Git holds it, with image tag `tag`.
fn rollout_yaml(tag: &str, echo_port: u16) -> String {
    rollout_doc(tag, echo_port, None)
}

/// The Rollout as Git holds it, opted in to reverts in Git with `revert` as the annotation's
/// value when given.
fn rollout_doc(tag: &str, echo_port: u16, revert: Option<&str>) -> String {
    let annotations = revert
        .map(|v| format!("  annotations:\n    sluice.dev/git-revert: {v}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: app
{annotations}spec:
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

/// The Kustomization of `./app`, health by Flux's own kstatus (`wait`): what a Canary needs.
fn flux_kustomization(ns: &str) -> Value {
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
        },
    })
}

/// The Kustomization a user writes for a Rollout: health of Rollouts by CEL
/// (`deploy/README.md`), and the route's rules left to whoever else applies them.
fn kustomization_manifest(ns: &str) -> Value {
    let mut k = flux_kustomization(ns);
    k["spec"]["healthCheckExprs"] = json!([{
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "current": "status.conditions.filter(e, e.type == 'Ready').all(e, e.status == 'True' && e.observedGeneration == metadata.generation)",
        "failed": "status.conditions.filter(e, e.type == 'Stalled').all(e, e.status == 'True')",
    }]);
    k["spec"]["ignore"] = json!([
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
    ]);
    k
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
    backend_weights(route, ("app-stable", "app-canary"))
}

/// The weights of the `(first, second)` Services in the route's first rule.
fn backend_weights(route: &DynamicObject, (first, second): (&str, &str)) -> Option<(i64, i64)> {
    let refs = route
        .data
        .pointer("/spec/rules/0/backendRefs")?
        .as_array()?;
    let weight = |svc: &str| {
        refs.iter()
            .find(|r| r["name"] == svc)
            .and_then(|r| r["weight"].as_i64())
    };
    Some((weight(first)?, weight(second)?))
}

/// (stable, canary) weights Traefik really applies for the route.
async fn traefik_weights(gw: &GatewayEnv, ns: &str) -> Option<(i64, i64)> {
    common::traffic::traefik_weight_sets(&gw.api_url, ns, APP, ("app-stable", "app-canary"))
        .await
        .into_iter()
        .next()
}

/// An object Git declares: (group, version, kind, plural, name).
type Declared = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// What a forced reconcile must leave alone: objects only Flux writes (their resourceVersion),
/// and objects Sluice writes too (status, a target's scale), of which only Git's part counts
/// (generation and `spec`).
struct Declares {
    versioned: &'static [Declared],
    specs: &'static [Declared],
}

/// The Rollout app's objects.
const ROLLOUT_APP: Declares = Declares {
    versioned: &[
        ("", "v1", "Service", "services", "app-stable"),
        ("", "v1", "Service", "services", "app-canary"),
        (
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
            "httproutes",
            APP,
        ),
        (
            "gateway.networking.k8s.io",
            "v1",
            "Gateway",
            "gateways",
            "gw",
        ),
        (
            "argoproj.io",
            "v1alpha1",
            "AnalysisTemplate",
            "analysistemplates",
            "app-health",
        ),
    ],
    specs: &[("argoproj.io", "v1alpha1", "Rollout", "rollouts", APP)],
};

async fn declared(env: &TestEnv, ns: &str, d: &Declared) -> DynamicObject {
    let (group, version, kind, plural, name) = *d;
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    );
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("{kind}/{name}, which Git declares: {e}"))
}

/// What must not change when Flux reconciles with nothing new in Git: the versions and specs of
/// [`Declares`], the Kustomization's inventory, and no Event of kustomize-controller saying it
/// created, configured or deleted anything.
#[derive(Debug, PartialEq)]
struct Snapshot {
    versions: BTreeMap<String, String>,
    specs: BTreeMap<String, (Option<i64>, Value)>,
    inventory: Vec<String>,
    events: Vec<(String, i32, String, String)>,
}

async fn snapshot(env: &TestEnv, ns: &str, declares: &Declares) -> Snapshot {
    let mut versions = BTreeMap::new();
    for d in declares.versioned {
        let o = declared(env, ns, d).await;
        versions.insert(
            format!("{}/{}", d.2, d.4),
            o.metadata.resource_version.unwrap_or_default(),
        );
    }
    let mut specs = BTreeMap::new();
    for d in declares.specs {
        let o = declared(env, ns, d).await;
        specs.insert(
            format!("{}/{}", d.2, d.4),
            (o.metadata.generation, o.data["spec"].clone()),
        );
    }
    Snapshot {
        versions,
        specs,
        inventory: inventory(&kustomization(env, ns, APP).await),
        events: flux_events(env, ns).await,
    }
}

/// Forces a reconcile and asserts Flux changed nothing and reported no change.
async fn assert_no_drift(
    env: &TestEnv,
    ns: &str,
    declares: &Declares,
    when: &str,
) -> DynamicObject {
    let before = snapshot(env, ns, declares).await;
    let k = force_reconcile(env, ns, APP, WAIT).await;
    let after = snapshot(env, ns, declares).await;
    assert_eq!(
        after.versions, before.versions,
        "{when}: a forced reconcile wrote objects Git declares (Flux saw drift)"
    );
    assert_eq!(
        after.specs, before.specs,
        "{when}: a forced reconcile changed the spec of an object Sluice also writes"
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
    set_up_with(prefix, None).await
}

/// [`set_up`] with the Rollout annotated `sluice.dev/git-revert: <revert>` when given.
async fn set_up_with(prefix: &str, revert: Option<&str>) -> Option<GitopsApp> {
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
    repo.write("app/rollout.yaml", &rollout_doc("v1", gw.echo_port, revert));
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
    assert_no_drift(&env, &ns, &ROLLOUT_APP, "v1 settled").await;

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
    let k = assert_no_drift(&env, &ns, &ROLLOUT_APP, "canary at 50%").await;
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
    assert_no_drift(&env, &ns, &ROLLOUT_APP, "v2 promoted").await;
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
    assert_no_drift(&env, &ns, &ROLLOUT_APP, "v1 settled").await;

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
    assert_no_drift(&env, &ns, &ROLLOUT_APP, "v2 rolled back").await;
    let route = route_api.get(APP).await.expect("the route");
    assert_eq!(route_weights(&route), Some((100, 0)));
}

/// The Rollout's Events with `reason`: their messages.
async fn rollout_events(env: &TestEnv, ns: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Rollout"))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

/// Rollback written back to Git: scenario 2 with the Rollout opted in
/// (`sluice.dev/git-revert: git-push`). The bad commit is aborted by the analysis, and Sluice
/// pushes one commit that sets the image back to v1 in `app/rollout.yaml` (the file is then
/// exactly v1's), its message naming the failed AnalysisRun; Flux syncs it, the Kustomization
/// is Ready on it, and the Rollout is Healthy on v1 with no new canary ReplicaSet. The revert is
/// recorded (one `GitReverted` Event, the `GitReverted` condition), never pushed twice (forced
/// reconciles later, still one), and the Secret's password is in no Event, status or log line.
#[tokio::test]
async fn a_bad_commit_is_reverted_in_git_by_sluice_and_flux_syncs_the_revert() {
    let Some(app) = set_up_with("gitops-revert", Some("git-push")).await else {
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
        v1: _,
        _ns_guard,
    } = app;
    let password = format!("pw-{}", common::unique_name("s"));
    env.create(
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git-push"},
               "stringData": {"username": "sluice", "password": password}}),
    )
    .await;
    let v1_hash = rollouts
        .get(APP)
        .await
        .expect("the Rollout")
        .status
        .map(|s| s.current_pod_hash)
        .unwrap_or_default();

    exporter.set("errors", 1.0);
    exporter.wait_scraped("errors", 1.0).await;
    repo.write(
        "app/rollout.yaml",
        &rollout_doc("v2", gw.echo_port, Some("git-push")),
    );
    let v2 = repo.commit_and_push("app v2 (bad)");
    wait_attempted(&env, &ns, &v2).await;

    // Sluice aborts and pushes the revert.
    let revert = eventually(WAIT, "Sluice's revert commit on the Git server", || async {
        let head = repo.remote_head();
        (head != v2).then_some(head)
    })
    .await;
    let messages = repo.remote_messages();
    assert_eq!(
        messages.len(),
        3,
        "v1, v2 and one revert on main: {messages:#?}\ncontroller log (end):\n{}",
        ctl.log_end()
    );
    assert!(
        messages[0].starts_with(&format!(
            "Revert Rollout {ns}/{APP} to registry.invalid/app:v1"
        )) && messages[0].contains("AnalysisRun app-")
            && messages[0].contains("app: registry.invalid/app:v2 -> registry.invalid/app:v1"),
        "the revert's message names the Rollout, the image and the failed analysis: {}",
        messages[0]
    );
    assert_eq!(
        repo.remote_file("app/rollout.yaml"),
        rollout_doc("v1", gw.echo_port, Some("git-push")).trim(),
        "the revert changes only the image back to v1"
    );

    // Flux syncs the revert: Ready on it, the Rollout Healthy on v1, no new canary.
    wait_ready(&env, &ns, &revert, &ctl).await;
    let ro = eventually(WAIT, "the Rollout Healthy on v1 again", || async {
        let ro = rollouts.get(APP).await.ok()?;
        healthy_on(&ro, "registry.invalid/app:v1").then_some(ro)
    })
    .await;
    let status = ro.status.clone().unwrap_or_default();
    assert_eq!(status.current_pod_hash, v1_hash, "not v1's ReplicaSet");
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "GitReverted")
        .cloned();
    assert!(
        condition.as_ref().is_some_and(|c| c.status == "True"
            && c.reason == "Pushed"
            && c.message.contains(&revert)),
        "the GitReverted condition: {condition:?}"
    );
    let sets = eventually(WAIT, "only v1's ReplicaSet scaled up", || async {
        let sets = replica_sets(&env, &ns).await;
        (sets.len() >= 2 && sets.iter().all(|s| (s.3 == v1_hash) == (s.2 > 0))).then_some(sets)
    })
    .await;
    assert_eq!(
        sets.len(),
        2,
        "a canary ReplicaSet besides v1's and v2's: {sets:?}"
    );

    // Recorded once, pushed once, even after more reconciles of both controllers.
    let route_api = routes(&env, &ns);
    eventually(WAIT, "the route given back on stable", || async {
        let route = route_api.get(APP).await.ok()?;
        let sluice = route
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("sluice"));
        (route_weights(&route)? == (100, 0) && !sluice).then_some(())
    })
    .await;
    eventually(WAIT, "Traefik to send everything to stable", || async {
        (traefik_weights(&gw, &ns).await? == (100, 0)).then_some(())
    })
    .await;
    assert_no_drift(&env, &ns, &ROLLOUT_APP, "the revert synced").await;
    force_reconcile(&env, &ns, APP, WAIT).await;
    assert_eq!(
        repo.remote_messages().len(),
        3,
        "Sluice pushed more than once"
    );
    let reverted = rollout_events(&env, &ns, "GitReverted").await;
    assert_eq!(reverted.len(), 1, "GitReverted Events: {reverted:?}");
    assert!(
        rollout_events(&env, &ns, "GitRevertFailed")
            .await
            .is_empty()
    );

    // The credentials stay secret.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    let all_events = serde_json::to_string(
        &events
            .list(&ListParams::default())
            .await
            .expect("Events")
            .items,
    )
    .unwrap_or_default();
    let ro = rollouts.get(APP).await.expect("the Rollout");
    for (what, text) in [
        ("an Event", all_events),
        (
            "the Rollout",
            serde_json::to_string(&ro).unwrap_or_default(),
        ),
        ("the controller log", ctl.log_text()),
    ] {
        assert!(
            !text.contains(&password),
            "the Secret's password is in {what}"
        );
    }
}

/// The ReplicaSets in `ns` (the Rollout app's): (name, image, spec.replicas, pod-template hash).
async fn replica_sets(env: &TestEnv, ns: &str) -> Vec<(String, String, i32, String)> {
    let api: Api<ReplicaSet> = Api::namespaced(env.client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|rs| {
            let hash = rs
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("rollouts-pod-template-hash").cloned())
                .unwrap_or_default();
            let spec = rs.spec.unwrap_or_default();
            let image = spec
                .template
                .and_then(|t| t.spec)
                .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
                .unwrap_or_default();
            (
                rs.metadata.name.unwrap_or_default(),
                image,
                spec.replicas.unwrap_or(1),
                hash,
            )
        })
        .collect()
}

/// Waits until the Rollout is paused at 50% (step 4 of 4) on `image`, in the route too.
async fn wait_paused_at_50(
    env: &TestEnv,
    ns: &str,
    rollouts: &Api<Rollout>,
    image: &str,
) -> Rollout {
    let route_api = routes(env, ns);
    eventually(
        WAIT,
        &format!("the Rollout paused at 50% on {image}"),
        || async {
            let ro = rollouts.get(APP).await.ok()?;
            let status = ro.status.as_ref()?;
            let paused =
                status.current_step_index == Some(3) && !status.pause_conditions.is_empty();
            let route = route_api.get(APP).await.ok()?;
            (paused && image_of(&ro) == image && route_weights(&route)? == (50, 50)).then_some(ro)
        },
    )
    .await
}

/// Scenario 4: Git changes mid-rollout. A commit of v3 while v2's canary is paused at 50%
/// restarts the update as Argo does: a new canary ReplicaSet for v3, the steps from the first
/// (the canary share drops below 50%, the analysis step runs again for v3), v2's ReplicaSet
/// scaled down, and a pause at 50% again. A commit deleting the Rollout (Flux prunes it) then
/// gives its route back: weights as Git declares them, no field of Sluice's left on the route,
/// the Rollout gone (no finalizer left hanging), in Traefik too.
#[tokio::test]
async fn commits_mid_rollout_restart_the_update_and_a_deleting_commit_releases_the_route() {
    let Some(app) = set_up("gitops-midway").await else {
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
        v1: _,
        _ns_guard,
    } = app;
    let route_api = routes(&env, &ns);

    repo.write("app/rollout.yaml", &rollout_yaml("v2", gw.echo_port));
    let v2 = repo.commit_and_push("app v2");
    wait_attempted(&env, &ns, &v2).await;
    let at_v2 = wait_paused_at_50(&env, &ns, &rollouts, "registry.invalid/app:v2").await;
    let v2_hash = at_v2.status.map(|s| s.current_pod_hash).unwrap_or_default();

    // v3 during the pause: every canary share the route carries from now on is recorded.
    let shares = std::cell::RefCell::new(Vec::new());
    repo.write("app/rollout.yaml", &rollout_yaml("v3", gw.echo_port));
    let v3 = repo.commit_and_push("app v3");
    wait_attempted(&env, &ns, &v3).await;
    let at_v3 = eventually(WAIT, "the Rollout paused at 50% on v3", || async {
        let route = route_api.get(APP).await.ok()?;
        let (_, canary) = route_weights(&route)?;
        {
            let mut shares = shares.borrow_mut();
            if shares.last() != Some(&canary) {
                shares.push(canary);
            }
        }
        let ro = rollouts.get(APP).await.ok()?;
        let status = ro.status.as_ref()?;
        let paused = status.current_step_index == Some(3) && !status.pause_conditions.is_empty();
        (paused
            && image_of(&ro) == "registry.invalid/app:v3"
            && status.current_pod_hash != v2_hash
            && canary == 50)
            .then_some(ro)
    })
    .await;
    let shares = shares.into_inner();
    assert!(
        shares.iter().any(|w| *w < 50),
        "v3 went on at v2's 50% instead of starting from the first step: canary shares {shares:?}"
    );
    let v3_hash = at_v3.status.map(|s| s.current_pod_hash).unwrap_or_default();
    let runs: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "AnalysisRun"),
            "analysisruns",
        ),
    );
    let v3_runs = runs
        .list(&ListParams::default().labels(&format!(
            "rollouts-pod-template-hash={v3_hash},rollout-type=Step"
        )))
        .await
        .expect("listing AnalysisRuns")
        .items;
    assert_eq!(
        v3_runs.len(),
        1,
        "the analysis step did not run (once) again for v3: {:?}",
        v3_runs
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let sets = eventually(WAIT, "v2's ReplicaSet scaled down", || async {
        let sets = replica_sets(&env, &ns).await;
        let v2_set = sets.iter().find(|s| s.3 == v2_hash)?;
        (v2_set.2 == 0).then_some(sets)
    })
    .await;
    assert!(
        sets.iter()
            .any(|s| s.3 == v3_hash && s.1 == "registry.invalid/app:v3" && s.2 > 0),
        "no canary ReplicaSet of v3: {sets:?}"
    );
    eventually(WAIT, "Traefik to apply 50/50 for v3", || async {
        (traefik_weights(&gw, &ns).await? == (50, 50)).then_some(())
    })
    .await;

    // A commit deleting the Rollout: Flux prunes it, Sluice gives the route back before it goes.
    repo.remove("app/rollout.yaml");
    let gone = repo.commit_and_push("app: no Rollout");
    wait_attempted(&env, &ns, &gone).await;
    eventually(
        WAIT,
        "the pruned Rollout gone (its finalizer released)",
        || async { rollouts.get_opt(APP).await.ok()?.is_none().then_some(()) },
    )
    .await;
    let route = eventually(WAIT, "the route as Git declares it", || async {
        let route = route_api.get(APP).await.ok()?;
        (route_weights(&route)? == (100, 0)).then_some(route)
    })
    .await;
    let sluice_fields: Vec<_> = route
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("sluice"))
        .collect();
    assert!(
        sluice_fields.is_empty(),
        "Sluice still owns fields of the route after the Rollout went: {sluice_fields:?}"
    );
    eventually(WAIT, "Traefik to send everything to stable", || async {
        (traefik_weights(&gw, &ns).await? == (100, 0)).then_some(())
    })
    .await;
    let k = wait_ready(&env, &ns, &gone, &ctl).await;
    assert!(
        !inventory(&k).iter().any(|id| id.ends_with("_Rollout")),
        "the Rollout is still in Flux's inventory: {:?}",
        inventory(&k)
    );
}

/// The Canary app as Git holds it: the target Deployment with image tag `tag` (no `replicas`:
/// Sluice scales the target, as Flagger does, and Flux must not take the scale back).
fn target_yaml(tag: &str, echo_port: u16) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
  labels: {{app: podinfo}}
spec:
  selector:
    matchLabels: {{app: podinfo}}
  template:
    metadata:
      labels: {{app: podinfo}}
    spec:
      containers:
      - name: podinfo
        image: registry.invalid/podinfo:{tag}
        ports: [{{containerPort: {echo_port}, name: http}}]
"#
    )
}

/// The Canary (Gateway API through Traefik: 25%, 50%, then a `confirm-promotion` gate on the
/// load tester), its Gateway and its MetricTemplate on the env's Prometheus, as Git holds them.
fn canary_objects_yaml(
    gw: &GatewayEnv,
    host: &str,
    prometheus: &str,
    query: &str,
    gate: &str,
) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
spec:
  gatewayClassName: {class}
  listeners:
  - {{name: web, protocol: HTTP, port: {port}, hostname: "{host}"}}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: error-rate
spec:
  provider:
    type: prometheus
    address: {prometheus}
  query: '{query}'
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
spec:
  provider: gatewayapi:v1
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: podinfo}}
  progressDeadlineSeconds: 120
  service:
    port: 80
    targetPort: {echo}
    hosts: ["{host}"]
    gatewayRefs: [{{name: gw}}]
  analysis:
    interval: 1s
    threshold: 2
    stepWeight: 25
    maxWeight: 50
    metrics:
    - name: error-rate
      templateRef: {{name: error-rate}}
      thresholdRange: {{max: 0.05}}
    webhooks:
    - name: promotion-gate
      type: confirm-promotion
      url: {gate}/gate/check
      timeout: 5s
"#,
        class = gw.class,
        port = gw.port,
        echo = gw.echo_port,
    )
}

/// The Canary app's objects: the Gateway and MetricTemplate only Flux writes; the Canary
/// (status) and its target (scale) Sluice writes too.
const CANARY_APP: Declares = Declares {
    versioned: &[
        (
            "gateway.networking.k8s.io",
            "v1",
            "Gateway",
            "gateways",
            "gw",
        ),
        (
            "flagger.app",
            "v1beta1",
            "MetricTemplate",
            "metrictemplates",
            "error-rate",
        ),
    ],
    specs: &[
        ("flagger.app", "v1beta1", "Canary", "canaries", "podinfo"),
        ("apps", "v1", "Deployment", "deployments", "podinfo"),
    ],
};

/// Every (Ready status, reason, lastAppliedRevision) the Kustomization showed, polled until
/// dropped: "Ready throughout" means no `False` among them.
struct ReadyRecorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyRecorder {
    fn start(env: &TestEnv, ns: &str) -> ReadyRecorder {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>> =
            Default::default();
        let (client, ns, out) = (env.client.clone(), ns.to_string(), seen.clone());
        let task = tokio::spawn(async move {
            let gvk = GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization");
            let api: Api<DynamicObject> = Api::namespaced_with(
                client,
                &ns,
                &ApiResource::from_gvk_with_plural(&gvk, "kustomizations"),
            );
            loop {
                if let Ok(k) = api.get(APP).await {
                    let (status, reason, _) = condition(&k, "Ready").unwrap_or_default();
                    let applied = status_str(&k, "lastAppliedRevision");
                    let mut seen = out.lock().expect("the recorder's list");
                    if seen.last() != Some(&(status.clone(), reason.clone(), applied.clone())) {
                        seen.push((status, reason, applied));
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        ReadyRecorder { seen, task }
    }

    /// What was seen so far, in order, without repeats.
    fn seen(&self) -> Vec<(String, String, String)> {
        self.seen.lock().expect("the recorder's list").clone()
    }
}

impl Drop for ReadyRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Canary's (phase, canary weight).
fn canary_state(c: &Canary) -> (Option<CanaryPhase>, Option<i32>) {
    let status = c.status.as_ref();
    (
        status.and_then(|s| s.phase),
        status.and_then(|s| s.canary_weight),
    )
}

/// Scenario 1 (and 3) for a Flagger Canary, health by Flux's own kstatus: a pushed image tag
/// is applied by Flux, Sluice runs 25% → 50% through Traefik gated by Prometheus and holds at
/// the `confirm-promotion` gate; the Kustomization is never `Ready=False` on the way and is Ready
/// on each revision Git holds once applied (a Canary's target serves throughout: the primary
/// does), forced reconciles at 50% and after the promotion change nothing and leave Sluice's
/// weights; opening the gate promotes v2 onto the primary.
#[tokio::test]
async fn a_commit_to_a_canary_is_synced_by_flux_promoted_by_sluice_and_never_seen_as_drift() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let Some(gitops) = env.gitops_or_skip() else {
        return;
    };
    let ns_guard = env.namespace("gitops-canary").await;
    let ns = ns_guard.name.clone();
    let exporter = Exporter::start(&env, "gitops").await;
    exporter.set("errors", 0.0);
    exporter.wait_scraped("errors", 0.0).await;
    let loadtester = LoadTesterProcess::start(&env, &ns).await;
    let ctl = ControllerProcess::start_with(&env, &ns, &["--leader-elect=false"]).await;
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns);
    let host = format!("{ns}.sluice.test");

    let repo = Repo::create(&gitops, &ns);
    repo.write(
        "app/objects.yaml",
        &canary_objects_yaml(
            &gw,
            &host,
            &env.prometheus_url,
            &exporter.selector("errors"),
            &loadtester.url,
        ),
    );
    repo.write("app/deployment.yaml", &target_yaml("v1", gw.echo_port));
    let v1 = repo.commit_and_push("podinfo v1");
    env.create(&ns, git_repository(APP, &repo.url)).await;
    env.create(&ns, flux_kustomization(&ns)).await;

    // Flux creates the objects, Sluice initializes the Canary: all traffic on the primary.
    wait_ready(&env, &ns, &v1, &ctl).await;
    let route_api = routes(&env, &ns);
    let tracks = ("podinfo-primary", "podinfo-canary");
    eventually(
        WAIT,
        "the Canary Initialized, its route on the primary",
        || async {
            let c = canaries.get("podinfo").await.ok()?;
            let route = route_api.get("podinfo").await.ok()?;
            (canary_state(&c).0 == Some(CanaryPhase::Initialized)
                && backend_weights(&route, tracks)? == (100, 0))
                .then_some(())
        },
    )
    .await;
    let traefik = || async {
        common::traffic::traefik_weight_sets(&gw.api_url, &ns, "podinfo", tracks)
            .await
            .into_iter()
            .next()
    };
    eventually(
        WAIT,
        "Traefik to send everything to the primary",
        || async { (traefik().await? == (100, 0)).then_some(()) },
    )
    .await;
    wait_ready(&env, &ns, &v1, &ctl).await;
    assert_no_drift(&env, &ns, &CANARY_APP, "v1 initialized").await;
    let recorder = ReadyRecorder::start(&env, &ns);

    // A commit of a new image tag: Flux applies it, Sluice runs 25% → 50% and waits at the gate.
    repo.write("app/deployment.yaml", &target_yaml("v2", gw.echo_port));
    let v2 = repo.commit_and_push("podinfo v2");
    wait_attempted(&env, &ns, &v2).await;
    let weights_seen = std::cell::RefCell::new(Vec::new());
    eventually(WAIT, "the Canary at 50% waiting for promotion", || async {
        let c = canaries.get("podinfo").await.ok()?;
        let (phase, weight) = canary_state(&c);
        if let Some(w) = weight.filter(|w| *w > 0) {
            let mut seen = weights_seen.borrow_mut();
            if seen.last() != Some(&w) {
                seen.push(w);
            }
        }
        let route = route_api.get("podinfo").await.ok()?;
        (phase == Some(CanaryPhase::WaitingPromotion)
            && weight == Some(50)
            && backend_weights(&route, tracks)? == (50, 50))
            .then_some(())
    })
    .await;
    let weights_seen = weights_seen.into_inner();
    assert!(
        weights_seen.iter().all(|w| [25, 50].contains(w)),
        "canary weights other than the steps: {weights_seen:?}"
    );
    eventually(WAIT, "Traefik to apply 50/50", || async {
        (traefik().await? == (50, 50)).then_some(())
    })
    .await;

    // The Canary's health by kstatus: the primary serves v1 while v2 is analysed, so Flux calls
    // v2 applied and the Kustomization Ready; a forced reconcile at 50% changes nothing.
    let k = wait_ready(&env, &ns, &v2, &ctl).await;
    assert_eq!(
        condition(&k, "Healthy").map(|c| c.0).as_deref(),
        Some("True"),
        "the Kustomization is not Healthy at 50%"
    );
    assert_no_drift(&env, &ns, &CANARY_APP, "canary at 50%").await;
    let c = canaries.get("podinfo").await.expect("the Canary");
    assert_eq!(
        canary_state(&c),
        (Some(CanaryPhase::WaitingPromotion), Some(50)),
        "the forced reconcile moved the Canary"
    );
    let route = route_api.get("podinfo").await.expect("the route");
    assert_eq!(backend_weights(&route, tracks), Some((50, 50)));
    assert_eq!(
        traefik().await,
        Some((50, 50)),
        "Flux undid Sluice's weights"
    );

    // Open the gate: Sluice promotes v2 onto the primary and sends all traffic back to it.
    let (code, body) = loadtester.post("/gate/open", "podinfo", &ns).await;
    assert_eq!(code, 202, "opening the gate: {body}");
    eventually(WAIT, "the Canary Succeeded", || async {
        let c = canaries.get("podinfo").await.ok()?;
        (canary_state(&c).0 == Some(CanaryPhase::Succeeded)).then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns);
    let primary = deployments
        .get("podinfo-primary")
        .await
        .expect("the primary");
    let image = primary
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(image.as_deref(), Some("registry.invalid/podinfo:v2"));
    eventually(WAIT, "the route back on the primary", || async {
        let route = route_api.get("podinfo").await.ok()?;
        (backend_weights(&route, tracks)? == (100, 0)).then_some(())
    })
    .await;
    eventually(
        WAIT,
        "Traefik to send everything to the primary again",
        || async { (traefik().await? == (100, 0)).then_some(()) },
    )
    .await;
    let k = wait_ready(&env, &ns, &v2, &ctl).await;
    assert_eq!(
        condition(&k, "Healthy").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert_no_drift(&env, &ns, &CANARY_APP, "v2 promoted").await;

    let seen = recorder.seen();
    assert!(
        seen.iter().all(|(status, _, _)| status != "False"),
        "the Kustomization was not Ready on the way: {seen:?}"
    );
    let applied = format!("main@sha1:{v2}");
    assert!(
        seen.iter().any(|(s, _, a)| s == "True" && *a == applied),
        "the Kustomization never Ready on {applied}: {seen:?}"
    );
}
