//! **Sluice extension**: the `judge` metric provider's wire shape (`provider.judge` of an
//! AnalysisTemplate metric). Argo Rollouts has no such provider (it delegates baseline-vs-canary
//! judgement to a Kayenta server); the fields follow Kayenta's `NetflixACAJudge` canary config
//! (`direction`, `nanStrategy`, `allowedIncrease` / `allowedDecrease`, `critical`, weights, score
//! thresholds) and Argo's kayenta provider (`threshold.pass` / `threshold.marginal`).
//!
//! Numbers are kept as written (`serde_json::Number`), so `weight: 2` reads back as `2`, not `2.0`.
//!
//! Decides only the wire shape and what the apiserver may reject (numeric ranges). Defaults and
//! the checks that need several fields (a missing query, `marginal` above `pass`) live in
//! `crate::engine::analysis::judge::config`, so a run made from an object stored before a rule
//! existed is refused the same way.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::analysis::PrometheusMetric;

/// Compare a canary's series against a baseline's (or stable's) over the same window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeProvider {
    /// The Prometheus server to query: `address`, `authentication`, `headers`, `timeout` and
    /// `insecure` as in the prometheus provider (`query` and `rangeQuery` are not used here). Unset:
    /// the controller's default Prometheus address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    /// The window compared, ending at the measurement ("5m", the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<String>,
    /// Resolution of the range queries ("30s", the default); keep it at least the scrape interval,
    /// or repeated samples overstate the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Confidence of each test (0.5 to 0.9999; default 0.95): a metric differs when its p-value is
    /// below `1 - confidence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.5, max = 0.9999))]
    pub confidence: Option<Number>,
    /// Score thresholds (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<JudgeThreshold>,
    /// The metrics compared (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<JudgeMetric>,
}

/// How a 0–100 score becomes a verdict, as Argo's kayenta provider: at least `pass` →
/// Successful; above `marginal` → Inconclusive; else Failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeThreshold {
    /// Lowest passing score (default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub pass: Option<Number>,
    /// Highest failing score (default 75); at most `pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub marginal: Option<Number>,
}

/// One compared metric.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeMetric {
    /// Name, unique within the judge; the key of its explanation in the measurement's metadata.
    pub name: String,
    /// `mannWhitney` (default: two series of values, e.g. latencies) or `proportion` (event
    /// counts over totals, e.g. errors over requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<JudgeTest>,
    /// PromQL of the canary. `mannWhitney`: a range query over the window (every value of every
    /// series is a sample). `proportion`: an instant query giving the event count in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_query: Option<String>,
    /// The same for the baseline (or stable) pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_query: Option<String>,
    /// `proportion` only: instant PromQL giving the canary's total count in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_total_query: Option<String>,
    /// `proportion` only: the baseline's total count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_total_query: Option<String>,
    /// Which change is bad: `increase`, `decrease` or `either` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<JudgeDirection>,
    /// A significant increase fails only when canary / baseline (means, or proportions) is at
    /// least this (default 1.0; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub allowed_increase: Option<Number>,
    /// A significant decrease fails only when canary / baseline is at most this (default 1.0;
    /// between 0 and 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub allowed_decrease: Option<Number>,
    /// NaN samples: `remove` (default) or `replace` (with 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nan_strategy: Option<JudgeNanStrategy>,
    /// Share of the score (default 1; above 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight: Option<Number>,
    /// A critical metric that differs fails the judgement whatever the score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
}

/// The statistical test of a metric.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JudgeTest {
    /// Mann-Whitney U over two samples.
    MannWhitney,
    /// Two-proportion z-test, or Fisher's exact test for small counts.
    Proportion,
}

/// Which change of a metric is bad.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JudgeDirection {
    /// Higher canary values are bad (latency, errors).
    Increase,
    /// Lower canary values are bad (throughput, success rate).
    Decrease,
    /// Any significant change is bad.
    Either,
}

/// What to do with NaN samples.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JudgeNanStrategy {
    /// Drop them.
    Remove,
    /// Count them as 0.
    Replace,
}
