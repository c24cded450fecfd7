//! Property tests: random specs driven through random sequences of user intents, analysis
//! verdicts, pod readiness, router behaviour and time, checking the engine's invariants on every
//! plan; and arbitrary (even nonsensical) inputs, checking that nothing panics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::intent::Intent;
use super::tests::{World, spec};
use super::*;
use crate::api::argo::rollout::{PauseCondition, PauseReason, RolloutStatus};

fn step(router: bool) -> impl Strategy<Value = Value> {
    let common = prop_oneof![
        (0..=100i32).prop_map(|w| json!({"setWeight": w})),
        Just(json!({"pause": {}})),
        (0..120i32).prop_map(|d| json!({"pause": {"duration": d}})),
        Just(json!({"analysis": {"templates": [{"templateName": "t"}]}})),
    ];
    if router {
        prop_oneof![
            4 => common,
            1 => (0..6i32).prop_map(|r| json!({"setCanaryScale": {"replicas": r}})),
            1 => (0..=100i32).prop_map(|w| json!({"setCanaryScale": {"weight": w}})),
            1 => Just(json!({"setCanaryScale": {"matchTrafficWeight": true}})),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

fn int_or_percent() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (0..4i32).prop_map(|n| json!(n)),
        (0..=60i32).prop_map(|p| json!(format!("{p}%")))
    ]
}

fn rollout_spec() -> impl Strategy<Value = crate::api::argo::rollout::RolloutSpec> {
    (
        any::<bool>(),
        0..12i32,
        any::<bool>(),
        any::<bool>(),
        int_or_percent(),
        int_or_percent(),
    )
        .prop_flat_map(
            |(router, replicas, background, dynamic, surge, unavailable)| {
                (
                    proptest::collection::vec(step(router), 0..6),
                    Just((router, replicas, background, dynamic, surge, unavailable)),
                )
            },
        )
        .prop_map(
            |(steps, (router, replicas, background, dynamic, surge, unavailable))| {
                let mut canary = json!({"steps": steps});
                if !surge.is_null() {
                    canary["maxSurge"] = surge;
                }
                if !unavailable.is_null() {
                    canary["maxUnavailable"] = unavailable;
                }
                if background {
                    canary["analysis"] = json!({"templates": [{"templateName": "bg"}]});
                }
                if router {
                    canary["canaryService"] = json!("demo-canary");
                    canary["stableService"] = json!("demo-stable");
                    canary["trafficRouting"] =
                        json!({"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "r"}}});
                    if dynamic {
                        canary["dynamicStableScale"] = json!(true);
                    }
                }
                spec(replicas, canary)
            },
        )
}

#[derive(Clone, Debug)]
enum Event {
    Tick,
    Advance(i64),
    Intent(Intent),
    Verdict(AnalysisPhase),
    PodsReady(bool),
    RouterVerifies(bool),
    Scale(i32),
    NewImage(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Tick),
        2 => (1..200i64).prop_map(Event::Advance),
        2 => prop_oneof![
            Just(Intent::Promote), Just(Intent::SkipCurrentStep), Just(Intent::SkipAllSteps),
            Just(Intent::PromoteFull), Just(Intent::Abort), Just(Intent::Retry), Just(Intent::Pause),
            Just(Intent::Resume),
        ].prop_map(Event::Intent),
        2 => prop_oneof![
            Just(AnalysisPhase::Successful), Just(AnalysisPhase::Failed), Just(AnalysisPhase::Error),
            Just(AnalysisPhase::Inconclusive), Just(AnalysisPhase::Running),
        ].prop_map(Event::Verdict),
        1 => any::<bool>().prop_map(Event::PodsReady),
        1 => any::<bool>().prop_map(Event::RouterVerifies),
        1 => (0..12i32).prop_map(Event::Scale),
        1 => (2..5u8).prop_map(Event::NewImage),
    ]
}

/// Check every invariant on one plan made from `status` and the world's observations.
fn check_plan(world: &World, before: &RolloutStatus, plan: &Plan) -> Result<(), TestCaseError> {
    let max = world
        .spec
        .strategy
        .canary
        .as_ref()
        .unwrap()
        .max_traffic_weight();
    for action in &plan.actions {
        match action {
            Action::SetWeight { canary_weight, .. } => {
                prop_assert!(
                    (0..=max).contains(canary_weight),
                    "weight {canary_weight} out of 0..={max}"
                );
                // After an abort, traffic only ever moves to stable: at once, or with
                // dynamicStableScale as the stable's pods come back (never back to the canary).
                if plan.status.abort && plan.status.stable_rs != plan.status.current_pod_hash {
                    let dynamic = world
                        .spec
                        .strategy
                        .canary
                        .as_ref()
                        .unwrap()
                        .dynamic_stable_scale();
                    let before_weight = world
                        .observed
                        .traffic
                        .as_ref()
                        .map(|t| t.canary_weight)
                        .or(before.canary.weights.as_ref().map(|w| w.canary.weight))
                        .unwrap_or(0);
                    let limit = if dynamic { before_weight } else { 0 };
                    prop_assert!(
                        *canary_weight <= limit,
                        "an aborted rollout moves traffic only towards stable: {} > {}",
                        canary_weight,
                        limit
                    );
                }
                // A failed or errored analysis never raises the canary weight.
                let failed = world.observed.analysis_runs.iter().any(|r| {
                    matches!(r.phase, AnalysisPhase::Failed | AnalysisPhase::Error)
                        && [
                            &before.canary.current_step_analysis_run_status,
                            &before.canary.current_background_analysis_run_status,
                        ]
                        .iter()
                        .any(|s| s.as_ref().is_some_and(|s| s.name == r.name))
                });
                let observed = world
                    .observed
                    .traffic
                    .as_ref()
                    .map_or(0, |t| t.canary_weight);
                // Unless the user retries: the failed run already aborted the update, and a retry
                // replaces it with a new run (with no steps left, the canary gets full weight).
                let retried = !before.abort && before.aborted_at.is_some();
                // Or a new template: the failed run judged another revision, and the new one
                // starts its own update (as Argo does).
                let new_revision = plan.status.current_pod_hash != before.current_pod_hash;
                if failed
                    && !retried
                    && !new_revision
                    && before.stable_rs != before.current_pod_hash
                {
                    prop_assert!(
                        *canary_weight <= observed,
                        "weight raised from {observed} to {canary_weight} on a failed analysis"
                    );
                }
            }
            Action::CreateReplicaSet { replicas, .. }
            | Action::ScaleReplicaSet { replicas, .. } => {
                prop_assert!(*replicas >= 0);
            }
            _ => {}
        }
    }
    let canary = world.spec.strategy.canary.as_ref().unwrap();
    // With dynamicStableScale the weight steps down as the stable comes back (checked above).
    if plan.status.abort
        && plan.status.stable_rs != plan.status.current_pod_hash
        && canary.traffic_routing.is_some()
        && !canary.dynamic_stable_scale()
    {
        let routed_to_stable = world
            .observed
            .traffic
            .as_ref()
            .is_some_and(|t| t.verified && t.canary_weight == 0);
        let sets_zero = plan.actions.iter().any(|a| {
            matches!(
                a,
                Action::SetWeight {
                    canary_weight: 0,
                    ..
                }
            )
        });
        prop_assert!(
            routed_to_stable || sets_zero,
            "the plan after an abort must route 100% to stable"
        );
    }
    if let Some(weights) = &plan.status.canary.weights {
        prop_assert_eq!(weights.canary.weight + weights.stable.weight, max);
        prop_assert!((0..=max).contains(&weights.canary.weight));
    }
    // Idempotent: planning again on its own result with the same observations changes nothing.
    let again = plan_for(world, &plan.status);
    prop_assert_eq!(&again.status, &plan.status, "status is a fixpoint");
    // Only the Events describing an action repeated on the same (stale) observations come
    // again; the controller plans from what it wrote, so it never sees those twice.
    prop_assert!(
        again.actions.iter().all(|a| match a {
            Action::Event(e) => {
                matches!(e.reason, "NewReplicaSetCreated" | "ScalingReplicaSet")
                    && plan.actions.contains(a)
            }
            _ => true,
        }),
        "no repeated events: {:?}",
        again.actions
    );
    for action in &again.actions {
        prop_assert!(
            plan.actions.contains(action),
            "new action {action:?} not in {:?}",
            plan.actions
        );
    }
    Ok(())
}

fn plan_for(world: &World, status: &RolloutStatus) -> Plan {
    plan(Input {
        name: "demo",
        spec: &world.spec,
        status,
        observed: &world.observed,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_through_random_histories(spec in rollout_spec(), events in proptest::collection::vec(event(), 1..60)) {
        let mut world = World::new(spec);
        world.settle();
        world.set_image("demo:2");
        for event in events {
            match event {
                Event::Tick => {
                    let before = world.status.clone();
                    let plan = plan_for(&world, &before);
                    check_plan(&world, &before, &plan)?;
                    world.tick();
                }
                Event::Advance(s) => world.advance(s),
                Event::Intent(i) => world.intent(i),
                Event::Verdict(phase) => {
                    if let Some(run) = world.observed.analysis_runs.last_mut() {
                        run.phase = phase;
                    }
                }
                Event::PodsReady(ready) => world.pods_ready = ready,
                Event::RouterVerifies(v) => world.router_verifies = v,
                Event::Scale(n) => {
                    world.spec.replicas = Some(n);
                    world.observed.generation += 1;
                }
                Event::NewImage(n) => world.set_image(&format!("demo:{n}")),
            }
        }
    }

    #[test]
    fn arbitrary_inputs_never_panic(
        spec in rollout_spec(),
        index in proptest::option::of(-5..20i32),
        abort in any::<bool>(),
        promote_full in any::<bool>(),
        controller_pause in any::<bool>(),
        pause in proptest::option::of(0..4u8),
        hashes in proptest::collection::vec("[a-c]{0,2}", 2),
        sets in proptest::collection::vec((-3..15i32, -3..15i32, -3..15i32, 0..5i64, any::<bool>(), "[a-c]{0,2}"), 0..4),
        traffic in proptest::option::of((-50..1200i32, any::<bool>())),
        runs in proptest::collection::vec(("demo-[a-c]{0,2}-[0-3](-[0-3])?(\\.[0-9])?", 0..6u8), 0..4),
        now in 0..2_000_000_000i64,
    ) {
        let phases = [AnalysisPhase::Pending, AnalysisPhase::Running, AnalysisPhase::Successful, AnalysisPhase::Failed, AnalysisPhase::Error, AnalysisPhase::Inconclusive];
        let reasons = [PauseReason::CanaryPauseStep, PauseReason::InconclusiveAnalysisRun, PauseReason::BlueGreenPause, PauseReason::InconclusiveExperiment];
        let when = Timestamp::from_second(now).unwrap();
        let status = RolloutStatus {
            current_step_index: index,
            abort,
            promote_full,
            controller_pause,
            aborted_at: abort.then_some(Time(when)),
            pause_conditions: pause.map(|p| vec![PauseCondition { reason: reasons[p as usize], start_time: Time(when) }]).unwrap_or_default(),
            current_pod_hash: hashes[0].clone(),
            stable_rs: hashes[1].clone(),
            ..Default::default()
        };
        let mut observed = Observations::at(when);
        observed.replica_sets = sets.into_iter().map(|(r, s, a, rev, m, h)| ReplicaSetObservation {
            pod_template_hash: h, replicas: r, status_replicas: s, ready_replicas: a, available_replicas: a,
            revision: rev, scale_down_deadline: None, ephemeral_metadata: None, matches_current_template: m,
        }).collect();
        observed.traffic = traffic.map(|(w, v)| TrafficObservation { canary_weight: w, verified: v, additional: Default::default() });
        observed.analysis_runs = runs.into_iter().map(|(name, p)| AnalysisRunObservation { name, phase: phases[p as usize], message: String::new() }).collect();
        let plan = plan(Input { name: "demo", spec: &spec, status: &status, observed: &observed });
        prop_assert!(plan.status.phase.is_some());
        let _ = IntOrString::Int(0);
    }
}
