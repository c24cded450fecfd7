//! A Canary controller whose ServiceAccount may not watch one route kind: `sluice controller`
//! runs as the Helm chart's ServiceAccount rendered with `rbac.trafficRouters.istio=false` (the
//! chart's RBAC applied for real, a TokenRequest token, no other credentials), in a cluster that
//! serves Istio's CRDs. The controller must become ready, run a `kubernetes` Canary through a
//! release as usual, log one warning naming VirtualServices and what to grant, make no refused
//! request, and leave an `istio` Canary untouched with one Warning Event per generation.

mod common;

use std::time::Duration;

use common::service_account::{SaController, chart_account};
use common::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use sluice::api::flagger::canary::{Canary, CanaryPhase};

/// The reason of the Warning Event a Canary gets when its provider's kind may not be watched.
const REASON: &str = "RoutingNotPermitted";

async fn create_target(env: &TestEnv, ns: &str, name: &str, image: &str) {
    let deployment = common::canary::target(name, 1, image, 9898);
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating a target Deployment");
}

async fn set_image(env: &TestEnv, ns: &str, name: &str, image: &str) {
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": image}]}}}})),
        )
        .await
        .expect("updating a target's image");
}

async fn create_canary(env: &TestEnv, ns: &str, name: &str, provider: &str) {
    let canary: Canary = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "provider": provider,
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 60,
            "service": {"port": 80, "targetPort": 9898},
            "analysis": {"interval": "1s", "threshold": 2, "iterations": 2},
        },
    }))
    .expect("Canary JSON");
    Api::<Canary>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &canary)
        .await
        .expect("creating a Canary");
}

