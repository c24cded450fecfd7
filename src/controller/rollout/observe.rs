//! Reads the cluster for one Rollout, from watch caches only (no request per reconcile): the
//! ReplicaSets and AnalysisRuns it owns, the Services it names and their ready endpoints (and
//! those it no longer names but whose selector it still set), the
//! Deployment its `workloadRef` names, the analysis templates its spec references, and while a
//! restart is asked for, its pods. Turns them into
//! the engine's [`Observations`]. Objects are found through [`Indexes`], never by scanning a
//! whole cache, so a reconcile costs the same with 10 or 10,000 Rollouts.
//!
//! This module must never write to the cluster or decide what to do with what it sees.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::fresh::{self, Fresh};
use super::index::{Index, controller_named};
use crate::api::argo::analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
use crate::api::argo::experiment::{Experiment, TemplateStatus};
use crate::api::argo::rollout::{
    EPHEMERAL_METADATA_ANNOTATION, MANAGED_BY_ROLLOUTS_ANNOTATION, POD_TEMPLATE_HASH_LABEL,
    REVISION_ANNOTATION, Rollout, RolloutSpec, SCALE_DOWN_DEADLINE_ANNOTATION, ScaleDown,
};
use crate::engine::health::reason::INVALID_SPEC;
use crate::engine::{
    AnalysisPhase, AnalysisRunObservation, AnalysisTemplates, ExperimentObservation,
    ExperimentTemplateObservation, Observations, PodObservation, ReplicaSetObservation,
    ServiceObservation, WorkloadObservation, hash,
};

/// The label EndpointSlices carry with the name of their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The watch caches the Rollout controller reads.
#[derive(Clone)]
pub struct Caches {
    pub rollouts: Store<Rollout>,
    /// Only ReplicaSets with a `rollouts-pod-template-hash` label.
    pub replica_sets: Store<ReplicaSet>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub analysis_runs: Store<AnalysisRun>,
    /// Experiments (of canary `experiment:` steps).
    pub experiments: Store<Experiment>,
    pub deployments: Store<Deployment>,
    /// Metadata only, of pods with a `rollouts-pod-template-hash` label (for `restartAt`).
    pub pods: Store<Pod>,
    pub analysis_templates: Store<AnalysisTemplate>,
    pub cluster_analysis_templates: Store<ClusterAnalysisTemplate>,
    pub index: Arc<Indexes>,
}

impl Caches {
    /// Every cache has its first full list. Before that, a Rollout would be planned from a
    /// partial view (no ReplicaSets yet, say) and could repeat what was already done — a second
    /// AnalysisRun for the same step after a restart.
    pub fn synced(&self) -> bool {
        use futures::FutureExt;
        self.rollouts.wait_until_ready().now_or_never().is_some()
            && self
                .replica_sets
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self.services.wait_until_ready().now_or_never().is_some()
            && self
                .endpoint_slices
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self
                .analysis_runs
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self.experiments.wait_until_ready().now_or_never().is_some()
            && self.deployments.wait_until_ready().now_or_never().is_some()
            && self.pods.wait_until_ready().now_or_never().is_some()
            && self
                .analysis_templates
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self
                .cluster_analysis_templates
                .wait_until_ready()
                .now_or_never()
                .is_some()
    }
}

/// The indexes over [`Caches`], fed by the same watch streams.
pub struct Indexes {
    /// ReplicaSets by the name of their controlling Rollout.
    pub replica_sets: Index<ReplicaSet>,
    /// AnalysisRuns by the name of their controlling Rollout.
    pub analysis_runs: Index<AnalysisRun>,
    /// Experiments by the name of their controlling Rollout.
    pub experiments: Index<Experiment>,
    /// Pods by the name of their controlling ReplicaSet.
    pub pods: Index<Pod>,
    /// EndpointSlices by the name of their Service.
    pub endpoint_slices: Index<EndpointSlice>,
    /// Rollouts by the canary and stable Services they name.
    pub rollouts_by_service: Index<Rollout>,
    /// Rollouts by the Deployment their workloadRef names.
    pub rollouts_by_deployment: Index<Rollout>,
    /// Services with a `rollouts-pod-template-hash` selector, by the Rollout their managed-by
    /// annotation names.
    pub services_by_manager: Index<Service>,
}

