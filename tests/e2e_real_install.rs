//! `helm install` of the chart running the real controller image as pods on the test
//! environment's real node (`SLUICE_REAL_NODE=1 tests/env/up`; tests/env/README.md, "A real
//! node"): the image built by `deploy/image/build` from this build's binary and imported into the
//! node's containerd, two replicas Ready through their real `/readyz` probes, exactly one holding
//! the Lease, and after `kubectl delete pod` of the leader the other one takes the Lease and
//! finishes a Rollout that was in its timed pause; the
//! security context as the kernel holds it for the container's process (`/proc/<pid>/status`:
//! uid 65532, no capabilities, no new privileges; a read-only root mount).
//!
//! Without a real node in the environment the test skips (the node is opt-in); with one it must
//! pass.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::service_account::run;
use common::{TestEnv, eventually, test_env};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};

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
    let (api_host, api_port) = apiserver_for_pods(env);
    let sets = [
        "replicas=2".to_string(),
        format!("image.digest={digest}"),
        "image.pullPolicy=Never".to_string(),
        format!("controller.watchNamespace={ns}"),
        format!("nodeSelector.kubernetes\\.io/hostname={node}"),
        format!("tolerations[0].key={NODE_TAINT_KEY}"),
        "tolerations[0].operator=Exists".to_string(),
        "tolerations[0].effect=NoSchedule".to_string(),
        // No kube-proxy on the test node: the apiserver's own endpoint (tests/env/README.md).
        "controller.extraEnv[0].name=KUBERNETES_SERVICE_HOST".to_string(),
        format!("controller.extraEnv[0].value={api_host}"),
        "controller.extraEnv[1].name=KUBERNETES_SERVICE_PORT".to_string(),
        format!("controller.extraEnv[1].value={api_port}"),
    ];
    let release = format!("sluice-{}", &ns[ns.len().saturating_sub(6)..]);
    let mut cmd = Command::new(helm);
    cmd.args(["install", &release])
        .arg(root().join("deploy/helm/sluice"))
        .args(["--namespace", ns, "--skip-crds"])
        .arg("--kubeconfig")
        .arg(&env.kubeconfig);
    for set in &sets {
        cmd.args(["--set-string", set]);
    }
    run(&mut cmd, "helm install");
    Release {
        helm: helm.clone(),
        name: release,
        namespace: ns.to_string(),
        kubeconfig: env.kubeconfig.clone(),
    }
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
    let pod = pods.get(pod).await.unwrap();
    let id = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.container_id)
        .expect("a container ID");
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

#[tokio::test]
async fn chart_on_a_real_node_two_ready_pods_one_leader_failover() {
    let Some(env) = test_env().await else {
        return;
    };
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
        return;
    };
    let Some(helm) = common::chart::helm_or_skip(&env) else {
        return;
    };
    let digest = build_and_import(&socket);
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
