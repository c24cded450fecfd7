//! Flagger metric checks: decides what query a Canary metric sends (its MetricTemplate rendered with
//! the canary's variables, or a builtin `request-success-rate` / `request-duration` query for the
//! traffic provider), and whether the value that comes back passes the metric's threshold.
//!
//! Upstream counterparts (fluxcd/flagger): `pkg/apis/flagger/v1beta1/metric.go`
//! (`MetricTemplateModel.TemplateFunctions`), `pkg/metrics/observers/render.go` (`RenderQuery`),
//! `pkg/controller/scheduler_metrics.go` (`runBuiltinMetricChecks`, `runMetricChecks`,
//! `toMetricModel`: threshold semantics and messages).
//!
//! Template syntax: Flagger renders queries with Go's `text/template`, executed on nil data with one
//! function per variable, so what works there is `{{ name }}`, `{{namespace}}`, `{{- target -}}`
//! (trim markers), `{{ variables.key }}`, `{{ index variables "key" }}` and comments. This module
//! accepts exactly those forms.
//!
//! Deliberate differences from upstream (each turns a silent wrong query into a clear error):
//! - an unknown variable, or a `variables.key` the metric's `templateVariables` does not set, is an
//!   error naming it (Go renders a missing map key as `<no value>` and sends the broken query);
//!   other Go template constructs (`if`, pipelines, `.name`) are errors that say what to write;
//! - the builtin queries' own differences are listed in `builtins` (the submodule holding
//!   every observer's PromQL).
//!
//! This module must never: run a query, read a Secret or a MetricTemplate from the cluster, read
//! the clock, or panic on any query text or value.

use std::collections::BTreeMap;

use crate::api::flagger::canary::{Canary, CanaryMetric, CanaryThresholdRange};

/// The variables a Flagger query template may use (upstream `MetricTemplateModel`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricVars {
    /// `{{ name }}`: the Canary's name.
    pub name: String,
    /// `{{ namespace }}`: the Canary's namespace.
    pub namespace: String,
    /// `{{ target }}`: `spec.targetRef.name`.
    pub target: String,
    /// `{{ service }}`: `spec.service.name`, default the target's name.
    pub service: String,
    /// `{{ ingress }}`: `spec.ingressRef.name`, default the target's name.
    pub ingress: String,
    /// `{{ route }}`: `spec.routeRef.name`, default the target's name.
    pub route: String,
    /// `{{ interval }}`: the metric's `interval`, default `1m`.
    pub interval: String,
    /// `{{ variables.<key> }}`: the metric's `templateVariables`.
    pub variables: BTreeMap<String, String>,
}

/// The names usable as `{{ <name> }}`, for messages.
const VARIABLE_NAMES: &str =
    "name, namespace, target, service, ingress, route, interval, variables.<key>";

impl MetricVars {
    /// The variables for one metric of a Canary, as upstream `toMetricModel`.
    pub fn for_canary(canary: &Canary, metric: &CanaryMetric) -> MetricVars {
        let spec = &canary.spec;
        let target = spec.target_ref.name.clone();
        let or_target = |name: Option<&String>| {
            name.filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| target.clone())
        };
        MetricVars {
            name: canary.metadata.name.clone().unwrap_or_default(),
            namespace: canary.metadata.namespace.clone().unwrap_or_default(),
            service: or_target(spec.service.as_ref().and_then(|s| s.name.as_ref())),
            ingress: or_target(spec.ingress_ref.as_ref().map(|r| &r.name)),
            route: or_target(spec.route_ref.as_ref().map(|r| &r.name)),
            interval: metric.interval().to_owned(),
            variables: metric.template_variables.clone().unwrap_or_default(),
            target,
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "name" => &self.name,
            "namespace" => &self.namespace,
            "target" => &self.target,
            "service" => &self.service,
            "ingress" => &self.ingress,
            "route" => &self.route,
            "interval" => &self.interval,
            _ => return None,
        })
    }
}

