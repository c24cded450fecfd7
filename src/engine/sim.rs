//! A simulated cluster for the engine: ReplicaSets, Services, a traffic router and AnalysisRuns
//! that do what each plan asks. Used by the table and property tests, and by `sluice simulate`
//! to preview how a Rollout's steps will play out. Pure: the clock is a number it advances.

use k8s_openapi::jiff::Timestamp;

use super::health::{Health, argocd_health};
use super::intent::{self, Intent};
use super::*;
use crate::api::argo::rollout::{RolloutSpec, RolloutStatus};

/// The simulated cluster: ReplicaSets, Services, a router and AnalysisRuns that follow the actions.
pub struct Simulation {
    pub name: String,
    pub spec: RolloutSpec,
    pub status: RolloutStatus,
    pub observed: Observations,
    /// Pods of newly scaled ReplicaSets become available at once.
    pub pods_ready: bool,
    /// Routers confirm weights at once.
    pub router_verifies: bool,
    pub events: Vec<Event>,
    pub last: Option<Plan>,
    /// Called with every plan before it is executed (tests check invariants here).
    pub on_plan: Option<fn(&Simulation, &Plan)>,
}

impl Simulation {
    pub fn new(name: &str, spec: RolloutSpec) -> Self {
        let mut observed = Observations::at(Timestamp::from_second(1_700_000_000).unwrap());
        // The Services a blue-green strategy names exist, selecting nothing of the Rollout's yet.
        if let Some(blue_green) = &spec.strategy.blue_green {
            for name in
                std::iter::once(&blue_green.active_service).chain(&blue_green.preview_service)
            {
                observed
                    .services
                    .insert(name.clone(), ServiceObservation::default());
            }
        }
        Self {
            name: name.to_string(),
            spec,
            status: RolloutStatus::default(),
            observed,
            pods_ready: true,
            router_verifies: true,
            events: Vec::new(),
            last: None,
            on_plan: None,
        }
    }

    /// One reconcile: plan, check health agreement, execute the actions.
    /// One reconcile: plan, then execute the actions.
    pub fn tick(&mut self) -> Plan {
        let plan = self.plan();
        if let Some(check) = self.on_plan {
            check(self, &plan);
        }
        self.status = plan.status.clone();
        for action in plan.actions.clone() {
            self.execute(action);
        }
        self.last = Some(plan.clone());
        plan
    }

    /// The plan for the current state, without executing it.
    pub fn plan(&self) -> Plan {
        plan(Input {
            name: &self.name,
            spec: &self.spec,
            status: &self.status,
            observed: &self.observed,
        })
    }

    /// Reconcile until nothing but waiting is left (at most 50 ticks).
    pub fn settle(&mut self) -> Plan {
        let mut plan = self.tick();
        for _ in 0..50 {
            let next = self.tick();
            // ReleaseTraffic is planned on every settled reconcile (idempotent): not activity.
            let quiet = next
                .actions
                .iter()
                .all(|a| matches!(a, Action::Event(_) | Action::ReleaseTraffic))
                && next.status == plan.status;
            plan = next;
            if quiet {
                break;
            }
        }
        plan
    }

    pub fn advance(&mut self, seconds: i64) {
        self.observed.now =
            Timestamp::from_second(self.observed.now.as_second() + seconds).unwrap();
    }

    /// Change the image of the first container (a new revision).
    pub fn set_image(&mut self, image: &str) {
        let mut template = self.spec.template.clone().unwrap_or_default();
        if let Some(container) = template
            .spec
            .as_mut()
            .and_then(|s| s.containers.first_mut())
        {
            container.image = Some(image.to_string());
        }
        self.spec.template = Some(template);
        self.observed.generation += 1;
        let new_hash = hash::pod_template_hash(
            self.spec.template.as_ref().unwrap_or(&Default::default()),
            None,
        );
        for rs in &mut self.observed.replica_sets {
            rs.matches_current_template = rs.pod_template_hash == new_hash;
        }
    }

    pub fn intent(&mut self, intent: Intent) {
        let (spec, status) = intent::apply(intent, &self.spec, &self.status);
        if spec != self.spec {
            self.observed.generation += 1;
        }
        self.spec = spec;
        self.status = status;
    }

    pub fn rs(&self, hash: &str) -> Option<&ReplicaSetObservation> {
        self.observed
            .replica_sets
            .iter()
            .find(|rs| rs.pod_template_hash == hash)
    }

    pub fn replicas(&self, hash: &str) -> i32 {
        self.rs(hash).map_or(0, |rs| rs.replicas)
    }

    pub fn set_run_phase(&mut self, name_contains: &str, phase: AnalysisPhase, message: &str) {
        let Some(run) = self
            .observed
            .analysis_runs
            .iter_mut()
            .rev()
            .find(|r| r.name.contains(name_contains))
        else {
            return;
        };
        run.phase = phase;
        run.message = message.into();
    }

