//! The blue-green strategy (`spec.strategy.blueGreen`), Argo Rollouts' semantics: the new
//! ReplicaSet comes up beside the stable one (at `previewReplicaCount` first, if set), the preview
//! Service selects it, the Rollout pauses (`BlueGreenPause`) unless auto-promotion is on, and on
//! promotion the active Service switches to it; the old ReplicaSet keeps its pods for
//! `scaleDownDelaySeconds`. An abort points the active Service back at stable (the preview stays
//! on the new ReplicaSet) and scales the new ReplicaSet down after `abortScaleDownDelaySeconds`.
//! The preview's pods carry `previewMetadata` until the switch, then `activeMetadata` (see
//! `engine::ephemeral`).
//!
//! It shares the canary planner's revision, intent, history, counting and condition logic, and
//! must never point the active Service at a ReplicaSet that cannot serve all of its traffic (Argo
//! Rollouts #4750): while it waits for that, `status.message` says why.

use crate::api::argo::rollout::{BlueGreenStrategy, PauseReason, RolloutAnalysis};
use crate::engine::health::reason;
use crate::engine::{Action, AnalysisKind, AnalysisPhase, ReplicaSetObservation, ephemeral};

use super::Planner;

/// Argo's event reason for a Service selector switch.
const SWITCH_SERVICE: &str = "SwitchService";

impl<'a> Planner<'a> {
    /// The blue-green plan: everything after the shared revision and intent handling.
    pub(super) fn blue_green(&mut self) {
        let Some(strategy) = self.spec.strategy.blue_green.as_ref() else {
            return;
        };
        if self.old.current_pod_hash != self.status.current_pod_hash {
            // A new revision starts its preview afresh.
            self.status.blue_green.scale_up_preview_check_point = false;
            self.status.blue_green.pre_promotion_analysis_run_status = None;
            self.status.blue_green.post_promotion_analysis_run_status = None;
        }
        if self.old.aborted_at.is_some() && self.status.aborted_at.is_none() {
            // Retry: the analyses start again.
            self.status.blue_green.pre_promotion_analysis_run_status = None;
            self.status.blue_green.post_promotion_analysis_run_status = None;
        }
        if self.status.promote_full {
            self.stop_analysis_run(AnalysisKind::PrePromotion);
            self.stop_analysis_run(AnalysisKind::PostPromotion);
        }
        if self.status.abort && self.promoted() {
            // Nothing left to abort: the update already finished.
            self.status.abort = false;
            self.status.aborted_at = None;
        }
        let preview_target = self.preview_target(strategy);
        self.scale_blue_green(preview_target);
        if !self.promoted() && !self.status.abort {
            self.blue_green_pause(strategy, preview_target);
        }
        let post_promotion_passed = self.post_promotion(strategy);
        self.active_service(strategy);
        self.preview_service(strategy);
        if post_promotion_passed {
            self.promote_after_switch(strategy);
        }
        self.scale_down_old_blue_green(strategy);
        self.delete_old_history();
        self.ephemeral_metadata();
        self.counts();
        self.active_counts(strategy);
        self.scale_workload();
        self.restart_pods();
        self.conditions();
    }

    /// The Services a blue-green strategy names that do not exist (as Argo, an InvalidSpec).
    pub(super) fn missing_blue_green_services(&self) -> Vec<String> {
        let Some(strategy) = &self.spec.strategy.blue_green else {
            return Vec::new();
        };
        [
            ("activeService", Some(&strategy.active_service)),
            ("previewService", strategy.preview_service.as_ref()),
        ]
        .into_iter()
        .filter_map(|(field, name)| Some((field, name?)))
        .filter(|(_, name)| !name.is_empty() && !self.observed.services.contains_key(*name))
        .map(|(field, name)| {
            format!("spec.strategy.blueGreen.{field}: Service {name:?} not found; create it")
        })
        .collect()
    }

    /// As Argo: ready, available and HPA replicas count the pods the active Service selects (all
    /// of the Rollout's while it selects none of them).
    fn active_counts(&mut self, strategy: &BlueGreenStrategy) {
        let Some(active) = self
            .active_selector(strategy)
            .and_then(|hash| self.rs(hash))
        else {
            return;
        };
        self.status.ready_replicas = active.ready_replicas;
        self.status.available_replicas = active.available_replicas;
        self.status.hpa_replicas = active.status_replicas;
    }

