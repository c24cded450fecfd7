//! Rollouts on the real cluster, driven by `sluice controller` running as a process: ReplicaSets
//! made by the real ReplicaSet controller, pods made Ready by kwok (or held unready with the label
//! `sim/never-ready: "true"`), user intents sent as the exact patches of Argo's kubectl plugin.
//! Every status the tests look at is also checked against the health Argo CD computes from it.
//!
//! Each test gets its own namespace and its own controller limited to it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::controller::ControllerProcess;
use common::test_env;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::AnalysisRun;
use sluice::api::argo::rollout::{Rollout, RolloutPhase};
use sluice::engine::health::{Health, argocd_health, health_of_phase, reason};
use sluice::engine::intent::{self, Intent};

const TIMEOUT: Duration = Duration::from_secs(60);

use common::rollouts::{Fixture, fixture};

fn template(image: &str, extra_labels: Value) -> Value {
    let mut labels = json!({"app": "web"});
    if let (Some(l), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "web", "image": image}]},
    })
}

fn rollout(name: &str, replicas: i32, canary: Value) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1", json!({})),
            "strategy": {"canary": canary},
        },
    }))
    .expect("test Rollout")
}

impl Fixture {
    async fn create(&self, rollout: &Rollout) {
        self.rollouts
            .create(&PostParams::default(), rollout)
            .await
            .unwrap_or_else(|e| panic!("creating the Rollout: {e}"));
    }

    async fn get(&self, name: &str) -> Rollout {
        self.rollouts.get(name).await.expect("reading the Rollout")
    }

    fn dump(&self, rollout: &Rollout) -> String {
        format!(
            "status: {}\ncontroller log (tail):\n{}",
            serde_json::to_string_pretty(&rollout.status).unwrap_or_default(),
            tail(&self.ctl.log_text(), 60)
        )
    }

    /// Polls until `check` accepts the Rollout, and returns it. On the way, every status must agree
    /// with the health Argo CD computes from it, but for a moment: right after a user's patch of
    /// the status (promote clears pauseConditions) the phase the controller wrote is stale until it
    /// reconciles.
    async fn wait(&self, name: &str, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut disagreeing_since: Option<tokio::time::Instant> = None;
        loop {
            let r = self.get(name).await;
            if health_agrees(&r) {
                disagreeing_since = None;
            } else {
                let since = *disagreeing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    assert_health_agrees(&r, &self.dump(&r));
                }
            }
            if check(&r) && health_agrees(&r) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.dump(&r));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_healthy(&self, name: &str) -> Rollout {
        self.wait(name, "phase Healthy with stableRS == currentPodHash", |r| {
            let s = r.status.clone().unwrap_or_default();
            s.phase == Some(RolloutPhase::Healthy)
                && !s.current_pod_hash.is_empty()
                && s.stable_rs == s.current_pod_hash
                && health(r) == Health::Healthy
        })
        .await
    }

    /// Changes the image (a new revision).
    async fn set_image(&self, name: &str, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
        self.rollouts
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the image");
    }

    /// Sends an intent exactly as Argo's kubectl plugin does.
    async fn intent(&self, name: &str, intent: Intent) {
        let r = self.get(name).await;
        let (spec, status) = intent::patches(intent, &r);
        if let Some(patch) = spec {
            self.rollouts
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patching the Rollout");
        }
        if let Some(patch) = status {
            self.rollouts
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patching the Rollout's status");
        }
    }

