//! `sluice lint -f FILE`: offline validation, with the errors the apiserver and the engine would
//! give, each naming its field.
//!
//! Three layers, in the order a manifest meets them: the CRD schema and CEL rules
//! ([`crate::api::validate`]), the engine's InvalidSpec checks for Rollouts
//! ([`crate::engine::validate`]) and the analysis checks for templates
//! ([`crate::engine::analysis::run::validate_template`]); then each Rollout's analyses against the
//! templates defined in the same file (arguments, metric names). YAML is read as `kubectl` reads
//! it (YAML 1.1 booleans and numbers). Documents of other kinds pass untouched.

use serde_json::Value;

use crate::api::argo::analysis::{AnalysisTemplateSpec, ClusterAnalysisTemplate};
use crate::api::argo::rollout::Rollout;
use crate::api::validate::{is_sluice_kind, validate_manifest};
use crate::api::yaml;
use crate::engine::validate::{self, AnalysisProblem};

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

/// Lints every document of a YAML stream, read as `kubectl` reads it ([`crate::api::yaml`]),
/// then checks each Rollout's analyses against the templates the same stream defines.
pub fn lint_text(text: &str) -> Report {
    let mut report = Report::default();
    let docs = match yaml::documents(text) {
        Ok(docs) => docs,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let mut rollouts = Vec::new();
    let mut templates = Templates::new();
    for (index, doc) in docs.iter().enumerate() {
        if let Some(found) = lint_document(index, doc, &mut report) {
            match found {
                Found::Rollout(what, rollout) => rollouts.push((what, rollout)),
                Found::Template(key, spec) => {
                    templates.insert(key, spec);
                }
            }
        }
    }
    for (what, rollout) in &rollouts {
        cross_check(what, rollout, &templates, &mut report);
    }
    report
}

/// The templates a stream defines, by `(name, cluster scope)`.
type Templates = crate::engine::AnalysisTemplates;

/// A document the cross-checks need.
enum Found {
    Rollout(String, Box<Rollout>),
    Template((String, bool), AnalysisTemplateSpec),
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

fn lint_document(index: usize, doc: &Value, report: &mut Report) -> Option<Found> {
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
        return None;
    }
    if !is_sluice_kind(api_version, kind) {
        return None;
    }
    match kind {
        "Rollout" => match serde_json::from_value::<Rollout>(doc.clone()) {
            Ok(rollout) => {
                for problem in validate::validate(&rollout.spec) {
                    let line = format!("{what}: InvalidSpec: {problem}");
                    if problem.message.contains(NOT_SUPPORTED) {
                        report.warnings.push(line);
                    } else {
                        report.errors.push(line);
                    }
                }
                Some(Found::Rollout(what, Box::new(rollout)))
            }
            Err(e) => {
                report.errors.push(format!("{what}: {e}"));
                None
            }
        },
        "AnalysisTemplate" | "ClusterAnalysisTemplate" => {
            // Both kinds share the spec type.
            match serde_json::from_value::<ClusterAnalysisTemplate>(doc.clone()) {
                Ok(template) => {
                    let spec = template.spec.template;
                    template_errors(&what, &spec, report);
                    let key = (name.to_string(), kind == "ClusterAnalysisTemplate");
                    Some(Found::Template(key, spec))
                }
                Err(e) => {
                    report.errors.push(format!("{what}: {e}"));
                    None
                }
            }
        }
        _ => None,
    }
}

/// Checks each analysis of a Rollout with the engine's own check
/// ([`validate::resolve_analysis`]): duplicate metric names, arguments with no value (errors),
/// arguments no template declares (warnings). A template the file does not define is not guessed
/// at: that analysis is reported as not checked.
fn cross_check(what: &str, rollout: &Rollout, templates: &Templates, report: &mut Report) {
    for (field, analysis) in validate::canary_analyses(&rollout.spec) {
        match validate::resolve_analysis(analysis, &field, templates) {
            Ok(merged) => {
                for unused in merged.unused_args {
                    report.warnings.push(format!(
                        "{what}: {field}.args: argument {unused:?} is declared by none of its templates (a typo?)"
                    ));
                }
            }
            Err(AnalysisProblem::Missing(problem)) => report.warnings.push(format!(
                "{what}: {problem} (not in this file: its arguments and metrics were not checked)"
            )),
            Err(AnalysisProblem::Invalid(problem)) => report
                .errors
                .push(format!("{what}: InvalidSpec: {problem}")),
        }
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

    const ROLLOUT_WITH_ANALYSIS: &str = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\n\
        metadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    \
        metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n  \
        strategy:\n    canary:\n      steps:\n      - setWeight: 20\n      - analysis:\n          \
        templates: [{templateName: rate}, {templateName: latency}]\n          \
        args: [{name: servce, value: web}]\n";

    fn template(name: &str, metric: &str, condition: &str) -> String {
        format!(
            "---\napiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: {name}}}\n\
             spec:\n  args: [{{name: service}}]\n  metrics:\n  - name: {metric}\n    \
             successCondition: '{condition}'\n    \
             provider: {{prometheus: {{address: 'http://p', query: '{{{{args.service}}}}'}}}}\n"
        )
    }

    #[test]
    fn rollouts_are_checked_against_the_templates_in_the_same_file() {
        let text = format!(
            "{ROLLOUT_WITH_ANALYSIS}{}{}",
            template("rate", "m", "result[0] > 1"),
            template("latency", "m", "result[0] < 1")
        );
        let report = lint_text(&text);
        assert!(
            report.errors.iter().any(|e| e.starts_with(
                "Rollout/web: InvalidSpec: spec.strategy.canary.steps[1].analysis.templates: metric \"m\" is defined by both"
            )),
            "{report:?}"
        );
        let text = format!(
            "{ROLLOUT_WITH_ANALYSIS}{}{}",
            template("rate", "m", "result[0] > 1"),
            template("latency", "p99", "result[0] < 1")
        );
        let report = lint_text(&text);
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("steps[1].analysis") && e.contains("service")),
            "an argument with no value is an error: {report:?}"
        );
        let both_args = text.replace(
            "args: [{name: servce, value: web}]",
            "args: [{name: service, value: web}, {name: servce, value: web}]",
        );
        let report = lint_text(&both_args);
        assert_eq!(report.errors, Vec::<String>::new());
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("argument \"servce\" is declared by none")),
            "{report:?}"
        );
        let report = lint_text(ROLLOUT_WITH_ANALYSIS);
        assert_eq!(report.errors, Vec::<String>::new());
        assert!(
            report.warnings[0].contains("AnalysisTemplate/rate not found")
                && report.warnings[0].contains("not in this file"),
            "{report:?}"
        );
    }

    #[test]
    fn unknown_names_in_conditions_are_errors() {
        let report = lint_text(&template("rate", "m", "reslt[0] > 1"));
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("spec.metrics[0]") && e.contains("unknown name 'reslt'")),
            "{report:?}"
        );
    }

    #[test]
    fn yaml_is_read_as_kubectl_reads_it() {
        let arg = |value: &str| {
            format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\n\
                 spec:\n  args: [{{name: enabled, value: {value}}}]\n  metrics:\n  - name: m\n    \
                 provider: {{web: {{url: 'http://x/{{{{args.enabled}}}}'}}}}\n"
            )
        };
        for unquoted in ["on", "y", "off", "yes"] {
            let report = lint_text(&arg(unquoted));
            assert!(
                report
                    .errors
                    .iter()
                    .any(|e| e.contains("spec.args[0].value") && e.contains("boolean")),
                "kubectl sends `{unquoted}` as a boolean: {report:?}"
            );
        }
        assert_eq!(lint_text(&arg("'on'")).errors, Vec::<String>::new());
        assert_eq!(lint_text(&arg("onward")).errors, Vec::<String>::new());
    }

    #[test]
    fn names_and_ports_are_checked_as_the_apiserver_does() {
        let report = lint_text(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: Web_Rate}\n\
             spec:\n  metrics: []\n",
        );
        assert!(
            report.errors.iter().any(|e| e.contains("metadata.name")),
            "{report:?}"
        );
        let canary = |port: &str| {
            format!(
                "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {{name: web}}\nspec:\n  \
                 targetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n  \
                 service: {{port: {port}}}\n  analysis: {{interval: 1m, threshold: 5, stepWeight: 10, maxWeight: 50}}\n"
            )
        };
        assert_eq!(lint_text(&canary("8080")).errors, Vec::<String>::new());
        let report = lint_text(&canary("70000"));
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("spec.service.port") && e.contains("65535")),
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
