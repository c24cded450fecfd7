//! Argo Rollouts' own `examples/` (the Go module, pinned at [`ARGO_ROLLOUTS_VERSION`]) against
//! Sluice's CRDs: every document of Sluice's Argo kinds must be accepted by a server-side dry-run
//! create with nothing pruned, and `sluice lint` must find no error in any example file (warnings,
//! e.g. "not supported by this version of Sluice", are fine). Whatever Argo's CRDs accept, ours
//! must accept, or a team cannot move its manifests over unchanged.
//!
//! The module comes from `SLUICE_ARGO_ROLLOUTS_MODULE` (exported by `tests/env/up`), else from
//! `go mod download` through the Go module proxy (Go's module cache keeps it by version).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The Argo Rollouts release whose examples are checked.
const ARGO_ROLLOUTS_VERSION: &str = "v1.10.1";

/// Sluice's kinds in `argoproj.io/v1alpha1`; other kinds (Services, ...) are skipped.
const KINDS: [&str; 5] = [
    "Rollout",
    "AnalysisTemplate",
    "ClusterAnalysisTemplate",
    "AnalysisRun",
    "Experiment",
];

/// Example paths that are no manifests `kubectl apply` takes, so nothing any CRD accepts: a Helm
/// chart's sources (`{{ ... }}`), and a file whose unquoted `{{args.linkerd-enabled}}` is a YAML
/// map used as a map key (kubectl refuses the file too).
const NOT_MANIFESTS: [&str; 2] = ["helm-blue-green", "traffic-management/rollout-linkerd.yaml"];

/// The unpacked Argo Rollouts module, or `None` (with a message) when there is no way to get it.
fn argo_module() -> Option<PathBuf> {
    // The module cache keeps the version in the directory name: another version is not used.
    if let Some(dir) = std::env::var_os("SLUICE_ARGO_ROLLOUTS_MODULE")
        .map(PathBuf::from)
        .filter(|d| {
            d.to_string_lossy()
                .ends_with(&format!("@{ARGO_ROLLOUTS_VERSION}"))
        })
    {
        return Some(dir);
    }
    let go = std::env::var_os("GO").unwrap_or_else(|| "/usr/local/go/bin/go".into());
    let module = format!("github.com/argoproj/argo-rollouts@{ARGO_ROLLOUTS_VERSION}");
    let out = Command::new(&go)
        .args(["mod", "download", "-json", &module])
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .current_dir("/")
        .output();
    let dir = match out {
        Ok(out) if out.status.success() => serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["Dir"].as_str().map(PathBuf::from)),
        Ok(out) => {
            eprintln!(
                "go mod download {module}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("running {}: {e}", Path::new(&go).display());
            None
        }
    };
    if dir.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI: Argo Rollouts {ARGO_ROLLOUTS_VERSION} could not be downloaded"
        );
        eprintln!(
            "skipped: no Argo Rollouts module (set SLUICE_ARGO_ROLLOUTS_MODULE or install Go)"
        );
    }
    dir
}

fn yaml_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if NOT_MANIFESTS.contains(&relative.as_str()) {
            println!("skipped: examples/{relative} (not a manifest)");
        } else if path.is_dir() {
            yaml_files(root, &path, out);
        } else if relative.ends_with(".yaml") || relative.ends_with(".yml") {
            out.push(path);
        }
    }
}

/// Every example file, sorted, with its documents as `kubectl` reads them.
fn examples(module: &Path) -> Vec<(PathBuf, Vec<Value>)> {
    let root = module.join("examples");
    let mut files = Vec::new();
    yaml_files(&root, &root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let docs = sluice::api::yaml::documents(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (file, docs)
        })
        .collect()
}

fn is_checked(doc: &Value) -> bool {
    doc["apiVersion"] == "argoproj.io/v1alpha1"
        && doc["kind"].as_str().is_some_and(|k| KINDS.contains(&k))
}

