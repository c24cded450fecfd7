//! Argo Rollouts' remaining metric names, with Argo's labels (`controller/metrics/*.go`):
//! `rollout_events_total`, the deprecated one-hot `rollout_phase`, `analysis_template_info`,
//! `analysis_template_metric_info` and `argo_rollouts_controller_info`.
//!
//! Per-Rollout series are removed with the Rollout ([`ArgoMetrics::remove_rollout`]); template
//! series are computed from the watch caches at scrape time, as Argo's collector does, so they
//! vanish with the template. This module only counts; it never decides anything.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, RwLock};

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{argo_type, encode_gauges};
use crate::api::argo::analysis::{AnalysisTemplate, AnalysisTemplateSpec, ClusterAnalysisTemplate};
use crate::api::argo::rollout::RolloutCondition;
use crate::engine::health::reason;

/// Argo's calculated phases, in the order it exports `rollout_phase`.
const PHASES: [&str; 6] = [
    "Completed",
    "Progressing",
    "Paused",
    "Timeout",
    "Error",
    "Abort",
];

/// The strategies `rollout_phase` is labelled with.
const STRATEGIES: [&str; 2] = ["canary", "blueGreen"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    namespace: String,
    name: String,
    r#type: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    strategy: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateMetricLabels {
    namespace: String,
    name: String,
    r#type: String,
    metric: String,
}

/// A Rollout's namespace and name.
type RolloutKey = (String, String);

/// Argo's metrics that Sluice's own families do not already cover.
pub struct ArgoMetrics {
    events: Family<EventLabels, Counter>,
    /// Per Rollout (`namespace`, `name`), the (`type`, `reason`) pairs counted, so its series can
    /// be removed with it.
    event_series: Mutex<HashMap<RolloutKey, BTreeSet<(String, String)>>>,
    phase: Family<PhaseLabels, Gauge>,
    templates: std::sync::Arc<TemplateCollector>,
}

impl ArgoMetrics {
    /// Registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let events = Family::<EventLabels, Counter>::default();
        registry.register("rollout_events", "Count of rollout events", events.clone());
        let phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rollout_phase",
            "Information on the state of the rollout (DEPRECATED - use rollout_info)",
            phase.clone(),
        );
        let version = Family::<VersionLabels, Gauge>::default();
        version
            .get_or_create(&VersionLabels {
                version: format!("sluice-v{}", env!("CARGO_PKG_VERSION")),
            })
            .set(1);
        registry.register(
            "argo_rollouts_controller_info",
            "Running Argo-rollouts version",
            version,
        );
        let templates = std::sync::Arc::new(TemplateCollector::default());
        registry.register_collector(Box::new(templates.clone()));
        Self {
            events,
            event_series: Mutex::default(),
            phase,
            templates,
        }
    }

    /// `rollout_events_total{namespace,name,type,reason}`: one Event recorded on a Rollout.
    pub fn rollout_event(&self, namespace: &str, name: &str, warning: bool, reason: &str) {
        let kind = if warning { "Warning" } else { "Normal" };
        self.events
            .get_or_create(&EventLabels {
                namespace: namespace.into(),
                name: name.into(),
                r#type: kind.into(),
                reason: reason.into(),
            })
            .inc();
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
        self.event_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((namespace.into(), name.into()))
            .or_default()
            .insert((kind.into(), reason.into()));
    }

    /// `rollout_phase{namespace,name,strategy,phase}`: 1 for the phase Argo calculates from the
    /// Rollout's conditions, 0 for the others.
    pub fn set_rollout_phase(
        &self,
        namespace: &str,
        name: &str,
        strategy: &str,
        conditions: &[RolloutCondition],
    ) {
        let current = calculated_phase(conditions);
        for other in STRATEGIES.iter().filter(|s| **s != strategy) {
            self.remove_phase(namespace, name, other);
        }
        for phase in PHASES {
            self.phase
                .get_or_create(&phase_labels(namespace, name, strategy, phase))
                .set(i64::from(phase == current));
        }
    }

    /// Drops every series of a Rollout that is gone.
    pub fn remove_rollout(&self, namespace: &str, name: &str) {
        for strategy in STRATEGIES {
            self.remove_phase(namespace, name, strategy);
        }
        let key = (namespace.to_string(), name.to_string());
        let series = self
            .event_series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        for (kind, reason) in series.into_iter().flatten() {
            self.events.remove(&EventLabels {
                namespace: key.0.clone(),
                name: key.1.clone(),
                r#type: kind,
                reason,
            });
        }
    }

    fn remove_phase(&self, namespace: &str, name: &str, strategy: &str) {
        for phase in PHASES {
            self.phase
                .remove(&phase_labels(namespace, name, strategy, phase));
        }
    }

    /// The template caches `analysis_template_*` are computed from at scrape time.
    pub fn watch_templates(
        &self,
        namespaced: Store<AnalysisTemplate>,
        cluster: Store<ClusterAnalysisTemplate>,
    ) {
        *self
            .templates
            .stores
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some((namespaced, cluster));
    }
}

