//! `controller_clientset_k8s_request_total` counts the controller's own API requests on the real
//! cluster: a Rollout made Healthy shows its ReplicaSet's create (201), the watches the
//! controllers hold, the status writes, and no per-object labels. An undo finds the ReplicaSet to
//! reuse without reading any ReplicaSet back from the apiserver.

mod common;

use std::time::Duration;

use common::controller::ControllerProcess;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice::api::argo::rollout::{Rollout, RolloutPhase};

const METRIC: &str = "controller_clientset_k8s_request_total";

/// The value of the sample with exactly these labels, if there is one.
fn sample(metrics: &str, kind: &str, verb: &str, status_code: &str) -> Option<f64> {
    let want = format!(r#"{METRIC}{{kind="{kind}",verb="{verb}",status_code="{status_code}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn api_requests_are_counted_by_kind_verb_and_status() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("client-metrics").await;
    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
        },
    }))
    .expect("Rollout JSON");
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("creating the Rollout");
    common::eventually(Duration::from_secs(60), "Rollout web Healthy", || async {
        let r = rollouts.get("web").await.ok()?;
        let s = r.status?;
        (s.phase == Some(RolloutPhase::Healthy) && !s.stable_rs.is_empty()).then_some(())
    })
    .await;

    // The status write that made it Healthy may be counted just after the watch delivered it.
    let metrics = common::eventually(
        Duration::from_secs(10),
        "the Rollout's status write counted",
        || async {
            let m = ctl.metrics().await;
            sample(&m, "rollouts/status", "patch", "200").map(|_| m)
        },
    )
    .await;
    let ours: Vec<&str> = metrics.lines().filter(|l| l.starts_with(METRIC)).collect();
    let shown = ours.join("\n");
    assert!(
        metrics.contains(&format!(
            "# TYPE {} counter",
            METRIC.trim_end_matches("_total")
        )),
        "{shown}"
    );
    // One Rollout, one ReplicaSet created: exactly one successful create.
    assert_eq!(
        sample(&metrics, "replicasets", "create", "201"),
        Some(1.0),
        "{shown}"
    );
    // The controllers observe through watches, answered 200, on each kind they cache.
    for kind in ["rollouts", "replicasets", "analysisruns", "canaries"] {
        assert!(
            sample(&metrics, kind, "watch", "200").is_some_and(|n| n >= 1.0),
            "no watch on {kind} counted:\n{shown}"
        );
    }
    // Bounded cardinality: no per-object labels.
    assert!(
        ours.iter()
            .all(|l| !l.contains("namespace=") && !l.contains("name=")),
        "{shown}"
    );
    // Counting is live: a later request shows up. The controller creates the canary ReplicaSet
    // on a template change (after a dry-run create that looks for an existing ReplicaSet with the
    // same defaulted template, also a counted create).
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("changing the template");
    common::eventually(
        Duration::from_secs(60),
        "a second replicasets create counted",
        || async {
            let m = ctl.metrics().await;
            sample(&m, "replicasets", "create", "201")
                .is_some_and(|n| n >= 2.0)
                .then_some(())
        },
    )
    .await;

    // Promoted to web:2; then an undo (as `kubectl argo rollouts undo` writes it: the old
    // ReplicaSet's stored, defaulted template) reuses web:1's ReplicaSet, found by the
    // fingerprint the cache keeps of it: no ReplicaSet is read back from the apiserver.
    let first = rollouts.get("web").await.unwrap().status.unwrap().stable_rs;
    // A new revision clears promoteFull (as in Argo): promote once the controller has planned
    // web:2, and again until it takes (a promotion sent before that status write is lost).
    common::eventually(Duration::from_secs(120), "Healthy on web:2", || async {
        let s = rollouts.get("web").await.ok()?.status?;
        if s.phase == Some(RolloutPhase::Healthy) && s.stable_rs != first {
            return Some(());
        }
        if s.current_pod_hash != first && s.phase == Some(RolloutPhase::Paused) {
            let promote = json!({"status": {"promoteFull": true}});
            let _ = rollouts
                .patch_status(
                    "web",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&promote),
                )
                .await;
        }
        None
    })
    .await;
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(env.client.clone(), &ns.name);
    let old = sets
        .list(&kube::api::ListParams::default())
        .await
        .expect("listing ReplicaSets")
        .items
        .into_iter()
        .find(|rs| rs.labels().get("rollouts-pod-template-hash") == Some(&first))
        .expect("web:1's ReplicaSet");
    let mut template = serde_json::to_value(old.spec.unwrap().template.unwrap()).unwrap();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("rollouts-pod-template-hash");
    rollouts
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"spec": {"template": template}})),
        )
        .await
        .expect("undoing");
    common::eventually(
        Duration::from_secs(60),
        "web:1's ReplicaSet reused",
        || async {
            let s = rollouts.get("web").await.ok()?.status?;
            (s.current_pod_hash == first).then_some(())
        },
    )
    .await;
    let metrics = ctl.metrics().await;
    assert_eq!(
        sample(&metrics, "replicasets", "get", "200"),
        None,
        "the controller read ReplicaSets back:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with(METRIC))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sets.list(&kube::api::ListParams::default())
            .await
            .expect("listing ReplicaSets")
            .items
            .len(),
        2,
        "an undo makes no new ReplicaSet"
    );
}