    /// The active Service's observed `rollouts-pod-template-hash` selector.
    fn active_selector(&self, strategy: &BlueGreenStrategy) -> Option<&'a str> {
        self.observed
            .services
            .get(&strategy.active_service)
            .and_then(|s| s.selector_hash.as_deref())
    }

    /// Pods the new ReplicaSet should have now.
    fn preview_target(&mut self, strategy: &BlueGreenStrategy) -> i32 {
        let spec_replicas = self.spec.replicas();
        if self.promoted() {
            return spec_replicas;
        }
        if self.status.abort {
            return self.aborted_canary_replicas();
        }
        match strategy.preview_replica_count {
            Some(count)
                if !self.status.blue_green.scale_up_preview_check_point
                    && !self.status.promote_full =>
            {
                count.clamp(0, spec_replicas)
            }
            _ => spec_replicas,
        }
    }

    /// The new ReplicaSet at `new`, the stable one at full size until the update is promoted.
    fn scale_blue_green(&mut self, new: i32) {
        let current = self.current().to_string();
        match self.rs(&current) {
            None => self.actions.push(Action::CreateReplicaSet {
                pod_template_hash: current.clone(),
                replicas: new,
                revision: self.revision(),
                ephemeral_metadata: ephemeral::desired(self.spec, &self.status, &current),
            }),
            Some(rs) => self.scale_current(rs, new),
        }
        if !self.promoted() {
            let full = self.spec.replicas();
            if let Some(rs) = self.rs(&self.status.stable_rs) {
                self.scale_and_keep(rs, full);
            }
        }
    }

    /// The new ReplicaSet has exactly `target` pods, all available.
    fn new_rs_at(&self, target: i32) -> bool {
        self.rs(self.current())
            .is_some_and(|rs| rs.replicas == target && rs.available_replicas >= target)
    }

    /// Argo's `reconcileBlueGreenPause` plus `calculateScaleUpPreviewCheckPoint`: once the preview
    /// is up, pause for a person (or for autoPromotionSeconds), then mark the preview as cleared
    /// for the switch (`scaleUpPreviewCheckPoint`).
    fn blue_green_pause(&mut self, strategy: &'a BlueGreenStrategy, preview_target: i32) {
        if self.spec.paused() || !self.new_rs_at(preview_target) {
            return;
        }
        let current = self.current().to_string();
        let fast_tracked = self.status.promote_full
            || self.status.blue_green.scale_up_preview_check_point
            || self.active_selector(strategy).is_none_or(|s| s == current);
        if !fast_tracked && !self.pre_promotion(strategy) {
            return;
        }
        let done = fast_tracked || self.blue_green_pause_done(strategy);
        if done {
            self.status
                .pause_conditions
                .retain(|c| c.reason != PauseReason::BlueGreenPause);
            if strategy.preview_replica_count.is_some()
                && !self.status.blue_green.scale_up_preview_check_point
            {
                self.status.blue_green.scale_up_preview_check_point = true;
                self.progressed = true;
            }
        }
    }

    /// Run `prePromotionAnalysis` on the preview: whether it passed. A failure aborts the update;
    /// an inconclusive run pauses for a person.
    fn pre_promotion(&mut self, strategy: &'a BlueGreenStrategy) -> bool {
        match &strategy.pre_promotion_analysis {
            None => true,
            Some(analysis) => self.promotion_analysis(AnalysisKind::PrePromotion, analysis),
        }
    }

    /// The pre-promotion analysis, if any, passed (as recorded in this plan's status).
    fn pre_promotion_passed(&self, strategy: &BlueGreenStrategy) -> bool {
        strategy.pre_promotion_analysis.is_none()
            || self.status.blue_green.scale_up_preview_check_point
            || self
                .status
                .blue_green
                .pre_promotion_analysis_run_status
                .as_ref()
                .is_some_and(|r| {
                    r.status == AnalysisPhase::Successful.as_str()
                        || (r.status == AnalysisPhase::Inconclusive.as_str()
                            && self.status.controller_pause
                            && self.status.pause_conditions.is_empty())
                })
    }

    /// Once the active Service serves the new pods, run `postPromotionAnalysis`: whether the
    /// update may become stable. A failure aborts, which points the active Service back at the
    /// stable pods (still at full size: they are not scaled down before the verdict).
    fn post_promotion(&mut self, strategy: &'a BlueGreenStrategy) -> bool {
        let current = self.current().to_string();
        let switched = self.active_selector(strategy) == Some(current.as_str());
        match &strategy.post_promotion_analysis {
            Some(analysis)
                if switched
                    && !self.promoted()
                    && !self.status.abort
                    && !self.status.promote_full =>
            {
                self.promotion_analysis(AnalysisKind::PostPromotion, analysis)
            }
            _ => true,
        }
    }

    /// Find or create the run of `kind` and judge it: passed, or not (yet).
    fn promotion_analysis(&mut self, kind: AnalysisKind, analysis: &'a RolloutAnalysis) -> bool {
        let (name, phase, message) = self.analysis_run(kind, analysis);
        match phase {
            AnalysisPhase::Successful => true,
            AnalysisPhase::Failed | AnalysisPhase::Error => {
                self.analysis_failed(&name, phase, &message);
                false
            }
            AnalysisPhase::Inconclusive
                if self.status.controller_pause && self.status.pause_conditions.is_empty() =>
            {
                true
            }
            AnalysisPhase::Inconclusive => {
                self.pause(
                    PauseReason::InconclusiveAnalysisRun,
                    format!("AnalysisRun {name} is Inconclusive: {message}"),
                );
                false
            }
            AnalysisPhase::Pending | AnalysisPhase::Running => false,
        }
    }

    /// Whether the controller's pause is over: none is needed, the user resumed it, or
    /// autoPromotionSeconds passed. Starts the pause when it is due.
    fn blue_green_pause_done(&mut self, strategy: &BlueGreenStrategy) -> bool {
        let manual = strategy.auto_promotion_enabled == Some(false);
        let seconds = i64::from(strategy.auto_promotion_seconds.unwrap_or(0));
        if !manual && seconds <= 0 {
            return true;
        }
        let started = self
            .status
            .pause_conditions
            .iter()
            .find(|c| c.reason == PauseReason::BlueGreenPause)
            .map(|c| c.start_time.0.as_second());
        match started {
            // autoPromotionEnabled: false wins over autoPromotionSeconds, as in Argo.
            Some(_) if manual => false,
            Some(start) if self.now.as_second() >= start.saturating_add(seconds) => true,
            Some(start) => {
                self.requeue_in(start.saturating_add(seconds) - self.now.as_second());
                false
            }
            // The user cleared the pause the controller set (kubectl argo rollouts promote).
            None if self.status.controller_pause => true,
            None => {
                if !manual {
                    self.requeue_in(seconds);
                }
                let how = if manual {
                    "until promoted".to_string()
                } else {
                    format!("for {seconds}s before auto-promotion")
                };
                self.pause(
                    PauseReason::BlueGreenPause,
                    format!(
                        "Rollout is paused with ReplicaSet {}-{} in preview {how}",
                        self.name,
                        self.current()
                    ),
                );
                false
            }
        }
    }

    /// The hash the active Service should select now, if it should change.
    fn active_target(&self, strategy: &BlueGreenStrategy) -> String {
        let current = self.current().to_string();
        if self.promoted() {
            return current;
        }
        if self.status.abort {
            return self.status.stable_rs.clone();
        }
        let cleared = self.status.promote_full
            || (self.status.pause_conditions.is_empty()
                && !self.spec.paused()
                && (strategy.preview_replica_count.is_none()
                    || self.status.blue_green.scale_up_preview_check_point)
                && self.new_rs_at(self.spec.replicas())
                && self.pre_promotion_passed(strategy)
                && (self.status.controller_pause || self.blue_green_needs_no_pause(strategy)));
        if cleared {
            current
        } else {
            self.active_selector(strategy)
                .map_or_else(|| self.status.stable_rs.clone(), str::to_string)
        }
    }

    fn blue_green_needs_no_pause(&self, strategy: &BlueGreenStrategy) -> bool {
        let manual = strategy.auto_promotion_enabled == Some(false);
        let seconds = strategy.auto_promotion_seconds.unwrap_or(0);
        (!manual && seconds <= 0) || self.status.blue_green.scale_up_preview_check_point
    }

    /// Switch the active Service, but only to a ReplicaSet whose every pod is available: a switch
    /// to pods that cannot serve is refused, and `status.message` says so.
    fn active_service(&mut self, strategy: &BlueGreenStrategy) {
        let target = self.active_target(strategy);
        let observed = self.active_selector(strategy);
        self.status.blue_green.active_selector = observed.unwrap_or_default().to_string();
        if target.is_empty() || observed == Some(target.as_str()) {
            return;
        }
        let spec_replicas = self.spec.replicas();
        let serves = self.rs(&target).is_some_and(|rs| {
            rs.available_replicas >= spec_replicas.max(1)
                || (spec_replicas == 0 && rs.available_replicas >= rs.replicas)
        });
        if !serves {
            let available = self.rs(&target).map_or(0, |rs| rs.available_replicas);
            self.wait_message = Some(format!(
                "active service cutover pending: ReplicaSet {}-{target} has {available} of {} pods available; Service {:?} stays on {}",
                self.name,
                spec_replicas.max(1),
                strategy.active_service,
                observed.unwrap_or("its current pods"),
            ));
            return;
        }
        // The status keeps saying what the Service selects until the switch is seen.
        self.switch(&strategy.active_service, observed, &target);
    }

    /// The preview Service selects the new ReplicaSet once it has a pod to serve, and keeps
    /// selecting it after an abort (as Argo: the preview shows what was rejected; Argo's e2e suite
    /// checks it).
    fn preview_service(&mut self, strategy: &BlueGreenStrategy) {
        let Some(service) = &strategy.preview_service else {
            return;
        };
        let observed = self
            .observed
            .services
            .get(service)
            .and_then(|s| s.selector_hash.as_deref());
        self.status.blue_green.preview_selector = observed.unwrap_or_default().to_string();
        let target = self.current().to_string();
        let available = self.rs(&target).is_some_and(|rs| rs.available_replicas > 0);
        if !available || observed == Some(target.as_str()) {
            return;
        }
        self.switch(service, observed, &target);
    }

    fn switch(&mut self, service: &str, from: Option<&str>, to: &str) {
        self.actions.push(Action::SetServiceSelector {
            service: service.to_string(),
            pod_template_hash: to.to_string(),
        });
        self.progressed = true;
        self.event(
            false,
            SWITCH_SERVICE,
            format!(
                "Switched selector for service '{service}' from '{}' to '{to}'",
                from.unwrap_or_default()
            ),
        );
    }

    /// Once the active Service is seen selecting the new ReplicaSet, it becomes the stable one.
    fn promote_after_switch(&mut self, strategy: &BlueGreenStrategy) {
        let current = self.current().to_string();
        if self.promoted()
            || self.status.abort
            || self.active_selector(strategy) != Some(current.as_str())
        {
            if self.promoted() {
                self.status.blue_green.scale_up_preview_check_point = false;
            }
            return;
        }
        let revision = self.revision();
        self.status.stable_rs = current;
        self.status.blue_green.scale_up_preview_check_point = false;
        self.status.promote_full = false;
        self.status.pause_conditions.clear();
        self.status.controller_pause = false;
        self.progressed = true;
        self.event(
            false,
            reason::ROLLOUT_COMPLETED,
            format!("Rollout completed update to revision {revision}"),
        );
    }

    /// ReplicaSets neither current nor stable keep their pods for scaleDownDelaySeconds (at most
    /// scaleDownDelayRevisionLimit of them, newest first), then go to zero; never one a Service
    /// still selects.
    fn scale_down_old_blue_green(&mut self, strategy: &BlueGreenStrategy) {
        let referenced: Vec<String> = [
            self.active_selector(strategy),
            strategy.preview_service.as_ref().and_then(|s| {
                self.observed
                    .services
                    .get(s)
                    .and_then(|s| s.selector_hash.as_deref())
            }),
        ]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect();
        let mut old: Vec<&'a ReplicaSetObservation> = self
            .others()
            .filter(|rs| rs.replicas > 0 && !referenced.contains(&rs.pod_template_hash))
            .collect();
        old.sort_by_key(|rs| std::cmp::Reverse(rs.revision));
        let delay = i64::from(strategy.scale_down_delay_seconds.unwrap_or(30));
        let limit = strategy
            .scale_down_delay_revision_limit
            .map_or(usize::MAX, |l| l.max(0) as usize);
        for (i, rs) in old.into_iter().enumerate() {
            if i >= limit {
                self.scale_to_zero(rs);
            } else {
                self.scale_down_after(rs, delay);
            }
        }
    }
}
