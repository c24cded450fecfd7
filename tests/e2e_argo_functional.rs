//! Behaviours Argo Rollouts' own functional suite (`TestFunctionalSuite`) checks, as tests of
//! our own on the real cluster: the status fields and conditions it reads, the Events it expects
//! in order, and `spec.restartAt` as Argo's pod restarter does it.
//!
//! Each test gets its own namespace and its own `sluice controller` limited to it.

mod common;

use std::time::Duration;

use common::eventually;
use common::rollouts::{Fixture, fixture};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};

const TIMEOUT: Duration = Duration::from_secs(90);

fn template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": image}]},
    })
}

fn status(r: &Rollout) -> RolloutStatus {
    r.status.clone().unwrap_or_default()
}

impl Fixture {
    async fn apply(&self, manifest: Value) {
        self.env.create(&self.ns.name, manifest).await;
    }

    async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
        let rollouts = self.rollouts.clone();
        let name = name.to_string();
        let check = &check;
        eventually(TIMEOUT, what, || {
            let rollouts = rollouts.clone();
            let name = name.clone();
            async move {
                let r = rollouts.get(&name).await.ok()?;
                check(&r).then_some(r)
            }
        })
        .await
    }

    /// ReplicaSets a Rollout made (the Deployment controller makes its own).
    async fn replica_set_count(&self) -> usize {
        let api: Api<ReplicaSet> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.list(&ListParams::default().labels("rollouts-pod-template-hash"))
            .await
            .expect("listing ReplicaSets")
            .items
            .len()
    }
}

fn healthy(r: &Rollout) -> bool {
    let s = status(r);
    s.phase == Some(RolloutPhase::Healthy)
        && s.observed_generation == r.metadata.generation.unwrap_or(0).to_string()
        && !s.stable_rs.is_empty()
        && s.stable_rs == s.current_pod_hash
}

// === workloadRef (TestWorkloadRef, TestWorkloadRefTemplate) ===

/// `status.workloadObservedGeneration` is the generation of the Deployment the Rollout's template
/// was taken from, follows it when the Deployment changes, and goes away with the workloadRef.
#[tokio::test]
async fn workload_ref_records_the_observed_deployment_generation() {
    let Some(f) = fixture("fn-wl-gen").await else {
        return;
    };
    let deployments: Api<Deployment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    f.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1"),
        },
    }))
    .await;
    f.apply(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "strategy": {"canary": {}},
        },
    }))
    .await;
    let generation = |d: &Deployment| d.metadata.generation.unwrap_or(0).to_string();
    let first = generation(&deployments.get("web").await.expect("the Deployment"));
    f.wait_for("web", "Healthy, workloadObservedGeneration 1", |r| {
        healthy(r) && status(r).workload_observed_generation == first
    })
    .await;

    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    let changed = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("patching the Deployment");
    let second = generation(&changed);
    assert_ne!(first, second);
    f.wait_for(
        "web",
        "workloadObservedGeneration of the new template",
        |r| healthy(r) && status(r).workload_observed_generation == second,
    )
    .await;

    // An inline template instead of the workloadRef: the field goes.
    let inline = json!({"spec": {
        "workloadRef": null,
        "selector": {"matchLabels": {"app": "web"}},
        "template": template("registry.invalid/web:2"),
    }});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&inline))
        .await
        .expect("switching to an inline template");
    f.wait_for("web", "no workloadObservedGeneration", |r| {
        healthy(r) && status(r).workload_observed_generation.is_empty()
    })
    .await;
}

/// A Rollout with both a workloadRef and a template is refused as Argo refuses it, with Argo's
/// words in the InvalidSpec condition, and nothing is created for it.
#[tokio::test]
async fn workload_ref_with_a_template_is_invalid() {
    let Some(f) = fixture("fn-wl-tpl").await else {
        return;
    };
    f.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1"),
        },
    }))
    .await;
    f.rollouts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}},
                    "strategy": {"canary": {}},
                },
            }))
            .expect("test Rollout"),
        )
        .await
        .expect("creating the Rollout");
    let r = f
        .wait_for("web", "Degraded with InvalidSpec", |r| {
            status(r).phase == Some(RolloutPhase::Degraded)
        })
        .await;
    let invalid = status(&r)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "InvalidSpec")
        .expect("an InvalidSpec condition");
    assert_eq!(invalid.status, "True");
    assert!(
        invalid
            .message
            .contains("template must be empty for workload reference rollout"),
        "{}",
        invalid.message
    );
    assert_eq!(f.replica_set_count().await, 0, "no ReplicaSet for it");
}

