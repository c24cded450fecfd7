//! Table tests: a Canary driven tick by tick through a small simulated cluster, checking phases,
//! weights and counters against Flagger's documented sequences.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;
use crate::api::flagger::canary::{Canary, CanaryPhase};

/// A simulated cluster around one Canary: Deployments become ready at once, the router applies
/// what it is told, and checks answer from `verdicts` (pass when absent).
pub(super) struct World {
    pub canary: Canary,
    pub provider: String,
    pub interval: Duration,
    pub now: Timestamp,
    pub last_tick: Option<Timestamp>,
    pub target_hash: String,
    pub target_replicas: i32,
    pub target_ready: bool,
    pub target_stuck: bool,
    pub primary: Option<(String, i32)>,
    pub primary_ready: bool,
    pub configs: BTreeMap<String, String>,
    pub router: Option<RouterWeights>,
    pub verdicts: BTreeMap<Check, Verdict>,
    /// Checks asked for, in order, over the whole run.
    pub asked: Vec<Check>,
    pub actions: Vec<Action>,
    pub primary_promoted: Vec<String>,
}

impl World {
    pub fn new(canary: serde_json::Value, provider: &str) -> World {
        let mut value = json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "service": {"port": 9898},
            },
        });
        if let Some(spec) = canary.as_object() {
            for (k, v) in spec {
                value["spec"][k] = v.clone();
            }
        }
        let canary: Canary = serde_json::from_value(value).unwrap();
        World {
            canary,
            provider: provider.into(),
            interval: Duration::from_secs(10),
            now: Timestamp::from_second(1_700_000_000).unwrap(),
            last_tick: None,
            target_hash: "v1".into(),
            target_replicas: 2,
            target_ready: true,
            target_stuck: false,
            primary: None,
            primary_ready: true,
            configs: BTreeMap::new(),
            router: (provider != KUBERNETES_PROVIDER).then(RouterWeights::default),
            verdicts: BTreeMap::new(),
            asked: Vec::new(),
            actions: Vec::new(),
            primary_promoted: Vec::new(),
        }
    }

    fn workload(replicas: i32, ready: bool) -> Workload {
        Workload {
            generation: 1,
            observed_generation: 1,
            spec_replicas: replicas,
            replicas,
            updated_replicas: replicas,
            available_replicas: if ready { replicas } else { 0 },
            progress_deadline_exceeded: false,
            unavailable_since: None,
        }
    }

    fn observations(&self) -> Observations {
        let mut target = Self::workload(self.target_replicas, self.target_ready);
        target.progress_deadline_exceeded = self.target_stuck;
        Observations {
            now: self.now,
            last_tick: self.last_tick,
            target: Some(Target {
                template_hash: self.target_hash.clone(),
                workload: target,
            }),
            primary: self
                .primary
                .as_ref()
                .map(|(_, r)| Self::workload(*r, self.primary_ready)),
            configs: self.configs.clone(),
            router: self.router,
            verdicts: BTreeMap::new(),
        }
    }

    /// Plans at the current time, answering checks, and applies the plan.
    pub fn plan(&mut self) -> Plan {
        let mut observed = self.observations();
        for _ in 0..10 {
            let input = Input {
                canary: &self.canary,
                provider: &self.provider,
                interval: self.interval,
                observed: &observed,
            };
            match tick(&input) {
                Outcome::Need(check) => {
                    assert!(
                        !observed.verdicts.contains_key(&check),
                        "asked twice for {check:?}"
                    );
                    self.asked.push(check);
                    let verdict = self.verdicts.get(&check).cloned().unwrap_or_else(|| {
                        if check == Check::Rollback {
                            Verdict::fail("closed")
                        } else {
                            Verdict::pass()
                        }
                    });
                    observed.verdicts.insert(check, verdict);
                }
                Outcome::Plan(plan) => {
                    self.apply(&plan);
                    return *plan;
                }
            }
        }
        panic!("more than 10 checks in one tick");
    }

    fn apply(&mut self, plan: &Plan) {
        self.canary.status = Some(plan.status.clone());
        if plan.ticked {
            self.last_tick = Some(self.now);
        }
        for action in &plan.actions {
            match action {
                Action::CreatePrimary if self.primary.is_none() => {
                    self.primary = Some((self.target_hash.clone(), self.target_replicas));
                }
                Action::ScaleTarget { replicas } => self.target_replicas = *replicas,
                Action::Promote => {
                    if let Some(p) = self.primary.as_mut() {
                        p.0 = self.target_hash.clone();
                    }
                    self.primary_promoted.push(self.target_hash.clone());
                }
                Action::SetRoutes {
                    canary_weight,
                    mirrored,
                    primary_weight,
                } => {
                    assert_eq!(primary_weight + canary_weight, 100, "{action:?}");
                    if let Some(r) = self.router.as_mut() {
                        r.canary_weight = *canary_weight;
                        r.mirrored = *mirrored;
                    }
                }
                _ => {}
            }
            self.actions.push(action.clone());
        }
    }

    /// One tick one interval later.
    pub fn step(&mut self) -> Plan {
        self.now = Timestamp::from_second(
            self.now.as_second() + i64::try_from(self.interval.as_secs()).unwrap(),
        )
        .unwrap();
        self.plan()
    }

    pub fn phase(&self) -> CanaryPhase {
        self.canary
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(CanaryPhase::Unspecified)
    }

    pub fn status(&self) -> &CanaryStatus {
        self.canary.status.as_ref().unwrap()
    }

    pub fn weight(&self) -> i32 {
        match self.router {
            Some(r) => r.canary_weight,
            None => self.status().canary_weight.unwrap_or(0),
        }
    }

    /// Initialises the canary and checks the result.
    pub fn initialized(mut self) -> World {
        self.plan();
        assert_eq!(self.phase(), CanaryPhase::Initializing);
        self.step();
        assert_eq!(self.phase(), CanaryPhase::Initialized);
        assert_eq!(self.target_replicas, 0, "target scaled to zero");
        self
    }

    /// Ticks until the phase is one of `until` (at most `max` ticks), recording (phase, weight,
    /// failedChecks, iterations) after each tick.
    pub fn run_until(
        &mut self,
        until: &[CanaryPhase],
        max: usize,
    ) -> Vec<(CanaryPhase, i32, i32, i32)> {
        let mut seen = Vec::new();
        for _ in 0..max {
            self.step();
            let s = self.status();
            seen.push((
                self.phase(),
                self.weight(),
                s.failed_checks.unwrap_or(0),
                s.iterations.unwrap_or(0),
            ));
            if until.contains(&self.phase()) {
                return seen;
            }
        }
        panic!("never reached {until:?}: {seen:?}");
    }

    pub fn events(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn routes(&self) -> Vec<(i32, i32)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::SetRoutes {
                    primary_weight,
                    canary_weight,
                    ..
                } => Some((*primary_weight, *canary_weight)),
                _ => None,
            })
            .collect()
    }
}

