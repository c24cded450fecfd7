//! Table tests for the engine: scenarios driven tick by tick through a small simulated world that
//! executes each plan's actions the way the controller and the cluster would. Every tick also
//! checks that the phase agrees with the health Argo CD computes from the same status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::health::{Health, argocd_health, health_of_phase, reason};
use super::intent::{self, Intent};
use super::sim::Simulation;
use super::*;
use crate::api::argo::rollout::{CanaryStep, PauseReason, RolloutPhase, RolloutSpec};

pub(super) fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_string(), "demo".to_string())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// A canary Rollout spec from JSON steps, with `replicas` pods and optional extra canary fields.
pub(super) fn spec(replicas: i32, canary: serde_json::Value) -> RolloutSpec {
    let mut spec: RolloutSpec = serde_json::from_value(json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "demo"}},
        "strategy": {"canary": canary},
    }))
    .expect("test spec parses");
    spec.template = Some(template("demo:1"));
    spec
}

fn routed(replicas: i32, steps: serde_json::Value) -> RolloutSpec {
    spec(
        replicas,
        json!({
            "canaryService": "demo-canary",
            "stableService": "demo-stable",
            "trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "demo"}}},
            "steps": steps,
        }),
    )
}

/// The simulation, with every tick also checking that the phase agrees with Argo CD's health.
pub(super) struct World(Simulation);

impl std::ops::Deref for World {
    type Target = Simulation;
    fn deref(&self) -> &Simulation {
        &self.0
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Simulation {
        &mut self.0
    }
}

impl World {
    pub fn new(spec: RolloutSpec) -> Self {
        let mut sim = Simulation::new("demo", spec);
        sim.on_plan = Some(phase_agrees_with_argocd);
        Self(sim)
    }
}

fn phase_agrees_with_argocd(sim: &Simulation, plan: &Plan) {
    assert_eq!(
        health_of_phase(plan.status.phase.unwrap()),
        argocd_health(&sim.spec, &plan.status, sim.observed.generation),
        "phase {:?} ({}) disagrees with Argo CD's health",
        plan.status.phase,
        plan.status.message
    );
}

fn deployed(spec: RolloutSpec) -> (World, String) {
    let mut world = World::new(spec);
    world.settle();
    let stable = world.status.stable_rs.clone();
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    (world, stable)
}

// === first deploy, steps and promotion ===

#[test]
fn first_deploy_skips_the_steps() {
    let mut world = World::new(spec(
        4,
        json!({"steps": [{"setWeight": 20}, {"pause": {}}]}),
    ));
    let first = world.tick();
    let (events, actions): (Vec<&Action>, Vec<&Action>) = first
        .actions
        .iter()
        .partition(|a| matches!(a, Action::Event(_)));
    assert!(matches!(
        actions[..],
        [Action::CreateReplicaSet {
            replicas: 4,
            revision: 1,
            ..
        }]
    ));
    // Argo's Events for a canary's first revision, in Argo's order.
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "RolloutUpdated",
            "NewReplicaSetCreated",
            "RolloutNotCompleted",
            "ScalingReplicaSet",
            "RolloutCompleted"
        ]
    );
    world.settle();
    assert_eq!(world.status.current_step_index, Some(2));
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(world.health(), Health::Healthy);
    assert_eq!(world.status.available_replicas, 4);
    assert!(
        world
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Completed" && c.status == "True")
    );
}

#[test]
fn basic_canary_walks_every_step_and_promotes() {
    let steps = json!([{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "10s"}}]);
    let (mut world, stable) = deployed(spec(10, json!({"steps": steps})));
    world.set_image("demo:2");
    let plan = world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_ne!(canary, stable);
    // setWeight 20 done, now paused indefinitely at step 2 with 2 canary / 8 stable pods.
    assert_eq!(world.status.current_step_index, Some(1));
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (2, 8));
    assert_eq!(
        world.status.pause_conditions[0].reason,
        PauseReason::CanaryPauseStep
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(world.health(), Health::Suspended);
    assert_eq!(
        plan.requeue_after, None,
        "an indefinite pause needs no timer"
    );

    world.intent(Intent::Promote);
    world.settle();
    // setWeight 50 done, timed pause started.
    assert_eq!(world.status.current_step_index, Some(3));
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (5, 5));
    let plan = world.tick();
    assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(10)));

    world.advance(9);
    world.settle();
    assert_eq!(
        world.status.current_step_index,
        Some(3),
        "not before the pause ends"
    );
    world.advance(1);
    world.settle();
    assert_eq!(world.status.stable_rs, canary);
    assert_eq!(world.status.current_step_index, Some(4));
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (10, 0));
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert!(world.has_event(reason::ROLLOUT_COMPLETED));
    let completed = world
        .events
        .iter()
        .filter(|e| e.reason == reason::ROLLOUT_STEP_COMPLETED)
        .count();
    assert_eq!(completed, 4, "one event per step");
}

#[test]
fn replica_ratio_respects_surge_and_unavailable() {
    let canary =
        json!({"maxSurge": 1, "maxUnavailable": 0, "steps": [{"setWeight": 50}, {"pause": {}}]});
    let (mut world, stable) = deployed(spec(4, canary));
    world.set_image("demo:2");
    let hash = |w: &World| w.status.current_pod_hash.clone();
    // Never more than 5 pods, never fewer than 4 available, on every tick.
    for _ in 0..20 {
        world.tick();
        let c = hash(&world);
        assert!(world.replicas(&c) + world.replicas(&stable) <= 5);
        let available: i32 = world
            .observed
            .replica_sets
            .iter()
            .map(|rs| rs.available_replicas)
            .sum();
        assert!(available >= 4);
    }
    let c = hash(&world);
    assert_eq!((world.replicas(&c), world.replicas(&stable)), (2, 2));
    assert_eq!(world.status.current_step_index, Some(1));
}

#[test]
fn a_canary_without_steps_is_a_rolling_update() {
    let (mut world, stable) = deployed(spec(3, json!({})));
    world.set_image("demo:2");
    world.settle();
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
    assert_ne!(world.status.stable_rs, stable);
    assert_eq!(world.replicas(&stable), 0);
}

// === intents ===

