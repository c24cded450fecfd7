//! Flagger's builtin metrics against the real Prometheus: a Gateway API Canary (served by the
//! test environment's Traefik) whose only check is the builtin `request-success-rate`. Flagger
//! v1.44 reads the app's own `http_request_duration_seconds_count` for `gatewayapi` (its `http`
//! observer); the test exporter serves those counters for the target's pods, so the query
//! Sluice sends finds exactly what Flagger's would. With no 5xx the Canary promotes; once the
//! pods answer half their requests with 500 the next release halts on that metric and rolls back.

mod common;

use std::time::Duration;

use common::controller::ControllerProcess;
use common::exporter::Exporter;
use common::{TestEnv, TestNamespace, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::flagger::canary::{Canary, CanaryPhase};

const TARGET: &str = "podinfo";

async fn set_image(env: &TestEnv, ns: &str, image: &str) {
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .patch(
            TARGET,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": image}]}}}})),
        )
        .await
        .expect("updating the target's image");
}

/// Waits for `phase`; panics with the status, Events and controller log.
async fn wait_phase(
    env: &TestEnv,
    ns: &TestNamespace,
    ctl: &ControllerProcess,
    phase: CanaryPhase,
) -> Canary {
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let canary = canaries.get(TARGET).await.expect("the Canary");
        if canary.status.as_ref().and_then(|s| s.phase) == Some(phase) {
            return canary;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for phase {phase:?}; status: {}\nevents: {:#?}\ncontroller log:\n{}",
                serde_json::to_string_pretty(&canary.status).unwrap_or_default(),
                common::events::canary_messages(&env.client, &ns.name).await,
                ctl.log_end()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What Prometheus answers for `query` now, if a single value.
async fn prometheus_value(env: &TestEnv, query: &str) -> Option<f64> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query", env.prometheus_url))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn gateway_api_builtin_success_rate_promotes_and_halts_on_errors() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let ns = env.namespace("builtin-gw").await;
    let host = format!("{}.sluice.test", ns.name);
    env.create(
        &ns.name,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": gw.class, "listeners": [
                {"name": "web", "protocol": "HTTP", "port": gw.port, "hostname": host},
            ]},
        }),
    )
    .await;
    let target = common::canary::target(TARGET, 1, "podinfo:1", gw.echo_port);
    Api::<Deployment>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &target)
        .await
        .expect("creating the target Deployment");

    // The app's own request counters, as Prometheus' Kubernetes pod discovery labels them.
    let exporter = Exporter::start(&env, "builtin-gw").await;
    let pod = |status: &str| {
        format!(
            "http_request_duration_seconds_count{{kubernetes_namespace=\"{}\",kubernetes_pod_name=\"{TARGET}-7d9f8b6c5-x2k4p\",status=\"{status}\"}}",
            ns.name
        )
    };
    exporter.count(&pod("200"), 20.0);
    // Flagger's query (its `http` observer) over a 10s window.
    let success_rate = format!(
        "sum(rate(http_request_duration_seconds_count{{kubernetes_namespace=\"{ns}\",status!~\"5.*\"}}[10s])) / sum(rate(http_request_duration_seconds_count{{kubernetes_namespace=\"{ns}\"}}[10s])) * 100",
        ns = ns.name
    );
    eventually(
        Duration::from_secs(60),
        "Prometheus to see the app's requests",
        || async { (prometheus_value(&env, &success_rate).await? == 100.0).then_some(()) },
    )
    .await;

    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let canary: Canary = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": TARGET},
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": TARGET},
            "progressDeadlineSeconds": 120,
            "service": {"port": 80, "targetPort": gw.echo_port, "hosts": [host],
                        "gatewayRefs": [{"name": "gw"}]},
            "analysis": {
                "interval": "1s", "threshold": 2, "stepWeight": 50, "maxWeight": 50,
                "metrics": [{"name": "request-success-rate", "interval": "10s",
                             "thresholdRange": {"min": 99}}],
            },
        },
    }))
    .expect("Canary JSON");
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns.name);
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("creating the Canary");
    wait_phase(&env, &ns, &ctl, CanaryPhase::Initialized).await;

    // No 5xx: the builtin finds 100% and the release is promoted.
    set_image(&env, &ns.name, "podinfo:2").await;
    wait_phase(&env, &ns, &ctl, CanaryPhase::Progressing).await;
    let done = wait_phase(&env, &ns, &ctl, CanaryPhase::Succeeded).await;
    assert_eq!(done.status.and_then(|s| s.failed_checks), Some(0));
    let metrics = ctl.metrics().await;
    assert!(
        metrics.contains("metric=\"request-success-rate\"} 100"),
        "the builtin's value is exported as Flagger's flagger_canary_metric_analysis: {metrics}"
    );

    // Half the requests fail: the next release halts on the builtin and is rolled back.
    exporter.count(&pod("500"), 20.0);
    eventually(
        Duration::from_secs(60),
        "Prometheus to see the 5xx",
        || async { (prometheus_value(&env, &success_rate).await? < 90.0).then_some(()) },
    )
    .await;
    set_image(&env, &ns.name, "podinfo:3").await;
    wait_phase(&env, &ns, &ctl, CanaryPhase::Failed).await;
    let events = common::events::canary_messages_having(
        &env.client,
        &ns.name,
        &["request-success-rate", "< 99"],
    )
    .await;
    assert!(
        events
            .iter()
            .any(|m| m.contains("request-success-rate") && m.contains("< 99")),
        "a Halt naming the builtin: {events:#?}"
    );
}
