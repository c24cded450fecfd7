//! Canaries (Flagger `flagger.app/v1beta1`) on the real cluster, driven by `sluice controller`
//! running as a process (one per test, limited to the test's namespace, analysis intervals down
//! to 1s), with metrics from the real Prometheus (values served by a test exporter) and webhooks
//! served by a local HTTP server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::controller::ControllerProcess;
use common::exporter::Exporter;
use common::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::flagger::alert_provider::AlertProvider;
use sluice::api::flagger::canary::{Canary, CanaryPhase};
use sluice::api::flagger::metric_template::MetricTemplate;

struct Fixture {
    env: TestEnv,
    ns: common::TestNamespace,
}

impl Fixture {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    async fn create_target(&self, image: &str) {
        self.create_target_with(image, json!({})).await;
    }

    /// The target, with `pod` merged into its pod spec's first container (`env`, `envFrom`,
    /// `volumeMounts`) and pod spec (`volumes`).
    async fn create_target_with(&self, image: &str, pod: serde_json::Value) {
        self.create_named_target("podinfo", image, pod).await;
    }

    /// A target Deployment named `name` (its `app` label too), like [`Self::create_target_with`].
    async fn create_named_target(&self, name: &str, image: &str, pod: serde_json::Value) {
        let mut container = json!({"name": "podinfo", "image": image,
            "ports": [{"containerPort": 9898, "name": "http"}]});
        let mut spec = json!({});
        for (key, value) in pod.as_object().cloned().unwrap_or_default() {
            if key == "volumes" {
                spec[key] = value;
            } else {
                container[key] = value;
            }
        }
        spec["containers"] = json!([container]);
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": spec,
                },
            },
        }))
        .expect("Deployment JSON");
        self.deployments()
            .create(&PostParams::default(), &deployment)
            .await
            .expect("creating the target Deployment");
    }

    async fn set_image(&self, image: &str) {
        self.set_named_image("podinfo", image).await;
    }

    async fn set_named_image(&self, name: &str, image: &str) {
        self.deployments()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "podinfo", "image": image}]}}}})),
            )
            .await
            .expect("updating the target's image");
    }

    async fn create_canary(&self, analysis: serde_json::Value) {
        self.create_named_canary("podinfo", analysis).await;
    }

    /// A Canary named `name` for the target of the same name.
    async fn create_named_canary(&self, name: &str, analysis: serde_json::Value) {
        let canary: Canary =
            serde_json::from_value(common::canary::kubernetes(name, Some(60), analysis))
                .expect("Canary JSON");
        self.canaries()
            .create(&PostParams::default(), &canary)
            .await
            .expect("creating the Canary");
    }

    async fn metric_template(&self, query: &str) {
        let template: MetricTemplate = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "success-rate"},
            "spec": {"provider": {"type": "prometheus"}, "query": query},
        }))
        .expect("MetricTemplate JSON");
        Api::<MetricTemplate>::namespaced(self.env.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &template)
            .await
            .expect("creating the MetricTemplate");
    }

    async fn wait_phase(
        &self,
        phase: CanaryPhase,
        timeout: Duration,
        ctl: &ControllerProcess,
    ) -> Canary {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let canary = self
                .canaries()
                .get("podinfo")
                .await
                .expect("reading the Canary");
            if canary.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return canary;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "Canary not {phase:?} after {timeout:?}; status: {}\nevents: {:#?}\ncontroller log:\n{}",
                    serde_json::to_string_pretty(&canary.status).unwrap_or_default(),
                    self.events().await,
                    ctl.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn image(&self, name: &str) -> String {
        let d = self
            .deployments()
            .get(name)
            .await
            .expect("reading a Deployment");
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap_or_default()
    }

    async fn replicas(&self, name: &str) -> i32 {
        let d = self
            .deployments()
            .get(name)
            .await
            .expect("reading a Deployment");
        d.spec.unwrap().replicas.unwrap_or(1)
    }

    /// The Canary's phase, if it has a status.
    async fn phase_of(&self, name: &str) -> Option<CanaryPhase> {
        let canary = self.canaries().get(name).await.ok()?;
        canary.status?.phase
    }

    /// Warning Events on Canaries: (reason, message), oldest first.
    async fn warnings(&self) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let mut list: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        list.into_iter()
            .filter(|e| e.involved_object.kind.as_deref() == Some("Canary"))
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    async fn events(&self) -> Vec<String> {
        common::events::canary_messages(&self.env.client, &self.ns.name).await
    }

    /// The Events once one containing each of `expected` is there (they follow the status).
    async fn events_having(&self, expected: &[&str]) -> Vec<String> {
        common::events::canary_messages_having(&self.env.client, &self.ns.name, expected).await
    }
}

async fn fixture(prefix: &str) -> Option<Fixture> {
    let env = common::test_env().await?;
    let ns = env.namespace(prefix).await;
    Some(Fixture { env, ns })
}

