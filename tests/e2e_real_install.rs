//! `helm install` of the chart running the real controller image as pods on the test
//! environment's real node (`SLUICE_REAL_NODE=1 tests/env/up`; tests/env/README.md, "A real
//! node"): the image built by `deploy/image/build` from this build's binary and imported into the
//! node's containerd, two replicas Ready through their real `/readyz` probes, exactly one holding
//! the Lease, and after `kubectl delete pod` of the leader the other one takes the Lease and
//! finishes a Rollout that was in its timed pause; the
//! security context as the kernel holds it for the container's process (`/proc/<pid>/status`:
//! uid 65532, no capabilities, no new privileges; a read-only root mount).
//!
//! A second test has the in-cluster controller run a Rollout with an analysis step and a Canary
//! on Prometheus reached through its Service (kube-proxy on the node), scrapes `/metrics` through
//! the metrics Service from a BusyBox pod, upgrades the release mid-update and uninstalls it.
//!
//! Without a real node in the environment the tests skip (the node is opt-in) — except in CI,
//! which runs with one and fails without it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::service_account::run;
use common::{TestEnv, eventually, test_env};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun};
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};
use sluice::api::flagger::canary::{Canary, CanaryPhase};

const NODE_TAINT_KEY: &str = "sluice.dev/real-node";
/// Image start, probes and Lease handover on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(180);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real node's name and its containerd socket, or `None` after printing "skipped".
fn real_node() -> Option<(String, String)> {
    let node = std::env::var("SLUICE_REAL_NODE").ok()?;
    let socket = std::env::var("SLUICE_REAL_NODE_SOCKET").ok()?;
    Some((node, socket))
}

/// The image of this build, imported into the node's containerd once for every test here;
/// its digest (`sha256:...`).
fn image(socket: &str) -> String {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| build_and_import(socket)).clone()
}

/// Builds the image from this build's binary and imports it into the node's containerd;
/// returns the digest (`sha256:...`).
fn build_and_import(socket: &str) -> String {
    let out = root().join("target/image/e2e-real-install.tar");
    run(
        Command::new(root().join("deploy/image/build"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_sluice"))
            .arg("--out")
            .arg(&out),
        "deploy/image/build",
    );
    // containerd 1.6's CRI plugin indexes an image (and its repo digest, which the chart's
    // `repo:tag@digest` resolves to) when it is created, not when an import moves an existing tag.
    let _ = Command::new("ctr")
        .args(["-a", socket, "-n", "k8s.io", "images", "rm"])
        .arg(format!(
            "ghcr.io/sluice-rs/sluice:{}",
            env!("CARGO_PKG_VERSION")
        ))
        .output();
    run(
        Command::new("ctr")
            .args(["-a", socket, "-n", "k8s.io", "images", "import"])
            .arg(&out),
        "ctr images import",
    );
    let digest = std::fs::read_to_string(out.with_extension("tar.digest")).unwrap();
    let digest = digest.trim().to_string();
    // A pull records the image under its digest too; an import only under its tag. The CRI
    // resolves `repo:tag@digest` by `repo@digest`, so name it so.
    run(
        Command::new("ctr")
            .args(["-a", socket, "-n", "k8s.io", "images", "tag", "--force"])
            .arg(format!(
                "ghcr.io/sluice-rs/sluice:{}",
                env!("CARGO_PKG_VERSION")
            ))
            .arg(format!("ghcr.io/sluice-rs/sluice@{digest}")),
        "ctr images tag",
    );
    let _ = std::fs::remove_file(&out);
    digest
}

/// `helm uninstall` when dropped: the chart's ClusterRoles are cluster-scoped.
struct Release {
    helm: PathBuf,
    name: String,
    namespace: String,
    kubeconfig: PathBuf,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new(&self.helm)
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .output();
    }
}

fn helm_install(env: &TestEnv, helm: &PathBuf, ns: &str, node: &str, digest: &str) -> Release {
    let release = format!("sluice-{}", &ns[ns.len().saturating_sub(6)..]);
    let mut cmd = Command::new(helm);
    cmd.args(["install", &release])
        .arg(root().join("deploy/helm/sluice"))
        .args(["--namespace", ns, "--skip-crds"])
        .arg("--kubeconfig")
        .arg(&env.kubeconfig);
    for set in chart_values(env, ns, node, digest) {
        cmd.args(["--set-string", &set]);
    }
    run(&mut cmd, "helm install");
    Release {
        helm: helm.clone(),
        name: release,
        namespace: ns.to_string(),
        kubeconfig: env.kubeconfig.clone(),
    }
}

/// `helm upgrade` of `release` with the install's values and `extra` ones.
fn helm_upgrade(env: &TestEnv, release: &Release, node: &str, digest: &str, extra: &[&str]) {
    let mut cmd = Command::new(&release.helm);
    cmd.args(["upgrade", &release.name])
        .arg(root().join("deploy/helm/sluice"))
        .args(["--namespace", &release.namespace, "--skip-crds"])
        .arg("--kubeconfig")
        .arg(&env.kubeconfig);
    let values = chart_values(env, &release.namespace, node, digest);
    for set in values
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        cmd.args(["--set-string", set]);
    }
    run(&mut cmd, "helm upgrade");
}

