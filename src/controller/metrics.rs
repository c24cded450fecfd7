//! The controller's own Prometheus metrics, served on `/metrics`.
//!
//! Names follow Argo Rollouts where Argo has one (`analysis_run_reconcile`,
//! `analysis_run_reconcile_error`), so existing dashboards and alerts keep working; Sluice's own
//! additions are prefixed `sluice_`. Label sets are kept small on purpose: no per-object labels on
//! histograms, so memory does not grow with the number of runs.
//!
//! This module only counts; it never decides anything.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-kind reconcile metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeasurementLabels {
    /// Provider wire name (`prometheus`, `web`, `job`, …).
    pub provider: String,
    /// The measurement's phase once judged (`Successful`, `Error`, …, or `Running` while in flight).
    pub phase: String,
}

/// Labels of `rollout_info`, as Argo Rollouts exports them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutInfoLabels {
    pub namespace: String,
    pub name: String,
    /// `canary` or `blueGreen`.
    pub strategy: String,
    /// The traffic router kinds configured (`nginx`, `plugins`, …), comma-separated; empty without.
    pub traffic_router: String,
    /// The Rollout's phase (`Healthy`, `Progressing`, `Paused`, `Degraded`).
    pub phase: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// `analysis_run_reconcile`: seconds per AnalysisRun reconcile, measurements included.
    pub analysis_run_reconcile: Histogram,
    /// `analysis_run_reconcile_error`: reconciles that ended in an error.
    pub analysis_run_reconcile_error: Counter,
    /// `sluice_analysis_measurements_total`: measurements taken, by provider and verdict.
    pub measurements: Family<MeasurementLabels, Counter>,
    /// `sluice_analysis_measurement_delay_seconds`: how late a measurement started compared with its
    /// planned time (the scheduling error).
    pub measurement_delay: Histogram,
    /// `rollout_info`: 1 per Rollout, its phase in a label.
    pub rollout_info: Family<RolloutInfoLabels, Gauge>,
    /// `rollout_reconcile`: seconds per Rollout reconcile.
    pub rollout_reconcile: Histogram,
    /// `rollout_reconcile_error`: Rollout reconciles that ended in an error.
    pub rollout_reconcile_error: Counter,
    /// `sluice_leader`: 1 while this process is the elected leader (always 1 without election).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let analysis_run_reconcile = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "analysis_run_reconcile",
            "AnalysisRun reconciliation performance (seconds)",
            analysis_run_reconcile.clone(),
        );
        let analysis_run_reconcile_error = Counter::default();
        registry.register(
            "analysis_run_reconcile_error",
            "Error occurring during the analysisrun",
            analysis_run_reconcile_error.clone(),
        );
        let measurements = Family::<MeasurementLabels, Counter>::default();
        registry.register(
            "sluice_analysis_measurements",
            "Measurements taken, by provider and verdict",
            measurements.clone(),
        );
        let measurement_delay = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "sluice_analysis_measurement_delay_seconds",
            "Start of a measurement minus its planned time",
            measurement_delay.clone(),
        );
        let rollout_info = Family::<RolloutInfoLabels, Gauge>::default();
        registry.register(
            "rollout_info",
            "Information about rollout.",
            rollout_info.clone(),
        );
        // Argo's buckets for rollout_reconcile.
        let rollout_reconcile = Histogram::new([0.01, 0.15, 0.25, 0.5, 1.0]);
        registry.register(
            "rollout_reconcile",
            "Rollout reconciliation performance.",
            rollout_reconcile.clone(),
        );
        let rollout_reconcile_error = Counter::default();
        registry.register(
            "rollout_reconcile_error",
            "Error occurring during the rollout",
            rollout_reconcile_error.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "sluice_leader",
            "1 while this controller is the elected leader",
            leader.clone(),
        );
        Self {
            registry,
            analysis_run_reconcile,
            analysis_run_reconcile_error,
            measurements,
            measurement_delay,
            rollout_info,
            rollout_reconcile,
            rollout_reconcile_error,
            leader,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
