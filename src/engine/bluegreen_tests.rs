//! Table tests for the blue-green strategy, driven through the simulated cluster.

use pretty_assertions::assert_eq;
use serde_json::json;

use super::health::Health;
use super::intent::Intent;
use super::tests::{World, spec};
use super::*;
use crate::api::argo::rollout::{PauseReason, RolloutPhase, RolloutSpec};

const ACTIVE: &str = "demo-active";
const PREVIEW: &str = "demo-preview";

fn blue_green(replicas: i32, extra: serde_json::Value) -> RolloutSpec {
    let mut strategy = json!({"activeService": ACTIVE, "previewService": PREVIEW});
    if let (Some(s), Some(e)) = (strategy.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let mut s = spec(replicas, json!({}));
    s.strategy = serde_json::from_value(json!({"blueGreen": strategy})).unwrap();
    s
}

fn selector(world: &World, service: &str) -> Option<String> {
    world
        .observed
        .services
        .get(service)
        .and_then(|s| s.selector_hash.clone())
}

/// Deployed and Healthy at revision 1; returns the world and the stable hash.
fn deployed(spec: RolloutSpec) -> (World, String) {
    let mut world = World::new(spec);
    world.settle();
    let stable = world.status.stable_rs.clone();
    assert_eq!(
        world.status.phase,
        Some(RolloutPhase::Healthy),
        "{}",
        world.status.message
    );
    (world, stable)
}

#[test]
fn first_deploy_goes_straight_to_active() {
    let (world, stable) = deployed(blue_green(3, json!({"autoPromotionEnabled": false})));
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    assert_eq!(selector(&world, PREVIEW), Some(stable.clone()));
    assert_eq!(world.status.blue_green.active_selector, stable);
    assert_eq!(world.status.current_pod_hash, stable);
    assert!(world.status.pause_conditions.is_empty());
    assert_eq!(world.health(), Health::Healthy);
}

#[test]
fn manual_promotion_pauses_with_the_preview_up_then_switches_and_keeps_old_pods() {
    let (mut world, stable) = deployed(blue_green(3, json!({"autoPromotionEnabled": false})));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_ne!(new, stable);
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(world.health(), Health::Suspended);
    assert_eq!(
        world.status.pause_conditions[0].reason,
        PauseReason::BlueGreenPause
    );
    assert!(world.status.controller_pause);
    assert_eq!(selector(&world, PREVIEW), Some(new.clone()));
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    assert_eq!(world.status.blue_green.preview_selector, new);
    assert_eq!((world.replicas(&new), world.replicas(&stable)), (3, 3));

    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(selector(&world, ACTIVE), Some(new.clone()));
    assert_eq!(world.status.stable_rs, new);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert!(world.has_event("SwitchService"));
    // The old pods stay for scaleDownDelaySeconds (30 by default), then go.
    assert_eq!(world.replicas(&stable), 3);
    assert!(world.rs(&stable).unwrap().scale_down_deadline.is_some());
    world.advance(29);
    world.settle();
    assert_eq!(world.replicas(&stable), 3);
    world.advance(1);
    world.settle();
    assert_eq!(world.replicas(&stable), 0);
}

#[test]
fn auto_promotion_seconds_promote_after_the_pause() {
    let (mut world, stable) = deployed(blue_green(2, json!({"autoPromotionSeconds": 20})));
    world.set_image("demo:2");
    let plan = world.settle();
    assert_eq!(
        world.status.pause_conditions[0].reason,
        PauseReason::BlueGreenPause
    );
    assert!(plan.requeue_after.is_some_and(|r| r.as_secs() <= 20));
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    world.advance(20);
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(selector(&world, ACTIVE), Some(new.clone()));
    assert_eq!(world.status.stable_rs, new);
    assert!(world.status.pause_conditions.is_empty());
}

#[test]
fn auto_promotion_by_default_switches_once_the_preview_is_available() {
    let (mut world, _) = deployed(blue_green(2, json!({})));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(selector(&world, ACTIVE), Some(new.clone()));
    assert_eq!(world.status.stable_rs, new);
    assert!(!world.has_event(health::reason::ROLLOUT_PAUSED));
}

#[test]
fn abort_keeps_active_on_stable_and_scales_the_preview_down_after_the_delay() {
    let (mut world, stable) = deployed(blue_green(
        2,
        json!({"autoPromotionEnabled": false, "abortScaleDownDelaySeconds": 10}),
    ));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    world.intent(Intent::Abort);
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    assert_eq!(world.health(), Health::Degraded);
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    assert_eq!(selector(&world, PREVIEW), Some(new.clone()));
    assert_eq!(world.replicas(&new), 2);
    world.advance(10);
    world.settle();
    assert_eq!(world.replicas(&new), 0);
    assert_eq!(world.replicas(&stable), 2);
}

#[test]
fn never_switches_active_to_pods_that_are_not_available() {
    let (mut world, stable) = deployed(blue_green(2, json!({})));
    world.pods_ready = false;
    world.set_image("demo:2");
    world.tick();
    world.intent(Intent::PromoteFull);
    assert!(world.status.promote_full);
    world.settle();
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    assert_eq!(world.status.phase, Some(RolloutPhase::Progressing));
    assert_ne!(world.status.stable_rs, world.status.current_pod_hash);
    // Half the pods come up: still no switch, and the status says why.
    let new = world.status.current_pod_hash.clone();
    world
        .observed
        .replica_sets
        .iter_mut()
        .filter(|rs| rs.pod_template_hash == new)
        .for_each(|rs| {
            rs.available_replicas = 1;
            rs.ready_replicas = 1;
        });
    world.settle();
    assert_eq!(selector(&world, ACTIVE), Some(stable));
    assert!(
        world.status.message.contains("cutover pending"),
        "{}",
        world.status.message
    );
    world.pods_ready = true;
    world
        .observed
        .replica_sets
        .iter_mut()
        .filter(|rs| rs.pod_template_hash == new)
        .for_each(|rs| {
            rs.available_replicas = 2;
            rs.ready_replicas = 2;
        });
    world.settle();
    assert_eq!(selector(&world, ACTIVE), Some(new));
}

#[test]
fn preview_replica_count_scales_up_only_after_promotion() {
    let (mut world, stable) = deployed(blue_green(
        4,
        json!({"autoPromotionEnabled": false, "previewReplicaCount": 1}),
    ));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(world.replicas(&new), 1);
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    // Argo's counts: all pods, the updated ones, and the ready/available ones behind active.
    let s = &world.status;
    let counts = (
        s.replicas,
        s.updated_replicas,
        s.ready_replicas,
        s.available_replicas,
    );
    assert_eq!(counts, (5, 1, 4, 4));
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.replicas(&new), 4);
    assert_eq!(selector(&world, ACTIVE), Some(new.clone()));
    assert_eq!(world.status.stable_rs, new);
    assert!(!world.status.blue_green.scale_up_preview_check_point);
    assert_eq!(world.replicas(&stable), 4);
}

