//! The judge's spec with every default applied, and every reason it cannot be used, each naming
//! its field under `provider.judge`. The defaults: `lookback` 5m, `step` 30s, `confidence` 0.95,
//! `threshold` pass 90 / marginal 75, per metric the `mannWhitney` test, `either` direction,
//! `allowedIncrease` / `allowedDecrease` 1.0, `nanStrategy: remove`, weight 1, not critical.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use crate::api::argo::judge::{
    JudgeDirection, JudgeMetric, JudgeNanStrategy, JudgeProvider, JudgeTest,
};

pub const DEFAULT_LOOKBACK: &str = "5m";
pub const DEFAULT_STEP: &str = "30s";
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
pub const DEFAULT_PASS: f64 = 90.0;
pub const DEFAULT_MARGINAL: f64 = 75.0;

/// A usable judge spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The window compared, ending at the measurement.
    pub lookback: Duration,
    /// Range-query resolution, as written (the Prometheus provider parses it again).
    pub step: String,
    /// The window as written ("5m").
    pub lookback_text: String,
    /// A metric differs when its p-value is below `1 - confidence`.
    pub confidence: f64,
    pub pass: f64,
    pub marginal: f64,
    pub metrics: Vec<MetricConfig>,
}

/// One metric, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricConfig {
    pub name: String,
    pub test: JudgeTest,
    pub canary_query: String,
    pub baseline_query: String,
    /// `proportion` only.
    pub totals: Option<(String, String)>,
    pub direction: JudgeDirection,
    pub allowed_increase: f64,
    pub allowed_decrease: f64,
    pub nan_strategy: JudgeNanStrategy,
    pub weight: f64,
    pub critical: bool,
}

/// One reason the spec cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("provider.judge.{field}: {message}")]
pub struct ConfigError {
    /// The field's path under `provider.judge` (`metrics[0].canaryQuery`).
    pub field: String,
    pub message: String,
}

/// The spec with defaults applied, or every reason it cannot be used (in field order).
pub fn configure(spec: &JudgeProvider) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut error = |field: String, message: String| errors.push(ConfigError { field, message });

    let lookback_text = text_or(spec.lookback.as_deref(), DEFAULT_LOOKBACK);
    let lookback = positive_duration(&lookback_text).unwrap_or_else(|e| {
        error("lookback".into(), e);
        Duration::ZERO
    });
    let step = text_or(spec.step.as_deref(), DEFAULT_STEP);
    match positive_duration(&step) {
        Ok(d) if !lookback.is_zero() && d > lookback => error(
            "step".into(),
            format!("{step:?} is longer than the lookback {lookback_text:?}"),
        ),
        Ok(_) => {}
        Err(e) => error("step".into(), e),
    }
    if let Some(p) = &spec.prometheus
        && (p.query.is_some() || p.range_query.is_some())
    {
        error(
            "prometheus".into(),
            "set only the connection here (address, authentication, headers, timeout, \
             insecure); each metric gives its own canaryQuery and baselineQuery"
                .into(),
        );
    }
    let confidence = number(spec.confidence.as_ref()).unwrap_or(DEFAULT_CONFIDENCE);
    if !(0.5..=0.9999).contains(&confidence) {
        error(
            "confidence".into(),
            format!("{confidence} must be between 0.5 and 0.9999"),
        );
    }
    let threshold = spec.threshold.clone().unwrap_or_default();
    let pass = number(threshold.pass.as_ref()).unwrap_or(DEFAULT_PASS);
    let marginal = number(threshold.marginal.as_ref()).unwrap_or(DEFAULT_MARGINAL);
    for (field, value) in [("threshold.pass", pass), ("threshold.marginal", marginal)] {
        if !(0.0..=100.0).contains(&value) {
            error(field.into(), format!("{value} must be between 0 and 100"));
        }
    }
    if marginal > pass {
        error(
            "threshold.marginal".into(),
            format!("{marginal} is above threshold.pass {pass}"),
        );
    }
    if spec.metrics.is_empty() {
        error("metrics".into(), "at least one metric is required".into());
    }
    let mut seen = HashSet::new();
    let mut metrics = Vec::with_capacity(spec.metrics.len());
    for (i, m) in spec.metrics.iter().enumerate() {
        let mut field_error = |field: &str, message: String| {
            error(format!("metrics[{i}].{field}"), message);
        };
        if m.name.trim().is_empty() {
            field_error("name", "must not be empty".into());
        } else if !seen.insert(m.name.as_str()) {
            field_error("name", format!("duplicate metric name {:?}", m.name));
        }
        metrics.push(metric(m, &mut field_error));
    }
    if errors.is_empty() {
        Ok(Config {
            lookback,
            step,
            lookback_text,
            confidence,
            pass,
            marginal,
            metrics,
        })
    } else {
        Err(errors)
    }
}

fn metric(m: &JudgeMetric, error: &mut impl FnMut(&str, String)) -> MetricConfig {
    let test = m.test.unwrap_or(JudgeTest::MannWhitney);
    let mut query = |field: &str, value: Option<&String>| match non_empty(value) {
        Some(q) => q.to_string(),
        None => {
            error(field, "is required".into());
            String::new()
        }
    };
    let canary_query = query("canaryQuery", m.canary_query.as_ref());
    let baseline_query = query("baselineQuery", m.baseline_query.as_ref());
    let totals = match test {
        JudgeTest::Proportion => Some((
            query("canaryTotalQuery", m.canary_total_query.as_ref()),
            query("baselineTotalQuery", m.baseline_total_query.as_ref()),
        )),
        JudgeTest::MannWhitney => {
            for (field, value) in [
                ("canaryTotalQuery", &m.canary_total_query),
                ("baselineTotalQuery", &m.baseline_total_query),
            ] {
                if value.is_some() {
                    error(field, "is used only with test: proportion".into());
                }
            }
            None
        }
    };
    let allowed_increase = number(m.allowed_increase.as_ref()).unwrap_or(1.0);
    if !(allowed_increase >= 1.0 && allowed_increase.is_finite()) {
        error(
            "allowedIncrease",
            format!("{allowed_increase} must be at least 1"),
        );
    }
    let allowed_decrease = number(m.allowed_decrease.as_ref()).unwrap_or(1.0);
    if !(allowed_decrease > 0.0 && allowed_decrease <= 1.0) {
        error(
            "allowedDecrease",
            format!("{allowed_decrease} must be above 0 and at most 1"),
        );
    }
    let weight = number(m.weight.as_ref()).unwrap_or(1.0);
    if !(weight > 0.0 && weight.is_finite()) {
        error("weight", format!("{weight} must be above 0"));
    }
    MetricConfig {
        name: m.name.clone(),
        test,
        canary_query,
        baseline_query,
        totals,
        direction: m.direction.unwrap_or(JudgeDirection::Either),
        allowed_increase,
        allowed_decrease,
        nan_strategy: m.nan_strategy.unwrap_or(JudgeNanStrategy::Remove),
        weight,
        critical: m.critical.unwrap_or(false),
    }
}

fn non_empty(value: Option<&String>) -> Option<&str> {
    value.map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn text_or(value: Option<&str>, default: &str) -> String {
    value
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default)
        .to_string()
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let parsed = kube::core::Duration::from_str(text)
        .map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    if parsed.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    let d: Duration = parsed.into();
    if d.is_zero() {
        return Err(format!("{text:?} is not positive"));
    }
    Ok(d)
}

/// A number as written; one too large for f64 reads as infinity (and is refused by its range).
fn number(value: Option<&serde_json::Number>) -> Option<f64> {
    value.map(|n| n.as_f64().unwrap_or(f64::INFINITY))
}
