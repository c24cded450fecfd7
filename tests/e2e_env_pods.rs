//! The test cluster's pods behave as on a kubelet where tests look (tests/env/kwok.yaml, rules in
//! tests/env/README.md "Pod behaviour"): readiness gates hold Ready until their condition is True,
//! readiness probe delays and postStart sleeps delay readiness, images and commands that cannot
//! run never become Ready, and Job pods end after their `sleep` with their `exit` code. Argo
//! Rollouts' own e2e fixtures rely on each of these. Needs `tests/env/up` (run by `tests/run`).

mod common;

use std::time::{Duration, Instant};

use common::{eventually, test_env};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const GATE: &str = "argoproj.io/e2e-readiness";
const WAIT: Duration = Duration::from_secs(60);

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a Pod")
}

fn container(extra: Value) -> Value {
    let mut c = json!({"name": "app", "image": "nginx:1.19-alpine"});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// Waits until the pod is Running (it has been through kwok's first stage).
async fn running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(WAIT, &format!("pod {name} Running"), || async {
        let pod = pods.get(name).await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await
}

async fn ready_condition_is(pods: &Api<Pod>, name: &str, want: &str) {
    eventually(WAIT, &format!("pod {name} Ready={want}"), || async {
        let pod = pods.get(name).await.ok()?;
        (condition(&pod, "Ready").as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// Asserts for a few seconds that the pod stays not Ready (a stage would have fired by then).
async fn stays_unready(pods: &Api<Pod>, name: &str) -> Pod {
    let mut last = None;
    for _ in 0..12 {
        let pod = pods.get(name).await.unwrap();
        assert_ne!(
            condition(&pod, "Ready").as_deref(),
            Some("True"),
            "pod {name} must not become Ready: {:?}",
            pod.status
        );
        last = Some(pod);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last.unwrap()
}

/// Sets the gate condition the way Argo's fixtures do: a read, then UpdateStatus.
async fn set_gate(pods: &Api<Pod>, name: &str, status: &str) {
    let pod = pods.get(name).await.unwrap();
    common::pods::set_condition(pods, pod, GATE, status)
        .await
        .unwrap_or_else(|e| panic!("UpdateStatus of pod {name}: {e}"));
}

#[tokio::test]
async fn readiness_gate_holds_ready_until_its_condition_is_true() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("env-pods-gate").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns.name);
    let spec =
        json!({"readinessGates": [{"conditionType": GATE}], "containers": [container(json!({}))]});
    pods.create(&PostParams::default(), &pod("gated", spec))
        .await
        .unwrap();

    let started = running(&pods, "gated").await;
    assert_eq!(
        condition(&started, "ContainersReady").as_deref(),
        Some("True")
    );
    let waiting = stays_unready(&pods, "gated").await;
    assert_eq!(
        condition(&waiting, GATE),
        None,
        "the gate's condition belongs to the test, the node must not write it"
    );

    set_gate(&pods, "gated", "True").await;
    ready_condition_is(&pods, "gated", "True").await;
    set_gate(&pods, "gated", "False").await;
    ready_condition_is(&pods, "gated", "False").await;
}

#[tokio::test]
async fn readiness_probe_delay_and_post_start_sleep_delay_ready() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("env-pods-probe").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns.name);
    let probe =
        json!({"readinessProbe": {"initialDelaySeconds": 5, "httpGet": {"path": "/", "port": 80}}});
    let hook = json!({"lifecycle": {"postStart": {"exec": {"command": ["sleep", "5"]}}}});
    for (name, extra) in [("probe", probe), ("hook", hook)] {
        let t0 = Instant::now();
        let spec = json!({"containers": [container(extra)]});
        pods.create(&PostParams::default(), &pod(name, spec))
            .await
            .unwrap();
        let started = running(&pods, name).await;
        assert_eq!(
            condition(&started, "Ready").as_deref(),
            Some("False"),
            "{name}"
        );
        ready_condition_is(&pods, name, "True").await;
        assert!(
            t0.elapsed() >= Duration::from_secs(4),
            "pod {name} Ready after {:?}, before its 5 s delay",
            t0.elapsed()
        );
    }
}

#[tokio::test]
async fn containers_that_cannot_run_never_become_ready() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("env-pods-bad").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns.name);
    let bad_image =
        json!({"containers": [{"name": "app", "image": "nginx:1.19-alpine-argo-error"}]});
    let bad_command = json!({"containers": [container(json!({"command": ["/bad-command"]}))]});
    let bad_tag = json!({"containers": [{"name": "app", "image": "argoproj/rollouts-demo:error"}]});
    for (name, spec) in [
        ("image", bad_image),
        ("tag", bad_tag),
        ("command", bad_command),
    ] {
        pods.create(&PostParams::default(), &pod(name, spec))
            .await
            .unwrap();
    }
    // The ordinary pod beside them becomes Ready: the rules only catch the conventions.
    let fine = json!({"containers": [container(json!({}))]});
    pods.create(&PostParams::default(), &pod("fine", fine))
        .await
        .unwrap();
    ready_condition_is(&pods, "fine", "True").await;

    let waiting_reason = |pod: &Pod| {
        pod.status.as_ref()?.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .clone()
    };
    for name in ["image", "tag"] {
        let pod = eventually(WAIT, &format!("pod {name} to be pulled"), || async {
            let pod = pods.get(name).await.ok()?;
            waiting_reason(&pod).is_some().then_some(pod)
        })
        .await;
        assert_eq!(
            waiting_reason(&pod).as_deref(),
            Some("ErrImagePull"),
            "{name}"
        );
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Pending")
        );
        stays_unready(&pods, name).await;
    }
    let command = running(&pods, "command").await;
    assert_eq!(
        waiting_reason(&command).as_deref(),
        Some("CrashLoopBackOff")
    );
    stays_unready(&pods, "command").await;
}

fn job(name: &str, command: Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "job", "image": "alpine:3.8", "command": command}]}}},
    }))
    .expect("a Job")
}

/// "Complete" or "Failed" once the Job has that condition True.
async fn job_outcome(jobs: &Api<Job>, name: &str) -> String {
    eventually(WAIT, &format!("Job {name} to finish"), || async {
        let job = jobs.get(name).await.ok()?;
        job.status?
            .conditions?
            .into_iter()
            .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
            .map(|c| c.type_)
    })
    .await
}

#[tokio::test]
async fn job_pods_end_after_their_sleep_with_their_exit_code() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("env-pods-job").await;
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns.name);
    let t0 = Instant::now();
    for (name, command) in [
        ("ok", json!(["sh", "-c", "exit 0"])),
        ("fails-later", json!(["sh", "-c", "sleep 5; exit 1"])),
        ("cannot-start", json!(["exit", "1"])),
        ("long", json!(["sh", "-c", "sleep 6000"])),
    ] {
        jobs.create(&PostParams::default(), &job(name, command))
            .await
            .unwrap();
    }
    assert_eq!(job_outcome(&jobs, "ok").await, "Complete");
    assert_eq!(job_outcome(&jobs, "cannot-start").await, "Failed");
    assert_eq!(job_outcome(&jobs, "fails-later").await, "Failed");
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "`sleep 5; exit 1` failed after {:?}",
        t0.elapsed()
    );
    let long = jobs.get("long").await.unwrap();
    let status = long.status.unwrap_or_default();
    assert_eq!(
        status.active,
        Some(1),
        "`sleep 6000` still runs: {status:?}"
    );
    assert!(status.conditions.unwrap_or_default().is_empty());
}
