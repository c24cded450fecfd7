//! Analysis arguments and template merging, with Argo Rollouts' semantics: decides which metrics,
//! arguments, dry-run and retention rules an AnalysisRun gets from its templates and its caller, and
//! what every `{{args.<name>}}` in a metric becomes.
//!
//! Upstream counterparts (argoproj/argo-rollouts): `utils/analysis/helpers.go`
//! (`NewAnalysisRunFromTemplates`, `FlattenTemplates`, `flattenArgs`, `flattenMetrics`, `MergeArgs`,
//! `ResolveArgs`), `utils/analysis/factory.go` (`BuildArgumentsForRolloutAnalysisRun`,
//! `ResolveMetricArgs`, `extractValueFromRollout`), `utils/template/template.go` (`ResolveArgs`,
//! `ResolveQuotedArgs`) and `analysis/analysis.go` (`resolveArgs`, secret redaction).
//!
//! Flow:
//! 1. the controller fetches the templates a request names, following nested `templates` references
//!    ([`collect_templates`] does the walk given a fetch function; [`referenced_templates`] lists
//!    one template's references) — fetching is I/O, so it happens outside this module;
//! 2. optionally [`resolve_field_refs`] freezes `valueFrom.fieldRef` arguments against the owning
//!    Rollout, as upstream does when it creates the run;
//! 3. [`build_run_spec`] (or [`merge_templates`]) produces the AnalysisRun spec;
//! 4. while measuring, the run controller reads Secrets for `valueFrom.secretKeyRef` arguments and
//!    calls [`resolve`] for the metric it sends, and [`masked`] for the copy it records in status;
//!    a [`Masker`] then hides the secret values, in any encoding, in whatever else is recorded
//!    (values and errors a provider echoes, conditions).
//!
//! Deliberate differences from upstream (each is more lenient or clearer, never stricter):
//! - a caller argument overrides a template argument entirely: a caller `value` clears the
//!   template's `valueFrom` (upstream keeps both, and a template `secretKeyRef` then silently beats
//!   the caller's value at measurement time);
//! - an argument without a value is an error only when a metric references it (upstream fails the
//!   run for any unvalued argument); its message names the field and says where to supply it;
//! - a template reached twice through nested references is merged once (upstream merges it twice
//!   and then fails on the duplicate metric names); a reference cycle is an error (upstream
//!   recurses until the controller crashes);
//! - field paths outside `metadata.` format integers as integers (`1000000`, where Go prints
//!   `1e+06`), and `['key']` subscripts work at any depth.
//!
//! This module must never: fetch a template or a Secret, read the clock or the environment, put a
//! secret value into anything meant for status or logs ([`masked`], [`Masker`]), or panic on any
//! input.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::tags::{FillError, fill};
use crate::api::argo::analysis::{
    AnalysisRunSpec, AnalysisTemplateRef, AnalysisTemplateSpec, Argument, DryRun, FieldRef,
    MeasurementRetention, Metric, ValueFrom,
};
use crate::api::argo::rollout::AnalysisRunArgument;
use crate::engine::AnalysisRunRequest;

/// What a secret argument's value is replaced with wherever it could be seen (upstream's mask).
pub const MASK: &str = "*****";

/// Prefix of a namespaced template's display name.
const NAMESPACED_PREFIX: &str = "AnalysisTemplate/";
/// Prefix of a cluster template's display name.
const CLUSTER_PREFIX: &str = "ClusterAnalysisTemplate/";
/// Nesting depth beyond which [`collect_templates`] gives up: far deeper than any real template
/// tree, it bounds the work on a pathological (non-cyclic but huge) graph.
const MAX_TEMPLATE_DEPTH: usize = 32;

/// Why templates could not be merged or arguments resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// Two templates (or one template twice) define a metric with the same name.
    #[error(
        "metric {metric:?} is defined by both {first} and {second}: metric names must be unique across the templates of one analysis; rename one of them"
    )]
    DuplicateMetric {
        /// The metric name.
        metric: String,
        /// Display name of the template that defined it first.
        first: String,
        /// Display name of the template that defined it again.
        second: String,
    },
    /// Two templates declare the same argument with different values.
    #[error(
        "argument {arg:?} is declared with value {first_value:?} by {first} and {second_value:?} by {second}: give it the same default in both templates, or remove the default from one and pass the value from the Rollout"
    )]
    ConflictingArg {
        /// The argument name.
        arg: String,
        /// Display name of the first template.
        first: String,
        /// Its value there.
        first_value: String,
        /// Display name of the second template.
        second: String,
        /// Its value there.
        second_value: String,
    },
    /// Two `dryRun` rules have the same `metricName`.
    #[error(
        "two dryRun rules have the same metricName {metric_name:?} ({first} and {second}): keep one"
    )]
    DuplicateDryRun {
        /// The repeated `metricName`.
        metric_name: String,
        /// Where the first rule came from.
        first: String,
        /// Where the second rule came from.
        second: String,
    },
    /// Two `measurementRetention` rules have the same `metricName`.
    #[error(
        "two measurementRetention rules have the same metricName {metric_name:?} ({first} and {second}): keep one"
    )]
    DuplicateRetention {
        /// The repeated `metricName`.
        metric_name: String,
        /// Where the first rule came from.
        first: String,
        /// Where the second rule came from.
        second: String,
    },
    /// After merging, an argument has neither a value nor a `valueFrom`.
    #[error(
        "argument {arg:?} (declared by {declared_by}) has no value: pass it in the Rollout's analysis args (`- name: {arg}` with `value:` or `valueFrom:`), or give it a default in the template"
    )]
    MissingValue {
        /// The argument name.
        arg: String,
        /// Display names of the templates that declare it, comma-separated.
        declared_by: String,
    },
    /// A metric references an argument whose value is not known.
    #[error(
        "metric {metric:?}, field {field}: {{{{args.{arg}}}}} has no value: supply argument {arg:?} (a value, or a Secret key that exists)"
    )]
    Unresolved {
        /// The metric name.
        metric: String,
        /// The argument name.
        arg: String,
        /// Path of the field inside the metric (`provider.prometheus.query`).
        field: String,
    },
    /// A metric contains a `{{...}}` that is not a declared argument.
    #[error(
        "metric {metric:?}, field {field}: cannot resolve {{{{{tag}}}}}: only {{{{args.<name>}}}} with a declared argument is substituted; declare the argument in the template's args or fix the spelling"
    )]
    UnknownTag {
        /// The metric name.
        metric: String,
        /// The text between the braces, trimmed.
        tag: String,
        /// Path of the field inside the metric.
        field: String,
    },
    /// A metric contains `{{` without a closing `}}`.
    #[error(
        "metric {metric:?}, field {field}: `{{{{` is never closed by `}}}}`: close it or remove it"
    )]
    Unterminated {
        /// The metric name.
        metric: String,
        /// Path of the field inside the metric.
        field: String,
    },
    /// The metric could not be turned into JSON and back (an internal invariant, reported not panicked).
    #[error("metric {metric:?}: argument substitution produced an invalid metric: {reason}")]
    Invalid {
        /// The metric name.
        metric: String,
        /// The serde error.
        reason: String,
    },
    /// A `fieldRef` path cannot be evaluated against the owner object.
    #[error("fieldRef {path:?}: {reason}")]
    FieldRef {
        /// The path as written.
        path: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A Rollout argument still carries `podTemplateHashValue` (the engine resolves those).
    #[error(
        "argument {arg:?}: valueFrom.podTemplateHashValue was not resolved before the run was built (the engine resolves it from the Rollout status)"
    )]
    PodTemplateHashUnresolved {
        /// The argument name.
        arg: String,
    },
    /// Nested template references form a cycle.
    #[error("template references form a cycle: {}", chain.join(" -> "))]
    TemplateCycle {
        /// The chain of display names, ending with the repeated one.
        chain: Vec<String>,
    },
    /// Nested template references go deeper than any real tree does.
    #[error(
        "template references are nested more than {MAX_TEMPLATE_DEPTH} deep (at {at}): flatten the templates"
    )]
    TemplateDepth {
        /// Display name of the template where the walk stopped.
        at: String,
    },
}