#[tokio::test]
async fn initialise_then_new_revision_is_analysed_and_promoted() {
    let Some(f) = fixture("canary-promote").await else {
        return;
    };
    let exporter = Exporter::start(&f.env, "canary-ok").await;
    exporter.set("rate", 99.5);
    exporter.wait_scraped("rate", 99.5).await;
    f.metric_template(&exporter.selector("rate")).await;
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "interval": "1s", "threshold": 2, "iterations": 3,
        "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
            "thresholdRange": {"min": 99}}],
    }))
    .await;

    let canary = f
        .wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    let status = canary.status.unwrap();
    let promoted = status.promoted_condition().expect("Promoted condition");
    assert_eq!(
        (promoted.status.as_str(), promoted.reason.as_str()),
        ("True", "Initialized")
    );
    assert_eq!(status.last_applied_spec, status.last_promoted_spec);
    assert_eq!(f.image("podinfo-primary").await, "podinfo:6.0.0");
    eventually(Duration::from_secs(20), "target scaled to zero", || async {
        (f.replicas("podinfo").await == 0).then_some(())
    })
    .await;
    let primary = f.deployments().get("podinfo-primary").await.unwrap();
    let annotations = primary.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("kustomize.toolkit.fluxcd.io/reconcile")
            .map(String::as_str),
        Some("disabled")
    );
    assert_eq!(
        annotations
            .get("helm.toolkit.fluxcd.io/driftDetection")
            .map(String::as_str),
        Some("disabled")
    );
    let services: Api<Service> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    for (name, selector) in [
        ("podinfo", "podinfo-primary"),
        ("podinfo-primary", "podinfo-primary"),
        ("podinfo-canary", "podinfo"),
    ] {
        let svc = services
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("Service {name}: {e}"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.selector.unwrap()["app"], selector, "{name}");
        assert_eq!(spec.ports.unwrap()[0].port, 80);
    }

    f.set_image("podinfo:6.0.1").await;
    f.wait_phase(CanaryPhase::Progressing, Duration::from_secs(30), &ctl)
        .await;
    let canary = f
        .wait_phase(CanaryPhase::Succeeded, Duration::from_secs(90), &ctl)
        .await;
    let status = canary.status.unwrap();
    assert_eq!(f.image("podinfo-primary").await, "podinfo:6.0.1");
    assert_eq!(status.last_promoted_spec, status.last_applied_spec);
    let promoted = status.promoted_condition().unwrap();
    assert_eq!(
        (promoted.status.as_str(), promoted.reason.as_str()),
        ("True", "Succeeded")
    );
    eventually(Duration::from_secs(20), "canary scaled to zero", || async {
        (f.replicas("podinfo").await == 0).then_some(())
    })
    .await;
    // Flagger's metric names, for Flagger's dashboards.
    let metrics = ctl.metrics().await;
    let ns = format!("namespace=\"{}\"", f.ns.name);
    let sample = |name: &str, labels: &[&str]| -> Option<String> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&ns)
                    && labels.iter().all(|x| l.contains(x))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    let weight = |workload: &str| {
        sample(
            "flagger_canary_weight",
            &[&format!("workload=\"{workload}\"")],
        )
    };
    assert_eq!(
        weight("podinfo-primary").as_deref(),
        Some("100"),
        "{metrics}"
    );
    assert_eq!(weight("podinfo").as_deref(), Some("0"), "{metrics}");
    assert_eq!(
        sample("flagger_canary_status", &["name=\"podinfo\""]).as_deref(),
        Some("1")
    );
    assert_eq!(sample("flagger_canary_total", &[]).as_deref(), Some("1"));
    assert_eq!(
        sample(
            "flagger_canary_metric_analysis",
            &["name=\"podinfo\"", "metric=\"success\""]
        )
        .as_deref(),
        Some("99.5")
    );
    assert_eq!(
        sample(
            "flagger_canary_successes_total",
            &[
                "deployment_strategy=\"blue-green\"",
                "analysis_status=\"completed\""
            ]
        )
        .as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert!(
        sample(
            "flagger_canary_duration_seconds_count",
            &["name=\"podinfo\""]
        )
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(|n| n >= 3.0),
        "every tick is timed: {metrics}"
    );

    let events = f
        .events_having(&["Promotion completed! Scaling down podinfo."])
        .await;
    for expected in [
        "Initialization done! podinfo.",
        "New revision detected! Scaling up podinfo.",
        "Advance podinfo.",
        "Copying podinfo.",
        "Promotion completed! Scaling down podinfo.",
    ] {
        assert!(
            events.iter().any(|e| e.starts_with(expected)),
            "no event {expected:?} in {events:#?}"
        );
    }
}

#[tokio::test]
async fn a_failing_metric_rolls_back_after_threshold_failed_checks() {
    let Some(f) = fixture("canary-rollback").await else {
        return;
    };
    let exporter = Exporter::start(&f.env, "canary-bad").await;
    exporter.set("rate", 50.0);
    exporter.wait_scraped("rate", 50.0).await;
    f.metric_template(&exporter.selector("rate")).await;
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "interval": "1s", "threshold": 3, "iterations": 10,
        "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
            "thresholdRange": {"min": 99}}],
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    f.set_image("podinfo:6.0.1").await;
    let canary = f
        .wait_phase(CanaryPhase::Failed, Duration::from_secs(90), &ctl)
        .await;
    let status = canary.status.unwrap();
    let promoted = status.promoted_condition().unwrap();
    assert_eq!(
        (promoted.status.as_str(), promoted.reason.as_str()),
        ("False", "Failed")
    );
    assert_eq!(status.canary_weight, Some(0));
    assert_ne!(status.last_promoted_spec, status.last_applied_spec);
    assert_eq!(
        f.image("podinfo-primary").await,
        "podinfo:6.0.0",
        "not promoted"
    );
    eventually(Duration::from_secs(20), "canary scaled to zero", || async {
        (f.replicas("podinfo").await == 0).then_some(())
    })
    .await;
    let events = f.events_having(&["Rolling back podinfo."]).await;
    let halts = events
        .iter()
        .filter(|e| e.starts_with("Halt advancement success 50.00 < 99.00"))
        .count();
    assert_eq!(halts, 3, "each failed check is explained: {events:#?}");
    assert!(
        events.iter().any(|e| e.starts_with("Rolling back podinfo.")
            && e.ends_with("failed checks threshold reached 3")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Canary failed! Scaling down podinfo."))
    );
}

