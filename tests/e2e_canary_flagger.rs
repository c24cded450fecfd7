//! Flagger conformance on the real cluster (issue 17), one `sluice controller` per test limited
//! to the test's namespace: objects the user made before the Canary are taken over as Flagger
//! takes them over and given back; a write the apiserver refuses is told to the Canary (a Warning
//! Event and a `Stalled` condition), not only logged; `--mesh-provider` routes Canaries that name
//! no provider (Flagger's default, `istio`, without it).

mod common;

use std::time::Duration;

use common::controller::ControllerProcess;
use common::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use sluice::api::flagger::canary::{Canary, CanaryPhase};

const TIMEOUT: Duration = Duration::from_secs(90);

struct Fixture {
    env: TestEnv,
    ns: common::TestNamespace,
}

impl Fixture {
    async fn new(prefix: &str) -> Option<Fixture> {
        let env = common::test_env().await?;
        Some(Self::with_target(env, prefix, 9898).await)
    }

    /// A namespace with the target `podinfo` serving on `port`.
    async fn with_target(env: TestEnv, prefix: &str, port: u16) -> Fixture {
        let ns = env.namespace(prefix).await;
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
        deployments
            .create(
                &PostParams::default(),
                &common::canary::target("podinfo", 2, "podinfo:6.0.0", port),
            )
            .await
            .expect("creating the target");
        Fixture { env, ns }
    }

    fn dynamic(&self, api_version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        Api::namespaced_with(
            self.env.client.clone(),
            &self.ns.name,
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    }

    fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    async fn create_canary(&self, spec: Value) {
        let mut canary = common::canary::kubernetes(
            "podinfo",
            Some(60),
            json!({"interval": "1s", "threshold": 2, "iterations": 2}),
        );
        for (k, v) in spec.as_object().cloned().unwrap_or_default() {
            canary["spec"][k] = v;
        }
        let canary: Canary = serde_json::from_value(canary).expect("Canary JSON");
        self.canaries()
            .create(&PostParams::default(), &canary)
            .await
            .expect("creating the Canary");
    }

    async fn wait_phase(&self, phase: CanaryPhase, ctl: &ControllerProcess) -> Canary {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let canary = self.canaries().get("podinfo").await.expect("the Canary");
            if canary.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return canary;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "Canary not {phase:?}; status: {:?}\nwarnings: {:#?}\nlog:\n{}",
                    canary.status,
                    self.warnings().await,
                    ctl.log_end()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `reason: message` of the Warning Events on Canaries (but the `Reinterpreted` one a
    /// Canary without metrics or webhooks gets).
    async fn warnings(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.involved_object.kind.as_deref() == Some("Canary"))
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter(|e| e.reason.as_deref() != Some("Reinterpreted"))
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect()
    }
}

/// (name, port, targetPort) of each port, and the selector.
fn ports_and_selector(service: &Service) -> (Vec<(String, i32, Value)>, Value) {
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.port,
                serde_json::to_value(p.target_port).unwrap_or_default(),
            )
        })
        .collect();
    (ports, json!(spec.selector))
}

