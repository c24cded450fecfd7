//! Teams switch between Argo Rollouts and Sluice both ways: Argo's controller must run unchanged
//! on Sluice's CRDs, and Sluice's controller on the CRDs it installs.
//!
//! CRD-shape tests run on a private kube-apiserver (`common::apiserver`): the shared cluster's
//! CRDs are what the other tests running at the same time use.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::analysis::{phase, status_text, wait_completed};
use common::apiserver::PrivateApiserver;
use common::controller::ControllerProcess;
use common::eventually;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun};
use sluice::api::argo::rollout::{Rollout, RolloutPhase};

const INSTANCE_LABEL: &str = "argo-rollouts.argoproj.io/controller-instance-id";

fn run(name: &str) -> AnalysisRun {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: {name}
spec:
  metrics:
  - name: up
    successCondition: 'result[0] == 1'
    provider:
      prometheus:
        query: 'vector(1)'
"#
    ))
    .expect("test AnalysisRun YAML")
}

/// Whether `manager` owns a field under `f:<top>` of the object.
fn owns(run: &AnalysisRun, manager: &str, top: &str) -> bool {
    run.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get(format!("f:{top}")).is_some())
    })
}

/// Argo's controller writes an AnalysisRun's status with a merge patch of the main resource (its
/// CRD has no subresources); on Sluice's CRDs that write must persist. Sluice's controller, on
/// the same CRD, runs a run to Successful writing `status` only.
#[tokio::test]
async fn analysis_run_status_is_written_through_the_main_resource() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let apiserver = PrivateApiserver::start(&env, "compat-ar").await;
    apiserver.install_crds(sluice::api::crds()).await;
    let penv = &apiserver.env;
    let ns = apiserver.namespace("compat").await;
    let runs: Api<AnalysisRun> = Api::namespaced(penv.client.clone(), &ns);

    // As Argo's controller writes it (no controller of ours running yet).
    common::analysis::create_run(penv, &ns, run("argo-written")).await;
    let status = json!({"status": {"phase": "Successful", "message": "written as Argo writes"}});
    let stored = runs
        .patch(
            "argo-written",
            &PatchParams::apply("argo-rollouts"),
            &Patch::Merge(&status),
        )
        .await
        .expect("a merge patch of the main resource");
    assert_eq!(
        stored.status.as_ref().and_then(|s| s.phase),
        Some(AnalysisPhase::Successful),
        "the status written through the main resource was dropped: {}",
        status_text(&stored)
    );

    // Sluice's controller on the same CRD.
    let ctl = ControllerProcess::start_with(penv, &ns, &["--flagger=false"]).await;
    let created = run("sluice-run");
    common::analysis::create_run(penv, &ns, created.clone()).await;
    let done = wait_completed(penv, &ns, "sluice-run", Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&done),
        AnalysisPhase::Successful,
        "{}",
        status_text(&done)
    );
    assert_eq!(done.spec, created.spec, "the spec is the user's, untouched");
    assert!(
        owns(&done, "sluice", "status") && !owns(&done, "sluice", "spec"),
        "Sluice's field manager owns the status and nothing of the spec: {:?}",
        done.metadata.managed_fields
    );
    drop(ctl);
    apiserver.stop().await;
}

fn labelled_rollout(name: &str, instance: Option<&str>, steps: Value) -> Value {
    let mut labels = json!({});
    if let Some(id) = instance {
        labels[INSTANCE_LABEL] = json!(id);
    }
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
            "strategy": {"canary": {"steps": steps}},
        },
    })
}

async fn wait_healthy(rollouts: &Api<Rollout>, name: &str, image: &str) -> Rollout {
    eventually(
        Duration::from_secs(90),
        &format!("Rollout {name} Healthy on {image}"),
        || async {
            let r = rollouts.get(name).await.ok()?;
            let s = r.status.as_ref()?;
            let current = r.spec.template.as_ref()?.spec.as_ref()?.containers[0]
                .image
                .as_deref();
            (s.phase == Some(RolloutPhase::Healthy)
                && s.observed_generation == r.metadata.generation?.to_string()
                && !s.stable_rs.is_empty()
                && s.stable_rs == s.current_pod_hash
                && current == Some(image))
            .then_some(r)
        },
    )
    .await
}

/// The Rollout names a controller's `rollout_info` series carry.
fn rollouts_in_metrics(metrics: &str) -> Vec<String> {
    let mut names: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("rollout_info{"))
        .filter_map(|l| {
            l.split("name=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(String::from)
        })
        .collect();
    names.sort();
    names
}

