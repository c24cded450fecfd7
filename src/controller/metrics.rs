//! The controller's own Prometheus metrics, served on `/metrics`.
//!
//! Names and labels follow Argo Rollouts (`rollout_info`, `analysis_run_info`,
//! `analysis_run_metric_phase`, …) and Flagger (`flagger_canary_status`, `flagger_canary_weight`,
//! …) where they have one, so existing dashboards and alerts keep working; Sluice's own additions
//! are prefixed `sluice_`.
//!
//! Memory must stay bounded by the objects that exist: per-object series are either computed at
//! scrape time from the AnalysisRun watch cache (as Argo's collector does, so a deleted run's
//! series vanish with it), or set through the methods below and removed with `remove_rollout` /
//! `remove_canary` when the object goes away. Histograms without per-object labels stay small.
//!
//! This module only counts; it never decides anything and never calls the API server.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, RwLock};

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::argo::analysis::{AnalysisPhase, AnalysisRun, Metric, ProviderKind};

mod argo;
pub use argo::ArgoMetrics;

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

/// `{namespace, name}`: Argo's labels of every per-Rollout gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// The replica counts of a Rollout, from its status (`rollout_info_replicas_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RolloutReplicas {
    /// `spec.replicas` (Argo: desired).
    pub desired: i64,
    /// `status.updatedReplicas`.
    pub updated: i64,
    /// `status.availableReplicas`.
    pub available: i64,
    /// Desired minus available, never negative (Argo: `status.replicas - availableReplicas`).
    pub unavailable: i64,
}

/// Flagger's `{name, namespace}`, where `name` is the Canary's `spec.targetRef.name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub name: String,
    pub namespace: String,
}

/// Flagger's `{workload, namespace}` of `flagger_canary_weight`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryWeightLabels {
    /// `<target>-primary` or `<target>`.
    pub workload: String,
    pub namespace: String,
}

/// Flagger's `{name, namespace, metric}` of `flagger_canary_metric_analysis`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryMetricLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
}

/// Flagger's labels of `flagger_canary_successes_total` / `flagger_canary_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryOutcomeLabels {
    pub name: String,
    pub namespace: String,
    /// `canary`, `blue-green` or `ab-testing`.
    pub deployment_strategy: String,
    /// `completed` or `skipped`.
    pub analysis_status: String,
}

/// `{namespace}` of `flagger_canary_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// `{version, mesh_provider}` of `flagger_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlaggerInfoLabels {
    pub version: String,
    pub mesh_provider: String,
}

/// Flagger's buckets (`prometheus.DefBuckets`) for `flagger_canary_duration_seconds`.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A counter exported under its own name, as Argo Rollouts' Go client does: prometheus-client
/// appends `_total` to every counter, which would rename Argo's `rollout_reconcile_error` and
/// break the dashboards and alerts written for it.
#[derive(Clone, Debug, Default)]
pub struct PlainCounter(Counter);

