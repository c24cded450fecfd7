//! A leader whose apiserver connection freezes (no error, no reset: nothing comes back) must stop
//! acting before the Lease can expire for a standby, and the standby then finishes the rollout.
//!
//! Controller A reaches the apiserver through a [`FreezableProxy`], controller B directly; both
//! elect on the same Lease. A leads a Rollout into a timed pause, the proxy freezes, and:
//! A exits (having logged that it stopped acting) before `renewTime + leaseDuration` of its last
//! renewal the apiserver saw; B takes the Lease after A is gone and promotes the Rollout; and
//! after the proxy thaws nothing more of A's reaches the apiserver.

mod common;

use std::time::Duration;

use common::controller::ControllerProcess;
use common::proxy::{FreezableProxy, apiserver_addr};
use common::{eventually, test_env};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};
use sluice::controller::leader::LEASE_DURATION;

const TIMEOUT: Duration = Duration::from_secs(90);
/// The controllers' default Lease, in the namespace they manage.
const LEASE: &str = "sluice-controller";

fn rollout() -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
            "strategy": {"canary": {"steps": [
                {"setWeight": 25}, {"pause": {"duration": "10s"}},
                {"setWeight": 75}, {"pause": {"duration": "1s"}},
            ]}},
        },
    }))
    .expect("test Rollout")
}

fn status(r: &Rollout) -> RolloutStatus {
    r.status.clone().unwrap_or_default()
}

fn healthy(r: &Rollout) -> bool {
    let s = status(r);
    s.phase == Some(RolloutPhase::Healthy)
        && !s.current_pod_hash.is_empty()
        && s.stable_rs == s.current_pod_hash
        && s.observed_generation == r.metadata.generation.unwrap_or(0).to_string()
}

