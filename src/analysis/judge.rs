//! The `judge` provider (a Sluice extension): measures each judge metric's canary and baseline
//! through the Prometheus provider — range queries over the same window (`lookback`, ending at
//! the measurement) for `mannWhitney`, instant queries of the counts for `proportion` — and hands
//! the samples to the pure judge (`crate::engine::analysis::judge`), whose verdict is the
//! measurement's: value = the score, message = the summary, metadata = per metric the queries
//! sent (masked), U, p-value, effect size, the samples' figures, the class and why, plus `score`.
//!
//! Decides only how the samples are fetched and how the verdict is recorded. Must never: judge
//! (the engine does), talk to Prometheus other than through [`PrometheusProvider`] (its address
//! default, auth, bounded reads and error words apply unchanged), or show a secret argument
//! (queries and messages come from the masked metric).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::prometheus::PrometheusProvider;
use super::{HttpClients, MeasureContext, Provider};
use crate::api::argo::analysis::{
    Metric, MetricProvider, PrometheusMetric, PrometheusRangeQueryArgs,
};
use crate::engine::analysis::Observed;
use crate::engine::analysis::expr::Value;
use crate::engine::analysis::judge::classify::short;
use crate::engine::analysis::judge::{Config, MetricConfig, Samples, configure, judge};

/// Measurement metadata key of the score.
pub const SCORE_KEY: &str = "score";

/// Runs judge metrics.
#[derive(Debug)]
pub struct JudgeProvider {
    prometheus: PrometheusProvider,
}

impl JudgeProvider {
    /// A provider querying Prometheus with clients from `http`.
    pub fn new(http: Arc<HttpClients>) -> Self {
        Self {
            prometheus: PrometheusProvider::new(http),
        }
    }
}

#[async_trait]
impl Provider for JudgeProvider {
    fn name(&self) -> &'static str {
        "judge"
    }

    async fn run(&self, ctx: &MeasureContext, metric: &Metric, masked: &Metric) -> Observed {
        let (Some(spec), Some(masked_spec)) = (
            metric.provider.judge.as_ref(),
            masked.provider.judge.as_ref(),
        ) else {
            return Observed::error(format!("metric {:?} has no judge provider", metric.name));
        };
        let (config, shown) = match (configure(spec), configure(masked_spec)) {
            (Ok(c), Ok(m)) => (c, m),
            (Err(errors), _) | (_, Err(errors)) => {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return Observed::error(format!("InvalidSpec: {}", text.join("; ")));
            }
        };
        let sources = Sources {
            connection: spec.prometheus.as_ref(),
            masked_connection: masked_spec.prometheus.as_ref(),
            config: &config,
        };
        let mut samples = Vec::with_capacity(config.metrics.len());
        let mut metadata = BTreeMap::new();
        for (m, shown_m) in config.metrics.iter().zip(&shown.metrics) {
            let fetched = match m.totals {
                None => self.series(ctx, &sources, m, shown_m).await,
                Some(_) => self.counts(ctx, &sources, m, shown_m).await,
            };
            match fetched {
                Ok(s) => samples.push(s),
                Err(error) => return error,
            }
        }
        let judgement = judge(&config, &samples);
        for ((name, j), shown_m) in judgement.metrics.iter().zip(&shown.metrics) {
            metadata.insert(name.clone(), explanation(j, shown_m));
        }
        let score = judgement.score.map(short);
        metadata.insert(
            SCORE_KEY.into(),
            score.clone().unwrap_or_else(|| "none".into()),
        );
        Observed::Judged {
            phase: judgement.phase,
            value: score,
            message: Some(judgement.summary),
            metadata,
        }
    }
}

/// Where and over which window the queries go.
struct Sources<'a> {
    connection: Option<&'a PrometheusMetric>,
    masked_connection: Option<&'a PrometheusMetric>,
    config: &'a Config,
}

impl JudgeProvider {
    /// Both sides' samples over the window.
    async fn series(
        &self,
        ctx: &MeasureContext,
        sources: &Sources<'_>,
        m: &MetricConfig,
        shown: &MetricConfig,
    ) -> Result<Samples, Observed> {
        let range = PrometheusRangeQueryArgs {
            start: Some(format!(
                "now() - duration(\"{}\")",
                sources.config.lookback_text
            )),
            end: Some("now()".into()),
            step: Some(sources.config.step.clone()),
        };
        let canary = self
            .query(
                ctx,
                sources,
                m,
                "canary",
                (&m.canary_query, &shown.canary_query),
                Some(&range),
            )
            .await?;
        let baseline = self
            .query(
                ctx,
                sources,
                m,
                "baseline",
                (&m.baseline_query, &shown.baseline_query),
                Some(&range),
            )
            .await?;
        Ok(Samples::Series { canary, baseline })
    }