    /// `spec.replicas` and available pods of each ReplicaSet, by pod-template hash.
    async fn replica_sets(&self) -> BTreeMap<String, (i32, i32)> {
        let api: Api<ReplicaSet> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default().labels("rollouts-pod-template-hash"))
            .await
            .expect("listing ReplicaSets")
            .items
            .into_iter()
            .map(|rs| {
                let hash =
                    rs.metadata.labels.unwrap_or_default()["rollouts-pod-template-hash"].clone();
                let replicas = rs.spec.and_then(|s| s.replicas).unwrap_or(0);
                let available = rs.status.and_then(|s| s.available_replicas).unwrap_or(0);
                (hash, (replicas, available))
            })
            .collect()
    }

    /// The reasons of the Events recorded on Rollouts, one per occurrence, once each of
    /// `expected` (reason, occurrences) is there or 20 s have passed, then 1 s more so that a
    /// duplicate would show: the controller records Events in the background, after the status
    /// they describe.
    async fn events_after(&self, expected: &[(&str, usize)]) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events().await;
            let count = |reason: &str| events.iter().filter(|e| *e == reason).count();
            if expected.iter().all(|(r, n)| count(r) >= *n)
                || tokio::time::Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.events().await
    }

    async fn events(&self) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.env.client.clone(), &self.ns.name);
        let mut events: Vec<_> = api
            .list(&ListParams::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Rollout"))
            .collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        // kube's Recorder folds repeats of one reason into an EventSeries with a count.
        events
            .into_iter()
            .flat_map(|e| {
                let n = e.series.as_ref().map_or(1, |s| s.count.max(1)) as usize;
                std::iter::repeat_n(e.reason.unwrap_or_default(), n)
            })
            .collect()
    }

    async fn replicas_of(&self, hash: &str) -> (i32, i32) {
        self.replica_sets()
            .await
            .get(hash)
            .copied()
            .unwrap_or((0, 0))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn status(r: &Rollout) -> sluice::api::argo::rollout::RolloutStatus {
    r.status.clone().unwrap_or_default()
}

fn health(r: &Rollout) -> Health {
    argocd_health(&r.spec, &status(r), r.metadata.generation.unwrap_or(0))
}

/// The phase the controller wrote and the health Argo CD derives from the same status agree
/// (once the controller has seen the latest generation).
fn health_agrees(r: &Rollout) -> bool {
    let s = status(r);
    let Some(phase) = s.phase else { return true };
    s.observed_generation != r.metadata.generation.unwrap_or(0).to_string()
        || health_of_phase(phase) == health(r)
}

fn assert_health_agrees(r: &Rollout, dump: &str) {
    assert!(
        health_agrees(r),
        "phase {:?} disagrees with Argo CD's health {:?}\n{dump}",
        status(r).phase,
        health(r)
    );
}

fn progressing_reason(r: &Rollout) -> String {
    status(r)
        .conditions
        .iter()
        .find(|c| c.type_ == reason::PROGRESSING)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn paused_at(r: &Rollout, index: i32) -> bool {
    let s = status(r);
    s.current_step_index == Some(index)
        && !s.pause_conditions.is_empty()
        && s.phase == Some(RolloutPhase::Paused)
        && health(r) == Health::Suspended
}

/// Deploys `rollout` and waits for its first revision to be Healthy; returns its stable hash.
async fn deployed(f: &Fixture, rollout: &Rollout) -> String {
    f.create(rollout).await;
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let r = f.wait_healthy(name).await;
    let stable = status(&r).stable_rs;
    let replicas = rollout.spec.replicas.unwrap_or(1);
    let (want, have) = f.replicas_of(&stable).await;
    assert_eq!(
        want, replicas,
        "the first revision gets every replica at once"
    );
    assert_eq!(have, replicas);
    stable
}

// === scenarios ===

#[tokio::test]
async fn basic_canary_completes_through_every_step() {
    let Some(f) = fixture("ro-basic").await else {
        return;
    };
    let ro = rollout(
        "web",
        5,
        json!({"steps": [
            {"setWeight": 20}, {"pause": {"duration": "2s"}},
            {"setWeight": 60}, {"pause": {"duration": 2}},
        ]}),
    );
    let stable = deployed(&f, &ro).await;

    f.set_image("web", "registry.invalid/web:2").await;
    // Record the ReplicaSet counts seen at every step until the update completes.
    let mut seen: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let done = loop {
        let r = f.get("web").await;
        let s = status(&r);
        if !s.current_pod_hash.is_empty() && s.current_pod_hash != stable {
            let canary = f.replicas_of(&s.current_pod_hash).await.0;
            let old = f.replicas_of(&stable).await.0;
            if let Some(index) = s.current_step_index {
                seen.entry(index).or_insert((canary, old));
            }
            if s.stable_rs == s.current_pod_hash && s.phase == Some(RolloutPhase::Healthy) {
                break r;
            }
        }
        if tokio::time::Instant::now() > deadline {
            panic!("the update did not complete; seen {seen:?}\n{}", f.dump(&r));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        seen.get(&1),
        Some(&(1, 4)),
        "20%: 1 canary, 4 stable; seen {seen:?}"
    );
    assert_eq!(
        seen.get(&3),
        Some(&(3, 2)),
        "60%: 3 canary, 2 stable; seen {seen:?}"
    );
    assert_health_agrees(&done, &f.dump(&done));
    let s = status(&done);
    assert_eq!(s.current_step_index, Some(4));
    assert_eq!(health(&done), Health::Healthy);
    let rs = f.replica_sets().await;
    assert_eq!(rs.get(&s.current_pod_hash).map(|c| c.0), Some(5), "{rs:?}");
    let old = f.wait_replicas(&stable, 0).await;
    assert_eq!(old, 0);

    // Named, labelled, annotated and owned as Argo does.
    let api: Api<ReplicaSet> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let rs = api
        .get(&format!("web-{}", s.current_pod_hash))
        .await
        .expect("ReplicaSet <rollout>-<hash>");
    let labels = rs.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("rollouts-pod-template-hash"),
        Some(&s.current_pod_hash)
    );
    let annotations = rs.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("rollout.argoproj.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let owner = &rs.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Rollout", "web", Some(true))
    );

    // One Event per transition, none twice.
    let events = f
        .events_after(&[
            ("RolloutStepCompleted", 4),
            ("RolloutCompleted", 2),
            ("RolloutUpdated", 2),
            ("RolloutPaused", 2),
        ])
        .await;
    let count = |reason: &str| events.iter().filter(|r| r.as_str() == reason).count();
    assert_eq!(count("RolloutStepCompleted"), 4, "{events:?}");
    assert_eq!(
        count("RolloutCompleted"),
        2,
        "the first revision, then the update: {events:?}"
    );
    assert_eq!(
        count("RolloutUpdated"),
        2,
        "created, then updated: {events:?}"
    );
    assert_eq!(count("RolloutPaused"), 2, "{events:?}");

    let metrics = f.ctl.metrics().await;
    assert!(
        metrics.contains(&format!("rollout_info{{namespace=\"{}\",name=\"web\",strategy=\"canary\",traffic_router=\"\",phase=\"Healthy\"}} 1", f.ns.name)),
        "{metrics}"
    );
    assert!(metrics.contains("rollout_reconcile_count"), "{metrics}");
}

impl Fixture {
    async fn wait_replicas(&self, hash: &str, replicas: i32) -> i32 {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let (want, _) = self.replicas_of(hash).await;
            if want == replicas {
                return want;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "ReplicaSet {hash} never reached {replicas} replicas: {:?}\n{}",
                    self.replica_sets().await,
                    tail(&self.ctl.log_text(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn an_update_during_an_indefinite_pause_restarts_at_step_0() {
    let Some(f) = fixture("ro-restart").await else {
        return;
    };
    let ro = rollout(
        "web",
        4,
        json!({"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f
        .wait("web", "paused at step 1 on v2", |r| paused_at(r, 1))
        .await;
    let v2 = status(&r).current_pod_hash;
    assert_eq!(f.replicas_of(&v2).await.0, 1);

    f.set_image("web", "registry.invalid/web:3").await;
    let r = f
        .wait("web", "paused at step 1 on v3", |r| {
            paused_at(r, 1) && status(r).current_pod_hash != v2
        })
        .await;
    let v3 = status(&r).current_pod_hash;
    assert_ne!(v3, stable);
    assert_eq!(
        status(&r).stable_rs,
        stable,
        "the stable revision is unchanged"
    );
    f.wait_replicas(&v2, 0).await;
    assert_eq!(f.replicas_of(&v3).await.0, 1);
    assert_eq!(f.replicas_of(&stable).await.0, 3);
}

#[tokio::test]
async fn promote_resumes_an_indefinite_pause() {
    let Some(f) = fixture("ro-promote").await else {
        return;
    };
    let ro = rollout(
        "web",
        2,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    // Stays paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(paused_at(&f.get("web").await, 1));
    f.intent("web", Intent::Promote).await;
    let r = f.wait_healthy("web").await;
    assert_eq!(f.replicas_of(&status(&r).stable_rs).await.0, 2);
}

#[tokio::test]
async fn abort_then_retry_then_promote() {
    let Some(f) = fixture("ro-abort").await else {
        return;
    };
    let ro = rollout(
        "web",
        4,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&r).current_pod_hash;
    assert_eq!(f.replicas_of(&canary).await.0, 2);

    f.intent("web", Intent::Abort).await;
    let r = f
        .wait("web", "aborted: Degraded", |r| {
            status(r).phase == Some(RolloutPhase::Degraded)
                && progressing_reason(r) == reason::ROLLOUT_ABORTED
        })
        .await;
    assert_eq!(health(&r), Health::Degraded);
    f.wait_replicas(&canary, 0).await;
    f.wait_replicas(&stable, 4).await;
    // Stays aborted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(&f.get("web").await).phase,
        Some(RolloutPhase::Degraded)
    );

    f.intent("web", Intent::Retry).await;
    f.wait("web", "paused at step 1 again after retry", |r| {
        paused_at(r, 1)
    })
    .await;
    assert_eq!(f.replicas_of(&canary).await.0, 2);
    f.intent("web", Intent::Promote).await;
    let r = f.wait_healthy("web").await;
    assert_eq!(status(&r).stable_rs, canary);
    f.wait_replicas(&stable, 0).await;
}

/// `kubectl argo rollouts promote --full` on a manually aborted update clears the abort, as Argo
/// does: the update completes and the old stable goes.
#[tokio::test]
async fn promote_full_after_a_manual_abort_completes_the_update() {
    let Some(f) = fixture("ro-abort-full").await else {
        return;
    };
    let ro = rollout(
        "web",
        4,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&r).current_pod_hash;
    f.intent("web", Intent::Abort).await;
    f.wait("web", "aborted: Degraded", |r| {
        status(r).phase == Some(RolloutPhase::Degraded)
            && progressing_reason(r) == reason::ROLLOUT_ABORTED
    })
    .await;
    f.intent("web", Intent::PromoteFull).await;
    let r = f.wait_healthy("web").await;
    assert_eq!(status(&r).stable_rs, canary);
    assert!(!status(&r).abort, "the abort is cleared");
    f.wait_replicas(&canary, 4).await;
    f.wait_replicas(&stable, 0).await;
}

#[tokio::test]
async fn promote_full_skips_the_remaining_steps() {
    let Some(f) = fixture("ro-full").await else {
        return;
    };
    let ro = rollout(
        "web",
        4,
        json!({"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&r).current_pod_hash;
    f.intent("web", Intent::PromoteFull).await;
    let r = f.wait_healthy("web").await;
    assert_eq!(status(&r).stable_rs, canary);
    assert_eq!(status(&r).current_step_index, Some(4));
    assert!(!status(&r).promote_full, "promoteFull is cleared once done");
    f.wait_replicas(&canary, 4).await;
    f.wait_replicas(&stable, 0).await;
    // The user's promoteFull (written by the user's field manager) is really gone: the next
    // update goes through the steps again.
    f.set_image("web", "registry.invalid/web:3").await;
    let r = f
        .wait("web", "the next update paused at step 1", |r| {
            paused_at(r, 1) && status(r).current_pod_hash != canary
        })
        .await;
    assert_eq!(f.replicas_of(&status(&r).current_pod_hash).await.0, 1);
}

#[tokio::test]
async fn a_failing_analysis_step_aborts() {
    let Some(f) = fixture("ro-analysis").await else {
        return;
    };
    let template: Value = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "always-fails"},
        "spec": {"metrics": [{
            "name": "zero",
            "successCondition": "result[0] > 1",
            "provider": {"prometheus": {"address": f.env.prometheus_url, "query": "vector(0)"}},
        }]},
    });
    let templates: Api<sluice::api::argo::analysis::AnalysisTemplate> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(template).unwrap(),
        )
        .await
        .expect("creating the AnalysisTemplate");
    let ro = rollout(
        "web",
        4,
        json!({"steps": [
            {"setWeight": 25},
            {"analysis": {"templates": [{"templateName": "always-fails"}]}},
            {"setWeight": 75},
        ]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f
        .wait("web", "aborted by the failed analysis", |r| {
            status(r).phase == Some(RolloutPhase::Degraded)
                && progressing_reason(r) == reason::ROLLOUT_ABORTED
        })
        .await;
    let s = status(&r);
    assert!(status_message_mentions_analysis(&r), "{}", f.dump(&r));
    assert_eq!(health(&r), Health::Degraded);
    f.wait_replicas(&s.current_pod_hash, 0).await;
    f.wait_replicas(&stable, 4).await;
    let runs: Api<AnalysisRun> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let runs = runs
        .list(&ListParams::default())
        .await
        .expect("listing runs")
        .items;
    assert_eq!(runs.len(), 1, "one run for the analysis step");
    let labels = runs[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("rollout-type").map(String::as_str), Some("Step"));
    assert_eq!(labels.get("step-index").map(String::as_str), Some("1"));
    assert_eq!(
        labels.get("rollouts-pod-template-hash"),
        Some(&s.current_pod_hash)
    );
}

fn status_message_mentions_analysis(r: &Rollout) -> bool {
    status(r)
        .conditions
        .iter()
        .any(|c| c.reason == reason::ROLLOUT_ABORTED && c.message.contains("AnalysisRun"))
}

#[tokio::test]
async fn pods_that_never_become_ready_exceed_the_progress_deadline() {
    let Some(f) = fixture("ro-deadline").await else {
        return;
    };
    let mut ro = rollout(
        "web",
        2,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    ro.spec.progress_deadline_seconds = Some(3);
    deployed(&f, &ro).await;
    let patch = json!({"spec": {"template": template("registry.invalid/web:2", json!({"sim/never-ready": "true"}))}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the template");
    let r = f
        .wait("web", "ProgressDeadlineExceeded", |r| {
            progressing_reason(r) == reason::PROGRESS_DEADLINE_EXCEEDED
        })
        .await;
    assert_eq!(status(&r).phase, Some(RolloutPhase::Degraded));
    assert_eq!(health(&r), Health::Degraded);
    assert_eq!(f.replicas_of(&status(&r).current_pod_hash).await.1, 0);
}

#[tokio::test]
async fn going_back_to_the_stable_template_is_a_fast_rollback() {
    let Some(f) = fixture("ro-rollback").await else {
        return;
    };
    let ro = rollout(
        "web",
        4,
        json!({"steps": [{"setWeight": 25}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&r).current_pod_hash;
    f.set_image("web", "registry.invalid/web:1").await;
    let r = f.wait_healthy("web").await;
    assert_eq!(status(&r).current_pod_hash, stable);
    f.wait_replicas(&canary, 0).await;
    f.wait_replicas(&stable, 4).await;
}

async fn workload_ref(mode: &str) -> Option<(Fixture, i32)> {
    let f = fixture(&format!("ro-wl-{mode}")).await?;
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1", json!({})),
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating the Deployment");
    let ro: Rollout = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "scaleDown": mode},
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": 1}}]}},
        },
    }))
    .unwrap();
    deployed(&f, &ro).await;
    // Give the controller time to act on the Deployment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut replicas;
    loop {
        replicas = deployments
            .get("web")
            .await
            .expect("reading the Deployment")
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        if replicas == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Some((f, replicas))
}

#[tokio::test]
async fn workload_ref_scale_down_never() {
    let Some((f, replicas)) = workload_ref("never").await else {
        return;
    };
    assert_eq!(replicas, 3, "{}", tail(&f.ctl.log_text(), 40));
}

#[tokio::test]
async fn workload_ref_scale_down_onsuccess() {
    let Some((f, replicas)) = workload_ref("onsuccess").await else {
        return;
    };
    assert_eq!(replicas, 0, "{}", tail(&f.ctl.log_text(), 40));
}

#[tokio::test]
async fn workload_ref_scale_down_progressively() {
    let Some((f, replicas)) = workload_ref("progressively").await else {
        return;
    };
    assert_eq!(replicas, 0, "{}", tail(&f.ctl.log_text(), 40));
    // An update of the Deployment's template is an update of the Rollout.
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let stable = status(&f.get("web").await).stable_rs;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.invalid/web:2"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the Deployment");
    let r = f
        .wait(
            "web",
            "a new revision from the Deployment's template",
            |r| {
                let s = status(r);
                s.stable_rs != stable
                    && s.stable_rs == s.current_pod_hash
                    && s.phase == Some(RolloutPhase::Healthy)
            },
        )
        .await;
    assert_eq!(f.replicas_of(&status(&r).stable_rs).await.0, 3);
}

/// Deploys a Rollout, applies `patch` (a new image and something invalid), and checks that the
/// Rollout gets an InvalidSpec condition whose message has every one of `says`, an Event, phase
/// Degraded, and that no ReplicaSet is created, scaled or deleted.
async fn invalid_after(prefix: &str, patch: Value, says: &[&str]) {
    let Some(f) = fixture(prefix).await else {
        return;
    };
    let ro = rollout(
        "web",
        3,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    let before = f.replica_sets().await;
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the Rollout");
    let r = f
        .wait("web", "InvalidSpec", |r| {
            status(r).conditions.iter().any(|c| {
                c.type_ == reason::INVALID_SPEC
                    && c.status == "True"
                    && says.iter().all(|s| c.message.contains(s))
            })
        })
        .await;
    assert_eq!(status(&r).phase, Some(RolloutPhase::Degraded));
    assert_eq!(health(&r), Health::Degraded);
    assert!(
        f.events_after(&[("InvalidSpec", 1)])
            .await
            .iter()
            .any(|e| e == "InvalidSpec"),
        "an InvalidSpec Event"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        f.replica_sets().await,
        before,
        "no ReplicaSet created, scaled or deleted"
    );
    assert_eq!(status(&f.get("web").await).stable_rs, stable);
}

#[tokio::test]
async fn an_invalid_spec_leaves_the_replica_sets_untouched() {
    // A blue-green strategy whose preview Service is its active one; also a new image.
    let patch = json!({"spec": {
        "template": template("registry.invalid/web:2", json!({})),
        "strategy": {"canary": null, "blueGreen": {"activeService": "web", "previewService": "web"}},
    }});
    invalid_after(
        "ro-invalid",
        patch,
        &["spec.strategy.blueGreen.previewService"],
    )
    .await;
}

/// A traffic router Sluice cannot build (here an unknown plugin) is an InvalidSpec naming
/// `trafficRouting`, with an Event, and nothing is touched: not an error retried in the log.
#[tokio::test]
async fn an_unknown_traffic_router_plugin_is_an_invalid_spec() {
    let patch = json!({"spec": {
        "template": template("registry.invalid/web:2", json!({})),
        "strategy": {"canary": {
            "canaryService": "web-canary", "stableService": "web-stable",
            "trafficRouting": {"plugins": {"example.com/not-a-router": {}}},
        }},
    }});
    let says = [
        "spec.strategy.canary.trafficRouting",
        "example.com/not-a-router",
    ];
    invalid_after("ro-bad-router", patch, &says).await;
}

#[tokio::test]
async fn deleting_a_rollout_mid_way_removes_what_it_owns() {
    let Some(f) = fixture("ro-delete").await else {
        return;
    };
    let ro = rollout(
        "web",
        2,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    assert_eq!(f.replica_sets().await.len(), 2);
    f.rollouts
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("deleting the Rollout");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !f.replica_sets().await.is_empty()
        || f.rollouts.get_opt("web").await.ok().flatten().is_some()
    {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "the Rollout's ReplicaSets outlived it: {:?}",
                f.replica_sets().await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The controller is still healthy and does not recreate anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(f.replica_sets().await.is_empty());
    let metrics = f.ctl.metrics().await;
    assert!(metrics.contains("rollout_reconcile"), "{metrics}");
}

#[tokio::test]
async fn scaling_while_paused_keeps_the_weight() {
    let Some(f) = fixture("ro-scale").await else {
        return;
    };
    let ro = rollout(
        "web",
        4,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&r).current_pod_hash;
    let patch = json!({"spec": {"replicas": 8}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("scaling the Rollout");
    f.wait_replicas(&canary, 4).await;
    f.wait_replicas(&stable, 4).await;
    let r = f
        .wait("web", "still paused at step 1, 8 pods", |r| {
            paused_at(r, 1) && status(r).available_replicas == 8
        })
        .await;
    assert_eq!(status(&r).current_pod_hash, canary);
    f.intent("web", Intent::Promote).await;
    f.wait_healthy("web").await;
    f.wait_replicas(&canary, 8).await;
    f.wait_replicas(&stable, 0).await;
}

/// The selector of a Service, by key.
async fn selector(f: &Fixture, service: &str) -> BTreeMap<String, String> {
    let api: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    api.get(service)
        .await
        .expect("reading the Service")
        .spec
        .and_then(|s| s.selector)
        .unwrap_or_default()
}

#[tokio::test]
async fn canary_and_stable_services_follow_the_replica_sets() {
    let Some(f) = fixture("ro-svc").await else {
        return;
    };
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    for name in ["web-canary", "web-stable"] {
        let service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .unwrap();
        services
            .create(&PostParams::default(), &service)
            .await
            .expect("creating a Service");
    }
    let ro = rollout(
        "web",
        2,
        json!({
            "canaryService": "web-canary", "stableService": "web-stable",
            "steps": [{"setWeight": 50}, {"pause": {}}],
        }),
    );
    let stable = deployed(&f, &ro).await;
    let hash_of = |s: &BTreeMap<String, String>| s.get("rollouts-pod-template-hash").cloned();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while hash_of(&selector(&f, "web-stable").await) != Some(stable.clone())
        || hash_of(&selector(&f, "web-canary").await) != Some(stable.clone())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "selectors never set\n{}",
            tail(&f.ctl.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        selector(&f, "web-stable")
            .await
            .get("app")
            .map(String::as_str),
        Some("web"),
        "the user's selector keys are kept"
    );

    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&r).current_pod_hash;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while hash_of(&selector(&f, "web-canary").await) != Some(canary.clone()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "canary selector never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        hash_of(&selector(&f, "web-stable").await),
        Some(stable.clone())
    );

    f.intent("web", Intent::Promote).await;
    f.wait_healthy("web").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while hash_of(&selector(&f, "web-stable").await) != Some(canary.clone()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stable selector never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// === analysis, deadlines, history and restarts ===

impl Fixture {
    /// Creates an AnalysisTemplate with one metric; a Prometheus one asks the test environment's.
    async fn analysis_template(&self, name: &str, metric: Value) {
        let mut metric = metric;
        if let Some(prometheus) = metric["provider"].get_mut("prometheus") {
            prometheus["address"] = json!(self.env.prometheus_url);
        }
        let template = json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AnalysisTemplate",
            "metadata": {"name": name},
            "spec": {"metrics": [metric]},
        });
        let api: Api<sluice::api::argo::analysis::AnalysisTemplate> =
            Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(template).expect("test AnalysisTemplate"),
        )
        .await
        .unwrap_or_else(|e| panic!("creating AnalysisTemplate {name}: {e}"));
    }

    async fn analysis_runs(&self) -> Vec<AnalysisRun> {
        let api: Api<AnalysisRun> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default())
            .await
            .expect("listing AnalysisRuns")
            .items
    }
}

fn run_phase(run: &AnalysisRun) -> String {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

fn run_label(run: &AnalysisRun, label: &str) -> String {
    run.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(label))
        .cloned()
        .unwrap_or_default()
}

/// `vector(value)`, judged `>= 1` to succeed and `< 0` to fail (so 0 is Inconclusive).
fn metric(value: i32, extra: Value) -> Value {
    let mut m = json!({
        "name": "probe",
        "successCondition": "result[0] >= 1",
        "failureCondition": "result[0] < 0",
        "provider": {"prometheus": {"query": format!("vector({value})")}},
    });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    m
}

#[tokio::test]
async fn a_successful_analysis_step_advances() {
    let Some(f) = fixture("ro-an-ok").await else {
        return;
    };
    f.analysis_template("passes", metric(1, json!({"count": 2, "interval": "1s"})))
        .await;
    let ro = rollout(
        "web",
        4,
        json!({"steps": [
            {"setWeight": 25},
            {"analysis": {"templates": [{"templateName": "passes"}]}},
            {"setWeight": 75},
        ]}),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f.wait_healthy("web").await;
    let s = status(&r);
    assert_ne!(s.stable_rs, stable);
    assert_eq!(s.current_step_index, Some(3));
    let runs = f.analysis_runs().await;
    assert_eq!(runs.len(), 1, "one run for the analysis step: {runs:?}");
    assert_eq!(run_phase(&runs[0]), "Successful");
    assert_eq!(run_label(&runs[0], "rollout-type"), "Step");
    let events = f.events_after(&[("RolloutStepCompleted", 3)]).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "RolloutStepCompleted")
            .count(),
        3,
        "{events:?}"
    );
    f.wait_replicas(&stable, 0).await;
}

#[tokio::test]
async fn an_inconclusive_analysis_pauses_until_promoted() {
    let Some(f) = fixture("ro-an-inc").await else {
        return;
    };
    f.analysis_template("unsure", metric(0, json!({}))).await;
    let ro = rollout(
        "web",
        2,
        json!({"steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "unsure"}]}},
        ]}),
    );
    deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f
        .wait("web", "paused on the inconclusive run", |r| {
            status(r).pause_conditions.iter().any(|c| {
                c.reason == sluice::api::argo::rollout::PauseReason::InconclusiveAnalysisRun
            })
        })
        .await;
    let s = status(&r);
    assert_eq!(s.phase, Some(RolloutPhase::Paused), "{}", f.dump(&r));
    assert_eq!(health(&r), Health::Suspended);
    assert_eq!(s.current_step_index, Some(1));
    assert_eq!(
        s.canary
            .current_step_analysis_run_status
            .as_ref()
            .map(|a| a.status.as_str()),
        Some("Inconclusive")
    );
    let runs = f.analysis_runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(run_phase(&runs[0]), "Inconclusive");
    // The user accepts the verdict (kubectl argo rollouts promote): the update goes on.
    f.intent("web", Intent::Promote).await;
    f.wait_healthy("web").await;
    assert_eq!(f.analysis_runs().await.len(), 1, "no second run");
}

#[tokio::test]
async fn a_successful_background_analysis_lets_the_update_complete() {
    let Some(f) = fixture("ro-bg-ok").await else {
        return;
    };
    f.analysis_template("watch", metric(1, json!({"interval": "1s"})))
        .await;
    let ro = rollout(
        "web",
        4,
        json!({
            "analysis": {"templates": [{"templateName": "watch"}], "startingStep": 1},
            "steps": [{"setWeight": 25}, {"pause": {"duration": "3s"}}, {"setWeight": 75}],
        }),
    );
    let stable = deployed(&f, &ro).await;
    assert!(
        f.analysis_runs().await.is_empty(),
        "no background run for the first deploy"
    );
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f
        .wait("web", "the background run to be running", |r| {
            status(r)
                .canary
                .current_background_analysis_run_status
                .as_ref()
                .is_some_and(|a| a.status == "Running")
        })
        .await;
    assert!(status(&r).current_step_index >= Some(1));
    let r = f.wait_healthy("web").await;
    assert_ne!(status(&r).stable_rs, stable);
    // Completion terminates the background run, which then ends Successful.
    let runs = f.analysis_runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(run_label(&runs[0], "rollout-type"), "Background");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let runs = f.analysis_runs().await;
        if run_phase(&runs[0]) == "Successful" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background run was never terminated: {:?}",
            runs[0].status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A web metric endpoint that answers `{"ok": 1}` after `delay`: a slow first measurement.
async fn slow_web_metric(delay: Duration) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/metric",
        axum::routing::get(move || async move {
            tokio::time::sleep(delay).await;
            axum::Json(json!({"ok": 1}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the metric endpoint");
    let url = format!("http://{}/metric", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, server)
}

#[tokio::test]
async fn a_pause_is_entered_with_the_background_analysis_already_running() {
    let Some(f) = fixture("ro-bg-first").await else {
        return;
    };
    // The first measurement takes 3 s, so the run is Pending that long after it is created.
    let (url, server) = slow_web_metric(Duration::from_secs(3)).await;
    let watch = json!({
        "name": "probe",
        "interval": "30s",
        "successCondition": "result.ok == 1",
        "provider": {"web": {"url": url, "timeoutSeconds": 10}},
    });
    f.analysis_template("watch", watch).await;
    let ro = rollout(
        "web",
        2,
        json!({
            "analysis": {"templates": [{"templateName": "watch"}]},
            "steps": [{"setWeight": 50}, {"pause": {}}],
        }),
    );
    deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    // Argo's order, which its e2e suite checks: whoever sees Paused also sees the run running.
    f.wait("web", "paused at the pause step", |r| {
        status(r).phase == Some(RolloutPhase::Paused)
    })
    .await;
    let runs = f.analysis_runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(run_phase(&runs[0]), "Running", "{:?}", runs[0].status);
    server.abort();
}

#[tokio::test]
async fn a_failing_background_analysis_aborts() {
    let Some(f) = fixture("ro-bg-fail").await else {
        return;
    };
    f.analysis_template("watch", metric(-1, json!({"interval": "1s"})))
        .await;
    let ro = rollout(
        "web",
        4,
        json!({
            "analysis": {"templates": [{"templateName": "watch"}]},
            "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}],
        }),
    );
    let stable = deployed(&f, &ro).await;
    f.set_image("web", "registry.invalid/web:2").await;
    let r = f
        .wait("web", "aborted by the background analysis", |r| {
            status(r).phase == Some(RolloutPhase::Degraded)
                && progressing_reason(r) == reason::ROLLOUT_ABORTED
        })
        .await;
    assert!(status_message_mentions_analysis(&r), "{}", f.dump(&r));
    assert_eq!(health(&r), Health::Degraded);
    f.wait_replicas(&status(&r).current_pod_hash, 0).await;
    f.wait_replicas(&stable, 4).await;
    let runs = f.analysis_runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(run_phase(&runs[0]), "Failed");
    assert_eq!(run_label(&runs[0], "rollout-type"), "Background");
}

#[tokio::test]
async fn progress_deadline_abort_returns_to_stable() {
    let Some(f) = fixture("ro-pd-abort").await else {
        return;
    };
    let mut ro = rollout(
        "web",
        2,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    ro.spec.progress_deadline_seconds = Some(3);
    ro.spec.progress_deadline_abort = Some(true);
    let stable = deployed(&f, &ro).await;
    let patch = json!({"spec": {"template": template("registry.invalid/web:2", json!({"sim/never-ready": "true"}))}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the template");
    let r = f
        .wait("web", "aborted at the progress deadline", |r| {
            status(r).abort && progressing_reason(r) == reason::ROLLOUT_ABORTED
        })
        .await;
    assert_eq!(status(&r).phase, Some(RolloutPhase::Degraded));
    assert_eq!(health(&r), Health::Degraded);
    f.wait_replicas(&status(&r).current_pod_hash, 0).await;
    f.wait_replicas(&stable, 2).await;
    let events = f
        .events_after(&[
            (reason::PROGRESS_DEADLINE_EXCEEDED, 1),
            ("RolloutAborted", 1),
        ])
        .await;
    assert!(
        events
            .iter()
            .any(|e| e == reason::PROGRESS_DEADLINE_EXCEEDED),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "RolloutAborted"), "{events:?}");
}

#[tokio::test]
async fn old_replica_sets_beyond_the_history_limit_are_deleted() {
    let Some(f) = fixture("ro-history").await else {
        return;
    };
    let mut ro = rollout("web", 1, json!({"steps": [{"setWeight": 50}]}));
    ro.spec.revision_history_limit = Some(1);
    let v1 = deployed(&f, &ro).await;
    let mut hashes = vec![v1];
    for image in ["registry.invalid/web:2", "registry.invalid/web:3"] {
        f.set_image("web", image).await;
        let r = f
            .wait("web", "the new revision promoted", |r| {
                let s = status(r);
                !hashes.contains(&s.stable_rs)
                    && s.stable_rs == s.current_pod_hash
                    && s.phase == Some(RolloutPhase::Healthy)
            })
            .await;
        hashes.push(status(&r).stable_rs);
    }
    // v3 serves; v2 is the one old ReplicaSet kept; v1 is deleted.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let sets = f.replica_sets().await;
        let have: Vec<&String> = sets.keys().collect();
        if sets.len() == 2 && !sets.contains_key(&hashes[0]) {
            assert_eq!(sets.get(&hashes[1]).map(|c| c.0), Some(0), "{sets:?}");
            assert_eq!(sets.get(&hashes[2]).map(|c| c.0), Some(1), "{sets:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history not cleaned up to 1 old ReplicaSet: {have:?} (v1..v3 = {hashes:?})\n{}",
            tail(&f.ctl.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn restart_at_replaces_every_pod_one_at_a_time() {
    let Some(f) = fixture("ro-restart-at").await else {
        return;
    };
    let ro = rollout(
        "web",
        3,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    );
    let stable = deployed(&f, &ro).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    let live = || async {
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .expect("listing pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.metadata.name.unwrap_or_default())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let before = live().await;
    assert_eq!(before.len(), 3);
    // creationTimestamp has whole seconds: make the restart time strictly newer than every pod.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let at = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap();
    let patch = json!({"spec": {"restartAt": at.to_string()}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("setting restartAt");
    // Never more than one pod away at a time (maxUnavailable 0 of 3: one eviction in flight).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let now = live().await;
        assert!(
            now.len() >= 2,
            "more than one pod restarted at once: {now:?}"
        );
        let r = f.get("web").await;
        if status(&r).restarted_at.as_ref().map(|t| t.0) == Some(at) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "restart never completed\n{}",
            f.dump(&r)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = live().await;
    assert!(
        after.is_disjoint(&before),
        "every old pod replaced: before {before:?}, after {after:?}"
    );
    let r = f.wait_healthy("web").await;
    assert_eq!(status(&r).stable_rs, stable, "no new revision");
    assert_eq!(f.replica_sets().await.len(), 1, "no new ReplicaSet");
    let events = f.events_after(&[("RolloutRestarted", 1)]).await;
    assert_eq!(
        events.iter().filter(|e| *e == "RolloutRestarted").count(),
        1,
        "{events:?}"
    );
}

/// A Rollout that Argo Rollouts deployed (its ReplicaSet named by Argo's hash, its status written
/// by Argo) is taken over without a new revision: the ReplicaSet whose pod template is the
/// Rollout's is adopted (compared with Kubernetes' defaults applied), and the next update runs
/// the steps from it as usual.
#[tokio::test]
async fn a_rollout_migrated_from_argo_keeps_its_replica_set() {
    let Some(env) = test_env().await else {
        return;
    };
    let ns = env.namespace("ro-migrate").await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    let ro = rollout(
        "web",
        3,
        json!({"steps": [{"setWeight": 34}, {"pause": {}}]}),
    );
    let created = rollouts
        .create(&PostParams::default(), &ro)
        .await
        .expect("creating the Rollout");
    // What Argo Rollouts left: its ReplicaSet (hash label and name from Argo's hash) and status.
    let argo_hash = "6f9d8c7b5";
    let mut rs_template = template("registry.invalid/web:1", json!({}));
    rs_template["metadata"]["labels"]["rollouts-pod-template-hash"] = json!(argo_hash);
    let argo_rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {
            "name": format!("web-{argo_hash}"),
            "labels": {"app": "web", "rollouts-pod-template-hash": argo_hash},
            "annotations": {"rollout.argoproj.io/revision": "1"},
            "ownerReferences": [{
                "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web",
                "uid": created.metadata.uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web", "rollouts-pod-template-hash": argo_hash}},
            "template": rs_template,
        },
    }))
    .expect("Argo's ReplicaSet");
    let sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &ns.name);
    sets.create(&PostParams::default(), &argo_rs)
        .await
        .expect("creating Argo's ReplicaSet");
    let argo_status = json!({"status": {
        "phase": "Healthy", "currentPodHash": argo_hash, "stableRS": argo_hash,
        "currentStepIndex": 2, "observedGeneration": "1", "replicas": 3,
        "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3,
        "selector": format!("app=web,rollouts-pod-template-hash={argo_hash}"),
    }});
    rollouts
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&argo_status))
        .await
        .expect("writing Argo's status");

    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
    let f = Fixture {
        env,
        ns,
        ctl,
        rollouts,
    };
    let adopted = f
        .wait("web", "the Argo ReplicaSet adopted", |r| {
            let s = status(r);
            s.current_pod_hash == argo_hash
                && s.stable_rs == argo_hash
                && s.phase == Some(RolloutPhase::Healthy)
                && r.metadata.generation.map(|g| g.to_string()) == Some(s.observed_generation)
        })
        .await;
    let rs = sets
        .get(&format!("web-{argo_hash}"))
        .await
        .expect("Argo's ReplicaSet");
    let annotations = rs.metadata.annotations.unwrap_or_default();
    assert!(
        annotations.contains_key("sluice.dev/template-hash"),
        "adoption is recorded on the ReplicaSet: {annotations:?}\n{}",
        f.dump(&adopted)
    );
    // No second ReplicaSet for the same template, and it keeps its replicas.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = f.replica_sets().await;
    assert_eq!(
        all.len(),
        1,
        "no new revision: {all:?}\n{}",
        f.dump(&adopted)
    );
    assert_eq!(all.get(argo_hash), Some(&(3, 3)));

    // The next update starts from it like any other.
    f.set_image("web", "registry.invalid/web:2").await;
    let paused = f.wait("web", "paused at step 1", |r| paused_at(r, 1)).await;
    let canary = status(&paused).current_pod_hash;
    assert_ne!(canary, argo_hash);
    assert_eq!(
        f.replicas_of(&canary).await.0,
        1,
        "34% of 3 is 1 canary pod"
    );
    assert_eq!(f.replicas_of(argo_hash).await.0, 2);
    f.intent("web", Intent::Promote).await;
    f.wait_healthy("web").await;
    assert_eq!(f.wait_replicas(argo_hash, 0).await, 0);
}

/// The name the template's hash gives is already taken by a ReplicaSet the Rollout does not
/// control: the collision is counted in `status.collisionCount` (which changes the hash, as
/// Argo Rollouts and Deployments do) and the Rollout comes up under the next name; the other
/// ReplicaSet is left alone.
#[tokio::test]
async fn a_replica_set_name_taken_by_someone_else_is_a_counted_collision() {
    let Some(f) = fixture("ro-collision").await else {
        return;
    };
    let ro = rollout("web", 1, json!({"steps": [{"pause": {}}]}));
    let template = ro
        .spec
        .template
        .clone()
        .expect("the Rollout has a template");
    let taken = format!(
        "web-{}",
        sluice::engine::hash::pod_template_hash(&template, None)
    );
    let foreign: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": taken, "labels": {"owner": "someone-else"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "other"}},
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "other", "image": "registry.invalid/other:1"}]},
            },
        },
    }))
    .expect("the foreign ReplicaSet");
    let replica_sets: Api<ReplicaSet> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    let foreign = replica_sets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("creating the foreign ReplicaSet");

    f.create(&ro).await;
    let r = f.wait_healthy("web").await;
    let s = status(&r);
    assert_eq!(s.collision_count, Some(1), "{}", f.dump(&r));
    assert_eq!(
        s.current_pod_hash,
        sluice::engine::hash::pod_template_hash(&template, Some(1))
    );
    assert_ne!(format!("web-{}", s.current_pod_hash), taken);
    assert_eq!(f.replicas_of(&s.stable_rs).await, (1, 1));
    // Only kube-controller-manager writes it (its status): Sluice neither adopts nor changes it.
    let after = replica_sets
        .get(&taken)
        .await
        .expect("the foreign ReplicaSet");
    assert_eq!(after.spec, foreign.spec);
    assert_eq!(after.metadata.labels, foreign.metadata.labels);
    assert_eq!(after.metadata.owner_references, None);
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == "sluice"),
        "Sluice wrote the ReplicaSet that is not the Rollout's: {managers:?}"
    );
}