/// The chart's values for two replicas on the real node, running the imported image.
fn chart_values(env: &TestEnv, ns: &str, node: &str, digest: &str) -> Vec<String> {
    let (api_host, api_port) = apiserver_for_pods(env);
    vec![
        "replicas=2".to_string(),
        format!("image.digest={digest}"),
        "image.pullPolicy=Never".to_string(),
        format!("controller.watchNamespace={ns}"),
        format!("nodeSelector.kubernetes\\.io/hostname={node}"),
        format!("tolerations[0].key={NODE_TAINT_KEY}"),
        "tolerations[0].operator=Exists".to_string(),
        "tolerations[0].effect=NoSchedule".to_string(),
        // The apiserver's certificate names its endpoint, not the Service's ClusterIP
        // (tests/env/README.md).
        "controller.extraEnv[0].name=KUBERNETES_SERVICE_HOST".to_string(),
        format!("controller.extraEnv[0].value={api_host}"),
        "controller.extraEnv[1].name=KUBERNETES_SERVICE_PORT".to_string(),
        format!("controller.extraEnv[1].value={api_port}"),
    ]
}

/// The `kubernetes` Service's endpoint address and port.
fn apiserver_for_pods(env: &TestEnv) -> (String, String) {
    let out = run(
        env.kubectl().args([
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "jsonpath={.items[0].endpoints[0].addresses[0]} {.items[0].ports[0].port}",
        ]),
        "the kubernetes Service's endpoint",
    );
    let (host, port) = out.trim().split_once(' ').expect("address and port");
    (host.to_string(), port.to_string())
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The names of the controller's Ready pods once there are `n`, all on `node`.
async fn ready_pods(pods: &Api<Pod>, node: &str, n: usize) -> Vec<String> {
    eventually(
        TIMEOUT,
        &format!("{n} Ready controller pods on {node}"),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=sluice"))
                .await
                .ok()?;
            let ready: Vec<String> = list
                .items
                .iter()
                .filter(|p| ready(p))
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
            (ready.len() == n).then_some(ready)
        },
    )
    .await
}

/// The host PID of the controller container of `pod` (from containerd, by the container ID the
/// kubelet reports).
async fn container_pid(pods: &Api<Pod>, pod: &str, socket: &str) -> u32 {
    let id = eventually(TIMEOUT, &format!("the container ID of {pod}"), || async {
        pods.get(pod)
            .await
            .ok()?
            .status?
            .container_statuses?
            .into_iter()
            .next()?
            .container_id
    })
    .await;
    let id = id.trim_start_matches("containerd://");
    let tasks = run(
        Command::new("ctr").args(["-a", socket, "-n", "k8s.io", "tasks", "ls"]),
        "ctr tasks ls",
    );
    tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"))
}

/// A canary Rollout (its pods on the kwok nodes): 50 %, then a 20 s pause.
fn rollout(image: &str) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "20s"}}]}},
        },
    }))
    .unwrap()
}

/// Waits until `check` accepts the Rollout's status.
async fn wait_rollout(rollouts: &Api<Rollout>, what: &str, check: impl Fn(&RolloutStatus) -> bool) {
    eventually(TIMEOUT, what, || async {
        let r = rollouts.get("web").await.ok()?;
        r.status.as_ref().is_some_and(&check).then_some(())
    })
    .await;
}

