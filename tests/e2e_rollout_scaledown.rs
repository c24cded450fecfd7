//! Argo's scale-down timing on the real cluster, through `sluice controller`: with a traffic router
//! (SMI here; the rule is the same for every router) a promoted Rollout is Healthy at once, while
//! the old ReplicaSet keeps its pods until the `scale-down-deadline` annotation (Argo's key and
//! RFC 3339 format) says, at most `scaleDownDelayRevisionLimit` old ReplicaSets wait; an aborted
//! canary keeps its pods until its own deadline (`abortScaleDownDelaySeconds`), or for good with 0.
//! And `canaryMetadata` / `stableMetadata`: the labels land on the pods of the canary and the
//! stable ReplicaSet (and their templates), move when the canary is promoted, and are taken off
//! when the field changes or goes.
//!
//! Each test gets its own namespace and its own controller limited to it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::controller::ControllerProcess;
use common::{TestEnv, TestNamespace, eventually};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};
use sluice::engine::intent::{self, Intent};

const ROLLOUT: &str = "web";
/// Upper bound for anything the controller does in reaction to a change (a loaded 2-core machine).
const TIMEOUT: Duration = Duration::from_secs(120);
/// Argo's annotation key, written out: tools read it by this name.
const DEADLINE: &str = "scale-down-deadline";
const HASH: &str = "rollouts-pod-template-hash";

struct Harness {
    env: TestEnv,
    ns: TestNamespace,
    ctl: ControllerProcess,
    rollouts: Api<Rollout>,
    replica_sets: Api<ReplicaSet>,
}

/// One ReplicaSet as the tests look at it.
#[derive(Clone, Debug)]
struct Rs {
    replicas: i32,
    deadline: Option<String>,
    revision: String,
}

fn template(image: &str) -> Value {
    json!({"metadata": {"labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": image}]}})
}

impl Harness {
    /// A namespace with the Rollout's Services and a controller for it, and the Rollout (`canary`
    /// is its strategy, SMI routing added) Healthy at its first revision.
    async fn start(prefix: &str, canary: Value) -> Option<Harness> {
        let h = Self::launch(prefix, canary, 2, template("registry.invalid/web:1")).await?;
        h.wait("the first revision to be Healthy", |s| healthy(s, 2))
            .await;
        Some(h)
    }