/// Flagger's `test/kubernetes/test-deployment.sh` pre-creates the apex Service with the app's own
/// port: the Canary takes it over (its ports and selector replaced, not merged: a merge gives two
/// ports named `http`, which the apiserver refuses), adds no owner reference, adds Flux's and
/// Helm's no-drift annotations as Flagger does (`test/kubernetes/test-deployment.sh` greps for
/// them), and `revertOnDeletion` gives it back exactly as the user made it.
#[tokio::test]
async fn a_user_made_apex_service_is_taken_over_and_given_back() {
    let Some(f) = Fixture::new("cto-apex").await else {
        return;
    };
    let user: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "podinfo", "labels": {"app": "podinfo", "team": "a"},
            "annotations": {"owner": "team-a"}},
        "spec": {"type": "ClusterIP", "selector": {"app": "podinfo"},
            "ports": [{"name": "http", "port": 9898, "protocol": "TCP", "targetPort": "http"}]},
    }))
    .unwrap();
    let as_kubectl = PostParams {
        field_manager: Some("kubectl-client-side-apply".into()),
        ..Default::default()
    };
    f.services().create(&as_kubectl, &user).await.unwrap();
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({"revertOnDeletion": true})).await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;

    let apex = f.services().get("podinfo").await.unwrap();
    assert_eq!(
        ports_and_selector(&apex),
        (
            vec![("http".to_string(), 80, json!(9898))],
            json!({"app": "podinfo-primary"})
        ),
        "the Canary's port and selector replace the user's"
    );
    assert!(apex.owner_references().is_empty(), "{apex:?}");
    assert_eq!(apex.labels(), user.labels(), "the user's labels are left");
    assert_eq!(
        apex.annotations().get("owner").map(String::as_str),
        Some("team-a")
    );
    for key in [
        "kustomize.toolkit.fluxcd.io/reconcile",
        "helm.toolkit.fluxcd.io/driftDetection",
    ] {
        assert_eq!(
            apex.annotations().get(key).map(String::as_str),
            Some("disabled"),
            "{key} on the taken-over Service, as Flagger writes it: {:?}",
            apex.annotations()
        );
    }
    assert!(
        f.warnings().await.is_empty(),
        "{:#?}\n{}",
        f.warnings().await,
        ctl.log_end()
    );

    f.canaries()
        .delete("podinfo", &Default::default())
        .await
        .unwrap();
    eventually(TIMEOUT, "the Canary gone", || async {
        f.canaries()
            .get_opt("podinfo")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let back = f.services().get("podinfo").await.unwrap();
    assert_eq!(
        ports_and_selector(&back),
        ports_and_selector(&user),
        "the user's ports and selector are back"
    );
    assert_eq!(back.labels(), user.labels());
    assert_eq!(
        back.annotations(),
        user.annotations(),
        "nothing of Sluice's is left"
    );
    assert!(back.owner_references().is_empty());
    // Not garbage-collected with the generated objects.
    eventually(TIMEOUT, "the -primary Service collected", || async {
        f.services()
            .get_opt("podinfo-primary")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(f.services().get_opt("podinfo").await.unwrap().is_some());
}

fn stalled(canary: &Canary) -> Option<String> {
    canary
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == "Stalled" && c.status == "True")
        .map(|c| format!("{}: {}", c.reason, c.message.clone().unwrap_or_default()))
}

/// A write the apiserver refuses (a `targetPort` out of range, which only the Service's own
/// validation checks) is one Warning Event and the condition `Stalled=True` / `WriteRefused`
/// with the apiserver's words, not a log line per tick; fixing the Canary clears it.
#[tokio::test]
async fn a_refused_write_is_one_warning_and_a_stalled_condition_until_fixed() {
    let Some(f) = Fixture::new("cto-refused").await else {
        return;
    };
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({"service": {"port": 80, "targetPort": 70000}}))
        .await;
    let condition = eventually(TIMEOUT, "the Stalled condition", || async {
        stalled(&f.canaries().get("podinfo").await.unwrap())
    })
    .await;
    assert!(
        condition.starts_with("WriteRefused: ") && condition.contains("70000"),
        "{condition}"
    );
    // Several ticks later: still one Warning (besides the primary's readiness waits a loaded
    // machine may add while initialising).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warnings: Vec<String> = f
        .warnings()
        .await
        .into_iter()
        .filter(|w| !w.starts_with("Synced: waiting for rollout to finish"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}\n{}", ctl.log_end());
    assert!(
        warnings[0].contains("spec.service") && warnings[0].contains("70000"),
        "{warnings:#?}"
    );
    f.canaries()
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"service": {"targetPort": 9898}}})),
        )
        .await
        .unwrap();
    let canary = f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let canary = if stalled(&canary).is_some() {
        eventually(TIMEOUT, "the Stalled condition gone", || async {
            let c = f.canaries().get("podinfo").await.unwrap();
            stalled(&c).is_none().then_some(c)
        })
        .await
    } else {
        canary
    };
    let status = canary.status.unwrap();
    assert!(
        status.conditions.iter().any(|c| c.r#type == "Promoted"),
        "{status:?}"
    );
}