#[tokio::test]
async fn confirm_promotion_gate_holds_until_opened() {
    let Some(f) = fixture("canary-gate").await else {
        return;
    };
    let open = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (gate_open, gate_calls) = (open.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/gate",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let open = gate_open.clone();
            let calls = gate_calls.clone();
            async move {
                assert_eq!(body["name"], "podinfo");
                calls.fetch_add(1, Ordering::Relaxed);
                if open.load(Ordering::Relaxed) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::FORBIDDEN
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "interval": "1s", "iterations": 2,
        "webhooks": [{"name": "approve", "type": "confirm-promotion",
            "url": format!("http://{addr}/gate"), "timeout": "5s"}],
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    f.set_image("podinfo:6.0.1").await;
    let canary = f
        .wait_phase(CanaryPhase::WaitingPromotion, Duration::from_secs(60), &ctl)
        .await;
    let promoted = canary.status.unwrap();
    let promoted = promoted.promoted_condition().unwrap();
    assert_eq!(promoted.message.as_deref(), Some("Waiting for approval."));
    // Held: a few more ticks do not promote.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let canary = f.canaries().get("podinfo").await.unwrap();
    assert_eq!(
        canary.status.as_ref().and_then(|s| s.phase),
        Some(CanaryPhase::WaitingPromotion)
    );
    assert_eq!(f.image("podinfo-primary").await, "podinfo:6.0.0");
    assert!(
        calls.load(Ordering::Relaxed) >= 2,
        "the gate is polled every tick"
    );

    open.store(true, Ordering::Relaxed);
    f.wait_phase(CanaryPhase::Succeeded, Duration::from_secs(60), &ctl)
        .await;
    assert_eq!(f.image("podinfo-primary").await, "podinfo:6.0.1");
}

#[tokio::test]
async fn a_config_change_alone_starts_a_run_and_promotes_the_config() {
    let Some(f) = fixture("canary-config").await else {
        return;
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let secrets: Api<Secret> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let cm = |color: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "podinfo-config",
            "labels": {"team": "a"}}, "data": {"color": color}}))
        .unwrap()
    };
    config_maps
        .create(&PostParams::default(), &cm("blue"))
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "podinfo-token"},
        "stringData": {"token": "s3cret"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // Opted out: referenced but neither tracked nor copied.
    let ignored: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "podinfo-static",
        "annotations": {"flagger.app/config-tracking": "disabled"}}, "data": {"a": "b"}}))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &ignored)
        .await
        .unwrap();
    f.create_target_with(
        "podinfo:6.0.0",
        json!({
            "env": [{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "podinfo-config", "key": "color"}}}],
            "envFrom": [{"secretRef": {"name": "podinfo-token"}}],
            "volumeMounts": [{"name": "static", "mountPath": "/etc/static"}],
            "volumes": [{"name": "static", "configMap": {"name": "podinfo-static"}}],
        }),
    )
    .await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({"interval": "1s", "iterations": 2}))
        .await;
    let canary = f
        .wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    let tracked = canary.status.unwrap().tracked_configs.unwrap_or_default();
    assert_eq!(
        tracked.keys().cloned().collect::<Vec<_>>(),
        vec!["configmap/podinfo-config", "secret/podinfo-token"],
        "{tracked:?}"
    );
    let copy = config_maps.get("podinfo-config-primary").await.unwrap();
    assert_eq!(copy.data.as_ref().unwrap()["color"], "blue");
    assert_eq!(copy.labels().get("team").map(String::as_str), Some("a"));
    let owner = &copy.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Canary", "podinfo")
    );
    let secret_copy = secrets.get("podinfo-token-primary").await.unwrap();
    assert_eq!(
        secret_copy.data.unwrap()["token"].0,
        b"s3cret".to_vec(),
        "the Secret is copied too"
    );
    assert!(
        config_maps
            .get_opt("podinfo-static-primary")
            .await
            .unwrap()
            .is_none()
    );
    let primary_pod = || async {
        let d = f.deployments().get("podinfo-primary").await.unwrap();
        d.spec.unwrap().template.spec.unwrap()
    };
    let pod = primary_pod().await;
    let container = &pod.containers[0];
    let env = container.env.as_ref().unwrap()[0]
        .value_from
        .clone()
        .unwrap();
    assert_eq!(
        env.config_map_key_ref.unwrap().name,
        "podinfo-config-primary"
    );
    assert_eq!(
        container.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "podinfo-token-primary"
    );
    assert_eq!(
        pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "podinfo-static",
        "an opted-out config is referenced as it is"
    );
    let target = f.deployments().get("podinfo").await.unwrap();
    let target_env = target.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(
        target_env[0]
            .value_from
            .clone()
            .unwrap()
            .config_map_key_ref
            .unwrap()
            .name,
        "podinfo-config",
        "the target is never rewritten"
    );

    // Only the ConfigMap's value changes: a run starts and promotes it.
    config_maps
        .replace("podinfo-config", &PostParams::default(), &{
            let mut c = config_maps.get("podinfo-config").await.unwrap();
            c.data = cm("green").data;
            c
        })
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Progressing, Duration::from_secs(30), &ctl)
        .await;
    assert_eq!(
        config_maps
            .get("podinfo-config-primary")
            .await
            .unwrap()
            .data
            .unwrap()["color"],
        "blue",
        "the primary keeps the old config during the run"
    );
    let canary = f
        .wait_phase(CanaryPhase::Succeeded, Duration::from_secs(90), &ctl)
        .await;
    let status = canary.status.unwrap();
    assert_ne!(
        status.tracked_configs.unwrap_or_default(),
        tracked,
        "the new checksum is recorded"
    );
    assert_eq!(status.last_applied_spec, status.last_promoted_spec);
    assert_eq!(
        config_maps
            .get("podinfo-config-primary")
            .await
            .unwrap()
            .data
            .unwrap()["color"],
        "green"
    );
    let events = f
        .events_having(&["New revision detected! Scaling up podinfo."])
        .await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("New revision detected! Scaling up podinfo.")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn revert_on_deletion_hands_the_target_back() {
    let Some(f) = fixture("canary-revert").await else {
        return;
    };
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    let canary: Canary = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo"},
        "spec": {
            "provider": "kubernetes",
            "revertOnDeletion": true,
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "progressDeadlineSeconds": 60,
            "service": {"port": 80, "targetPort": 9898},
            "analysis": {"interval": "1s", "iterations": 2},
        },
    }))
    .unwrap();
    f.canaries()
        .create(&PostParams::default(), &canary)
        .await
        .unwrap();
    let canary = f
        .wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    assert!(
        canary
            .finalizers()
            .iter()
            .any(|x| x == "finalizer.flagger.app"),
        "{:?}",
        canary.finalizers()
    );
    eventually(Duration::from_secs(20), "target scaled to zero", || async {
        (f.replicas("podinfo").await == 0).then_some(())
    })
    .await;
    let services: Api<Service> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let selector = |svc: Service| svc.spec.unwrap().selector.unwrap()["app"].clone();
    assert_eq!(
        selector(services.get("podinfo").await.unwrap()),
        "podinfo-primary"
    );

    f.canaries()
        .delete("podinfo", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the Canary gone", || async {
        f.canaries()
            .get_opt("podinfo")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(
        f.replicas("podinfo").await,
        2,
        "scaled back to the primary's replicas"
    );
    let target = f.deployments().get("podinfo").await.unwrap();
    assert_eq!(
        target.status.unwrap().available_replicas,
        Some(2),
        "the target serves before the Canary goes"
    );
    let apex = services.get("podinfo").await.unwrap();
    assert!(
        apex.owner_references().is_empty(),
        "the apex Service outlives the Canary: {:?}",
        apex.owner_references()
    );
    assert_eq!(selector(apex), "podinfo", "the apex routes to the target");
    eventually(
        Duration::from_secs(60),
        "generated objects collected",
        || async {
            let primary = f.deployments().get_opt("podinfo-primary").await.unwrap();
            let canary_svc = services.get_opt("podinfo-canary").await.unwrap();
            (primary.is_none() && canary_svc.is_none()).then_some(())
        },
    )
    .await;
    let events = f.events_having(&["deleted: podinfo handed back"]).await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("deleted: podinfo handed back")),
        "{events:#?}"
    );
    // Still served: the apex is never deleted afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(services.get_opt("podinfo").await.unwrap().is_some());
}