/// Why a query could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlaggerMetricError {
    /// `{{ x }}` where `x` is not a Flagger template variable.
    #[error(
        "query template: unknown variable {{{{ {name} }}}}: the variables are {VARIABLE_NAMES}"
    )]
    UnknownVariable {
        /// What was written.
        name: String,
    },
    /// `{{ variables.key }}` where the metric's `templateVariables` has no `key`.
    #[error(
        "query template: {{{{ variables.{key} }}}} is not set: add `{key}` to the metric's templateVariables (set: {set})"
    )]
    MissingTemplateVariable {
        /// The missing key.
        key: String,
        /// The keys that are set, comma-separated, or `none`.
        set: String,
    },
    /// `{{` without a closing `}}`.
    #[error("query template: `{{{{` at byte {at} is never closed by `}}}}`")]
    Unclosed {
        /// Byte offset of the opening braces.
        at: usize,
    },
    /// A Go template construct Flagger's variables do not support.
    #[error("query template: {{{{{action}}}}} is not supported: {hint}")]
    Unsupported {
        /// The action as written.
        action: String,
        /// What to write instead.
        hint: &'static str,
    },
    /// A builtin metric for a provider that has no builtin queries.
    #[error(
        "metric {metric:?}: provider {provider:?} has no builtin {metric} query (Flagger falls back to Istio's, which finds no data): define a MetricTemplate with a query for your ingress or gateway and reference it with templateRef"
    )]
    NoBuiltin {
        /// The builtin metric name.
        metric: String,
        /// The provider as given.
        provider: String,
    },
}

// === Rendering ===

/// Renders a Flagger query template (`{{ namespace }}`, `{{ variables.x }}`, …) with `vars`.
pub fn render(query: &str, vars: &MetricVars) -> Result<String, FlaggerMetricError> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let inner_start = start + 2;
        let Some(len) = rest[inner_start..].find("}}") else {
            return Err(FlaggerMetricError::Unclosed { at: offset + start });
        };
        let mut inner = &rest[inner_start..inner_start + len];
        let mut trim_after = false;
        // Go's trim markers need a space between the dash and the action: `{{- x -}}`.
        if let Some(after_dash) = inner.strip_prefix('-')
            && after_dash.starts_with(char::is_whitespace)
        {
            let kept = out.trim_end().len();
            out.truncate(kept);
            inner = after_dash;
        }
        if let Some(before_dash) = inner.strip_suffix('-')
            && before_dash.ends_with(char::is_whitespace)
        {
            trim_after = true;
            inner = before_dash;
        }
        out.push_str(&action(inner.trim(), vars)?);
        let consumed = inner_start + len + 2;
        rest = &rest[consumed..];
        offset += consumed;
        if trim_after {
            let trimmed = rest.trim_start();
            offset += rest.len() - trimmed.len();
            rest = trimmed;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The text one `{{ action }}` renders to.
fn action(action: &str, vars: &MetricVars) -> Result<String, FlaggerMetricError> {
    let unsupported = |hint| FlaggerMetricError::Unsupported {
        action: action.to_owned(),
        hint,
    };
    if action.starts_with("/*") && action.ends_with("*/") {
        return Ok(String::new());
    }
    if let Some(value) = vars.get(action) {
        return Ok(value.to_owned());
    }
    if let Some(key) = action.strip_prefix("variables.") {
        if !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return variable(key, vars);
        }
        return Err(unsupported(
            "a key with characters other than letters, digits and `_` is written {{ index variables \"my-key\" }}",
        ));
    }
    if let Some(args) = action
        .strip_prefix("index")
        .filter(|rest| rest.starts_with(char::is_whitespace))
    {
        let mut words = args.split_whitespace();
        if words.next() == Some("variables")
            && let Some(key) = words.next().and_then(quoted)
            && words.next().is_none()
        {
            return variable(key, vars);
        }
        return Err(unsupported(
            "only {{ index variables \"key\" }} is supported",
        ));
    }
    if let Some(name) = action.strip_prefix('.')
        && (vars.get(name).is_some() || name.starts_with("variables"))
    {
        return Err(unsupported(
            "Flagger's variables are functions, not fields: drop the leading dot",
        ));
    }
    if !action.is_empty()
        && action
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return Err(FlaggerMetricError::UnknownVariable {
            name: action.to_owned(),
        });
    }
    Err(unsupported(
        "Flagger query templates use only variables: {{ name }}, {{ namespace }}, {{ target }}, {{ service }}, {{ ingress }}, {{ route }}, {{ interval }}, {{ variables.<key> }}",
    ))
}