    /// The same, with `replicas` pods of `template`, not waiting for anything.
    async fn launch(
        prefix: &str,
        mut canary: Value,
        replicas: i32,
        template: Value,
    ) -> Option<Harness> {
        let env = common::test_env().await?;
        let ns = env.namespace(prefix).await;
        for svc in ["web-stable", "web-canary", "web-root"] {
            env.create(
                &ns.name,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc},
                       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
            )
            .await;
        }
        let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
        canary["canaryService"] = json!("web-canary");
        canary["stableService"] = json!("web-stable");
        canary["trafficRouting"] = json!({"smi": {"rootService": "web-root"}});
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": ROLLOUT},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": template,
                     "strategy": {"canary": canary}},
        }))
        .expect("the Rollout");
        let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
        rollouts
            .create(&PostParams::default(), &rollout)
            .await
            .expect("creating the Rollout");
        let replica_sets = Api::namespaced(env.client.clone(), &ns.name);
        Some(Harness {
            env,
            ns,
            ctl,
            rollouts,
            replica_sets,
        })
    }

    async fn wait(&self, what: &str, check: impl Fn(&RolloutStatus) -> bool) -> RolloutStatus {
        let what = format!("{what} (controller log: {})", self.ctl.log.display());
        let check = &check;
        eventually(TIMEOUT, &what, || async move {
            let r = self.rollouts.get(ROLLOUT).await.ok()?;
            let s = r.status.unwrap_or_default();
            check(&s).then_some(s)
        })
        .await
    }

    async fn set_image(&self, image: &str) {
        self.set_template(template(image)).await;
    }

    async fn set_template(&self, template: Value) {
        let patch = json!({"spec": {"template": template}});
        self.rollouts
            .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("a new revision");
    }

    /// Sends what `kubectl argo rollouts <intent>` sends.
    async fn intent(&self, intent: Intent) {
        let r = self.rollouts.get(ROLLOUT).await.expect("the Rollout");
        let (spec_patch, status_patch) = intent::patches(intent, &r);
        if let Some(p) = spec_patch {
            self.rollouts
                .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("intent (spec)");
        }
        if let Some(p) = status_patch {
            self.rollouts
                .patch_status(ROLLOUT, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("intent (status)");
        }
    }

    /// The Rollout's ReplicaSets by pod-template hash.
    async fn replica_sets(&self) -> BTreeMap<String, Rs> {
        let list = self
            .replica_sets
            .list(&ListParams::default())
            .await
            .expect("listing ReplicaSets");
        list.items
            .into_iter()
            .filter_map(|rs| {
                let labels = rs.metadata.labels.clone().unwrap_or_default();
                let annotations = rs.metadata.annotations.clone().unwrap_or_default();
                Some((
                    labels.get(HASH)?.clone(),
                    Rs {
                        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                        deadline: annotations.get(DEADLINE).cloned(),
                        revision: annotations
                            .get("rollout.argoproj.io/revision")
                            .cloned()
                            .unwrap_or_default(),
                    },
                ))
            })
            .collect()
    }

    async fn rs(&self, hash: &str) -> Rs {
        self.replica_sets()
            .await
            .remove(hash)
            .unwrap_or_else(|| panic!("no ReplicaSet with hash {hash}"))
    }

    /// Pods that exist (not terminating) for one pod-template hash.
    async fn pods(&self, hash: &str) -> usize {
        let pods: Api<Pod> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let list = pods
            .list(&ListParams::default().labels(&format!("{HASH}={hash}")))
            .await
            .expect("listing pods");
        list.items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count()
    }

    /// The labels of each existing pod with `hash` (at least one pod).
    async fn pod_labels(&self, hash: &str) -> Option<Vec<BTreeMap<String, String>>> {
        let pods: Api<Pod> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let list = pods
            .list(&ListParams::default().labels(&format!("{HASH}={hash}")))
            .await
            .ok()?;
        let labels: Vec<_> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.metadata.labels.unwrap_or_default())
            .collect();
        (!labels.is_empty()).then_some(labels)
    }

    /// Waits until every pod with `hash`, and its ReplicaSet's template, has `role` / `role2` as
    /// given (`None`: absent).
    async fn wait_roles(&self, hash: &str, role: Option<&str>, role2: Option<&str>) {
        let what = format!(
            "pods and template of {hash} with role={role:?} role2={role2:?} (controller log: {})",
            self.ctl.log.display()
        );
        let fits = |labels: &BTreeMap<String, String>| {
            labels.get("role").map(String::as_str) == role
                && labels.get("role2").map(String::as_str) == role2
        };
        eventually(TIMEOUT, &what, || async {
            let pods = self.pod_labels(hash).await?;
            let rs = self
                .replica_sets
                .get(&format!("{ROLLOUT}-{hash}"))
                .await
                .ok()?;
            let template = rs.spec?.template?.metadata?.labels.unwrap_or_default();
            (pods.iter().all(fits) && fits(&template)).then_some(())
        })
        .await;
    }

    async fn patch_canary(&self, canary: Value) {
        let patch = json!({"spec": {"strategy": {"canary": canary}}});
        self.rollouts
            .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching spec.strategy.canary");
    }

    /// Waits until the ReplicaSet with `hash` has `replicas` and no deadline; returns when.
    async fn wait_scaled_down(&self, hash: &str) -> Timestamp {
        let what = format!(
            "ReplicaSet {hash} at 0 replicas without {DEADLINE} (controller log: {})",
            self.ctl.log.display()
        );
        eventually(TIMEOUT, &what, || async {
            let rs = self.replica_sets().await.remove(hash)?;
            (rs.replicas == 0 && rs.deadline.is_none()).then(Timestamp::now)
        })
        .await
    }
}