fn tail(ctl: &ControllerProcess) -> String {
    let text = ctl.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `sluice_leader` from a controller's /metrics (served locally, never through the proxy).
async fn leader_gauge(ctl: &ControllerProcess) -> Option<i64> {
    let text = reqwest::get(format!("{}/metrics", ctl.http_url))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sluice_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// The Lease's holder, renew and acquire times, once its holder is the process `pid` (the
/// identity is `<host>-<pid>` without POD_NAME).
async fn lease_held_by(leases: &Api<Lease>, pid: u32) -> (Timestamp, Timestamp) {
    let suffix = format!("-{pid}");
    eventually(TIMEOUT, &format!("the Lease held by pid {pid}"), || {
        let (leases, suffix) = (leases.clone(), suffix.clone());
        async move {
            let spec = leases.get_opt(LEASE).await.ok()??.spec?;
            spec.holder_identity
                .as_ref()?
                .ends_with(&suffix)
                .then_some(())?;
            Some((spec.renew_time?.0, spec.acquire_time?.0))
        }
    })
    .await
}

async fn wait_rollout(
    rollouts: &Api<Rollout>,
    what: &str,
    ctl: &ControllerProcess,
    check: impl Fn(&Rollout) -> bool,
) -> Rollout {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = rollouts.get("web").await.expect("reading the Rollout");
        if check(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\nstatus: {:?}\nlog:\n{}",
            r.status,
            tail(ctl)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_frozen_leader_stops_before_the_standby_takes_over() {
    let Some(env) = test_env().await else {
        return;
    };
    let ns = env.namespace("leader-stall").await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns.name);
    let proxy = FreezableProxy::start(apiserver_addr(&env.kubeconfig)).await;
    let kubeconfig = env.dir.join(format!("kubeconfig-{}-proxied", ns.name));
    proxy.kubeconfig(&env.kubeconfig, &kubeconfig);

    // Leader election on (the default), the Lease in the test namespace.
    let mut a = ControllerProcess::start_through(&env, &ns.name, &[], &kubeconfig).await;
    lease_held_by(&leases, a.pid()).await;
    let b = ControllerProcess::start_with(&env, &ns.name, &[]).await;

    rollouts
        .create(&PostParams::default(), &rollout())
        .await
        .expect("creating the Rollout");
    let v1 = wait_rollout(&rollouts, "v1 Healthy", &a, healthy).await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}
    ]}}}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching the image");
    let paused = wait_rollout(&rollouts, "v2 paused at step 1", &a, |r| {
        let s = status(r);
        s.current_pod_hash != status(&v1).current_pod_hash
            && s.current_step_index == Some(1)
            && !s.pause_conditions.is_empty()
    })
    .await;
    let canary = status(&paused).current_pod_hash;
    assert_eq!(leader_gauge(&b).await, Some(0), "B acted while A led");

    proxy.freeze();
    // Let a write that was mid-copy land, then take what the apiserver last saw from A.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_before = proxy.bytes_to_server();
    let (renewed, _) = lease_held_by(&leases, a.pid()).await;
    let expires = renewed + SignedDuration::try_from(LEASE_DURATION).expect("duration");

    // A must be gone before the Lease could expire for B.
    let exited = loop {
        if let Some(code) = a.exited() {
            break (Timestamp::now(), code);
        }
        let now = Timestamp::now();
        assert!(
            now < expires,
            "A still runs at {now}, past its Lease's expiry {expires} (renewed {renewed}); \
             it reports sluice_leader={:?}\nlog:\n{}",
            leader_gauge(&a).await,
            tail(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (exited_at, code) = exited;
    assert!(
        !code.success(),
        "A exited with {code} after losing the Lease"
    );
    let log = a.log_text();
    assert!(
        log.contains("stopped acting"),
        "A's log does not say it stopped acting:\n{}",
        tail(&a)
    );
    eprintln!(
        "A exited {:?} after its last renewal the apiserver saw, {:?} before the Lease expired",
        exited_at.duration_since(renewed),
        expires.duration_since(exited_at)
    );

    // B takes over only after A is gone, and finishes the update A started.
    let (_, acquired) = lease_held_by(&leases, b.pid()).await;
    assert!(
        acquired > exited_at,
        "B took the Lease at {acquired}, before A exited at {exited_at}"
    );
    let done = wait_rollout(&rollouts, "v2 Healthy under B", &b, healthy).await;
    assert_eq!(
        status(&done).stable_rs,
        canary,
        "B promoted another revision"
    );
    assert_eq!(leader_gauge(&b).await, Some(1));

    // Whatever A left in flight never reaches the apiserver, even once the network is back.
    proxy.thaw();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.bytes_to_server(),
        sent_before,
        "A sent requests after the freeze"
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

// === /healthz that can fail ===

async fn healthz(ctl: &ControllerProcess) -> (u16, String) {
    let r = reqwest::get(format!("{}/healthz", ctl.http_url))
        .await
        .expect("GET /healthz");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A standby whose apiserver connection freezes fails `/healthz` once its Lease requests have
/// had no answer for the stall bound, and recovers when answers come back; the idle leader on a
/// working connection stays healthy all along (nothing to do is not being stuck).
#[tokio::test]
async fn healthz_fails_while_the_apiserver_does_not_answer() {
    let Some(env) = test_env().await else {
        return;
    };
    let ns = env.namespace("liveness").await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns.name);
    let proxy = FreezableProxy::start(apiserver_addr(&env.kubeconfig)).await;
    let kubeconfig = env.dir.join(format!("kubeconfig-{}-proxied", ns.name));
    proxy.kubeconfig(&env.kubeconfig, &kubeconfig);
    let stall = ["--healthz-stall-seconds=5"];
    let leader = ControllerProcess::start_with(&env, &ns.name, &stall).await;
    lease_held_by(&leases, leader.pid()).await;
    let standby = ControllerProcess::start_through(&env, &ns.name, &stall, &kubeconfig).await;
    assert_eq!(healthz(&standby).await.0, 200, "{}", tail(&standby));

    proxy.freeze();
    let frozen = tokio::time::Instant::now();
    let body = eventually(
        Duration::from_secs(30),
        "the frozen standby's /healthz to fail",
        || async {
            let (code, body) = healthz(&standby).await;
            (code == 503).then_some(body)
        },
    )
    .await;
    let took = frozen.elapsed();
    assert!(body.contains("no answer"), "{body}");
    // The first unanswered Lease request may have gone out up to one retry period (2 s)
    // before the freeze.
    assert!(
        took >= Duration::from_secs(3),
        "/healthz failed {took:?} after the freeze, before the 5 s stall bound"
    );
    // The leader has been idle for longer than the bound, and is healthy.
    let (code, body) = healthz(&leader).await;
    assert_eq!(code, 200, "the idle leader: {body}\n{}", tail(&leader));

    proxy.thaw();
    eventually(
        Duration::from_secs(30),
        "the standby's /healthz to recover",
        || async { (healthz(&standby).await.0 == 200).then_some(()) },
    )
    .await;
    let _ = std::fs::remove_file(&kubeconfig);
}

// === Reconcile errors back off ===

/// `text` without its ANSI colours (the controller's text log has them).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `rollout_reconcile_error` from a controller's /metrics.
async fn reconcile_errors(ctl: &ControllerProcess) -> u64 {
    ctl.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("rollout_reconcile_error "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// A Rollout whose ReplicaSet the apiserver refuses (a ResourceQuota of zero ReplicaSets) fails
/// every reconcile: the retries spread out (5 s, 10 s, 20 s, ...) instead of coming every 5 s,
/// and only the 1st, 2nd and 4th failures are WARN lines, each with its attempt count.
#[tokio::test]
async fn reconcile_errors_back_off_exponentially() {
    let Some(env) = test_env().await else {
        return;
    };
    let ns = env.namespace("backoff").await;
    env.create(
        &ns.name,
        json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "no-replicasets"},
            "spec": {"hard": {"count/replicasets.apps": "0"}},
        }),
    )
    .await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(env.client.clone(), &ns.name);
    eventually(TIMEOUT, "the quota to be counted", || async {
        let q = quotas.get("no-replicasets").await.ok()?;
        q.status?.hard.filter(|h| !h.is_empty()).map(|_| ())
    })
    .await;
    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);
    rollouts
        .create(&PostParams::default(), &rollout())
        .await
        .expect("creating the Rollout");
    eventually(TIMEOUT, "the first reconcile error", || async {
        (reconcile_errors(&ctl).await >= 1).then_some(())
    })
    .await;
    let first = tokio::time::Instant::now();
    // 40 s: every 5 s that is 8 more failures; backing off, failures 2, 3 and 4 come 5, 15
    // and 35 s after the first.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let errors = reconcile_errors(&ctl).await;
    let log = plain(&ctl.log_text());
    assert!(
        (3..=5).contains(&errors),
        "{errors} reconcile errors in {:?} (expected 4 with back-off)\n{}",
        first.elapsed(),
        tail(&ctl)
    );
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("reconcile failed"))
        .collect();
    let attempts: Vec<u32> = warned
        .iter()
        .filter_map(|l| l.split("attempt=").nth(1))
        .filter_map(|a| a.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert_eq!(
        &attempts[..attempts.len().min(3)],
        [1, 2, 4],
        "WARN lines:\n{}",
        warned.join("\n")
    );
    assert!(
        log.contains("reconcile failed again") && log.contains("attempt=3"),
        "the 3rd failure is logged at DEBUG:\n{}",
        tail(&ctl)
    );
}

// === The chart's safety options ===

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// Every (apiGroup, resource) the chart's Roles and ClusterRoles grant.
fn granted(docs: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    let (g, r) = (
                        group.as_str().unwrap_or(""),
                        resource.as_str().unwrap_or(""),
                    );
                    out.push((g.to_string(), r.to_string()));
                }
            }
        }
    }
    out
}

