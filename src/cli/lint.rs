//! `sluice lint -f FILE`: offline validation, with the errors the apiserver and the engine would
//! give, each naming its field.
//!
//! Three layers, in the order a manifest meets them: the CRD schema and CEL rules
//! ([`crate::api::validate`]), the engine's InvalidSpec checks for Rollouts
//! ([`crate::engine::validate`]) and the analysis checks for templates
//! ([`crate::engine::analysis::run::validate_template`]). Documents of other kinds pass untouched.

use serde::Deserialize;
use serde_json::Value;

use crate::api::argo::analysis::{AnalysisTemplateSpec, ClusterAnalysisTemplate};
use crate::api::argo::rollout::Rollout;
use crate::api::validate::{is_sluice_kind, validate_manifest};

/// Why a file could not be linted at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// What lint found in one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Documents of Sluice's kinds that were checked.
    pub checked: usize,
    /// `Kind/name: field: message` lines that make the file invalid.
    pub errors: Vec<String>,
    /// Valid on the wire but not acted on by this version (e.g. blue-green).
    pub warnings: Vec<String>,
}

/// InvalidSpec messages for features Sluice accepts but does not run yet: warnings, not errors,
/// since the apiserver accepts such manifests and Argo would run them.
const NOT_SUPPORTED: &str = "not supported by this version of Sluice";

/// Lints every document of a YAML stream.
pub fn lint_text(text: &str) -> Report {
    let mut report = Report::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(doc) => doc,
            Err(e) => {
                report
                    .errors
                    .push(format!("document {index}: not valid YAML: {e}"));
                break;
            }
        };
        lint_document(index, &doc, &mut report);
    }
    report
}

/// Lints a file.
pub fn lint_file(path: &str) -> Result<Report, Error> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| Error::Read {
        path: path.to_string(),
        source,
    })?;
    Ok(lint_text(&text))
}

fn lint_document(index: usize, doc: &Value, report: &mut Report) {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let what = if kind.is_empty() {
        format!("document {index}")
    } else {
        format!("{kind}/{name}")
    };
    if is_sluice_kind(api_version, kind) {
        report.checked += 1;
    }
    if let Err(errors) = validate_manifest(doc) {
        for e in errors {
            report.errors.push(format!("{what}: {e}"));
        }
        // The engine's checks assume a structurally valid object.
        return;
    }
    if !is_sluice_kind(api_version, kind) {
        return;
    }
    match kind {
        "Rollout" => match serde_json::from_value::<Rollout>(doc.clone()) {
            Ok(rollout) => {
                for problem in crate::engine::validate::validate(&rollout.spec) {
                    let line = format!("{what}: InvalidSpec: {problem}");
                    if problem.message.contains(NOT_SUPPORTED) {
                        report.warnings.push(line);
                    } else {
                        report.errors.push(line);
                    }
                }
            }
            Err(e) => report.errors.push(format!("{what}: {e}")),
        },
        "AnalysisTemplate" | "ClusterAnalysisTemplate" => {
            // Both kinds share the spec type.
            match serde_json::from_value::<ClusterAnalysisTemplate>(doc.clone()) {
                Ok(template) => template_errors(&what, &template.spec.template, report),
                Err(e) => report.errors.push(format!("{what}: {e}")),
            }
        }
        _ => {}
    }
}

fn template_errors(what: &str, spec: &AnalysisTemplateSpec, report: &mut Report) {
    if let Err(errors) = crate::engine::analysis::run::validate_template(spec) {
        for e in errors {
            report
                .errors
                .push(format!("{what}: spec.{}: {}", e.field, e.message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_rollout_passes_and_other_kinds_are_ignored() {
        let report = lint_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
             apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  \
             selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
             spec: {containers: [{name: web, image: nginx}]}\n  strategy:\n    canary:\n      \
             steps: [{setWeight: 20}, {pause: {}}]\n",
        );
        assert_eq!(report.checked, 1);
        assert_eq!(report.errors, Vec::<String>::new());
    }

    #[test]
    fn engine_checks_name_the_field() {
        let report = lint_text(
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  \
             selector: {matchLabels: {app: web}}\n  strategy:\n    canary: {}\n",
        );
        assert!(
            report.errors.iter().any(|e| e.contains("spec.template")),
            "{report:?}"
        );
    }

    #[test]
    fn a_condition_that_does_not_parse_is_an_error_on_the_template() {
        let report = lint_text(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  \
             metrics:\n  - name: m\n    successCondition: 'result[0] >='\n    \
             provider: {prometheus: {address: 'http://p', query: up}}\n",
        );
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.starts_with("AnalysisTemplate/t: spec.metrics[0]")),
            "{report:?}"
        );
    }
}
