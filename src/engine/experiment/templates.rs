//! One template of an experiment: its ReplicaSet (created, scaled, scaled down after the delay),
//! its Service, and its status (Progressing → Running → Successful, or Failed past the progress
//! deadline), as Argo's `reconcileTemplate` decides them.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Action, Planner};
use crate::api::argo::analysis::AnalysisPhase;
use crate::api::argo::experiment::{ExperimentTemplate, TemplateStatus, TemplateStatusCode};
use crate::api::argo::rollout::POD_TEMPLATE_HASH_LABEL;
use crate::engine::hash::pod_template_hash;

/// A template's ReplicaSet (and default Service) name: `<experiment>-<template>`, as Argo names it.
pub fn replica_set_name(experiment: &str, template: &str) -> String {
    format!("{experiment}-{template}")
}

/// The template's pod-template hash: over its template without a hash label, as Argo's
/// `newReplicaSetFromTemplate`.
pub fn template_hash(template: &ExperimentTemplate, collision_count: Option<i32>) -> String {
    pod_template_hash(&without_hash_label(&template.template), collision_count)
}

/// `template` without the `rollouts-pod-template-hash` label.
pub fn without_hash_label(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    template
}

/// Why the template's selector cannot select its pods (only `matchLabels` is checked, as the
/// apiserver's ReplicaSet validation would refuse the rest anyway).
pub fn selector_error(template: &ExperimentTemplate) -> Option<String> {
    let wanted = template.selector.match_labels.as_ref()?;
    let labels = template
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let missing = wanted
        .iter()
        .find(|(k, v)| labels.and_then(|l| l.get(*k)) != Some(*v))?;
    Some(format!(
        "matchLabels {}={} is not a label of the template's pods (template {:?})",
        missing.0, missing.1, template.name
    ))
}

/// Argo's `CalculateTemplateReplicasCount`: zero once the experiment ends or the template did.
fn desired_replicas(planner: &Planner<'_>, status: &TemplateStatus) -> i32 {
    if planner.terminating || status.status.is_some_and(TemplateStatusCode::is_completed) {
        0
    } else {
        0.max(
            planner
                .input
                .spec
                .templates
                .iter()
                .find(|t| t.name == status.name)
                .map_or(0, ExperimentTemplate::replicas),
        )
    }
}

/// Plan the template's objects and update its status.
pub(super) fn reconcile(planner: &mut Planner<'_>, template: &ExperimentTemplate) {
    let previous = planner
        .input
        .status
        .template_statuses
        .iter()
        .find(|t| t.name == template.name)
        .cloned()
        .unwrap_or_else(|| TemplateStatus {
            name: template.name.clone(),
            ..Default::default()
        });
    let mut status = previous.clone();
    let desired = desired_replicas(planner, &status);
    let now = Time(planner.now());
    let observed = planner.input.observed.replica_sets.get(&template.name);
    match observed {
        None if !planner.finished() && !planner.terminating => {
            planner.actions.push(Action::CreateReplicaSet {
                template: template.name.clone(),
                pod_template_hash: template_hash(template, status.collision_count),
                replicas: desired,
            });
            status.last_transition_time = Some(now.clone());
        }
        None => {}
        Some(rs) => {
            let scaled = rs.replicas != desired && scale(planner, template, desired, rs);
            if scaled {
                status.last_transition_time = Some(now.clone());
            }
            // The Service goes with the scale-down to zero, so no client finds it selecting
            // pods that are going away (Argo waits for them to be gone).
            let gone = desired == 0 && (rs.replicas == 0 || scaled || rs.available_replicas == 0);
            service(planner, template, &mut status, desired, gone, rs);
        }
    }
    let counts = observed.map_or((0, 0, 0), |rs| {
        (rs.status_replicas, rs.ready_replicas, rs.available_replicas)
    });
    status.replicas = counts.0;
    status.updated_replicas = counts.0;
    status.ready_replicas = counts.1;
    status.available_replicas = counts.2;
    if (
        status.replicas,
        status.ready_replicas,
        status.available_replicas,
    ) != (
        previous.replicas,
        previous.ready_replicas,
        previous.available_replicas,
    ) {
        status.last_transition_time = Some(now.clone());
    }
    judge(planner, template, &mut status, desired);
    if status.status != previous.status {
        transition_event(planner, &previous, &status);
    }
    match planner
        .status
        .template_statuses
        .iter_mut()
        .find(|t| t.name == status.name)
    {
        Some(slot) => *slot = status,
        None => planner.status.template_statuses.push(status),
    }
}

/// Scale the ReplicaSet to `desired`; a scale-down waits out `scaleDownDelaySeconds` (recorded
/// as the `scale-down-deadline` annotation). Whether `spec.replicas` is changed now.
fn scale(
    planner: &mut Planner<'_>,
    template: &ExperimentTemplate,
    desired: i32,
    rs: &crate::engine::ReplicaSetObservation,
) -> bool {
    let name = template.name.clone();
    if desired == 0 {
        let delay = planner.input.spec.scale_down_delay_seconds();
        let deadline = match rs.scale_down_deadline {
            Some(deadline) => deadline,
            None if delay > 0 => {
                let deadline = planner.now() + Duration::from_secs(delay.unsigned_abs());
                planner.actions.push(Action::SetScaleDownDeadline {
                    template: name,
                    deadline: Some(deadline),
                });
                planner.requeue_at(deadline);
                return false;
            }
            None => planner.now(),
        };
        if planner.now() < deadline {
            planner.requeue_at(deadline);
            return false;
        }
    }
    planner.actions.push(Action::ScaleReplicaSet {
        template: template.name.clone(),
        replicas: desired,
    });
    true
}

