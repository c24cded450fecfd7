//! A Canary deleted and re-created under the same name is a new Canary to the controller: what it
//! remembered about the old one (a route hold and the warnings given about it, a write to wait
//! for, when it last ticked) must not carry over. On the real Traefik Gateway API data plane of
//! the test environment (`tests/env/README.md`), a Gateway whose listener admits no route refuses
//! the generated HTTPRoute (`NotAllowedByListeners`).

mod common;

use std::time::Duration;

use common::controller::ControllerProcess;
use common::eventually;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::{Value, json};
use sluice::api::flagger::canary::{Canary, CanaryPhase};

fn gateway_api(client: &kube::Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// The uids of the Canaries named podinfo that got a Warning containing `needle`, one entry per
/// Event.
async fn warned_uids(client: &kube::Client, ns: &str, needle: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Canary")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains(needle))
        })
        .map(|e| e.involved_object.uid.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_canary_recreated_under_the_same_name_is_warned_again_and_not_held_by_stale_state() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let namespace = env.namespace("cr-recreate").await;
    let ns = namespace.name.as_str();
    let client = env.client.clone();
    let host = format!("{ns}.sluice.test");
    let listener = |allowed: Value| {
        json!({"name": "web", "protocol": "HTTP", "port": gw.port, "hostname": host,
               "allowedRoutes": {"namespaces": allowed}})
    };
    let closed = json!({"from": "Selector",
        "selector": {"matchLabels": {"sluice.dev/no-such-label": "true"}}});
    env.create(
        ns,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": gw.class, "listeners": [listener(closed)]},
        }),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let target = common::canary::target("podinfo", 1, "podinfo:1", gw.echo_port);
    deployments
        .create(&PostParams::default(), &target)
        .await
        .expect("the target Deployment");
    let ctl = ControllerProcess::start(&env, ns).await;
    let log = || std::fs::read_to_string(&ctl.log).unwrap_or_default();

    let canaries: Api<Canary> = Api::namespaced(client.clone(), ns);
    let canary: Canary = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo"},
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "progressDeadlineSeconds": 120,
            "service": {"port": 80, "targetPort": gw.echo_port, "hosts": [host],
                        "gatewayRefs": [{"name": "gw"}]},
            "analysis": {"interval": "1s", "threshold": 2, "stepWeight": 50, "maxWeight": 50},
        },
    }))
    .unwrap();
    let initialized = |what: &'static str| {
        let canaries = canaries.clone();
        async move {
            eventually(Duration::from_secs(120), what, || async {
                let c = canaries.get_opt("podinfo").await.ok()??;
                (c.status.as_ref()?.phase == Some(CanaryPhase::Initialized))
                    .then(|| c.metadata.uid.clone())
                    .flatten()
            })
            .await
        }
    };
    let warning = "NotAllowedByListeners";

    // The first Canary: held, warned once.
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("the first Canary");
    let first = initialized("the first Canary Initialized").await;
    eventually(Duration::from_secs(30), "the first Warning", || async {
        (warned_uids(&client, ns, warning).await == vec![first.clone()]).then_some(())
    })
    .await;

    // Deleted while held; its generated objects go with it (garbage collection).
    canaries
        .delete("podinfo", &DeleteParams::default())
        .await
        .expect("deleting the Canary");
    let routes = gateway_api(&client, ns, "HTTPRoute", "httproutes");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(120),
        "the Canary and what it generated gone",
        || async {
            let gone = canaries.get_opt("podinfo").await.ok()?.is_none()
                && routes.get_opt("podinfo").await.ok()?.is_none()
                && deployments.get_opt("podinfo-primary").await.ok()?.is_none()
                && services.get_opt("podinfo-primary").await.ok()?.is_none()
                && services.get_opt("podinfo-canary").await.ok()?.is_none()
                && services.get_opt("podinfo").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;

    // Re-created under the same name: a new Canary, told again at once (the old one's hold and
    // the causes already warned about do not carry over).
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("the Canary again");
    let second = initialized("the re-created Canary Initialized").await;
    assert_ne!(first, second);
    eventually(
        Duration::from_secs(30),
        "a Warning for the re-created Canary",
        || async {
            let uids = warned_uids(&client, ns, warning).await;
            uids.contains(&second).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut uids = warned_uids(&client, ns, warning).await;
    uids.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(uids, want, "one Warning per Canary; log:\n{}", log());

    // Opening the listener lets the new Canary's run go on: nothing stale holds it.
    gateway_api(&client, ns, "Gateway", "gateways")
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"listeners": [listener(json!({"from": "Same"}))]}})),
        )
        .await
        .expect("opening the listener");
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:2"}]}}}})),
        )
        .await
        .expect("a new image");
    eventually(
        Duration::from_secs(120),
        "the new Canary Succeeded",
        || async {
            let c = canaries.get("podinfo").await.ok()?;
            (c.status?.phase == Some(CanaryPhase::Succeeded)).then_some(())
        },
    )
    .await;
    let primary = deployments.get("podinfo-primary").await.expect("primary");
    assert_eq!(
        primary.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("podinfo:2")
    );
    let route = routes.get("podinfo").await.expect("the route");
    let owner = &route.metadata.owner_references.unwrap_or_default()[0];
    assert_eq!(owner.uid, second, "the route belongs to the new Canary");
}

/// kube's `Controller` does not reconcile a deleted Canary (no finalizer without
/// revertOnDeletion): what the controller kept about it — here its `flagger_canary_*` series,
/// which nothing else would drop while no other Canary ticks — goes with the next sweep (60 s).
#[tokio::test]
async fn a_deleted_canarys_state_and_series_are_dropped_by_the_sweep() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let namespace = env.namespace("cr-sweep").await;
    let ns = namespace.name.as_str();
    let client = env.client.clone();
    let target = common::canary::target("podinfo", 1, "podinfo:1", 9898);
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &target)
        .await
        .expect("the target Deployment");
    let ctl = ControllerProcess::start(&env, ns).await;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), ns);
    let canary: Canary = serde_json::from_value(common::canary::kubernetes(
        "podinfo",
        None,
        json!({"interval": "1s", "iterations": 2}),
    ))
    .unwrap();
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("the Canary");
    let series = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with("flagger_canary_"))
            .filter(|l| {
                l.contains("name=\"podinfo\"") && l.contains(&format!("namespace=\"{ns}\""))
            })
            .map(str::to_owned)
            .collect()
    };
    eventually(
        Duration::from_secs(120),
        "the Canary Initialized with its series",
        || async {
            let c = canaries.get("podinfo").await.ok()?;
            let initialized = c.status?.phase == Some(CanaryPhase::Initialized);
            (initialized && !series(&ctl.metrics().await).is_empty()).then_some(())
        },
    )
    .await;
    canaries
        .delete("podinfo", &DeleteParams::default())
        .await
        .expect("deleting the Canary");
    eventually(Duration::from_secs(30), "the Canary gone", || async {
        canaries
            .get_opt("podinfo")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let deleted = tokio::time::Instant::now();
    eventually(Duration::from_secs(80), "its series dropped", || async {
        series(&ctl.metrics().await).is_empty().then_some(())
    })
    .await;
    eprintln!("series dropped {:?} after the deletion", deleted.elapsed());
}