use CanaryPhase::*;

fn weighted(analysis: serde_json::Value) -> serde_json::Value {
    json!({ "analysis": analysis })
}

#[test]
fn initialization_creates_the_primary_then_waits_for_it_then_scales_the_target_down() {
    let mut w = World::new(
        weighted(json!({"interval": "10s", "stepWeight": 20})),
        "istio",
    );
    w.primary_ready = false;
    let plan = w.plan();
    assert_eq!(w.phase(), Initializing);
    assert_eq!(plan.actions, vec![Action::CreatePrimary]);
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(10)));
    let cond = w.status().promoted_condition().unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("Unknown", "Initializing")
    );

    let plan = w.step();
    assert_eq!(
        w.phase(),
        Initializing,
        "primary not ready: no traffic moves"
    );
    assert!(!plan.actions.contains(&Action::EnsureServices));
    assert_eq!(w.target_replicas, 2);

    w.primary_ready = true;
    let plan = w.step();
    assert_eq!(w.phase(), Initialized);
    assert_eq!(w.target_replicas, 0);
    assert!(plan.actions.contains(&Action::EnsureServices));
    let s = w.status();
    assert_eq!(s.last_applied_spec.as_deref(), Some("v1"));
    assert_eq!(s.last_promoted_spec.as_deref(), Some("v1"));
    assert_eq!(s.canary_weight, Some(0));
    let cond = s.promoted_condition().unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Initialized")
    );
    assert_eq!(plan.requeue_after, None, "idle until something changes");
    assert!(
        w.events()
            .contains(&"Initialization done! podinfo.test".to_string())
    );

    // Nothing changed: nothing happens.
    let before = w.status().clone();
    let plan = w.step();
    assert_eq!(plan.status, before);
    assert_eq!(plan.actions, vec![Action::EnsureServices]);
}

