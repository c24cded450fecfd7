//! The Helm chart rendered with the helm `tests/env/up` built: `helm template` with `--set`
//! values, and the rendered documents.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use super::TestEnv;
use super::service_account::run;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The env's helm, or `None` after printing "skipped: ..." (a panic instead when `CI=true`).
pub fn helm_or_skip(env: &TestEnv) -> Option<PathBuf> {
    if env.helm.is_none() {
        let msg = "skipped: the env file names no HELM (rerun tests/env/up, which builds helm)";
        if super::is_ci() {
            panic!("CI=true but {msg}");
        }
        eprintln!("{msg}");
    }
    env.helm.clone()
}

/// `helm template` of the chart into `namespace` with `--set` values.
pub fn render_chart(helm: &Path, namespace: &str, crds: bool, sets: &[&str]) -> String {
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

/// The documents of a YAML stream (empty ones skipped).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|d| !d.is_null())
        .collect()
}