/// `--mesh-provider gatewayapi:v1` (Flagger's `-mesh-provider`): a Canary naming no provider is
/// routed through a generated HTTPRoute on the real Traefik Gateway and promoted through it.
#[tokio::test]
async fn the_mesh_provider_flag_routes_canaries_that_name_none() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let f = Fixture::with_target(env, "cto-mesh", gw.echo_port).await;
    let host = format!("{}.sluice.test", f.ns.name);
    f.env
        .create(
            &f.ns.name,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "gw"},
                "spec": {"gatewayClassName": gw.class, "listeners": [
                    {"name": "web", "protocol": "HTTP", "port": gw.port, "hostname": host},
                ]},
            }),
        )
        .await;
    let ctl =
        ControllerProcess::start_with(&f.env, &f.ns.name, &["--mesh-provider", "gatewayapi:v1"])
            .await;
    f.create_canary(json!({
        "provider": null,
        "service": {"port": 80, "targetPort": gw.echo_port, "hosts": [host],
            "gatewayRefs": [{"name": "gw"}]},
        "analysis": {"interval": "1s", "threshold": 2, "stepWeight": 50, "maxWeight": 50},
    }))
    .await;
    let canary = f.canaries().get("podinfo").await.unwrap();
    assert_eq!(canary.spec.provider, None, "the Canary names no provider");
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let routes = f.dynamic("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes");
    let route = eventually(TIMEOUT, "the generated HTTPRoute", || async {
        routes.get_opt("podinfo").await.ok()?
    })
    .await;
    let backends = serde_json::to_value(&route).unwrap()["spec"]["rules"][0]["backendRefs"].clone();
    assert_eq!(
        backends[0]["name"],
        "podinfo-primary",
        "{}",
        serde_json::to_string_pretty(&route).unwrap()
    );
    let virtual_services = f.dynamic(
        "networking.istio.io/v1beta1",
        "VirtualService",
        "virtualservices",
    );
    assert!(virtual_services.get_opt("podinfo").await.unwrap().is_none());
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
        )
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Succeeded, &ctl).await;
    let primary = deployments.get("podinfo-primary").await.unwrap();
    assert_eq!(
        primary.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("podinfo:6.0.1")
    );
}

/// Without `--mesh-provider`, a Canary naming no provider gets Flagger's default, `istio`: its
/// VirtualService is generated.
#[tokio::test]
async fn without_the_flag_a_canary_naming_no_provider_is_routed_by_istio() {
    let Some(f) = Fixture::new("cto-default").await else {
        return;
    };
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({"provider": null})).await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let virtual_services = f.dynamic(
        "networking.istio.io/v1beta1",
        "VirtualService",
        "virtualservices",
    );
    eventually(TIMEOUT, "the generated VirtualService", || async {
        virtual_services.get_opt("podinfo").await.ok()?
    })
    .await;
}

