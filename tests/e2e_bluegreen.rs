//! Blue-green Rollouts on the real cluster, driven by `sluice controller` as a process: the
//! preview comes up beside the stable ReplicaSet, the preview Service selects it, the Rollout
//! pauses for a person (or for autoPromotionSeconds), the active Service switches on promotion,
//! and the old pods stay for scaleDownDelaySeconds. User intents are the exact patches of Argo's
//! kubectl plugin; every status the tests wait for must agree with Argo CD's health.
//!
//! The last test sends real requests through Traefik to the active Service during the switch.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::controller::ControllerProcess;
use common::eventually;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::rollout::{PauseReason, Rollout, RolloutPhase, RolloutStatus};
use sluice::engine::health::{Health, argocd_health, health_of_phase};
use sluice::engine::intent::{self, Intent};

const TIMEOUT: Duration = Duration::from_secs(90);
const HASH: &str = "rollouts-pod-template-hash";

use common::rollouts::{Fixture, fixture};

fn template(image: &str, port: Option<u16>) -> Value {
    let mut container = json!({"name": "web", "image": image});
    if let Some(port) = port {
        container["ports"] = json!([{"containerPort": port}]);
    }
    json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}})
}

fn status(r: &Rollout) -> RolloutStatus {
    r.status.clone().unwrap_or_default()
}

fn health_agrees(r: &Rollout) -> bool {
    let s = status(r);
    let generation = r.metadata.generation.unwrap_or(1);
    s.phase
        .is_some_and(|p| health_of_phase(p) == argocd_health(&r.spec, &s, generation))
}

impl Fixture {
    /// Services `web-active` and `web-preview` selecting the app, as a user's manifests have them.
    async fn services(&self, port: u16) {
        for name in ["web-active", "web-preview"] {
            self.env
                .create(
                    &self.ns.name,
                    json!({
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": name},
                        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": port}]},
                    }),
                )
                .await;
        }
    }

    async fn create(&self, replicas: i32, blue_green: Value, port: Option<u16>) {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template("registry.invalid/web:1", port),
                "strategy": {"blueGreen": blue_green},
            },
        }))
        .expect("test Rollout");
        self.rollouts
            .create(&PostParams::default(), &rollout)
            .await
            .unwrap_or_else(|e| panic!("creating the Rollout: {e}"));
    }

    /// Polls until `check` accepts the Rollout (and its phase agrees with Argo CD's health).
    async fn wait(&self, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let r = self.rollouts.get("web").await.expect("reading the Rollout");
            if check(&r) && health_agrees(&r) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nstatus: {}\nlog: {}",
                    serde_json::to_string_pretty(&r.status).unwrap_or_default(),
                    self.ctl.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the Rollout to be Healthy with every Service on the current pods; its hash.
    async fn healthy(&self) -> String {
        let r = self
            .wait("Healthy with the active Service on the current pods", |r| {
                let s = status(r);
                s.phase == Some(RolloutPhase::Healthy)
                    && !s.current_pod_hash.is_empty()
                    && s.stable_rs == s.current_pod_hash
                    && s.blue_green.active_selector == s.current_pod_hash
            })
            .await;
        status(&r).current_pod_hash
    }

    async fn selector(&self, service: &str) -> Option<String> {
        let api: Api<Service> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.get(service)
            .await
            .expect("reading the Service")
            .spec?
            .selector?
            .get(HASH)
            .cloned()
    }

    async fn set_image(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
        self.rollouts
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the image");
    }

    /// Sends an intent exactly as Argo's kubectl plugin does.
    async fn intent(&self, intent: Intent) {
        let r = self.rollouts.get("web").await.expect("reading the Rollout");
        let (spec, status) = intent::patches(intent, &r);
        if let Some(patch) = spec {
            self.rollouts
                .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patching the Rollout");
        }
        if let Some(patch) = status {
            self.rollouts
                .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patching the Rollout's status");
        }
    }

    /// `spec.replicas` and whether a scale-down deadline is set, by pod-template hash.
    async fn replica_sets(&self) -> BTreeMap<String, (i32, bool)> {
        let api: Api<ReplicaSet> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default().labels(HASH))
            .await
            .expect("listing ReplicaSets")
            .items
            .into_iter()
            .map(|rs| {
                let hash = rs.metadata.labels.clone().unwrap_or_default()[HASH].clone();
                let deadline = rs
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key("scale-down-deadline");
                (
                    hash,
                    (rs.spec.and_then(|s| s.replicas).unwrap_or(0), deadline),
                )
            })
            .collect()
    }

    /// Waits until the ReplicaSet of `hash` has `replicas` in its spec.
    async fn scaled(&self, hash: &str, replicas: i32) {
        eventually(
            TIMEOUT,
            &format!("ReplicaSet {hash} at {replicas} replicas"),
            || async {
                let sets = self.replica_sets().await;
                (sets.get(hash).map(|s| s.0) == Some(replicas)).then_some(())
            },
        )
        .await;
    }

    /// Waits until the preview is up and the Rollout paused for a person; the new hash.
    async fn paused_in_preview(&self, stable: &str) -> String {
        let r = self
            .wait("paused (BlueGreenPause) with the preview up", |r| {
                let s = status(r);
                s.phase == Some(RolloutPhase::Paused)
                    && s.pause_conditions
                        .iter()
                        .any(|c| c.reason == PauseReason::BlueGreenPause)
                    && s.controller_pause
                    && s.current_pod_hash != stable
                    && s.blue_green.preview_selector == s.current_pod_hash
            })
            .await;
        assert_eq!(
            argocd_health(&r.spec, &status(&r), r.metadata.generation.unwrap_or(1)),
            Health::Suspended
        );
        status(&r).current_pod_hash
    }
}