impl Default for Indexes {
    fn default() -> Self {
        Self {
            replica_sets: Index::new(|rs| controller_named(rs, "Rollout")),
            analysis_runs: Index::new(|run| controller_named(run, "Rollout")),
            experiments: Index::new(|e| controller_named(e, "Rollout")),
            pods: Index::new(|pod| controller_named(pod, "ReplicaSet")),
            endpoint_slices: Index::new(|slice| {
                slice
                    .labels()
                    .get(SERVICE_NAME_LABEL)
                    .cloned()
                    .into_iter()
                    .collect()
            }),
            rollouts_by_service: Index::new(|r| {
                let mut names = managed_services(&r.spec);
                names.dedup();
                names
            }),
            rollouts_by_deployment: Index::new(|r| {
                r.spec
                    .workload_ref
                    .iter()
                    .filter(|w| is_deployment(w.kind.as_deref()))
                    .filter_map(|w| w.name.clone())
                    .collect()
            }),
            services_by_manager: Index::new(|s| managing_rollout(s).into_iter().collect()),
        }
    }
}

impl Caches {
    /// Rollouts in `namespace` that name `service` as their canary or stable Service.
    pub fn rollouts_using_service(
        &self,
        namespace: &str,
        service: &str,
    ) -> Vec<ObjectRef<Rollout>> {
        self.index
            .rollouts_by_service
            .get(namespace, service)
            .iter()
            .map(|name| ObjectRef::new(name).within(namespace))
            .collect()
    }

    /// Follows one changed Service (the shared watch delivers objects, not events: one the
    /// store no longer holds was deleted).
    pub fn service_changed(&self, service: &Service) {
        let event = match self.services.get(&ObjectRef::from_obj(service)) {
            Some(held) => kube::runtime::watcher::Event::Apply(held.as_ref().clone()),
            None => kube::runtime::watcher::Event::Delete(service.clone()),
        };
        self.index.services_by_manager.apply(&event);
    }

    /// Rollouts in `namespace` that name `service`, or whose hash selector it still carries.
    pub fn rollouts_for_service(&self, service: &Service) -> Vec<ObjectRef<Rollout>> {
        let namespace = service.namespace().unwrap_or_default();
        let mut rollouts = self.rollouts_using_service(&namespace, &service.name_any());
        if let Some(name) = managing_rollout(service) {
            let manager = ObjectRef::new(&name).within(&namespace);
            if !rollouts.contains(&manager) {
                rollouts.push(manager);
            }
        }
        rollouts
    }

    /// Rollouts in `namespace` whose workloadRef names Deployment `name`.
    pub fn rollouts_using_deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<ObjectRef<Rollout>> {
        self.index
            .rollouts_by_deployment
            .get(namespace, name)
            .iter()
            .map(|rollout| ObjectRef::new(rollout).within(namespace))
            .collect()
    }

    /// Rollouts a change of template `name` (in `namespace`; `None` for a ClusterAnalysisTemplate)
    /// may concern: those naming it, and those invalid now (a template they reach through another
    /// may be the one missing). Templates change rarely: scanning the cache is cheap enough.
    pub fn rollouts_for_template(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<ObjectRef<Rollout>> {
        let key = (name.to_string(), namespace.is_none());
        self.rollouts
            .state()
            .iter()
            .filter(|r| namespace.is_none() || r.namespace().as_deref() == namespace)
            .filter(|r| {
                analysis_refs(&r.spec).contains(&key)
                    || r.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == INVALID_SPEC && c.status == "True")
                    })
            })
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }

    /// Objects of `store` filed under `key` in `index`, in `namespace`.
    fn indexed<K>(store: &Store<K>, index: &Index<K>, namespace: &str, key: &str) -> Vec<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        index
            .get(namespace, key)
            .iter()
            .filter_map(|name| store.get(&ObjectRef::new(name).within(namespace)))
            .collect()
    }
}

fn is_deployment(kind: Option<&str>) -> bool {
    kind.is_none_or(|k| k == "Deployment")
}