/// The display name used in messages and to order templates: `AnalysisTemplate/<name>` or
/// `ClusterAnalysisTemplate/<name>`.
pub fn display_name(template_name: &str, cluster_scope: bool) -> String {
    let prefix = if cluster_scope {
        CLUSTER_PREFIX
    } else {
        NAMESPACED_PREFIX
    };
    format!("{prefix}{template_name}")
}

/// The nested references of one template, in order. Resolving them (a fetch) is the caller's job;
/// [`collect_templates`] does the walk.
pub fn referenced_templates(spec: &AnalysisTemplateSpec) -> Vec<AnalysisTemplateRef> {
    spec.templates.clone()
}

/// The template references an [`AnalysisRunRequest`] names, in order.
pub fn request_templates(request: &AnalysisRunRequest) -> Vec<AnalysisTemplateRef> {
    request
        .templates
        .iter()
        .map(|(name, cluster)| AnalysisTemplateRef {
            template_name: name.clone(),
            cluster_scope: cluster.then_some(true),
        })
        .collect()
}

/// Why a walk over templates held in a map stopped: a template the map lacks, or the walk's own
/// error (a cycle, too deep). For [`collect_templates`] callers whose `fetch` is a lookup.
#[derive(Debug)]
pub enum Walk {
    /// A referenced template is not there.
    Missing(AnalysisTemplateRef),
    /// The references themselves are wrong.
    Args(ArgsError),
}

impl From<ArgsError> for Walk {
    fn from(e: ArgsError) -> Self {
        Walk::Args(e)
    }
}

/// Walks `roots` and their nested `templates` references depth-first, fetching each template with
/// `fetch`, and returns `(display name, spec)` pairs in upstream's order (each template before the
/// ones it references). A template reached twice is kept once; a cycle is an
/// [`ArgsError::TemplateCycle`]. `fetch` does the I/O (typically a lister lookup); its errors are
/// returned as they are.
pub fn collect_templates<E: From<ArgsError>>(
    roots: &[AnalysisTemplateRef],
    mut fetch: impl FnMut(&AnalysisTemplateRef) -> Result<AnalysisTemplateSpec, E>,
) -> Result<Vec<(String, AnalysisTemplateSpec)>, E> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut path = Vec::new();
    walk(roots, &mut fetch, &mut out, &mut seen, &mut path)?;
    Ok(out)
}

fn walk<E: From<ArgsError>>(
    refs: &[AnalysisTemplateRef],
    fetch: &mut impl FnMut(&AnalysisTemplateRef) -> Result<AnalysisTemplateSpec, E>,
    out: &mut Vec<(String, AnalysisTemplateSpec)>,
    seen: &mut BTreeSet<String>,
    path: &mut Vec<String>,
) -> Result<(), E> {
    for reference in refs {
        let name = display_name(
            &reference.template_name,
            reference.cluster_scope.unwrap_or(false),
        );
        if path.contains(&name) {
            let mut chain = path.clone();
            chain.push(name);
            return Err(ArgsError::TemplateCycle { chain }.into());
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        if path.len() >= MAX_TEMPLATE_DEPTH {
            return Err(ArgsError::TemplateDepth { at: name }.into());
        }
        let spec = fetch(reference)?;
        let nested = spec.templates.clone();
        out.push((name.clone(), spec));
        path.push(name);
        walk(&nested, fetch, out, seen, path)?;
        path.pop();
    }
    Ok(())
}

/// The templates of one analysis merged into one, with the caller's arguments applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergedTemplate {
    /// Every template's metrics, in template order.
    pub metrics: Vec<Metric>,
    /// The merged arguments: every template argument, with caller values applied; each has a
    /// `value` or a `valueFrom`.
    pub args: Vec<Argument>,
    /// Every template's dry-run rules, in template order.
    pub dry_run: Vec<DryRun>,
    /// Every template's retention rules, in template order.
    pub measurement_retention: Vec<MeasurementRetention>,
    /// Caller arguments no template declares. Upstream ignores them silently; the controller may
    /// warn (a typo in an argument name is the usual cause).
    pub unused_args: Vec<String>,
}