// === Events (TestRolloutAbortRetryPromote, TestBlueGreenUpdate) ===

impl Fixture {
    /// The `core/v1` Events recorded on Rollout `name`, oldest first.
    async fn rollout_events(&self, name: &str) -> Vec<CoreEvent> {
        let uid = self
            .rollouts
            .get(name)
            .await
            .ok()
            .and_then(|r| r.metadata.uid);
        let api: Api<CoreEvent> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let mut events: Vec<CoreEvent> = api
            .list(&ListParams::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| e.involved_object.uid.is_some() && e.involved_object.uid == uid)
            .collect();
        events.sort_by_key(|e| (e.event_time.as_ref().map(|t| t.0), e.metadata.name.clone()));
        events
    }

    /// Waits until the Events recorded on `name` are `expected` (their reasons, in order), then
    /// 2 s more to show that nothing follows; panics with what was recorded otherwise.
    async fn expect_event_reasons(&self, name: &str, expected: &[&str]) {
        let reasons = |events: &[CoreEvent]| -> Vec<String> {
            events
                .iter()
                .map(|e| e.reason.clone().unwrap_or_default())
                .collect()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reasons(&self.rollout_events(name).await).len() < expected.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let events = self.rollout_events(name).await;
        let messages: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.as_deref().unwrap_or_default(),
                    e.message.as_deref().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            reasons(&events),
            expected,
            "recorded:\n{}",
            messages.join("\n")
        );
        for e in &events {
            // Argo's plugin and `kubectl describe` print these; unset they show as 0001-01-01.
            assert!(
                e.first_timestamp.is_some() && e.last_timestamp.is_some() && e.count == Some(1),
                "{e:?}"
            );
        }
    }

    async fn patch_spec(&self, name: &str, patch: Value) {
        self.rollouts
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the Rollout");
    }

    async fn patch_status(&self, name: &str, patch: Value) {
        self.rollouts
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the Rollout's status");
    }
}

fn phase_is(phase: RolloutPhase) -> impl Fn(&Rollout) -> bool {
    move |r: &Rollout| {
        let s = status(r);
        s.phase == Some(phase)
            && s.observed_generation == r.metadata.generation.unwrap_or(0).to_string()
    }
}

/// A canary through an update, an abort, a retry and a timed pause records exactly Argo's Events,
/// in Argo's order (Argo's `TestRolloutAbortRetryPromote`).
#[tokio::test]
async fn canary_abort_retry_promote_records_argos_events_in_order() {
    let Some(f) = fixture("fn-ev-canary").await else {
        return;
    };
    f.apply(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1"),
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "3s"}}]}},
        },
    }))
    .await;
    f.wait_for("web", "Healthy", healthy).await;
    // The plugin's patches: a new template, `abort`, then retry (clearing `abort`).
    f.patch_spec(
        "web",
        json!({"spec": {"template": {"metadata": {"annotations": {"update": "1"}}}}}),
    )
    .await;
    f.wait_for(
        "web",
        "Paused at the timed pause",
        phase_is(RolloutPhase::Paused),
    )
    .await;
    f.patch_status("web", json!({"status": {"abort": true}}))
        .await;
    f.wait_for(
        "web",
        "Degraded after the abort",
        phase_is(RolloutPhase::Degraded),
    )
    .await;
    f.patch_status("web", json!({"status": {"abort": false}}))
        .await;
    f.wait_for("web", "Healthy after the retry", healthy).await;
    f.expect_event_reasons(
        "web",
        &[
            "RolloutAddedToInformer",
            "RolloutUpdated",
            "NewReplicaSetCreated",
            "RolloutNotCompleted",
            "ScalingReplicaSet",
            "RolloutCompleted",
            "RolloutUpdated",
            "NewReplicaSetCreated",
            "RolloutNotCompleted",
            "ScalingReplicaSet",
            "RolloutStepCompleted",
            "RolloutPaused",
            "ScalingReplicaSet",
            "RolloutAborted",
            "ScalingReplicaSet",
            "RolloutStepCompleted",
            "RolloutPaused",
            "RolloutStepCompleted",
            "RolloutResumed",
            "ScalingReplicaSet",
            "RolloutCompleted",
        ],
    )
    .await;
}

