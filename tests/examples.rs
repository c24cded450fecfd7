//! Every `examples/**/*.yaml` is a manifest a user could apply as it is.
//!
//! Each document must be a Kubernetes object (`apiVersion`, `kind`, `metadata.name`, no
//! `metadata.namespace`: examples go wherever they are applied). Documents of Sluice's kinds must
//! also deserialise into Sluice's typed structs, serialise back to the identical JSON, and pass
//! `sluice::api::validate::validate_manifest` (no field the apiserver would prune, CEL rules hold).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use sluice::api::validate::{is_sluice_kind, validate_manifest};
use sluice::api::{argo, flagger};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    yaml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &mut files,
    );
    files.sort();
    files
}

/// Deserialises `doc` as `K` and serialises it back.
fn round_trip<K: Serialize + DeserializeOwned>(doc: &Value) -> Result<Value, String> {
    let typed: K =
        serde_json::from_value(doc.clone()).map_err(|e| format!("does not deserialise: {e}"))?;
    serde_json::to_value(&typed).map_err(|e| format!("does not serialise: {e}"))
}

/// The typed round trip for each of Sluice's kinds.
fn typed_round_trip(api_version: &str, kind: &str, doc: &Value) -> Option<Result<Value, String>> {
    Some(match (api_version, kind) {
        ("argoproj.io/v1alpha1", "Rollout") => round_trip::<argo::Rollout>(doc),
        ("argoproj.io/v1alpha1", "AnalysisTemplate") => round_trip::<argo::AnalysisTemplate>(doc),
        ("argoproj.io/v1alpha1", "ClusterAnalysisTemplate") => {
            round_trip::<argo::ClusterAnalysisTemplate>(doc)
        }
        ("argoproj.io/v1alpha1", "AnalysisRun") => round_trip::<argo::AnalysisRun>(doc),
        ("argoproj.io/v1alpha1", "Experiment") => round_trip::<argo::Experiment>(doc),
        ("flagger.app/v1beta1", "Canary") => round_trip::<flagger::Canary>(doc),
        ("flagger.app/v1beta1", "MetricTemplate") => round_trip::<flagger::MetricTemplate>(doc),
        ("flagger.app/v1beta1", "AlertProvider") => round_trip::<flagger::AlertProvider>(doc),
        _ => return None,
    })
}

/// The first path at which two JSON values differ, for a readable failure.
fn first_difference(path: &str, left: &Value, right: &Value) -> Option<String> {
    match (left, right) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                let child = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => {
                        if let Some(found) = first_difference(&child, x, y) {
                            return Some(found);
                        }
                    }
                    (Some(x), None) => return Some(format!("{child}: {x} was dropped")),
                    (None, Some(y)) => return Some(format!("{child}: {y} was added")),
                    (None, None) => unreachable!(),
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y)),
        _ if left == right => None,
        _ => Some(format!("{path}: {left} became {right}")),
    }
}

struct Document {
    file: PathBuf,
    index: usize,
    value: Value,
}

fn documents(files: &[PathBuf]) -> (Vec<Document>, Vec<String>) {
    let mut documents = Vec::new();
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(value) => documents.push(Document {
                    file: file.clone(),
                    index,
                    value,
                }),
                Err(e) => {
                    // The parser cannot resynchronise after an error.
                    failures.push(format!(
                        "{} document {index}: not YAML: {e}",
                        file.display()
                    ));
                    break;
                }
            }
        }
    }
    (documents, failures)
}

#[test]
fn every_example_is_a_valid_manifest() {
    let files = example_files();
    let (documents, mut failures) = documents(&files);
    let mut sluice_documents = 0;
    for Document { file, index, value } in &documents {
        let at = format!("{} document {index}", file.display());
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        let kind = value.get("kind").and_then(Value::as_str);
        let name = value.pointer("/metadata/name").and_then(Value::as_str);
        let (Some(api_version), Some(kind), Some(name)) = (api_version, kind, name) else {
            failures.push(format!(
                "{at}: not a Kubernetes object (apiVersion, kind and metadata.name are required)"
            ));
            continue;
        };
        let at = format!("{at} ({kind} {name})");
        if value.pointer("/metadata/namespace").is_some() {
            failures.push(format!(
                "{at}: has metadata.namespace; examples are applied to any namespace"
            ));
        }
        if !is_sluice_kind(api_version, kind) {
            continue;
        }
        sluice_documents += 1;
        match typed_round_trip(api_version, kind, value) {
            None => failures.push(format!(
                "{at}: a Sluice kind this test has no typed struct for; add it here"
            )),
            Some(Err(e)) => failures.push(format!("{at}: {e}")),
            Some(Ok(back)) => {
                if let Some(difference) = first_difference("", value, &back) {
                    failures.push(format!(
                        "{at}: changed by a typed round trip at {difference}"
                    ));
                }
            }
        }
        if let Err(errors) = validate_manifest(value) {
            for error in errors {
                failures.push(format!("{at}: {error}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) in examples/:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(sluice_documents > 0, "no example holds a Sluice object");
}

#[test]
fn examples_cover_both_apis() {
    let files = example_files();
    assert!(
        files.len() >= 12,
        "only {} example files under examples/",
        files.len()
    );
    let (documents, _) = documents(&files);
    for group in ["argoproj.io/", "flagger.app/"] {
        assert!(
            documents.iter().any(|d| {
                let api_version = d
                    .value
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let kind = d
                    .value
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                api_version.starts_with(group) && is_sluice_kind(api_version, kind)
            }),
            "no example uses {group}"
        );
    }
    for kind in [
        "Canary",
        "MetricTemplate",
        "AlertProvider",
        "Rollout",
        "AnalysisTemplate",
    ] {
        assert!(
            documents
                .iter()
                .any(|d| d.value.get("kind").and_then(Value::as_str) == Some(kind)),
            "no example has a {kind}"
        );
    }
}

#[test]
fn round_trip_differences_are_reported_by_path() {
    let before = serde_json::json!({"spec": {"a": [1, {"b": 2}], "c": true}});
    let after = serde_json::json!({"spec": {"a": [1, {"b": 3}]}});
    assert_eq!(
        first_difference("", &before, &after).as_deref(),
        Some(".spec.a[1].b: 2 became 3")
    );
    let after = serde_json::json!({"spec": {"a": [1, {"b": 2}]}});
    assert_eq!(
        first_difference("", &before, &after).as_deref(),
        Some(".spec.c: true was dropped")
    );
    assert_eq!(first_difference("", &before, &before), None);
}