    /// Both sides' (events, total) at the measurement; no series is no data (NaN).
    async fn counts(
        &self,
        ctx: &MeasureContext,
        sources: &Sources<'_>,
        m: &MetricConfig,
        shown: &MetricConfig,
    ) -> Result<Samples, Observed> {
        let (Some((canary_total, baseline_total)), Some((shown_ct, shown_bt))) =
            (&m.totals, &shown.totals)
        else {
            return Err(Observed::error(format!(
                "judge metric {:?} has no total queries",
                m.name
            )));
        };
        let one = async |side: &str, query: &String, shown: &String| {
            let values = self
                .query(ctx, sources, m, side, (query, shown), None)
                .await?;
            match values.as_slice() {
                [] => Ok(f64::NAN),
                [v] => Ok(*v),
                more => Err(Observed::Error {
                    message: format!(
                        "judge metric {:?}: the {side} query returned {} series; aggregate it to one (sum(...))",
                        m.name,
                        more.len()
                    ),
                    query: Some(shown.clone()),
                    metadata: BTreeMap::new(),
                }),
            }
        };
        let canary = (
            one("canary", &m.canary_query, &shown.canary_query).await?,
            one("canary total", canary_total, shown_ct).await?,
        );
        let baseline = (
            one("baseline", &m.baseline_query, &shown.baseline_query).await?,
            one("baseline total", baseline_total, shown_bt).await?,
        );
        Ok(Samples::Counts { canary, baseline })
    }

    /// One query through the Prometheus provider: every number it returned, or the measurement's
    /// error naming the judge metric and the side.
    async fn query(
        &self,
        ctx: &MeasureContext,
        sources: &Sources<'_>,
        m: &MetricConfig,
        side: &str,
        (query, shown): (&String, &String),
        range: Option<&PrometheusRangeQueryArgs>,
    ) -> Result<Vec<f64>, Observed> {
        let real = prometheus_metric(&m.name, sources.connection, query, range);
        let masked = prometheus_metric(&m.name, sources.masked_connection, shown, range);
        let fail = |message: String, query: Option<String>, metadata| Observed::Error {
            message: format!("judge metric {:?}, {side} query: {message}", m.name),
            query,
            metadata,
        };
        match self.prometheus.run(ctx, &real, &masked).await {
            Observed::Value { result, query, .. } => {
                numbers(&result).map_err(|e| fail(e, query, BTreeMap::new()))
            }
            Observed::Error {
                message,
                query,
                metadata,
            } => Err(fail(message, query, metadata)),
            other => Err(fail(
                format!("unexpected answer from the prometheus provider: {other:?}"),
                Some(shown.clone()),
                BTreeMap::new(),
            )),
        }
    }
}

/// A one-query prometheus metric on the judge's connection.
fn prometheus_metric(
    name: &str,
    connection: Option<&PrometheusMetric>,
    query: &str,
    range: Option<&PrometheusRangeQueryArgs>,
) -> Metric {
    let mut prometheus = connection.cloned().unwrap_or_default();
    prometheus.query = Some(query.to_string());
    prometheus.range_query = range.cloned();
    Metric {
        name: name.to_string(),
        provider: MetricProvider {
            prometheus: Some(prometheus),
            ..MetricProvider::default()
        },
        ..Metric::default()
    }
}

/// The samples in a Prometheus result (a scalar, a vector, or a matrix flattened).
fn numbers(value: &Value) -> Result<Vec<f64>, String> {
    match value {
        Value::Number(n) => Ok(vec![*n]),
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::Number(n) => Ok(*n),
                other => Err(format!("the result holds {other:?}, not a number")),
            })
            .collect(),
        other => Err(format!("the result {other:?} is not a list of numbers")),
    }
}

/// One metric's explanation as JSON: the (masked) queries, then the judge's figures.
fn explanation(
    judgement: &crate::engine::analysis::judge::MetricJudgement,
    shown: &MetricConfig,
) -> String {
    let mut value = serde_json::to_value(judgement).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("canaryQuery".into(), shown.canary_query.clone().into());
        object.insert("baselineQuery".into(), shown.baseline_query.clone().into());
        if let Some((canary_total, baseline_total)) = &shown.totals {
            object.insert("canaryTotalQuery".into(), canary_total.clone().into());
            object.insert("baselineTotalQuery".into(), baseline_total.clone().into());
        }
    }
    value.to_string()
}