impl PlainCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        // The gauge encoding writes the sample under the family's name, with no suffix.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// `analysis_run_reconcile`: seconds per AnalysisRun reconcile, measurements included.
    pub analysis_run_reconcile: Histogram,
    /// `analysis_run_reconcile_error`: reconciles that ended in an error.
    pub analysis_run_reconcile_error: PlainCounter,
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
    pub rollout_reconcile_error: PlainCounter,
    /// `sluice_rollout_reaction_seconds`: from a Rollout's new generation arriving on the watch
    /// to its new ReplicaSet created (the controller's own share of reacting to a change).
    pub rollout_reaction: Histogram,
    /// `sluice_leader`: 1 while this process is the elected leader (always 1 without election).
    pub leader: Gauge,
    /// `sluice_alerts_dropped_total`: Canary alerts dropped because the queue to the alert sender
    /// was full (the senders are slower than the alerts being raised).
    pub alerts_dropped: Counter,
    /// `controller_clientset_k8s_request_total{kind,verb,status_code}`: the controller's own API
    /// requests, counted by [`super::client_metrics::CountLayer`] on its kube client.
    pub api_requests: super::client_metrics::RequestCounts,
    /// `sluice_rollout_canary_weight`: the canary weight of each Rollout, from its status.
    rollout_weight: Family<ObjectLabels, Gauge>,
    /// `rollout_info_replicas_{available,unavailable,desired,updated}`.
    rollout_replicas: [Family<ObjectLabels, Gauge>; 4],
    /// The AnalysisRun watch cache the `analysis_run_*` series are computed from at scrape time.
    analysis_runs: std::sync::Arc<AnalysisRunCollector>,
    /// `rollout_events_total`, `rollout_phase`, `analysis_template_*`,
    /// `argo_rollouts_controller_info`.
    pub argo: ArgoMetrics,
    /// `flagger_info{version, mesh_provider}`.
    flagger_info: Family<FlaggerInfoLabels, Gauge>,
    /// `flagger_canary_total`.
    canary_total: Family<NamespaceLabels, Gauge>,
    /// `flagger_canary_status`: 0 running, 1 successful (or idle), 2 failed.
    canary_status: Family<CanaryLabels, Gauge>,
    /// `flagger_canary_weight`.
    canary_weight: Family<CanaryWeightLabels, Gauge>,
    /// `flagger_canary_duration_seconds`.
    canary_duration: Family<CanaryLabels, Histogram>,
    /// `flagger_canary_metric_analysis`.
    canary_metric_analysis: Family<CanaryMetricLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `flagger_canary_successes_total`.
    canary_successes: Family<CanaryOutcomeLabels, Counter>,
    /// `flagger_canary_failures_total`.
    canary_failures: Family<CanaryOutcomeLabels, Counter>,
    /// Per Canary (`namespace`, `target`), the label values created beyond `{name, namespace}`,
    /// so `remove_canary` can drop every series of a deleted Canary.
    canary_series: Mutex<HashMap<(String, String), CanarySeries>>,
}