#[tokio::test]
async fn a_rollback_webhook_rolls_back_and_event_webhooks_see_every_event() {
    let Some(f) = fixture("canary-rollback-hook").await else {
        return;
    };
    let roll_back = Arc::new(AtomicBool::new(false));
    let events_seen = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let (flag, seen) = (roll_back.clone(), events_seen.clone());
    let app = axum::Router::new()
        .route(
            "/rollback",
            axum::routing::post(move || {
                let flag = flag.clone();
                async move {
                    if flag.load(Ordering::Relaxed) {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::NOT_FOUND
                    }
                }
            }),
        )
        .route(
            "/events",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body.0);
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "interval": "1s", "iterations": 30,
        "webhooks": [
            {"name": "manual", "type": "rollback", "url": format!("http://{addr}/rollback"), "timeout": "5s"},
            {"name": "audit", "type": "event", "url": format!("http://{addr}/events"),
             "metadata": {"team": "a"}},
        ],
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    f.set_image("podinfo:6.0.1").await;
    f.wait_phase(CanaryPhase::Progressing, Duration::from_secs(30), &ctl)
        .await;
    // Not requested: the run goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let canary = f.canaries().get("podinfo").await.unwrap();
    assert_eq!(
        canary.status.as_ref().and_then(|s| s.phase),
        Some(CanaryPhase::Progressing)
    );
    roll_back.store(true, Ordering::Relaxed);
    let canary = f
        .wait_phase(CanaryPhase::Failed, Duration::from_secs(30), &ctl)
        .await;
    assert!(
        canary.status.unwrap().iterations.unwrap_or(0) < 30,
        "rolled back before the run ended"
    );
    assert_eq!(
        f.image("podinfo-primary").await,
        "podinfo:6.0.0",
        "not promoted"
    );
    eventually(Duration::from_secs(20), "canary scaled to zero", || async {
        (f.replicas("podinfo").await == 0).then_some(())
    })
    .await;
    let events = f.events_having(&["Rolling back podinfo."]).await;
    assert!(
        events.iter().any(
            |e| e.starts_with("Rolling back podinfo.") && e.ends_with("manual webhook invoked")
        ),
        "{events:#?}"
    );
    let seen = events_seen.lock().unwrap().clone();
    let message = |p: &serde_json::Value| {
        p["metadata"]["eventMessage"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    for payload in &seen {
        assert_eq!(payload["name"], "podinfo");
        assert_eq!(payload["namespace"], f.ns.name.as_str());
        assert_eq!(
            payload["metadata"]["team"], "a",
            "the hook's own metadata is kept"
        );
    }
    let new_revision = seen
        .iter()
        .find(|p| message(p).starts_with("New revision detected! Scaling up podinfo."))
        .unwrap_or_else(|| panic!("no new-revision event in {seen:#?}"));
    assert_eq!(new_revision["metadata"]["eventType"], "Normal");
    let rolled_back = seen
        .iter()
        .find(|p| message(p).ends_with("manual webhook invoked"))
        .unwrap_or_else(|| panic!("no rollback event in {seen:#?}"));
    assert_eq!(rolled_back["metadata"]["eventType"], "Warning");
}

/// What an alert listener received: (path, authorization header, body).
type Received = Arc<std::sync::Mutex<Vec<(String, Option<String>, serde_json::Value)>>>;

#[tokio::test]
async fn alerts_reach_slack_and_webhook_providers_by_severity() {
    let Some(f) = fixture("canary-alerts").await else {
        return;
    };
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/{path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: axum::Json<serde_json::Value>| {
                let sink = sink.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    sink.lock().unwrap().push((path, auth, body.0));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "hook-address"},
        "stringData": {"address": format!("http://{addr}/generic"), "token": "t0ken"}}))
    .unwrap();
    Api::<Secret>::namespaced(f.env.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let providers: Api<AlertProvider> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    for provider in [
        json!({"apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
            "metadata": {"name": "slack"},
            "spec": {"type": "slack", "channel": "ops", "address": format!("http://{addr}/slack")}}),
        json!({"apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
            "metadata": {"name": "hook"},
            "spec": {"type": "webhook", "secretRef": {"name": "hook-address"}}}),
    ] {
        let provider: AlertProvider = serde_json::from_value(provider).unwrap();
        providers
            .create(&PostParams::default(), &provider)
            .await
            .unwrap();
    }

    let exporter = Exporter::start(&f.env, "canary-alerts").await;
    exporter.set("rate", 50.0);
    exporter.wait_scraped("rate", 50.0).await;
    f.metric_template(&exporter.selector("rate")).await;
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({
        "interval": "1s", "threshold": 2, "iterations": 10,
        "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
            "thresholdRange": {"min": 99}}],
        "alerts": [
            {"name": "team", "severity": "info", "providerRef": {"name": "slack"}},
            {"name": "pager", "severity": "error", "providerRef": {"name": "hook"}},
            {"name": "lost", "severity": "error", "providerRef": {"name": "missing"}},
        ],
    }))
    .await;
    f.wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    f.set_image("podinfo:6.0.1").await;
    f.wait_phase(CanaryPhase::Failed, Duration::from_secs(90), &ctl)
        .await;
    // Alerts go out after the status is written.
    let received = eventually(Duration::from_secs(15), "the rollback alerts", || {
        let received = received.clone();
        async move {
            let all = received.lock().unwrap().clone();
            (all.iter().filter(|(p, ..)| p == "generic").count() >= 1
                && all.iter().filter(|(p, ..)| p == "slack").count() >= 3)
                .then_some(all)
        }
    })
    .await;
    let slack: Vec<&serde_json::Value> = received
        .iter()
        .filter(|(p, ..)| p == "slack")
        .map(|(_, _, b)| b)
        .collect();
    let text = |b: &serde_json::Value| {
        b["attachments"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let texts: Vec<String> = slack.iter().map(|b| text(b)).collect();
    assert_eq!(
        texts,
        vec![
            "New Deployment detected, initialization completed.",
            "New revision detected, progressing canary analysis.",
            "Failed checks threshold reached 2",
        ],
        "every alert, in order, to the info subscription"
    );
    let init = slack[0];
    assert_eq!(init["channel"], "ops");
    assert_eq!(init["username"], "flagger");
    assert_eq!(init["icon_emoji"], ":rocket:");
    let attachment = &init["attachments"][0];
    assert_eq!(attachment["color"], "good");
    assert_eq!(
        attachment["author_name"],
        format!("podinfo.{}", f.ns.name).as_str()
    );
    assert_eq!(attachment["mrkdwn_in"], json!(["text"]));
    assert_eq!(
        attachment["fields"],
        json!([
            {"title": "Target", "value": format!("Deployment/podinfo.{}", f.ns.name), "short": false},
            {"title": "Failed checks threshold", "value": "2", "short": false},
            {"title": "Progress deadline", "value": "60s", "short": false},
            {"title": "Traffic routing", "value": "Blue/Green", "short": false},
        ])
    );
    assert_eq!(slack[2]["attachments"][0]["color"], "danger");
    assert_eq!(slack[2]["attachments"][0]["fields"], json!([]));

    let generic: Vec<_> = received.iter().filter(|(p, ..)| p == "generic").collect();
    assert_eq!(
        generic.len(),
        1,
        "only errors to the error subscription: {generic:#?}"
    );
    let (_, auth, body) = generic[0];
    assert_eq!(auth.as_deref(), Some("Bearer t0ken"), "the Secret's token");
    assert_eq!(
        body,
        &json!({"name": "podinfo", "namespace": f.ns.name, "severity": "error",
            "message": "Failed checks threshold reached 2", "fields": []})
    );
    let events = f.events_having(&["Alert lost not sent"]).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Alert lost not sent: AlertProvider")
                && e.contains("missing")
                && e.contains("does not exist")),
        "a failed alert is an Event: {events:#?}"
    );
}