#[test]
fn a_primary_not_ready_yet_is_reported_once_per_interval_not_on_every_change() {
    let mut w = World::new(
        weighted(json!({"interval": "10s", "stepWeight": 20})),
        "istio",
    );
    w.primary_ready = false;
    w.plan();
    w.step();
    let waiting = |w: &World| {
        w.events()
            .iter()
            .filter(|e| e.contains("waiting for rollout"))
            .count()
    };
    let reported = waiting(&w);
    assert_eq!(reported, 1, "{:?}", w.events());
    // Changes of the primary (watch events) within the interval: followed, not announced.
    for _ in 0..5 {
        let plan = w.plan();
        assert!(!plan.ticked);
        assert!(
            plan.requeue_after
                .is_some_and(|r| r <= Duration::from_secs(10))
        );
    }
    assert_eq!(waiting(&w), reported, "{:?}", w.events());
    w.step();
    assert_eq!(waiting(&w), reported + 1, "one more an interval later");
    // And it becoming ready is acted on at once, not an interval later.
    w.primary_ready = true;
    w.plan();
    assert_eq!(w.phase(), Initialized);
}

#[test]
fn step_weight_20_max_80_gives_canary_20_40_60_80_then_promotion() {
    let mut w = World::new(
        weighted(
            json!({"interval": "10s", "stepWeight": 20, "maxWeight": 80, "threshold": 2,
            "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}]}),
        ),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    let plan = w.step();
    assert_eq!(w.phase(), Progressing);
    assert_eq!(
        w.target_replicas, 2,
        "canary scaled up to the primary's replicas"
    );
    assert_eq!(w.status().last_applied_spec.as_deref(), Some("v2"));
    assert_eq!(w.status().last_promoted_spec.as_deref(), Some("v1"));
    assert!(plan.ticked);

    let seen = w.run_until(&[Succeeded, Failed], 20);
    assert_eq!(
        seen,
        vec![
            (Progressing, 20, 0, 0),
            (Progressing, 40, 0, 0),
            (Progressing, 60, 0, 0),
            (Progressing, 80, 0, 0),
            (Promoting, 80, 0, 0),
            (Finalising, 0, 0, 0),
            (Succeeded, 0, 0, 0),
        ]
    );
    // The primary's share as the router saw it before each analysis step.
    let primary: Vec<i32> = w.routes().iter().map(|(p, _)| *p).collect();
    assert_eq!(primary, vec![100, 80, 60, 40, 20, 100]);
    assert_eq!(w.primary_promoted, vec!["v2".to_string()]);
    assert_eq!(w.target_replicas, 0);
    let s = w.status();
    assert_eq!(s.last_promoted_spec.as_deref(), Some("v2"));
    let cond = s.promoted_condition().unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Succeeded")
    );
    // One analysis per tick after the first step; the first tick at weight 0 only starts.
    assert_eq!(w.asked.iter().filter(|c| **c == Check::Analysis).count(), 4);
    assert!(w.actions.contains(&Action::RunHooks(HookType::PostRollout)));
}

#[test]
fn max_weight_is_never_overshot() {
    // Upstream routes 60 with max 50 / step 20; Sluice stops at 50.
    let mut w = World::new(
        weighted(json!({"stepWeight": 20, "maxWeight": 50})),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    let seen = w.run_until(&[Succeeded], 20);
    let weights: Vec<i32> = seen.iter().map(|s| s.1).collect();
    assert_eq!(weights, vec![20, 40, 50, 50, 0, 0]);
}

#[test]
fn step_weights_are_followed_and_the_last_acts_as_max() {
    let mut w = World::new(weighted(json!({"stepWeights": [1, 5, 25, 50]})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    let seen = w.run_until(&[Succeeded], 20);
    let weights: Vec<i32> = seen.iter().map(|s| s.1).collect();
    assert_eq!(weights, vec![1, 5, 25, 50, 50, 0, 0]);
}

#[test]
fn step_weight_promotion_moves_traffic_back_in_steps() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 20, "maxWeight": 60, "stepWeightPromotion": 25})),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    let seen = w.run_until(&[Succeeded], 20);
    assert_eq!(
        seen.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        vec![
            (Progressing, 20),
            (Progressing, 40),
            (Progressing, 60),
            (Promoting, 60),
            (Promoting, 35),
            (Promoting, 10),
            (Finalising, 0),
            (Succeeded, 0),
        ]
    );
}

#[test]
fn failed_checks_reach_the_threshold_and_roll_back() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 10, "threshold": 3,
            "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}]})),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    assert_eq!(w.weight(), 10);
    w.verdicts.insert(
        Check::Analysis,
        Verdict::fail("Halt advancement success rate 50 < 99"),
    );
    let seen = w.run_until(&[Failed], 10);
    assert_eq!(
        seen,
        vec![
            (Progressing, 10, 1, 0),
            (Progressing, 10, 2, 0),
            (Progressing, 10, 3, 0),
            (Failed, 0, 0, 0),
        ],
        "cumulative failed checks; the fourth tick rolls back"
    );
    assert_eq!(w.target_replicas, 0);
    assert_eq!(w.routes().last(), Some(&(100, 0)));
    let s = w.status();
    assert_eq!(s.last_promoted_spec.as_deref(), Some("v1"));
    let cond = s.promoted_condition().unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "Failed")
    );
    let events = w.events();
    assert!(events.contains(&"Rolling back podinfo.test failed checks threshold reached 3".into()));
    assert!(events.contains(&"Canary failed! Scaling down podinfo.test".into()));
    assert!(w.actions.iter().any(|a| matches!(
        a,
        Action::Alert { severity: AlertSeverity::Error, message, .. } if message == "Failed checks threshold reached 3"
    )));

    // Failed and nothing new: stays Failed. A new revision starts again.
    w.verdicts.clear();
    w.step();
    assert_eq!(w.phase(), Failed);
    assert_eq!(w.target_replicas, 0);
    w.target_hash = "v3".into();
    w.step();
    assert_eq!(w.phase(), Progressing);
    assert_eq!(w.status().failed_checks, Some(0));
}