#[test]
fn abort_returns_everything_to_stable_and_retry_starts_over() {
    let (mut world, stable) = deployed(spec(
        10,
        json!({"steps": [{"setWeight": 30}, {"pause": {}}]}),
    ));
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(world.replicas(&canary), 3);

    world.intent(Intent::Abort);
    world.settle();
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (0, 10));
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    assert_eq!(world.health(), Health::Degraded);
    assert!(
        world
            .status
            .message
            .starts_with("RolloutAborted: Rollout aborted update to revision 2")
    );
    assert_eq!(world.status.stable_rs, stable);
    assert!(world.status.aborted_at.is_some());
    assert!(world.status.pause_conditions.is_empty());

    world.intent(Intent::Retry);
    world.settle();
    // As Argo: a retry shows as the Progressing reason, not as an Event.
    assert!(!world.has_event(reason::ROLLOUT_RETRY));
    assert_eq!(world.status.aborted_at, None);
    assert_eq!(world.replicas(&canary), 3);
    assert_eq!(world.status.current_step_index, Some(1));
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));

    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.stable_rs, canary);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn a_replica_set_that_is_current_again_is_numbered_after_the_others() {
    let (mut world, first) = deployed(spec(2, json!({})));
    world.set_image("demo:2");
    world.settle();
    world.set_image("demo:1");
    world.settle();
    assert_eq!(world.status.stable_rs, first);
    assert_eq!(world.rs(&first).unwrap().revision, 3);
}

#[test]
fn promote_full_clears_a_manual_abort_and_completes() {
    let (mut world, stable) = deployed(spec(
        4,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    ));
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    world.intent(Intent::Abort);
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    world.intent(Intent::PromoteFull);
    world.settle();
    assert!(!world.status.abort);
    assert_eq!(world.status.stable_rs, canary);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(world.replicas(&stable), 0);
    assert!(world.has_event(reason::ROLLOUT_PROMOTED_FULL));
}

#[test]
fn promote_full_skips_remaining_steps_and_analysis() {
    let steps = json!([{"setWeight": 10}, {"pause": {}}, {"analysis": {"templates": [{"templateName": "t"}]}}, {"setWeight": 50}]);
    let (mut world, _) = deployed(spec(5, json!({"steps": steps})));
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::PromoteFull);
    world.settle();
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
    assert!(
        !world.status.promote_full,
        "promoteFull is reset once promoted"
    );
    assert!(
        world.observed.analysis_runs.is_empty(),
        "no analysis for a full promotion"
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn skip_current_step_moves_on_without_waiting() {
    let (mut world, _) = deployed(spec(
        4,
        json!({"steps": [{"setWeight": 25}, {"pause": {"duration": "1h"}}, {"setWeight": 75}, {"pause": {}}]}),
    ));
    world.set_image("demo:2");
    world.settle();
    assert_eq!(world.status.current_step_index, Some(1));
    world.intent(Intent::SkipCurrentStep);
    world.settle();
    assert_eq!(world.status.current_step_index, Some(3));
    assert_eq!(world.replicas(&world.status.current_pod_hash.clone()), 3);
}

#[test]
fn spec_paused_holds_the_step_and_scaling_still_works() {
    let (mut world, stable) = deployed(spec(
        10,
        json!({"steps": [{"setWeight": 20}, {"setWeight": 60}]}),
    ));
    world.intent(Intent::Pause);
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(world.status.current_step_index, Some(0));
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(world.health(), Health::Suspended);
    // The first step's replicas are still reached; scaling the rollout is followed while paused.
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (2, 8));
    world.spec.replicas = Some(20);
    world.observed.generation += 1;
    world.settle();
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (4, 16));
    world.intent(Intent::Resume);
    world.settle();
    assert_eq!(world.status.stable_rs, canary);
    assert_eq!(world.replicas(&canary), 20);
}

#[test]
fn intent_patches_match_the_kubectl_plugin() {
    let mut world = World::new(spec(
        1,
        json!({"steps": [{"setWeight": 20}, {"pause": {}}]}),
    ));
    world.status.current_step_index = Some(1);
    world.status.current_pod_hash = "new".into();
    world.status.stable_rs = "old".into();
    let rollout = crate::api::argo::Rollout {
        metadata: Default::default(),
        spec: world.spec.clone(),
        status: Some(world.status.clone()),
    };
    assert_eq!(
        intent::patches(Intent::Abort, &rollout),
        (None, Some(json!({"status": {"abort": true}})))
    );
    assert_eq!(
        intent::patches(Intent::Retry, &rollout),
        (None, Some(json!({"status": {"abort": false}})))
    );
    assert_eq!(
        intent::patches(Intent::PromoteFull, &rollout),
        (None, Some(json!({"status": {"promoteFull": true}})))
    );
    assert_eq!(
        intent::patches(Intent::Pause, &rollout),
        (Some(json!({"spec": {"paused": true}})), None)
    );
    assert_eq!(
        intent::patches(Intent::Promote, &rollout),
        (
            None,
            Some(
                json!({"status": {"pauseConditions": null, "controllerPause": false, "currentStepIndex": 2}})
            )
        )
    );
    assert_eq!(
        intent::patches(Intent::SkipAllSteps, &rollout),
        (None, Some(json!({"status": {"currentStepIndex": 2}})))
    );
}

// === template changes ===