#[tokio::test]
async fn the_primary_gets_a_copy_of_the_targets_hpa() {
    let Some(f) = fixture("canary-hpa").await else {
        return;
    };
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "podinfo-hpa", "labels": {"team": "a"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "minReplicas": 2, "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    let canary: Canary = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo"},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "name": "podinfo-hpa", "primaryScalerReplicas": {"minReplicas": 3}},
            "progressDeadlineSeconds": 60,
            "service": {"port": 80, "targetPort": 9898},
            "analysis": {"interval": "1s", "iterations": 2},
        },
    }))
    .unwrap();
    f.canaries()
        .create(&PostParams::default(), &canary)
        .await
        .unwrap();
    f.wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    let primary = hpas.get("podinfo-hpa-primary").await.unwrap();
    let spec = primary.spec.clone().unwrap();
    assert_eq!(spec.scale_target_ref.name, "podinfo-primary");
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(
        (spec.min_replicas, spec.max_replicas),
        (Some(3), 4),
        "primaryScalerReplicas overrides the minimum only"
    );
    assert_eq!(spec.metrics, hpa.spec.clone().unwrap().metrics);
    assert_eq!(primary.labels().get("team").map(String::as_str), Some("a"));
    let owner = &primary.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Canary", "podinfo")
    );
    let target = hpas.get("podinfo-hpa").await.unwrap();
    assert_eq!(
        target.spec.unwrap().scale_target_ref.name,
        "podinfo",
        "the target's HPA is left alone"
    );

    // An edit to the target's HPA reaches the primary with the next release.
    hpas.patch(
        "podinfo-hpa",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxReplicas": 6}})),
    )
    .await
    .unwrap();
    f.set_image("podinfo:6.0.1").await;
    f.wait_phase(CanaryPhase::Succeeded, Duration::from_secs(90), &ctl)
        .await;
    let spec = hpas.get("podinfo-hpa-primary").await.unwrap().spec.unwrap();
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 6));
    assert_eq!(spec.scale_target_ref.name, "podinfo-primary");
}