#[test]
fn kubernetes_provider_is_blue_green_with_ten_iterations_by_default() {
    let mut w = World::new(
        weighted(json!({"interval": "1m", "threshold": 2,
            "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}]})),
        KUBERNETES_PROVIDER,
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    assert_eq!(w.phase(), Progressing);
    let seen = w.run_until(&[Succeeded], 30);
    let iterations: Vec<i32> = seen.iter().map(|s| s.3).collect();
    // Promoting keeps the iterations (upstream's SetStatusPhase); Finalising resets them.
    assert_eq!(
        iterations,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 0, 0]
    );
    let phases: Vec<CanaryPhase> = seen.iter().map(|s| s.0).collect();
    assert_eq!(&phases[11..], &[Promoting, Finalising, Succeeded]);
    assert!(
        seen.iter().all(|s| s.1 == 0),
        "no router: the status weight stays 0"
    );
    assert_eq!(w.primary_promoted, vec!["v2".to_string()]);
}

#[test]
fn ab_testing_routes_matching_traffic_for_the_iterations() {
    let mut w = World::new(
        weighted(json!({"iterations": 3,
            "match": [{"headers": {"x-canary": {"exact": "insider"}}}]})),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    let seen = w.run_until(&[Succeeded], 20);
    assert_eq!(
        seen.iter().map(|s| (s.0, s.3)).collect::<Vec<_>>(),
        vec![
            (Progressing, 1),
            (Progressing, 2),
            (Progressing, 3),
            (Promoting, 3),
            (Finalising, 0),
            (Succeeded, 0),
        ]
    );
    assert!(w.routes().contains(&(0, 100)));
}

#[test]
fn confirm_promotion_gate_holds_in_waiting_promotion_and_analysis_keeps_running() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 50, "webhooks": [
            {"name": "gate", "type": "confirm-promotion", "url": "http://gate"},
            {"name": "load", "url": "http://load"}]})),
        "istio",
    )
    .initialized();
    w.verdicts
        .insert(Check::ConfirmPromotion, Verdict::fail("gate closed"));
    w.target_hash = "v2".into();
    w.step();
    let seen = w.run_until(&[WaitingPromotion], 10);
    assert_eq!(
        seen.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        vec![
            (Progressing, 50),
            (Progressing, 100),
            (WaitingPromotion, 100)
        ]
    );
    let cond = w.status().promoted_condition().unwrap();
    assert_eq!(cond.message.as_deref(), Some("Waiting for approval."));
    let analyses = w.asked.iter().filter(|c| **c == Check::Analysis).count();
    for _ in 0..3 {
        w.step();
        assert_eq!(w.phase(), WaitingPromotion);
        assert_eq!(
            w.status().canary_weight,
            Some(100),
            "the routed weight is shown"
        );
    }
    assert_eq!(
        w.asked.iter().filter(|c| **c == Check::Analysis).count(),
        analyses + 3
    );
    w.verdicts.remove(&Check::ConfirmPromotion);
    w.step();
    assert_eq!(w.phase(), Promoting);
    w.run_until(&[Succeeded], 5);
}

