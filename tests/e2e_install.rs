//! The install manifests (deploy/) against the real apiserver: the Helm chart (default values and
//! every option), the kustomize base and `deploy/install.yaml` are server-side dry-run applied,
//! install.yaml is checked to be exactly what the chart renders (`deploy/render --check`), and
//! the RBAC they grant has no wildcards and no Secrets unless asked for.

mod common;

use std::process::Command;

use common::TestEnv;
use common::chart::{documents, helm_or_skip, render_chart, root};
use common::service_account::{SaController, chart_account, run};
use serde_json::Value;

/// Server-side dry-run apply of a YAML stream; returns kubectl's output.
fn dry_run_apply(env: &TestEnv, yaml: &str, what: &str) -> String {
    let dir = env.dir.join("install-test");
    std::fs::create_dir_all(&dir).expect("creating target/testenv/install-test");
    let file = dir.join(format!("{}.yaml", common::unique_name("manifest")));
    std::fs::write(&file, yaml).expect("writing the manifest");
    let result = run(
        env.kubectl()
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "--field-manager",
                common::FIELD_MANAGER,
                "-f",
            ])
            .arg(&file),
        what,
    );
    let _ = std::fs::remove_file(&file);
    result
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .filter_map(|d| d["kind"].as_str().map(String::from))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

const EXPECTED_KINDS: &[&str] = &[
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
];

#[tokio::test]
async fn install_yaml_and_the_kustomize_base_are_what_the_chart_renders() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(helm) = helm_or_skip(&env) else {
        return;
    };
    let out = Command::new(root().join("deploy/render"))
        .arg("--check")
        .env("HELM", &helm)
        .output()
        .expect("running deploy/render --check");
    assert!(
        out.status.success(),
        "deploy/ drifted from the chart: run deploy/render and commit the result\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And independently of the script: install.yaml is the chart's default rendering.
    let rendered = render_chart(&helm, "sluice-system", true, &[]);
    let install = std::fs::read_to_string(root().join("deploy/install.yaml")).unwrap();
    let body: String = install
        .lines()
        .skip_while(|l| l.starts_with("# Generated"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        body == rendered,
        "deploy/install.yaml is not what the chart renders with default values: run deploy/render"
    );
}

#[tokio::test]
async fn chart_kustomize_base_and_install_yaml_apply_server_side() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(helm) = helm_or_skip(&env) else {
        return;
    };
    let ns = env.namespace("install").await;

    // The chart, default values, CRDs included.
    let chart = render_chart(&helm, &ns.name, true, &[]);
    let docs = documents(&chart);
    let mut found = kinds(&docs);
    found.retain(|k| k != "CustomResourceDefinition");
    assert_eq!(found, EXPECTED_KINDS, "kinds the chart renders by default");
    assert_eq!(
        docs.iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .count(),
        std::fs::read_dir(root().join("crds"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml"))
            .count(),
        "the chart installs every CRD in crds/"
    );
    let out = dry_run_apply(&env, &chart, "dry-run apply of the chart");
    assert!(out.contains("deployment.apps/sluice serverside-applied (server dry run)"));

    // Every option at once: one watched namespace, Secrets there, no leader election, a Prometheus.
    let options = render_chart(
        &helm,
        &ns.name,
        false,
        &[
            &format!("controller.watchNamespace={}", ns.name),
            &format!("secrets.namespaces={{{}}}", ns.name),
            "controller.leaderElection=false",
            "controller.prometheusAddress=http://prometheus.monitoring:9090",
            "replicas=1",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        ],
    );
    dry_run_apply(&env, &options, "dry-run apply of the chart with options");
    let docs = documents(&options);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args = deployment
        .pointer("/spec/template/spec/containers/0/args")
        .unwrap();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&Value::from(format!("--namespace={}", ns.name)))
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "RoleBinding" && d["roleRef"]["name"] == "sluice"),
        "watchNamespace binds the ClusterRole in that namespace only"
    );

    // The ServiceMonitor renders (its CRD is not in the test cluster, so it is only parsed).
    let monitor = render_chart(
        &helm,
        &ns.name,
        false,
        &["metrics.serviceMonitor.enabled=true"],
    );
    assert!(
        documents(&monitor)
            .iter()
            .any(|d| d["kind"] == "ServiceMonitor")
    );

    // The kustomize base, through an overlay that moves it into the test namespace.
    // kustomize takes bases by relative path only: the overlay lives three levels below the root.
    let overlay = root()
        .join("target/install-test")
        .join(common::unique_name("overlay"));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {}\nresources:\n  - {}\n",
            ns.name, "../../../deploy/kustomize"
        ),
    )
    .unwrap();
    let built = run(
        env.kubectl().arg("kustomize").arg(&overlay),
        "kubectl kustomize",
    );
    let _ = std::fs::remove_dir_all(&overlay);
    let docs = documents(&built);
    let mut found = kinds(&docs);
    found.retain(|k| k != "CustomResourceDefinition" && k != "Namespace");
    assert_eq!(found, EXPECTED_KINDS, "kinds of the kustomize base");
    assert!(
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding")
            .all(|d| d["subjects"][0]["namespace"] == ns.name.as_str()),
        "kustomize moves the bindings' subjects along with the namespace"
    );
    dry_run_apply(&env, &built, "dry-run apply of the kustomize base");

    // install.yaml itself, moved into the test namespace.
    let install = std::fs::read_to_string(root().join("deploy/install.yaml")).unwrap();
    dry_run_apply(
        &env,
        &install.replace("sluice-system", &ns.name),
        "dry-run apply of deploy/install.yaml",
    );
}