/// Requests through Traefik to the test's hostname.
#[derive(Clone)]
struct Gateway {
    http: reqwest::Client,
    url: String,
    host: String,
}

impl Gateway {
    /// The pod IP that answered, or `None` on any failure.
    async fn answer(&self) -> Option<String> {
        let resp = self
            .http
            .get(format!("{}/", self.url))
            .header(reqwest::header::HOST, &self.host)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Some(resp.text().await.ok()?.trim().to_string())
    }
}

fn blue_green(extra: Value) -> Value {
    let mut strategy = json!({"activeService": "web-active", "previewService": "web-preview"});
    if let (Some(s), Some(e)) = (strategy.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    strategy
}

/// Manual promotion: the preview waits for `promote`, the active Service then switches, and the
/// old ReplicaSet keeps its pods for scaleDownDelaySeconds before it is scaled to zero.
#[tokio::test]
async fn manual_promotion_switches_active_and_keeps_old_pods_for_the_delay() {
    let Some(f) = fixture("bg-manual").await else {
        return;
    };
    f.services(8080).await;
    f.create(
        3,
        blue_green(json!({"autoPromotionEnabled": false, "scaleDownDelaySeconds": 15})),
        None,
    )
    .await;
    let stable = f.healthy().await;
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));

    f.set_image("registry.invalid/web:2").await;
    let new = f.paused_in_preview(&stable).await;
    assert_eq!(f.selector("web-preview").await, Some(new.clone()));
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));
    let sets = f.replica_sets().await;
    assert_eq!((sets[&new].0, sets[&stable].0), (3, 3), "{sets:?}");
    // Still paused a while later: nothing promotes on its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));

    f.intent(Intent::Promote).await;
    assert_eq!(f.healthy().await, new);
    assert_eq!(f.selector("web-active").await, Some(new.clone()));
    let sets = f.replica_sets().await;
    assert_eq!(
        sets[&stable],
        (3, true),
        "old pods kept with a deadline: {sets:?}"
    );
    f.scaled(&stable, 0).await;
}

/// autoPromotionSeconds: the Rollout pauses, then promotes itself once the time is up.
#[tokio::test]
async fn auto_promotion_seconds_promote_after_the_pause() {
    let Some(f) = fixture("bg-auto").await else {
        return;
    };
    f.services(8080).await;
    f.create(2, blue_green(json!({"autoPromotionSeconds": 8})), None)
        .await;
    let stable = f.healthy().await;
    f.set_image("registry.invalid/web:2").await;
    let new = f.paused_in_preview(&stable).await;
    assert_eq!(f.healthy().await, new);
    assert_eq!(f.selector("web-active").await, Some(new));
}