#[test]
fn an_update_during_a_pause_restarts_at_step_zero() {
    let (mut world, stable) = deployed(spec(
        10,
        json!({"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 40}, {"pause": {}}]}),
    ));
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::Promote);
    world.settle();
    let v2 = world.status.current_pod_hash.clone();
    assert_eq!(world.status.current_step_index, Some(3));
    world.set_image("demo:3");
    world.settle();
    let v3 = world.status.current_pod_hash.clone();
    assert_ne!(v3, v2);
    assert_eq!(world.status.current_step_index, Some(1));
    assert_eq!(
        world.replicas(&v2),
        0,
        "the superseded canary is scaled down"
    );
    assert_eq!((world.replicas(&v3), world.replicas(&stable)), (2, 8));
    assert!(
        world
            .events
            .iter()
            .any(|e| e.message == "Rollout updated to revision 3")
    );
}

#[test]
fn returning_to_the_stable_template_is_a_fast_rollback() {
    let (mut world, stable) = deployed(spec(
        4,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    ));
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    world.set_image("demo:1");
    world.settle();
    assert_eq!(world.status.current_pod_hash, stable);
    assert_eq!(
        world.status.current_step_index,
        Some(2),
        "no steps for a rollback to stable"
    );
    assert_eq!((world.replicas(&stable), world.replicas(&canary)), (4, 0));
    assert!(world.has_event(reason::FAST_ROLLBACK));
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn editing_steps_restarts_the_update() {
    let (mut world, _) = deployed(spec(
        4,
        json!({"steps": [{"setWeight": 25}, {"pause": {}}]}),
    ));
    world.set_image("demo:2");
    world.settle();
    assert_eq!(world.status.current_step_index, Some(1));
    world.spec.strategy.canary.as_mut().unwrap().steps = Some(
        serde_json::from_value(json!([{"setWeight": 50}, {"pause": {}}, {"setWeight": 75}]))
            .unwrap(),
    );
    world.observed.generation += 1;
    world.settle();
    assert_eq!(world.status.current_step_index, Some(1));
    assert_eq!(world.replicas(&world.status.current_pod_hash.clone()), 2);
}

#[test]
fn an_existing_replica_set_with_the_same_template_is_adopted() {
    // A Rollout taken over from Argo: its ReplicaSet has Argo's hash, not ours.
    let mut world = World::new(spec(3, json!({"steps": [{"setWeight": 50}]})));
    world.observed.replica_sets.push(ReplicaSetObservation {
        pod_template_hash: "argohash".into(),
        replicas: 3,
        status_replicas: 3,
        ready_replicas: 3,
        available_replicas: 3,
        revision: 4,
        scale_down_deadline: None,
        ephemeral_metadata: None,
        matches_current_template: true,
    });
    world.status.current_pod_hash = "argohash".into();
    world.status.stable_rs = "argohash".into();
    world.status.current_step_hash =
        hash::step_hash(world.spec.strategy.canary.as_ref().unwrap().steps.as_ref());
    let plan = world.settle();
    assert_eq!(world.status.current_pod_hash, "argohash");
    assert!(
        plan.actions.iter().all(|a| matches!(a, Action::Event(_))),
        "{:?}",
        plan.actions
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

// === analysis ===

fn with_analysis_step() -> RolloutSpec {
    spec(
        4,
        json!({"steps": [
            {"setWeight": 25},
            {"analysis": {"templates": [{"templateName": "success-rate"}],
                          "args": [{"name": "hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]}},
            {"setWeight": 75}
        ]}),
    )
}

#[test]
fn a_successful_analysis_step_advances() {
    let (mut world, _) = deployed(with_analysis_step());
    world.set_image("demo:2");
    let plan = world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(world.status.current_step_index, Some(1));
    let run = &world.observed.analysis_runs[0];
    assert_eq!(run.name, format!("demo-{canary}-2-1"));
    assert_eq!(
        world
            .status
            .canary
            .current_step_analysis_run_status
            .as_ref()
            .unwrap()
            .status,
        "Running"
    );
    assert!(
        plan.actions
            .iter()
            .all(|a| !matches!(a, Action::CreateAnalysisRun(_))),
        "created once"
    );
    world.set_run_phase("-2-1", AnalysisPhase::Successful, "");
    world.settle();
    assert_eq!(world.status.stable_rs, canary);
}

#[test]
fn analysis_run_requests_resolve_pod_template_hash_args() {
    let (mut world, _) = deployed(with_analysis_step());
    world.set_image("demo:2");
    let mut request = None;
    for _ in 0..5 {
        let plan = world.tick();
        request = request.or(plan.actions.into_iter().find_map(|a| match a {
            Action::CreateAnalysisRun(r) => Some(r),
            _ => None,
        }));
    }
    let request = request.expect("an AnalysisRun is requested");
    assert_eq!(request.templates, vec![("success-rate".to_string(), false)]);
    assert_eq!(
        request.args[0].value.as_deref(),
        Some(world.status.current_pod_hash.as_str())
    );
    assert_eq!(request.args[0].value_from, None);
    assert_eq!(request.labels["rollout-type"], "Step");
    assert_eq!(request.labels["step-index"], "1");
}

#[test]
fn a_failed_analysis_aborts_and_degrades() {
    for phase in [AnalysisPhase::Failed, AnalysisPhase::Error] {
        let (mut world, stable) = deployed(with_analysis_step());
        world.set_image("demo:2");
        world.settle();
        let canary = world.status.current_pod_hash.clone();
        world.set_run_phase("-2-1", phase, "metric \"success-rate\" assessed Failed");
        world.settle();
        assert!(world.status.abort);
        assert_eq!((world.replicas(&canary), world.replicas(&stable)), (0, 4));
        assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
        assert!(
            world.status.message.contains("success-rate"),
            "{}",
            world.status.message
        );
        assert_eq!(world.status.stable_rs, stable);
        // The verdict wins over a later full promotion (Argo would clear the abort).
        world.intent(Intent::PromoteFull);
        world.settle();
        assert!(world.status.abort);
        assert_eq!(world.status.stable_rs, stable);
    }
}

#[test]
fn an_inconclusive_analysis_pauses_and_promote_continues() {
    let (mut world, _) = deployed(with_analysis_step());
    world.set_image("demo:2");
    world.settle();
    world.set_run_phase("-2-1", AnalysisPhase::Inconclusive, "no data");
    world.settle();
    assert_eq!(
        world.status.pause_conditions[0].reason,
        PauseReason::InconclusiveAnalysisRun
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
}

#[test]
fn retry_after_a_failed_analysis_runs_a_fresh_analysis() {
    let (mut world, _) = deployed(with_analysis_step());
    world.set_image("demo:2");
    world.settle();
    world.set_run_phase("-2-1", AnalysisPhase::Failed, "bad");
    world.settle();
    world.intent(Intent::Retry);
    world.settle();
    let names: Vec<_> = world
        .observed
        .analysis_runs
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[1].ends_with("-2-1.1"), "{names:?}");
    assert_eq!(world.status.current_step_index, Some(1));
    assert_eq!(world.status.phase, Some(RolloutPhase::Progressing));
}

#[test]
fn background_analysis_starts_at_its_step_and_aborts_on_failure() {
    let canary = json!({
        "analysis": {"templates": [{"templateName": "error-rate"}], "startingStep": 1},
        "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    });
    let (mut world, stable) = deployed(spec(4, canary));
    world.set_image("demo:2");
    world.tick();
    assert!(
        world.observed.analysis_runs.is_empty(),
        "not before startingStep"
    );
    world.settle();
    assert_eq!(world.observed.analysis_runs.len(), 1);
    assert!(
        world
            .status
            .canary
            .current_background_analysis_run_status
            .is_some()
    );
    world.set_run_phase("demo-", AnalysisPhase::Failed, "error rate 12%");
    world.settle();
    assert!(world.status.abort);
    assert_eq!(world.replicas(&stable), 4);
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
}

#[test]
fn background_analysis_is_terminated_when_the_rollout_completes() {
    let canary = json!({"analysis": {"templates": [{"templateName": "error-rate"}]}, "steps": [{"setWeight": 50}, {"pause": {}}]});
    let (mut world, _) = deployed(spec(2, canary));
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
    assert_eq!(
        world.observed.analysis_runs[0].phase,
        AnalysisPhase::Successful,
        "terminated"
    );
}

// === traffic routing ===

#[test]
fn routed_canary_sets_weights_and_waits_for_verification() {
    let (mut world, stable) = deployed(routed(
        5,
        json!([{"setWeight": 20}, {"setWeight": 60}, {"pause": {}}]),
    ));
    assert_eq!(
        world.observed.services["demo-stable"]
            .selector_hash
            .as_deref(),
        Some(stable.as_str())
    );
    world.router_verifies = false;
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(
        world.status.current_step_index,
        Some(0),
        "no step advances before the router confirms"
    );
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 20);
    assert_eq!(
        world.last.as_ref().unwrap().requeue_after,
        Some(std::time::Duration::from_secs(10))
    );
    world.router_verifies = true;
    world.settle();
    assert_eq!(world.status.current_step_index, Some(2));
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 60);
    // Stable stays fully scaled; the canary follows the weight.
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (3, 5));
    let weights = world.status.canary.weights.clone().unwrap();
    assert_eq!((weights.canary.weight, weights.stable.weight), (60, 40));
    assert_eq!(weights.canary.pod_template_hash, canary);
}

#[test]
fn routed_promotion_switches_the_stable_service_before_moving_traffic_back() {
    let (mut world, stable) = deployed(routed(3, json!([{"setWeight": 50}, {"pause": {}}])));
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    world.intent(Intent::Promote);

    // Record every write, and check that no weight ever points at a Service without endpoints.
    let mut writes = Vec::new();
    for _ in 0..20 {
        let plan = world.tick();
        for action in &plan.actions {
            match action {
                Action::SetWeight { canary_weight, .. } => {
                    writes.push(format!("weight {canary_weight}"))
                }
                Action::SetServiceSelector {
                    service,
                    pod_template_hash,
                } => writes.push(format!(
                    "{service} -> {}",
                    if *pod_template_hash == canary {
                        "new"
                    } else {
                        "old"
                    }
                )),
                _ => {}
            }
        }
        if let Some(t) = world.observed.traffic.clone() {
            let canary_svc = &world.observed.services["demo-canary"];
            let stable_svc = &world.observed.services["demo-stable"];
            if t.canary_weight > 0 {
                assert!(canary_svc.ready_endpoints > 0);
            }
            if t.canary_weight < 100 {
                assert!(stable_svc.ready_endpoints > 0);
            }
        }
    }
    assert_eq!(writes, vec!["weight 100", "demo-stable -> new", "weight 0"]);
    assert_eq!(world.status.stable_rs, canary);
    // The old ReplicaSet gets a scale-down deadline and goes to zero after 30 s.
    let deadline = world
        .rs(&stable)
        .unwrap()
        .scale_down_deadline
        .expect("deadline set");
    assert_eq!(deadline.as_second() - world.observed.now.as_second(), 30);
    assert_eq!(world.replicas(&stable), 3);
    world.advance(30);
    world.settle();
    assert_eq!(world.replicas(&stable), 0);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn a_routed_promotion_is_healthy_at_once_while_the_old_pods_wait_for_their_deadline() {
    let (mut world, stable) = deployed(routed(2, json!([{"setWeight": 50}, {"pause": {}}])));
    world.spec.progress_deadline_seconds = Some(5);
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::Promote);
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(world.status.stable_rs, canary);
    assert_eq!(world.replicas(&stable), 2, "kept for scaleDownDelaySeconds");
    let deadline = world.rs(&stable).unwrap().scale_down_deadline;
    assert_eq!(
        deadline.map(|d| d.as_second() - world.observed.now.as_second()),
        Some(30)
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    let completed = |w: &World, type_: &str| {
        w.status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    assert!(completed(&world, reason::COMPLETED));
    assert!(completed(&world, reason::HEALTHY));
    // Past progressDeadlineSeconds while the old pods wait: still Healthy, not timed out.
    world.advance(10);
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(world.replicas(&stable), 2);
    world.advance(20);
    world.settle();
    assert_eq!(world.replicas(&stable), 0);
    assert_eq!(world.rs(&stable).unwrap().scale_down_deadline, None);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn scale_down_delay_revision_limit_keeps_only_the_newest_old_replica_sets() {
    let mut spec = routed(1, json!([]));
    spec.strategy
        .canary
        .as_mut()
        .unwrap()
        .scale_down_delay_revision_limit = Some(1);
    let (mut world, first) = deployed(spec);
    world.set_image("demo:2");
    world.settle();
    let second = world.status.stable_rs.clone();
    assert_ne!(first, second);
    assert_eq!(world.replicas(&first), 1);
    assert!(world.rs(&first).unwrap().scale_down_deadline.is_some());
    world.set_image("demo:3");
    world.settle();
    assert_eq!(
        world.replicas(&first),
        0,
        "beyond scaleDownDelayRevisionLimit"
    );
    assert_eq!(world.rs(&first).unwrap().scale_down_deadline, None);
    assert_eq!(world.replicas(&second), 1);
    assert!(world.rs(&second).unwrap().scale_down_deadline.is_some());
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn routed_abort_moves_traffic_at_once_and_keeps_canary_pods_for_the_delay() {
    let (mut world, stable) = deployed(routed(4, json!([{"setWeight": 50}, {"pause": {}}])));
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    world.intent(Intent::Abort);
    let plan = world.tick();
    assert!(plan.actions.contains(&Action::SetWeight {
        canary_weight: 0,
        canary_hash: canary.clone(),
        stable_hash: stable.clone(),
        additional: Vec::new(),
    }));
    world.settle();
    assert_eq!(
        world.replicas(&canary),
        2,
        "kept for abortScaleDownDelaySeconds"
    );
    assert_eq!(
        world
            .rs(&canary)
            .unwrap()
            .scale_down_deadline
            .map(|d| d.as_second() - world.observed.now.as_second()),
        Some(30),
        "the canary carries Argo's scale-down-deadline"
    );
    assert_eq!(
        world
            .last
            .as_ref()
            .unwrap()
            .requeue_after
            .map(|d| d.as_secs() <= 30),
        Some(true)
    );
    world.advance(30);
    world.settle();
    assert_eq!(world.replicas(&canary), 0);
    assert_eq!(
        world.observed.services["demo-canary"]
            .selector_hash
            .as_deref(),
        Some(stable.as_str())
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
}

#[test]
fn traffic_never_goes_to_a_canary_without_ready_pods() {
    let (mut world, _) = deployed(routed(4, json!([{"setWeight": 50}, {"pause": {}}])));
    world.pods_ready = false;
    world.set_image("demo:2");
    world.settle();
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 0);
    assert_eq!(world.status.current_step_index, Some(0));
}

#[test]
fn set_canary_scale_pins_the_canary_replicas() {
    let steps = json!([{"setCanaryScale": {"replicas": 1}}, {"setWeight": 10}, {"pause": {}},
        {"setCanaryScale": {"matchTrafficWeight": true}}, {"setWeight": 50}, {"pause": {}}]);
    let (mut world, stable) = deployed(routed(10, steps));
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(world.status.current_step_index, Some(2));
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (1, 10));
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.current_step_index, Some(5));
    assert_eq!(world.replicas(&canary), 5);
}

#[test]
fn header_route_steps_are_requested_and_removed_at_the_end() {
    let mut s = routed(
        2,
        json!([{"setHeaderRoute": {"name": "h", "match": [{"headerName": "x-canary", "headerValue": {"exact": "1"}}]}}, {"setWeight": 10}, {"pause": {}}]),
    );
    s.strategy
        .canary
        .as_mut()
        .unwrap()
        .traffic_routing
        .as_mut()
        .unwrap()
        .managed_routes = Some(vec![crate::api::argo::rollout::ManagedRoute {
        name: "h".into(),
    }]);
    let (mut world, _) = deployed(s);
    world.set_image("demo:2");
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert!(actions.contains(&Action::SetHeaderRoute { step_index: 0 }));
    world.intent(Intent::Promote);
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert!(actions.contains(&Action::RemoveManagedRoutes));
}

#[test]
fn a_header_route_beside_set_canary_scale_is_requested_and_the_scale_ends_the_step() {
    // Argo's examples/apisix/rollout.yaml: setCanaryScale and setHeaderRoute in one step.
    let mut s = routed(
        4,
        json!([{"setCanaryScale": {"replicas": 1},
                "setHeaderRoute": {"name": "h", "match": [{"headerName": "trace", "headerValue": {"exact": "debug"}}]}},
               {"pause": {}}]),
    );
    s.strategy
        .canary
        .as_mut()
        .unwrap()
        .traffic_routing
        .as_mut()
        .unwrap()
        .managed_routes = Some(vec![crate::api::argo::rollout::ManagedRoute {
        name: "h".into(),
    }]);
    let (mut world, _) = deployed(s);
    world.set_image("demo:2");
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert!(actions.contains(&Action::SetHeaderRoute { step_index: 0 }));
    assert_eq!(world.status.current_step_index, Some(1));
    let canary = world.status.current_pod_hash.clone();
    assert_eq!(world.replicas(&canary), 1);
}

#[test]
fn route_objects_are_released_once_traffic_is_settled_on_stable() {
    let (mut world, _) = deployed(routed(2, json!([{"setWeight": 50}, {"pause": {}}])));
    world.set_image("demo:2");
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert!(
        !actions.contains(&Action::ReleaseTraffic),
        "mid-update (canary weight 50) nothing is released: {actions:?}"
    );
    world.intent(Intent::Promote);
    let mut actions = Vec::new();
    for _ in 0..20 {
        actions.extend(world.tick().actions);
    }
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
    assert!(
        !actions.contains(&Action::ReleaseTraffic),
        "promoted, but the old stable pods are kept for scaleDownDelaySeconds: a released \
         route could reach them again: {actions:?}"
    );
    world.advance(31);
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert!(
        actions.contains(&Action::ReleaseTraffic),
        "promoted, weight back to 0, old pods gone: the routes go back to their owners: {actions:?}"
    );
}

#[test]
fn an_aborted_canary_keeps_its_routes_pinned_until_its_pods_are_gone() {
    let (mut world, stable) = deployed(routed(2, json!([{"setWeight": 50}, {"pause": {}}])));
    world.set_image("demo:2");
    for _ in 0..10 {
        world.tick();
    }
    let canary = world.status.current_pod_hash.clone();
    world.intent(Intent::Abort);
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert!(
        world.replicas(&canary) > 0,
        "kept for abortScaleDownDelaySeconds"
    );
    assert!(
        !actions.contains(&Action::ReleaseTraffic),
        "aborted canary pods still run: the routes stay pinned on stable: {actions:?}"
    );
    world.advance(31);
    let mut actions = Vec::new();
    for _ in 0..10 {
        actions.extend(world.tick().actions);
    }
    assert_eq!(world.replicas(&canary), 0);
    assert_eq!(world.status.stable_rs, stable);
    assert!(
        actions.contains(&Action::ReleaseTraffic),
        "canary pods gone: the routes go back to their owners: {actions:?}"
    );
}

// === deadlines, history, invalid specs ===

#[test]
fn progress_deadline_exceeded_degrades_and_can_abort() {
    for abort in [false, true] {
        let mut s = spec(2, json!({"steps": [{"setWeight": 50}, {"pause": {}}]}));
        s.progress_deadline_seconds = Some(60);
        s.progress_deadline_abort = Some(abort);
        let (mut world, stable) = deployed(s);
        world.pods_ready = false;
        world.set_image("demo:2");
        let plan = world.settle();
        assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(60)));
        assert_eq!(world.status.phase, Some(RolloutPhase::Progressing));
        world.advance(59);
        world.settle();
        assert_eq!(world.status.phase, Some(RolloutPhase::Progressing));
        world.advance(1);
        world.settle();
        assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
        assert!(world.has_event(reason::PROGRESS_DEADLINE_EXCEEDED));
        assert_eq!(world.status.abort, abort);
        if abort {
            assert_eq!(world.replicas(&world.status.current_pod_hash.clone()), 0);
            assert_eq!(world.replicas(&stable), 2);
        }
    }
}

#[test]
fn progress_is_not_timed_while_paused() {
    let mut s = spec(2, json!({"steps": [{"setWeight": 50}, {"pause": {}}]}));
    s.progress_deadline_seconds = Some(60);
    let (mut world, _) = deployed(s);
    world.set_image("demo:2");
    world.settle();
    world.advance(3600);
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn revision_history_limit_deletes_the_oldest_replica_sets() {
    let mut s = spec(1, json!({}));
    s.revision_history_limit = Some(1);
    let (mut world, first) = deployed(s);
    world.set_image("demo:2");
    world.settle();
    let second = world.status.stable_rs.clone();
    world.set_image("demo:3");
    world.settle();
    assert!(world.rs(&first).is_none(), "revision 1 deleted");
    assert!(world.rs(&second).is_some(), "revision 2 kept");
}

#[test]
fn invalid_specs_get_an_invalid_spec_condition_naming_the_field() {
    let cases = [
        (
            json!({"steps": [{"analysis": {"templates": []}}]}),
            "spec.strategy.canary.steps[0].analysis.templates",
        ),
        (
            json!({"steps": [{"setCanaryScale": {"replicas": 1}}]}),
            "spec.strategy.canary.steps[0].setCanaryScale",
        ),
        (
            json!({"steps": [{"setWeight": 120}]}),
            "spec.strategy.canary.steps[0].setWeight",
        ),
        (
            json!({"steps": [{"pause": {"duration": "soon"}}]}),
            "spec.strategy.canary.steps[0].pause.duration",
        ),
        (
            json!({"steps": [{"setWeight": 10, "pause": {}}]}),
            "spec.strategy.canary.steps[0]",
        ),
        (
            json!({"steps": [{"experiment": {"templates": [{"name": "c", "specRef": "canary", "weight": 5}]}}]}),
            "spec.strategy.canary.steps[0].experiment.templates[0].weight",
        ),
        (
            json!({"maxSurge": 0, "maxUnavailable": 0}),
            "spec.strategy.canary.maxUnavailable",
        ),
        (json!({"maxSurge": "lots"}), "spec.strategy.canary.maxSurge"),
        (
            json!({"scaleDownDelaySeconds": 5}),
            "spec.strategy.canary.scaleDownDelaySeconds",
        ),
        (
            json!({"analysis": {"templates": [{"templateName": "t"}], "startingStep": 4}}),
            "spec.strategy.canary.analysis.startingStep",
        ),
        (
            json!({"trafficRouting": {"nginx": {"stableIngress": "i"}}}),
            "spec.strategy.canary.stableService",
        ),
        (
            json!({"trafficRouting": {"ambassador": {"mappings": ["m"]}}, "canaryService": "c", "stableService": "s"}),
            "spec.strategy.canary.trafficRouting.ambassador",
        ),
        (
            json!({"trafficRouting": {"alb": {"ingress": "i", "servicePort": 80},
                                      "managedRoutes": [{"name": "m"}]},
                   "canaryService": "c", "stableService": "s",
                   "steps": [{"setMirrorRoute": {"name": "m"}}]}),
            "spec.strategy.canary.steps[0].setMirrorRoute",
        ),
        (
            json!({"trafficRouting": {"alb": {"ingress": "i", "servicePort": 80},
                                      "managedRoutes": [{"name": "h"}]},
                   "canaryService": "c", "stableService": "s",
                   "steps": [{"setHeaderRoute": {"name": "h", "match": [
                       {"headerName": "x", "headerValue": {"prefix": "a"}}]}}]}),
            "spec.strategy.canary.steps[0].setHeaderRoute.match[0].headerValue",
        ),
        (
            json!({"trafficRouting": {"alb": {"ingress": "i", "servicePort": 80}},
                   "pingPong": {"pingService": "ping", "pongService": "pong"}}),
            "spec.strategy.canary.trafficRouting.alb.rootService",
        ),
        (
            json!({"trafficRouting": {"alb": {"ingress": "i", "servicePort": 80, "rootService": "r"}},
                   "pingPong": {"pingService": "ping", "pongService": "ping"}}),
            "spec.strategy.canary.pingPong.pongService",
        ),
        (
            json!({"trafficRouting": {"istio": {"virtualService": {"name": "vs"}}},
                   "pingPong": {"pingService": "ping", "pongService": "pong"}}),
            "spec.strategy.canary.pingPong",
        ),
        (
            json!({"trafficRouting": {"nginx": {"stableIngress": "i"}},
                   "canaryService": "c", "stableService": "s",
                   "pingPong": {"pingService": "ping", "pongService": "pong"}}),
            "spec.strategy.canary.trafficRouting.nginx",
        ),
        (
            json!({"trafficRouting": {"istio": {"virtualService": {"name": "vs"}},
                                      "maxTrafficWeight": 1000},
                   "canaryService": "c", "stableService": "s"}),
            "spec.strategy.canary.trafficRouting.maxTrafficWeight",
        ),
    ];
    for (canary, field) in cases {
        let mut world = World::new(spec(2, canary.clone()));
        let plan = world.tick();
        let condition = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "InvalidSpec")
            .unwrap_or_else(|| panic!("{canary}"));
        assert!(
            condition.message.contains(field),
            "{canary}: {}",
            condition.message
        );
        assert!(
            plan.actions
                .iter()
                .all(|a| matches!(a, Action::Event(e) if e.warning && e.reason == "InvalidSpec")),
            "{canary}: no ReplicaSet is touched: {:?}",
            plan.actions
        );
        assert_eq!(plan.status.phase, Some(RolloutPhase::Degraded));
        assert_eq!(world.health(), Health::Degraded);
        let again = world.tick();
        assert!(again.actions.is_empty(), "the Event is not repeated");
    }
}

#[test]
fn routers_the_controller_cannot_build_are_an_invalid_spec() {
    let mut world = World::new(spec(2, json!({"steps": [{"setWeight": 50}]})));
    world.tick();
    world.spec.template = Some(template("app:2"));
    world.observed.traffic_config_error =
        Some("plugins: traffic router plugin 'x/y' is not supported".into());
    let plan = world.tick();
    let condition = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .expect("InvalidSpec");
    assert!(
        condition
            .message
            .contains("spec.strategy.canary.trafficRouting: plugins: traffic router plugin 'x/y'"),
        "{}",
        condition.message
    );
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::Event(e) if e.reason == "InvalidSpec")),
        "nothing is touched: {:?}",
        plan.actions
    );
    world.observed.traffic_config_error = None;
    let plan = world.tick();
    assert!(
        !plan
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "InvalidSpec"),
        "fixed routers clear it"
    );
}

#[test]
fn invalid_template_and_selector_are_reported() {
    let mut s = spec(1, json!({}));
    s.selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([("app".into(), "other".into())])),
        ..Default::default()
    });
    let plan = World::new(s).tick();
    assert!(
        plan.status
            .message
            .contains("spec.selector: selector does not match template labels"),
        "{}",
        plan.status.message
    );
    let mut s = spec(1, json!({}));
    s.template = None;
    assert!(
        World::new(s)
            .tick()
            .status
            .message
            .contains("spec.template")
    );
}