fn phase_labels(namespace: &str, name: &str, strategy: &str, phase: &str) -> PhaseLabels {
    PhaseLabels {
        namespace: namespace.into(),
        name: name.into(),
        strategy: strategy.into(),
        phase: phase.into(),
    }
}

/// Argo's `calculatePhase`: from the Progressing condition's reason; `InvalidSpec` (no series
/// set to 1) when the spec is invalid.
fn calculated_phase(conditions: &[RolloutCondition]) -> &'static str {
    if conditions.iter().any(|c| c.type_ == reason::INVALID_SPEC) {
        return "InvalidSpec";
    }
    let progressing = conditions.iter().find(|c| c.type_ == "Progressing");
    match progressing.map(|c| c.reason.as_str()) {
        Some(reason::NEW_REPLICA_SET_AVAILABLE) => "Completed",
        Some(reason::ROLLOUT_PAUSED) => "Paused",
        Some("ReplicaSetCreateError") => "Error",
        Some(reason::PROGRESS_DEADLINE_EXCEEDED) => "Timeout",
        Some(reason::ROLLOUT_ABORTED) => "Abort",
        _ => "Progressing",
    }
}

#[derive(Default)]
struct TemplateCollector {
    stores: RwLock<Option<(Store<AnalysisTemplate>, Store<ClusterAnalysisTemplate>)>>,
}

impl std::fmt::Debug for TemplateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TemplateCollector")
    }
}

impl Collector for TemplateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut templates: Vec<(String, String, AnalysisTemplateSpec)> = Vec::new();
        if let Some((namespaced, cluster)) = self
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for t in namespaced.state() {
                let ns = t.metadata.namespace.clone().unwrap_or_default();
                let name = t.metadata.name.clone().unwrap_or_default();
                templates.push((ns, name, t.spec.clone()));
            }
            // Cluster-scoped: an empty namespace label, as Argo's.
            for t in cluster.state() {
                let name = t.metadata.name.clone().unwrap_or_default();
                templates.push((String::new(), name, t.spec.template.clone()));
            }
        }
        templates.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let info: Vec<(TemplateLabels, i64)> = templates
            .iter()
            .map(|(namespace, name, _)| {
                let labels = TemplateLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                };
                (labels, 1)
            })
            .collect();
        let metrics: Vec<(TemplateMetricLabels, i64)> = templates
            .iter()
            .flat_map(|(namespace, name, spec)| {
                spec.metrics.iter().map(move |m| {
                    let labels = TemplateMetricLabels {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        r#type: argo_type(m).into(),
                        metric: m.name.clone(),
                    };
                    (labels, 1)
                })
            })
            .collect();
        encode_gauges(
            &mut encoder,
            "analysis_template_info",
            "Information about analysis templates.",
            &info,
        )?;
        encode_gauges(
            &mut encoder,
            "analysis_template_metric_info",
            "Information on metrics in analysis templates.",
            &metrics,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, reason: &str) -> RolloutCondition {
        serde_json::from_value(serde_json::json!({
            "type": type_, "status": "True", "reason": reason, "message": "",
            "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn phase_is_argos_calculated_phase() {
        assert_eq!(calculated_phase(&[]), "Progressing");
        let done = condition("Progressing", "NewReplicaSetAvailable");
        assert_eq!(calculated_phase(std::slice::from_ref(&done)), "Completed");
        let paused = condition("Progressing", "RolloutPaused");
        assert_eq!(calculated_phase(&[paused]), "Paused");
        let invalid = condition("InvalidSpec", "InvalidSpec");
        assert_eq!(calculated_phase(&[done, invalid]), "InvalidSpec");
    }

    #[test]
    fn a_removed_rollout_leaves_no_argo_series() {
        let mut registry = Registry::default();
        let m = ArgoMetrics::register(&mut registry);
        m.rollout_event("ns", "web", false, "RolloutUpdated");
        m.set_rollout_phase("ns", "web", "canary", &[]);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains(
            r#"rollout_events_total{namespace="ns",name="web",type="Normal",reason="RolloutUpdated"} 1"#
        ));
        assert!(out.contains(
            r#"rollout_phase{namespace="ns",name="web",strategy="canary",phase="Progressing"} 1"#
        ));
        assert!(out.contains(r#"argo_rollouts_controller_info{version="sluice-v"#));
        m.remove_rollout("ns", "web");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains(r#"name="web""#), "{out}");
    }
}