#[test]
fn a_gate_timeout_fails_the_run() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 50, "webhooks": [
            {"name": "gate", "type": "confirm-promotion", "url": "http://gate", "gateTimeout": "35s"}]})),
        "istio",
    )
    .initialized();
    w.verdicts
        .insert(Check::ConfirmPromotion, Verdict::fail("closed"));
    w.target_hash = "v2".into();
    w.step();
    w.run_until(&[WaitingPromotion], 10);
    let seen = w.run_until(&[Failed], 10);
    assert_eq!(seen.len(), 4, "10s ticks: 35s have passed on the fourth");
    assert_eq!(w.routes().last(), Some(&(100, 0)));
}

#[test]
fn confirm_rollout_gate_waits_before_scaling_up() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 50, "webhooks": [
            {"name": "gate", "type": "confirm-rollout", "url": "http://gate"}]})),
        "istio",
    )
    .initialized();
    w.verdicts
        .insert(Check::ConfirmRollout, Verdict::fail("closed"));
    w.target_hash = "v2".into();
    w.step();
    assert_eq!(w.phase(), Waiting);
    assert_eq!(w.target_replicas, 0, "not scaled up while waiting");
    w.step();
    assert_eq!(w.phase(), Waiting);
    w.verdicts.clear();
    w.step();
    assert_eq!(w.phase(), Progressing);
    assert_eq!(w.target_replicas, 2);
}

