//! One metric's verdict, as Kayenta's `MannWhitneyClassifier` reaches it: clean the samples
//! (`nanStrategy`), test canary against baseline, and call the metric High (canary significantly
//! higher and at least `allowedIncrease` times the baseline), Low (significantly lower and at
//! most `allowedDecrease` times it), or Pass — a High counting only when `direction` is
//! `increase` or `either`, a Low only when `decrease` or `either`. Samples that give no evidence
//! (none left, counts that are not counts) are NoData.
//!
//! The effect size the tolerances apply to is Kayenta's: canary mean / baseline mean (for
//! proportions, canary proportion / baseline proportion); a zero baseline makes any positive
//! canary infinitely higher. Values are assumed non-negative (latencies, rates, counts).

use serde::Serialize;

use super::config::MetricConfig;
use super::{mann_whitney, proportion};
use crate::api::argo::judge::{JudgeDirection, JudgeNanStrategy};

/// What a provider measured for one metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Samples {
    /// Every sample of each side (`mannWhitney`).
    Series {
        canary: Vec<f64>,
        baseline: Vec<f64>,
    },
    /// (events, total) of each side (`proportion`).
    Counts {
        canary: (f64, f64),
        baseline: (f64, f64),
    },
}

/// A metric's class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Class {
    /// No significant difference beyond the tolerance.
    Pass,
    /// The canary is significantly higher.
    High,
    /// The canary is significantly lower.
    Low,
    /// Not enough data to compare.
    NoData,
}

/// One side's figures, for the explanation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Samples compared (after `nanStrategy`), or the total count.
    pub n: u64,
    /// Mean of the samples, or the proportion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Median of the samples (`mannWhitney`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    /// Event count (`proportion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// One metric's verdict and the figures behind it (recorded in the measurement's metadata).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricJudgement {
    pub class: Class,
    /// `mannWhitney exact`, `mannWhitney asymptotic`, `fisher` or `z-test`.
    pub test: String,
    #[serde(rename = "U", skip_serializing_if = "Option::is_none")]
    pub u: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// canary / baseline (means or proportions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect_size: Option<f64>,
    /// U / (n_canary n_baseline): the chance a canary sample exceeds a baseline one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_language_effect: Option<f64>,
    pub canary: Side,
    pub baseline: Side,
    pub weight: f64,
    pub critical: bool,
    /// Why, in words.
    pub reason: String,
}

/// Classifies one metric at the given confidence.
pub fn classify(config: &MetricConfig, samples: &Samples, confidence: f64) -> MetricJudgement {
    match samples {
        Samples::Series { canary, baseline } => series(config, canary, baseline, confidence),
        Samples::Counts { canary, baseline } => counts(config, *canary, *baseline, confidence),
    }
}

fn series(
    config: &MetricConfig,
    canary: &[f64],
    baseline: &[f64],
    confidence: f64,
) -> MetricJudgement {
    let canary = clean(canary, config.nan_strategy);
    let baseline = clean(baseline, config.nan_strategy);
    let mut judgement = MetricJudgement {
        class: Class::NoData,
        test: "mannWhitney".into(),
        u: None,
        p_value: None,
        effect_size: None,
        common_language_effect: None,
        canary: describe(&canary),
        baseline: describe(&baseline),
        weight: config.weight,
        critical: config.critical,
        reason: String::new(),
    };
    let Some(result) = mann_whitney::test(&canary, &baseline) else {
        judgement.reason = format!(
            "no data to compare ({} canary and {} baseline samples left after nanStrategy)",
            canary.len(),
            baseline.len()
        );
        return judgement;
    };
    let ratio = effect(mean(&canary), mean(&baseline));
    let higher = result.u > half_pairs(canary.len(), baseline.len());
    judgement.test = format!("mannWhitney {}", result.method.as_str());
    judgement.u = Some(result.u);
    judgement.p_value = Some(result.p_value);
    judgement.effect_size = Some(ratio);
    judgement.common_language_effect =
        Some(result.common_language_effect(canary.len(), baseline.len()));
    decide(
        &mut judgement,
        config,
        result.p_value,
        higher,
        ratio,
        confidence,
    );
    judgement
}