    fn execute(&mut self, action: Action) {
        let ready = self.pods_ready;
        let sync_endpoints = |world: &mut Simulation| {
            let sets = world.observed.replica_sets.clone();
            for service in world.observed.services.values_mut() {
                service.ready_endpoints = service
                    .selector_hash
                    .as_ref()
                    .and_then(|h| sets.iter().find(|rs| &rs.pod_template_hash == h))
                    .map_or(0, |rs| rs.available_replicas);
            }
        };
        match action {
            Action::CreateReplicaSet {
                pod_template_hash,
                replicas,
                revision,
                ephemeral_metadata,
            } => {
                if self.rs(&pod_template_hash).is_none() {
                    let n = if ready { replicas } else { 0 };
                    self.observed.replica_sets.push(ReplicaSetObservation {
                        pod_template_hash,
                        replicas,
                        status_replicas: replicas,
                        ready_replicas: n,
                        available_replicas: n,
                        revision,
                        scale_down_deadline: None,
                        ephemeral_metadata,
                        matches_current_template: true,
                    });
                }
            }
            Action::SetEphemeralMetadata {
                pod_template_hash,
                desired,
                ..
            } => {
                if let Some(rs) = self
                    .observed
                    .replica_sets
                    .iter_mut()
                    .find(|rs| rs.pod_template_hash == pod_template_hash)
                {
                    rs.ephemeral_metadata = desired;
                }
            }
            Action::ScaleReplicaSet {
                pod_template_hash,
                replicas,
            } => {
                let rs = self
                    .observed
                    .replica_sets
                    .iter_mut()
                    .find(|rs| rs.pod_template_hash == pod_template_hash)
                    .unwrap();
                rs.replicas = replicas;
                rs.status_replicas = replicas;
                if ready || replicas < rs.available_replicas {
                    rs.ready_replicas = replicas;
                    rs.available_replicas = replicas;
                }
            }
            Action::SetRevision {
                pod_template_hash,
                revision,
            } => {
                if let Some(rs) = self
                    .observed
                    .replica_sets
                    .iter_mut()
                    .find(|rs| rs.pod_template_hash == pod_template_hash)
                {
                    rs.revision = revision;
                }
            }
            Action::SetScaleDownDeadline {
                pod_template_hash,
                deadline,
            } => {
                let rs = self
                    .observed
                    .replica_sets
                    .iter_mut()
                    .find(|rs| rs.pod_template_hash == pod_template_hash)
                    .unwrap();
                rs.scale_down_deadline = deadline;
            }
            Action::DeleteReplicaSet { pod_template_hash } => {
                self.observed
                    .replica_sets
                    .retain(|rs| rs.pod_template_hash != pod_template_hash);
            }
            Action::SetServiceSelector {
                service,
                pod_template_hash,
            } => {
                self.observed
                    .services
                    .entry(service)
                    .or_default()
                    .selector_hash = Some(pod_template_hash);
            }
            Action::SetWeight {
                canary_weight,
                additional,
                ..
            } => {
                self.observed.traffic = Some(TrafficObservation {
                    canary_weight,
                    verified: self.router_verifies,
                    additional: additional
                        .into_iter()
                        .map(|d| (d.service_name, d.weight))
                        .collect(),
                });
            }
            Action::CreateAnalysisRun(request) => {
                if !self
                    .observed
                    .analysis_runs
                    .iter()
                    .any(|r| r.name == request.name)
                {
                    self.observed.analysis_runs.push(AnalysisRunObservation {
                        name: request.name,
                        phase: AnalysisPhase::Running,
                        message: String::new(),
                    });
                }
            }
            Action::TerminateAnalysisRun { name } => {
                if let Some(run) = self
                    .observed
                    .analysis_runs
                    .iter_mut()
                    .find(|r| r.name == name)
                {
                    run.phase = AnalysisPhase::Successful;
                }
            }
            Action::CreateExperiment(request) => {
                if !self
                    .observed
                    .experiments
                    .iter()
                    .any(|e| e.name == request.name)
                {
                    self.observed.experiments.push(ExperimentObservation {
                        name: request.name,
                        phase: AnalysisPhase::Running,
                        message: String::new(),
                        terminating: false,
                        templates: Vec::new(),
                    });
                }
            }
            Action::TerminateExperiment { name } => {
                if let Some(experiment) = self
                    .observed
                    .experiments
                    .iter_mut()
                    .find(|e| e.name == name)
                {
                    experiment.terminating = true;
                    experiment.phase = AnalysisPhase::Successful;
                }
            }
            Action::ScaleWorkload { replicas } => {
                if let Some(workload) = self.observed.workload.as_mut() {
                    workload.replicas = replicas;
                }
            }
            Action::RestartPod { name } => self.observed.pods.retain(|p| p.name != name),
            Action::ReleaseService { service } => {
                self.observed
                    .unreferenced_services
                    .retain(|s| *s != service);
            }
            Action::Event(event) => self.events.push(event),
            Action::SetHeaderRoute { .. }
            | Action::SetMirrorRoute { .. }
            | Action::RemoveManagedRoutes
            | Action::ReleaseTraffic => {}
        }
        sync_endpoints(self);
    }

    /// The health Argo CD would show for the current status.
    pub fn health(&self) -> Health {
        argocd_health(&self.spec, &self.status, self.observed.generation)
    }

    pub fn has_event(&self, reason: &str) -> bool {
        self.events.iter().any(|e| e.reason == reason)
    }
}