fn healthy(s: &RolloutStatus, available: i32) -> bool {
    !s.stable_rs.is_empty()
        && s.stable_rs == s.current_pod_hash
        && s.available_replicas >= available
        && s.phase == Some(RolloutPhase::Healthy)
}

/// Argo writes `time.RFC3339` in UTC, whole seconds: `2026-12-07T11:50:00Z`.
fn parse_deadline(value: &str) -> Timestamp {
    let shape = value.len() == 20 && value.ends_with('Z') && value.as_bytes()[10] == b'T';
    assert!(
        shape,
        "{DEADLINE} {value:?} is not Argo's RFC 3339 UTC form"
    );
    value
        .parse()
        .unwrap_or_else(|e| panic!("{DEADLINE} {value:?}: {e}"))
}

/// Seconds from now until `deadline` (negative once past).
fn seconds_until(deadline: Timestamp) -> i64 {
    deadline.as_second() - Timestamp::now().as_second()
}

/// v1 → v2 → v3 → v2 with scaleDownDelaySeconds 30 and scaleDownDelayRevisionLimit 1 (Argo's
/// TestCanaryScaleDownDelay): each promotion is Healthy while the previous stable still runs all
/// its pods under a deadline ~30 s away; v3 scales v1 down at once (beyond the limit); going back
/// to v2 makes it revision 4 without a deadline, and v3 goes at its own deadline.
#[tokio::test]
async fn a_routed_promotion_is_healthy_at_once_and_old_pods_go_at_their_deadline() {
    let canary = json!({"scaleDownDelaySeconds": 30, "scaleDownDelayRevisionLimit": 1});
    let Some(h) = Harness::start("ro-scaledown", canary).await else {
        return;
    };
    let v1 = h
        .rollouts
        .get(ROLLOUT)
        .await
        .unwrap()
        .status
        .unwrap()
        .stable_rs;

    h.set_image("registry.invalid/web:2").await;
    let s = h
        .wait("v2 promoted and Healthy", |s| {
            healthy(s, 2) && s.stable_rs != v1
        })
        .await;
    let v2 = s.stable_rs.clone();
    let old = h.rs(&v1).await;
    assert_eq!(old.replicas, 2, "v1 keeps its pods while Healthy: {old:?}");
    let deadline = parse_deadline(old.deadline.as_deref().unwrap_or_else(|| {
        panic!("v1 has no {DEADLINE} annotation while its pods are kept: {old:?}")
    }));
    let left = seconds_until(deadline);
    assert!(
        (1..=31).contains(&left),
        "Healthy before the deadline: {left} s left (scaleDownDelaySeconds 30)"
    );
    assert_eq!(h.pods(&v1).await, 2, "v1's pods still run");
    assert_eq!(h.rs(&v2).await.deadline, None, "the stable has no deadline");

    h.set_image("registry.invalid/web:3").await;
    let s = h
        .wait("v3 promoted and Healthy", |s| {
            healthy(s, 2) && s.stable_rs != v1 && s.stable_rs != v2
        })
        .await;
    let v3 = s.stable_rs.clone();
    h.wait_scaled_down(&v1).await;
    let second = h.rs(&v2).await;
    assert_eq!(second.replicas, 2, "v2 waits for its deadline: {second:?}");
    let deadline = parse_deadline(second.deadline.as_deref().expect("v2's deadline"));
    assert_eq!(h.rs(&v3).await.deadline, None);
    assert!(
        seconds_until(deadline) > 0,
        "v1 went at once, beyond scaleDownDelayRevisionLimit 1, before v2's deadline"
    );

    assert_eq!(h.rs(&v3).await.revision, "3");

    // Back to v2's template while v2 still waits: it is current again as revision 4 (Argo's
    // numbering), without a deadline, and v3 now waits for its own.
    h.set_image("registry.invalid/web:2").await;
    h.wait("v2 promoted again and Healthy", |s| {
        healthy(s, 2) && s.stable_rs == v2
    })
    .await;
    let what = format!("v2 at revision 4 without {DEADLINE}, v3 with one");
    let deadline = eventually(TIMEOUT, &what, || async {
        let sets = h.replica_sets().await;
        let (again, third) = (sets.get(&v2)?, sets.get(&v3)?);
        let fits = again.revision == "4" && again.deadline.is_none() && third.replicas == 2;
        fits.then(|| third.deadline.clone()).flatten()
    })
    .await;
    let deadline = parse_deadline(&deadline);
    let gone = h.wait_scaled_down(&v3).await;
    assert!(
        gone.as_second() >= deadline.as_second(),
        "v3 scaled down at {gone}, before its deadline {deadline}"
    );
    let s = h.rollouts.get(ROLLOUT).await.unwrap().status.unwrap();
    assert!(healthy(&s, 2), "still Healthy after the scale-down: {s:?}");
    assert_eq!(h.rs(&v2).await.replicas, 2);
}

