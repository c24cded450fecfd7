//! `examples/argo/*.yaml` are manifests a user would write for Argo Rollouts. Every Argo object in
//! them must parse into Sluice's wire types, serialise back unchanged, and pass the CRDs' CEL rules;
//! every file must be complete (the Services and templates it names are in it) and namespace-free.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use sluice::api::argo::{AnalysisTemplate, ClusterAnalysisTemplate, Rollout};

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/argo");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/argo exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Parses `doc` as `K`, checks it serialises back to the same JSON and passes the CEL rules.
fn check<K: CustomResourceExt + Serialize + DeserializeOwned>(doc: &Value, what: &str) {
    let typed: K = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    pretty_assertions::assert_eq!(&back, doc, "{what}: changed by a round trip");
    kube::core::cel::validate_cel(&typed).unwrap_or_else(|e| panic!("{what}: CEL rules: {e}"));
}

/// Every string value under a key named `key`, anywhere in `value`.
fn strings_under(value: &Value, key: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key
                    && let Some(s) = v.as_str()
                {
                    out.insert(s.to_owned());
                }
                strings_under(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

#[test]
fn the_expected_examples_exist() {
    let names: Vec<_> = example_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "analysistemplate-job.yaml",
        "analysistemplate-prometheus.yaml",
        "bluegreen.yaml",
        "canary-background-analysis.yaml",
        "canary-basic.yaml",
        "canary-gateway-api-plugin.yaml",
        "canary-inline-analysis.yaml",
        "canary-istio.yaml",
        "canary-nginx.yaml",
        "canary-smi.yaml",
        "canary-traefik.yaml",
        "clusteranalysistemplate-web.yaml",
        "workloadref.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "examples/argo/{expected} is missing"
        );
    }
}

#[test]
fn argo_objects_round_trip_and_pass_the_crd_rules() {
    for path in example_files() {
        for (i, doc) in documents(&path).iter().enumerate() {
            let what = format!("{} document {i}", path.display());
            match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                (Some("argoproj.io/v1alpha1"), Some("Rollout")) => check::<Rollout>(doc, &what),
                (Some("argoproj.io/v1alpha1"), Some("AnalysisTemplate")) => {
                    check::<AnalysisTemplate>(doc, &what)
                }
                (Some("argoproj.io/v1alpha1"), Some("ClusterAnalysisTemplate")) => {
                    check::<ClusterAnalysisTemplate>(doc, &what)
                }
                (Some("argoproj.io/v1alpha1"), Some("Experiment")) => {
                    check::<sluice::api::argo::Experiment>(doc, &what)
                }
                (Some("argoproj.io/v1alpha1"), kind) => panic!("{what}: unexpected kind {kind:?}"),
                (Some(_), Some(_)) => {}
                _ => panic!("{what}: apiVersion and kind are required"),
            }
        }
    }
}

#[test]
fn examples_are_namespace_free_and_named() {
    for path in example_files() {
        for (i, doc) in documents(&path).iter().enumerate() {
            let what = format!("{} document {i}", path.display());
            assert!(
                doc["metadata"]["name"].is_string(),
                "{what}: metadata.name is required"
            );
            assert!(
                doc["metadata"].get("namespace").is_none(),
                "{what}: no namespace, so the file applies anywhere"
            );
        }
    }
}

#[test]
fn each_file_carries_what_its_rollouts_name() {
    for path in example_files() {
        let docs = documents(&path);
        let defined = |kind: &str| -> BTreeSet<String> {
            docs.iter()
                .filter(|d| d["kind"] == kind)
                .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        };
        let services = defined("Service");
        let templates = defined("AnalysisTemplate");
        for rollout in docs.iter().filter(|d| d["kind"] == "Rollout") {
            let name = rollout["metadata"]["name"].as_str().unwrap();
            let strategy = &rollout["spec"]["strategy"];
            let mut wanted = BTreeSet::new();
            for key in [
                "canaryService",
                "stableService",
                "activeService",
                "previewService",
                "rootService",
            ] {
                strings_under(strategy, key, &mut wanted);
            }
            for service in &wanted {
                assert!(
                    services.contains(service),
                    "{}: {name} names Service {service}",
                    path.display()
                );
            }
            let mut wanted = BTreeSet::new();
            strings_under(strategy, "templateName", &mut wanted);
            for template in &wanted {
                assert!(
                    templates.contains(template),
                    "{}: {name} names AnalysisTemplate {template}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn template_names_do_not_collide_across_examples() {
    // The examples may all be applied to one namespace; two files must not define the same object.
    let mut seen = BTreeSet::new();
    for path in example_files() {
        for doc in documents(&path) {
            let key = (
                doc["kind"].as_str().unwrap().to_owned(),
                doc["metadata"]["name"].as_str().unwrap().to_owned(),
            );
            assert!(
                seen.insert(key.clone()),
                "{}: {key:?} is defined twice",
                path.display()
            );
        }
    }
}