/// Argo's `--instance-id`: two controllers (ids `a` and `b`) share a namespace; each handles only
/// the Rollouts labelled with its id and neither handles an unlabelled one. The AnalysisRun a
/// step of `a`'s Rollout creates carries `a`'s label, so `a` (and only `a`) measures it.
#[tokio::test]
async fn controllers_with_instance_ids_handle_only_their_own_objects() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("compat-instance").await;
    let a = ControllerProcess::start_with(&env, &ns.name, &["--instance-id", "a"]).await;
    let b = ControllerProcess::start_with(&env, &ns.name, &["--instance-id", "b"]).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);

    // `a`'s template: Argo filters templates by instance too.
    env.create(
        &ns.name,
        json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AnalysisTemplate",
            "metadata": {"name": "up", "labels": {INSTANCE_LABEL: "a"}},
            "spec": {"metrics": [{
                "name": "up",
                "successCondition": "result[0] == 1",
                "provider": {"prometheus": {"query": "vector(1)"}},
            }]},
        }),
    )
    .await;
    let analysed =
        json!([{"setWeight": 50}, {"analysis": {"templates": [{"templateName": "up"}]}}]);
    env.create(&ns.name, labelled_rollout("ra", Some("a"), analysed))
        .await;
    env.create(
        &ns.name,
        labelled_rollout("rb", Some("b"), json!([{"setWeight": 50}])),
    )
    .await;
    env.create(
        &ns.name,
        labelled_rollout("rn", None, json!([{"setWeight": 50}])),
    )
    .await;

    wait_healthy(&rollouts, "ra", "registry.invalid/web:1").await;
    wait_healthy(&rollouts, "rb", "registry.invalid/web:1").await;
    assert_eq!(
        rollouts_in_metrics(&a.metrics().await),
        ["ra"],
        "a handles only ra"
    );
    assert_eq!(
        rollouts_in_metrics(&b.metrics().await),
        ["rb"],
        "b handles only rb"
    );
    let unlabelled = rollouts.get("rn").await.expect("rn");
    assert!(
        unlabelled.status.is_none(),
        "no controller with an id touches an unlabelled Rollout: {:?}",
        unlabelled.status
    );

    // An update of ra runs its analysis step: the run is `a`'s and `a` completes it.
    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch("ra", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("updating ra");
    wait_healthy(&rollouts, "ra", "registry.invalid/web:2").await;
    let runs: Api<AnalysisRun> = Api::namespaced(env.client.clone(), &ns.name);
    let list = runs.list(&Default::default()).await.expect("listing runs");
    assert_eq!(list.items.len(), 1, "one run, of ra's step");
    let run = &list.items[0];
    assert_eq!(
        run.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INSTANCE_LABEL)),
        Some(&"a".to_string()),
        "the run carries its Rollout's instance label"
    );
    assert_eq!(
        phase(run),
        AnalysisPhase::Successful,
        "{}",
        status_text(run)
    );
    drop((a, b));
}

