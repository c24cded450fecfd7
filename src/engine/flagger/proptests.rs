//! Property tests: random analyses driven through random verdicts, readiness and revisions.
//! Invariants on every tick: weights within 0..=maxWeight (weighted runs) or 0..=100, routes
//! always sum to 100, failedChecks never above the threshold, and a run that fails ends with the
//! canary at weight 0 and scaled to zero.

use proptest::prelude::*;
use serde_json::json;

use super::tests::World;
use super::*;

fn analysis() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (1..=100i32, 0..=100i32, 0..=50i32, 1..4i32).prop_map(|(step, max, promo, threshold)| {
            json!({"stepWeight": step, "maxWeight": max, "stepWeightPromotion": promo,
                "threshold": threshold,
                "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}]})
        }),
        (proptest::collection::btree_set(0..=100i32, 1..5), 1..4i32).prop_map(
            |(steps, threshold)| {
                json!({"stepWeights": steps.into_iter().collect::<Vec<_>>(), "threshold": threshold,
                "webhooks": [{"name": "load", "url": "http://load"}]})
            }
        ),
        (1..6i32, any::<bool>()).prop_map(|(iterations, ab)| {
            let mut a = json!({"iterations": iterations,
                "metrics": [{"name": "m", "query": "q"}]});
            if ab {
                a["match"] = json!([{"headers": {"x": {"exact": "y"}}}]);
            }
            a
        }),
    ]
}

#[derive(Clone, Debug)]
enum Event {
    Tick,
    AnalysisFails,
    AnalysisPasses,
    GateCloses,
    GateOpens,
    NewRevision,
    CanaryNotReady,
    CanaryReady,
    RollbackRequested,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => Just(Event::Tick),
        2 => Just(Event::AnalysisFails),
        2 => Just(Event::AnalysisPasses),
        1 => Just(Event::GateCloses),
        1 => Just(Event::GateOpens),
        1 => Just(Event::NewRevision),
        1 => Just(Event::CanaryNotReady),
        1 => Just(Event::CanaryReady),
        1 => Just(Event::RollbackRequested),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn weights_stay_in_bounds_and_failures_end_at_zero(
        analysis in analysis(),
        kubernetes in any::<bool>(),
        gate in any::<bool>(),
        events in proptest::collection::vec(event(), 1..80),
    ) {
        let mut analysis = analysis;
        if gate {
            analysis["webhooks"] = json!([{"name": "g", "type": "confirm-promotion", "url": "http://g"},
                {"name": "r", "type": "rollback", "url": "http://r"}]);
        }
        let provider = if kubernetes { KUBERNETES_PROVIDER } else { "istio" };
        let mut w = World::new(json!({"analysis": analysis}), provider).initialized();
        let spec = w.canary.analysis().cloned().unwrap_or_default();
        let weighted = spec.iterations() == 0 && !kubernetes;
        let max = spec.max_weight();
        let threshold = spec.threshold();
        let mut revision = 1;
        w.target_hash = "v2".into();
        for event in events {
            match event {
                Event::Tick => {}
                Event::AnalysisFails => { w.verdicts.insert(Check::Analysis, Verdict::fail("bad")); }
                Event::AnalysisPasses => { w.verdicts.remove(&Check::Analysis); }
                Event::GateCloses => { w.verdicts.insert(Check::ConfirmPromotion, Verdict::fail("closed")); }
                Event::GateOpens => { w.verdicts.remove(&Check::ConfirmPromotion); }
                Event::NewRevision => { revision += 1; w.target_hash = format!("v{revision}"); }
                Event::CanaryNotReady => w.target_ready = false,
                Event::CanaryReady => w.target_ready = true,
                Event::RollbackRequested => { w.verdicts.insert(Check::Rollback, Verdict::pass()); }
            }
            let before = w.actions.len();
            w.step();
            if matches!(event, Event::RollbackRequested) {
                w.verdicts.remove(&Check::Rollback);
            }
            let status = w.status().clone();
            let weight = status.canary_weight.unwrap_or(0);
            if weighted {
                prop_assert!((0..=max).contains(&weight), "weight {weight} > max {max}");
                for action in &w.actions[before..] {
                    if let Action::SetRoutes { canary_weight, .. } = action {
                        prop_assert!((0..=max).contains(canary_weight), "{action:?} max {max}");
                    }
                }
            } else {
                prop_assert!((0..=100).contains(&weight));
            }
            prop_assert!(status.failed_checks.unwrap_or(0) <= threshold);
            if w.phase() == CanaryPhase::Failed {
                prop_assert_eq!(weight, 0);
                prop_assert_eq!(w.weight(), 0);
                prop_assert_eq!(w.target_replicas, 0);
            }
        }
    }
}