/// The spec the engine plans with: `template` and `selector` taken from the workloadRef's
/// Deployment and `workloadRef` removed, plus what the engine needs to scale that Deployment.
/// When the Deployment is not in the cache, or the Rollout also has a template, the spec keeps
/// its `workloadRef` and the engine reports the Rollout as invalid.
pub fn resolve_spec(
    rollout: &Rollout,
    caches: &Caches,
) -> (RolloutSpec, Option<WorkloadObservation>) {
    let mut spec = rollout.spec.clone();
    let Some(reference) = spec.workload_ref.clone() else {
        return (spec, None);
    };
    // Both a template and a workloadRef: left unresolved, the engine refuses it as Argo does.
    if crate::engine::validate::template_has_content(&spec) {
        return (spec, None);
    }
    let namespace = rollout.namespace().unwrap_or_default();
    let deployment = reference
        .name
        .as_deref()
        .filter(|_| is_deployment(reference.kind.as_deref()))
        .and_then(|name| {
            caches
                .deployments
                .get(&ObjectRef::new(name).within(&namespace))
        });
    let Some(deployment) = deployment else {
        return (spec, None);
    };
    let Some(deployment_spec) = deployment.spec.as_ref() else {
        return (spec, None);
    };
    spec.template = Some(deployment_spec.template.clone());
    if spec.selector.is_none() {
        spec.selector = Some(deployment_spec.selector.clone());
    }
    spec.workload_ref = None;
    let workload = WorkloadObservation {
        scale_down: reference.scale_down.unwrap_or(ScaleDown::Never),
        replicas: deployment_spec.replicas.unwrap_or(1),
        generation: deployment.metadata.generation.unwrap_or_default(),
    };
    (spec, Some(workload))
}

/// The templates the analyses of `spec` name directly, as `(name, clusterScope)`.
fn analysis_refs(spec: &RolloutSpec) -> Vec<(String, bool)> {
    crate::engine::validate::canary_analyses(spec)
        .into_iter()
        .flat_map(|(_, a)| a.templates.as_deref().unwrap_or_default())
        .filter_map(|t| Some((t.template_name.clone()?, t.cluster_scope.unwrap_or(false))))
        .collect()
}

/// The templates `spec`'s analyses reference, nested references included, as the caches hold
/// them; one that is not cached is left out (the engine reports it).
fn analysis_templates(namespace: &str, spec: &RolloutSpec, caches: &Caches) -> AnalysisTemplates {
    let mut found = AnalysisTemplates::new();
    let mut seen = BTreeSet::new();
    let mut pending = analysis_refs(spec);
    while let Some(key) = pending.pop() {
        if !seen.insert(key.clone()) {
            continue;
        }
        let template = if key.1 {
            caches
                .cluster_analysis_templates
                .get(&ObjectRef::new(&key.0))
                .map(|t| t.spec.template.clone())
        } else {
            caches
                .analysis_templates
                .get(&ObjectRef::new(&key.0).within(namespace))
                .map(|t| t.spec.clone())
        };
        if let Some(template) = template {
            pending.extend(
                template
                    .templates
                    .iter()
                    .map(|r| (r.template_name.clone(), r.cluster_scope.unwrap_or(false))),
            );
            found.insert(key, template);
        }
    }
    found
}

