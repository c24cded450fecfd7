//! The install manifests (deploy/) against the real apiserver: the Helm chart (default values and
//! every option), the kustomize base and `deploy/install.yaml` are server-side dry-run applied,
//! install.yaml is checked to be exactly what the chart renders (`deploy/render --check`), and
//! the RBAC they grant has no wildcards and no Secrets unless asked for.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestEnv;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm_or_skip(env: &TestEnv) -> Option<PathBuf> {
    if env.helm.is_none() {
        let msg = "skipped: the env file names no HELM (rerun tests/env/up, which builds helm)";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but {msg}");
        }
        eprintln!("{msg}");
    }
    env.helm.clone()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart into `namespace` with `--set` values.
fn render_chart(helm: &Path, namespace: &str, crds: bool, sets: &[&str]) -> String {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "sluice"])
        .arg(root().join("deploy/helm/sluice"))
        .args(["--namespace", namespace]);
    if crds {
        cmd.arg("--include-crds");
    }
    for set in sets {
        cmd.args(["--set", set]);
    }
    run(&mut cmd, &format!("helm template {sets:?}"))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|d| !d.is_null())
        .collect()
}

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
    let default_rules = rules(&documents(&install));
    assert!(
        !default_rules
            .iter()
            .any(|(_, r)| r["resources"].to_string().contains("secrets")),
        "the default install reads no Secrets"
    );
    // What the controller does, resource by resource (a missing one only shows up in a cluster).
    for needed in [
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
        serde_json::json!(["events.k8s.io"]),
        "Events go through events.k8s.io (kube's Recorder)"
    );
}