#[test]
fn a_fixed_spec_clears_invalid_spec() {
    let mut world = World::new(spec(1, json!({"steps": [{"setWeight": 120}]})));
    world.tick();
    world.spec.strategy.canary.as_mut().unwrap().steps = Some(vec![CanaryStep {
        set_weight: Some(20),
        ..Default::default()
    }]);
    world.observed.generation += 1;
    world.settle();
    assert!(
        world
            .status
            .conditions
            .iter()
            .all(|c| c.type_ != "InvalidSpec")
    );
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

#[test]
fn pause_duration_as_plain_integer_and_string() {
    for duration in [json!(30), json!("30"), json!("30s")] {
        let (mut world, _) = deployed(spec(
            2,
            json!({"steps": [{"setWeight": 50}, {"pause": {"duration": duration}}]}),
        ));
        world.set_image("demo:2");
        world.settle();
        world.advance(29);
        world.settle();
        assert_ne!(world.status.phase, Some(RolloutPhase::Healthy));
        world.advance(1);
        world.settle();
        assert_eq!(
            world.status.phase,
            Some(RolloutPhase::Healthy),
            "{duration}"
        );
    }
}

#[test]
fn max_traffic_weight_scales_weights() {
    let mut s = routed(4, json!([{"setWeight": 250}, {"pause": {}}]));
    s.strategy
        .canary
        .as_mut()
        .unwrap()
        .traffic_routing
        .as_mut()
        .unwrap()
        .max_traffic_weight = Some(1000);
    let (mut world, _) = deployed(s);
    world.set_image("demo:2");
    world.settle();
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 250);
    assert_eq!(
        world.replicas(&world.status.current_pod_hash.clone()),
        1,
        "25% of 4 pods"
    );
    let weights = world.status.canary.weights.clone().unwrap();
    assert_eq!(weights.stable.weight, 750);
}

