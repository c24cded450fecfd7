//! `validate_manifest` agrees with the apiserver offline: every `tests/invalid/*.yaml` (which
//! `tests/e2e_smoke.rs` proves the real apiserver rejects) is rejected here too, with an error that
//! contains the same `# expect:` substring (see `tests/invalid/README.md`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use sluice::api::validate::{is_sluice_kind, validate_manifest};

fn invalid_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_invalid_manifest_is_rejected_offline_with_the_expected_error() {
    let files = invalid_files();
    assert!(!files.is_empty(), "tests/invalid holds no manifest");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy();
        let Some(expect) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
        else {
            failures.push(format!("{name}: first line is not `# expect: ...`"));
            continue;
        };
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}")))
            .filter(|d| !d.is_null())
            .collect();
        let [doc] = docs.as_slice() else {
            failures.push(format!("{name}: holds {} documents, not one", docs.len()));
            continue;
        };
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !is_sluice_kind(api_version, kind) {
            failures.push(format!(
                "{name}: {api_version} {kind} is not one of Sluice's kinds"
            ));
            continue;
        }
        match validate_manifest(doc) {
            Ok(()) => failures.push(format!(
                "{name}: accepted, but the apiserver rejects it ({expect})"
            )),
            Err(errors) => {
                let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
                if !shown.iter().any(|e| e.contains(expect)) {
                    failures.push(format!(
                        "{name}: no error contains {expect:?}; got {shown:?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests:\n  {}",
        failures.len(),
        files.len(),
        failures.join("\n  ")
    );
}