/// `sluice lint` agrees with the apiserver (`kubectl create --dry-run=server`) on explicit nulls:
/// a null field is dropped by the apiserver, nullable or not (Flagger's podinfo Helm chart renders
/// `webhooks: null`), so both accept it; a null list item, or a required field given as null, is
/// refused by both.
#[tokio::test]
async fn lint_accepts_the_explicit_nulls_the_apiserver_accepts() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("cto-lint-null").await;
    let canary = |name: &str, analysis: &str, target: &str| {
        format!(
            "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata:\n  name: {name}\nspec:\n  \
             provider: kubernetes\n  targetRef: {target}\n  service:\n    port: 9898\n    \
             gateways: null\n  analysis:\n    interval: 1m\n    threshold: 5\n    iterations: 10\n{analysis}"
        )
    };
    let web = "{apiVersion: apps/v1, kind: Deployment, name: web}";
    // (what, manifest, valid)
    let cases = [
        (
            "webhooks: null (Flagger's podinfo chart)",
            canary("hooks-null", "    webhooks: null\n    metrics: null\n", web),
            true,
        ),
        (
            "match: null and sessionAffinity: null",
            canary(
                "match-null",
                "    match: null\n    sessionAffinity: null\n",
                web,
            ),
            true,
        ),
        (
            "a null webhook in the list",
            canary("hook-item-null", "    webhooks: [null]\n", web),
            false,
        ),
        (
            "a required targetRef given as null",
            canary("target-null", "", "null"),
            false,
        ),
    ];
    let dir = env
        .dir
        .join(format!("cto-lint-null-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut disagreements = Vec::new();
    for (i, (what, manifest, valid)) in cases.iter().enumerate() {
        let file = dir.join(format!("{i}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        let lint = std::process::Command::new(common::controller::sluice_bin())
            .arg("lint")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        let apiserver = env
            .kubectl()
            .args(["create", "--dry-run=server", "-n", &ns.name, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let (lint_ok, api_ok) = (lint.status.success(), apiserver.status.success());
        if lint_ok != *valid || api_ok != *valid {
            let text = |o: &std::process::Output| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            };
            disagreements.push(format!(
                "{what}: expected valid={valid}, lint {lint_ok}, apiserver {api_ok}\n{manifest}\nlint: {}\nkubectl: {}",
                text(&lint),
                text(&apiserver)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}

/// A `DaemonSet` target (Flagger runs DaemonSets; Sluice does not yet) is refused, never read as
/// a Deployment: one Warning naming `spec.targetRef.kind`, the condition `Stalled=True` /
/// `InvalidSpec`, and nothing created (no `-primary`, no Services).
#[tokio::test]
async fn a_daemonset_target_is_refused_naming_the_field_and_nothing_is_created() {
    let Some(f) = Fixture::new("cto-daemonset").await else {
        return;
    };
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    // A Deployment of the same name exists: the old code ran it as the target.
    f.create_canary(json!({
        "targetRef": {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "podinfo"},
    }))
    .await;
    let condition = eventually(TIMEOUT, "the Stalled condition", || async {
        stalled(&f.canaries().get("podinfo").await.unwrap())
    })
    .await;
    assert!(
        condition.starts_with("InvalidSpec: ") && condition.contains("spec.targetRef.kind"),
        "{condition}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warnings = f.warnings().await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}\n{}", ctl.log_end());
    assert!(
        warnings[0].contains("spec.targetRef.kind") && warnings[0].contains("DaemonSet"),
        "{warnings:#?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    assert!(
        deployments
            .get_opt("podinfo-primary")
            .await
            .unwrap()
            .is_none()
    );
    assert!(f.services().get_opt("podinfo").await.unwrap().is_none());
    let canary = f.canaries().get("podinfo").await.unwrap();
    assert_ne!(
        canary.status.and_then(|s| s.phase),
        Some(CanaryPhase::Initialized)
    );
}

/// Flagger's Istio script pre-creates the VirtualService: the Canary adopts it without an owner
/// reference (deleting the Canary does not garbage-collect it) and `revertOnDeletion` gives it its
/// original spec back.
#[tokio::test]
async fn a_user_made_virtual_service_is_adopted_without_an_owner_and_restored_on_deletion() {
    let Some(f) = Fixture::new("cto-vs").await else {
        return;
    };
    let original = json!({"hosts": ["podinfo"], "http": [{"route": [
        {"destination": {"host": "podinfo"}, "weight": 100}]}]});
    f.env
        .create(
            &f.ns.name,
            json!({
                "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                "metadata": {"name": "podinfo"},
                "spec": original,
            }),
        )
        .await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({"provider": "istio", "revertOnDeletion": true}))
        .await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let api = f.dynamic(
        "networking.istio.io/v1beta1",
        "VirtualService",
        "virtualservices",
    );
    let adopted = eventually(
        TIMEOUT,
        "the VirtualService routed to the primary",
        || async {
            let vs = api.get("podinfo").await.ok()?;
            let spec = serde_json::to_value(&vs).ok()?["spec"].clone();
            (spec["http"][0]["route"][0]["destination"]["host"] == "podinfo-primary").then_some(vs)
        },
    )
    .await;
    assert!(
        adopted.owner_references().is_empty(),
        "{:?}",
        adopted.owner_references()
    );

    f.canaries()
        .delete("podinfo", &Default::default())
        .await
        .unwrap();
    eventually(TIMEOUT, "the Canary gone", || async {
        f.canaries()
            .get_opt("podinfo")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually(TIMEOUT, "the -primary Service collected", || async {
        f.services()
            .get_opt("podinfo-primary")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let back = api
        .get_opt("podinfo")
        .await
        .unwrap()
        .expect("the user's VirtualService outlives the Canary");
    assert_eq!(serde_json::to_value(&back).unwrap()["spec"], original);
    assert!(
        !back
            .annotations()
            .keys()
            .any(|k| k.starts_with("sluice.dev/")),
        "{:?}",
        back.annotations()
    );
}

/// The labels and annotations of a Service, and its ports as (name, port).
fn service_shape(service: &Service) -> (Vec<(String, i32)>, Value, Value) {
    let ports = service
        .spec
        .clone()
        .unwrap_or_default()
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    (ports, json!(service.labels()), json!(service.annotations()))
}

/// Item 3 of issue 17, as Flagger's Istio and NGINX scripts check it: `service.apex` (and
/// `primary` / `canary`) labels and annotations land on the generated Services; with
/// `portDiscovery` the target's other container ports become Service ports (by their names);
/// the target's annotations are copied to `-primary` without Flux's `toolkit.fluxcd.io` keys, at
/// creation and again at promotion; the canary Ingress of the `nginx` provider carries the
/// user's Ingress's labels and annotations (`kubernetes.io/ingress.class` among them).
#[tokio::test]
async fn metadata_and_discovered_ports_are_copied_as_flagger_copies_them() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("cto-meta").await;
    let f = Fixture { env, ns };
    let mut target =
        serde_json::to_value(common::canary::target("podinfo", 1, "podinfo:6.0.0", 9898)).unwrap();
    target["metadata"]["annotations"] = json!({
        "app.kubernetes.io/instance": "test-annotation-prefix",
        "kustomize.toolkit.fluxcd.io/checksum": "0a40893b",
    });
    target["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 9898},
        {"name": "http-metrics", "containerPort": 9797},
        {"name": "grpc", "containerPort": 9999},
    ]);
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(target).unwrap(),
        )
        .await
        .unwrap();
    f.env
        .create(
            &f.ns.name,
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "podinfo", "labels": {"app.kubernetes.io/name": "podinfo"},
                    "annotations": {"kubernetes.io/ingress.class": "nginx"}},
                "spec": {"rules": [{"host": "app.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend":
                        {"service": {"name": "podinfo", "port": {"number": 80}}}}]}}]},
            }),
        )
        .await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "provider": "nginx",
        "ingressRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "podinfo"},
        "service": {"port": 80, "targetPort": 9898, "portDiscovery": true,
            "apex": {"labels": {"test": "labels-test"}, "annotations": {"test": "annotations-test"}},
            "primary": {"labels": {"tier": "primary"}},
            "canary": {"annotations": {"note": "canary"}}},
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;

    let ports = vec![
        ("http".to_string(), 80),
        ("grpc".to_string(), 9999),
        ("http-metrics".to_string(), 9797),
    ];
    for (name, label, annotation) in [
        (
            "podinfo",
            Some(("test", "labels-test")),
            Some(("test", "annotations-test")),
        ),
        ("podinfo-primary", Some(("tier", "primary")), None),
        ("podinfo-canary", None, Some(("note", "canary"))),
    ] {
        let (got_ports, labels, annotations) =
            service_shape(&f.services().get(name).await.unwrap());
        assert_eq!(
            got_ports, ports,
            "{name}: service.port, then the discovered ports"
        );
        assert_eq!(labels["app"], name, "{name}: {labels}");
        if let Some((k, v)) = label {
            assert_eq!(labels[k], v, "{name}: {labels}");
        }
        if let Some((k, v)) = annotation {
            assert_eq!(annotations[k], v, "{name}: {annotations}");
        }
        assert_eq!(
            annotations["kustomize.toolkit.fluxcd.io/reconcile"], "disabled",
            "{name}: {annotations}"
        );
    }

    let primary_annotations = |d: Deployment| json!(d.annotations());
    let annotations = primary_annotations(deployments.get("podinfo-primary").await.unwrap());
    assert_eq!(
        annotations["app.kubernetes.io/instance"], "test-annotation-prefix",
        "{annotations}"
    );
    assert!(
        annotations
            .get("kustomize.toolkit.fluxcd.io/checksum")
            .is_none(),
        "{annotations}"
    );

    let ingresses = f.dynamic("networking.k8s.io/v1", "Ingress", "ingresses");
    let copy = ingresses.get("podinfo-canary").await.unwrap();
    assert_eq!(
        copy.annotations()
            .get("kubernetes.io/ingress.class")
            .map(String::as_str),
        Some("nginx"),
        "{:?}",
        copy.annotations()
    );
    assert_eq!(
        copy.labels()
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("podinfo"),
        "{:?}",
        copy.labels()
    );

    // Promotion copies the annotations again.
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "metadata": {"annotations": {"app.kubernetes.io/instance": "v2"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
        )
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Succeeded, &ctl).await;
    let annotations = primary_annotations(deployments.get("podinfo-primary").await.unwrap());
    assert_eq!(
        annotations["app.kubernetes.io/instance"], "v2",
        "{annotations}"
    );
}

/// (path, phase) of every webhook call.
type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// Webhooks that record the `phase` of every call: `/rollout` (confirm-rollout) always open,
/// `/promotion` (confirm-promotion) closed on its first call, open after.
struct PhaseHooks {
    url: String,
    calls: Calls,
}

impl PhaseHooks {
    async fn start() -> PhaseHooks {
        use axum::http::StatusCode;
        let calls: Calls = Default::default();
        let record = |path: &'static str, calls: Calls| {
            move |body: axum::Json<Value>| async move {
                let phase = body["phase"].as_str().unwrap_or_default().to_string();
                let mut calls = calls.lock().unwrap();
                let first = !calls.iter().any(|(p, _)| p == path);
                calls.push((path.to_string(), phase));
                if path == "/promotion" && first {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::OK
                }
            }
        };
        let app = axum::Router::new()
            .route(
                "/rollout",
                axum::routing::post(record("/rollout", calls.clone())),
            )
            .route(
                "/promotion",
                axum::routing::post(record("/promotion", calls.clone())),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        PhaseHooks {
            url: format!("http://{addr}"),
            calls,
        }
    }

    fn phases(&self, path: &str) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, phase)| phase.clone())
            .collect()
    }
}