fn finished(s: &RolloutStatus) -> bool {
    s.phase == Some(RolloutPhase::Healthy)
        && !s.current_pod_hash.is_empty()
        && s.stable_rs == s.current_pod_hash
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("sluice-controller")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// The test environment, helm, the real node and its containerd socket; `None` (after saying
/// why) where the environment has no real node and this is not CI.
async fn real_node_env() -> Option<(TestEnv, PathBuf, String, String, Serial)> {
    // One at a time: each test runs two controller pods and their probes on the one node.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let serial = ONE_AT_A_TIME.lock().await;
    let env = test_env().await?;
    let Some((node, socket)) = real_node() else {
        // CI brings the real node up (.ci/run sets SLUICE_REAL_NODE=1): there, its absence is a
        // failure, never a skip counted as a pass.
        assert!(
            !common::is_ci(),
            "CI runs with a real node, but the test environment has none: start it with \
             SLUICE_REAL_NODE=1 tests/env/up (see tests/env/README.md, \"A real node\")"
        );
        eprintln!(
            "skipped: no real node in the test environment (SLUICE_REAL_NODE=1 tests/env/up)"
        );
        return None;
    };
    let helm = common::chart::helm_or_skip(&env)?;
    Some((env, helm, node, socket, serial))
}

/// Held for the whole of a test on the real node (see [`real_node_env`]).
type Serial = tokio::sync::MutexGuard<'static, ()>;

#[tokio::test]
async fn chart_on_a_real_node_two_ready_pods_one_leader_failover() {
    let Some((env, helm, node, socket, _serial)) = real_node_env().await else {
        return;
    };
    let digest = image(&socket);
    let ns = env.namespace("real-install").await;
    let _release = helm_install(&env, &helm, &ns.name, &node, &digest);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns.name);
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns.name);

    // Both replicas Ready through the kubelet's real /readyz probes; exactly one leads.
    let names = ready_pods(&pods, &node, 2).await;
    let leader = eventually(TIMEOUT, "a Lease holder among the pods", || async {
        lease_holder(&leases).await.filter(|h| names.contains(h))
    })
    .await;
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();

    // Security context as the kernel holds it for the container's process (the image has no
    // shell to `cat /proc/self/status` with; the test runs on the node, so it reads the same file
    // through the host's /proc): uid 65532, no capabilities, no privilege escalation, and a
    // read-only root filesystem.
    let pid = container_pid(&pods, &standby, &socket).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid"), ["65532"; 4], "{status}");
    assert_eq!(field("Gid"), ["65532"; 4], "{status}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}: {status}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"], "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in /proc/{pid}/mountinfo:\n{mounts}"));
    assert!(
        root_mount
            .split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "the root filesystem is writable: {root_mount}"
    );

    // A Rollout the in-cluster leader takes to its timed pause on a new revision.
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    rollouts
        .create(&PostParams::default(), &rollout("registry.invalid/web:1"))
        .await
        .unwrap();
    wait_rollout(&rollouts, "the first revision Healthy", finished).await;
    let stable = rollouts.get("web").await.unwrap().status.unwrap().stable_rs;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_rollout(&rollouts, "the new revision in its pause (step 1)", |s| {
        s.current_step_index == Some(1) && s.current_pod_hash != stable
    })
    .await;

    // The leader's pod deleted: the standby takes the Lease and finishes the Rollout.
    pods.delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    // The standby, or the Deployment's replacement pod if it wins the race: never the deleted one.
    let new_leader = eventually(TIMEOUT, "another pod holding the Lease", || async {
        lease_holder(&leases).await.filter(|h| *h != leader)
    })
    .await;
    eprintln!("leader {leader} deleted; the Lease went to {new_leader} (standby was {standby})");
    wait_rollout(
        &rollouts,
        "the new revision promoted by the new leader",
        |s| finished(s) && s.stable_rs != stable,
    )
    .await;
    // The Deployment replaces the deleted pod; two Ready again.
    ready_pods(&pods, &node, 2).await;
}

/// A Service `prometheus` whose EndpointSlice names the env's Prometheus on the bridge address
/// (`tests/env/real-node` forwards it there); its ClusterIP, reached through kube-proxy.
async fn prometheus_service(env: &TestEnv, ns: &str) -> String {
    let host = std::env::var("SLUICE_REAL_NODE_HOST").unwrap_or_else(|_| "10.88.0.1".into());
    let port: i32 = env
        .prometheus_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("the env's Prometheus URL has a port");
    env.create(
        ns,
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "prometheus"},
            "spec": {"ports": [{"name": "http", "port": 9090, "targetPort": port}]},
        }),
    )
    .await;
    env.create(
        ns,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "prometheus-host",
                         "labels": {"kubernetes.io/service-name": "prometheus"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
        }),
    )
    .await;
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    let ip = services
        .get("prometheus")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip;
    ip.expect("a ClusterIP")
}

