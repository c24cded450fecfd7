//! Crash safety of the Rollout controller on the real cluster: `sluice controller` is killed with
//! SIGKILL at the worst moments (a timed pause, an analysis step, right after a step change) and
//! started again; and two controllers with leader election, the leader killed mid-rollout.
//!
//! What must hold after a crash: the rollout ends with the right outcome, no extra ReplicaSet, no
//! second AnalysisRun for a step, `status.currentStepIndex` never goes back (sampled every 50 ms
//! while the test runs), no canary scale-down before completion, and no Event recorded twice
//! beyond what kube's EventSeries folds.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::controller::ControllerProcess;
use common::{TestEnv, TestNamespace, test_env};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::AnalysisRun;
use sluice::api::argo::rollout::{Rollout, RolloutPhase};

const TIMEOUT: Duration = Duration::from_secs(90);

fn rollout(replicas: i32, canary: Value) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
            "strategy": {"canary": canary},
        },
    }))
    .expect("test Rollout")
}

/// One sample of the Rollout during the update.
#[derive(Clone, Debug)]
struct Sample {
    pod_hash: String,
    step: i32,
    canary_replicas: i32,
}

struct Test {
    env: TestEnv,
    ns: TestNamespace,
    rollouts: Api<Rollout>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Test {
    async fn new(prefix: &str) -> Option<Test> {
        let env = test_env().await?;
        let ns = env.namespace(prefix).await;
        let rollouts = Api::namespaced(env.client.clone(), &ns.name);
        Some(Test {
            env,
            ns,
            rollouts,
            samples: Arc::default(),
        })
    }

    async fn controller(&self, extra: &[&str]) -> ControllerProcess {
        ControllerProcess::start_with(&self.env, &self.ns.name, extra).await
    }

    async fn get(&self) -> Rollout {
        self.rollouts.get("web").await.expect("reading the Rollout")
    }

    async fn wait(
        &self,
        what: &str,
        log: &dyn Fn() -> String,
        check: impl Fn(&Rollout) -> bool,
    ) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let r = self.get().await;
            if check(&r) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nstatus: {}\nlog:\n{}",
                    serde_json::to_string_pretty(&r.status).unwrap_or_default(),
                    log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn deploy(&self, ro: &Rollout, log: &dyn Fn() -> String) -> String {
        self.rollouts
            .create(&PostParams::default(), ro)
            .await
            .expect("creating the Rollout");
        let r = self.wait("the first revision Healthy", log, healthy).await;
        status(&r).stable_rs
    }

    async fn set_image(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
        self.rollouts
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the image");
    }

    /// Samples the Rollout and its canary ReplicaSet every 50 ms until the returned handle is dropped.
    fn record(&self) -> tokio::task::JoinHandle<()> {
        let rollouts = self.rollouts.clone();
        let sets: Api<ReplicaSet> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let samples = self.samples.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(r) = rollouts.get("web").await {
                    let s = status(&r);
                    if !s.current_pod_hash.is_empty() {
                        let canary = sets
                            .get_opt(&format!("web-{}", s.current_pod_hash))
                            .await
                            .ok()
                            .flatten()
                            .and_then(|rs| rs.spec.and_then(|s| s.replicas))
                            .unwrap_or(0);
                        if let Ok(mut samples) = samples.lock() {
                            samples.push(Sample {
                                pod_hash: s.current_pod_hash.clone(),
                                step: s.current_step_index.unwrap_or(0),
                                canary_replicas: canary,
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// For the revision `hash`, the step index and the canary's replicas never went back.
    fn assert_monotonic(&self, hash: &str) {
        let samples = self.samples.lock().expect("samples").clone();
        let of: Vec<&Sample> = samples.iter().filter(|s| s.pod_hash == hash).collect();
        assert!(!of.is_empty(), "no samples of revision {hash}");
        for pair in of.windows(2) {
            assert!(
                pair[1].step >= pair[0].step,
                "currentStepIndex went back {} -> {}: {of:?}",
                pair[0].step,
                pair[1].step
            );
            assert!(
                pair[1].canary_replicas >= pair[0].canary_replicas,
                "the canary was scaled down {} -> {} mid-update: {of:?}",
                pair[0].canary_replicas,
                pair[1].canary_replicas
            );
        }
    }

    async fn replica_sets(&self) -> Vec<String> {
        let api: Api<ReplicaSet> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default())
            .await
            .expect("listing ReplicaSets")
            .items
            .into_iter()
            .filter_map(|rs| rs.metadata.name)
            .collect()
    }

    async fn analysis_runs(&self) -> Vec<AnalysisRun> {
        let api: Api<AnalysisRun> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default())
            .await
            .expect("listing AnalysisRuns")
            .items
    }

    /// How many times each Event reason was recorded on the Rollout (series counts included).
    async fn events(&self) -> BTreeMap<String, usize> {
        // The controller records Events in the background after the status they describe: let
        // any duplicate land before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.env.client.clone(), &self.ns.name);
        let mut counts = BTreeMap::new();
        for e in api
            .list(&ListParams::default())
            .await
            .expect("listing Events")
            .items
        {
            if e.regarding.as_ref().and_then(|r| r.kind.as_deref()) != Some("Rollout") {
                continue;
            }
            let n = e.series.as_ref().map_or(1, |s| s.count.max(1)) as usize;
            *counts.entry(e.reason.unwrap_or_default()).or_insert(0) += n;
        }
        counts
    }
}

fn status(r: &Rollout) -> sluice::api::argo::rollout::RolloutStatus {
    r.status.clone().unwrap_or_default()
}

fn healthy(r: &Rollout) -> bool {
    let s = status(r);
    s.phase == Some(RolloutPhase::Healthy)
        && !s.current_pod_hash.is_empty()
        && s.stable_rs == s.current_pod_hash
        && s.observed_generation == r.metadata.generation.unwrap_or(0).to_string()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every reason at most as often as `expected` says (a crash may lose an Event, never repeat one).
fn assert_events_at_most(events: &BTreeMap<String, usize>, expected: &[(&str, usize)]) {
    for (reason, most) in expected {
        let n = events.get(*reason).copied().unwrap_or(0);
        assert!(
            n <= *most,
            "{reason} recorded {n} times, at most {most}: {events:?}"
        );
    }
}

#[tokio::test]
async fn sigkill_during_a_timed_pause_resumes_the_same_pause() {
    let Some(t) = Test::new("crash-pause").await else {
        return;
    };
    let mut ctl = t.controller(&["--leader-elect=false"]).await;
    let ro = rollout(
        4,
        json!({"steps": [
            {"setWeight": 25}, {"pause": {"duration": "8s"}},
            {"setWeight": 75}, {"pause": {"duration": "1s"}},
        ]}),
    );
    let log = |c: &ControllerProcess| tail(&c.log_text(), 40);
    let stable = t.deploy(&ro, &|| log(&ctl)).await;
    let recorder = t.record();
    t.set_image("registry.invalid/web:2").await;
    let r = t
        .wait("paused at step 1", &|| log(&ctl), |r| {
            let s = status(r);
            s.current_step_index == Some(1) && !s.pause_conditions.is_empty()
        })
        .await;
    let canary = status(&r).current_pod_hash;
    let started = status(&r).pause_conditions[0].start_time.clone();
    ctl.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ctl = t.controller(&["--leader-elect=false"]).await;
    // The pause keeps its start time: it ends 8 s after it began, not 8 s after the restart.
    let r = t
        .wait("past the pause", &|| log(&ctl), |r| {
            status(r).current_step_index >= Some(2)
        })
        .await;
    let _ = r;
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(
        now.as_second() - started.0.as_second() < 8 + 5,
        "the pause started at {} ended at {now}: restarted from scratch?",
        started.0
    );
    let r = t.wait("Healthy on v2", &|| log(&ctl), healthy).await;
    recorder.abort();
    assert_eq!(status(&r).stable_rs, canary);
    t.assert_monotonic(&canary);
    let sets = t.replica_sets().await;
    assert_eq!(sets.len(), 2, "v1 and v2 only: {sets:?}");
    assert!(sets.contains(&format!("web-{stable}")) && sets.contains(&format!("web-{canary}")));
    let events = t.events().await;
    assert_events_at_most(
        &events,
        &[
            ("RolloutPaused", 2),
            ("RolloutStepCompleted", 4),
            ("RolloutCompleted", 2),
            ("RolloutUpdated", 2),
        ],
    );
    // The first revision and the update each complete once (as Argo records them).
    assert_eq!(events.get("RolloutCompleted"), Some(&2), "{events:?}");
}

#[tokio::test]
async fn sigkill_during_an_analysis_step_keeps_one_run() {
    let Some(t) = Test::new("crash-analysis").await else {
        return;
    };
    let templates: Api<sluice::api::argo::analysis::AnalysisTemplate> =
        Api::namespaced(t.env.client.clone(), &t.ns.name);
    let template = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "passes"},
        "spec": {"metrics": [{
            "name": "one", "interval": "1s", "count": 5,
            "successCondition": "result[0] >= 1",
            "provider": {"prometheus": {"address": t.env.prometheus_url, "query": "vector(1)"}},
        }]},
    });
    templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(template).expect("template"),
        )
        .await
        .expect("creating the AnalysisTemplate");
    let mut ctl = t.controller(&["--leader-elect=false"]).await;
    let log = |c: &ControllerProcess| tail(&c.log_text(), 40);
    let ro = rollout(
        4,
        json!({"steps": [
            {"setWeight": 25},
            {"analysis": {"templates": [{"templateName": "passes"}]}},
            {"setWeight": 75},
        ]}),
    );
    t.deploy(&ro, &|| log(&ctl)).await;
    let recorder = t.record();
    t.set_image("registry.invalid/web:2").await;
    let r = t
        .wait("the step's run to be Running", &|| log(&ctl), |r| {
            status(r)
                .canary
                .current_step_analysis_run_status
                .as_ref()
                .is_some_and(|a| a.status == "Running")
        })
        .await;
    let canary = status(&r).current_pod_hash;
    ctl.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ctl = t.controller(&["--leader-elect=false"]).await;
    let r = t.wait("Healthy on v2", &|| log(&ctl), healthy).await;
    recorder.abort();
    assert_eq!(status(&r).stable_rs, canary);
    t.assert_monotonic(&canary);
    let runs = t.analysis_runs().await;
    assert_eq!(
        runs.len(),
        1,
        "one run for the step, not a second: {runs:?}"
    );
    assert_eq!(
        runs[0]
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| p.as_str()),
        Some("Successful")
    );
    assert_eq!(t.replica_sets().await.len(), 2);
    let events = t.events().await;
    assert_events_at_most(
        &events,
        &[("RolloutStepCompleted", 3), ("RolloutCompleted", 2)],
    );
}

#[tokio::test]
async fn sigkill_right_after_a_step_change_does_not_go_back() {
    let Some(t) = Test::new("crash-step").await else {
        return;
    };
    let mut ctl = t.controller(&["--leader-elect=false"]).await;
    let log = |c: &ControllerProcess| tail(&c.log_text(), 40);
    let ro = rollout(
        4,
        json!({"steps": [
            {"setWeight": 25}, {"pause": {"duration": "1s"}},
            {"setWeight": 50}, {"pause": {"duration": "1s"}},
            {"setWeight": 75}, {"pause": {"duration": "1s"}},
        ]}),
    );
    let v1 = t.deploy(&ro, &|| log(&ctl)).await;
    let recorder = t.record();
    t.set_image("registry.invalid/web:2").await;
    // Kill the moment the weight step after the first pause has been taken (of the update: the
    // first revision's status also reads step 6 until the controller sees the new template).
    let r = t
        .wait("step 3 (after setWeight 50)", &|| log(&ctl), |r| {
            let s = status(r);
            s.current_pod_hash != v1 && s.current_step_index >= Some(3)
        })
        .await;
    ctl.kill();
    let canary = status(&r).current_pod_hash;
    let step_at_kill = status(&r).current_step_index;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ctl = t.controller(&["--leader-elect=false"]).await;
    let r = t.wait("Healthy on v2", &|| log(&ctl), healthy).await;
    recorder.abort();
    assert_eq!(
        status(&r).stable_rs,
        canary,
        "killed at step {step_at_kill:?}"
    );
    t.assert_monotonic(&canary);
    assert_eq!(t.replica_sets().await.len(), 2);
    let events = t.events().await;
    assert_events_at_most(
        &events,
        &[
            ("RolloutStepCompleted", 6),
            ("RolloutPaused", 3),
            ("RolloutCompleted", 2),
        ],
    );
}

/// `sluice_leader` of a controller, from its /metrics.
async fn leader_gauge(ctl: &ControllerProcess) -> Option<i64> {
    ctl.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("sluice_leader "))
        .and_then(|v| v.trim().parse().ok())
}