#[test]
fn status_counts_and_selector_for_the_hpa() {
    let (world, _) = deployed(spec(3, json!({})));
    assert_eq!(world.status.hpa_replicas, 3);
    assert_eq!(world.status.selector, "app=demo");
    assert_eq!(world.status.observed_generation, "1");
    let _ = IntOrString::Int(0);
}

// === workloadRef ===

fn with_workload(scale_down: crate::api::argo::rollout::ScaleDown, replicas: i32) -> World {
    let mut world = World::new(spec(
        4,
        json!({"steps": [{"setWeight": 50}, {"pause": {}}]}),
    ));
    world.observed.workload = Some(WorkloadObservation {
        scale_down,
        replicas,
        generation: 1,
    });
    world
}

fn workload_replicas(world: &World) -> i32 {
    world.observed.workload.as_ref().unwrap().replicas
}

#[test]
fn workload_scale_down_never_leaves_the_deployment_alone() {
    let mut world = with_workload(crate::api::argo::rollout::ScaleDown::Never, 4);
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(workload_replicas(&world), 4);
}

#[test]
fn workload_scale_down_onsuccess_waits_for_a_healthy_rollout() {
    let mut world = with_workload(crate::api::argo::rollout::ScaleDown::OnSuccess, 4);
    world.pods_ready = false;
    world.settle();
    assert_eq!(workload_replicas(&world), 4, "not available yet: keep it");
    let hash = world.status.current_pod_hash.clone();
    for rs in &mut world.observed.replica_sets {
        if rs.pod_template_hash == hash {
            rs.ready_replicas = rs.replicas;
            rs.available_replicas = rs.replicas;
        }
    }
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(workload_replicas(&world), 0);
}