/// Abort: the active Service stays on stable, the preview stays on the rejected ReplicaSet (as
/// Argo), the Rollout is Degraded, and the new ReplicaSet is scaled down after
/// abortScaleDownDelaySeconds.
#[tokio::test]
async fn abort_keeps_stable_active_and_scales_the_preview_down() {
    let Some(f) = fixture("bg-abort").await else {
        return;
    };
    f.services(8080).await;
    f.create(
        2,
        blue_green(json!({"autoPromotionEnabled": false, "abortScaleDownDelaySeconds": 5})),
        None,
    )
    .await;
    let stable = f.healthy().await;
    f.set_image("registry.invalid/web:2").await;
    let new = f.paused_in_preview(&stable).await;
    f.intent(Intent::Abort).await;
    let r = f
        .wait("Degraded after the abort", |r| {
            status(r).phase == Some(RolloutPhase::Degraded)
        })
        .await;
    assert_eq!(
        argocd_health(&r.spec, &status(&r), r.metadata.generation.unwrap_or(1)),
        Health::Degraded
    );
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));
    f.scaled(&new, 0).await;
    assert_eq!(f.selector("web-preview").await, Some(new.clone()));
    assert_eq!(f.replica_sets().await[&stable].0, 2);
}

/// The active Service never switches to pods that are not ready (Argo Rollouts #4750), even on
/// a full promotion; the status says why.
#[tokio::test]
async fn active_never_switches_to_pods_that_are_not_ready() {
    let Some(f) = fixture("bg-unready").await else {
        return;
    };
    f.services(8080).await;
    f.create(2, blue_green(json!({})), None).await;
    let stable = f.healthy().await;
    let patch = json!({"spec": {"template": {
        "metadata": {"labels": {"app": "web", "sim/never-ready": "true"}},
        "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:2"}]},
    }}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("a revision whose pods never become ready");
    f.wait("the new revision seen", |r| {
        let s = status(r);
        !s.current_pod_hash.is_empty() && s.current_pod_hash != stable
    })
    .await;
    f.intent(Intent::PromoteFull).await;
    let r = f
        .wait("the cutover held back, saying why", |r| {
            let s = status(r);
            s.current_pod_hash != stable
                && s.phase == Some(RolloutPhase::Progressing)
                && s.message.contains("cutover pending")
                && s.message.contains("0 of 2 pods available")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));
    assert_eq!(status(&r).stable_rs, stable);
}

/// Real traffic through Traefik to the active Service while it switches: no request fails, and
/// afterwards only the new pods answer.
#[tokio::test]
async fn the_switch_through_traefik_loses_no_request_and_then_serves_only_the_new_version() {
    switch_through_traefik("bg-traffic", false).await;
}

/// The same switch with the controller SIGKILLed right after the promotion and started again:
/// still no request lost, and the new controller finishes the switch.
#[tokio::test]
async fn sigkill_mid_switch_loses_no_request() {
    switch_through_traefik("bg-switch-crash", true).await;
}