/// The series of one Canary whose labels are not implied by its namespace and target.
#[derive(Default)]
struct CanarySeries {
    metrics: BTreeSet<String>,
    outcomes: BTreeSet<(String, String)>,
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
        let analysis_run_reconcile_error = PlainCounter::default();
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
        let analysis_runs = std::sync::Arc::new(AnalysisRunCollector::default());
        registry.register_collector(Box::new(analysis_runs.clone()));
        let rollout_info = Family::<RolloutInfoLabels, Gauge>::default();
        registry.register(
            "rollout_info",
            "Information about rollout.",
            rollout_info.clone(),
        );
        let rollout_replicas: [Family<ObjectLabels, Gauge>; 4] = Default::default();
        for (family, (name, help)) in rollout_replicas.iter().zip([
            (
                "rollout_info_replicas_available",
                "The number of available replicas per rollout.",
            ),
            (
                "rollout_info_replicas_unavailable",
                "The number of unavailable replicas per rollout.",
            ),
            (
                "rollout_info_replicas_desired",
                "The number of desired replicas per rollout.",
            ),
            (
                "rollout_info_replicas_updated",
                "The number of updated replicas per rollout.",
            ),
        ]) {
            registry.register(name, help, family.clone());
        }
        let rollout_weight = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "sluice_rollout_canary_weight",
            "The canary weight of a Rollout, percent: what its traffic routers applied, else the canary's share of available pods",
            rollout_weight.clone(),
        );
        // Argo's buckets for rollout_reconcile.
        let rollout_reconcile = Histogram::new([0.01, 0.15, 0.25, 0.5, 1.0]);
        registry.register(
            "rollout_reconcile",
            "Rollout reconciliation performance.",
            rollout_reconcile.clone(),
        );
        let rollout_reaction = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "sluice_rollout_reaction_seconds",
            "From a Rollout's new generation seen on the watch to its new ReplicaSet created",
            rollout_reaction.clone(),
        );
        let rollout_reconcile_error = PlainCounter::default();
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
        // prometheus-client appends `_total` to counters.
        let alerts_dropped = Counter::default();
        registry.register(
            "sluice_alerts_dropped",
            "Canary alerts dropped because the queue to the alert sender was full",
            alerts_dropped.clone(),
        );
        let api_requests = super::client_metrics::RequestCounts::default();
        registry.register(
            super::client_metrics::FAMILY,
            super::client_metrics::HELP,
            api_requests.clone(),
        );

        // Flagger's families, under Flagger's names (its `controller` subsystem is `flagger`).
        let flagger_info = Family::<FlaggerInfoLabels, Gauge>::default();
        registry.register(
            "flagger_info",
            "Flagger version and mesh provider information",
            flagger_info.clone(),
        );
        // Until the Canary controller says which `--mesh-provider` it runs with.
        flagger_info
            .get_or_create(&FlaggerInfoLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                mesh_provider: super::canary::DEFAULT_PROVIDER.to_string(),
            })
            .set(1);
        let canary_duration =
            Family::<CanaryLabels, Histogram>::new_with_constructor(canary_duration_histogram);
        registry.register(
            "flagger_canary_duration_seconds",
            "Seconds spent performing canary analysis.",
            canary_duration.clone(),
        );
        let canary_total = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "flagger_canary_total",
            "Total number of canary object",
            canary_total.clone(),
        );
        let canary_status = Family::<CanaryLabels, Gauge>::default();
        registry.register(
            "flagger_canary_status",
            "Last canary analysis result",
            canary_status.clone(),
        );
        let canary_weight = Family::<CanaryWeightLabels, Gauge>::default();
        registry.register(
            "flagger_canary_weight",
            "The virtual service destination weight current value",
            canary_weight.clone(),
        );
        let canary_metric_analysis = Family::default();
        registry.register(
            "flagger_canary_metric_analysis",
            "Last canary analysis result per metric",
            canary_metric_analysis.clone(),
        );
        // prometheus-client appends `_total` to counters.
        let canary_successes = Family::<CanaryOutcomeLabels, Counter>::default();
        registry.register(
            "flagger_canary_successes",
            "Total number of canary successes",
            canary_successes.clone(),
        );
        let canary_failures = Family::<CanaryOutcomeLabels, Counter>::default();
        registry.register(
            "flagger_canary_failures",
            "Total number of canary failures",
            canary_failures.clone(),
        );
        let argo = ArgoMetrics::register(&mut registry);
        Self {
            registry,
            argo,
            analysis_run_reconcile,
            analysis_run_reconcile_error,
            measurements,
            measurement_delay,
            rollout_info,
            rollout_reconcile,
            rollout_reconcile_error,
            rollout_reaction,
            leader,
            alerts_dropped,
            api_requests,
            rollout_weight,
            rollout_replicas,
            analysis_runs,
            flagger_info,
            canary_total,
            canary_status,
            canary_weight,
            canary_duration,
            canary_metric_analysis,
            canary_successes,
            canary_failures,
            canary_series: Mutex::default(),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    // --- AnalysisRuns ---

    /// Computes `analysis_run_info`, `analysis_run_phase`, `analysis_run_metric_type`,
    /// `analysis_run_metric_phase` and `sluice_analysis_measurement_value` from this watch cache
    /// on every scrape, as Argo's collector does: a deleted run's series go with it.
    pub fn watch_analysis_runs(&self, store: Store<AnalysisRun>) {
        *self
            .analysis_runs
            .store
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    // --- Rollouts ---

    /// `sluice_rollout_canary_weight{namespace,name}`: the Rollout's canary weight (0–100) from
    /// its status.
    pub fn set_rollout_weight(&self, namespace: &str, name: &str, weight: i64) {
        self.rollout_weight
            .get_or_create(&object(namespace, name))
            .set(weight);
    }

    /// `rollout_info_replicas_{available,unavailable,desired,updated}{namespace,name}`.
    pub fn set_rollout_replicas(&self, namespace: &str, name: &str, replicas: RolloutReplicas) {
        let labels = object(namespace, name);
        let [available, unavailable, desired, updated] = &self.rollout_replicas;
        available.get_or_create(&labels).set(replicas.available);
        unavailable
            .get_or_create(&labels)
            .set(replicas.unavailable.max(0));
        desired.get_or_create(&labels).set(replicas.desired);
        updated.get_or_create(&labels).set(replicas.updated);
    }

    /// Drops the series `set_rollout_weight` and `set_rollout_replicas` made for a Rollout that
    /// is gone (`rollout_info` is the Rollout controller's own: it knows its labels).
    pub fn remove_rollout(&self, namespace: &str, name: &str) {
        let labels = object(namespace, name);
        self.argo.remove_rollout(namespace, name);
        self.rollout_weight.remove(&labels);
        for family in &self.rollout_replicas {
            family.remove(&labels);
        }
    }

    // --- Flagger Canaries (`target` is the Canary's spec.targetRef.name, as Flagger labels) ---

    /// `flagger_canary_total{namespace}`: the number of Canaries in a namespace (0 drops it).
    pub fn set_canary_total(&self, namespace: &str, total: i64) {
        let labels = NamespaceLabels {
            namespace: namespace.to_string(),
        };
        if total == 0 {
            self.canary_total.remove(&labels);
        } else {
            self.canary_total.get_or_create(&labels).set(total);
        }
    }

    /// `flagger_canary_status{name,namespace}` from the Canary's `status.phase`, as Flagger maps
    /// it: `Progressing` 0, `Failed` 2, anything else (Initialized, Succeeded, Waiting, …) 1.
    pub fn set_canary_status(&self, namespace: &str, target: &str, phase: &str) {
        let value = match phase {
            "Progressing" => 0,
            "Failed" => 2,
            _ => 1,
        };
        self.canary_status
            .get_or_create(&canary(namespace, target))
            .set(value);
    }

    /// `flagger_canary_weight{workload,namespace}`: `<target>-primary` gets `primary`, `<target>`
    /// gets `canary`.
    pub fn set_canary_weight(&self, namespace: &str, target: &str, primary: i64, canary: i64) {
        let [primary_labels, canary_labels] = weight_labels(namespace, target);
        self.canary_weight
            .get_or_create(&primary_labels)
            .set(primary);
        self.canary_weight.get_or_create(&canary_labels).set(canary);
    }

    /// `flagger_canary_duration_seconds{name,namespace}`: time spent in one analysis tick.
    pub fn observe_canary_duration(&self, namespace: &str, target: &str, seconds: f64) {
        self.canary_duration
            .get_or_create(&canary(namespace, target))
            .observe(seconds);
    }

    /// `flagger_info`: the controller-wide mesh provider (`--mesh-provider`).
    pub fn set_mesh_provider(&self, provider: &str) {
        self.flagger_info.clear();
        self.flagger_info
            .get_or_create(&FlaggerInfoLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                mesh_provider: provider.to_string(),
            })
            .set(1);
    }

    /// `flagger_canary_metric_analysis{name,namespace,metric}`: a metric check's last value.
    pub fn set_canary_metric_analysis(
        &self,
        namespace: &str,
        target: &str,
        metric: &str,
        value: f64,
    ) {
        self.track_canary(namespace, target, |s| {
            s.metrics.insert(metric.to_string());
        });
        self.canary_metric_analysis
            .get_or_create(&CanaryMetricLabels {
                name: target.to_string(),
                namespace: namespace.to_string(),
                metric: metric.to_string(),
            })
            .set(value);
    }

    /// `flagger_canary_successes_total`: a promotion finished; `strategy` is `canary`,
    /// `blue-green` or `ab-testing`, `analysis_status` `completed` or `skipped`.
    pub fn inc_canary_success(
        &self,
        namespace: &str,
        target: &str,
        strategy: &str,
        analysis_status: &str,
    ) {
        self.inc_outcome(
            &self.canary_successes,
            namespace,
            target,
            strategy,
            analysis_status,
        );
    }

    /// `flagger_canary_failures_total`: a rollback; labels as [`Metrics::inc_canary_success`].
    pub fn inc_canary_failure(
        &self,
        namespace: &str,
        target: &str,
        strategy: &str,
        analysis_status: &str,
    ) {
        self.inc_outcome(
            &self.canary_failures,
            namespace,
            target,
            strategy,
            analysis_status,
        );
    }

    /// Drops every per-Canary series of a Canary that is gone (`flagger_canary_total` is per
    /// namespace: set it with [`Metrics::set_canary_total`]).
    pub fn remove_canary(&self, namespace: &str, target: &str) {
        let labels = canary(namespace, target);
        self.canary_status.remove(&labels);
        self.canary_duration.remove(&labels);
        for w in weight_labels(namespace, target) {
            self.canary_weight.remove(&w);
        }
        let series = self
            .canary_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), target.to_string()))
            .unwrap_or_default();
        for metric in series.metrics {
            self.canary_metric_analysis.remove(&CanaryMetricLabels {
                name: target.to_string(),
                namespace: namespace.to_string(),
                metric,
            });
        }
        for (deployment_strategy, analysis_status) in series.outcomes {
            let labels = CanaryOutcomeLabels {
                name: target.to_string(),
                namespace: namespace.to_string(),
                deployment_strategy,
                analysis_status,
            };
            self.canary_successes.remove(&labels);
            self.canary_failures.remove(&labels);
        }
    }

    fn inc_outcome(
        &self,
        family: &Family<CanaryOutcomeLabels, Counter>,
        namespace: &str,
        target: &str,
        strategy: &str,
        analysis_status: &str,
    ) {
        self.track_canary(namespace, target, |s| {
            s.outcomes
                .insert((strategy.to_string(), analysis_status.to_string()));
        });
        family
            .get_or_create(&CanaryOutcomeLabels {
                name: target.to_string(),
                namespace: namespace.to_string(),
                deployment_strategy: strategy.to_string(),
                analysis_status: analysis_status.to_string(),
            })
            .inc();
    }

    fn track_canary(&self, namespace: &str, target: &str, f: impl FnOnce(&mut CanarySeries)) {
        let mut series = self.canary_series.lock().unwrap_or_else(|e| e.into_inner());
        f(series
            .entry((namespace.to_string(), target.to_string()))
            .or_default());
    }
}

