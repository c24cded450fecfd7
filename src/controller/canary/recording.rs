//! Flagger's metrics for Canaries (`flagger_canary_status`, `flagger_canary_weight`,
//! `flagger_canary_total`, `flagger_canary_duration_seconds`, `flagger_canary_successes_total` /
//! `_failures_total`), recorded after each tick from the status it wrote, as upstream's
//! `scheduler.go` does; `flagger_canary_metric_analysis` is set where a metric is measured.
//! Series of Canaries that are gone are dropped. This module only records.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::ResourceExt;

use super::Ctx;
use crate::api::flagger::canary::{Canary, CanaryPhase, CanaryStatus};
use crate::engine::flagger as core;

/// Upstream `Canary.DeploymentStrategy()`: the `deployment_strategy` label.
pub fn deployment_strategy(canary: &Canary, provider: &str) -> &'static str {
    let analysis = canary.analysis().cloned().unwrap_or_default();
    let blue_green = analysis.iterations() > 0 || provider == core::KUBERNETES_PROVIDER;
    if analysis.mirror() && blue_green {
        "blue-green-mirroring"
    } else if !analysis.r#match.is_empty() && provider != core::KUBERNETES_PROVIDER {
        "ab-testing"
    } else if blue_green {
        "blue-green"
    } else {
        "canary"
    }
}

impl Ctx {
    /// Records one tick: status, weights (`routed`, the route's canary weight, else the
    /// status's), its duration if it was a full tick, and the outcome of a run that just ended.
    pub(super) fn record(
        &self,
        canary: &Canary,
        provider: &str,
        old: &CanaryStatus,
        new: &CanaryStatus,
        routed: Option<i32>,
        ticked: Option<Duration>,
    ) {
        let metrics = &self.shared.metrics;
        let namespace = canary.namespace().unwrap_or_default();
        let target = canary.spec.target_ref.name.as_str();
        let phase = new.phase.unwrap_or(CanaryPhase::Unspecified);
        metrics.set_canary_status(&namespace, target, core::phase_name(phase));
        let weight = i64::from(routed.or(new.canary_weight).unwrap_or(0).clamp(0, 100));
        metrics.set_canary_weight(&namespace, target, 100 - weight, weight);
        if let Some(elapsed) = ticked {
            metrics.observe_canary_duration(&namespace, target, elapsed.as_secs_f64());
        }
        if old.phase != new.phase {
            let strategy = deployment_strategy(canary, provider);
            let status = if canary.skip_analysis() {
                "skipped"
            } else {
                "completed"
            };
            match phase {
                CanaryPhase::Succeeded => {
                    metrics.inc_canary_success(&namespace, target, strategy, status);
                }
                CanaryPhase::Failed => {
                    metrics.inc_canary_failure(&namespace, target, strategy, status);
                }
                _ => {}
            }
        }
        self.record_totals();
    }

    /// `flagger_canary_total` per namespace from the cache, and the series of Canaries that are
    /// gone dropped.
    pub(super) fn record_totals(&self) {
        let metrics = &self.shared.metrics;
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        let mut present = BTreeSet::new();
        for canary in self.canaries.state() {
            let namespace = canary.namespace().unwrap_or_default();
            *totals.entry(namespace.clone()).or_default() += 1;
            present.insert((namespace, canary.spec.target_ref.name.clone()));
        }
        let Ok(mut known) = self.recorded.lock() else {
            return;
        };
        for gone in known.difference(&present) {
            metrics.remove_canary(&gone.0, &gone.1);
        }
        let namespaces: BTreeSet<String> = known.iter().map(|(n, _)| n.clone()).collect();
        for namespace in namespaces {
            if !totals.contains_key(&namespace) {
                metrics.set_canary_total(&namespace, 0);
            }
        }
        for (namespace, total) in &totals {
            metrics.set_canary_total(namespace, *total);
        }
        *known = present;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canary(analysis: serde_json::Value) -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "c"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                     "analysis": analysis},
        }))
        .unwrap()
    }

    #[test]
    fn strategies_follow_upstream() {
        assert_eq!(
            deployment_strategy(&canary(json!({"stepWeight": 10})), "istio"),
            "canary"
        );
        assert_eq!(
            deployment_strategy(&canary(json!({"iterations": 5})), "istio"),
            "blue-green"
        );
        assert_eq!(
            deployment_strategy(&canary(json!({"iterations": 5, "mirror": true})), "istio"),
            "blue-green-mirroring"
        );
        assert_eq!(
            deployment_strategy(
                &canary(json!({"iterations": 5, "match": [{"headers": {"x": {"exact": "1"}}}]})),
                "istio"
            ),
            "ab-testing"
        );
        assert_eq!(
            deployment_strategy(&canary(json!({"stepWeight": 10})), "kubernetes"),
            "blue-green",
            "the kubernetes provider is always Blue/Green"
        );
    }
}