/// What the in-cluster controller drives: a canary Rollout with an analysis step on Prometheus
/// (through its Service) and a timed pause, and a Flagger Canary with a MetricTemplate on it.
async fn workloads(env: &TestEnv, ns: &str, prometheus: &str) {
    let address = format!("http://{prometheus}:9090");
    for name in ["web-stable", "web-canary"] {
        env.create(
            ns,
            json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }),
        )
        .await;
    }
    env.create(
        ns,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "passes"},
            "spec": {"metrics": [{
                "name": "probe", "count": 2, "interval": "1s",
                "successCondition": "result[0] >= 1",
                "provider": {"prometheus": {"address": address, "query": "vector(1)"}},
            }]},
        }),
    )
    .await;
    let mut web = serde_json::to_value(rollout("registry.invalid/web:1")).unwrap();
    web["spec"]["strategy"] = json!({"canary": {
        "canaryService": "web-canary", "stableService": "web-stable",
        "steps": [
            {"setWeight": 50},
            {"analysis": {"templates": [{"templateName": "passes"}]}},
            {"pause": {}},
        ],
    }});
    env.create(ns, web).await;
    env.create(
        ns,
        json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "success-rate"},
            "spec": {"provider": {"type": "prometheus", "address": address},
                     "query": "vector(99.5)"},
        }),
    )
    .await;
    env.create(
        ns,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "podinfo", "labels": {"app": "podinfo"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "podinfo"}},
                "template": {"metadata": {"labels": {"app": "podinfo"}},
                             "spec": {"containers": [{"name": "podinfo", "image": "podinfo:6.0.0",
                                                      "ports": [{"containerPort": 9898}]}]}},
            },
        }),
    )
    .await;
    env.create(
        ns,
        common::canary::kubernetes(
            "podinfo",
            Some(120),
            json!({
                "interval": "2s", "threshold": 2, "iterations": 2,
                "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
                             "thresholdRange": {"min": 99}}],
            }),
        ),
    )
    .await;
}

async fn wait_canary(canaries: &Api<Canary>, what: &str, phase: CanaryPhase) {
    eventually(TIMEOUT, what, || async {
        let c = canaries.get("podinfo").await.ok()?;
        (c.status?.phase? == phase).then_some(())
    })
    .await;
}