/// Every rule of every Role and ClusterRole in `docs`: (role name, rule).
fn rules(docs: &[Value]) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .flat_map(|d| {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            d["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (name.clone(), r))
        })
        .collect()
}

#[tokio::test]
async fn rbac_is_least_privilege() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(helm) = helm_or_skip(&env) else {
        return;
    };
    let install = std::fs::read_to_string(root().join("deploy/install.yaml")).unwrap();
    let everything = render_chart(
        &helm,
        "sluice-system",
        false,
        &[
            "secrets.namespaces={apps,payments}",
            "secrets.clusterWide=true",
        ],
    );
    for (what, yaml) in [("install.yaml", &install), ("all options", &everything)] {
        let rules = rules(&documents(yaml));
        assert!(!rules.is_empty(), "{what}: no RBAC rules");
        for (role, rule) in &rules {
            for key in ["verbs", "resources", "apiGroups"] {
                let values = rule[key].as_array().cloned().unwrap_or_default();
                assert!(
                    !values.is_empty() || key == "apiGroups",
                    "{what}: role {role} has a rule without {key}"
                );
                for v in values {
                    let v = v.as_str().unwrap_or_default();
                    assert!(
                        !v.contains('*'),
                        "{what}: role {role} has a wildcard in {key}: {rule}"
                    );
                }
            }
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{what}: role {role} grants non-resource URLs"
            );
            let secrets = rule["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "secrets"));
            if secrets {
                assert!(
                    role.ends_with("-secrets") && rule["verbs"] == serde_json::json!(["get"]),
                    "{what}: Secrets are granted outside the secrets roles: {role} {rule}"
                );
            }
        }
    }
    // Flagger config tracking of Secrets adds exactly what it needs, still only where granted.
    let tracking = render_chart(
        &helm,
        "sluice-system",
        false,
        &["secrets.namespaces={apps}", "secrets.configTracking=true"],
    );
    let secret_rules: Vec<(String, Value)> = rules(&documents(&tracking))
        .into_iter()
        .filter(|(_, r)| r["resources"].to_string().contains("secrets"))
        .collect();
    assert_eq!(secret_rules.len(), 1, "{secret_rules:?}");
    assert_eq!(secret_rules[0].0, "sluice-secrets");
    assert_eq!(
        secret_rules[0].1["verbs"],
        serde_json::json!(["get", "list", "watch", "create", "update", "patch"])
    );
    let default_rules = rules(&documents(&install));
    assert!(
        !default_rules
            .iter()
            .any(|(_, r)| r["resources"].to_string().contains("secrets")),
        "the default install reads no Secrets"
    );
    // What the controller does, resource by resource (a missing one only shows up in a cluster).
    for needed in [
        "canaries",
        "configmaps",
        "horizontalpodautoscalers",
        "rollouts",
        "rollouts/status",
        "analysisruns",
        "analysisruns/status",
        "analysistemplates",
        "clusteranalysistemplates",
        "replicasets",
        "services",
        "endpointslices",
        "deployments",
        "jobs",
        "events",
        "leases",
        "httproutes",
        "virtualservices",
        "destinationrules",
        "ingresses",
        "trafficsplits",
        "traefikservices",
    ] {
        assert!(
            default_rules.iter().any(|(_, r)| r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == needed)),
            "the default RBAC does not cover {needed}"
        );
    }
    let events = default_rules
        .iter()
        .find(|(_, r)| r["resources"] == serde_json::json!(["events"]))
        .unwrap();
    assert_eq!(
        events.1["apiGroups"],
        serde_json::json!(["", "events.k8s.io"]),
        "Rollout Events are core/v1 (Argo's reasons, as Argo writes them); the rest go through \
         events.k8s.io (kube's Recorder)"
    );
}