#[test]
fn rollback_webhook_rolls_back_at_once() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 10, "webhooks": [
            {"name": "abort", "type": "rollback", "url": "http://abort"}]})),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    w.step();
    assert_eq!(w.weight(), 20);
    w.verdicts.insert(Check::Rollback, Verdict::pass());
    w.step();
    assert_eq!(w.phase(), Failed);
    assert_eq!(w.weight(), 0);
    assert!(
        w.events()
            .contains(&"Rolling back podinfo.test manual webhook invoked".into())
    );
}

#[test]
fn pre_rollout_failure_counts_as_a_failed_check_before_any_traffic() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 10, "threshold": 2, "webhooks": [
            {"name": "smoke", "type": "pre-rollout", "url": "http://smoke"}]})),
        "istio",
    )
    .initialized();
    w.verdicts
        .insert(Check::PreRollout, Verdict::fail("smoke failed"));
    w.target_hash = "v2".into();
    w.step();
    let seen = w.run_until(&[Failed], 10);
    assert_eq!(
        seen,
        vec![
            (Progressing, 0, 1, 0),
            (Progressing, 0, 2, 0),
            (Failed, 0, 0, 0)
        ]
    );
}

#[test]
fn a_new_revision_mid_run_restarts_the_analysis() {
    let mut w = World::new(weighted(json!({"stepWeight": 10})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    w.step();
    assert_eq!(w.weight(), 20);
    w.target_hash = "v3".into();
    w.step();
    assert_eq!(w.phase(), Progressing);
    assert_eq!(w.weight(), 0);
    assert_eq!(w.status().last_applied_spec.as_deref(), Some("v3"));
    assert!(
        w.events()
            .contains(&"New revision detected! Restarting analysis for podinfo.test".into())
    );
}

#[test]
fn config_change_starts_a_run_and_a_manual_revert_does_not() {
    let mut w = World::new(weighted(json!({"stepWeight": 50})), "istio");
    w.configs.insert("configmap/podinfo".into(), "aaa".into());
    let mut w = w.initialized();
    assert_eq!(
        w.status().tracked_configs.as_ref().unwrap()["configmap/podinfo"],
        "aaa"
    );
    w.configs.insert("configmap/podinfo".into(), "bbb".into());
    w.step();
    assert_eq!(w.phase(), Progressing);
    w.run_until(&[Succeeded], 10);
    assert_eq!(
        w.status().tracked_configs.as_ref().unwrap()["configmap/podinfo"],
        "bbb"
    );

    // Same template as the one promoted: nothing starts.
    w.target_hash = "v1".into();
    w.step();
    assert_eq!(w.phase(), Succeeded);
}

#[test]
fn skip_analysis_promotes_once_the_canary_is_ready() {
    let mut w = World::new(
        json!({"skipAnalysis": true, "analysis": {"stepWeight": 10}}),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    assert_eq!(w.phase(), Progressing);
    w.target_ready = false;
    w.step();
    assert_eq!(w.phase(), Progressing, "waits for the canary");
    w.target_ready = true;
    w.step();
    assert_eq!(w.phase(), Succeeded);
    assert_eq!(w.primary_promoted, vec!["v2".to_string()]);
    assert_eq!(w.target_replicas, 0);
    assert!(w.asked.is_empty());
}

#[test]
fn a_stuck_canary_rolls_back() {
    let mut w = World::new(weighted(json!({"stepWeight": 10})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    w.target_stuck = true;
    w.step();
    assert_eq!(w.phase(), Failed);
    assert!(w.actions.iter().any(|a| matches!(
        a,
        Action::Alert { severity: AlertSeverity::Error, message, .. } if message.starts_with("Progress deadline exceeded")
    )));
}

#[test]
fn suspend_freezes_the_run() {
    let mut w = World::new(weighted(json!({"stepWeight": 10})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    assert_eq!(w.weight(), 10);
    w.canary.spec.suspend = Some(true);
    for _ in 0..3 {
        let plan = w.step();
        assert!(plan.actions.is_empty());
        assert!(!plan.ticked);
    }
    assert_eq!(w.weight(), 10);
    w.canary.spec.suspend = None;
    w.step();
    assert_eq!(w.weight(), 20);
}

#[test]
fn a_reconcile_before_the_interval_does_nothing() {
    let mut w = World::new(weighted(json!({"stepWeight": 10})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    assert_eq!(w.weight(), 10);
    w.now = Timestamp::from_second(w.now.as_second() + 3).unwrap();
    let plan = w.plan();
    assert!(!plan.ticked);
    assert!(plan.actions.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(7)));
    assert_eq!(w.weight(), 10);
}

#[test]
fn a_restart_resumes_from_status_without_a_router_read() {
    let mut w = World::new(
        weighted(json!({"stepWeight": 20, "maxWeight": 60})),
        "istio",
    )
    .initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    w.step();
    assert_eq!(w.status().canary_weight, Some(40));
    // A new controller: no tick recorded, the router not read yet.
    w.last_tick = None;
    w.router = None;
    w.step();
    assert_eq!(w.status().canary_weight, Some(60));
}

#[test]
fn mirroring_takes_one_step_before_live_traffic() {
    let mut w =
        World::new(weighted(json!({"stepWeight": 50, "mirror": true})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    w.step();
    assert_eq!(
        w.router,
        Some(RouterWeights {
            canary_weight: 0,
            mirrored: true
        })
    );
    w.step();
    assert_eq!(
        w.router,
        Some(RouterWeights {
            canary_weight: 50,
            mirrored: false
        })
    );
}

#[test]
fn next_step_weight_follows_upstream() {
    let a: CanaryAnalysis = serde_json::from_value(json!({"stepWeights": [10, 30, 60]})).unwrap();
    assert_eq!(next_step_weight(&a, 0), 10);
    assert_eq!(next_step_weight(&a, 10), 20);
    assert_eq!(next_step_weight(&a, 30), 30);
    assert_eq!(next_step_weight(&a, 60), 40, "past the last step: the rest");
    assert_eq!(next_step_weight(&a, 100), 1);
    let a: CanaryAnalysis = serde_json::from_value(json!({"stepWeight": 5})).unwrap();
    assert_eq!(next_step_weight(&a, 95), 5);
    assert_eq!(next_step_weight(&CanaryAnalysis::default(), 0), 0);
}

#[test]
fn readiness_follows_is_deployment_ready() {
    let now = Timestamp::from_second(1_000).unwrap();
    let deadline = Duration::from_secs(60);
    let mut w = Workload {
        generation: 2,
        observed_generation: 1,
        spec_replicas: 4,
        replicas: 4,
        updated_replicas: 4,
        available_replicas: 4,
        ..Default::default()
    };
    assert!(matches!(
        readiness("d", &w, 100, deadline, now),
        Readiness::Waiting(_)
    ));
    w.observed_generation = 2;
    assert_eq!(readiness("d", &w, 100, deadline, now), Readiness::Ready);
    w.available_replicas = 2;
    assert!(matches!(
        readiness("d", &w, 100, deadline, now),
        Readiness::Waiting(_)
    ));
    assert_eq!(readiness("d", &w, 50, deadline, now), Readiness::Ready);
    w.unavailable_since = Some(Timestamp::from_second(900).unwrap());
    assert!(matches!(
        readiness("d", &w, 100, deadline, now),
        Readiness::Stuck(_)
    ));
    w.progress_deadline_exceeded = true;
    assert!(matches!(
        readiness("d", &w, 0, deadline, now),
        Readiness::Stuck(_)
    ));
}

#[test]
fn reinterpreted_fields_are_named() {
    let canary = |analysis: serde_json::Value| -> Canary {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "c"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                     "analysis": analysis},
        }))
        .unwrap()
    };
    let all = canary(serde_json::json!({"maxWeight": 0, "stepWeight": 10, "iterations": 3}));
    let fields: Vec<String> = super::reinterpreted(&all, "istio")
        .iter()
        .map(|m| m.split(':').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.analysis.maxWeight",
            "spec.analysis.iterations",
            "spec.analysis.metrics"
        ]
    );
    let blue_green = super::reinterpreted(&all, "kubernetes");
    assert!(blue_green[1].starts_with("spec.analysis.stepWeight: the kubernetes provider"));
    let mut plain = canary(serde_json::json!({"stepWeight": 10, "maxWeight": 50,
        "metrics": [{"name": "m", "query": "up"}]}));
    assert!(super::reinterpreted(&plain, "istio").is_empty());
    plain.spec.autoscaler_ref = serde_json::from_value(serde_json::json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "d",
        "primaryScalerQueries": {"trigger": "sum(up)"}}))
    .unwrap();
    let found = super::reinterpreted(&plain, "istio");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("spec.autoscalerRef.primaryScalerQueries:"));
}

#[test]
fn the_promoted_condition_keeps_the_controllers_other_conditions() {
    let stalled = CanaryCondition {
        r#type: "Stalled".into(),
        status: "True".into(),
        last_update_time: None,
        last_transition_time: None,
        reason: "WriteRefused".into(),
        message: Some("refused".into()),
    };
    let now = Timestamp::from_second(1_000).unwrap();
    let conditions = promoted_conditions(
        std::slice::from_ref(&stalled),
        CanaryPhase::Initialized,
        "Deployment",
        now,
    )
    .unwrap();
    let types: Vec<&str> = conditions.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(types, ["Promoted", "Stalled"]);
    assert_eq!(conditions[1], stalled);
}

#[test]
fn routed_blue_green_routes_everything_to_the_canary_but_never_writes_weight_100() {
    let mut w = World::new(weighted(json!({"iterations": 2})), "istio").initialized();
    w.target_hash = "v2".into();
    w.step();
    let mut written = vec![w.status().canary_weight];
    for _ in 0..10 {
        w.step();
        written.push(w.status().canary_weight);
        if w.phase() == Succeeded {
            break;
        }
    }
    assert_eq!(w.phase(), Succeeded);
    assert!(w.routes().contains(&(0, 100)), "{:?}", w.routes());
    assert!(
        written.iter().all(|weight| *weight == Some(0)),
        "{written:?}"
    );
}

#[test]
fn initializing_already_has_its_counters() {
    let mut w = World::new(weighted(json!({"iterations": 2})), "istio");
    w.plan();
    assert_eq!(w.phase(), Initializing);
    let s = w.status();
    assert_eq!(
        (s.failed_checks, s.canary_weight, s.iterations),
        (Some(0), Some(0), Some(0))
    );
}

#[test]
fn webhooks_are_sent_the_phase_upstream_sends() {
    assert_eq!(hook_phase(Check::ConfirmRollout, Initialized), Initialized);
    assert_eq!(hook_phase(Check::ConfirmRollout, Waiting), Waiting);
    assert_eq!(
        hook_phase(Check::Rollback, WaitingPromotion),
        WaitingPromotion
    );
    for check in [
        Check::PreRollout,
        Check::Analysis,
        Check::ConfirmTrafficIncrease,
        Check::ConfirmPromotion,
    ] {
        assert_eq!(
            hook_phase(check, WaitingPromotion),
            Progressing,
            "{check:?}"
        );
    }
}

#[test]
fn terminating_resets_the_counters_once() {
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let status = CanaryStatus {
        phase: Some(Progressing),
        canary_weight: Some(30),
        iterations: Some(2),
        failed_checks: Some(1),
        ..Default::default()
    };
    let next = terminating(&status, "Deployment", now).unwrap();
    assert_eq!(next.phase, Some(Terminating));
    assert_eq!((next.canary_weight, next.iterations), (Some(0), Some(0)));
    assert_eq!(next.failed_checks, Some(1));
    assert_eq!(next.conditions[0].reason, "Terminating");
    assert!(terminating(&next, "Deployment", now).is_none());
}