/// Runs BusyBox's `wget -qO- url` in a pod on the real node and returns what it printed (read from
/// the node's pod log files: the apiserver cannot reach this kubelet for `kubectl logs`).
async fn fetch_from_a_pod(env: &TestEnv, ns: &str, node: &str, url: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "scrape"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "wget", "image": "localhost/sluice/busybox:1.35",
                            "imagePullPolicy": "Never", "args": ["wget", "-qO-", url]}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let phase = eventually(TIMEOUT, "the scrape pod finished", || async {
        let phase = pods.get("scrape").await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let uid = pods.get("scrape").await.unwrap().metadata.uid.unwrap();
    let log = format!("/var/log/pods/{ns}_scrape_{uid}/wget/0.log");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert_eq!(phase, "Succeeded", "wget {url} failed:\n{text}");
    text
}

fn controller_pod_names(list: &[Pod]) -> Vec<String> {
    list.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn chart_on_a_real_node_analysis_through_services_metrics_upgrade_uninstall() {
    let Some((env, helm, node, socket, _serial)) = real_node_env().await else {
        return;
    };
    let digest = image(&socket);
    let ns = env.namespace("real-svc").await;
    let release = helm_install(&env, &helm, &ns.name, &node, &digest);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns.name);
    let installed = ready_pods(&pods, &node, 2).await;

    // A Rollout with an analysis step and a Canary, their metrics read from Prometheus through
    // its Service (ClusterIP → kube-proxy) by the controller inside its pod.
    let prometheus = prometheus_service(&env, &ns.name).await;
    workloads(&env, &ns.name, &prometheus).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    wait_rollout(&rollouts, "the first revision Healthy", finished).await;
    wait_canary(
        &canaries,
        "the Canary Initialized",
        CanaryPhase::Initialized,
    )
    .await;
    let stable = rollouts.get("web").await.unwrap().status.unwrap().stable_rs;
    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .unwrap();
    let podinfo = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}});
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(podinfo),
        )
        .await
        .unwrap();
    wait_rollout(&rollouts, "the analysis passed, paused at step 2", |s| {
        s.current_step_index == Some(2)
            && s.current_pod_hash != stable
            && !s.pause_conditions.is_empty()
    })
    .await;
    let runs = Api::<AnalysisRun>::namespaced(env.client.clone(), &ns.name);
    let only_run = || async {
        let list = runs.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(
            list.len(),
            1,
            "one AnalysisRun for the analysis step: {list:#?}"
        );
        list[0].status.as_ref().and_then(|s| s.phase)
    };
    assert_eq!(only_run().await, Some(AnalysisPhase::Successful));
    wait_canary(
        &canaries,
        "the Canary's new revision promoted",
        CanaryPhase::Succeeded,
    )
    .await;

    // /metrics through the metrics Service, from another pod on the node. (The bridge CNI
    // plugin enforces no NetworkPolicy: the chart's policy is rendered but not exercised here.)
    let services: Api<Service> = Api::namespaced(env.client.clone(), &ns.name);
    let metrics = services
        .get(&format!("{}-metrics", release.name))
        .await
        .expect("the chart's metrics Service");
    let ip = metrics
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let scraped =
        fetch_from_a_pod(&env, &ns.name, &node, &format!("http://{ip}:8090/metrics")).await;
    assert!(
        scraped.contains("rollout_info") || scraped.contains("sluice_"),
        "no Sluice metric in what the metrics Service served:\n{scraped}"
    );

    // helm upgrade to a changed value while the Rollout is paused mid-update: the controller's
    // pods are replaced, and the new ones carry the Rollout on from its step (no second run).
    helm_upgrade(
        &env,
        &release,
        &node,
        &digest,
        &["controller.logLevel=debug"],
    );
    eventually(
        TIMEOUT,
        "both controller pods replaced by the upgrade",
        || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=sluice"))
                .await
                .ok()?;
            let names = controller_pod_names(&list.items);
            let ready = list.items.iter().filter(|p| ready(p)).count();
            (names.len() == 2 && ready == 2 && names.iter().all(|n| !installed.contains(n)))
                .then_some(())
        },
    )
    .await;
    let after = rollouts.get("web").await.unwrap().status.unwrap();
    assert_eq!(
        after.current_step_index,
        Some(2),
        "progress lost in the upgrade: {after:#?}"
    );
    run(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["promote", "web", "-n", &ns.name, "--kubeconfig"])
            .arg(&env.kubeconfig),
        "sluice promote",
    );
    wait_rollout(
        &rollouts,
        "the update finished by the upgraded controller",
        |s| finished(s) && s.stable_rs != stable,
    )
    .await;
    assert_eq!(only_run().await, Some(AnalysisPhase::Successful));

    // helm uninstall: the controller goes; what it managed stays, untouched.
    let before = rollouts.get("web").await.unwrap();
    run(
        Command::new(&release.helm)
            .args([
                "uninstall",
                &release.name,
                "--namespace",
                &ns.name,
                "--wait",
            ])
            .arg("--kubeconfig")
            .arg(&env.kubeconfig),
        "helm uninstall",
    );
    eventually(TIMEOUT, "the controller's pods gone", || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=sluice"))
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    let kept = rollouts.get("web").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert_eq!(kept.spec, before.spec);
    assert_eq!(
        kept.status.as_ref().map(|s| &s.stable_rs),
        before.status.as_ref().map(|s| &s.stable_rs)
    );
    let canary = canaries.get("podinfo").await.unwrap();
    assert!(canary.metadata.deletion_timestamp.is_none());
    assert_eq!(
        canary.status.and_then(|s| s.phase),
        Some(CanaryPhase::Succeeded)
    );
    // Traffic keeps flowing where it was: the apex Service on the primary, the stable Service on
    // the promoted ReplicaSet.
    let apex = services
        .get("podinfo")
        .await
        .expect("the Canary's apex Service");
    assert_eq!(
        apex.spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("app").cloned()),
        Some("podinfo-primary".to_string())
    );
    let stable_svc = services.get("web-stable").await.unwrap();
    assert_eq!(
        stable_svc
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("rollouts-pod-template-hash").cloned()),
        kept.status.map(|s| s.stable_rs)
    );
}