/// Every status the Canary `podinfo` is written with, in order (a watch from before it exists).
fn record_statuses(
    canaries: Api<Canary>,
) -> std::sync::Arc<std::sync::Mutex<Vec<sluice::api::flagger::canary::CanaryStatus>>> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
    let into = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(canaries, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) = event
                && let Some(status) = c.status
            {
                let mut seen = into.lock().unwrap();
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
            }
        }
    });
    seen
}

/// Item 6 of issue 17, against a Blue/Green run routed by the `nginx` provider: the status has
/// `failedChecks: 0` already while `Initializing`; `canaryWeight` is never written as 100 (the
/// last iteration routes all traffic to the canary, but Flagger reports no weight for
/// Blue/Green in status; `flagger_canary_weight` does report the 100 routed); `Promoting` keeps
/// `iterations`; the confirm-rollout webhook is sent the Canary's own phase and
/// confirm-promotion `Progressing` (also once the run waits for promotion); and deleting the
/// Canary (`revertOnDeletion`) shows the phase `Terminating` while it reverts.
#[tokio::test]
async fn blue_green_status_and_webhook_phases_are_flaggers() {
    let Some(f) = Fixture::new("cto-status").await else {
        return;
    };
    f.env
        .create(
            &f.ns.name,
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "podinfo"},
                "spec": {"rules": [{"host": "app.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend":
                        {"service": {"name": "podinfo", "port": {"number": 80}}}}]}}]},
            }),
        )
        .await;
    let hooks = PhaseHooks::start().await;
    let statuses = record_statuses(f.canaries());
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    // The largest canary weight `flagger_canary_weight` reports during the run.
    let metric_weight = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let (url, seen) = (format!("{}/metrics", ctl.http_url), metric_weight.clone());
    let poller = tokio::spawn(async move {
        loop {
            if let Ok(response) = reqwest::get(&url).await {
                let text = response.text().await.unwrap_or_default();
                let weight = text
                    .lines()
                    .filter(|l| l.starts_with("flagger_canary_weight{"))
                    .filter(|l| l.contains("workload=\"podinfo\""))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .fold(-1.0f64, f64::max);
                seen.fetch_max(weight as i64, std::sync::atomic::Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    f.create_canary(json!({
        "provider": "nginx",
        "revertOnDeletion": true,
        "ingressRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "podinfo"},
        "analysis": {"interval": "1s", "threshold": 2, "iterations": 2, "webhooks": [
            {"name": "rollout-gate", "type": "confirm-rollout", "url": format!("{}/rollout", hooks.url)},
            {"name": "promotion-gate", "type": "confirm-promotion",
             "url": format!("{}/promotion", hooks.url)},
        ]},
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
        )
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Succeeded, &ctl).await;
    f.canaries()
        .delete("podinfo", &Default::default())
        .await
        .unwrap();
    eventually(TIMEOUT, "the Canary gone", || async {
        f.canaries()
            .get_opt("podinfo")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    poller.abort();
    let statuses = statuses.lock().unwrap().clone();
    let phases: Vec<_> = statuses
        .iter()
        .map(|s| (s.phase, s.canary_weight, s.iterations))
        .collect();
    let mut wrong = Vec::new();
    let initializing: Vec<_> = statuses
        .iter()
        .filter(|s| s.phase == Some(CanaryPhase::Initializing))
        .collect();
    if initializing.is_empty() || initializing.iter().any(|s| s.failed_checks != Some(0)) {
        wrong.push(format!("failedChecks while Initializing: {initializing:?}"));
    }
    if statuses.iter().any(|s| s.canary_weight == Some(100)) {
        wrong.push("canaryWeight 100 written during a Blue/Green run".to_string());
    }
    // The metric still tells what the route carries, as Flagger's does.
    let metric = metric_weight.load(std::sync::atomic::Ordering::SeqCst);
    if metric != 100 {
        wrong.push(format!(
            "flagger_canary_weight of podinfo never 100 (at most {metric})"
        ));
    }
    let promoting: Vec<_> = statuses
        .iter()
        .filter(|s| s.phase == Some(CanaryPhase::Promoting))
        .map(|s| s.iterations)
        .collect();
    if promoting.is_empty() || promoting.iter().any(|i| *i != Some(3)) {
        wrong.push(format!(
            "iterations while Promoting (expected 3): {promoting:?}"
        ));
    }
    if !statuses
        .iter()
        .any(|s| s.phase == Some(CanaryPhase::Terminating))
    {
        wrong.push("no Terminating phase on deletion".to_string());
    }
    let rollout = hooks.phases("/rollout");
    if rollout.first().map(String::as_str) != Some("Initialized") {
        wrong.push(format!(
            "confirm-rollout phases {rollout:?} (expected Initialized first)"
        ));
    }
    let promotion = hooks.phases("/promotion");
    if promotion.len() < 2 || promotion.iter().any(|p| p != "Progressing") {
        wrong.push(format!(
            "confirm-promotion phases {promotion:?} (expected Progressing)"
        ));
    }
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\n(phase, canaryWeight, iterations): {phases:?}\n{}",
        ctl.log_end()
    );
}

/// `reason: message` of every Event on Canaries (Normal ones included).
async fn canary_events(f: &Fixture) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Canary"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// Item 8 of issue 17, the Service fields Sluice ignored: `service.headless` makes the three
/// generated Services headless, `service.trafficDistribution` is set on them, and an annotation
/// named in `service.unmanagedMetadata` keeps the value another tool gave it when Sluice applies
/// the Service again (here after a change of `service.apex`).
#[tokio::test]
async fn headless_traffic_distribution_and_unmanaged_metadata_shape_the_services() {
    let Some(f) = Fixture::new("cto-svcfields").await else {
        return;
    };
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "service": {"port": 80, "targetPort": 9898, "headless": true,
            "trafficDistribution": "PreferClose",
            "apex": {"annotations": {"note": "from-canary"}},
            "unmanagedMetadata": {"annotations": ["note"]}},
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    for name in ["podinfo", "podinfo-primary", "podinfo-canary"] {
        let service = serde_json::to_value(f.services().get(name).await.unwrap()).unwrap();
        assert_eq!(service["spec"]["clusterIP"], "None", "{name}: {service}");
        assert_eq!(
            service["spec"]["trafficDistribution"], "PreferClose",
            "{name}: {service}"
        );
    }
    let apex = f.services().get("podinfo").await.unwrap();
    assert_eq!(
        apex.annotations().get("note").map(String::as_str),
        Some("from-canary")
    );
    let as_other_tool = PatchParams {
        field_manager: Some("external-tool".into()),
        ..Default::default()
    };
    f.services()
        .patch(
            "podinfo",
            &as_other_tool,
            &Patch::Merge(json!({"metadata": {"annotations": {"note": "from-elsewhere"}}})),
        )
        .await
        .unwrap();
    f.canaries()
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"service": {"apex": {"labels": {"rev": "2"}}}}})),
        )
        .await
        .unwrap();
    let apex = eventually(TIMEOUT, "the apex Service applied again", || async {
        let apex = f.services().get("podinfo").await.ok()?;
        (apex.labels().get("rev").map(String::as_str) == Some("2")).then_some(apex)
    })
    .await;
    assert_eq!(
        apex.annotations().get("note").map(String::as_str),
        Some("from-elsewhere"),
        "an unmanaged annotation keeps its value"
    );
}

/// Item 8: Istio `service.delegation` generates a delegate VirtualService (no hosts, no
/// gateways); with `service.hosts` set it is refused as Flagger refuses it, but told: one
/// Warning and `Stalled=True` / `InvalidSpec` naming the field, until the hosts go.
#[tokio::test]
async fn istio_delegation_generates_a_delegate_virtual_service() {
    let Some(f) = Fixture::new("cto-delegate").await else {
        return;
    };
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "provider": "istio",
        "service": {"port": 80, "targetPort": 9898, "delegation": true,
            "hosts": ["app.example.com"]},
    }))
    .await;
    let condition = eventually(TIMEOUT, "the Stalled condition", || async {
        stalled(&f.canaries().get("podinfo").await.unwrap())
    })
    .await;
    assert!(
        condition.starts_with("InvalidSpec: ") && condition.contains("service.delegation"),
        "{condition}\n{}",
        ctl.log_end()
    );
    let warnings = f.warnings().await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("service.delegation"), "{warnings:#?}");
    f.canaries()
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"service": {"hosts": null}}})),
        )
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let virtual_services = f.dynamic(
        "networking.istio.io/v1beta1",
        "VirtualService",
        "virtualservices",
    );
    let vs = eventually(TIMEOUT, "the delegate VirtualService", || async {
        virtual_services.get_opt("podinfo").await.ok()?
    })
    .await;
    let spec = serde_json::to_value(&vs).unwrap()["spec"].clone();
    assert!(spec.get("hosts").is_none(), "{spec}");
    assert!(spec.get("gateways").is_none(), "{spec}");
    assert_eq!(
        spec["http"][0]["route"][0]["destination"]["host"], "podinfo-primary",
        "{spec}"
    );
}