#[test]
fn scale_down_delay_revision_limit_keeps_only_the_newest_old_replica_sets() {
    let (mut world, first) = deployed(blue_green(
        1,
        json!({"scaleDownDelaySeconds": 100, "scaleDownDelayRevisionLimit": 1}),
    ));
    world.set_image("demo:2");
    world.settle();
    let second = world.status.current_pod_hash.clone();
    world.set_image("demo:3");
    world.settle();
    assert_eq!(world.replicas(&second), 1);
    assert_eq!(world.replicas(&first), 0);
}

#[test]
fn preview_and_active_services_must_differ() {
    let mut s = blue_green(1, json!({}));
    s.strategy.blue_green.as_mut().unwrap().preview_service = Some(ACTIVE.into());
    let plan = World::new(s).tick();
    assert!(
        plan.status.message.contains("previewService"),
        "{}",
        plan.status.message
    );
}

#[test]
fn fields_not_acted_on_yet_are_an_invalid_spec_not_ignored() {
    let s = blue_green(
        1,
        json!({"previewMetadata": {"labels": {"app": "preview"}}, "antiAffinity": {}}),
    );
    let plan = World::new(s).tick();
    assert!(
        plan.status
            .message
            .contains("spec.strategy.blueGreen.previewMetadata.labels.app")
            && plan
                .status
                .message
                .contains("spec.strategy.blueGreen.antiAffinity"),
        "{}",
        plan.status.message
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet { .. }))
    );
}

#[test]
fn preview_metadata_until_promotion_then_active_metadata() {
    let role = |r: &str| serde_json::from_value(json!({"labels": {"role": r}})).ok();
    let metadata = |world: &World, hash: &str| {
        world
            .observed
            .replica_sets
            .iter()
            .find(|rs| rs.pod_template_hash == hash)
            .and_then(|rs| rs.ephemeral_metadata.clone())
    };
    let (mut world, stable) = deployed(blue_green(
        2,
        json!({"autoPromotionEnabled": false,
               "previewMetadata": {"labels": {"role": "preview"}},
               "activeMetadata": {"labels": {"role": "active"}}}),
    ));
    assert_eq!(metadata(&world, &stable), role("active"));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
    assert_eq!(metadata(&world, &new), role("preview"));
    assert_eq!(metadata(&world, &stable), role("active"));
    world.intent(Intent::Promote);
    world.settle();
    assert_eq!(world.status.stable_rs, new);
    assert_eq!(metadata(&world, &new), role("active"));
    assert_eq!(metadata(&world, &stable), None);
}

fn analysis(field: &str) -> serde_json::Value {
    json!({field: {"templates": [{"templateName": "checks"}]}})
}

