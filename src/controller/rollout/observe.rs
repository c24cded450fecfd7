//! Reads the cluster for one Rollout, from watch caches only (no request per reconcile): the
//! ReplicaSets and AnalysisRuns it owns, the Services it names and their ready endpoints, and the
//! Deployment its `workloadRef` names. Turns them into the engine's [`Observations`].
//!
//! This module must never write to the cluster or decide what to do with what it sees.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::fresh::{self, Fresh};
use crate::api::argo::analysis::AnalysisRun;
use crate::api::argo::rollout::{
    POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout, RolloutSpec,
    SCALE_DOWN_DEADLINE_ANNOTATION, ScaleDown,
};
use crate::engine::{
    AnalysisPhase, AnalysisRunObservation, Observations, ReplicaSetObservation, ServiceObservation,
    WorkloadObservation, hash,
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
    pub deployments: Store<Deployment>,
}

impl Caches {
    /// Rollouts in `namespace` that name `service` as their canary or stable Service.
    pub fn rollouts_using_service(
        &self,
        namespace: &str,
        service: &str,
    ) -> Vec<ObjectRef<Rollout>> {
        self.rollouts
            .state()
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace))
            .filter(|r| {
                r.spec.strategy.canary.as_ref().is_some_and(|c| {
                    c.canary_service.as_deref() == Some(service)
                        || c.stable_service.as_deref() == Some(service)
                })
            })
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }

    /// Rollouts in `namespace` whose workloadRef names Deployment `name`.
    pub fn rollouts_using_deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<ObjectRef<Rollout>> {
        self.rollouts
            .state()
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace))
            .filter(|r| {
                r.spec.workload_ref.as_ref().is_some_and(|w| {
                    w.name.as_deref() == Some(name) && is_deployment(w.kind.as_deref())
                })
            })
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}

fn is_deployment(kind: Option<&str>) -> bool {
    kind.is_none_or(|k| k == "Deployment")
}

/// The spec the engine plans with: `template` and `selector` taken from the workloadRef's
/// Deployment and `workloadRef` removed, plus what the engine needs to scale that Deployment.
/// When the Deployment is not in the cache, the spec keeps its `workloadRef` and the engine
/// reports the Rollout as invalid.
pub fn resolve_spec(
    rollout: &Rollout,
    caches: &Caches,
) -> (RolloutSpec, Option<WorkloadObservation>) {
    let mut spec = rollout.spec.clone();
    let Some(reference) = spec.workload_ref.clone() else {
        return (spec, None);
    };
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
    };
    (spec, Some(workload))
}

/// Whether `owner` is the controller of `object`.
pub fn controlled_by<K: Resource>(object: &K, owner: &Rollout) -> bool {
    let uid = owner.uid();
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The ReplicaSets `rollout` controls, with our not-yet-visible writes applied.
pub fn replica_sets(
    rollout: &Rollout,
    caches: &Caches,
    written: &Fresh<ReplicaSet>,
) -> Vec<Arc<ReplicaSet>> {
    let namespace = rollout.namespace();
    let cached: Vec<Arc<ReplicaSet>> = caches
        .replica_sets
        .state()
        .into_iter()
        .filter(|rs| rs.namespace() == namespace && controlled_by(rs.as_ref(), rollout))
        .collect();
    let keys: HashSet<fresh::Key> = cached.iter().map(|rs| fresh::key(rs.as_ref())).collect();
    let mut out: Vec<Arc<ReplicaSet>> = cached
        .into_iter()
        .filter_map(|rs| written.view(&fresh::key(rs.as_ref()), Some(rs)))
        .collect();
    out.extend(written.created_since(
        |rs| rs.namespace() == namespace && controlled_by(rs, rollout),
        |key| {
            keys.contains(key)
                || caches
                    .replica_sets
                    .get(&ObjectRef::new(&key.1).within(&key.0))
                    .is_some()
        },
    ));
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
    if let Some(canary) = &spec.strategy.canary {
        for name in [&canary.canary_service, &canary.stable_service]
            .into_iter()
            .flatten()
        {
            if let Some(service) = caches
                .services
                .get(&ObjectRef::new(name).within(&namespace))
            {
                services.insert(name.clone(), service_observation(&service, caches));
            }
        }
    }

    let analysis_runs = caches
        .analysis_runs
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(&namespace) && controlled_by(r.as_ref(), rollout)
        })
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

    Observations {
        now,
        generation: rollout.metadata.generation.unwrap_or(1),
        replica_sets,
        traffic: None,
        services,
        analysis_runs,
        workload,
    }
}

fn replica_set(rs: &ReplicaSet, current_hash: Option<&str>) -> Option<ReplicaSetObservation> {
    let hash = rs.labels().get(POD_TEMPLATE_HASH_LABEL)?.clone();
    let annotations = rs.annotations();
    let status = rs.status.as_ref();
    Some(ReplicaSetObservation {
        matches_current_template: current_hash == Some(hash.as_str()),
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
        pod_template_hash: hash,
    })
}

fn service_observation(service: &Service, caches: &Caches) -> ServiceObservation {
    let name = service.name_any();
    let namespace = service.namespace();
    let ready_endpoints = caches
        .endpoint_slices
        .state()
        .iter()
        .filter(|s| s.namespace() == namespace && s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
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