/// Item 8: `autoscalerRef.primaryScalerQueries` beside a HorizontalPodAutoscaler (Flagger uses
/// them for KEDA ScaledObjects only, which Sluice refuses) is named in a Warning, not ignored.
#[tokio::test]
async fn primary_scaler_queries_beside_an_hpa_are_named_in_a_warning() {
    let Some(f) = Fixture::new("cto-scalerq").await else {
        return;
    };
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "name": "podinfo", "primaryScalerQueries": {"trigger": "sum(up)"}},
    }))
    .await;
    let warning = eventually(TIMEOUT, "the Warning naming the field", || async {
        canary_events(&f)
            .await
            .into_iter()
            .find(|e| e.contains("spec.autoscalerRef.primaryScalerQueries"))
    })
    .await;
    assert!(
        warning.starts_with("Reinterpreted: "),
        "{warning}\n{}",
        ctl.log_end()
    );
}

/// An HTTPS server on 127.0.0.1 with a self-signed certificate (made with `openssl`) that answers
/// every request `200 OK`; its URL.
fn self_signed_https_server(dir: &std::path::Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(made.status.success(), "{made:?}");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, stream);
                // Read the request head and its body (a client that distrusts the certificate
                // hangs up during the handshake: the read fails).
                let (mut request, mut chunk) = (Vec::new(), [0u8; 4096]);
                loop {
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    format!("https://127.0.0.1:{port}/gate")
}

/// Item 8: a webhook's `disableTLS` is honoured (Sluice had it already; this pins it): a
/// confirm-rollout gate on a server with a self-signed certificate stays closed while the
/// certificate is verified, and opens once `disableTLS: true` is set.
#[tokio::test]
async fn a_webhook_with_disable_tls_reaches_a_self_signed_server() {
    let Some(f) = Fixture::new("cto-tls").await else {
        return;
    };
    let url = self_signed_https_server(&f.env.dir.join(format!("{}-tls", f.ns.name)));
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    let analysis = |disable_tls: bool| {
        json!({"interval": "1s", "threshold": 2, "iterations": 2, "webhooks": [
            {"name": "gate", "type": "confirm-rollout", "url": url, "disableTLS": disable_tls}]})
    };
    f.create_canary(json!({"analysis": analysis(false)})).await;
    f.wait_phase(CanaryPhase::Initialized, &ctl).await;
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
        )
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Waiting, &ctl).await;
    f.canaries()
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"analysis": analysis(true)}})),
        )
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Succeeded, &ctl).await;
}