async fn switch_through_traefik(prefix: &str, crash: bool) {
    let Some(mut f) = fixture(prefix).await else {
        return;
    };
    let Some(gw) = f.env.gateway_or_skip() else {
        return;
    };
    let ns = f.ns.name.clone();
    let host = format!("{ns}.sluice.test");
    f.services(gw.echo_port).await;
    f.env
        .create(
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
    f.env
        .create(
            &ns,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "app"},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host],
                         "rules": [{"backendRefs": [{"name": "web-active", "port": 80}]}]},
            }),
        )
        .await;
    f.create(
        2,
        blue_green(json!({"autoPromotionEnabled": false, "scaleDownDelaySeconds": 20})),
        Some(gw.echo_port),
    )
    .await;
    let stable = f.healthy().await;
    let client = Gateway {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client"),
        url: gw.url.clone(),
        host: host.clone(),
    };
    let answer = || client.answer();
    let pods_of = |hash: String| {
        let pods: Api<Pod> = Api::namespaced(f.env.client.clone(), &ns);
        async move {
            pods.list(&ListParams::default().labels(&format!("{HASH}={hash}")))
                .await
                .expect("listing pods")
                .items
                .into_iter()
                .filter_map(|p| p.status?.pod_ip)
                .collect::<Vec<String>>()
        }
    };
    let old_ips = pods_of(stable.clone()).await;
    eventually(TIMEOUT, "the route to serve the first revision", || async {
        let ip = answer().await?;
        old_ips.contains(&ip).then_some(())
    })
    .await;

    f.set_image("registry.invalid/web:2").await;
    let new = f.paused_in_preview(&stable).await;
    let new_ips = pods_of(new.clone()).await;
    assert_eq!(new_ips.len(), 2, "two preview pods with IPs");

    // Requests flow without a pause while the active Service switches.
    let (errors, sent, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let traffic = {
        let (errors, sent, stop) = (errors.clone(), sent.clone(), stop.clone());
        let client = client.clone();
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                sent.fetch_add(1, Relaxed);
                if client.answer().await.is_none() {
                    errors.fetch_add(1, Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.intent(Intent::Promote).await;
    if crash {
        // Killed as it switches: the Services are as the dead controller left them, traffic
        // keeps flowing, and the next controller takes the switch from there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.ctl.kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.ctl = ControllerProcess::start_with(&f.env, &ns, &["--leader-elect=false"]).await;
    }
    assert_eq!(f.healthy().await, new);
    // Only the new pods answer once the data plane has caught up with the switch.
    eventually(TIMEOUT, "only the new pods to answer", || async {
        for _ in 0..20 {
            if !new_ips.contains(&answer().await?) {
                return None;
            }
        }
        Some(())
    })
    .await;
    stop.store(true, Relaxed);
    let _ = traffic.await;
    let (sent, errors) = (sent.load(Relaxed), errors.load(Relaxed));
    eprintln!("switch: {sent} requests, {errors} errors");
    assert!(
        sent > 50,
        "only {sent} requests were sent during the switch"
    );
    assert_eq!(errors, 0, "requests failed during the switch");
    for _ in 0..100 {
        let ip = answer().await.expect("an answer after the switch");
        assert!(new_ips.contains(&ip), "{ip} is not a new pod: {new_ips:?}");
    }
    // The old pods were still there for the delay; they go after it.
    assert_eq!(f.replica_sets().await[&stable].0, 2);
    f.scaled(&stable, 0).await;
}

impl Fixture {
    /// AnalysisTemplates `passes` (vector(1), two measurements) and `fails` (vector(0)).
    async fn templates(&self) {
        for (name, value) in [("passes", 1), ("fails", 0)] {
            self.env
                .create(
                    &self.ns.name,
                    json!({
                        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
                        "metadata": {"name": name},
                        "spec": {"metrics": [{
                            "name": "probe", "interval": "1s", "count": 2,
                            "successCondition": "result[0] >= 1",
                            "failureCondition": "result[0] < 1",
                            "provider": {"prometheus": {
                                "address": self.env.prometheus_url,
                                "query": format!("vector({value})"),
                            }},
                        }]},
                    }),
                )
                .await;
        }
    }
}

fn analysis(template: &str) -> Value {
    json!({"templates": [{"templateName": template}]})
}

/// prePromotionAnalysis gates the switch: a passing run lets it happen (and is recorded), a
/// failing one aborts with the active Service still on stable.
#[tokio::test]
async fn pre_promotion_analysis_gates_the_switch_and_its_failure_aborts() {
    let Some(f) = fixture("bg-pre").await else {
        return;
    };
    f.services(8080).await;
    f.templates().await;
    f.create(
        2,
        blue_green(json!({"prePromotionAnalysis": analysis("passes")})),
        None,
    )
    .await;
    let first = f.healthy().await;
    f.set_image("registry.invalid/web:2").await;
    let r = f
        .wait("the update promoted after its pre-promotion run", |r| {
            let s = status(r);
            s.current_pod_hash != first
                && s.stable_rs == s.current_pod_hash
                && s.blue_green.active_selector == s.current_pod_hash
        })
        .await;
    let run = status(&r)
        .blue_green
        .pre_promotion_analysis_run_status
        .expect("a pre-promotion run recorded");
    assert!(run.name.ends_with("-pre"), "{}", run.name);
    assert_eq!(run.status, "Successful");
    let second = status(&r).current_pod_hash;

    let patch = json!({"spec": {
        "template": template("registry.invalid/web:3", None),
        "strategy": {"blueGreen": {"prePromotionAnalysis": analysis("fails")}},
    }});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("a new revision with a failing pre-promotion analysis");
    let r = f
        .wait("Degraded after the failed pre-promotion run", |r| {
            let s = status(r);
            s.phase == Some(RolloutPhase::Degraded) && s.abort
        })
        .await;
    assert_eq!(
        status(&r)
            .blue_green
            .pre_promotion_analysis_run_status
            .map(|r| r.status),
        Some("Failed".into())
    );
    assert_eq!(f.selector("web-active").await, Some(second.clone()));
    assert_eq!(status(&r).stable_rs, second);
}

/// postPromotionAnalysis runs after the switch; when it fails the active Service goes back to
/// the previous pods, which were kept at full size meanwhile.
#[tokio::test]
async fn a_failed_post_promotion_analysis_switches_active_back() {
    let Some(f) = fixture("bg-post").await else {
        return;
    };
    f.services(8080).await;
    f.templates().await;
    f.create(
        2,
        blue_green(json!({"postPromotionAnalysis": analysis("fails")})),
        None,
    )
    .await;
    let stable = f.healthy().await;
    f.set_image("registry.invalid/web:2").await;
    let r = f
        .wait("Degraded after the failed post-promotion run", |r| {
            let s = status(r);
            s.phase == Some(RolloutPhase::Degraded) && s.abort
        })
        .await;
    let run = status(&r)
        .blue_green
        .post_promotion_analysis_run_status
        .expect("a post-promotion run: made only once active served the new pods");
    assert!(run.name.ends_with("-post"), "{}", run.name);
    assert_eq!(run.status, "Failed");
    assert_eq!(status(&r).stable_rs, stable);
    eventually(TIMEOUT, "the active Service back on stable", || async {
        (f.selector("web-active").await == Some(stable.clone())).then_some(())
    })
    .await;
    assert_eq!(f.replica_sets().await[&stable].0, 2);
}

/// A SIGKILL of the controller while the pre-promotion run is measuring: the next controller
/// adopts that run (no second one), and the switch happens once it passes.
#[tokio::test]
async fn sigkill_during_pre_promotion_analysis_keeps_one_run() {
    let Some(mut f) = fixture("bg-crash").await else {
        return;
    };
    f.services(8080).await;
    f.env
        .create(
            &f.ns.name,
            json!({
                "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": "slow"},
                "spec": {"metrics": [{
                    "name": "probe", "interval": "1s", "count": 8,
                    "successCondition": "result[0] >= 1",
                    "provider": {"prometheus": {"address": f.env.prometheus_url, "query": "vector(1)"}},
                }]},
            }),
        )
        .await;
    f.create(
        2,
        blue_green(json!({"prePromotionAnalysis": analysis("slow")})),
        None,
    )
    .await;
    let stable = f.healthy().await;
    f.set_image("registry.invalid/web:2").await;
    f.wait("the pre-promotion run measuring", |r| {
        status(r)
            .blue_green
            .pre_promotion_analysis_run_status
            .is_some_and(|a| a.status == "Running")
    })
    .await;
    f.ctl.kill();
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));
    f.ctl = ControllerProcess::start_with(&f.env, &f.ns.name, &["--leader-elect=false"]).await;
    let new = f.healthy().await;
    assert_ne!(new, stable);
    let runs: Api<sluice::api::argo::analysis::AnalysisRun> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    let names: Vec<String> = runs
        .list(&ListParams::default())
        .await
        .expect("listing AnalysisRuns")
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert_eq!(
        names.len(),
        1,
        "one pre-promotion run, not a second: {names:?}"
    );
    assert!(names[0].ends_with("-pre"), "{names:?}");
}