fn describe(module: &Path, file: &Path, doc: &Value) -> String {
    format!(
        "{} {}/{}",
        file.strip_prefix(module).unwrap_or(file).display(),
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The kinds skipped, for the test's output: what Sluice does not serve.
fn skipped_kinds(examples: &[(PathBuf, Vec<Value>)]) -> Vec<String> {
    let mut kinds: Vec<String> = examples
        .iter()
        .flat_map(|(_, docs)| docs)
        .filter(|d| !is_checked(d))
        .map(|d| {
            format!(
                "{} {}",
                d["apiVersion"].as_str().unwrap_or("?"),
                d["kind"].as_str().unwrap_or("?")
            )
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

#[tokio::test]
async fn argo_examples_dry_run_create_with_nothing_pruned() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(module) = argo_module() else { return };
    let examples = examples(&module);
    println!("skipped kinds: {}", skipped_kinds(&examples).join(", "));
    let ns = env.namespace("argo-examples").await;
    let (mut checked, mut failures) = (0, Vec::new());
    for (file, docs) in &examples {
        for doc in docs.iter().filter(|d| is_checked(d)) {
            checked += 1;
            let what = describe(&module, file, doc);
            match env.dry_run_create(&ns.name, doc).await {
                Err(e) => failures.push(format!("{what}: rejected: {e}")),
                Ok(stored) => {
                    // The namespace is the test's, whatever the example says.
                    let mut sent = doc.clone();
                    sent["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("namespace"));
                    let pruned = common::pruned_paths(&sent, &stored);
                    if !pruned.is_empty() {
                        failures.push(format!("{what}: pruned {}", pruned.join(", ")));
                    }
                }
            }
        }
    }
    println!(
        "Argo Rollouts {ARGO_ROLLOUTS_VERSION} examples: {}/{checked} dry-run clean",
        checked - failures.len()
    );
    assert!(checked >= 25, "only {checked} documents of Sluice's kinds");
    assert!(
        failures.is_empty(),
        "{} of {checked}:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn argo_examples_pass_sluice_lint() {
    let Some(module) = argo_module() else { return };
    let examples = examples(&module);
    let (mut linted, mut failures) = (0, Vec::new());
    for (file, docs) in &examples {
        if !docs.iter().any(is_checked) {
            continue;
        }
        linted += 1;
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("lint")
            .arg("-f")
            .arg(file)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}: exit {:?}\n{}{}",
                file.strip_prefix(&module).unwrap_or(file).display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    println!(
        "Argo Rollouts {ARGO_ROLLOUTS_VERSION} examples: {}/{linted} files pass sluice lint",
        linted - failures.len()
    );
    assert!(linted >= 20, "only {linted} files with Sluice's kinds");
    assert!(
        failures.is_empty(),
        "{} of {linted}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A Rollout using what Argo's CRDs keep but no example shows (Argo's `types.go`): NGINX
/// `canaryIngressAnnotations`, Istio `additionalSubsetNames`, an experiment step's
/// `scaleDownDelaySeconds`, and resource quantities as JSON numbers (`cpu: 0.001`, as a Pod takes).
fn rollout_with_fields_no_example_shows() -> Value {
    serde_json::json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "argo-fields"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "argo-fields"}},
            "template": {
                "metadata": {"labels": {"app": "argo-fields"}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.invalid/demo:1",
                    "resources": {
                        "requests": {"cpu": 0.001, "memory": "32Mi"},
                        "limits": {"cpu": 2, "memory": 1.5e9}
                    }
                }]}
            },
            "strategy": {"canary": {
                "canaryService": "canary",
                "stableService": "stable",
                "trafficRouting": {
                    "nginx": {
                        "stableIngress": "web",
                        "canaryIngressAnnotations": {"example.com/team": "web"}
                    },
                    "istio": {
                        "virtualService": {"name": "web"},
                        "destinationRule": {
                            "name": "web",
                            "canarySubsetName": "canary",
                            "stableSubsetName": "stable",
                            "additionalSubsetNames": ["legacy"]
                        }
                    }
                },
                "steps": [
                    {"experiment": {
                        "duration": "1m",
                        "scaleDownDelaySeconds": 10,
                        "templates": [{"name": "baseline", "specRef": "stable"}]
                    }},
                    {"setWeight": 20}
                ]
            }}
        }
    })
}

#[tokio::test]
async fn argo_fields_no_example_shows_are_kept() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("argo-fields").await;
    let sent = rollout_with_fields_no_example_shows();
    let stored = env
        .dry_run_create(&ns.name, &sent)
        .await
        .unwrap_or_else(|e| panic!("rejected: {e}"));
    let pruned = common::pruned_paths(&sent["spec"], &stored["spec"]);
    assert!(pruned.is_empty(), "pruned: {}", pruned.join(", "));
}

#[test]
fn argo_fields_no_example_shows_pass_sluice_lint() {
    let report = sluice::cli::lint::lint_text(
        &serde_json::to_string(&rollout_with_fields_no_example_shows()).unwrap(),
    );
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    // Kept, but not acted on: said so, never silently ignored.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("additionalSubsetNames")),
        "no warning names additionalSubsetNames: {:#?}",
        report.warnings
    );
    // Experiment steps run now: no warning about them.
    assert!(
        !report.warnings.iter().any(|w| w.contains("experiment")),
        "{:#?}",
        report.warnings
    );
}

/// `status.duration`, which Argo's controller writes after v1.10, survives on Sluice's CRDs, so
/// a team can run Argo's controller on them (or switch back) without losing it.
#[tokio::test]
async fn argo_status_duration_is_kept() {
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("argo-status").await;
    let mut rollout = rollout_with_fields_no_example_shows();
    rollout["spec"]["strategy"]["canary"] = serde_json::json!({"steps": [{"setWeight": 20}]});
    let obj: DynamicObject = serde_json::from_value(rollout).unwrap();
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &ns.name, &resource);
    api.create(&PostParams::default(), &obj).await.unwrap();
    let duration = serde_json::json!({
        "completionStatus": "Promoted",
        "startedAt": "2026-01-01T00:00:00Z",
        "seconds": 42
    });
    let patch = serde_json::json!({"status": {"duration": duration}});
    let stored = api
        .patch_status(
            "argo-fields",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    assert_eq!(stored.data["status"]["duration"], duration);
}
