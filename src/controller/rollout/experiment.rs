//! The Experiment of a canary `experiment:` step, built as Argo's `GetExperimentFromTemplate`
//! builds it: each template copies the pod template, selector and `minReadySeconds` of the stable
//! or the canary ReplicaSet (`specRef`), the step's labels and annotations added; the Experiment
//! carries the Rollout's labels, its pod-template hash and revision, and is owned by the Rollout.
//!
//! This module must never decide when an Experiment is created or terminated (the engine's
//! `CreateExperiment` / `TerminateExperiment` actions do).

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::{Resource, ResourceExt};

use crate::api::argo::analysis::Argument;
use crate::api::argo::experiment::{
    Experiment, ExperimentAnalysisTemplateRef, ExperimentSpec, ExperimentTemplate,
};
use crate::api::argo::rollout::{
    POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout, RolloutExperimentStep,
    RolloutExperimentTemplate, TemplateService,
};
use crate::engine::ExperimentRequest;
use crate::engine::analysis::args::{self, ArgsError};

/// The Experiment `request` asks for: `step` is the Rollout's experiment step at
/// `request.step_index`; `stable` and `canary` are the ReplicaSets of the request's hashes.
pub fn build(
    rollout: &Rollout,
    step: &RolloutExperimentStep,
    request: &ExperimentRequest,
    stable: &ReplicaSet,
    canary: &ReplicaSet,
) -> Result<Experiment, ArgsError> {
    let rollout_json = serde_json::to_value(rollout).unwrap_or_default();
    let mut analyses = Vec::new();
    for analysis in &request.analyses {
        let mut step_args = analysis.args.clone().unwrap_or_default();
        args::resolve_field_refs(&mut step_args, &rollout_json)?;
        analyses.push(ExperimentAnalysisTemplateRef {
            name: analysis.name.clone(),
            template_name: analysis.template_name.clone(),
            cluster_scope: analysis.cluster_scope,
            args: step_args
                .into_iter()
                .map(|a| Argument {
                    name: a.name,
                    value: a.value,
                    value_from: None,
                })
                .collect(),
            required_for_completion: analysis.required_for_completion,
        });
    }
    let templates = step
        .templates
        .iter()
        .map(|t| {
            template(
                t,
                if t.spec_ref == "stable" {
                    stable
                } else {
                    canary
                },
            )
        })
        .collect();
    let spec = ExperimentSpec {
        templates,
        duration: step.duration.clone(),
        progress_deadline_seconds: rollout.spec.progress_deadline_seconds,
        analyses,
        scale_down_delay_seconds: step.scale_down_delay_seconds,
        dry_run: step.dry_run.clone().unwrap_or_default(),
        analysis_run_metadata: step.analysis_run_metadata.clone(),
        ..ExperimentSpec::default()
    };
    let mut experiment = Experiment::new(&request.name, spec);
    experiment.metadata.namespace = rollout.namespace();
    let mut labels = rollout.labels().clone();
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), request.canary_hash.clone());
    experiment.metadata.labels = Some(labels);
    experiment.metadata.annotations = Some(
        [(
            REVISION_ANNOTATION.to_string(),
            request.revision.to_string(),
        )]
        .into_iter()
        .collect(),
    );
    experiment.metadata.owner_references = rollout.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(experiment)
}

/// One template: the ReplicaSet's pod template with the step's metadata.
fn template(step: &RolloutExperimentTemplate, rs: &ReplicaSet) -> ExperimentTemplate {
    let rs_spec = rs.spec.clone().unwrap_or_default();
    let mut pod = rs_spec.template.unwrap_or_default();
    let mut selector = step.selector.clone().unwrap_or(rs_spec.selector);
    let meta = pod.metadata.get_or_insert_with(Default::default);
    if let Some(metadata) = &step.metadata {
        for (key, value) in metadata.labels.iter().flatten() {
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(key.clone(), value.clone());
            selector
                .match_labels
                .get_or_insert_with(Default::default)
                .insert(key.clone(), value.clone());
        }
        for (key, value) in metadata.annotations.iter().flatten() {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(key.clone(), value.clone());
        }
    }
    // Argo gives a template a Service when it has a weight or asks for one.
    let service = (step.weight.is_some() || step.service.is_some()).then(|| TemplateService {
        name: step.service.as_ref().and_then(|s| s.name.clone()),
    });
    ExperimentTemplate {
        name: step.name.clone(),
        replicas: step.replicas,
        min_ready_seconds: rs_spec.min_ready_seconds,
        selector,
        template: pod,
        service,
    }
}
