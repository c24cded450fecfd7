//! One analysis of an experiment: its AnalysisRun is created once every template is available,
//! followed while it runs, and terminated when the experiment ends (Argo's
//! `reconcileAnalysisRun`).

use super::{Action, Planner, RunRequest, args};
use crate::api::argo::analysis::{AnalysisPhase, Argument};
use crate::api::argo::experiment::{ExperimentAnalysisRunStatus, ExperimentAnalysisTemplateRef};

/// The run's name: `<experiment>-<analysis>`, as Argo names it.
pub fn run_name(experiment: &str, analysis: &str) -> String {
    format!("{experiment}-{analysis}")
}

/// Plan the analysis' run and update its status.
pub(super) fn reconcile(planner: &mut Planner<'_>, analysis: &ExperimentAnalysisTemplateRef) {
    let previous = planner
        .input
        .status
        .analysis_runs
        .iter()
        .find(|r| r.name == analysis.name)
        .cloned()
        .unwrap_or_else(|| ExperimentAnalysisRunStatus {
            name: analysis.name.clone(),
            ..Default::default()
        });
    let mut status = previous.clone();
    step(planner, analysis, &mut status);
    if status.phase != previous.phase
        && let Some(phase) = status.phase
    {
        let from = previous.phase.map_or(String::new(), |p| p.to_string());
        let mut message = format!(
            "AnalysisRun '{}' transitioned from {from} -> {phase}",
            analysis.name
        );
        if let Some(why) = status.message.as_deref().filter(|m| !m.is_empty()) {
            message = format!("{message}: {why}");
        }
        let warning = matches!(
            phase,
            AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
        );
        planner.event(warning, run_reason(phase), message);
    }
    match planner
        .status
        .analysis_runs
        .iter_mut()
        .find(|r| r.name == status.name)
    {
        Some(slot) => *slot = status,
        None => planner.status.analysis_runs.push(status),
    }
}

fn step(
    planner: &mut Planner<'_>,
    analysis: &ExperimentAnalysisTemplateRef,
    status: &mut ExperimentAnalysisRunStatus,
) {
    // No run before every template is available (by the status the plan started from).
    if planner.input.status.available_at.is_none() {
        return;
    }
    if status.analysis_run.is_empty() {
        if planner.terminating {
            return;
        }
        let args = match args::resolve(planner, analysis) {
            Ok(args) => args,
            Err(why) => {
                // Argo's createAnalysisRun error: the analysis errs, which ends the experiment.
                status.phase = Some(AnalysisPhase::Error);
                status.message = Some(format!(
                    "Failed to create AnalysisRun for analysis '{}': {why}",
                    analysis.name
                ));
                return;
            }
        };
        let name = run_name(planner.input.name, &analysis.name);
        planner.actions.push(Action::CreateAnalysisRun(request(
            planner,
            analysis,
            name.clone(),
            args,
        )));
        status.analysis_run = name;
        status.phase = Some(AnalysisPhase::Pending);
        return;
    }
    if status.phase.is_some_and(AnalysisPhase::is_completed) {
        return;
    }
    let observed = planner
        .input
        .observed
        .analysis_runs
        .get(&status.analysis_run)
        .cloned();
    // A run just created may not be in the watch cache yet: keep what the status says.
    let Some((phase, message)) = observed else {
        return;
    };
    if planner.terminating {
        // Argo leaves a terminated run's phase out of the verdict: ending an experiment is no
        // judgement of its analyses.
        if !phase.is_completed() {
            planner.actions.push(Action::TerminateAnalysisRun {
                name: status.analysis_run.clone(),
            });
        }
        return;
    }
    status.phase = Some(phase);
    status.message = message;
}

fn request(
    planner: &Planner<'_>,
    analysis: &ExperimentAnalysisTemplateRef,
    name: String,
    args: Vec<Argument>,
) -> RunRequest {
    let spec = planner.input.spec;
    let metadata = spec.analysis_run_metadata.clone().unwrap_or_default();
    RunRequest {
        name,
        template: (
            analysis.template_name.clone(),
            analysis.cluster_scope.unwrap_or(false),
        ),
        args,
        dry_run: spec.dry_run.clone(),
        measurement_retention: spec.measurement_retention.clone(),
        labels: metadata.labels.unwrap_or_default(),
        annotations: metadata.annotations.unwrap_or_default(),
    }
}

/// Argo's `analysisutil.IsWorse` order, best first.
fn rank(phase: Option<AnalysisPhase>) -> usize {
    match phase {
        None | Some(AnalysisPhase::Successful) => 0,
        Some(AnalysisPhase::Pending) => 1,
        Some(AnalysisPhase::Running) => 2,
        Some(AnalysisPhase::Inconclusive) => 3,
        Some(AnalysisPhase::Error) => 4,
        Some(AnalysisPhase::Failed) => 5,
    }
}

/// Argo's `assessAnalysisRuns`: the worst analysis phase and its message. No analyses:
/// Successful. While the experiment is being terminated, runs that had not completed do not
/// count (their termination is not a verdict).
pub(super) fn assess(planner: &Planner<'_>) -> (AnalysisPhase, Option<String>) {
    let mut worst: Option<AnalysisPhase> = None;
    let mut message = None;
    for analysis in &planner.input.spec.analyses {
        let status = planner
            .status
            .analysis_runs
            .iter()
            .find(|r| r.name == analysis.name);
        let mut phase = status.and_then(|s| s.phase);
        if planner.terminating && !phase.is_some_and(AnalysisPhase::is_completed) {
            phase = None;
        }
        if rank(phase) > rank(worst) {
            worst = phase;
            message = status.and_then(|s| s.message.clone());
        }
    }
    if super::required_successful(planner.input.spec, &planner.status)
        && rank(worst) < rank(Some(AnalysisPhase::Running))
    {
        return (
            AnalysisPhase::Successful,
            Some("Required AnalysisRuns completed".into()),
        );
    }
    match worst {
        None => (AnalysisPhase::Successful, message),
        Some(AnalysisPhase::Pending) => (AnalysisPhase::Running, message),
        Some(phase) => (phase, message),
    }
}

fn run_reason(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Pending => "AnalysisRunPending",
        AnalysisPhase::Running => "AnalysisRunRunning",
        AnalysisPhase::Successful => "AnalysisRunSuccessful",
        AnalysisPhase::Failed => "AnalysisRunFailed",
        AnalysisPhase::Error => "AnalysisRunError",
        AnalysisPhase::Inconclusive => "AnalysisRunInconclusive",
    }
}