fn variable(key: &str, vars: &MetricVars) -> Result<String, FlaggerMetricError> {
    vars.variables
        .get(key)
        .cloned()
        .ok_or_else(|| FlaggerMetricError::MissingTemplateVariable {
            key: key.to_owned(),
            set: if vars.variables.is_empty() {
                "none".to_owned()
            } else {
                vars.variables
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// The contents of a Go string literal written `"key"` or `` `key` `` (no escapes inside).
fn quoted(word: &str) -> Option<&str> {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .or_else(|| word.strip_prefix('`').and_then(|w| w.strip_suffix('`')))
        .filter(|k| !k.contains(['"', '\\']))
}

// === Builtin queries ===

mod builtins;

pub use builtins::{Builtin, BuiltinQuery, Observer, builtin_query, metrics_provider};

// === Judging ===

/// One metric check to judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricCheck<'a> {
    /// The Canary metric's name.
    pub metric: &'a str,
    /// The query sent (for the message).
    pub query: &'a str,
    /// The value returned: `None` (or NaN) when the query found no values. For a builtin
    /// `request-duration`, in milliseconds ([`BuiltinQuery::check_value`]).
    pub value: Option<f64>,
    /// `thresholdRange`; when set, the deprecated `threshold` is ignored (as upstream).
    pub range: Option<&'a CanaryThresholdRange>,
    /// The deprecated `threshold`.
    pub threshold: Option<f64>,
    /// Which builtin this is, if any: it decides what `threshold` means and the units.
    pub builtin: Option<Builtin>,
}

impl<'a> MetricCheck<'a> {
    /// The check for a Canary metric whose query returned `value`. `builtin` is the builtin the
    /// query came from (a metric named like a builtin but checked through its `templateRef` or
    /// inline `query` is judged as a custom metric, as upstream).
    pub fn new(
        metric: &'a CanaryMetric,
        query: &'a str,
        value: Option<f64>,
        builtin: Option<Builtin>,
    ) -> MetricCheck<'a> {
        MetricCheck {
            metric: &metric.name,
            query,
            value,
            range: metric.threshold_range.as_ref(),
            threshold: metric.threshold_value(),
            builtin,
        }
    }
}

/// The verdict on one metric check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlaggerVerdict {
    /// Whether the check passed. A failed check counts towards the analysis `threshold`.
    pub passed: bool,
    /// Why, in Flagger's words plus the query, the value and the accepted range.
    pub message: String,
    /// Whether it failed because the query found no values (Flagger's `ErrNoValuesFound`).
    pub no_values: bool,
}

/// Judges a metric value as upstream `runBuiltinMetricChecks` / `runMetricChecks`:
/// - no value, or NaN: not passed ("Halt advancement no values found …");
/// - with `thresholdRange`: fails when `value < min` or `value > max` (the bounds pass);
/// - otherwise the deprecated `threshold` (0 when unset, as upstream) is a minimum for
///   `request-success-rate` and a maximum for everything else;
/// - `request-duration` compares whole milliseconds: value and bounds are truncated, as upstream's
///   `time.Duration` conversions do.
pub fn judge(check: &MetricCheck<'_>) -> FlaggerVerdict {
    let metric = check.metric;
    let query = check.query.trim();
    let Some(value) = check.value.filter(|v| !v.is_nan()) else {
        let what = if check.builtin.is_some() {
            format!("metric {metric}")
        } else {
            format!("custom metric: {metric}")
        };
        return FlaggerVerdict {
            passed: false,
            message: format!(
                "Halt advancement no values found for {what}: the query returned no data (is the target receiving traffic?); query: {query}"
            ),
            no_values: true,
        };
    };
    let duration = check.builtin == Some(Builtin::RequestDuration);
    let units = |v: f64| if duration { v.trunc() } else { v };
    let value = units(value);
    let shown = show(value, check.builtin);

    let (min, max, range_text, note) = match check.range {
        Some(range) => (
            range.min_value(),
            range.max_value(),
            format!(
                "[{}, {}]",
                range
                    .min
                    .as_ref()
                    .map_or("-inf".to_owned(), |n| n.to_string()),
                range
                    .max
                    .as_ref()
                    .map_or("+inf".to_owned(), |n| n.to_string())
            ),
            "",
        ),
        None => {
            let threshold = check.threshold.unwrap_or(0.0);
            let note = if check.threshold.is_none() {
                " (no thresholdRange or threshold is set, so the threshold is 0 as in Flagger; set thresholdRange)"
            } else {
                ""
            };
            if check.builtin == Some(Builtin::RequestSuccessRate) {
                (
                    Some(threshold),
                    None,
                    format!("threshold (minimum) {threshold}"),
                    note,
                )
            } else {
                (
                    None,
                    Some(threshold),
                    format!("threshold (maximum) {threshold}"),
                    note,
                )
            }
        }
    };
    let min = min.map(units);
    let max = max.map(units);
    let detail = format!("accepted {range_text}{note}; query: {query}");

    if let Some(min) = min
        && value < min
    {
        return FlaggerVerdict {
            passed: false,
            message: format!(
                "Halt advancement {metric} {shown} < {}: {detail}",
                show(min, check.builtin)
            ),
            no_values: false,
        };
    }
    if let Some(max) = max
        && value > max
    {
        return FlaggerVerdict {
            passed: false,
            message: format!(
                "Halt advancement {metric} {shown} > {}: {detail}",
                show(max, check.builtin)
            ),
            no_values: false,
        };
    }
    FlaggerVerdict {
        passed: true,
        message: format!("{metric} {shown} passed: {detail}"),
        no_values: false,
    }
}

/// A value as Flagger's events print it: a success rate as `99.50%`, a duration as `250ms`,
/// anything else with two decimals.
fn show(value: f64, builtin: Option<Builtin>) -> String {
    match builtin {
        Some(Builtin::RequestSuccessRate) => format!("{value:.2}%"),
        Some(Builtin::RequestDuration) => format!("{value}ms"),
        None => format!("{value:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn vars() -> MetricVars {
        MetricVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo-svc".into(),
            ingress: "podinfo-ing".into(),
            route: "podinfo-route".into(),
            interval: "1m".into(),
            variables: [("direction".to_string(), "inbound".to_string())].into(),
        }
    }

    fn range(yaml: &str) -> CanaryThresholdRange {
        serde_yaml::from_str(yaml).expect("test range parses")
    }

    // --- render ---

    #[test]
    fn renders_every_documented_form() {
        let cases = [
            ("{{ name }}.{{ namespace }}", "podinfo.test"),
            (
                "{{target}}|{{service}}|{{ingress}}|{{route}}|{{interval}}",
                "podinfo|podinfo-svc|podinfo-ing|podinfo-route|1m",
            ),
            (
                "direction=\"{{ variables.direction }}\"",
                "direction=\"inbound\"",
            ),
            ("{{ index variables \"direction\" }}", "inbound"),
            ("a  {{- target -}}  b", "apodinfob"),
            ("x{{/* a comment */}}y", "xy"),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &vars()).as_deref(), Ok(want), "{template}");
        }
        assert_eq!(
            render("no actions at all", &vars()).unwrap(),
            "no actions at all"
        );
    }

    // docs/gitbook/usage/metrics.md: the Linkerd template with templateVariables.
    #[test]
    fn renders_the_documented_linkerd_template() {
        let template = r#"histogram_quantile(
  0.99,
  sum(
    rate(
      response_latency_ms_bucket{
        namespace="{{ namespace }}",
        deployment=~"{{ target }}",
        direction="{{ variables.direction }}"
      }[{{ interval }}]
    )
  ) by (le)
)
"#;
        let got = render(template, &vars()).unwrap();
        assert!(got.contains(r#"namespace="test","#), "{got}");
        assert!(got.contains(r#"deployment=~"podinfo","#), "{got}");
        assert!(got.contains(r#"direction="inbound""#), "{got}");
        assert!(got.contains("}[1m]"), "{got}");

        // docs/gitbook/usage/metrics.md: Graphite writes the actions without spaces.
        let graphite = "stats.timers.httpServerRequests.app.{{target}}.count, {{interval}}, 'avg'";
        assert_eq!(
            render(
                graphite,
                &MetricVars {
                    interval: "1min".into(),
                    ..vars()
                }
            )
            .unwrap(),
            "stats.timers.httpServerRequests.app.podinfo.count, 1min, 'avg'"
        );
    }

    #[test]
    fn render_errors_name_the_problem() {
        let cases: [(&str, FlaggerMetricError); 6] = [
            (
                "x{{ deployment }}",
                FlaggerMetricError::UnknownVariable {
                    name: "deployment".into(),
                },
            ),
            (
                "{{ variables.region }}",
                FlaggerMetricError::MissingTemplateVariable {
                    key: "region".into(),
                    set: "direction".into(),
                },
            ),
            ("ok {{ name", FlaggerMetricError::Unclosed { at: 3 }),
            (
                "{{ .namespace }}",
                FlaggerMetricError::Unsupported {
                    action: ".namespace".into(),
                    hint: "Flagger's variables are functions, not fields: drop the leading dot",
                },
            ),
            (
                "{{ if name }}",
                FlaggerMetricError::Unsupported {
                    action: "if name".into(),
                    hint: "Flagger query templates use only variables: {{ name }}, {{ namespace }}, {{ target }}, {{ service }}, {{ ingress }}, {{ route }}, {{ interval }}, {{ variables.<key> }}",
                },
            ),
            (
                "{{ variables.my-key }}",
                FlaggerMetricError::Unsupported {
                    action: "variables.my-key".into(),
                    hint: "a key with characters other than letters, digits and `_` is written {{ index variables \"my-key\" }}",
                },
            ),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &vars()), Err(want), "{template}");
        }
        let none = MetricVars {
            variables: BTreeMap::new(),
            ..vars()
        };
        let err = render("{{ variables.x }}", &none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "query template: {{ variables.x }} is not set: add `x` to the metric's templateVariables (set: none)"
        );
        assert!(
            render("{{ index variables \"x\" \"y\" }}", &vars()).is_err(),
            "only one key"
        );
    }

    #[test]
    fn vars_follow_to_metric_model() {
        let canary: Canary = serde_yaml::from_str(
            r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  ingressRef: {apiVersion: networking.k8s.io/v1, kind: Ingress, name: podinfo-ing}
  service: {port: 9898}
  analysis:
    metrics:
    - name: latency
      templateRef: {name: latency}
      templateVariables: {direction: inbound}
    - name: request-success-rate
      interval: 30s
"#,
        )
        .unwrap();
        let metrics = &canary.analysis().unwrap().metrics;
        let v = MetricVars::for_canary(&canary, &metrics[0]);
        assert_eq!(
            v,
            MetricVars {
                name: "podinfo".into(),
                namespace: "test".into(),
                target: "podinfo".into(),
                service: "podinfo".into(),
                ingress: "podinfo-ing".into(),
                route: "podinfo".into(),
                interval: "1m".into(),
                variables: [("direction".to_string(), "inbound".to_string())].into(),
            }
        );
        assert_eq!(MetricVars::for_canary(&canary, &metrics[1]).interval, "30s");
    }

    // --- judge ---

    #[test]
    fn judges_as_flagger() {
        let success = Some(Builtin::RequestSuccessRate);
        let duration = Some(Builtin::RequestDuration);
        let min99 = range("{min: 99}");
        let max500 = range("{max: 500}");
        let between = range("{min: 10, max: 1000}");
        let empty = range("{}");
        // (value, range, threshold, builtin, passed, message fragment)
        type Case<'a> = (
            Option<f64>,
            Option<&'a CanaryThresholdRange>,
            Option<f64>,
            Option<Builtin>,
            bool,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            // docs: request-success-rate thresholdRange.min 99
            (
                Some(99.5),
                Some(&min99),
                None,
                success,
                true,
                "request-success-rate 99.50% passed: accepted [99, +inf]",
            ),
            (Some(99.0), Some(&min99), None, success, true, "passed"),
            (
                Some(98.99),
                Some(&min99),
                None,
                success,
                false,
                "Halt advancement request-success-rate 98.99% < 99.00%",
            ),
            // docs: request-duration thresholdRange.max 500 (ms)
            (
                Some(500.0),
                Some(&max500),
                None,
                duration,
                true,
                "500ms passed",
            ),
            (
                Some(500.9),
                Some(&max500),
                None,
                duration,
                true,
                "request-duration 500ms passed",
            ),
            (
                Some(501.0),
                Some(&max500),
                None,
                duration,
                false,
                "request-duration 501ms > 500ms",
            ),
            // docs: custom metric with min 10, max 1000
            (Some(10.0), Some(&between), None, None, true, "passed"),
            (Some(1000.0), Some(&between), None, None, true, "passed"),
            (
                Some(9.99),
                Some(&between),
                None,
                None,
                false,
                "9.99 < 10.00",
            ),
            (
                Some(1000.5),
                Some(&between),
                None,
                None,
                false,
                "1000.50 > 1000.00",
            ),
            (
                Some(-5.0),
                Some(&empty),
                Some(1.0),
                None,
                true,
                "accepted [-inf, +inf]",
            ),
            // the deprecated threshold
            (
                Some(98.0),
                None,
                Some(99.0),
                success,
                false,
                "98.00% < 99.00%: accepted threshold (minimum) 99",
            ),
            (Some(99.0), None, Some(99.0), success, true, "passed"),
            (
                Some(600.0),
                None,
                Some(500.0),
                duration,
                false,
                "600ms > 500ms",
            ),
            (
                Some(5.0),
                None,
                Some(1.0),
                None,
                false,
                "5.00 > 1.00: accepted threshold (maximum) 1",
            ),
            (
                Some(0.5),
                None,
                None,
                None,
                false,
                "no thresholdRange or threshold is set",
            ),
            (Some(0.0), None, None, None, true, "passed"),
            // no values
            (
                None,
                Some(&min99),
                None,
                success,
                false,
                "Halt advancement no values found for metric request-success-rate",
            ),
            (
                Some(f64::NAN),
                Some(&between),
                None,
                None,
                false,
                "no values found for custom metric: m",
            ),
            (
                Some(f64::INFINITY),
                Some(&between),
                None,
                None,
                false,
                "inf > 1000.00",
            ),
        ];
        for (value, range, threshold, builtin, passed, fragment) in cases {
            let verdict = judge(&MetricCheck {
                metric: builtin.map_or("m", Builtin::name),
                query: "sum(up)",
                value,
                range,
                threshold,
                builtin,
            });
            assert_eq!(
                verdict.passed, passed,
                "{value:?} {range:?} {threshold:?}: {}",
                verdict.message
            );
            assert!(verdict.message.contains(fragment), "{}", verdict.message);
            assert!(
                verdict.message.contains("sum(up)"),
                "the message shows the query"
            );
            assert_eq!(verdict.no_values, value.is_none_or(f64::is_nan));
        }
    }

    #[test]
    fn no_values_for_a_builtin_keeps_flaggers_words() {
        let verdict = judge(&MetricCheck {
            metric: "request-success-rate",
            query: "q",
            value: None,
            range: None,
            threshold: Some(99.0),
            builtin: Some(Builtin::RequestSuccessRate),
        });
        assert_eq!(
            verdict.message,
            "Halt advancement no values found for metric request-success-rate: the query returned no data (is the target receiving traffic?); query: q"
        );
    }

    #[test]
    fn check_from_a_canary_metric() {
        let metric: CanaryMetric = serde_yaml::from_str(
            "name: \"404s percentage\"\ntemplateRef: {name: not-found-percentage, namespace: istio-system}\nthresholdRange: {max: 5}\ninterval: 1m\n",
        )
        .unwrap();
        let verdict = judge(&MetricCheck::new(&metric, "q", Some(5.5), None));
        assert!(!verdict.passed);
        assert!(
            verdict
                .message
                .contains("404s percentage 5.50 > 5.00: accepted [-inf, 5]"),
            "{}",
            verdict.message
        );
        let legacy: CanaryMetric =
            serde_yaml::from_str("name: request-success-rate\nthreshold: 99\n").unwrap();
        let check = MetricCheck::new(&legacy, "q", Some(99.5), Some(Builtin::RequestSuccessRate));
        assert_eq!(check.threshold, Some(99.0));
        assert!(judge(&check).passed);
    }
}
