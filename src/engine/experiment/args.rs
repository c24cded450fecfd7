//! The experiment's own placeholders in its analyses' argument values, filled in when a run is
//! created (Argo's `ResolveExperimentArgsValue`): `{{templates.<template>.podTemplateHash}}`,
//! `{{templates.<template>.replicaset.name}}`, `{{experiment.availableAt}}` and
//! `{{experiment.finishedAt}}` (availableAt + duration, RFC 3339).
//!
//! A value naming anything else cannot be resolved, as upstream: the analysis errs. `valueFrom`
//! arguments pass through untouched (the run resolves them). Never reads anything but the plan's
//! input.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Planner, replica_set_name};
use crate::api::argo::analysis::Argument;
use crate::api::argo::experiment::ExperimentAnalysisTemplateRef;
use crate::engine::analysis::tags::{FillError, fill};

/// The analysis' arguments with every value filled in, or why one cannot be (naming the
/// argument and the tag).
pub(super) fn resolve(
    planner: &Planner<'_>,
    analysis: &ExperimentAnalysisTemplateRef,
) -> Result<Vec<Argument>, String> {
    let values = values(planner);
    analysis
        .args
        .iter()
        .map(|arg| {
            let Some(value) = &arg.value else {
                return Ok(arg.clone());
            };
            let filled = fill(value, |tag| values.get(tag).cloned().ok_or(tag.to_owned()));
            let value = filled.map_err(|e| match e {
                FillError::Unterminated => format!(
                    "argument {:?}: `{{{{` is never closed by `}}}}`: close it or remove it",
                    arg.name
                ),
                FillError::Tag(tag) => format!(
                    "argument {:?}: failed to resolve {{{{{tag}}}}}: an experiment fills in \
                     templates.<template>.podTemplateHash, templates.<template>.replicaset.name, \
                     experiment.availableAt and experiment.finishedAt (of its own templates)",
                    arg.name
                ),
            })?;
            Ok(Argument {
                value: Some(value),
                ..arg.clone()
            })
        })
        .collect()
}

/// What each placeholder stands for now (only what exists: a template without a ReplicaSet has
/// no hash yet).
fn values(planner: &Planner<'_>) -> BTreeMap<String, String> {
    let input = planner.input;
    let mut values = BTreeMap::new();
    if let Some(at) = &input.status.available_at {
        values.insert("experiment.availableAt".to_owned(), at.0.to_string());
        if let Ok(Some(seconds)) = input.spec.duration_seconds() {
            let end = at.0 + Duration::from_secs(seconds.unsigned_abs());
            values.insert("experiment.finishedAt".to_owned(), end.to_string());
        }
    }
    for template in &input.spec.templates {
        if let Some(rs) = input.observed.replica_sets.get(&template.name) {
            let prefix = format!("templates.{}", template.name);
            values.insert(
                format!("{prefix}.podTemplateHash"),
                rs.pod_template_hash.clone(),
            );
            values.insert(
                format!("{prefix}.replicaset.name"),
                replica_set_name(input.name, &template.name),
            );
        }
    }
    values
}