/// Argo's metric names that dashboards and alerts use, with Argo's labels: after an update
/// through an analysis step, `/metrics` has `argo_rollouts_controller_info{version}`,
/// `analysis_template_info` and `analysis_template_metric_info` for the template,
/// `rollout_phase` (one-hot, `Completed` once done) and `rollout_events_total` for every Event
/// reason recorded on the Rollout.
#[tokio::test]
async fn argo_metric_names_are_exported_with_argos_labels() {
    use k8s_openapi::api::events::v1::Event;
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("compat-metrics").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    env.create(
        &ns.name,
        json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AnalysisTemplate",
            "metadata": {"name": "up"},
            "spec": {"metrics": [{
                "name": "is-up",
                "successCondition": "result[0] == 1",
                "provider": {"prometheus": {"query": "vector(1)"}},
            }]},
        }),
    )
    .await;
    let steps = json!([{"setWeight": 50}, {"analysis": {"templates": [{"templateName": "up"}]}}]);
    env.create(&ns.name, labelled_rollout("web", None, steps))
        .await;
    wait_healthy(&rollouts, "web", "registry.invalid/web:1").await;
    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("updating web");
    wait_healthy(&rollouts, "web", "registry.invalid/web:2").await;

    let n = &ns.name;
    let expected = [
        "argo_rollouts_controller_info{version=\"sluice-v".to_string(),
        format!(r#"analysis_template_info{{namespace="{n}",name="up"}} 1"#),
        format!(
            r#"analysis_template_metric_info{{namespace="{n}",name="up",type="Prometheus",metric="is-up"}} 1"#
        ),
        format!(
            r#"rollout_phase{{namespace="{n}",name="web",strategy="canary",phase="Completed"}} 1"#
        ),
        format!(
            r#"rollout_phase{{namespace="{n}",name="web",strategy="canary",phase="Progressing"}} 0"#
        ),
    ];
    eventually(
        Duration::from_secs(30),
        "Argo's metric names on /metrics",
        || async {
            let m = ctl.metrics().await;
            expected
                .iter()
                .all(|e| m.contains(e.as_str()))
                .then_some(())
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(env.client.clone(), n);
    let reasons: BTreeSet<String> = eventually(
        Duration::from_secs(30),
        "Events recorded on the Rollout",
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            let reasons: BTreeSet<String> = list
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Rollout"))
                .filter_map(|e| Some(format!("{}\",reason=\"{}", e.type_?, e.reason?)))
                .collect();
            (!reasons.is_empty()).then_some(reasons)
        },
    )
    .await;
    // Counted before each is published: every Event listed is in a scrape taken after.
    let metrics = ctl.metrics().await;
    for reason in &reasons {
        let series =
            format!(r#"rollout_events_total{{namespace="{n}",name="web",type="{reason}"}}"#);
        assert!(
            metrics.contains(&series),
            "{series} missing from:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("rollout_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `spec.replicas` and the ReplicaSets' `spec.replicas` by pod-template hash.
async fn replica_counts(
    env: &common::TestEnv,
    ns: &str,
    rollouts: &Api<Rollout>,
) -> (i32, Vec<i32>) {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let desired = rollouts
        .get("web")
        .await
        .ok()
        .and_then(|r| r.spec.replicas)
        .unwrap_or(-1);
    let sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), ns);
    let mut counts: Vec<(String, i32)> = sets
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|rs| {
            let image = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            (image, rs.spec.and_then(|s| s.replicas).unwrap_or(0))
        })
        .collect();
    counts.sort();
    (desired, counts.into_iter().map(|(_, n)| n).collect())
}

/// Watches the counts for `seconds`: every sample must equal `want` (no flapping).
async fn hold(
    env: &common::TestEnv,
    ns: &str,
    rollouts: &Api<Rollout>,
    want: (i32, Vec<i32>),
    seconds: u64,
) {
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < until {
        let seen = replica_counts(env, ns, rollouts).await;
        assert_eq!(
            seen, want,
            "(spec.replicas, [stable, canary] ReplicaSets) changed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An HPA scaling a Rollout through its scale subresource (Argo #3849, #4973): the HPA's count
/// holds through a canary step (split 2/2) and an abort (back to 4/0), with no flapping between
/// the HPA and the controller.
#[tokio::test]
async fn an_hpa_scales_a_rollout_through_a_canary_and_an_abort_without_flapping() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("compat-hpa").await;
    let n = ns.name.clone();
    let _ctl = ControllerProcess::start(&env, &n).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &n);
    env.create(
        &n,
        labelled_rollout("web", None, json!([{"setWeight": 50}, {"pause": {}}])),
    )
    .await;
    // No metrics server: min = max pins the count the HPA writes.
    env.create(
        &n,
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web"},
                "minReplicas": 4,
                "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}],
            },
        }),
    )
    .await;
    eventually(
        Duration::from_secs(90),
        "the HPA to scale web to 4",
        || async {
            let counts = replica_counts(&env, &n, &rollouts).await;
            (counts == (4, vec![4])).then_some(())
        },
    )
    .await;
    wait_healthy(&rollouts, "web", "registry.invalid/web:1").await;

    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("updating web");
    let split = (4, vec![2, 2]);
    eventually(Duration::from_secs(60), "the canary at 2 of 4", || async {
        (replica_counts(&env, &n, &rollouts).await == split).then_some(())
    })
    .await;
    hold(&env, &n, &rollouts, split, 10).await;

    rollouts
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"abort": true}})),
        )
        .await
        .expect("aborting web");
    let back = (4, vec![4, 0]);
    eventually(
        Duration::from_secs(60),
        "the abort back to 4 stable",
        || async { (replica_counts(&env, &n, &rollouts).await == back).then_some(()) },
    )
    .await;
    hold(&env, &n, &rollouts, back, 10).await;
}