#[tokio::test]
async fn a_controller_restart_mid_run_continues_where_it_was() {
    let Some(f) = fixture("canary-restart").await else {
        return;
    };
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.create_canary(json!({"interval": "1s", "iterations": 8}))
        .await;
    f.wait_phase(CanaryPhase::Initialized, Duration::from_secs(60), &ctl)
        .await;
    f.set_image("podinfo:6.0.1").await;
    let before = eventually(Duration::from_secs(60), "a few iterations", || async {
        let canary = f.canaries().get("podinfo").await.ok()?;
        let status = canary.status?;
        (status.phase == Some(CanaryPhase::Progressing) && status.iterations.unwrap_or(0) >= 3)
            .then_some(status)
    })
    .await;
    drop(ctl); // SIGKILL mid-run
    let killed_at = before.iterations.unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    // Sample the status until it ends: the run goes on from where it was, never from the start.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let canary = f.canaries().get("podinfo").await.unwrap();
        let status = canary.status.unwrap_or_default();
        seen.push((status.phase, status.iterations.unwrap_or(0)));
        if status.phase == Some(CanaryPhase::Succeeded) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Succeeded after the restart: {seen:?}\n{}",
            ctl.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (phase, iterations) in &seen {
        if *phase == Some(CanaryPhase::Progressing) {
            assert!(
                *iterations >= killed_at,
                "iterations went back from {killed_at}: {seen:?}"
            );
        }
    }
    assert!(
        seen.iter().all(|(p, _)| !matches!(
            p,
            Some(CanaryPhase::Initialized | CanaryPhase::Initializing | CanaryPhase::Failed)
        )),
        "{seen:?}"
    );
    assert_eq!(f.image("podinfo-primary").await, "podinfo:6.0.1");
    let events = f
        .events_having(&["Promotion completed! Scaling down podinfo."])
        .await;
    let count = |prefix: &str| events.iter().filter(|e| e.starts_with(prefix)).count();
    assert_eq!(
        count("New revision detected! Scaling up podinfo."),
        1,
        "{events:#?}"
    );
    assert_eq!(
        count("Starting canary analysis for podinfo."),
        1,
        "{events:#?}"
    );
    assert_eq!(
        count("Promotion completed! Scaling down podinfo."),
        1,
        "{events:#?}"
    );
}