/// Merges `templates` (`(display name, spec)` in the order given; nested references must already
/// be expanded, see [`collect_templates`]) and applies the caller's `args`, as upstream
/// `FlattenTemplates` + `MergeArgs`:
/// - metrics are concatenated; a name defined twice is an error naming both templates;
/// - dry-run and retention rules are concatenated; a `metricName` given twice is an error;
/// - template arguments are merged by name: the first declaration with a value wins, and two
///   different values for one name are an error (an argument declared without a value takes the
///   value or `valueFrom` of a later declaration that has one);
/// - a caller argument replaces the template's value (or `valueFrom`); one no template declares is
///   ignored and listed in [`MergedTemplate::unused_args`];
/// - every merged argument must end with a `value` or a `valueFrom`.
pub fn merge_templates(
    templates: &[(String, AnalysisTemplateSpec)],
    args: &[Argument],
) -> Result<MergedTemplate, ArgsError> {
    let mut merged = MergedTemplate::default();

    let mut metric_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (template, spec) in templates {
        for metric in &spec.metrics {
            if let Some(first) = metric_owner.insert(&metric.name, template) {
                return Err(ArgsError::DuplicateMetric {
                    metric: metric.name.clone(),
                    first: first.to_owned(),
                    second: template.clone(),
                });
            }
            merged.metrics.push(metric.clone());
        }
    }

    let dry_run = templates
        .iter()
        .flat_map(|(t, s)| s.dry_run.iter().map(move |d| (t.clone(), d.clone())));
    merged.dry_run = unique_rules(
        dry_run,
        |d| &d.metric_name,
        |metric_name, first, second| ArgsError::DuplicateDryRun {
            metric_name,
            first,
            second,
        },
    )?;
    let retention = templates.iter().flat_map(|(t, s)| {
        s.measurement_retention
            .iter()
            .map(move |r| (t.clone(), r.clone()))
    });
    merged.measurement_retention = unique_rules(
        retention,
        |r| &r.metric_name,
        |metric_name, first, second| ArgsError::DuplicateRetention {
            metric_name,
            first,
            second,
        },
    )?;

    // Template arguments, merged as upstream `flattenArgs`. For messages, `declared_by` remembers
    // every template that declares each one, `source_of` the one whose declaration is kept.
    let mut declared_by: Vec<Vec<&str>> = Vec::new();
    let mut source_of: Vec<&str> = Vec::new();
    for (template, spec) in templates {
        for arg in &spec.args {
            match merged.args.iter().position(|a| a.name == arg.name) {
                None => {
                    merged.args.push(arg.clone());
                    declared_by.push(vec![template]);
                    source_of.push(template);
                }
                Some(i) => {
                    declared_by[i].push(template);
                    let prev = &merged.args[i];
                    match (&prev.value, &arg.value) {
                        (Some(a), Some(b)) if a != b => {
                            return Err(ArgsError::ConflictingArg {
                                arg: arg.name.clone(),
                                first: source_of[i].to_owned(),
                                first_value: a.clone(),
                                second: template.clone(),
                                second_value: b.clone(),
                            });
                        }
                        // Upstream replaces any unvalued declaration, even one with a
                        // `valueFrom`, and then fails for want of a value; a bare redeclaration
                        // keeps the earlier source here.
                        (None, _)
                            if arg.value.is_some()
                                || arg.value_from.is_some()
                                || prev.value_from.is_none() =>
                        {
                            merged.args[i] = arg.clone();
                            source_of[i] = template;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    for arg in args {
        match merged.args.iter_mut().find(|a| a.name == arg.name) {
            Some(target) => {
                if arg.value.is_some() {
                    target.value = arg.value.clone();
                    target.value_from = None;
                } else if arg.value_from.is_some() {
                    target.value = None;
                    target.value_from = arg.value_from.clone();
                }
            }
            None => {
                if !merged.unused_args.contains(&arg.name) {
                    merged.unused_args.push(arg.name.clone());
                }
            }
        }
    }

    for (arg, by) in merged.args.iter().zip(&declared_by) {
        let has_source = arg
            .value_from
            .as_ref()
            .is_some_and(|v| v.secret_key_ref.is_some() || v.field_ref.is_some());
        if arg.value.is_none() && !has_source {
            return Err(ArgsError::MissingValue {
                arg: arg.name.clone(),
                declared_by: by.join(", "),
            });
        }
    }
    Ok(merged)
}

/// Concatenates rules, refusing a `metricName` given twice (upstream `validateDryRunMetrics` /
/// `validateMeasurementRetentionMetrics`).
fn unique_rules<T>(
    rules: impl IntoIterator<Item = (String, T)>,
    key: impl Fn(&T) -> &String,
    duplicate: impl Fn(String, String, String) -> ArgsError,
) -> Result<Vec<T>, ArgsError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (source, rule) in rules {
        let name = key(&rule).clone();
        if let Some(first) = seen.get(&name) {
            return Err(duplicate(name, first.clone(), source));
        }
        seen.insert(name, source);
        out.push(rule);
    }
    Ok(out)
}

/// Converts a Rollout's analysis arguments into run arguments, as upstream
/// `BuildArgumentsForRolloutAnalysisRun`: a value stays a value, an argument written without one
/// becomes the empty string (upstream's `value` is a plain string there), and a
/// `valueFrom.fieldRef` not yet frozen by [`resolve_field_refs`] is kept as the run argument's
/// `valueFrom.fieldRef`, for the run controller to resolve against the owner.
pub fn run_arguments(args: &[AnalysisRunArgument]) -> Result<Vec<Argument>, ArgsError> {
    args.iter()
        .map(|arg| {
            let from = arg.value_from.as_ref();
            if arg.value.is_none() && from.is_some_and(|v| v.pod_template_hash_value.is_some()) {
                return Err(ArgsError::PodTemplateHashUnresolved {
                    arg: arg.name.clone(),
                });
            }
            let field_ref = from.and_then(|v| v.field_ref.clone());
            Ok(match (&arg.value, field_ref) {
                (Some(value), _) => Argument {
                    name: arg.name.clone(),
                    value: Some(value.clone()),
                    value_from: None,
                },
                (None, Some(field_ref)) => Argument {
                    name: arg.name.clone(),
                    value: None,
                    value_from: Some(ValueFrom {
                        secret_key_ref: None,
                        field_ref: Some(field_ref),
                    }),
                },
                (None, None) => Argument {
                    name: arg.name.clone(),
                    value: Some(String::new()),
                    value_from: None,
                },
            })
        })
        .collect()
}

/// Freezes every `valueFrom.fieldRef` argument into a value read from `owner` (the Rollout as
/// JSON), as upstream does when it creates a run; see [`field_ref`] for the path syntax.
pub fn resolve_field_refs(
    args: &mut [AnalysisRunArgument],
    owner: &Value,
) -> Result<(), ArgsError> {
    for arg in args.iter_mut() {
        let Some(path) = arg
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
        else {
            continue;
        };
        arg.value = Some(field_ref(owner, &path)?);
        arg.value_from = None;
    }
    Ok(())
}

/// Builds the spec of the AnalysisRun a request asks for, from the fetched templates
/// (`(display name, spec)`, nested references already expanded, see [`collect_templates`]), as
/// upstream `NewAnalysisRunFromTemplates`:
/// - namespaced templates come before cluster templates (upstream keeps two lists), each group in
///   the order given — display names from [`display_name`] tell them apart;
/// - arguments: the request's ([`run_arguments`]) applied to the templates' ([`merge_templates`]);
///   `valueFrom.secretKeyRef` stays on the run's argument, for the run controller to read;
/// - dry-run and retention rules: the request's first, then the templates'; a `metricName` given
///   twice is an error.
pub fn build_run_spec(
    request: &AnalysisRunRequest,
    templates: &[(String, AnalysisTemplateSpec)],
) -> Result<AnalysisRunSpec, ArgsError> {
    let caller = RunCaller {
        name: "the Rollout's analysis",
        args: run_arguments(&request.args)?,
        dry_run: &request.dry_run,
        measurement_retention: &request.measurement_retention,
    };
    build_run_spec_for(&caller, templates)
}

/// What the creator of a run (a Rollout's analysis, an Experiment) adds to its templates.
pub struct RunCaller<'a> {
    /// Names the caller in errors ("the Rollout's analysis").
    pub name: &'a str,
    /// Run arguments, already converted ([`run_arguments`]).
    pub args: Vec<Argument>,
    pub dry_run: &'a [DryRun],
    pub measurement_retention: &'a [MeasurementRetention],
}

/// [`build_run_spec`] for any caller.
pub fn build_run_spec_for(
    caller: &RunCaller<'_>,
    templates: &[(String, AnalysisTemplateSpec)],
) -> Result<AnalysisRunSpec, ArgsError> {
    let (mut ordered, cluster): (Vec<_>, Vec<_>) = templates
        .iter()
        .cloned()
        .partition(|(name, _)| !name.starts_with(CLUSTER_PREFIX));
    ordered.extend(cluster);
    let merged = merge_templates(&ordered, &caller.args)?;

    let from_caller = caller.name;
    const FROM_TEMPLATES: &str = "the templates";
    let dry_run = caller
        .dry_run
        .iter()
        .map(|d| (from_caller.to_owned(), d.clone()))
        .chain(
            merged
                .dry_run
                .into_iter()
                .map(|d| (FROM_TEMPLATES.to_owned(), d)),
        );
    let dry_run = unique_rules(
        dry_run,
        |d| &d.metric_name,
        |metric_name, first, second| ArgsError::DuplicateDryRun {
            metric_name,
            first,
            second,
        },
    )?;
    let retention = caller
        .measurement_retention
        .iter()
        .map(|r| (from_caller.to_owned(), r.clone()))
        .chain(
            merged
                .measurement_retention
                .into_iter()
                .map(|r| (FROM_TEMPLATES.to_owned(), r)),
        );
    let measurement_retention = unique_rules(
        retention,
        |r| &r.metric_name,
        |metric_name, first, second| ArgsError::DuplicateRetention {
            metric_name,
            first,
            second,
        },
    )?;

    Ok(AnalysisRunSpec {
        metrics: merged.metrics,
        args: merged.args,
        terminate: None,
        dry_run,
        measurement_retention,
        ttl_strategy: None,
    })
}

// === Substitution ===

/// An argument as the run controller knows it while measuring: its value (from `value`, a Secret
/// or a field), or `None` when it could not be read; `secret` when it came from a Secret, so that
/// [`masked`] and [`redact`] hide it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedArg {
    /// Argument name.
    pub name: String,
    /// Its value, if known.
    pub value: Option<String>,
    /// Whether the value is secret.
    pub secret: bool,
}

impl ResolvedArg {
    /// The run's arguments as far as the spec alone resolves them: literal values are known,
    /// `secretKeyRef` arguments are marked secret without a value (the controller fills it in
    /// after reading the Secret), `fieldRef` arguments have no value.
    pub fn from_run_args(args: &[Argument]) -> Vec<ResolvedArg> {
        args.iter()
            .map(|a| ResolvedArg {
                name: a.name.clone(),
                value: a.value.clone(),
                secret: a
                    .value_from
                    .as_ref()
                    .is_some_and(|v| v.secret_key_ref.is_some()),
            })
            .collect()
    }
}

/// Substitutes `{{args.<name>}}` in every string of every metric (queries, conditions, URLs,
/// headers, job specs, plugin configuration — and map keys), as upstream `ResolveMetricArgs`.
/// Numbers stay typed: `count: "{{args.n}}"` becomes the string `"5"`, which the accessors parse.
/// Spaces inside the braces are allowed (`{{ args.n }}`). Any other `{{...}}` is an error, as
/// upstream.
pub fn resolve(metrics: &[Metric], args: &[ResolvedArg]) -> Result<Vec<Metric>, ArgsError> {
    metrics
        .iter()
        .map(|m| substitute_metric(m, args, Mode::Plain))
        .collect()
}

/// [`resolve`] for one metric.
pub fn resolve_metric(metric: &Metric, args: &[ResolvedArg]) -> Result<Metric, ArgsError> {
    substitute_metric(metric, args, Mode::Plain)
}

/// [`resolve`], with every secret argument replaced by [`MASK`] (known or not): the copy to record
/// in status or logs. It also validates a run before its Secrets are read (upstream substitutes a
/// placeholder for the same purpose).
pub fn masked(metrics: &[Metric], args: &[ResolvedArg]) -> Result<Vec<Metric>, ArgsError> {
    metrics
        .iter()
        .map(|m| substitute_metric(m, args, Mode::Masked))
        .collect()
}

/// [`masked`] for one metric.
pub fn masked_metric(metric: &Metric, args: &[ResolvedArg]) -> Result<Metric, ArgsError> {
    substitute_metric(metric, args, Mode::Masked)
}

/// Replaces every non-empty secret value in `text` (a provider's error message, say) with
/// [`MASK`], in every encoding [`Masker`] knows.
pub fn redact(text: &str, args: &[ResolvedArg]) -> String {
    Masker::new(args).redact(text)
}

/// Hides the secret arguments of one run in recorded text (status fields, Events, log lines).
///
/// A secret can come back in other clothes than it was sent in: the URL it was put in is
/// percent-encoded (by the URL parser, or a form), Basic authentication sends it in base64 after
/// `user:`, and an endpoint that echoes it returns it JSON-escaped or encoded again. So each
/// secret is matched as written and also with any of its characters percent-encoded (either hex
/// case, `+` for a space) or JSON-escaped (`\"`, `\\`, `\/`, `\uXXXX`), and as base64 (standard
/// and URL-safe, padded or not, at any of the three alignments inside a longer base64 text, such
/// as `Authorization: Basic base64(user:secret)`). Redacting twice changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// One alternation of every form of every secret, longest forms first; `None` when the run
    /// has no secret to hide.
    pattern: Option<regex::Regex>,
}

/// Shortest base64 fragment masked on its own: shorter ones (secrets under ~5 bytes at an
/// unaligned offset) would hide unrelated text, and reveal at most a few bits.
const MIN_BASE64_FRAGMENT: usize = 6;

/// Upper bound of redaction passes: each pass removes at least one character of a secret from
/// the text, so real texts settle in one or two.
const MAX_REDACT_PASSES: usize = 16;

impl Masker {
    /// A masker for the secret arguments among `args` (those with a value).
    pub fn new(args: &[ResolvedArg]) -> Masker {
        let mut forms: Vec<String> = Vec::new();
        for secret in args
            .iter()
            .filter(|a| a.secret)
            .filter_map(|a| a.value.as_deref())
            // A secret inside the mask itself cannot be hidden by it (and would grow it forever).
            .filter(|v| !v.is_empty() && !MASK.contains(*v))
        {
            forms.push(encoded_chars(secret));
            forms.extend(base64_forms(secret).iter().map(|f| regex::escape(f)));
        }
        if forms.is_empty() {
            return Masker::default();
        }
        // Leftmost-first alternation: at one position the longest form should win.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        let pattern = regex::RegexBuilder::new(&forms.join("|"))
            .size_limit(64 << 20)
            .build()
            // Too large to compile (a secret of many kilobytes): the whole-text forms still are.
            .or_else(|_| regex::Regex::new(&literal_forms(args).join("|")));
        Masker {
            pattern: pattern.ok(),
        }
    }

    /// Whether there is nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.pattern.is_none()
    }

    /// `text` with every form of every secret replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let Some(pattern) = &self.pattern else {
            return text.to_owned();
        };
        let mut out = text.to_owned();
        // A secret containing `*` may re-form around a mask; each pass removes a character of it.
        for _ in 0..MAX_REDACT_PASSES {
            let next = pattern.replace_all(&out, MASK);
            if next == out {
                break;
            }
            out = next.into_owned();
        }
        out
    }

    /// [`Masker::redact`] in place.
    pub fn redact_in_place(&self, text: &mut String) {
        if self.pattern.as_ref().is_some_and(|p| p.is_match(text)) {
            *text = self.redact(text);
        }
    }
}

