//! `sluice simulate -f rollout.yaml`: preview how a Rollout's canary steps will play out, offline.
//!
//! Deploys the Rollout into the engine's simulated cluster, rolls out a new image and prints every
//! change of step, weight, replicas and phase, promoting indefinite pauses and answering analyses
//! as told. Nothing here talks to a cluster.

use std::fmt::Write as _;

use crate::api::argo::Rollout;
use crate::api::argo::rollout::{PauseReason, RolloutPhase};
use crate::engine::intent::Intent;
use crate::engine::sim::Simulation;
use crate::engine::{AnalysisPhase, validate};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: no Rollout (apiVersion argoproj.io/v1alpha1, kind Rollout) found")]
    NoRollout { path: String },
    #[error("{path}: the Rollout does not parse: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: the Rollout is invalid: {0}", .errors.join("; "))]
    Invalid { path: String, errors: Vec<String> },
}

/// How the simulated analyses answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Verdict {
    Successful,
    Failed,
    Inconclusive,
}

/// Read the first Rollout in `path` and simulate an update to `image` (default: `<image>-next`).
pub fn run(path: &str, image: Option<&str>, verdict: Verdict) -> Result<String, SimulateError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Read {
        path: path.into(),
        source,
    })?;
    let mut rollout = None;
    let mut deployments = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize_yaml(document).map_err(|source| {
            SimulateError::Yaml {
                path: path.into(),
                source,
            }
        })?;
        if value["kind"] == "Rollout"
            && value["apiVersion"] == "argoproj.io/v1alpha1"
            && rollout.is_none()
        {
            rollout = Some(serde_json::from_value::<Rollout>(value).map_err(|source| {
                SimulateError::Parse {
                    path: path.into(),
                    source,
                }
            })?);
        } else if value["kind"] == "Deployment" {
            deployments.push(value);
        }
    }
    let mut rollout = rollout.ok_or_else(|| SimulateError::NoRollout { path: path.into() })?;
    // A workloadRef takes its template and selector from a Deployment; use it if the file has it.
    if let Some(name) = rollout
        .spec
        .workload_ref
        .as_ref()
        .and_then(|w| w.name.clone())
    {
        let deployment = deployments
            .iter()
            .find(|d| d["metadata"]["name"] == name.as_str())
            .ok_or_else(|| SimulateError::Invalid {
                path: path.into(),
                errors: vec![format!(
                    "spec.workloadRef: Deployment {name:?} is not in this file"
                )],
            })?;
        rollout.spec.template = serde_json::from_value(deployment["spec"]["template"].clone()).ok();
        rollout.spec.selector = serde_json::from_value(deployment["spec"]["selector"].clone()).ok();
        rollout.spec.workload_ref = None;
    }
    let errors = validate::validate(&rollout.spec);
    if !errors.is_empty() {
        return Err(SimulateError::Invalid {
            path: path.into(),
            errors: errors.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(simulate(&rollout, image, verdict))
}

trait DeserializeYaml: Sized {
    fn deserialize_yaml(document: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl DeserializeYaml for serde_json::Value {
    fn deserialize_yaml(document: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(document)
    }
}

/// Simulate an update of `rollout` and describe it, one line per visible change.
pub fn simulate(rollout: &Rollout, image: Option<&str>, verdict: Verdict) -> String {
    let name = rollout
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "rollout".into());
    let mut sim = Simulation::new(&name, rollout.spec.clone());
    sim.settle();
    let start = sim.observed.now.as_second();
    let current_image = rollout
        .spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let next_image = image.map_or_else(|| format!("{current_image}-next"), str::to_string);
    let steps = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map_or(0, |c| c.steps().len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Rollout {name}: {} replicas, {steps} steps; updating {current_image} -> {next_image}",
        rollout.spec.replicas()
    );
    sim.set_image(&next_image);
    let stable = sim.status.stable_rs.clone();
    let mut last_line = String::new();
    for _ in 0..500 {
        let plan = sim.tick();
        let canary = sim.status.current_pod_hash.clone();
        let line = format!(
            "step {}/{steps}  canary {}/{} pods  stable {} pods  weight {}  {:?}{}",
            sim.status.current_step_index.unwrap_or(0),
            sim.rs(&canary).map_or(0, |rs| rs.available_replicas),
            rollout.spec.replicas(),
            if stable == canary {
                0
            } else {
                sim.rs(&stable).map_or(0, |rs| rs.available_replicas)
            },
            sim.observed
                .traffic
                .as_ref()
                .map_or("-".to_string(), |t| format!("{}%", t.canary_weight)),
            sim.status.phase.unwrap_or(RolloutPhase::Progressing),
            if sim.status.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", sim.status.message)
            },
        );
        for action in &plan.actions {
            if let crate::engine::Action::Event(event) = action {
                let _ = writeln!(
                    out,
                    "t+{:>4}s  event   {}: {}",
                    sim.observed.now.as_second() - start,
                    event.reason,
                    event.message
                );
            }
        }
        if line != last_line {
            let _ = writeln!(
                out,
                "t+{:>4}s  status  {line}",
                sim.observed.now.as_second() - start
            );
            last_line = line;
        }
        let done =
            sim.status.stable_rs == canary && sim.status.phase == Some(RolloutPhase::Healthy);
        if done || sim.status.phase == Some(RolloutPhase::Degraded) {
            break;
        }
        if let Some(run) = sim
            .observed
            .analysis_runs
            .iter()
            .find(|r| r.phase == AnalysisPhase::Running)
            .map(|r| r.name.clone())
        {
            let phase = match verdict {
                Verdict::Successful => AnalysisPhase::Successful,
                Verdict::Failed => AnalysisPhase::Failed,
                Verdict::Inconclusive => AnalysisPhase::Inconclusive,
            };
            let _ = writeln!(
                out,
                "t+{:>4}s  answer  AnalysisRun {run} is {}",
                sim.observed.now.as_second() - start,
                phase.as_str()
            );
            sim.set_run_phase(&run, phase, "simulated verdict");
            continue;
        }
        if let Some(experiment) = sim
            .observed
            .experiments
            .iter_mut()
            .find(|e| e.phase == AnalysisPhase::Running)
        {
            // An experiment's verdict is its analyses' (or, without any, its duration's end).
            experiment.phase = match verdict {
                Verdict::Successful => AnalysisPhase::Successful,
                Verdict::Failed => AnalysisPhase::Failed,
                Verdict::Inconclusive => AnalysisPhase::Inconclusive,
            };
            experiment.message = "simulated verdict".into();
            let _ = writeln!(
                out,
                "t+{:>4}s  answer  Experiment {} is {}",
                sim.observed.now.as_second() - start,
                experiment.name,
                experiment.phase.as_str()
            );
            continue;
        }
        // ReleaseTraffic is planned on every settled reconcile: only other actions change things.
        if plan.actions.iter().any(|a| {
            !matches!(
                a,
                crate::engine::Action::Event(_) | crate::engine::Action::ReleaseTraffic
            )
        }) {
            continue;
        }
        let waiting_for_user = sim.status.pause_conditions.iter().any(|c| {
            c.reason == PauseReason::InconclusiveAnalysisRun
                || c.reason == PauseReason::InconclusiveExperiment
                || (matches!(
                    c.reason,
                    PauseReason::CanaryPauseStep | PauseReason::BlueGreenPause
                ) && plan.requeue_after.is_none())
        });
        if waiting_for_user {
            let _ = writeln!(
                out,
                "t+{:>4}s  user    kubectl argo rollouts promote {name}",
                sim.observed.now.as_second() - start
            );
            sim.intent(Intent::Promote);
        } else {
            sim.advance(
                plan.requeue_after
                    .map_or(1, |wait| wait.as_secs().max(1) as i64),
            );
        }
    }
    let outcome = match sim.status.phase {
        Some(RolloutPhase::Healthy) => format!("promoted {next_image}"),
        Some(RolloutPhase::Degraded) => {
            format!("rolled back to the stable version ({})", sim.status.message)
        }
        other => format!("stopped in phase {other:?}"),
    };
    let _ = writeln!(
        out,
        "Result after {}s: {outcome}",
        sim.observed.now.as_second() - start
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Rollout {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
                "strategy": {"canary": {"steps": [
                    {"setWeight": 25}, {"pause": {}}, {"analysis": {"templates": [{"templateName": "ok"}]}},
                    {"setWeight": 75}, {"pause": {"duration": "1m"}}
                ]}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_successful_update_is_promoted() {
        let out = simulate(&example(), Some("web:2"), Verdict::Successful);
        assert!(out.contains("kubectl argo rollouts promote web"), "{out}");
        assert!(out.contains("canary 1/4 pods"), "{out}");
        assert!(out.contains("Result after 60s: promoted web:2"), "{out}");
    }

    #[test]
    fn every_rollout_example_simulates_to_a_promotion() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/argo");
        let mut simulated = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.contains("kind: Rollout") {
                continue;
            }
            let out = run(path.to_str().unwrap(), Some("next:2"), Verdict::Successful).unwrap();
            assert!(
                out.lines().last().unwrap().contains("promoted next:2"),
                "{}: {out}",
                path.display()
            );
            if text.contains("analysis:") {
                let out = run(path.to_str().unwrap(), Some("next:2"), Verdict::Failed).unwrap();
                assert!(out.contains("rolled back"), "{}: {out}", path.display());
            }
            simulated += 1;
        }
        assert!(simulated >= 8, "only {simulated} canary examples");
    }

    #[test]
    fn invalid_rollouts_are_reported_not_simulated() {
        let dir = std::env::temp_dir().join(format!("sluice-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        let mut rollout = serde_json::to_value(example()).unwrap();
        rollout["spec"]["strategy"]["canary"]["steps"] = serde_json::json!([{"setWeight": 120}]);
        std::fs::write(&path, serde_yaml::to_string(&rollout).unwrap()).unwrap();
        let err = run(path.to_str().unwrap(), None, Verdict::Successful).unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.strategy.canary.steps[0].setWeight"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_analysis_rolls_back() {
        let out = simulate(&example(), None, Verdict::Failed);
        assert!(out.contains("AnalysisRun"), "{out}");
        assert!(out.contains("rolled back to the stable version"), "{out}");
    }
}