/// Paused at setWeight 50, then `kubectl argo rollouts abort`: the canary is annotated with a
/// deadline abortScaleDownDelaySeconds away, keeps its pods until then, and goes to zero after.
#[tokio::test]
async fn an_aborted_canary_keeps_its_pods_until_its_deadline() {
    let canary = json!({"abortScaleDownDelaySeconds": 8,
                        "steps": [{"setWeight": 50}, {"pause": {}}]});
    let Some(h) = Harness::start("ro-abort-delay", canary).await else {
        return;
    };
    h.set_image("registry.invalid/web:2").await;
    let s = h
        .wait("a pause at setWeight 50", |s| {
            !s.pause_conditions.is_empty() && s.current_pod_hash != s.stable_rs
        })
        .await;
    let canary = s.current_pod_hash.clone();
    h.intent(Intent::Abort).await;
    h.wait("the abort to be Degraded", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await;
    let what = format!("{DEADLINE} on the aborted canary");
    let deadline = eventually(TIMEOUT, &what, || async {
        h.rs(&canary).await.deadline.map(|d| parse_deadline(&d))
    })
    .await;
    assert!(
        seconds_until(deadline) <= 8,
        "deadline {deadline} is abortScaleDownDelaySeconds away at most"
    );
    if seconds_until(deadline) > 1 {
        assert!(h.rs(&canary).await.replicas > 0, "kept until the deadline");
    }
    let what = format!("the aborted canary {canary} at 0 replicas");
    let gone = eventually(TIMEOUT, &what, || async {
        (h.rs(&canary).await.replicas == 0).then(Timestamp::now)
    })
    .await;
    assert!(
        gone.as_second() >= deadline.as_second(),
        "scaled down at {gone}, before its deadline {deadline}"
    );
}

/// abortScaleDownDelaySeconds 0: the aborted canary keeps its pods for good, with no deadline.
#[tokio::test]
async fn an_aborted_canary_with_a_zero_abort_delay_keeps_its_pods() {
    let canary = json!({"abortScaleDownDelaySeconds": 0,
                        "steps": [{"setCanaryScale": {"replicas": 1}}, {"pause": {}}]});
    let Some(h) = Harness::start("ro-abort-keep", canary).await else {
        return;
    };
    h.set_image("registry.invalid/web:2").await;
    let s = h
        .wait("a pause after setCanaryScale 1", |s| {
            !s.pause_conditions.is_empty() && s.current_pod_hash != s.stable_rs
        })
        .await;
    let canary = s.current_pod_hash.clone();
    h.intent(Intent::Abort).await;
    h.wait("the abort to settle on stable", |s| {
        s.abort
            && s.phase == Some(RolloutPhase::Degraded)
            && s.canary
                .weights
                .as_ref()
                .is_some_and(|w| w.canary.weight == 0 && w.verified == Some(true))
    })
    .await;
    // Nothing is left to wait for; what must not happen is checked for a while (Argo's test: 3 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rs = h.rs(&canary).await;
    assert_eq!(rs.replicas, 1, "the canary keeps its pod: {rs:?}");
    assert_eq!(rs.deadline, None, "and carries no deadline");
}

/// Argo's TestEphemeralMetadata, through a router: stable pods get `role: stable`; the canary's
/// `role: canary` while the stable's keep theirs; a changed canaryMetadata replaces the old label
/// on the running pods; after promotion the new stable's pods carry stableMetadata; a changed
/// stableMetadata is applied to them; removing both fields takes the labels off again.
#[tokio::test]
async fn canary_and_stable_metadata_follow_the_replica_sets_onto_their_pods() {
    let canary = json!({"canaryMetadata": {"labels": {"role": "canary"}},
                        "stableMetadata": {"labels": {"role": "stable"}},
                        "steps": [{"setWeight": 50}, {"pause": {}}]});
    let Some(h) = Harness::start("ro-ephemeral", canary).await else {
        return;
    };
    let v1 = h
        .rollouts
        .get(ROLLOUT)
        .await
        .unwrap()
        .status
        .unwrap()
        .stable_rs;
    h.wait_roles(&v1, Some("stable"), None).await;

    h.set_image("registry.invalid/web:2").await;
    let s = h
        .wait("a pause at setWeight 50", |s| {
            !s.pause_conditions.is_empty() && s.current_pod_hash != s.stable_rs
        })
        .await;
    let v2 = s.current_pod_hash.clone();
    h.wait_roles(&v2, Some("canary"), None).await;
    h.wait_roles(&v1, Some("stable"), None).await;

    h.patch_canary(json!({"canaryMetadata": {"labels": {"role": null, "role2": "canary2"}}}))
        .await;
    h.wait_roles(&v2, None, Some("canary2")).await;

    h.intent(Intent::Promote).await;
    h.wait("v2 promoted and Healthy", |s| {
        healthy(s, 2) && s.stable_rs == v2
    })
    .await;
    // As Argo's test reads them: at once, once Healthy is seen.
    let pods = h.pod_labels(&v2).await.expect("v2's pods");
    assert!(
        pods.iter()
            .all(|l| l.get("role").map(String::as_str) == Some("stable")),
        "Healthy is written only once v2's pods carry stableMetadata: {pods:?}"
    );
    h.wait_roles(&v2, Some("stable"), None).await;

    h.patch_canary(json!({"stableMetadata": {"labels": {"role": null, "role2": "stable2"}}}))
        .await;
    h.wait_roles(&v2, None, Some("stable2")).await;

    h.patch_canary(json!({"canaryMetadata": null, "stableMetadata": null}))
        .await;
    h.wait_roles(&v2, None, None).await;
    let rs = h
        .replica_sets
        .get(&format!("{ROLLOUT}-{v2}"))
        .await
        .unwrap();
    let annotations = rs.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key("rollout.argoproj.io/ephemeral-metadata"),
        "the record goes with the fields: {annotations:?}"
    );
}