fn canary_duration_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

fn object(namespace: &str, name: &str) -> ObjectLabels {
    ObjectLabels {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn canary(namespace: &str, target: &str) -> CanaryLabels {
    CanaryLabels {
        name: target.to_string(),
        namespace: namespace.to_string(),
    }
}

fn weight_labels(namespace: &str, target: &str) -> [CanaryWeightLabels; 2] {
    [
        CanaryWeightLabels {
            workload: format!("{target}-primary"),
            namespace: namespace.to_string(),
        },
        CanaryWeightLabels {
            workload: target.to_string(),
            namespace: namespace.to_string(),
        },
    ]
}

/// Argo's provider type names (`metricproviders.Type`), the `type` label of the analysis series.
fn argo_type(metric: &Metric) -> &'static str {
    match metric.provider.kind() {
        Ok(ProviderKind::Prometheus) => "Prometheus",
        Ok(ProviderKind::Web) => "Web",
        Ok(ProviderKind::Job) => "Job",
        Ok(ProviderKind::Datadog) => "Datadog",
        Ok(ProviderKind::NewRelic) => "NewRelic",
        Ok(ProviderKind::Wavefront) => "Wavefront",
        Ok(ProviderKind::Kayenta) => "Kayenta",
        Ok(ProviderKind::CloudWatch) => "CloudWatch",
        Ok(ProviderKind::Graphite) => "Graphite",
        Ok(ProviderKind::Influxdb) => "Influxdb",
        Ok(ProviderKind::SkyWalking) => "SkyWalking",
        Ok(ProviderKind::Plugin(_)) => "RPCPlugin",
        Ok(ProviderKind::Judge) => "Judge",
        Err(_) => "Unknown Provider",
    }
}

/// A measurement's value as a number: `0.97`, or a one-element vector `[0.97]` as the Prometheus
/// provider records it. Anything else (several values, `true`, NaN, empty) is not a number.
pub fn numeric_value(value: &str) -> Option<f64> {
    let value = value.trim();
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value)
        .trim();
    if inner.contains(',') {
        return None;
    }
    inner.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// Per-run series computed from the watch cache at scrape time.
#[derive(Debug, Default)]
struct AnalysisRunCollector {
    store: RwLock<Option<Store<AnalysisRun>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunPhaseLabels {
    namespace: String,
    name: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricTypeLabels {
    namespace: String,
    name: String,
    metric: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricPhaseLabels {
    namespace: String,
    name: String,
    metric: String,
    r#type: String,
    dry_run: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricValueLabels {
    namespace: String,
    name: String,
    metric: String,
}

/// The series of all runs, one Vec per family, in a stable order.
#[derive(Default)]
struct RunSeries {
    info: Vec<(RunPhaseLabels, i64)>,
    phase: Vec<(RunPhaseLabels, i64)>,
    metric_type: Vec<(MetricTypeLabels, i64)>,
    metric_phase: Vec<(MetricPhaseLabels, i64)>,
    value: Vec<(MetricValueLabels, f64)>,
}

impl RunSeries {
    fn add(&mut self, run: &AnalysisRun) {
        let namespace = run.metadata.namespace.clone().unwrap_or_default();
        let name = run.metadata.name.clone().unwrap_or_default();
        let status = run.status.as_ref();
        let phase = status.and_then(|s| s.phase);
        self.info.push((
            RunPhaseLabels {
                namespace: namespace.clone(),
                name: name.clone(),
                phase: phase.map(AnalysisPhase::as_str).unwrap_or("").to_string(),
            },
            1,
        ));
        // Argo's deprecated one-hot form; an unset phase counts as Pending.
        let phase = phase.unwrap_or(AnalysisPhase::Pending);
        for p in AnalysisPhase::ALL {
            self.phase.push((
                RunPhaseLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    phase: p.as_str().to_string(),
                },
                i64::from(p == phase),
            ));
        }
        for metric in &run.spec.metrics {
            let kind = argo_type(metric);
            self.metric_type.push((
                MetricTypeLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    metric: metric.name.clone(),
                    r#type: kind.to_string(),
                },
                1,
            ));
            let result =
                status.and_then(|s| s.metric_results.iter().find(|r| r.name == metric.name));
            let current = result.map(|r| r.phase).unwrap_or(AnalysisPhase::Pending);
            let dry_run = result.is_some_and(|r| r.dry_run);
            for p in AnalysisPhase::ALL {
                self.metric_phase.push((
                    MetricPhaseLabels {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        metric: metric.name.clone(),
                        r#type: kind.to_string(),
                        dry_run: dry_run.to_string(),
                        phase: p.as_str().to_string(),
                    },
                    i64::from(p == current),
                ));
            }
            let last = result.and_then(|r| {
                r.measurements
                    .iter()
                    .rev()
                    .find_map(|m| m.value.as_deref().and_then(numeric_value))
            });
            if let Some(value) = last {
                self.value.push((
                    MetricValueLabels {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        metric: metric.name.clone(),
                    },
                    value,
                ));
            }
        }
    }
}

fn encode_gauges<L: EncodeLabelSet, N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, N)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AnalysisRunCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut series = RunSeries::default();
        if let Some(store) = self
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let mut runs = store.state();
            runs.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            for run in &runs {
                series.add(run);
            }
        }
        let e = &mut encoder;
        encode_gauges(
            e,
            "analysis_run_info",
            "Information about analysis run.",
            &series.info,
        )?;
        encode_gauges(
            e,
            "analysis_run_phase",
            "Information on the state of the Analysis Run (DEPRECATED - use analysis_run_info)",
            &series.phase,
        )?;
        encode_gauges(
            e,
            "analysis_run_metric_type",
            "Information on the type of a specific metric in the Analysis Runs",
            &series.metric_type,
        )?;
        encode_gauges(
            e,
            "analysis_run_metric_phase",
            "Information on the duration of a specific metric in the Analysis Run",
            &series.metric_phase,
        )?;
        encode_gauges(
            e,
            "sluice_analysis_measurement_value",
            "The last numeric value measured for each metric of each AnalysisRun",
            &series.value,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argo_counters_keep_argo_names() {
        let m = Metrics::new();
        m.rollout_reconcile_error.inc();
        m.rollout_reconcile_error.inc();
        m.analysis_run_reconcile_error.inc();
        let text = m.encode();
        assert!(
            text.contains("# TYPE rollout_reconcile_error counter\nrollout_reconcile_error 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nanalysis_run_reconcile_error 1\n"),
            "{text}"
        );
        assert!(!text.contains("reconcile_error_total"), "{text}");
    }

    #[test]
    fn numeric_values_are_plain_numbers_or_one_element_vectors() {
        assert_eq!(numeric_value("0.97"), Some(0.97));
        assert_eq!(numeric_value("[0.97]"), Some(0.97));
        assert_eq!(numeric_value(" [ 12 ] "), Some(12.0));
        assert_eq!(numeric_value("[1,2]"), None);
        assert_eq!(numeric_value("NaN"), None);
        assert_eq!(numeric_value("[NaN]"), None);
        assert_eq!(numeric_value("true"), None);
        assert_eq!(numeric_value(""), None);
        assert_eq!(numeric_value("[]"), None);
    }

    #[test]
    fn a_removed_canary_leaves_no_series() {
        let m = Metrics::new();
        m.set_canary_status("ns", "web", "Progressing");
        m.set_canary_weight("ns", "web", 80, 20);
        m.observe_canary_duration("ns", "web", 0.2);
        m.set_canary_metric_analysis("ns", "web", "request-success-rate", 99.5);
        m.inc_canary_success("ns", "web", "canary", "completed");
        m.inc_canary_failure("ns", "web", "blue-green", "completed");
        m.set_canary_total("ns", 1);
        let text = m.encode();
        for line in [
            r#"flagger_canary_status{name="web",namespace="ns"} 0"#,
            r#"flagger_canary_weight{workload="web-primary",namespace="ns"} 80"#,
            r#"flagger_canary_weight{workload="web",namespace="ns"} 20"#,
            r#"flagger_canary_duration_seconds_count{name="web",namespace="ns"} 1"#,
            r#"flagger_canary_metric_analysis{name="web",namespace="ns",metric="request-success-rate"} 99.5"#,
            r#"flagger_canary_successes_total{name="web",namespace="ns",deployment_strategy="canary",analysis_status="completed"} 1"#,
            r#"flagger_canary_failures_total{name="web",namespace="ns",deployment_strategy="blue-green",analysis_status="completed"} 1"#,
            r#"flagger_canary_total{namespace="ns"} 1"#,
            r#"flagger_info{version=""#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.set_canary_status("ns", "web", "Failed");
        assert!(
            m.encode()
                .contains(r#"flagger_canary_status{name="web",namespace="ns"} 2"#)
        );
        m.set_canary_status("ns", "web", "Succeeded");
        assert!(
            m.encode()
                .contains(r#"flagger_canary_status{name="web",namespace="ns"} 1"#)
        );

        m.remove_canary("ns", "web");
        m.set_canary_total("ns", 0);
        let text = m.encode();
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(r#"namespace="ns""#)),
            "series left after remove_canary:\n{text}"
        );
    }

    #[test]
    fn a_removed_rollout_leaves_no_series() {
        let m = Metrics::new();
        m.set_rollout_weight("ns", "web", 20);
        m.set_rollout_replicas(
            "ns",
            "web",
            RolloutReplicas {
                desired: 5,
                updated: 1,
                available: 4,
                unavailable: 1,
            },
        );
        let text = m.encode();
        for line in [
            r#"sluice_rollout_canary_weight{namespace="ns",name="web"} 20"#,
            r#"rollout_info_replicas_desired{namespace="ns",name="web"} 5"#,
            r#"rollout_info_replicas_updated{namespace="ns",name="web"} 1"#,
            r#"rollout_info_replicas_available{namespace="ns",name="web"} 4"#,
            r#"rollout_info_replicas_unavailable{namespace="ns",name="web"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.remove_rollout("ns", "web");
        let text = m.encode();
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(r#"namespace="ns""#)),
            "series left after remove_rollout:\n{text}"
        );
    }

    #[test]
    fn analysis_run_series_follow_argo() {
        let run: AnalysisRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "run", "namespace": "ns"},
            "spec": {"metrics": [
                {"name": "rate", "successCondition": "result[0] > 0.9",
                 "provider": {"prometheus": {"address": "http://p", "query": "q"}}},
                {"name": "hook", "provider": {"web": {"url": "http://w"}}},
            ]},
            "status": {"phase": "Running", "metricResults": [
                {"name": "rate", "phase": "Running", "measurements": [
                    {"phase": "Successful", "value": "[0.95]"},
                    {"phase": "Error", "message": "down"},
                ]},
            ]},
        }))
        .unwrap();
        let mut series = RunSeries::default();
        series.add(&run);
        assert_eq!(series.info.len(), 1);
        assert_eq!(series.info[0].0.phase, "Running");
        assert_eq!(series.phase.iter().filter(|(_, v)| *v == 1).count(), 1);
        let types: Vec<_> = series
            .metric_type
            .iter()
            .map(|(l, _)| (l.metric.as_str(), l.r#type.as_str()))
            .collect();
        assert_eq!(types, [("rate", "Prometheus"), ("hook", "Web")]);
        let current: Vec<_> = series
            .metric_phase
            .iter()
            .filter(|(_, v)| *v == 1)
            .map(|(l, _)| (l.metric.as_str(), l.phase.as_str()))
            .collect();
        assert_eq!(current, [("rate", "Running"), ("hook", "Pending")]);
        // The last measurement errored: the value shown is the last number measured.
        assert_eq!(series.value.len(), 1);
        assert_eq!(series.value[0].0.metric, "rate");
        assert_eq!(series.value[0].1, 0.95);
    }
}