#[test]
fn workload_scale_down_progressively_follows_available_pods() {
    let mut world = with_workload(crate::api::argo::rollout::ScaleDown::Progressively, 4);
    world.pods_ready = false;
    world.settle();
    assert_eq!(workload_replicas(&world), 4);
    let hash = world.status.current_pod_hash.clone();
    let set_available = |world: &mut World, n: i32| {
        for rs in &mut world.observed.replica_sets {
            if rs.pod_template_hash == hash {
                rs.ready_replicas = n;
                rs.available_replicas = n;
            }
        }
    };
    set_available(&mut world, 1);
    world.settle();
    assert_eq!(workload_replicas(&world), 3, "one pod handed over");
    set_available(&mut world, 4);
    world.settle();
    assert_eq!(workload_replicas(&world), 0);
    set_available(&mut world, 2);
    world.settle();
    assert_eq!(
        workload_replicas(&world),
        2,
        "taken back while pods are missing"
    );
}

#[test]
fn unresolved_workload_ref_is_invalid_and_touches_nothing() {
    let mut s = spec(3, json!({}));
    s.template = None;
    s.workload_ref = Some(crate::api::argo::rollout::ObjectRef {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        name: Some("gone".into()),
        scale_down: None,
    });
    let mut world = World::new(s);
    let plan = world.tick();
    assert!(
        plan.actions.iter().all(|a| matches!(a, Action::Event(_))),
        "{:?}",
        plan.actions
    );
    let invalid = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == reason::INVALID_SPEC)
        .expect("an InvalidSpec condition");
    assert!(
        invalid.message.contains("\"gone\" not found"),
        "{}",
        invalid.message
    );
    assert_eq!(world.health(), Health::Degraded);
}