/// The readiness gate of the gated pods: Ready only once the test sets it (as Argo's fixtures do).
const GATE: &str = "example.com/ready";

fn gated_template(image: &str) -> Value {
    let mut t = template(image);
    t["spec"]["readinessGates"] = json!([{"conditionType": GATE}]);
    t
}

fn canary_weight(s: &RolloutStatus) -> i32 {
    s.canary.weights.as_ref().map_or(0, |w| w.canary.weight)
}

impl Harness {
    /// Sets the readiness gate of `count` more pods of `hash` True (waiting for them to exist).
    async fn mark_ready(&self, hash: &str, count: usize) {
        let pods: Api<Pod> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let gated = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == GATE && c.status == "True"))
        };
        let mut marked = 0;
        while marked < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {marked} of {count} pods of {hash} to mark ready"
            );
            let list = pods
                .list(&ListParams::default().labels(&format!("{HASH}={hash}")))
                .await
                .expect("listing pods");
            let waiting = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && !gated(p));
            for pod in waiting.take(count - marked) {
                if common::pods::set_condition(&pods, pod, GATE, "True")
                    .await
                    .is_ok()
                {
                    marked += 1;
                }
            }
            if marked < count {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// Waits until the ReplicaSet with `hash` has `replicas` in its spec.
    async fn wait_replicas(&self, hash: &str, replicas: i32) {
        let what = format!(
            "ReplicaSet {hash} at {replicas} replicas (controller log: {})",
            self.ctl.log.display()
        );
        eventually(TIMEOUT, &what, || async {
            (self.replica_sets().await.get(hash)?.replicas == replicas).then_some(())
        })
        .await;
    }

    async fn selector(&self, service: &str) -> Option<String> {
        let api: Api<Service> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        api.get(service)
            .await
            .ok()?
            .spec?
            .selector?
            .get(HASH)
            .cloned()
    }
}