fn counts(
    config: &MetricConfig,
    canary: (f64, f64),
    baseline: (f64, f64),
    confidence: f64,
) -> MetricJudgement {
    let sides = (
        proportion::Counts::from_measured(canary.0, canary.1),
        proportion::Counts::from_measured(baseline.0, baseline.1),
    );
    let side = |c: &Result<proportion::Counts, String>| Side {
        n: c.as_ref().map_or(0, |c| c.total),
        mean: c.as_ref().ok().map(proportion::Counts::proportion),
        median: None,
        events: c.as_ref().ok().map(|c| c.events),
    };
    let mut judgement = MetricJudgement {
        class: Class::NoData,
        test: "proportion".into(),
        u: None,
        p_value: None,
        effect_size: None,
        common_language_effect: None,
        canary: side(&sides.0),
        baseline: side(&sides.1),
        weight: config.weight,
        critical: config.critical,
        reason: String::new(),
    };
    let (c, b) = match sides {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) => {
            judgement.reason = format!("no data to compare: canary {e}");
            return judgement;
        }
        (_, Err(e)) => {
            judgement.reason = format!("no data to compare: baseline {e}");
            return judgement;
        }
    };
    let result = proportion::test(c, b);
    let ratio = effect(c.proportion(), b.proportion());
    judgement.test = result.method.as_str().into();
    judgement.p_value = Some(result.p_value);
    judgement.effect_size = Some(ratio);
    decide(
        &mut judgement,
        config,
        result.p_value,
        c.proportion() > b.proportion(),
        ratio,
        confidence,
    );
    judgement
}

/// Sets the class and the reason from the test's outcome.
fn decide(
    judgement: &mut MetricJudgement,
    config: &MetricConfig,
    p_value: f64,
    higher: bool,
    ratio: f64,
    confidence: f64,
) {
    let alpha = 1.0 - confidence;
    let significant = p_value < alpha;
    let watches_increase = matches!(
        config.direction,
        JudgeDirection::Increase | JudgeDirection::Either
    );
    let watches_decrease = matches!(
        config.direction,
        JudgeDirection::Decrease | JudgeDirection::Either
    );
    let (class, why) = if !significant {
        (
            Class::Pass,
            format!(
                "no significant difference (p={} >= {})",
                short(p_value),
                short(alpha)
            ),
        )
    } else if higher && watches_increase && ratio >= config.allowed_increase {
        (
            Class::High,
            format!(
                "canary higher (p={} < {}, canary/baseline {} >= allowedIncrease {})",
                short(p_value),
                short(alpha),
                short(ratio),
                short(config.allowed_increase)
            ),
        )
    } else if !higher && watches_decrease && ratio <= config.allowed_decrease {
        (
            Class::Low,
            format!(
                "canary lower (p={} < {}, canary/baseline {} <= allowedDecrease {})",
                short(p_value),
                short(alpha),
                short(ratio),
                short(config.allowed_decrease)
            ),
        )
    } else {
        let side = if higher { "higher" } else { "lower" };
        (
            Class::Pass,
            format!(
                "canary {side} (p={}, canary/baseline {}) but within direction {:?} and the allowed change",
                short(p_value),
                short(ratio),
                config.direction
            ),
        )
    };
    judgement.class = class;
    judgement.reason = why;
}

/// Samples with NaN removed or replaced by 0; infinities are kept (they rank as extremes).
fn clean(values: &[f64], strategy: JudgeNanStrategy) -> Vec<f64> {
    match strategy {
        JudgeNanStrategy::Remove => values.iter().copied().filter(|v| !v.is_nan()).collect(),
        JudgeNanStrategy::Replace => values
            .iter()
            .map(|&v| if v.is_nan() { 0.0 } else { v })
            .collect(),
    }
}

fn describe(values: &[f64]) -> Side {
    Side {
        n: values.len() as u64,
        mean: (!values.is_empty()).then(|| mean(values)),
        median: median(values),
        events: None,
    }
}

#[allow(clippy::cast_precision_loss)]
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// canary / baseline; a zero baseline makes any positive canary infinitely higher.
pub fn effect(canary: f64, baseline: f64) -> f64 {
    if baseline == 0.0 {
        if canary == 0.0 {
            1.0
        } else {
            f64::INFINITY.copysign(canary)
        }
    } else {
        canary / baseline
    }
}

#[allow(clippy::cast_precision_loss)]
fn half_pairs(a: usize, b: usize) -> f64 {
    a as f64 * b as f64 / 2.0
}

/// A number with 4 significant digits, for messages.
pub fn short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = 3 - v.abs().log10().floor() as i32;
    if (0..=10).contains(&digits) {
        let text = format!("{v:.*}", digits as usize);
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        format!("{v:.3e}")
    }
}