/// Updates to demo:2 … demo:`to` one after the other, each promoted in full.
fn promote_through(world: &mut World, to: i32) {
    for n in 2..=to {
        world.set_image(&format!("demo:{n}"));
        world.settle();
        world.intent(Intent::PromoteFull);
        world.settle();
        assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    }
}

#[test]
fn a_rollback_within_the_rollback_window_skips_the_steps() {
    let mut s = spec(2, json!({"steps": [{"setWeight": 50}, {"pause": {}}]}));
    s.rollback_window = serde_json::from_value(json!({"revisions": 2})).unwrap();
    let (mut world, _) = deployed(s);
    promote_through(&mut world, 4);
    // Back to demo:2: one revision (demo:3) lies between it and the stable demo:4.
    world.set_image("demo:2");
    world.settle();
    assert!(world.has_event(health::reason::FAST_ROLLBACK));
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert_eq!(world.status.stable_rs, world.status.current_pod_hash);
}

#[test]
fn a_rollback_outside_the_rollback_window_runs_the_steps() {
    let mut s = spec(2, json!({"steps": [{"setWeight": 50}, {"pause": {}}]}));
    s.rollback_window = serde_json::from_value(json!({"revisions": 2})).unwrap();
    let (mut world, _) = deployed(s);
    promote_through(&mut world, 5);
    // Back to demo:2: demo:3 and demo:4 lie between it and the stable demo:5.
    world.set_image("demo:2");
    world.settle();
    assert!(!world.has_event(health::reason::FAST_ROLLBACK));
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
}

#[test]
fn dynamic_stable_scale_undo_keeps_the_previous_canary_until_the_stable_serves_everything() {
    let s = spec(
        4,
        json!({
            "canaryService": "demo-canary",
            "stableService": "demo-stable",
            "dynamicStableScale": true,
            "trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "demo"}}},
            "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}],
        }),
    );
    let (mut world, stable) = deployed(s);
    world.set_image("demo:2");
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (1, 3));
    let weight = |world: &World| world.observed.traffic.as_ref().map(|t| t.canary_weight);
    let canary_selector =
        |world: &World| world.observed.services["demo-canary"].selector_hash.clone();
    let weights_hash = |world: &World| {
        world
            .status
            .canary
            .weights
            .as_ref()
            .map(|w| w.canary.pod_template_hash.clone())
    };
    assert_eq!(weight(&world), Some(25));

    // Undo to the stable template: it scales back up, but its fourth pod is not available yet,
    // so a quarter of the traffic stays on the previous canary, which keeps its pod.
    world.pods_ready = false;
    world.set_image("demo:1");
    world.settle();
    assert_eq!(world.status.current_pod_hash, stable);
    assert_eq!((world.replicas(&stable), world.replicas(&canary)), (4, 1));
    assert_eq!(weight(&world), Some(25));
    assert_eq!(weights_hash(&world), Some(canary.clone()));
    assert_eq!(canary_selector(&world), Some(canary.clone()));

    // All four stable pods serve: traffic leaves the canary first, then its pod goes.
    if let Some(rs) = world
        .observed
        .replica_sets
        .iter_mut()
        .find(|rs| rs.pod_template_hash == stable)
    {
        rs.available_replicas = 4;
        rs.ready_replicas = 4;
    }
    world.settle();
    assert_eq!(weight(&world), Some(0));
    assert_eq!(weights_hash(&world), Some(stable.clone()));
    assert_eq!(world.replicas(&canary), 0);
    assert_eq!(canary_selector(&world), Some(stable.clone()));
}

