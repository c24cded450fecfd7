//! `sluice loadtester` (Flagger's load tester) behind real Canaries: `sluice controller` calls its
//! gates and task endpoint as webhooks, as Flagger's own e2e scripts do, and the test opens the
//! gates the way a person would (`POST /gate/open`, `/rollback/open`). The load it generates goes
//! to a local HTTP server that counts what arrives.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::controller::ControllerProcess;
use common::loadtester::LoadTesterProcess;
use common::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::flagger::canary::{Canary, CanaryPhase};

struct Fixture {
    env: TestEnv,
    ns: common::TestNamespace,
}

impl Fixture {
    async fn new(prefix: &str) -> Option<Fixture> {
        let env = common::test_env().await?;
        let ns = env.namespace(prefix).await;
        Some(Fixture { env, ns })
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    /// Target `podinfo` and its Canary (provider `kubernetes`), Initialized.
    async fn canary(&self, analysis: serde_json::Value, ctl: &ControllerProcess) {
        let target = common::canary::target("podinfo", 1, "podinfo:6.0.0", 9898);
        self.deployments()
            .create(&PostParams::default(), &target)
            .await
            .expect("creating the target Deployment");
        let canary: Canary =
            serde_json::from_value(common::canary::kubernetes("podinfo", Some(60), analysis))
                .expect("Canary JSON");
        self.canaries()
            .create(&PostParams::default(), &canary)
            .await
            .expect("creating the Canary");
        self.wait_phase(CanaryPhase::Initialized, ctl).await;
    }

    async fn new_revision(&self) {
        self.deployments()
            .patch(
                "podinfo",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
            )
            .await
            .expect("updating the target's image");
    }

    async fn phase(&self) -> Option<CanaryPhase> {
        let canary = self.canaries().get("podinfo").await.ok()?;
        canary.status?.phase
    }

    async fn wait_phase(&self, phase: CanaryPhase, ctl: &ControllerProcess) -> Canary {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let canary = self.canaries().get("podinfo").await.expect("the Canary");
            if canary.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return canary;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "Canary not {phase:?}; status: {}\ncontroller log:\n{}",
                    serde_json::to_string_pretty(&canary.status).unwrap_or_default(),
                    ctl.log_end()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn primary_image(&self) -> String {
        let d = self.deployments().get("podinfo-primary").await.unwrap();
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap_or_default()
    }
}

/// What the counting server saw: (when, Host header, X-Canary header) per request.
type Seen = Arc<Mutex<Vec<(Instant, String, String)>>>;

/// A local HTTP server that records every request; its base URL.
async fn counting_server(seen: Seen) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            let get = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            seen.lock()
                .unwrap()
                .push((Instant::now(), get("host"), get("x-canary")));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[tokio::test]
async fn a_closed_confirm_promotion_gate_holds_until_opened_while_cmd_bash_and_hey_tasks_run() {
    let Some(f) = Fixture::new("loadtester-gate").await else {
        return;
    };
    let lt = LoadTesterProcess::start(&f.env, &f.ns.name).await;
    let seen: Seen = Arc::default();
    let target = counting_server(seen.clone()).await;
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{}", f.ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (cmd_file, bash_file) = (dir.join("cmd"), dir.join("bash"));
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.canary(
        json!({
            "interval": "1s", "iterations": 6,
            "webhooks": [
                {"name": "acceptance-test", "type": "pre-rollout", "url": format!("{}/", lt.url),
                 "timeout": "10s", "metadata": {"type": "bash",
                    "cmd": format!("echo accepted > {}", bash_file.display())}},
                {"name": "marker", "type": "pre-rollout", "url": format!("{}/", lt.url),
                 "metadata": {"cmd": format!("echo ran > {}", cmd_file.display())}},
                {"name": "load-test", "type": "rollout", "url": format!("{}/", lt.url),
                 "timeout": "5s", "metadata": {"type": "cmd",
                    "cmd": format!("hey -z 1m -q 5 -c 2 -host app.example.com -H 'X-Canary: insider' {target}")}},
                {"name": "gate", "type": "confirm-promotion", "url": format!("{}/gate/check", lt.url)},
            ],
        }),
        &ctl,
    )
    .await;
    f.new_revision().await;
    f.wait_phase(CanaryPhase::Progressing, &ctl).await;
    eventually(Duration::from_secs(60), "the first iteration", || async {
        let canary = f.canaries().get("podinfo").await.ok()?;
        (canary.status?.iterations? >= 1).then_some(())
    })
    .await;
    // `bash` blocks the pre-rollout hook: done before the first iteration.
    assert_eq!(
        std::fs::read_to_string(&bash_file).unwrap_or_default(),
        "accepted\n",
        "load tester log:\n{}",
        lt.log_text()
    );
    eventually(Duration::from_secs(30), "the cmd task's file", || async {
        (std::fs::read_to_string(&cmd_file).unwrap_or_default() == "ran\n").then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "hey's requests", || async {
        (seen.lock().unwrap().len() >= 10).then_some(())
    })
    .await;

    f.wait_phase(CanaryPhase::WaitingPromotion, &ctl).await;
    // Held by the closed gate.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(f.phase().await, Some(CanaryPhase::WaitingPromotion));
    assert_eq!(f.primary_image().await, "podinfo:6.0.0");

    let gate = ("/gate/check", "podinfo", f.ns.name.as_str());
    assert_eq!(
        lt.post(gate.0, gate.1, gate.2).await,
        (403, "Forbidden".into())
    );
    assert_eq!(
        lt.post("/gate/open", "podinfo", &f.ns.name).await,
        (202, String::new())
    );
    assert_eq!(
        lt.post(gate.0, gate.1, gate.2).await,
        (200, "Approved".into())
    );
    f.wait_phase(CanaryPhase::Succeeded, &ctl).await;
    assert_eq!(f.primary_image().await, "podinfo:6.0.1");

    // The hook re-posts the same hey line every interval: one run at a time, so at most
    // -q 5 × -c 2 = 10 requests a second (each re-post starting another would multiply it).
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(_, host, canary)| host == "app.example.com" && canary == "insider"),
        "hey's -host and -H reach the target: {:?}",
        &seen[..3]
    );
    let (first, last) = (seen[0].0, seen[seen.len() - 1].0);
    let seconds = (last - first).as_secs_f64().max(1.0);
    let rate = seen.len() as f64 / seconds;
    assert!(
        rate <= 14.0,
        "{} requests in {seconds:.1}s: more than one hey run at a time\nload tester log:\n{}",
        seen.len(),
        lt.log_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_rollback_opened_on_the_load_tester_rolls_the_canary_back() {
    let Some(f) = Fixture::new("loadtester-rollback").await else {
        return;
    };
    let lt = LoadTesterProcess::start(&f.env, &f.ns.name).await;
    let ctl = ControllerProcess::start(&f.env, &f.ns.name).await;
    f.canary(
        json!({
            "interval": "1s", "iterations": 60,
            "webhooks": [{"name": "manual", "type": "rollback",
                "url": format!("{}/rollback/check", lt.url), "timeout": "5s"}],
        }),
        &ctl,
    )
    .await;
    f.new_revision().await;
    f.wait_phase(CanaryPhase::Progressing, &ctl).await;
    // Not requested: the run goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.phase().await, Some(CanaryPhase::Progressing));
    assert_eq!(
        lt.post("/rollback/open", "podinfo", &f.ns.name).await,
        (202, String::new())
    );
    let canary = f.wait_phase(CanaryPhase::Failed, &ctl).await;
    assert!(
        canary.status.unwrap().iterations.unwrap_or(0) < 60,
        "rolled back before the run ended"
    );
    assert_eq!(f.primary_image().await, "podinfo:6.0.0", "not promoted");
}

#[tokio::test]
async fn the_chart_toggle_deploys_flagger_loadtester_behind_port_80() {
    let Some(f) = Fixture::new("loadtester-chart").await else {
        return;
    };
    let Some(helm) = common::chart::helm_or_skip(&f.env) else {
        return;
    };
    let default = common::chart::render_chart(&helm, &f.ns.name, false, &[]);
    assert!(
        !default.contains("flagger-loadtester"),
        "off by default: loadtester.enabled=false"
    );
    let namespace = format!("loadtester.namespace={}", f.ns.name);
    let rendered = common::chart::render_chart(
        &helm,
        "sluice-system",
        false,
        &["loadtester.enabled=true", &namespace],
    );
    let docs = common::chart::documents(&rendered);
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
            .clone()
    };
    let deployment = named("Deployment", "flagger-loadtester");
    let service = named("Service", "flagger-loadtester");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "loadtester");
    assert_eq!(args[1], "-port=8080");
    // The controller's Deployment must not adopt the load tester's pods.
    let controller = named("Deployment", "sluice");
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selects = controller["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v));
    assert!(!selects, "the controller's selector matches {pod_labels:?}");

    f.env.create(&f.ns.name, deployment).await;
    f.env.create(&f.ns.name, service).await;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    let list =
        kube::api::ListParams::default().labels("kubernetes.io/service-name=flagger-loadtester");
    eventually(
        Duration::from_secs(60),
        "a ready endpoint on port 8080 behind flagger-loadtester",
        || async {
            let slices = slices.list(&list).await.ok()?;
            slices.items.iter().find_map(|s| {
                let port = s.ports.as_ref()?.first()?.port?;
                let ready = s
                    .endpoints
                    .iter()
                    .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false));
                (port == 8080 && ready).then_some(())
            })
        },
    )
    .await;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    let svc = services.get("flagger-loadtester").await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 80);
}