/// Every secret as written, JSON-escaped, fully percent-encoded and in base64, as escaped regular
/// expressions (the fallback when the per-character forms are too large to compile).
fn literal_forms(args: &[ResolvedArg]) -> Vec<String> {
    let mut forms = Vec::new();
    for secret in args
        .iter()
        .filter(|a| a.secret)
        .filter_map(|a| a.value.as_deref())
        .filter(|v| !v.is_empty() && !MASK.contains(*v))
    {
        forms.push(secret.to_owned());
        let json = serde_json::to_string(secret).unwrap_or_default();
        forms.push(json.trim_matches('"').to_owned());
        forms.push(secret.bytes().map(|b| format!("%{b:02X}")).collect());
        forms.extend(base64_forms(secret));
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.iter().map(|f| regex::escape(f)).collect()
}

/// A regular expression matching `secret` with any of its characters written plainly,
/// percent-encoded or JSON-escaped.
fn encoded_chars(secret: &str) -> String {
    let mut out = String::new();
    for c in secret.chars() {
        let mut alternatives = vec![regex::escape(&c.to_string())];
        let mut utf8 = [0u8; 4];
        let percent: String = c
            .encode_utf8(&mut utf8)
            .bytes()
            .map(|b| format!("%(?i:{b:02x})"))
            .collect();
        alternatives.push(percent);
        if c == ' ' {
            alternatives.push(r"\+".into());
        }
        let json: Option<&str> = match c {
            '"' => Some(r#"\\""#),
            '\\' => Some(r"\\\\"),
            '/' => Some(r"\\/"),
            '\n' => Some(r"\\n"),
            '\t' => Some(r"\\t"),
            '\r' => Some(r"\\r"),
            _ => None,
        };
        alternatives.extend(json.map(str::to_owned));
        let mut units = [0u16; 2];
        let escaped: String = c
            .encode_utf16(&mut units)
            .iter()
            .map(|u| format!(r"\\u(?i:{u:04x})"))
            .collect();
        alternatives.push(escaped);
        out.push_str(&format!("(?:{})", alternatives.join("|")));
    }
    out
}

/// The base64 texts that reveal `secret`: its whole encoding (padded and not), and, for each
/// alignment of the secret inside a longer encoded text, the characters that depend on the secret
/// alone. Standard and URL-safe alphabets.
fn base64_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut forms = vec![STANDARD.encode(bytes), URL_SAFE.encode(bytes)];
    for offset in 0..3usize {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(bytes);
        // Characters carry 6 bits; keep those whose bits all come from the secret's bytes.
        let first = (8 * offset).div_ceil(6);
        let end = 8 * (offset + bytes.len()) / 6;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&shifted);
            if let Some(core) = encoded.get(first..end)
                && core.len() >= MIN_BASE64_FRAGMENT
            {
                forms.push(core.to_owned());
            }
        }
    }
    forms
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Masked,
}

