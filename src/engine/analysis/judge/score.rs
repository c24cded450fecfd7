//! The judgement of all metrics together, as Kayenta's `NetflixACAJudge` scores them: the score
//! is 100 × the weight of passing metrics over the weight of metrics with data, and 0 when a
//! critical metric is High or Low. The verdict follows Argo's kayenta provider: a score of at
//! least `pass` is Successful, above `marginal` Inconclusive, else Failed. Where Sluice is
//! stricter than Kayenta: a metric without data never helps a canary through — if any metric has
//! no data the verdict is at best Inconclusive, and with no data at all there is no score.

use super::classify::{Class, MetricJudgement, Samples, classify, short};
use super::config::Config;
use crate::api::argo::analysis::AnalysisPhase;

/// The judge's verdict and every metric's explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// 0–100; `None` when no metric had data.
    pub score: Option<f64>,
    /// Successful, Inconclusive or Failed.
    pub phase: AnalysisPhase,
    /// Per metric, in the spec's order: (name, judgement).
    pub metrics: Vec<(String, MetricJudgement)>,
    /// One line: the score, the thresholds and the metrics that did not pass.
    pub summary: String,
}

/// Judges every metric of `config`; `samples[i]` belongs to `config.metrics[i]`.
pub fn judge(config: &Config, samples: &[Samples]) -> Judgement {
    let metrics: Vec<(String, MetricJudgement)> = config
        .metrics
        .iter()
        .zip(samples)
        .map(|(m, s)| (m.name.clone(), classify(m, s, config.confidence)))
        .collect();
    let with_data = || metrics.iter().filter(|(_, j)| j.class != Class::NoData);
    // Folded from +0.0: an empty f64 sum is -0.0, which would read "score -0".
    let total = with_data().fold(0.0, |sum, (_, j)| sum + j.weight);
    let passed = with_data()
        .filter(|(_, j)| j.class == Class::Pass)
        .fold(0.0, |sum, (_, j)| sum + j.weight);
    let critical_failed = with_data().any(|(_, j)| j.critical && j.class != Class::Pass);
    let no_data: Vec<&str> = metrics
        .iter()
        .filter(|(_, j)| j.class == Class::NoData)
        .map(|(n, _)| n.as_str())
        .collect();
    let score = (total > 0.0).then(|| {
        if critical_failed {
            0.0
        } else {
            100.0 * passed / total
        }
    });
    let by_score = match score {
        None => AnalysisPhase::Inconclusive,
        Some(s) if s >= config.pass => AnalysisPhase::Successful,
        Some(s) if s > config.marginal => AnalysisPhase::Inconclusive,
        Some(_) => AnalysisPhase::Failed,
    };
    let phase = if by_score == AnalysisPhase::Successful && !no_data.is_empty() {
        AnalysisPhase::Inconclusive
    } else {
        by_score
    };
    let summary = summary(config, score, phase, &metrics, &no_data, critical_failed);
    Judgement {
        score,
        phase,
        metrics,
        summary,
    }
}

fn summary(
    config: &Config,
    score: Option<f64>,
    phase: AnalysisPhase,
    metrics: &[(String, MetricJudgement)],
    no_data: &[&str],
    critical_failed: bool,
) -> String {
    let mut text = match score {
        Some(s) => format!(
            "judge: {phase}, score {} (pass {}, marginal {})",
            short(s),
            short(config.pass),
            short(config.marginal)
        ),
        None => format!("judge: {phase}, no score: no metric had data"),
    };
    if critical_failed {
        text.push_str("; a critical metric failed");
    }
    for (name, j) in metrics {
        if matches!(j.class, Class::High | Class::Low) {
            text.push_str(&format!("; {name} {:?}: {}", j.class, j.reason));
        }
    }
    if !no_data.is_empty() {
        text.push_str(&format!("; no data: {}", no_data.join(", ")));
    }
    text
}