#[test]
fn dynamic_stable_scale_abort_hands_traffic_back_as_the_stable_becomes_available() {
    let s = spec(
        4,
        json!({
            "canaryService": "demo-canary",
            "stableService": "demo-stable",
            "dynamicStableScale": true,
            "trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "demo"}}},
            "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}],
        }),
    );
    let (mut world, stable) = deployed(s);
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::Promote);
    world.settle();
    let canary = world.status.current_pod_hash.clone();
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (3, 1));
    let available = |world: &mut World, hash: &str, n: i32| {
        if let Some(rs) = world
            .observed
            .replica_sets
            .iter_mut()
            .find(|rs| rs.pod_template_hash == hash)
        {
            rs.available_replicas = n;
            rs.ready_replicas = n;
        }
    };
    let weight = |world: &World| world.observed.traffic.as_ref().map(|t| t.canary_weight);
    let canary_selector =
        |world: &World| world.observed.services["demo-canary"].selector_hash.clone();

    // Abort: the stable comes back up, traffic stays until it can serve.
    world.pods_ready = false;
    world.intent(Intent::Abort);
    world.settle();
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (3, 3));
    assert_eq!(weight(&world), Some(75));
    // Three stable pods serve 75%: the weight steps back to 25 and the canary follows.
    available(&mut world, &stable, 3);
    world.settle();
    assert_eq!(weight(&world), Some(25));
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (1, 4));
    assert_eq!(canary_selector(&world), Some(canary.clone()));
    // All four serve: no traffic is left on the canary, which goes.
    available(&mut world, &stable, 4);
    world.settle();
    assert_eq!(weight(&world), Some(0));
    assert_eq!((world.replicas(&canary), world.replicas(&stable)), (0, 4));
    assert_eq!(canary_selector(&world), Some(stable.clone()));
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
}

#[test]
fn ping_pong_services_trade_roles_at_each_promotion() {
    let s = spec(
        2,
        json!({
            "pingPong": {"pingService": "ping", "pongService": "pong"},
            "trafficRouting": {"alb": {"ingress": "ing", "servicePort": 80, "rootService": "root"}},
            "steps": [{"setWeight": 25}, {"pause": {}}],
        }),
    );
    let selector = |w: &World, service: &str| {
        w.observed
            .services
            .get(service)
            .and_then(|s| s.selector_hash.clone())
    };
    let (mut world, first) = deployed(s);
    // The first deploy is a promotion: ping serves it (Argo's empty → ping).
    assert_eq!(world.status.canary.stable_ping_pong, "ping");
    assert_eq!(selector(&world, "ping"), Some(first.clone()));

    world.set_image("demo:2");
    world.settle();
    let second = world.status.current_pod_hash.clone();
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(selector(&world, "pong"), Some(second.clone()));
    assert_eq!(selector(&world, "ping"), Some(first.clone()));
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 25);
    let weights = world.status.canary.weights.clone().expect("weights");
    assert_eq!(
        (weights.canary.service_name, weights.stable.service_name),
        ("pong".to_string(), "ping".to_string())
    );

    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.stable_rs, second);
    assert_eq!(world.status.canary.stable_ping_pong, "pong");
    assert_eq!(selector(&world, "pong"), Some(second.clone()));
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 0);

    world.set_image("demo:3");
    world.settle();
    let third = world.status.current_pod_hash.clone();
    assert_eq!(selector(&world, "ping"), Some(third.clone()));
    assert_eq!(selector(&world, "pong"), Some(second));
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.stable_rs, third);
    assert_eq!(world.status.canary.stable_ping_pong, "ping");
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
}

// === experiment steps with template weights ===

#[test]
fn an_experiment_template_weight_is_routed_only_while_its_experiment_runs() {
    let (mut world, _) = deployed(spec(
        4,
        json!({
            "canaryService": "demo-canary",
            "stableService": "demo-stable",
            "trafficRouting": {"smi": {}},
            "steps": [
                {"setWeight": 20},
                {"experiment": {"templates": [{"name": "exp", "specRef": "canary", "weight": 10}]}},
                {"pause": {}},
            ],
        }),
    ));
    let additional = |w: &World| w.observed.traffic.as_ref().unwrap().additional.clone();
    world.set_image("demo:2");
    world.settle();
    let name = world.status.canary.current_experiment.clone();
    assert_eq!(world.status.current_step_index, Some(1));
    // Running, but its template has no Service yet: nothing a router could send traffic to.
    assert!(additional(&world).is_empty());
    let experiment = world
        .observed
        .experiments
        .iter_mut()
        .find(|e| e.name == name)
        .expect("the step's Experiment");
    experiment.templates = vec![crate::engine::ExperimentTemplateObservation {
        name: "exp".into(),
        service_name: "demo-exp".into(),
        pod_template_hash: "abc".into(),
    }];
    world.settle();
    assert_eq!(world.observed.traffic.as_ref().unwrap().canary_weight, 20);
    assert_eq!(additional(&world), [("demo-exp".to_string(), 10)].into());
    let weights = world.status.canary.weights.clone().unwrap();
    assert_eq!((weights.canary.weight, weights.stable.weight), (20, 70));
    assert_eq!(weights.additional[0].pod_template_hash, "abc");
    // The experiment ends: the step is done and its share is stable's again.
    for e in &mut world.observed.experiments {
        e.phase = AnalysisPhase::Successful;
    }
    world.settle();
    assert_eq!(world.status.current_step_index, Some(2));
    assert!(additional(&world).is_empty());
    let weights = world.status.canary.weights.clone().unwrap();
    assert_eq!((weights.canary.weight, weights.stable.weight), (20, 80));
}

#[test]
fn experiment_template_weights_need_a_router_that_routes_them() {
    let invalid = |canary: serde_json::Value| {
        let plan = World::new(spec(2, canary)).tick();
        let condition = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "InvalidSpec")
            .map(|c| c.message.clone());
        condition.unwrap_or_default()
    };
    let step = |weight: i32| {
        json!([{"setWeight": 60},
               {"experiment": {"templates": [{"name": "e", "specRef": "canary", "weight": weight}]}}])
    };
    let nginx = invalid(json!({
        "canaryService": "c", "stableService": "s",
        "trafficRouting": {"nginx": {"stableIngress": "web"}}, "steps": step(10),
    }));
    assert!(
        nginx.contains("steps[1].experiment.templates[0].weight") && nginx.contains("nginx"),
        "{nginx}"
    );
    let too_much = invalid(json!({
        "canaryService": "c", "stableService": "s",
        "trafficRouting": {"smi": {}}, "steps": step(50),
    }));
    assert!(
        too_much.contains("steps[1].experiment.templates"),
        "{too_much}"
    );
    let fine = invalid(json!({
        "canaryService": "c", "stableService": "s",
        "trafficRouting": {"smi": {}}, "steps": step(40),
    }));
    assert_eq!(fine, "");
}