/// Whether `owner` is the controller of `object`.
pub fn controlled_by<K: Resource>(object: &K, owner: &Rollout) -> bool {
    let uid = owner.uid();
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The ReplicaSets `rollout` controls, with our not-yet-visible writes applied. `spec` is the
/// resolved spec: the one ReplicaSet this controller creates is its template's.
pub fn replica_sets(
    rollout: &Rollout,
    spec: &RolloutSpec,
    caches: &Caches,
    written: &Fresh<ReplicaSet>,
) -> Vec<Arc<ReplicaSet>> {
    let namespace = rollout.namespace().unwrap_or_default();
    let cached: Vec<Arc<ReplicaSet>> = Caches::indexed(
        &caches.replica_sets,
        &caches.index.replica_sets,
        &namespace,
        &rollout.name_any(),
    )
    .into_iter()
    .filter(|rs| controlled_by(rs.as_ref(), rollout))
    .collect();
    let mut out: Vec<Arc<ReplicaSet>> = cached
        .iter()
        .filter_map(|rs| written.view(&fresh::key(rs.as_ref()), Some(rs.clone())))
        .collect();
    // Created by us and not in the cache yet: only the current template's can be.
    let collision_count = rollout.status.as_ref().and_then(|s| s.collision_count);
    if let Some(template) = &spec.template {
        let name = format!(
            "{}-{}",
            rollout.name_any(),
            hash::pod_template_hash(template, collision_count)
        );
        let key = (namespace.clone(), name);
        let in_cache = cached.iter().any(|rs| fresh::key(rs.as_ref()) == key)
            || caches
                .replica_sets
                .get(&ObjectRef::new(&key.1).within(&key.0))
                .is_some();
        if !in_cache
            && let Some(ours) = written.view(&key, None)
            && controlled_by(ours.as_ref(), rollout)
        {
            out.push(ours);
        }
    }
    out
}

/// Everything the engine reads about `rollout` besides its spec and status.
pub fn observations(
    rollout: &Rollout,
    spec: &RolloutSpec,
    workload: Option<WorkloadObservation>,
    replica_sets: &[Arc<ReplicaSet>],
    caches: &Caches,
    now: Timestamp,
) -> Observations {
    let pods = pods(rollout, spec, replica_sets, caches);
    let namespace = rollout.namespace().unwrap_or_default();
    let collision_count = rollout.status.as_ref().and_then(|s| s.collision_count);
    let current_hash = spec
        .template
        .as_ref()
        .map(|t| hash::pod_template_hash(t, collision_count));
    let replica_sets = replica_sets
        .iter()
        .filter_map(|rs| replica_set(rs, current_hash.as_deref()))
        .collect();

    let mut services = BTreeMap::new();
    for name in managed_services(spec) {
        if let Some(service) = caches
            .services
            .get(&ObjectRef::new(&name).within(&namespace))
        {
            let observation = service_observation(&service, caches);
            services.insert(name, observation);
        }
    }

    let analysis_runs = Caches::indexed(
        &caches.analysis_runs,
        &caches.index.analysis_runs,
        &namespace,
        &rollout.name_any(),
    )
    .into_iter()
    .filter(|r| controlled_by(r.as_ref(), rollout))
    .map(|r| {
        let status = r.status.as_ref();
        AnalysisRunObservation {
            name: r.name_any(),
            phase: status
                .and_then(|s| s.phase)
                .unwrap_or(AnalysisPhase::Pending),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        }
    })
    .collect();

    let managed = managed_services(spec);
    let unreferenced_services = Caches::indexed(
        &caches.services,
        &caches.index.services_by_manager,
        &namespace,
        &rollout.name_any(),
    )
    .iter()
    .filter(|s| managing_rollout(s).as_deref() == Some(rollout.name_any().as_str()))
    .map(|s| s.name_any())
    .filter(|name| !managed.contains(name))
    .collect();
    let experiments = Caches::indexed(
        &caches.experiments,
        &caches.index.experiments,
        &namespace,
        &rollout.name_any(),
    )
    .into_iter()
    .filter(|e| controlled_by(e.as_ref(), rollout))
    .map(|e| {
        let status = e.status.as_ref();
        ExperimentObservation {
            name: e.name_any(),
            phase: status
                .and_then(|s| s.phase)
                .unwrap_or(AnalysisPhase::Pending),
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
            terminating: e.spec.terminate == Some(true),
            templates: status
                .map(|s| {
                    s.template_statuses
                        .iter()
                        .map(template_observation)
                        .collect()
                })
                .unwrap_or_default(),
        }
    })
    .collect();

    Observations {
        now,
        generation: rollout.metadata.generation.unwrap_or(1),
        replica_sets,
        traffic: None,
        services,
        unreferenced_services,
        analysis_runs,
        workload,
        pods,
        traffic_config_error: None,
        analysis_templates: Some(analysis_templates(&namespace, spec, caches)),
        experiments,
    }
}

/// What the engine needs of an Experiment template's status: where its traffic can go.
fn template_observation(status: &TemplateStatus) -> ExperimentTemplateObservation {
    ExperimentTemplateObservation {
        name: status.name.clone(),
        service_name: status.service_name.clone().unwrap_or_default(),
        pod_template_hash: status.pod_template_hash.clone().unwrap_or_default(),
    }
}

/// The pods of the Rollout's ReplicaSets, only while `restartAt` asks for a restart (the rest of
/// the time nothing reads them).
fn pods(
    rollout: &Rollout,
    spec: &RolloutSpec,
    replica_sets: &[Arc<ReplicaSet>],
    caches: &Caches,
) -> Vec<PodObservation> {
    let restarted_at = rollout
        .status
        .as_ref()
        .and_then(|s| s.restarted_at.as_ref());
    if spec.restart_at.is_none() || spec.restart_at.as_ref() == restarted_at {
        return Vec::new();
    }
    let namespace = rollout.namespace().unwrap_or_default();
    replica_sets
        .iter()
        .flat_map(|rs| {
            Caches::indexed(&caches.pods, &caches.index.pods, &namespace, &rs.name_any())
                .into_iter()
                .filter(|pod| {
                    let uid = rs.uid();
                    pod.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
                })
        })
        .filter_map(|pod| {
            Some(PodObservation {
                name: pod.name_any(),
                pod_template_hash: pod.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone(),
                created: pod.meta().creation_timestamp.as_ref()?.0,
                terminating: pod.meta().deletion_timestamp.is_some(),
                ready: pod_ready(&pod),
            })
        })
        .collect()
}

/// A pod as the cache keeps it: metadata and the Ready condition, nothing else.
pub fn slim_pod(pod: &mut Pod) {
    pod.spec = None;
    let ready = pod
        .status
        .take()
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .collect::<Vec<_>>();
    pod.status = Some(PodStatus {
        conditions: Some(ready),
        ..Default::default()
    });
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Sluice's hash of the Rollout template a ReplicaSet runs: set on every ReplicaSet Sluice creates
/// (equal to its `rollouts-pod-template-hash` label) and on one another controller made once its
/// template is found equal (`super::adopt`).
pub const TEMPLATE_HASH_ANNOTATION: &str = "sluice.dev/template-hash";

/// Whether `rs` runs the template whose hash is `hash`: by its label, or as adopted.
pub fn runs_template(rs: &ReplicaSet, hash: &str) -> bool {
    rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str) == Some(hash)
        || rs
            .annotations()
            .get(TEMPLATE_HASH_ANNOTATION)
            .map(String::as_str)
            == Some(hash)
}

fn replica_set(rs: &ReplicaSet, current_hash: Option<&str>) -> Option<ReplicaSetObservation> {
    let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
    let annotations = rs.annotations();
    let status = rs.status.as_ref();
    Some(ReplicaSetObservation {
        matches_current_template: current_hash.is_some_and(|c| runs_template(rs, c)),
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        status_replicas: status.map_or(0, |s| s.replicas),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
        revision: annotations
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        scale_down_deadline: annotations
            .get(SCALE_DOWN_DEADLINE_ANNOTATION)
            .and_then(|d| d.parse().ok()),
        // Unreadable counts as none: the engine writes it again (keys it cannot know stay).
        ephemeral_metadata: annotations
            .get(EPHEMERAL_METADATA_ANNOTATION)
            .and_then(|m| serde_json::from_str(m).ok()),
        pod_template_hash: hash,
    })
}

/// The Services whose selectors the Rollout manages: canary and stable (and pingPong's two), or
/// active and preview.
fn managed_services(spec: &RolloutSpec) -> Vec<String> {
    let canary = spec.strategy.canary.iter().flat_map(|c| {
        let ping_pong = c.ping_pong.as_ref();
        [
            c.canary_service.clone(),
            c.stable_service.clone(),
            ping_pong.map(|p| p.ping_service.clone()),
            ping_pong.map(|p| p.pong_service.clone()),
        ]
    });
    let blue_green = spec
        .strategy
        .blue_green
        .iter()
        .flat_map(|b| [Some(b.active_service.clone()), b.preview_service.clone()]);
    canary.chain(blue_green).flatten().collect()
}

/// The Rollout a Service's managed-by annotation names, when the Service still carries a
/// `rollouts-pod-template-hash` selector.
fn managing_rollout(service: &Service) -> Option<String> {
    let has_hash = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| s.contains_key(POD_TEMPLATE_HASH_LABEL));
    has_hash
        .then(|| {
            service
                .annotations()
                .get(MANAGED_BY_ROLLOUTS_ANNOTATION)
                .cloned()
        })
        .flatten()
}

fn service_observation(service: &Service, caches: &Caches) -> ServiceObservation {
    let name = service.name_any();
    let namespace = service.namespace();
    let namespace = namespace.unwrap_or_default();
    let slices = Caches::indexed(
        &caches.endpoint_slices,
        &caches.index.endpoint_slices,
        &namespace,
        &name,
    );
    let ready_endpoints = slices
        .iter()
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
        .flat_map(|s| s.endpoints.iter())
        // An endpoint without a ready condition is ready (the EndpointSlice API's rule).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count();
    ServiceObservation {
        selector_hash: service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(POD_TEMPLATE_HASH_LABEL))
            .cloned(),
        ready_endpoints: i32::try_from(ready_endpoints).unwrap_or(i32::MAX),
    }
}