/// Alerts are sent in the background: a Canary whose every alert goes to a provider that never
/// answers (a TCP listener that accepts and never responds; each send waits out its 5s timeout)
/// promotes as fast as a Canary without alerts, both started at the same moment by the same
/// controller. With alerts on the tick path the "New revision detected" alert alone held the run
/// 5s.
#[tokio::test]
async fn an_alert_provider_that_never_answers_does_not_delay_the_run() {
    use std::sync::atomic::AtomicUsize;

    let Some(f) = fixture("canary-silent-alerts").await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket); // open, never read, never answered
        }
    });
    let provider: AlertProvider = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
        "metadata": {"name": "silent"},
        "spec": {"type": "slack", "channel": "ops", "address": format!("http://{addr}/hook")}}))
    .unwrap();
    Api::<AlertProvider>::namespaced(f.env.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &provider)
        .await
        .unwrap();
    f.create_named_target("podinfo", "podinfo:6.0.0", json!({}))
        .await;
    f.create_named_target("quiet", "podinfo:6.0.0", json!({}))
        .await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    let analysis = json!({"interval": "1s", "iterations": 4});
    let mut alerting = analysis.clone();
    alerting["alerts"] = json!([{"name": "team", "severity": "info",
        "providerRef": {"name": "silent"}}]);
    f.create_named_canary("podinfo", alerting).await;
    f.create_named_canary("quiet", analysis).await;
    eventually(
        Duration::from_secs(60),
        "both Canaries Initialized",
        || async {
            (f.phase_of("podinfo").await == Some(CanaryPhase::Initialized)
                && f.phase_of("quiet").await == Some(CanaryPhase::Initialized))
            .then_some(())
        },
    )
    .await;

    // Both new revisions at once; each run's duration, seen from outside.
    let started = tokio::time::Instant::now();
    f.set_named_image("podinfo", "podinfo:6.0.1").await;
    f.set_named_image("quiet", "podinfo:6.0.1").await;
    let mut done: [Option<Duration>; 2] = [None, None];
    while done.iter().any(Option::is_none) {
        for (i, name) in ["podinfo", "quiet"].into_iter().enumerate() {
            if done[i].is_none() && f.phase_of(name).await == Some(CanaryPhase::Succeeded) {
                done[i] = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not both Succeeded after 90s: {done:?}\nevents: {:#?}\n{}",
            f.events().await,
            ctl.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (alerting, quiet) = (done[0].unwrap(), done[1].unwrap());
    eprintln!("run with alerts to a silent provider: {alerting:?}; without alerts: {quiet:?}");
    assert!(
        alerting < quiet + Duration::from_secs(3),
        "the Canary alerting a silent provider took {alerting:?}, the one without alerts {quiet:?}"
    );
    // The alerts really went to the silent provider and timed out there.
    let warnings = eventually(
        Duration::from_secs(30),
        "the timed-out alerts as Warning Events",
        || async {
            let warnings = f.warnings().await;
            let timed_out = warnings
                .iter()
                .filter(|(_, m)| m.starts_with("Alert team not sent") && m.contains("no answer"))
                .count();
            (timed_out >= 2).then_some(warnings)
        },
    )
    .await;
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the silent provider saw no connection: {warnings:#?}"
    );
    assert!(
        ctl.metrics()
            .await
            .contains("sluice_alerts_dropped_total 0"),
        "no alert dropped"
    );
}

/// An autoscalerRef to a KEDA ScaledObject is an invalid spec: one Warning Event (reason
/// `InvalidSpec`) says it is not supported, and the Canary is not acted upon — no primary, no
/// Services, the target keeps its replicas — however often it is reconciled.
#[tokio::test]
async fn a_scaled_object_autoscaler_is_reported_and_not_acted_upon() {
    let Some(f) = fixture("canary-keda").await else {
        return;
    };
    f.create_target("podinfo:6.0.0").await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    let canary: Canary = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo"},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "autoscalerRef": {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                "name": "podinfo-so"},
            "progressDeadlineSeconds": 60,
            "service": {"port": 80, "targetPort": 9898},
            "analysis": {"interval": "1s", "iterations": 2},
        },
    }))
    .unwrap();
    f.canaries()
        .create(&PostParams::default(), &canary)
        .await
        .unwrap();
    let invalid = |w: &Vec<(String, String)>| {
        w.iter()
            .filter(|(reason, message)| {
                reason == "InvalidSpec"
                    && message.starts_with(
                        "ScaledObject (KEDA) autoscalerRef is not supported by Sluice yet",
                    )
            })
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "the InvalidSpec Warning",
        || async { (invalid(&f.warnings().await) >= 1).then_some(()) },
    )
    .await;
    // Target changes reconcile it again: still one Event, still nothing done.
    f.set_image("podinfo:6.0.1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings = f.warnings().await;
    assert_eq!(
        invalid(&warnings),
        1,
        "once, not per reconcile: {warnings:#?}"
    );
    assert!(
        f.deployments()
            .get_opt("podinfo-primary")
            .await
            .unwrap()
            .is_none(),
        "no primary for a Canary that is not acted upon\n{}",
        ctl.log_text()
    );
    assert!(
        Api::<Service>::namespaced(f.env.client.clone(), &f.ns.name)
            .get_opt("podinfo")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(f.replicas("podinfo").await, 2, "the target is left alone");
    assert_eq!(f.phase_of("podinfo").await, None, "no status written");
}

/// Under the Helm chart's default values the controller may not list or watch Secrets. Run as
/// the chart's ServiceAccount (its RBAC applied for real, a TokenRequest token), it still
/// becomes ready, logs one warning instead of retrying a refused watch, and tracks ConfigMaps:
/// the Canary initialises with only its ConfigMap tracked (the primary uses the Secret as it
/// is), a ConfigMap change starts a run that promotes it, and the Canary gets one Warning Event
/// saying its Secrets are not tracked and why.
#[tokio::test]
async fn without_secret_permissions_configmaps_are_tracked_and_secrets_reported_once() {
    let Some(f) = fixture("canary-nosecrets").await else {
        return;
    };
    let Some(helm) = f.env.helm.clone() else {
        let msg = "skipped: the env file names no HELM (rerun tests/env/up, which builds helm)";
        if common::is_ci() {
            panic!("CI=true but {msg}");
        }
        eprintln!("{msg}");
        return;
    };
    let release = common::unique_name("nosecrets");
    let chart =
        common::service_account::chart_account(&f.env, &helm, &f.ns.name, &release, &[]).await;
    assert_eq!(
        chart.can(&f.env, &["list", "secrets", "-n", &f.ns.name]),
        "no"
    );
    assert_eq!(
        chart.can(&f.env, &["list", "configmaps", "-n", &f.ns.name]),
        "yes"
    );

    let config_maps: Api<ConfigMap> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let cm = |color: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "podinfo-config"},
            "data": {"color": color}}))
        .unwrap()
    };
    config_maps
        .create(&PostParams::default(), &cm("blue"))
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "podinfo-token"},
        "stringData": {"token": "s3cret"}}))
    .unwrap();
    Api::<Secret>::namespaced(f.env.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    f.create_target_with(
        "podinfo:6.0.0",
        json!({
            "env": [{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "podinfo-config", "key": "color"}}}],
            "envFrom": [{"secretRef": {"name": "podinfo-token"}}],
        }),
    )
    .await;
    // Ready (the start waits for /readyz) although the Secret watch cannot start.
    let ctl =
        common::service_account::SaController::start(&f.env, &f.ns.name, &chart.kubeconfig).await;
    f.create_canary(json!({"interval": "1s", "iterations": 2}))
        .await;
    let canary = eventually(
        Duration::from_secs(60),
        "the Canary Initialized",
        || async {
            let canary = f.canaries().get("podinfo").await.ok()?;
            (canary.status.as_ref()?.phase == Some(CanaryPhase::Initialized)).then_some(canary)
        },
    )
    .await;
    let tracked = canary.status.unwrap().tracked_configs.unwrap_or_default();
    assert_eq!(
        tracked.keys().cloned().collect::<Vec<_>>(),
        vec!["configmap/podinfo-config"],
        "{tracked:?}"
    );
    let pod = f
        .deployments()
        .get("podinfo-primary")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let container = &pod.containers[0];
    assert_eq!(
        container.env.as_ref().unwrap()[0]
            .value_from
            .as_ref()
            .unwrap()
            .config_map_key_ref
            .as_ref()
            .unwrap()
            .name,
        "podinfo-config-primary"
    );
    assert_eq!(
        container.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "podinfo-token",
        "an untracked Secret is referenced as it is"
    );

    // A ConfigMap change alone starts a run, which promotes it.
    config_maps
        .replace("podinfo-config", &PostParams::default(), &{
            let mut c = config_maps.get("podinfo-config").await.unwrap();
            c.data = cm("green").data;
            c
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(90), "the run promoted", || async {
        let primary = config_maps.get("podinfo-config-primary").await.ok()?;
        (f.phase_of("podinfo").await == Some(CanaryPhase::Succeeded)
            && primary.data?.get("color").map(String::as_str) == Some("green"))
        .then_some(())
    })
    .await;

    let warnings = f.warnings().await;
    let untracked: Vec<&String> = warnings
        .iter()
        .filter(|(reason, _)| reason == "SecretsNotTracked")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(untracked.len(), 1, "once per Canary: {warnings:#?}");
    assert!(
        untracked[0].starts_with("Secrets of podinfo are not tracked (podinfo-token)")
            && untracked[0].contains("secrets.configTracking"),
        "{}",
        untracked[0]
    );
    let log = ctl.log_text();
    let disabled = log
        .lines()
        .filter(|l| l.contains("Secret tracking disabled"))
        .count();
    assert_eq!(disabled, 1, "one warning in the log:\n{log}");
    common::service_account::assert_nothing_refused(&log);
    drop(ctl);
    drop(chart);
}