/// (type, reason, message) of the Events on Canary `name`.
async fn canary_events(env: &TestEnv, ns: &str, name: &str) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(env.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Canary")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

async fn not_permitted(env: &TestEnv, ns: &str, name: &str) -> Vec<String> {
    canary_events(env, ns, name)
        .await
        .into_iter()
        .filter(|(kind, reason, _)| kind == "Warning" && reason == REASON)
        .map(|(_, _, message)| message)
        .collect()
}

fn istio(env: &TestEnv, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1beta1", kind);
    Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

async fn phase(canaries: &Api<Canary>, name: &str) -> Option<CanaryPhase> {
    canaries.get(name).await.ok()?.status?.phase
}

#[tokio::test]
async fn a_route_kind_the_controller_may_not_watch_holds_only_its_own_canaries() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(helm) = env.helm.clone() else {
        let msg = "skipped: the env file names no HELM (rerun tests/env/up, which builds helm)";
        if common::is_ci() {
            panic!("CI=true but {msg}");
        }
        eprintln!("{msg}");
        return;
    };
    let namespace = env.namespace("canary-rbac").await;
    let ns = namespace.name.as_str();
    let release = common::unique_name("noistio");
    let chart = chart_account(
        &env,
        &helm,
        ns,
        &release,
        &["rbac.trafficRouters.istio=false"],
    )
    .await;
    // The cluster serves VirtualServices; the chart's role does not grant them, the rest it does.
    istio(&env, ns, "VirtualService", "virtualservices")
        .list(&ListParams::default())
        .await
        .expect("the cluster serves VirtualServices");
    assert_eq!(
        chart.can(
            &env,
            &["list", "virtualservices.networking.istio.io", "-n", ns]
        ),
        "no"
    );
    assert_eq!(
        chart.can(
            &env,
            &["watch", "virtualservices.networking.istio.io", "-n", ns]
        ),
        "no"
    );
    assert_eq!(
        chart.can(
            &env,
            &["list", "httproutes.gateway.networking.k8s.io", "-n", ns]
        ),
        "yes"
    );
    assert_eq!(
        chart.can(&env, &["list", "trafficsplits.split.smi-spec.io", "-n", ns]),
        "yes"
    );

    create_target(&env, ns, "podinfo", "podinfo:6.0.0").await;
    create_target(&env, ns, "mesh", "mesh:1").await;
    // Ready (the start waits for /readyz): the VirtualService cache it may not fill holds nothing.
    let ctl = SaController::start(&env, ns, &chart.kubeconfig).await;
    create_canary(&env, ns, "mesh", "istio").await;
    create_canary(&env, ns, "podinfo", "kubernetes").await;

    // (a) The kubernetes Canary initialises and promotes a release as usual.
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    eventually(Duration::from_secs(120), "podinfo Initialized", || async {
        (phase(&canaries, "podinfo").await == Some(CanaryPhase::Initialized)).then_some(())
    })
    .await;
    set_image(&env, ns, "podinfo", "podinfo:6.0.1").await;
    // The istio Canary's target changes too: its tick must still write nothing, nor warn again.
    set_image(&env, ns, "mesh", "mesh:2").await;
    eventually(Duration::from_secs(120), "podinfo Succeeded", || async {
        (phase(&canaries, "podinfo").await == Some(CanaryPhase::Succeeded)).then_some(())
    })
    .await;
    let primary = Api::<Deployment>::namespaced(env.client.clone(), ns)
        .get("podinfo-primary")
        .await
        .expect("podinfo-primary");
    assert_eq!(
        primary.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("podinfo:6.0.1")
    );

    // (b) The istio Canary: one Warning naming the kind and what to grant, nothing written.
    let warnings = not_permitted(&env, ns, "mesh").await;
    assert_eq!(
        warnings.len(),
        1,
        "one Warning per generation: {warnings:#?}"
    );
    let warning = &warnings[0];
    eprintln!("warning: {warning}");
    for needle in [
        &format!("Canary {ns}/mesh"),
        "not permitted to watch VirtualService",
        "networking.istio.io/virtualservices: list, watch refused",
        "rbac.trafficRouters.istio=true",
        "nothing is done for this Canary",
    ] {
        assert!(warning.contains(needle), "{needle:?} in {warning}");
    }
    let mesh = canaries.get("mesh").await.expect("the istio Canary");
    assert_eq!(
        serde_json::to_value(&mesh.status).unwrap(),
        Value::Null,
        "no status written"
    );
    assert!(mesh.metadata.finalizers.unwrap_or_default().is_empty());
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    assert!(deployments.get_opt("mesh-primary").await.unwrap().is_none());
    let target = deployments.get("mesh").await.unwrap();
    assert_eq!(
        target.spec.unwrap().replicas,
        Some(1),
        "the target is not scaled"
    );
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    for name in ["mesh", "mesh-primary", "mesh-canary"] {
        assert!(
            services.get_opt(name).await.unwrap().is_none(),
            "Service {name}"
        );
    }
    let vs = istio(&env, ns, "VirtualService", "virtualservices");
    assert!(vs.get_opt("mesh").await.unwrap().is_none());
    let rules = istio(&env, ns, "DestinationRule", "destinationrules");
    assert!(
        rules
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A new generation is told once more.
    canaries
        .patch(
            "mesh",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"analysis": {"iterations": 3}}})),
        )
        .await
        .expect("changing the istio Canary's spec");
    let warnings = eventually(
        Duration::from_secs(30),
        "a Warning for generation 2",
        || async {
            let w = not_permitted(&env, ns, "mesh").await;
            (w.len() >= 2).then_some(w)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        not_permitted(&env, ns, "mesh").await.len(),
        2,
        "{warnings:#?}"
    );
    assert!(
        not_permitted(&env, ns, "podinfo").await.is_empty(),
        "the kubernetes Canary is not concerned"
    );

    let log = ctl.log_text();
    let disabled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("VirtualService not watched"))
        .collect();
    assert_eq!(disabled.len(), 1, "one warning in the log:\n{log}");
    for needle in [
        "networking.istio.io/virtualservices",
        "list, watch",
        "rbac.trafficRouters.istio",
    ] {
        assert!(
            disabled[0].contains(needle),
            "{needle:?} in {}",
            disabled[0]
        );
    }
    common::service_account::assert_nothing_refused(&log);
    drop(ctl);
    drop(chart);
}