/// The template's Service: created while it runs, deleted with its pods.
fn service(
    planner: &mut Planner<'_>,
    template: &ExperimentTemplate,
    status: &mut TemplateStatus,
    desired: i32,
    pods_gone: bool,
    rs: &crate::engine::ReplicaSetObservation,
) {
    let existing = planner.input.observed.services.get(&template.name).cloned();
    match (&template.service, existing) {
        // Argo makes no Service for pods without ports.
        (Some(wanted), None) if desired != 0 && has_ports(template) => {
            let name = wanted
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| replica_set_name(planner.input.name, &template.name));
            planner.actions.push(Action::CreateService {
                template: template.name.clone(),
                service: name.clone(),
                pod_template_hash: rs.pod_template_hash.clone(),
            });
            status.service_name = Some(name);
            status.pod_template_hash = Some(rs.pod_template_hash.clone());
        }
        (Some(_), Some(name)) if desired != 0 => {
            status.service_name = Some(name);
            status.pod_template_hash = Some(rs.pod_template_hash.clone());
        }
        (_, Some(name)) if pods_gone || template.service.is_none() => {
            planner.actions.push(Action::DeleteService {
                template: template.name.clone(),
                service: name,
            });
            status.service_name = None;
            status.pod_template_hash = None;
        }
        _ => {}
    }
}

fn has_ports(template: &ExperimentTemplate) -> bool {
    template.template.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .any(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
    })
}

/// Argo's template verdict; a completed verdict never changes again.
fn judge(
    planner: &mut Planner<'_>,
    template: &ExperimentTemplate,
    status: &mut TemplateStatus,
    desired: i32,
) {
    if status.status.is_some_and(TemplateStatusCode::is_completed) {
        return;
    }
    let exists = planner
        .input
        .observed
        .replica_sets
        .contains_key(&template.name);
    if exists && desired == status.available_replicas {
        status.status = Some(if planner.passed_duration() || planner.terminating {
            TemplateStatusCode::Successful
        } else {
            TemplateStatusCode::Running
        });
        return;
    }
    let seconds = planner.input.spec.progress_deadline_seconds();
    let from = status
        .last_transition_time
        .as_ref()
        .map_or(planner.now(), |t| t.0);
    let deadline = from + Duration::from_secs(seconds.unsigned_abs());
    if planner.now() > deadline {
        status.status = Some(TemplateStatusCode::Failed);
        status.message = Some(format!(
            "Template '{}' exceeded its progressDeadlineSeconds ({seconds})",
            template.name
        ));
    } else if planner.terminating {
        status.status = Some(TemplateStatusCode::Successful);
    } else {
        status.status = Some(TemplateStatusCode::Progressing);
        planner.requeue_at(deadline + Duration::from_secs(1));
    }
}

fn transition_event(planner: &mut Planner<'_>, previous: &TemplateStatus, status: &TemplateStatus) {
    let Some(code) = status.status else { return };
    let from = previous.status.map_or(String::new(), |s| format!("{s:?}"));
    let mut message = format!(
        "Template '{}' transitioned from {from} -> {code:?}",
        status.name
    );
    if let Some(why) = status.message.as_deref().filter(|m| !m.is_empty()) {
        message = format!("{message}: {why}");
    }
    let (warning, reason) = match code {
        TemplateStatusCode::Progressing => (false, "TemplateProgressing"),
        TemplateStatusCode::Running => (false, "TemplateRunning"),
        TemplateStatusCode::Successful => (false, "TemplateSuccessful"),
        TemplateStatusCode::Failed => (true, "TemplateFailed"),
        TemplateStatusCode::Error => (true, "TemplateError"),
    };
    planner.event(warning, reason, message);
}

/// Argo's `assessTemplates`: the worst template verdict as an experiment phase, and its message.
pub(super) fn assess(planner: &Planner<'_>) -> (AnalysisPhase, Option<String>) {
    let mut worst = TemplateStatusCode::Successful;
    let mut message = None;
    for template in &planner.input.spec.templates {
        let status = planner
            .status
            .template_statuses
            .iter()
            .find(|t| t.name == template.name);
        let code = status
            .and_then(|s| s.status)
            .unwrap_or(TemplateStatusCode::Progressing);
        if code > worst {
            worst = code;
            message = status.and_then(|s| s.message.clone());
        }
    }
    let phase = match worst {
        TemplateStatusCode::Progressing => AnalysisPhase::Pending,
        TemplateStatusCode::Running => AnalysisPhase::Running,
        TemplateStatusCode::Successful => AnalysisPhase::Successful,
        TemplateStatusCode::Failed => AnalysisPhase::Failed,
        TemplateStatusCode::Error => AnalysisPhase::Error,
    };
    (phase, message)
}