/// A blue-green update records exactly Argo's Events, in Argo's order (Argo's
/// `TestBlueGreenUpdate`).
#[tokio::test]
async fn blue_green_update_records_argos_events_in_order() {
    let Some(f) = fixture("fn-ev-bg").await else {
        return;
    };
    f.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .await;
    f.apply(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1"),
            "strategy": {"blueGreen": {"activeService": "web", "scaleDownDelaySeconds": 10}},
        },
    }))
    .await;
    f.wait_for("web", "Healthy", healthy).await;
    f.patch_spec(
        "web",
        json!({"spec": {"template": {"metadata": {"annotations": {"update": "1"}}}}}),
    )
    .await;
    f.wait_for("web", "Healthy on the update", |r| {
        healthy(r) && status(r).blue_green.active_selector == status(r).current_pod_hash
    })
    .await;
    f.expect_event_reasons(
        "web",
        &[
            "RolloutAddedToInformer",
            "RolloutUpdated",
            "NewReplicaSetCreated",
            "ScalingReplicaSet",
            "RolloutCompleted",
            "SwitchService",
            "RolloutUpdated",
            "NewReplicaSetCreated",
            "RolloutNotCompleted",
            "ScalingReplicaSet",
            "SwitchService",
            "RolloutCompleted",
        ],
    )
    .await;
}

// === spec.restartAt (TestRolloutRestart, TestRolloutPDBRestart) ===

/// A Rollout of 4 replicas paused at `setWeight: 25` whose pods take 5 s to become ready
/// (a postStart hook), with `maxUnavailable`.
async fn paused_for_restart(f: &Fixture, max_unavailable: &str) {
    let mut pod = template("registry.invalid/web:1");
    pod["spec"]["containers"][0]["lifecycle"] =
        json!({"postStart": {"exec": {"command": ["sleep", "5"]}}});
    f.apply(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod,
            "strategy": {"canary": {
                "maxUnavailable": max_unavailable,
                "steps": [{"setWeight": 25}, {"pause": {}}],
            }},
        },
    }))
    .await;
    f.wait_for("web", "Healthy", healthy).await;
    f.patch_spec(
        "web",
        json!({"spec": {"template": {"metadata": {"annotations": {"update": "1"}}}}}),
    )
    .await;
    f.wait_for("web", "Paused at the indefinite pause", |r| {
        phase_is(RolloutPhase::Paused)(r) && status(r).available_replicas == 4
    })
    .await;
}

impl Fixture {
    /// Sets `spec.restartAt` to now, as `kubectl argo rollouts restart` does (after a second, so
    /// that every pod is older).
    async fn restart(&self) -> k8s_openapi::jiff::Timestamp {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = k8s_openapi::jiff::Timestamp::from_second(
            k8s_openapi::jiff::Timestamp::now().as_second(),
        )
        .expect("now");
        self.patch_spec("web", json!({"spec": {"restartAt": at.to_string()}}))
            .await;
        at
    }

    async fn wait_restarted(&self, at: k8s_openapi::jiff::Timestamp) {
        self.wait_for("web", "status.restartedAt", |r| {
            status(r).restarted_at.as_ref().map(|t| t.0) == Some(at)
        })
        .await;
    }
}

/// `maxUnavailable: 75%` of 4: three pods are evicted at once, not one after the other (Argo's
/// budget), and the restart completes.
#[tokio::test]
async fn restart_evicts_as_many_pods_as_max_unavailable_allows() {
    let Some(f) = fixture("fn-restart").await else {
        return;
    };
    paused_for_restart(&f, "75%").await;
    let at = f.restart().await;
    // The replacements are unready for 5 s: within 4 s only one pod is left ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut ready = 4;
    while tokio::time::Instant::now() < deadline && ready > 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ready = f
            .rollouts
            .get("web")
            .await
            .map_or(4, |r| status(&r).ready_replicas);
    }
    assert_eq!(ready, 1, "three pods evicted together");
    f.wait_restarted(at).await;
}

/// A PodDisruptionBudget refusing every eviction holds the restart (nothing is lost, no error
/// loop); once it is gone, the restart goes on.
#[tokio::test]
async fn restart_waits_for_a_pod_disruption_budget() {
    let Some(f) = fixture("fn-restart-pdb").await else {
        return;
    };
    f.apply(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 4, "selector": {"matchLabels": {"app": "web"}}},
    }))
    .await;
    paused_for_restart(&f, "100%").await;
    let at = f.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = f.rollouts.get("web").await.expect("the Rollout");
    assert_eq!(
        status(&r).available_replicas,
        4,
        "the budget refused every eviction"
    );
    assert!(status(&r).restarted_at.is_none());
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(f.env.client.clone(), &f.ns.name);
    pdbs.delete("web", &Default::default())
        .await
        .expect("deleting the PodDisruptionBudget");
    f.wait_for(
        "web",
        "every pod evicted at once (maxUnavailable 100%)",
        |r| status(r).available_replicas == 0,
    )
    .await;
    f.wait_restarted(at).await;
}