fn args(docs: &[serde_json::Value]) -> Vec<String> {
    find(docs, "Deployment")
        .and_then(|d| d.pointer("/spec/template/spec/containers/0/args"))
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn chart_pdb_anti_affinity_digest_and_rbac_halves() {
    use common::chart::{documents, helm_or_skip, render_chart};
    let Some(env) = test_env().await else {
        return;
    };
    let Some(helm) = helm_or_skip(&env) else {
        return;
    };
    let render = |sets: &[&str]| documents(&render_chart(&helm, "sluice-system", false, sets));

    // Two replicas (the default): a budget that lets one go, and the replicas spread by node.
    let docs = render(&[]);
    let pdb = find(&docs, "PodDisruptionBudget").expect("a PodDisruptionBudget at 2 replicas");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    assert!(pdb["spec"].get("minAvailable").is_none(), "{pdb}");
    let deployment = find(&docs, "Deployment").expect("Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let term = &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname", "{spec}");
    assert_eq!(
        term["labelSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the anti-affinity selects the controller's own pods"
    );
    assert!(
        spec["containers"][0]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("ghcr.io/sluice-rs/sluice:")),
        "{}",
        spec["containers"][0]["image"]
    );

    // One replica: no budget (it would block every drain), nothing to spread.
    let docs = render(&["replicas=1"]);
    assert!(
        find(&docs, "PodDisruptionBudget").is_none(),
        "a PDB at replicas 1"
    );
    let spec = &find(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    assert!(spec.get("affinity").is_none(), "{spec}");

    // A user's affinity wins, as given.
    let docs = render(&[
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool,affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ]);
    let affinity = &find(&docs, "Deployment").unwrap()["spec"]["template"]["spec"]["affinity"];
    assert!(
        affinity.get("nodeAffinity").is_some() && affinity.get("podAntiAffinity").is_none(),
        "{affinity}"
    );

    // Pinned by tag (the crate's version, the chart's appVersion) and, with a digest, by both.
    let image = |docs: &[serde_json::Value]| {
        find(docs, "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone()
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        image(&render(&[])),
        format!("ghcr.io/sluice-rs/sluice:{version}")
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        image(&render(&[&format!("image.digest={digest}")])),
        format!("ghcr.io/sluice-rs/sluice:{version}@{digest}")
    );
    assert_eq!(
        image(&render(&[
            "image.tag=1.2.3",
            &format!("image.digest={digest}")
        ])),
        format!("ghcr.io/sluice-rs/sluice:1.2.3@{digest}")
    );

    // Either half of the RBAC dropped, and the controller told not to run it.
    let full = granted(&render(&[]));
    for (off, group, only_there, flag) in [
        (
            "rbac.flagger=false",
            "flagger.app",
            ["horizontalpodautoscalers", "configmaps"],
            "--flagger=false",
        ),
        (
            "rbac.argo=false",
            "argoproj.io",
            ["replicasets", "jobs"],
            "--argo=false",
        ),
    ] {
        let docs = render(&[off]);
        let rules = granted(&docs);
        assert!(full.iter().any(|(g, _)| g == group));
        assert!(
            !rules.iter().any(|(g, _)| g == group),
            "{off}: {group} still granted: {rules:?}"
        );
        for resource in only_there {
            assert!(
                !rules.iter().any(|(_, r)| r == resource),
                "{off}: {resource} still granted"
            );
        }
        for shared in ["deployments", "services", "events", "leases", "httproutes"] {
            assert!(
                rules.iter().any(|(_, r)| r == shared),
                "{off}: {shared} dropped"
            );
        }
        assert!(
            args(&docs).contains(&flag.to_string()),
            "{off}: {:?}",
            args(&docs)
        );
        assert!(!args(&render(&[])).iter().any(|a| a == flag));
    }
}

/// With one half of the chart's RBAC dropped, the controller run as the chart's ServiceAccount
/// with the matching flag starts, syncs its caches (ready) and is refused nothing: it never
/// touches the kinds it may not.
#[tokio::test]
async fn each_half_runs_alone_with_only_its_rbac() {
    use common::chart::helm_or_skip;
    use common::service_account::{assert_nothing_refused, chart_account};
    let Some(env) = test_env().await else {
        return;
    };
    let Some(helm) = helm_or_skip(&env) else {
        return;
    };
    for (half, set, flag, other) in [
        (
            "flagger",
            "rbac.argo=false",
            "--argo=false",
            "rollouts.argoproj.io",
        ),
        (
            "argo",
            "rbac.flagger=false",
            "--flagger=false",
            "canaries.flagger.app",
        ),
    ] {
        let ns = env.namespace(&format!("half-{half}")).await;
        let release = common::unique_name(&format!("half-{half}"));
        let chart = chart_account(&env, &helm, &ns.name, &release, &[set]).await;
        assert_eq!(chart.can(&env, &["list", other, "-n", &ns.name]), "no");
        let ctl =
            ControllerProcess::start_through(&env, &ns.name, &[flag], &chart.kubeconfig).await;
        // Ready as the leader means every watch it runs has listed; a refused one never would.
        eventually(TIMEOUT, "the leader's caches synced", || async {
            let leads = ctl.metrics().await.lines().any(|l| l == "sluice_leader 1");
            let ready = reqwest::get(format!("{}/readyz", ctl.http_url))
                .await
                .is_ok_and(|r| r.status().is_success());
            (leads && ready).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = ctl.log_text();
        assert_nothing_refused(&log);
        let started = if half == "argo" {
            "canary controller starting"
        } else {
            "rollout controller starting"
        };
        assert!(!log.contains(started), "{flag}: {started}\n{}", tail(&ctl));
    }
}