/// An abort with dynamicStableScale (Argo's TestCanaryDynamicStableScale): the stable, scaled
/// down to 1 of 4 at setWeight 75, comes back up while the traffic stays where it is; as its pods
/// become ready the weight steps back through the setWeight steps and the canary follows it
/// down; the canary Service returns to the stable pods once no traffic is left on the canary.
#[tokio::test]
async fn a_dynamic_stable_scale_abort_steps_traffic_back_as_the_stable_becomes_ready() {
    let canary = json!({"dynamicStableScale": true, "steps": [
        {"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]});
    let Some(h) = Harness::launch(
        "ro-dss-abort",
        canary,
        4,
        gated_template("registry.invalid/web:1"),
    )
    .await
    else {
        return;
    };
    let s = h
        .wait("the first ReplicaSet", |s| !s.current_pod_hash.is_empty())
        .await;
    let stable = s.current_pod_hash;
    h.mark_ready(&stable, 4).await;
    h.wait("the first revision to be Healthy", |s| healthy(s, 4))
        .await;

    h.set_template(gated_template("registry.invalid/web:2"))
        .await;
    let s = h
        .wait("the canary ReplicaSet", |s| {
            !s.current_pod_hash.is_empty() && s.current_pod_hash != stable
        })
        .await;
    let canary = s.current_pod_hash;
    h.mark_ready(&canary, 1).await;
    h.wait("a pause at setWeight 25", |s| {
        s.current_step_index == Some(1) && !s.pause_conditions.is_empty()
    })
    .await;
    h.intent(Intent::Promote).await;
    h.mark_ready(&canary, 2).await;
    h.wait("a pause at setWeight 75", |s| {
        s.current_step_index == Some(3) && !s.pause_conditions.is_empty() && canary_weight(s) == 75
    })
    .await;
    h.wait_replicas(&stable, 1).await;

    h.intent(Intent::Abort).await;
    // The stable comes back to the pods 75% needs; its new pods are not ready, so the traffic
    // stays on the canary.
    h.wait_replicas(&stable, 3).await;
    let s = h.wait("the abort", |s| s.abort).await;
    assert_eq!(canary_weight(&s), 75, "no traffic moves to unready pods");
    assert_eq!(h.rs(&canary).await.replicas, 3);

    h.mark_ready(&stable, 2).await;
    h.wait_replicas(&canary, 1).await;
    h.wait_replicas(&stable, 4).await;
    let s = h
        .wait("25% left on the canary", |s| canary_weight(s) == 25)
        .await;
    assert!(s.abort);
    assert_eq!(h.selector("web-canary").await, Some(canary.clone()));

    h.mark_ready(&stable, 1).await;
    h.wait_replicas(&canary, 0).await;
    h.wait("no traffic on the canary", |s| canary_weight(s) == 0)
        .await;
    let what = "the canary Service back on the stable pods";
    eventually(TIMEOUT, what, || async {
        (h.selector("web-canary").await == Some(stable.clone())).then_some(())
    })
    .await;
}