/// A Rollout naming Services that do not exist is an InvalidSpec naming the field, with one
/// Warning, and nothing is created; once the Services exist it deploys.
#[tokio::test]
async fn missing_services_are_an_invalid_spec_until_created() {
    let Some(f) = fixture("bg-nosvc").await else {
        return;
    };
    f.create(2, blue_green(json!({})), None).await;
    f.wait("InvalidSpec naming activeService", |r| {
        status(r).conditions.iter().any(|c| {
            c.type_ == "InvalidSpec"
                && c.status == "True"
                && c.message.contains("spec.strategy.blueGreen.activeService")
                && c.message.contains("web-active")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(f.replica_sets().await.is_empty(), "nothing created");
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    let warnings = events
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .map(|e| e.count.unwrap_or(1))
        .sum::<i32>();
    assert_eq!(warnings, 1, "one InvalidSpec Warning");
    f.services(8080).await;
    let hash = f.healthy().await;
    assert_eq!(f.selector("web-active").await, Some(hash));
}

/// Argo's fast rollback: going back to a revision whose pods are still up (within its
/// scaleDownDelaySeconds) switches straight back — no BlueGreenPause, no analysis.
#[tokio::test]
async fn going_back_within_the_scale_down_delay_switches_straight_back() {
    let Some(f) = fixture("bg-fast-back").await else {
        return;
    };
    f.services(8080).await;
    f.create(
        2,
        blue_green(json!({"autoPromotionEnabled": false, "scaleDownDelaySeconds": 120})),
        None,
    )
    .await;
    let first = f.healthy().await;
    f.set_image("registry.invalid/web:2").await;
    let second = f.paused_in_preview(&first).await;
    f.intent(Intent::Promote).await;
    assert_eq!(f.healthy().await, second);
    f.set_image("registry.invalid/web:1").await;
    let r = f
        .wait("back on the first revision", |r| {
            let s = status(r);
            s.stable_rs == first && s.phase == Some(RolloutPhase::Healthy)
        })
        .await;
    assert!(status(&r).pause_conditions.is_empty(), "{:?}", status(&r));
    assert_eq!(f.selector("web-active").await, Some(first.clone()));
}

impl Fixture {
    /// The labels of the live pods of the ReplicaSet with `hash`.
    async fn pod_labels(&self, hash: &str) -> Vec<BTreeMap<String, String>> {
        let api: Api<Pod> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default().labels(&format!("{HASH}={hash}")))
            .await
            .expect("listing pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.metadata.labels.unwrap_or_default())
            .collect()
    }

    /// Waits until the ReplicaSet of `hash` has `count` pods, each accepted by `check`.
    async fn pods_labelled(
        &self,
        hash: &str,
        count: usize,
        what: &str,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) {
        eventually(
            TIMEOUT,
            &format!("{count} pods of {hash} {what}"),
            || async {
                let pods = self.pod_labels(hash).await;
                (pods.len() == count && pods.iter().all(&check)).then_some(())
            },
        )
        .await;
    }

    async fn patch_spec(&self, patch: Value) {
        self.rollouts
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the Rollout's spec");
    }
}

fn label_is(key: &'static str, value: &'static str) -> impl Fn(&BTreeMap<String, String>) -> bool {
    move |labels| labels.get(key).map(String::as_str) == Some(value)
}

/// previewMetadata is on the preview's pods until the switch, activeMetadata on the active ones;
/// a changed field replaces the labels it put there (Argo's TestEphemeralMetadata).
#[tokio::test]
async fn active_and_preview_metadata_follow_the_switch() {
    let Some(f) = fixture("bg-meta").await else {
        return;
    };
    f.services(8080).await;
    f.create(
        2,
        blue_green(json!({
            "autoPromotionEnabled": false,
            "previewMetadata": {"labels": {"role": "preview"}},
            "activeMetadata": {"labels": {"role": "active"}},
        })),
        None,
    )
    .await;
    let stable = f.healthy().await;
    f.pods_labelled(&stable, 2, "role=active", label_is("role", "active"))
        .await;

    f.set_image("registry.invalid/web:2").await;
    let new = f.paused_in_preview(&stable).await;
    f.pods_labelled(&new, 2, "role=preview", label_is("role", "preview"))
        .await;
    f.pods_labelled(&stable, 2, "role=active", label_is("role", "active"))
        .await;

    f.patch_spec(json!({"spec": {"strategy": {"blueGreen": {
        "previewMetadata": {"labels": {"role": null, "role2": "preview2"}}}}}}))
        .await;
    f.pods_labelled(&new, 2, "role2=preview2 and no role", |l| {
        !l.contains_key("role") && label_is("role2", "preview2")(l)
    })
    .await;

    f.intent(Intent::Promote).await;
    assert_eq!(f.healthy().await, new);
    f.pods_labelled(&new, 2, "role=active", label_is("role", "active"))
        .await;
    f.patch_spec(json!({"spec": {"strategy": {"blueGreen": {
        "activeMetadata": {"labels": {"role": null, "role2": "active2"}}}}}}))
        .await;
    f.pods_labelled(&new, 2, "role2=active2 and no role", |l| {
        !l.contains_key("role") && label_is("role2", "active2")(l)
    })
    .await;
}

/// progressDeadlineAbort turned on after the deadline already passed aborts the update, and the
/// preview is scaled to zero after abortScaleDownDelaySeconds (Argo's
/// TestBlueGreenExceedProgressDeadlineAbort).
#[tokio::test]
async fn progress_deadline_abort_set_after_the_deadline_aborts_and_scales_the_preview_down() {
    let Some(f) = fixture("bg-pdabort").await else {
        return;
    };
    f.services(8080).await;
    f.create(
        1,
        blue_green(json!({"abortScaleDownDelaySeconds": 2})),
        None,
    )
    .await;
    let stable = f.healthy().await;
    f.patch_spec(json!({"spec": {
        "progressDeadlineAbort": false,
        "progressDeadlineSeconds": 1,
        "template": {
            "metadata": {"labels": {"app": "web", "sim/never-ready": "true"}},
            "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:2"}]},
        },
    }}))
    .await;
    let r = f
        .wait("Degraded past the progress deadline, not aborted", |r| {
            let s = status(r);
            s.phase == Some(RolloutPhase::Degraded)
                && s.current_pod_hash != stable
                && !s.abort
                && s.conditions
                    .iter()
                    .any(|c| c.reason == "ProgressDeadlineExceeded")
        })
        .await;
    let new = status(&r).current_pod_hash;
    assert_eq!(f.replica_sets().await[&new].0, 1, "kept without the abort");

    f.patch_spec(json!({"spec": {"progressDeadlineAbort": true}}))
        .await;
    f.wait("aborted", |r| {
        let s = status(r);
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await;
    f.scaled(&new, 0).await;
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));
    assert_eq!(f.replica_sets().await[&stable].0, 1);
}

/// Switching the strategy to canary hands the blue-green Services back: no hash selector, no
/// managed-by annotation (Argo's TestBlueGreenToCanary).
#[tokio::test]
async fn switching_to_canary_gives_the_services_back_without_the_hash_selector() {
    let Some(f) = fixture("bg-tocanary").await else {
        return;
    };
    f.services(8080).await;
    f.create(2, blue_green(json!({"scaleDownDelaySeconds": 5})), None)
        .await;
    let stable = f.healthy().await;
    assert_eq!(f.selector("web-active").await, Some(stable.clone()));
    f.patch_spec(json!({"spec": {
        "template": {"metadata": {"annotations": {"foo": "bar"}}},
        "strategy": {"blueGreen": null, "canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
    }}))
    .await;
    f.wait("paused at the canary's pause step", |r| {
        status(r).phase == Some(RolloutPhase::Paused)
    })
    .await;
    let api: Api<Service> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    for name in ["web-active", "web-preview"] {
        let service = eventually(TIMEOUT, &format!("{name} given back"), || async {
            let s = api.get(name).await.expect("reading the Service");
            let selector = s.spec.as_ref()?.selector.clone().unwrap_or_default();
            (!selector.contains_key(HASH)).then_some(s)
        })
        .await;
        let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
        assert_eq!(
            selector,
            BTreeMap::from([("app".to_string(), "web".to_string())])
        );
        assert!(
            !service
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("argo-rollouts.argoproj.io/managed-by-rollouts"),
            "{name}: the managed-by annotation is removed too"
        );
    }
}