fn substitute_metric(
    metric: &Metric,
    args: &[ResolvedArg],
    mode: Mode,
) -> Result<Metric, ArgsError> {
    let invalid = |e: serde_json::Error| ArgsError::Invalid {
        metric: metric.name.clone(),
        reason: e.to_string(),
    };
    let mut json = serde_json::to_value(metric).map_err(invalid)?;
    let ctx = Ctx {
        metric: &metric.name,
        args,
        mode,
    };
    let mut path = String::new();
    substitute_value(&mut json, &ctx, &mut path)?;
    serde_json::from_value(json).map_err(invalid)
}

struct Ctx<'a> {
    metric: &'a str,
    args: &'a [ResolvedArg],
    mode: Mode,
}

fn substitute_value(value: &mut Value, ctx: &Ctx<'_>, path: &mut String) -> Result<(), ArgsError> {
    match value {
        Value::String(s) => {
            if s.contains("{{") {
                *s = substitute(s, ctx, path)?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_value(item, ctx, path)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let key = if key.contains("{{") {
                    substitute(&key, ctx, path)?
                } else {
                    key
                };
                substitute_value(&mut item, ctx, path)?;
                path.truncate(len);
                map.insert(key, item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Upstream's fasttemplate substitution of `{{args.<name>}}` over `text` ([`fill`]).
fn substitute(text: &str, ctx: &Ctx<'_>, path: &str) -> Result<String, ArgsError> {
    let filled = fill(text, |tag| {
        let arg = tag
            .strip_prefix("args.")
            .and_then(|name| ctx.args.iter().find(|a| a.name == name));
        let Some(arg) = arg else {
            return Err(ArgsError::UnknownTag {
                metric: ctx.metric.to_owned(),
                tag: tag.to_owned(),
                field: path.to_owned(),
            });
        };
        if ctx.mode == Mode::Masked && arg.secret {
            return Ok(MASK.to_owned());
        }
        arg.value.clone().ok_or_else(|| ArgsError::Unresolved {
            metric: ctx.metric.to_owned(),
            arg: arg.name.clone(),
            field: path.to_owned(),
        })
    });
    filled.map_err(|e| match e {
        FillError::Unterminated => ArgsError::Unterminated {
            metric: ctx.metric.to_owned(),
            field: path.to_owned(),
        },
        FillError::Tag(e) => e,
    })
}

// === Field references ===

/// Evaluates a Kubernetes `fieldRef` path against an owner object's JSON, as upstream:
/// - `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['k']`,
///   `metadata.annotations['k']` follow Kubernetes' `fieldpath.ExtractFieldPathAsString`: a missing
///   label or annotation is the empty string, and bare `metadata.labels` / `metadata.annotations`
///   render every entry as `key="value"` lines, sorted;
/// - any other path (`status.canary.weights.canary.podTemplateHash`,
///   `spec.template.spec.containers[0].image`) is walked segment by segment (`.` and `[...]`
///   separate segments, `['key']` quotes a key), as upstream `extractValueFromRollout`; it must
///   end at a string, number or boolean, and a missing field is an error.
///
/// Numbers are rendered as written (an integer without `.0`).
pub fn field_ref(object: &Value, path: &str) -> Result<String, ArgsError> {
    let error = |reason: String| ArgsError::FieldRef {
        path: path.to_owned(),
        reason,
    };
    if let Some((map, key)) = subscripted(path)
        && (map == "metadata.labels" || map == "metadata.annotations")
    {
        let field = map.trim_start_matches("metadata.");
        if key.is_empty() {
            return Err(error(format!(
                "empty key subscript: write metadata.{field}['<key>']"
            )));
        }
        return Ok(object["metadata"][field][key]
            .as_str()
            .unwrap_or_default()
            .to_owned());
    }
    match path {
        "metadata.labels" | "metadata.annotations" => {
            let field = path.trim_start_matches("metadata.");
            let entries = object["metadata"][field].as_object();
            let lines: Vec<String> = entries
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", go_quote(v.as_str().unwrap_or_default())))
                .collect();
            return Ok(lines.join("\n"));
        }
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            let field = path.trim_start_matches("metadata.");
            return Ok(object["metadata"][field]
                .as_str()
                .unwrap_or_default()
                .to_owned());
        }
        _ => {}
    }

    let mut current = object;
    let mut walked = String::new();
    for segment in segments(path) {
        let next = match current {
            Value::Array(items) => {
                let index: usize = segment.parse().map_err(|_| {
                    error(format!(
                        "{walked} is a list: index it with a number, not {segment:?}"
                    ))
                })?;
                items.get(index).ok_or_else(|| {
                    error(format!(
                        "index {index} is out of range: {walked} has {} item(s)",
                        items.len()
                    ))
                })?
            }
            Value::Object(map) => map.get(segment).ok_or_else(|| {
                error(format!(
                    "{} has no field {segment:?}; check the spelling, or whether the owner has set it yet",
                    if walked.is_empty() { "the object" } else { &walked }
                ))
            })?,
            _ => {
                return Err(error(format!(
                    "{walked} is a scalar; it has no field {segment:?}"
                )));
            }
        };
        current = next;
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(segment);
    }
    match current {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err(error(format!(
            "{walked} is null; point the path at a field that is set"
        ))),
        Value::Array(_) | Value::Object(_) => Err(error(format!(
            "{walked} is a list or an object; the path must end at a string, number or boolean"
        ))),
    }
}

/// Splits `path['key']` into `(path, key)`, as Kubernetes' `SplitMaybeSubscriptedPath`.
fn subscripted(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (map, key) = inner.split_once("['")?;
    (!map.is_empty()).then_some((map, key))
}

/// Segments of a generic path: separators are `.`, `[` and `]` (upstream's `[\.\[\]]+`), except
/// inside a quoted `['...']` key, which may contain dots.
fn segments(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = path;
    loop {
        rest = rest.trim_start_matches(['.', '[', ']']);
        if rest.is_empty() {
            return out;
        }
        if let Some(quoted) = rest.strip_prefix('\'').or_else(|| rest.strip_prefix('"')) {
            let quote = if rest.starts_with('\'') { '\'' } else { '"' };
            match quoted.find(quote) {
                Some(end) => {
                    out.push(&quoted[..end]);
                    rest = &quoted[end + 1..];
                }
                None => {
                    out.push(quoted);
                    return out;
                }
            }
        } else {
            let end = rest.find(['.', '[', ']']).unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
}

/// Go's `%q` for the characters label and annotation values contain in practice: quotes and
/// backslashes escaped, control characters as `\n`, `\t` or `\u00XX`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `fieldRef` of a run argument whose value must still be read from the owner, if any.
pub fn field_ref_of(arg: &Argument) -> Option<&FieldRef> {
    arg.value_from.as_ref().and_then(|v| v.field_ref.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::argo::analysis::SecretKeyRef;
    use crate::api::argo::rollout::{ArgumentValueFrom, PodTemplateHashValue};
    use crate::engine::AnalysisKind;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn spec(yaml: &str) -> AnalysisTemplateSpec {
        serde_yaml::from_str(yaml).expect("test template parses")
    }

    fn arg(name: &str, value: &str) -> Argument {
        Argument {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn plain(name: &str, value: &str) -> ResolvedArg {
        ResolvedArg {
            name: name.into(),
            value: Some(value.into()),
            secret: false,
        }
    }

    const SUCCESS_RATE: &str = r#"
args:
- name: service-name
- name: namespace
  value: default
metrics:
- name: success-rate
  interval: 5m
  count: "{{args.count}}"
  successCondition: result[0] >= {{ args.threshold }}
  provider:
    prometheus:
      address: http://prometheus.example.com:9090
      query: sum(rate(http_requests_total{service="{{args.service-name}}",namespace="{{args.namespace}}",code!~"5.*"}[5m]))
"#;

    // --- merge_templates ---

    #[test]
    fn merges_metrics_args_and_rules_in_order() {
        let a = spec(
            r#"
args: [{name: service-name}, {name: namespace, value: default}]
metrics: [{name: a, provider: {prometheus: {query: up}}}]
dryRun: [{metricName: a}]
"#,
        );
        let b = spec(
            r#"
args: [{name: service-name, value: guestbook}, {name: namespace, value: default}, {name: extra, value: x}]
metrics: [{name: b, provider: {web: {url: "http://x"}}}]
measurementRetention: [{metricName: b, limit: 20}]
"#,
        );
        let merged = merge_templates(
            &[
                ("AnalysisTemplate/a".into(), a),
                ("AnalysisTemplate/b".into(), b),
            ],
            &[arg("namespace", "prod"), arg("typo", "1")],
        )
        .unwrap();
        let names: Vec<_> = merged.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            merged.args,
            vec![
                arg("service-name", "guestbook"),
                arg("namespace", "prod"),
                arg("extra", "x")
            ],
            "an unvalued declaration takes a later value; the caller overrides a default"
        );
        assert_eq!(merged.dry_run.len(), 1);
        assert_eq!(merged.measurement_retention[0].limit, 20);
        assert_eq!(
            merged.unused_args,
            ["typo"],
            "upstream ignores, Sluice reports"
        );
    }

    #[test]
    fn merge_errors_name_both_templates() {
        let t = |yaml: &str| spec(yaml);
        // (what, templates, caller args, message fragment)
        type Case = (
            &'static str,
            Vec<(String, AnalysisTemplateSpec)>,
            Vec<Argument>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "duplicate metric",
                vec![
                    (
                        "AnalysisTemplate/a".into(),
                        t("metrics: [{name: m, provider: {prometheus: {query: up}}}]"),
                    ),
                    (
                        "ClusterAnalysisTemplate/b".into(),
                        t("metrics: [{name: m, provider: {prometheus: {query: up}}}]"),
                    ),
                ],
                vec![],
                "metric \"m\" is defined by both AnalysisTemplate/a and ClusterAnalysisTemplate/b",
            ),
            (
                "conflicting defaults",
                vec![
                    (
                        "AnalysisTemplate/a".into(),
                        t("args: [{name: x, value: '1'}]"),
                    ),
                    (
                        "AnalysisTemplate/b".into(),
                        t("args: [{name: x, value: '2'}]"),
                    ),
                ],
                vec![],
                "argument \"x\" is declared with value \"1\" by AnalysisTemplate/a and \"2\" by AnalysisTemplate/b",
            ),
            (
                "duplicate dry-run rule",
                vec![
                    ("AnalysisTemplate/a".into(), t("dryRun: [{metricName: m}]")),
                    ("AnalysisTemplate/b".into(), t("dryRun: [{metricName: m}]")),
                ],
                vec![],
                "two dryRun rules have the same metricName \"m\" (AnalysisTemplate/a and AnalysisTemplate/b)",
            ),
            (
                "duplicate retention rule",
                vec![(
                    "AnalysisTemplate/a".into(),
                    t(
                        "measurementRetention: [{metricName: m, limit: 1}, {metricName: m, limit: 2}]",
                    ),
                )],
                vec![],
                "two measurementRetention rules have the same metricName \"m\"",
            ),
            (
                "argument without a value",
                vec![
                    (
                        "AnalysisTemplate/a".into(),
                        t("args: [{name: service-name}]"),
                    ),
                    (
                        "AnalysisTemplate/b".into(),
                        t("args: [{name: service-name}]"),
                    ),
                ],
                vec![arg("other", "x")],
                "argument \"service-name\" (declared by AnalysisTemplate/a, AnalysisTemplate/b) has no value: pass it in the Rollout's analysis args",
            ),
        ];
        for (what, templates, args, message) in cases {
            let err = merge_templates(&templates, &args).expect_err(what);
            assert!(err.to_string().contains(message), "{what}: {err}");
        }
    }

    #[test]
    fn same_default_twice_is_fine_and_caller_value_replaces_value_from() {
        let a = spec(
            "args: [{name: x, value: '1'}, {name: token, valueFrom: {secretKeyRef: {name: s, key: k}}}]",
        );
        let b = spec("args: [{name: x, value: '1'}, {name: token}]");
        let merged =
            merge_templates(&[("A/a".into(), a.clone()), ("A/b".into(), b.clone())], &[]).unwrap();
        assert_eq!(merged.args[0], arg("x", "1"));
        assert!(
            merged.args[1].value_from.is_some(),
            "an unvalued redeclaration keeps the first source"
        );
        let merged = merge_templates(&[("A/a".into(), a)], &[arg("token", "literal")]).unwrap();
        assert_eq!(merged.args[1], arg("token", "literal"));
    }

    // --- build_run_spec ---

    fn request(args: Vec<AnalysisRunArgument>) -> AnalysisRunRequest {
        AnalysisRunRequest {
            name: "guestbook-6c54544f8f-2-1".into(),
            kind: AnalysisKind::Step(1),
            pod_template_hash: "6c54544f8f".into(),
            revision: 2,
            templates: vec![("success-rate".into(), false)],
            args,
            dry_run: vec![DryRun {
                metric_name: "total-.*".into(),
            }],
            measurement_retention: vec![],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn run_arg(name: &str, value: &str) -> AnalysisRunArgument {
        AnalysisRunArgument {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    #[test]
    fn builds_the_run_spec_with_namespaced_templates_first() {
        let cluster = spec(
            "metrics: [{name: c, provider: {prometheus: {query: up}}}]\nargs: [{name: token, valueFrom: {secretKeyRef: {name: dd, key: api-key}}}]",
        );
        let namespaced = spec(SUCCESS_RATE);
        let mut req = request(vec![run_arg("service-name", "guestbook-svc")]);
        req.measurement_retention = vec![MeasurementRetention {
            metric_name: "c".into(),
            limit: 5,
        }];
        let run = build_run_spec(
            &req,
            &[
                (display_name("shared", true), cluster),
                (display_name("success-rate", false), namespaced),
            ],
        )
        .unwrap();
        let names: Vec<_> = run.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["success-rate", "c"]);
        assert_eq!(
            run.args,
            vec![
                arg("service-name", "guestbook-svc"),
                arg("namespace", "default"),
                Argument {
                    name: "token".into(),
                    value: None,
                    value_from: Some(ValueFrom {
                        secret_key_ref: Some(SecretKeyRef {
                            name: "dd".into(),
                            key: "api-key".into()
                        }),
                        field_ref: None
                    })
                },
            ],
            "secretKeyRef stays on the run for the run controller"
        );
        assert_eq!(run.dry_run, req.dry_run);
        assert_eq!(run.measurement_retention, req.measurement_retention);
        assert_eq!(run.terminate, None);
    }

    #[test]
    fn request_rules_and_arguments_are_checked() {
        let template = spec(
            "metrics: [{name: total-errors, provider: {prometheus: {query: up}}}]\ndryRun: [{metricName: total-.*}]\nargs: [{name: x}]",
        );
        let t = [(display_name("success-rate", false), template)];
        let err = build_run_spec(&request(vec![run_arg("x", "1")]), &t).unwrap_err();
        assert!(
            err.to_string()
                .contains("(the Rollout's analysis and the templates)"),
            "{err}"
        );

        let mut unresolved = run_arg("x", "");
        unresolved.value = None;
        unresolved.value_from = Some(ArgumentValueFrom {
            pod_template_hash_value: Some(PodTemplateHashValue::Stable),
            field_ref: None,
        });
        assert_eq!(
            run_arguments(&[unresolved]),
            Err(ArgsError::PodTemplateHashUnresolved { arg: "x".into() })
        );

        let bare = AnalysisRunArgument {
            name: "x".into(),
            value: None,
            value_from: None,
        };
        assert_eq!(
            run_arguments(&[bare]).unwrap(),
            vec![arg("x", "")],
            "upstream's Rollout argument value is a plain string: unset means empty"
        );
    }

    #[test]
    fn field_ref_arguments_are_kept_or_frozen() {
        let with_field_ref = AnalysisRunArgument {
            name: "region".into(),
            value: None,
            value_from: Some(ArgumentValueFrom {
                pod_template_hash_value: None,
                field_ref: Some(FieldRef {
                    field_path: "metadata.labels['region']".into(),
                }),
            }),
        };
        let kept = run_arguments(std::slice::from_ref(&with_field_ref)).unwrap();
        assert_eq!(
            field_ref_of(&kept[0]).map(|f| f.field_path.as_str()),
            Some("metadata.labels['region']")
        );
        let mut args = vec![with_field_ref];
        let owner = json!({"metadata": {"name": "guestbook", "labels": {"region": "eu-west-1"}}});
        resolve_field_refs(&mut args, &owner).unwrap();
        assert_eq!(args[0], run_arg("region", "eu-west-1"));
    }

    // --- collect_templates ---

    #[test]
    fn collects_nested_templates_once_and_refuses_cycles() {
        let store: BTreeMap<String, AnalysisTemplateSpec> = [
            (
                "AnalysisTemplate/root",
                "templates: [{templateName: a}, {templateName: shared, clusterScope: true}]",
            ),
            (
                "AnalysisTemplate/a",
                "templates: [{templateName: shared, clusterScope: true}]\nmetrics: [{name: a, provider: {prometheus: {query: up}}}]",
            ),
            (
                "ClusterAnalysisTemplate/shared",
                "metrics: [{name: s, provider: {prometheus: {query: up}}}]",
            ),
            ("AnalysisTemplate/loop1", "templates: [{templateName: loop2}]"),
            ("AnalysisTemplate/loop2", "templates: [{templateName: loop1}]"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), spec(v)))
        .collect();
        let fetch = |r: &AnalysisTemplateRef| -> Result<AnalysisTemplateSpec, ArgsError> {
            let name = display_name(&r.template_name, r.cluster_scope.unwrap_or(false));
            store.get(&name).cloned().ok_or(ArgsError::FieldRef {
                path: name,
                reason: "not found".into(),
            })
        };
        let root = request_templates(&AnalysisRunRequest {
            templates: vec![("root".into(), false)],
            ..request(vec![])
        });
        let got = collect_templates(&root, fetch).unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "AnalysisTemplate/root",
                "AnalysisTemplate/a",
                "ClusterAnalysisTemplate/shared"
            ]
        );
        let run = build_run_spec(&request(vec![]), &got).unwrap();
        assert_eq!(run.metrics.len(), 2);

        let cycle = collect_templates(
            &[AnalysisTemplateRef {
                template_name: "loop1".into(),
                cluster_scope: None,
            }],
            fetch,
        )
        .unwrap_err();
        assert_eq!(
            cycle.to_string(),
            "template references form a cycle: AnalysisTemplate/loop1 -> AnalysisTemplate/loop2 -> AnalysisTemplate/loop1"
        );
        let missing = collect_templates(
            &[AnalysisTemplateRef {
                template_name: "nope".into(),
                cluster_scope: None,
            }],
            fetch,
        );
        assert!(missing.is_err(), "fetch errors propagate");
        assert_eq!(
            referenced_templates(&store["AnalysisTemplate/root"]).len(),
            2
        );
    }

    // --- resolve / masked ---

    #[test]
    fn substitutes_every_string_and_keeps_numbers_typed() {
        let metrics = spec(SUCCESS_RATE).metrics;
        let args = [
            plain("service-name", "guestbook"),
            plain("namespace", "prod"),
            plain("count", "5"),
            plain("threshold", "0.95"),
        ];
        let resolved = resolve(&metrics, &args).unwrap();
        let m = &resolved[0];
        assert_eq!(m.count, Some(IntOrString::String("5".into())));
        assert_eq!(m.effective_count().unwrap(), Some(5));
        assert_eq!(m.success_condition.as_deref(), Some("result[0] >= 0.95"));
        assert_eq!(
            m.provider.prometheus.as_ref().unwrap().query.as_deref(),
            Some(
                r#"sum(rate(http_requests_total{service="guestbook",namespace="prod",code!~"5.*"}[5m]))"#
            )
        );
    }

    #[test]
    fn substitutes_in_web_headers_job_specs_and_map_keys() {
        let metric: Metric = serde_yaml::from_str(
            r#"
name: m
provider:
  web:
    url: "https://api.example.com/v1/{{args.service}}?q=\"x\""
    headers: [{key: Authorization, value: "Bearer {{args.token}}"}]
    jsonBody: {"{{args.key}}": "{{args.service}}", n: 3}
"#,
        )
        .unwrap();
        let args = [
            plain("service", "a\"b\\c\nd"),
            ResolvedArg {
                name: "token".into(),
                value: Some("s3cr3t".into()),
                secret: true,
            },
            plain("key", "svc"),
        ];
        let got = resolve_metric(&metric, &args).unwrap();
        let web = got.provider.web.as_ref().unwrap();
        assert_eq!(
            web.url, "https://api.example.com/v1/a\"b\\c\nd?q=\"x\"",
            "quotes and newlines in values survive (upstream escapes them for its JSON text)"
        );
        assert_eq!(web.headers[0].value, "Bearer s3cr3t");
        let body = web.json_body.as_ref().unwrap();
        assert_eq!(body["svc"], json!("a\"b\\c\nd"));
        assert_eq!(body["n"], json!(3));

        let shown = masked_metric(&metric, &args).unwrap();
        assert_eq!(
            shown.provider.web.as_ref().unwrap().headers[0].value,
            "Bearer *****"
        );
        let unread = [
            plain("service", "x"),
            ResolvedArg {
                name: "token".into(),
                value: None,
                secret: true,
            },
            plain("key", "k"),
        ];
        assert!(
            masked_metric(&metric, &unread).is_ok(),
            "masking needs no secret value"
        );
        assert!(resolve_metric(&metric, &unread).is_err());

        let job: Metric = serde_yaml::from_str(
            r#"
name: load
provider:
  job:
    spec:
      backoffLimit: 1
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: t
            image: "busybox:{{args.tag}}"
            args: [wget, "http://{{args.service}}/"]
"#,
        )
        .unwrap();
        let got = resolve_metric(&job, &[plain("tag", "1.36"), plain("service", "svc")]).unwrap();
        let pod = got.provider.job.unwrap().spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["wget".to_string(), "http://svc/".to_string()][..])
        );
    }

    #[test]
    fn substitution_errors_say_which_field() {
        let metric: Metric = serde_yaml::from_str(
            r#"
name: m
successCondition: result > {{args.min}}
provider: {prometheus: {query: "up{job=\"{{args.job}}\"}"}}
"#,
        )
        .unwrap();
        let cases = [
            (
                vec![plain("min", "1")],
                "metric \"m\", field provider.prometheus.query: cannot resolve {{args.job}}",
            ),
            (
                vec![
                    plain("min", "1"),
                    ResolvedArg {
                        name: "job".into(),
                        value: None,
                        secret: false,
                    },
                ],
                "metric \"m\", field provider.prometheus.query: {{args.job}} has no value: supply argument \"job\"",
            ),
            (
                vec![plain("job", "x")],
                "field successCondition: cannot resolve {{args.min}}",
            ),
        ];
        for (args, message) in cases {
            let err = resolve_metric(&metric, &args).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }

        let other: Metric =
            serde_yaml::from_str("name: m\nprovider: {prometheus: {query: 'x{{ inputs.y }}'}}")
                .unwrap();
        assert_eq!(
            resolve_metric(&other, &[]).unwrap_err(),
            ArgsError::UnknownTag {
                metric: "m".into(),
                tag: "inputs.y".into(),
                field: "provider.prometheus.query".into()
            }
        );
        let open: Metric =
            serde_yaml::from_str("name: m\nprovider: {prometheus: {query: 'x{{args.y'}}").unwrap();
        assert!(matches!(
            resolve_metric(&open, &[plain("y", "1")]),
            Err(ArgsError::Unterminated { .. })
        ));
    }

    #[test]
    fn a_replacement_is_not_scanned_again() {
        let metric: Metric =
            serde_yaml::from_str("name: m\nprovider: {prometheus: {query: '{{args.a}}'}}").unwrap();
        let got = resolve_metric(&metric, &[plain("a", "{{args.b}}")]).unwrap();
        assert_eq!(
            got.provider.prometheus.unwrap().query.as_deref(),
            Some("{{args.b}}")
        );
    }

    #[test]
    fn from_run_args_marks_secrets() {
        let args = vec![
            arg("a", "1"),
            Argument {
                name: "token".into(),
                value: None,
                value_from: Some(ValueFrom {
                    secret_key_ref: Some(SecretKeyRef {
                        name: "s".into(),
                        key: "k".into(),
                    }),
                    field_ref: None,
                }),
            },
        ];
        let resolved = ResolvedArg::from_run_args(&args);
        assert_eq!(resolved[0], plain("a", "1"));
        assert!(resolved[1].secret && resolved[1].value.is_none());
    }

    #[test]
    fn redacts_secret_values_longest_first() {
        let args = [
            ResolvedArg {
                name: "a".into(),
                value: Some("abc".into()),
                secret: true,
            },
            ResolvedArg {
                name: "b".into(),
                value: Some("abcdef".into()),
                secret: true,
            },
            ResolvedArg {
                name: "empty".into(),
                value: Some(String::new()),
                secret: true,
            },
            plain("public", "abc"),
        ];
        assert_eq!(
            redact("401 for key abcdef and abc", &args),
            "401 for key ***** and *****"
        );
    }

    // --- field_ref ---

    #[test]
    fn field_paths_follow_upstream() {
        let rollout = json!({
            "metadata": {
                "name": "guestbook",
                "namespace": "prod",
                "uid": "1234",
                "labels": {"app": "guestbook", "tier": "web \"x\""},
                "annotations": {"x.y/z": "v"}
            },
            "spec": {
                "replicas": 5,
                "template": {"spec": {"containers": [{"image": "guestbook:v2"}]}}
            },
            "status": {
                "canary": {"weights": {"canary": {"podTemplateHash": "6c54544f8f", "weight": 12.5}}},
                "paused": false,
                "nothing": null
            }
        });
        let ok = [
            ("metadata.name", "guestbook"),
            ("metadata.namespace", "prod"),
            ("metadata.uid", "1234"),
            ("metadata.labels['app']", "guestbook"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['x.y/z']", "v"),
            (
                "metadata.labels",
                "app=\"guestbook\"\ntier=\"web \\\"x\\\"\"",
            ),
            ("status.canary.weights.canary.podTemplateHash", "6c54544f8f"),
            ("status.canary.weights.canary.weight", "12.5"),
            ("spec.replicas", "5"),
            ("status.paused", "false"),
            ("spec.template.spec.containers[0].image", "guestbook:v2"),
            ("metadata['annotations']['x.y/z']", "v"),
        ];
        for (path, want) in ok {
            assert_eq!(field_ref(&rollout, path).as_deref(), Ok(want), "{path}");
        }
        let bad = [
            ("status.canary.missing", "has no field \"missing\""),
            (
                "spec.template.spec.containers[3].image",
                "index 3 is out of range",
            ),
            ("spec.template.spec.containers.x", "index it with a number"),
            ("spec.template", "must end at a string, number or boolean"),
            ("status.nothing", "is null"),
            ("spec.replicas.x", "is a scalar"),
            ("metadata.labels['']", "empty key subscript"),
        ];
        for (path, message) in bad {
            let err = field_ref(&rollout, path).unwrap_err();
            assert!(err.to_string().contains(message), "{path}: {err}");
        }
    }
}
