//! The canary `experiment:` step on the real cluster, run by `sluice controller` as a process:
//! the Rollout creates the Experiment Argo would (`<rollout>-<podhash>-<revision>-<stepindex>`,
//! owned by the Rollout, its templates copied from the stable and the canary ReplicaSet), waits
//! for it to succeed and goes on; a failed analysis in the Experiment aborts the update.
//!
//! Each test gets its own namespace and its own controller limited to it.

mod common;

use std::time::Duration;

use common::eventually;
use common::rollouts::{Fixture, fixture};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisTemplate};
use sluice::api::argo::experiment::Experiment;
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};

const TIMEOUT: Duration = Duration::from_secs(180);

fn rollout(experiment: Value) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
            "strategy": {"canary": {"steps": [
                {"setWeight": 50},
                {"experiment": experiment},
                {"setWeight": 100},
            ]}},
        },
    }))
    .expect("test Rollout")
}

fn status(r: &Rollout) -> RolloutStatus {
    r.status.clone().unwrap_or_default()
}

async fn wait_rollout(f: &Fixture, what: &str, check: impl Fn(&RolloutStatus) -> bool) -> Rollout {
    let what = format!(
        "Rollout {}/web: {what} (controller log: {})",
        f.ns.name,
        f.ctl.log.display()
    );
    eventually(TIMEOUT, &what, || async {
        let r = f.rollouts.get("web").await.ok()?;
        check(&status(&r)).then_some(r)
    })
    .await
}

/// Creates the Rollout, waits for revision 1 to be Healthy, then starts revision 2.
async fn start_update(f: &Fixture, experiment: Value) {
    f.rollouts
        .create(&PostParams::default(), &rollout(experiment))
        .await
        .expect("creating the Rollout");
    wait_rollout(f, "revision 1 Healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy)
            && !s.stable_rs.is_empty()
            && s.stable_rs == s.current_pod_hash
    })
    .await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.invalid/web:2"}]}}}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the image");
}

/// The Experiment of step 1 of revision 2, named as Argo names it, once it exists.
async fn step_experiment(f: &Fixture) -> Experiment {
    let r = wait_rollout(f, "a canary hash for revision 2", |s| {
        !s.current_pod_hash.is_empty() && s.current_pod_hash != s.stable_rs
    })
    .await;
    let name = format!("web-{}-2-1", status(&r).current_pod_hash);
    let experiments: Api<Experiment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    eventually(
        TIMEOUT,
        &format!(
            "Experiment {name} (controller log: {})",
            f.ctl.log.display()
        ),
        || async { experiments.get_opt(&name).await.ok().flatten() },
    )
    .await
}

async fn experiment_phase(f: &Fixture, name: &str, want: AnalysisPhase) -> Experiment {
    let experiments: Api<Experiment> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    eventually(
        TIMEOUT,
        &format!("Experiment {name} to be {want}"),
        || async {
            let e = experiments.get(name).await.ok()?;
            (e.status.as_ref().and_then(|s| s.phase) == Some(want)).then_some(e)
        },
    )
    .await
}

#[tokio::test]
async fn an_experiment_step_runs_both_templates_and_the_rollout_completes() {
    let Some(f) = fixture("exp-step").await else {
        return;
    };
    start_update(
        &f,
        json!({"duration": "10s", "templates": [
            {"name": "canary", "specRef": "canary"},
            {"name": "baseline", "specRef": "stable", "metadata": {"labels": {"track": "baseline"}}},
        ]}),
    )
    .await;
    let experiment = step_experiment(&f).await;
    let name = experiment.name_any();
    let rollout = f.rollouts.get("web").await.expect("reading the Rollout");
    let owner = experiment
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .expect("the Experiment has a controller");
    assert_eq!(owner.kind, "Rollout");
    assert_eq!(Some(&owner.uid), rollout.uid().as_ref());
    let s = status(&rollout);
    assert_eq!(
        experiment.labels().get("rollouts-pod-template-hash"),
        Some(&s.current_pod_hash)
    );
    // specRef: stable / canary copy those ReplicaSets' pod templates.
    let images: Vec<_> = experiment
        .spec
        .templates
        .iter()
        .map(|t| {
            let spec = t.template.spec.as_ref().expect("a pod spec");
            (
                t.name.clone(),
                spec.containers[0].image.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        images,
        [
            ("canary".to_string(), "registry.invalid/web:2".to_string()),
            ("baseline".to_string(), "registry.invalid/web:1".to_string()),
        ]
    );
    let baseline = &experiment.spec.templates[1];
    assert_eq!(
        baseline
            .selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get("track")),
        Some(&"baseline".to_string())
    );
    assert_eq!(experiment.spec.duration.as_deref(), Some("10s"));

    // Both templates ran as ReplicaSets of the Experiment while the Rollout waited at the step.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    for template in ["canary", "baseline"] {
        let rs_name = format!("{name}-{template}");
        eventually(
            TIMEOUT,
            &format!("ReplicaSet {rs_name} with an available pod"),
            || async {
                let rs = replica_sets.get_opt(&rs_name).await.ok().flatten()?;
                (rs.status.as_ref()?.available_replicas? >= 1).then_some(())
            },
        )
        .await;
    }
    let waiting = f.rollouts.get("web").await.expect("reading the Rollout");
    let s = status(&waiting);
    assert!(
        s.current_step_index == Some(1) && s.canary.current_experiment == name
            || s.stable_rs == s.current_pod_hash,
        "at the experiment step with currentExperiment {name}, or already past it: {s:?}"
    );

    let done = wait_rollout(&f, "revision 2 Healthy", |s| {
        s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
    })
    .await;
    assert_eq!(status(&done).current_step_index, Some(3));
    assert!(status(&done).canary.current_experiment.is_empty());
    experiment_phase(&f, &name, AnalysisPhase::Successful).await;
}

#[tokio::test]
async fn a_failed_analysis_in_the_experiment_aborts_the_rollout() {
    let Some(f) = fixture("exp-step-fail").await else {
        return;
    };
    let template: AnalysisTemplate = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "always-fails"},
        "spec": {"metrics": [{
            "name": "constant",
            "count": 1,
            "successCondition": "result[0] == 1",
            "provider": {"prometheus": {"address": f.env.prometheus_url, "query": "vector(0)"}},
        }]},
    }))
    .expect("test AnalysisTemplate");
    Api::<AnalysisTemplate>::namespaced(f.env.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &template)
        .await
        .expect("creating the AnalysisTemplate");
    start_update(
        &f,
        json!({
            "templates": [{"name": "canary", "specRef": "canary"}],
            "analyses": [{"name": "check", "templateName": "always-fails", "requiredForCompletion": true}],
        }),
    )
    .await;
    let experiment = step_experiment(&f).await;
    let name = experiment.name_any();
    experiment_phase(&f, &name, AnalysisPhase::Failed).await;
    let aborted = wait_rollout(&f, "aborted and Degraded", |s| {
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await;
    let s = status(&aborted);
    assert_ne!(
        s.stable_rs, s.current_pod_hash,
        "the update was not promoted"
    );
    assert!(
        s.message.contains("Experiment"),
        "the message names the experiment: {:?}",
        s.message
    );
}