// === The chart's RBAC, really used ===

/// Polls `read` until `done` accepts its value; on timeout panics with the value and the log.
async fn until<T: std::fmt::Debug, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    ctl: &SaController,
    mut read: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            let log = ctl.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {value:#?}\ncontroller log (tail):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The chart's ServiceAccount, Roles, ClusterRoles and bindings applied for real (release
/// namespace = the test namespace, `controller.watchNamespace` = it too), then `sluice controller`
/// authenticated only as that ServiceAccount (a TokenRequest token) takes a Rollout with an
/// analysis step (Prometheus) and a Flagger Canary through a new revision to completion, electing
/// itself leader on the chart's Lease Role. Any missing permission is a 403 in the log or a stuck
/// object: either fails the test.
#[tokio::test]
async fn the_charts_service_account_can_run_a_rollout_and_a_canary() {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    use serde_json::json;
    use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun};
    use sluice::api::argo::rollout::{Rollout, RolloutPhase};
    use sluice::api::flagger::canary::{Canary, CanaryPhase};
    use std::time::Duration;

    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(helm) = helm_or_skip(&env) else {
        return;
    };
    let ns = env.namespace("rbac").await;
    let release = common::unique_name("rbac");
    let sets = [
        // Secrets opted in where the Canary lives, so config tracking may watch and copy them
        // (without it, the default, Sluice reads no Secret at all).
        format!("secrets.namespaces={{{}}}", ns.name),
        "secrets.configTracking=true".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let chart = chart_account(&env, &helm, &ns.name, &release, &sets).await;
    assert!(
        chart.cluster_scoped.objects.len() >= 3,
        "expected the ClusterRoles and the cluster binding: {:?}",
        chart.cluster_scoped.objects
    );
    let kubeconfig = chart.kubeconfig.clone();
    // It may not do what the chart does not grant.
    let can = |args: &[&str]| chart.can(&env, args);
    assert_eq!(can(&["list", "secrets", "-n", "default"]), "no");
    assert_eq!(can(&["delete", "secrets", "-n", &ns.name]), "no");
    assert_eq!(
        can(&["list", "rollouts.argoproj.io", "-n", "default"]),
        "no"
    );
    assert_eq!(
        can(&["list", "rollouts.argoproj.io", "-n", &ns.name]),
        "yes"
    );

    // What the controller drives: an AnalysisTemplate on the env's Prometheus, a Rollout with
    // canary/stable Services and an analysis step; a Deployment with a Canary and a MetricTemplate.
    let client = env.client.clone();
    let create = |manifest: Value| {
        let env = &env;
        let ns = ns.name.clone();
        async move { env.create(&ns, manifest).await }
    };
    for name in ["web-stable", "web-canary"] {
        create(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .await;
    }
    create(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "passes"},
        "spec": {"metrics": [{
            "name": "probe", "count": 2, "interval": "1s",
            "successCondition": "result[0] >= 1",
            "provider": {"prometheus": {"address": env.prometheus_url, "query": "vector(1)"}},
        }]},
    }))
    .await;
    let rollout = |image: &str| {
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": image}]}},
                "strategy": {"canary": {
                    "canaryService": "web-canary", "stableService": "web-stable",
                    "steps": [
                        {"setWeight": 50},
                        {"analysis": {"templates": [{"templateName": "passes"}]}},
                    ],
                }},
            },
        })
    };
    create(rollout("registry.invalid/web:1")).await;
    create(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": "success-rate"},
        "spec": {"provider": {"type": "prometheus", "address": env.prometheus_url},
                 "query": "vector(99.5)"},
    }))
    .await;
    create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "labels": {"app": "podinfo"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {"metadata": {"labels": {"app": "podinfo"}},
                         "spec": {"containers": [{"name": "podinfo", "image": "podinfo:6.0.0",
                                                  "ports": [{"containerPort": 9898}]}]}},
        },
    }))
    .await;
    create(common::canary::kubernetes(
        "podinfo",
        Some(60),
        json!({
            "interval": "1s", "threshold": 2, "iterations": 2,
            "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
                         "thresholdRange": {"min": 99}}],
        }),
    ))
    .await;

    let ctl = SaController::start(&env, &ns.name, &kubeconfig).await;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns.name);
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let healthy = |r: &Option<Rollout>| {
        r.as_ref().and_then(|r| r.status.as_ref()).is_some_and(|s| {
            s.phase == Some(RolloutPhase::Healthy)
                && !s.current_pod_hash.is_empty()
                && s.stable_rs == s.current_pod_hash
        })
    };
    let canary_phase = |c: &Option<Canary>| {
        c.as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase)
    };
    let timeout = Duration::from_secs(90);

    // First revisions: the Rollout is Healthy at once, the Canary initialised.
    let first = until(
        "the Rollout Healthy",
        timeout,
        &ctl,
        || async { rollouts.get_opt("web").await.ok().flatten() },
        healthy,
    )
    .await;
    until(
        "the Canary Initialized",
        timeout,
        &ctl,
        || async { canaries.get_opt("podinfo").await.ok().flatten() },
        |c| canary_phase(c) == Some(CanaryPhase::Initialized),
    )
    .await;

    // New revisions of both, driven to completion.
    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}]}}}});
    rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("a new Rollout revision");
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
        )
        .await
        .expect("a new Canary revision");
    let first_hash = first
        .and_then(|r| r.status)
        .map(|s| s.stable_rs)
        .unwrap_or_default();
    let promoted = until(
        "the Rollout's second revision promoted through its analysis",
        Duration::from_secs(120),
        &ctl,
        || async { rollouts.get_opt("web").await.ok().flatten() },
        |r| {
            healthy(r)
                && r.as_ref()
                    .and_then(|r| r.status.as_ref())
                    .is_some_and(|s| s.stable_rs != first_hash && s.current_step_index == Some(2))
        },
    )
    .await;
    assert!(promoted.is_some());
    let runs = Api::<AnalysisRun>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .expect("listing AnalysisRuns")
        .items;
    assert_eq!(runs.len(), 1, "one run for the analysis step: {runs:#?}");
    assert_eq!(
        runs[0].status.as_ref().and_then(|s| s.phase),
        Some(AnalysisPhase::Successful),
        "{:#?}",
        runs[0].status
    );
    until(
        "the Canary's new revision promoted",
        Duration::from_secs(120),
        &ctl,
        || async { canaries.get_opt("podinfo").await.ok().flatten() },
        |c| canary_phase(c) == Some(CanaryPhase::Succeeded),
    )
    .await;
    let primary = deployments
        .get("podinfo-primary")
        .await
        .expect("the Canary's primary Deployment");
    assert_eq!(
        primary.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("podinfo:6.0.1")
    );

    // Nothing was refused on the way.
    let log = ctl.log_text();
    common::service_account::assert_nothing_refused(&log);
    // It led through the chart's Lease Role.
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns.name)
            .get("sluice-controller")
            .await
            .expect("the leader Lease in the release namespace");
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty()),
        "the Lease has no holder"
    );
    drop(ctl);
    drop(chart);
}