#[test]
fn pre_promotion_analysis_gates_the_switch() {
    let (mut world, stable) = deployed(blue_green(2, analysis("prePromotionAnalysis")));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    let run = world
        .status
        .blue_green
        .pre_promotion_analysis_run_status
        .clone()
        .unwrap();
    assert!(run.name.ends_with("-pre"), "{}", run.name);
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    world.set_run_phase("-pre", AnalysisPhase::Successful, "");
    world.settle();
    assert_eq!(selector(&world, ACTIVE), Some(new.clone()));
    assert_eq!(world.status.stable_rs, new);
}

#[test]
fn a_failed_pre_promotion_analysis_aborts() {
    let (mut world, stable) = deployed(blue_green(2, analysis("prePromotionAnalysis")));
    world.set_image("demo:2");
    world.settle();
    world.set_run_phase("-pre", AnalysisPhase::Failed, "error rate 0.3");
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    assert!(world.status.abort);
    assert_eq!(selector(&world, ACTIVE), Some(stable));
}

#[test]
fn a_failed_post_promotion_analysis_switches_active_back_while_the_old_pods_are_up() {
    let (mut world, stable) = deployed(blue_green(2, analysis("postPromotionAnalysis")));
    world.set_image("demo:2");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(selector(&world, ACTIVE), Some(new.clone()));
    let run = world
        .status
        .blue_green
        .post_promotion_analysis_run_status
        .clone()
        .unwrap();
    assert!(run.name.ends_with("-post"), "{}", run.name);
    assert_eq!(
        world.status.stable_rs, stable,
        "not stable before the verdict"
    );
    assert_eq!(world.replicas(&stable), 2);
    world.set_run_phase("-post", AnalysisPhase::Failed, "latency");
    world.settle();
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    assert_eq!(selector(&world, ACTIVE), Some(stable.clone()));
    assert_eq!(world.status.stable_rs, stable);
}

#[test]
fn a_successful_post_promotion_analysis_makes_the_update_stable() {
    let (mut world, stable) = deployed(blue_green(2, analysis("postPromotionAnalysis")));
    world.set_image("demo:2");
    world.settle();
    world.set_run_phase("-post", AnalysisPhase::Successful, "");
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(world.status.stable_rs, new);
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert!(world.rs(&stable).unwrap().scale_down_deadline.is_some());
}

#[test]
fn a_missing_active_service_is_an_invalid_spec() {
    let mut world = World::new(blue_green(1, json!({})));
    world.observed.services.remove(ACTIVE);
    let plan = world.tick();
    assert!(
        plan.status
            .message
            .contains("spec.strategy.blueGreen.activeService")
            && plan.status.message.contains(ACTIVE),
        "{}",
        plan.status.message
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet { .. }))
    );
}

#[test]
fn going_back_to_a_revision_still_up_within_its_scale_down_delay_is_a_fast_rollback() {
    let (mut world, first) = deployed(blue_green(2, json!({"autoPromotionEnabled": false})));
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::Promote);
    world.settle();
    let second = world.status.stable_rs.clone();
    assert_ne!(second, first);
    assert_eq!(
        world.replicas(&first),
        2,
        "still up within its scale-down delay"
    );
    // Argo's isFastRollback: no BlueGreenPause, no analysis, straight back to the old pods.
    world.set_image("demo:1");
    world.settle();
    assert_eq!(world.status.current_pod_hash, first);
    assert!(world.has_event(health::reason::FAST_ROLLBACK));
    assert_eq!(world.status.stable_rs, first);
    assert_eq!(selector(&world, ACTIVE), Some(first.clone()));
    assert_eq!(world.status.phase, Some(RolloutPhase::Healthy));
    assert!(!world.status.promote_full, "cleared once promoted");
}

#[test]
fn going_back_after_the_scale_down_delay_is_an_ordinary_update() {
    let (mut world, first) = deployed(blue_green(2, json!({"autoPromotionEnabled": false})));
    world.set_image("demo:2");
    world.settle();
    world.intent(Intent::Promote);
    world.settle();
    world.advance(31);
    world.settle();
    assert_eq!(world.replicas(&first), 0);
    world.set_image("demo:1");
    world.settle();
    assert!(!world.has_event(health::reason::FAST_ROLLBACK));
    assert_eq!(world.status.phase, Some(RolloutPhase::Paused));
}

#[test]
fn progress_deadline_abort_set_after_the_deadline_passed_aborts_and_scales_the_preview_down() {
    let mut s = blue_green(1, json!({"abortScaleDownDelaySeconds": 2}));
    s.progress_deadline_seconds = Some(1);
    let (mut world, stable) = deployed(s);
    world.pods_ready = false;
    world.set_image("demo:2");
    world.settle();
    world.advance(1);
    world.settle();
    let new = world.status.current_pod_hash.clone();
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    assert!(!world.status.abort);
    assert_eq!(world.replicas(&new), 1);

    world.spec.progress_deadline_abort = Some(true);
    world.settle();
    assert!(world.status.abort, "{}", world.status.message);
    assert_eq!(world.status.phase, Some(RolloutPhase::Degraded));
    world.advance(2);
    world.settle();
    assert_eq!(world.replicas(&new), 0);
    assert_eq!(world.replicas(&stable), 1);
}