async fn reconciles(ctl: &ControllerProcess) -> f64 {
    ctl.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("rollout_reconcile_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn two_controllers_one_leader_and_the_other_takes_over() {
    let Some(t) = Test::new("crash-leader").await else {
        return;
    };
    // Leader election on (the default): the Lease lives in the test namespace.
    let mut a = t.controller(&[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while leader_gauge(&a).await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first controller never led\n{}",
            tail(&a.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = t.controller(&[]).await;
    let ro = rollout(
        4,
        json!({"steps": [
            {"setWeight": 25}, {"pause": {"duration": "5s"}},
            {"setWeight": 75}, {"pause": {"duration": "1s"}},
        ]}),
    );
    let log = |c: &ControllerProcess| tail(&c.log_text(), 40);
    t.deploy(&ro, &|| log(&a)).await;
    let recorder = t.record();
    t.set_image("registry.invalid/web:2").await;
    let r = t
        .wait("paused at step 1", &|| log(&a), |r| {
            let s = status(r);
            s.current_step_index == Some(1) && !s.pause_conditions.is_empty()
        })
        .await;
    let canary = status(&r).current_pod_hash;
    // Only the leader acted.
    assert_eq!(leader_gauge(&b).await, Some(0), "{}", log(&b));
    assert_eq!(reconciles(&b).await, 0.0, "the standby reconciled");
    assert!(reconciles(&a).await > 0.0);

    a.kill();
    let killed = tokio::time::Instant::now();
    while leader_gauge(&b).await != Some(1) {
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "the standby did not take over within 25 s\n{}",
            log(&b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(20), "take-over took {took:?}");
    let r = t.wait("Healthy on v2", &|| log(&b), healthy).await;
    recorder.abort();
    assert_eq!(status(&r).stable_rs, canary);
    t.assert_monotonic(&canary);
    assert_eq!(t.replica_sets().await.len(), 2);
    assert!(reconciles(&b).await > 0.0);
    let events = t.events().await;
    assert_events_at_most(
        &events,
        &[
            ("RolloutStepCompleted", 4),
            ("RolloutPaused", 2),
            ("RolloutCompleted", 2),
        ],
    );
    eprintln!("leader take-over after SIGKILL: {took:?}");
}
