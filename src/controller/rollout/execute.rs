//! Carries out the engine's actions for one Rollout against the cluster, each idempotently:
//! creating what already exists, deleting what is gone or setting what is already set succeeds.
//! Objects are named, labelled and owned as Argo Rollouts does, so Argo's CLI, UI and Argo CD see
//! them as their own.
//!
//! This module must never choose an action or a value: every number and name comes from the plan
//! (and the resolved spec for the pod template). Traffic actions go through the Rollout's
//! routers (`super::traffic`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Error;
use super::ephemeral;
use super::fresh::{self, Fresh};
use super::observe::TEMPLATE_HASH_ANNOTATION;
use crate::api::argo::analysis::{AnalysisRun, AnalysisTemplateSpec};
use crate::api::argo::experiment::Experiment;
use crate::api::argo::rollout::{
    EPHEMERAL_METADATA_ANNOTATION, MANAGED_BY_ROLLOUTS_ANNOTATION, POD_TEMPLATE_HASH_LABEL,
    PodTemplateMetadata, REVISION_ANNOTATION, Rollout, RolloutSpec, SCALE_DOWN_DEADLINE_ANNOTATION,
};
use crate::controller::FIELD_MANAGER;
use crate::controller::template_fetch::{self, FetchError};
use crate::engine::analysis::args;
use crate::engine::{Action, AnalysisRunRequest, ExperimentRequest};

/// What one Rollout's actions need.
pub struct Target<'a> {
    pub client: &'a kube::Client,
    pub rollout: &'a Rollout,
    /// The spec the engine planned with (template resolved from workloadRef).
    pub spec: &'a RolloutSpec,
    pub replica_sets: &'a Fresh<ReplicaSet>,
    pub replica_set_cache: &'a Store<ReplicaSet>,
    pub analysis_runs: &'a Fresh<AnalysisRun>,
    pub analysis_run_cache: &'a Store<AnalysisRun>,
    pub experiment_cache: &'a Store<Experiment>,
    /// The Rollout's traffic routers, if it names any.
    pub traffic: Option<&'a super::traffic::Traffic>,
}

/// The ReplicaSet of `spec`'s pod template with hash `hash`, named, labelled and owned as Argo
/// Rollouts makes it (plus Sluice's template-hash annotation).
pub fn replica_set(
    rollout: &Rollout,
    spec: &RolloutSpec,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> ReplicaSet {
    let mut template = spec.template.clone().unwrap_or_default();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    meta.labels = Some(labels.clone());
    let mut selector = spec.selector.clone().unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", rollout.name_any())),
            namespace: rollout.namespace(),
            labels: Some(labels),
            annotations: Some(
                [
                    (REVISION_ANNOTATION.to_string(), revision.to_string()),
                    (TEMPLATE_HASH_ANNOTATION.to_string(), hash.to_string()),
                ]
                .into(),
            ),
            owner_references: rollout.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

impl Target<'_> {
    fn namespace(&self) -> String {
        self.rollout.namespace().unwrap_or_default()
    }

    fn name(&self) -> String {
        self.rollout.name_any()
    }

    fn rs_name(&self, hash: &str) -> String {
        format!("{}-{hash}", self.name())
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    /// Carry out one action (Events are published by the caller).
    pub async fn execute(&self, action: &Action) -> Result<(), Error> {
        match action {
            Action::CreateReplicaSet {
                pod_template_hash,
                replicas,
                revision,
                ephemeral_metadata,
            } => {
                let mut rs = replica_set(
                    self.rollout,
                    self.spec,
                    pod_template_hash,
                    *replicas,
                    *revision,
                );
                if let Some(template) = rs.spec.as_mut().and_then(|s| s.template.as_mut()) {
                    ephemeral::add_to_new(
                        &mut rs.metadata,
                        template.metadata.get_or_insert_with(Default::default),
                        ephemeral_metadata.as_ref(),
                    );
                }
                self.create_replica_set(rs).await
            }
            Action::SetEphemeralMetadata {
                pod_template_hash,
                previous,
                desired,
            } => {
                self.set_ephemeral_metadata(pod_template_hash, previous.as_ref(), desired.as_ref())
                    .await
            }
            Action::ScaleReplicaSet {
                pod_template_hash,
                replicas,
            } => {
                let patch = json!({"spec": {"replicas": replicas}});
                self.patch_replica_set(pod_template_hash, &patch).await
            }
            Action::SetRevision {
                pod_template_hash,
                revision,
            } => {
                let value = revision.to_string();
                let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: value}}});
                self.patch_replica_set(pod_template_hash, &patch).await
            }
            Action::SetScaleDownDeadline {
                pod_template_hash,
                deadline,
            } => {
                let value = deadline.map(|d| d.to_string());
                let patch =
                    json!({"metadata": {"annotations": {SCALE_DOWN_DEADLINE_ANNOTATION: value}}});
                self.patch_replica_set(pod_template_hash, &patch).await
            }
            Action::DeleteReplicaSet { pod_template_hash } => {
                self.delete_replica_set(pod_template_hash).await
            }
            Action::SetServiceSelector {
                service,
                pod_template_hash,
            } => self.set_selector(service, pod_template_hash).await,
            Action::ReleaseService { service } => self.release_service(service).await,
            Action::CreateAnalysisRun(request) => self.create_analysis_run(request).await,
            Action::TerminateAnalysisRun { name } => self.terminate(name).await,
            Action::CreateExperiment(request) => self.create_experiment(request).await,
            Action::TerminateExperiment { name } => self.terminate_experiment(name).await,
            Action::ScaleWorkload { replicas } => self.scale_workload(*replicas).await,
            Action::RestartPod { name } => self.evict(name).await,
            Action::SetWeight { .. }
            | Action::SetHeaderRoute { .. }
            | Action::SetMirrorRoute { .. }
            | Action::RemoveManagedRoutes
            | Action::ReleaseTraffic => match self.traffic {
                Some(traffic) => traffic
                    .execute(action)
                    .await
                    .map_err(|source| Error::Traffic {
                        namespace: self.namespace(),
                        name: self.name(),
                        source,
                    }),
                None => Ok(()),
            },
            Action::Event(_) => Ok(()),
        }
    }

    /// The name the template's hash gives is taken by a ReplicaSet that is not ours: count a
    /// collision in `status.collisionCount`, which changes the hash (as Argo Rollouts and
    /// Deployments do), and plan again. The write is conditioned on the resourceVersion planned
    /// from, so a stale cache can never count the same collision twice.
    async fn bump_collision_count(&self, taken: &str) -> Result<(), Error> {
        let (namespace, name) = (self.namespace(), self.name());
        let count = self
            .rollout
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0)
            + 1;
        tracing::info!(rollout = %name, %namespace, replica_set = %taken, collision_count = count,
            "the ReplicaSet name is taken by one this Rollout does not control: counting a hash collision");
        let patch = json!({
            "metadata": {"resourceVersion": self.rollout.resource_version()},
            "status": {"collisionCount": count},
        });
        let api: Api<Rollout> = Api::namespaced(self.client.clone(), &namespace);
        match api
            .patch_status(&name, &Self::params(), &Patch::Merge(&patch))
            .await
        {
            // Either way the Rollout is planned again, from the version that counts it.
            Ok(_) => Err(Error::Conflict { namespace, name }),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict { namespace, name }),
            Err(source) => Err(Error::CollisionCount {
                namespace,
                name,
                replica_set: taken.to_string(),
                source,
            }),
        }
    }

    /// Template first (new pods), then the existing pods, then the record (see `ephemeral`).
    async fn set_ephemeral_metadata(
        &self,
        hash: &str,
        previous: Option<&PodTemplateMetadata>,
        desired: Option<&PodTemplateMetadata>,
    ) -> Result<(), Error> {
        let metadata = ephemeral::metadata_patch(previous, desired);
        let template = json!({"spec": {"template": {"metadata": metadata}}});
        self.patch_replica_set(hash, &template).await?;
        ephemeral::patch_pods(
            self.client,
            &self.namespace(),
            &self.rs_name(hash),
            hash,
            &self.name(),
            &metadata,
            &Self::params(),
        )
        .await?;
        let record = desired.map(|d| ephemeral::record(Some(d)));
        let annotation =
            json!({"metadata": {"annotations": {EPHEMERAL_METADATA_ANNOTATION: record}}});
        self.patch_replica_set(hash, &annotation).await
    }

    async fn create_replica_set(&self, rs: ReplicaSet) -> Result<(), Error> {
        let namespace = self.namespace();
        let name = rs.name_any();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &rs).await {
            Ok(mut created) => {
                // Kept until the watch catches up: without managedFields, like the cache.
                created.managed_fields_mut().clear();
                self.replica_sets
                    .wrote(fresh::key(&created), None, Some(created));
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Created by an earlier reconcile whose watch event has not arrived, or by
                // someone else: only the former is ours to use.
                let existing =
                    api.get_opt(&name)
                        .await
                        .map_err(|source| Error::CreateReplicaSet {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            source,
                        })?;
                match existing {
                    Some(rs) if super::observe::controlled_by(&rs, self.rollout) => Ok(()),
                    _ => self.bump_collision_count(&name).await,
                }
            }
            Err(source) => Err(Error::CreateReplicaSet {
                namespace,
                name,
                source,
            }),
        }
    }

    async fn patch_replica_set(&self, hash: &str, patch: &serde_json::Value) -> Result<(), Error> {
        let namespace = self.namespace();
        let name = self.rs_name(hash);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let key = (namespace.clone(), name.clone());
        match api
            .patch(&name, &Self::params(), &Patch::Merge(patch))
            .await
        {
            Ok(mut patched) => {
                patched.managed_fields_mut().clear();
                let cached = self.cached_version(&key);
                if cached != patched.resource_version() {
                    self.replica_sets.wrote(key, cached, Some(patched));
                }
                Ok(())
            }
            Err(source) => {
                self.replica_sets.forget(&key);
                Err(Error::PatchReplicaSet {
                    namespace,
                    name,
                    source,
                })
            }
        }
    }

    /// The version the watch cache holds now: until it changes, what we wrote is fresher.
    fn cached_version(&self, key: &fresh::Key) -> Option<String> {
        self.replica_set_cache
            .get(&ObjectRef::new(&key.1).within(&key.0))
            .and_then(|rs| rs.resource_version())
    }

    async fn delete_replica_set(&self, hash: &str) -> Result<(), Error> {
        let namespace = self.namespace();
        let name = self.rs_name(hash);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::DeleteReplicaSet {
                    namespace,
                    name,
                    source,
                });
            }
        }
        let key = (namespace, name);
        let cached = self.cached_version(&key);
        self.replica_sets.wrote(key, cached, None);
        Ok(())
    }

    /// Argo merge-patches only the hash key: a Service's selector is an atomic map for
    /// server-side apply, so applying one key would take over (and drop) the others.
    async fn set_selector(&self, service: &str, hash: &str) -> Result<(), Error> {
        let namespace = self.namespace();
        let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({
            "metadata": {"annotations": {MANAGED_BY_ROLLOUTS_ANNOTATION: self.name()}},
            "spec": {"selector": {POD_TEMPLATE_HASH_LABEL: hash}},
        });
        api.patch(service, &Self::params(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| Error::SetServiceSelector {
                namespace,
                name: service.to_string(),
                rollout: self.name(),
                source,
            })
    }

    /// Argo's `removeSelectorAndManagedByPatch`: a Service gone meanwhile is fine.
    async fn release_service(&self, service: &str) -> Result<(), Error> {
        let namespace = self.namespace();
        let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({
            "metadata": {"annotations": {MANAGED_BY_ROLLOUTS_ANNOTATION: null}},
            "spec": {"selector": {POD_TEMPLATE_HASH_LABEL: null}},
        });
        match api
            .patch(service, &Self::params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(Error::ReleaseService {
                namespace,
                name: service.to_string(),
                rollout: self.name(),
                source,
            }),
        }
    }

    async fn scale_workload(&self, replicas: i32) -> Result<(), Error> {
        let namespace = self.namespace();
        let name = self
            .rollout
            .spec
            .workload_ref
            .as_ref()
            .and_then(|w| w.name.clone())
            .unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({"spec": {"replicas": replicas}});
        api.patch(&name, &Self::params(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| Error::ScaleWorkload {
                namespace,
                name,
                source,
            })
    }

    /// Argo evicts rather than deletes, so PodDisruptionBudgets are respected: a refusal (429)
    /// is not an error, the engine asks again on its next look.
    async fn evict(&self, name: &str) -> Result<(), Error> {
        let namespace = self.namespace();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match api.evict(name, &EvictParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 429 => {
                tracing::debug!(rollout = %self.name(), pod = %name, reason = %e.message, "eviction not done now");
                Ok(())
            }
            Err(source) => Err(Error::EvictPod {
                namespace,
                name: name.to_string(),
                rollout: self.name(),
                source,
            }),
        }
    }

    /// `spec.terminate: true` on an AnalysisRun or Experiment; one already gone is fine.
    async fn set_terminate<K>(&self, name: &str) -> Result<(), kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace());
        let patch = json!({"spec": {"terminate": true}});
        match api
            .patch(name, &Self::params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(source),
        }
    }

    async fn terminate(&self, name: &str) -> Result<(), Error> {
        match self.set_terminate::<AnalysisRun>(name).await {
            Ok(()) => Ok(()),
            Err(source) => Err(Error::TerminateAnalysisRun {
                namespace: self.namespace(),
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Create the Experiment of an experiment step from the stable and canary ReplicaSets (both
    /// exist: the engine asks only then; one not found yet waits for the next plan).
    async fn create_experiment(&self, request: &ExperimentRequest) -> Result<(), Error> {
        let namespace = self.namespace();
        if self
            .experiment_cache
            .get(&ObjectRef::new(&request.name).within(&namespace))
            .is_some()
        {
            return Ok(());
        }
        let step = self
            .spec
            .strategy
            .canary
            .as_ref()
            .and_then(|c| c.steps.as_ref()?.get(request.step_index as usize))
            .and_then(|s| s.experiment.as_ref());
        // The watch cache keeps ReplicaSets without their pod templates: read the two once.
        let replica_sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let read = |hash: &str| {
            let name = self.rs_name(hash);
            let api = replica_sets.clone();
            async move {
                api.get_opt(&name)
                    .await
                    .map_err(|source| Error::ReadExperimentReplicaSet {
                        namespace: self.namespace(),
                        name,
                        source,
                    })
            }
        };
        let stable = read(&request.stable_hash).await?;
        let canary = read(&request.canary_hash).await?;
        let (Some(step), Some(stable), Some(canary)) = (step, stable, canary) else {
            tracing::debug!(rollout = %self.name(), experiment = %request.name, "experiment waits for its ReplicaSets");
            return Ok(());
        };
        let experiment = super::experiment::build(self.rollout, step, request, &stable, &canary)
            .map_err(|source| Error::BuildExperiment {
                namespace: namespace.clone(),
                name: request.name.clone(),
                rollout: self.name(),
                source,
            })?;
        let api: Api<Experiment> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &experiment).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(Error::CreateExperiment {
                namespace,
                name: request.name.clone(),
                source,
            }),
        }
    }

    async fn terminate_experiment(&self, name: &str) -> Result<(), Error> {
        match self.set_terminate::<Experiment>(name).await {
            Ok(()) => Ok(()),
            Err(source) => Err(Error::TerminateExperiment {
                namespace: self.namespace(),
                name: name.to_string(),
                source,
            }),
        }
    }

    async fn create_analysis_run(&self, request: &AnalysisRunRequest) -> Result<(), Error> {
        let namespace = self.namespace();
        let api: Api<AnalysisRun> = Api::namespaced(self.client.clone(), &namespace);
        // Most calls are repeats for a run already created (the engine asks again until the
        // watch shows it): skip the template reads then.
        let key = (namespace.clone(), request.name.clone());
        let cached = self
            .analysis_run_cache
            .get(&ObjectRef::new(&request.name).within(&namespace));
        if cached.is_some() || self.analysis_runs.view(&key, None).is_some() {
            return Ok(());
        }
        let templates = self.templates(request).await?;
        let mut request = request.clone();
        let rollout_json = serde_json::to_value(self.rollout).unwrap_or_default();
        let build = args::resolve_field_refs(&mut request.args, &rollout_json)
            .and_then(|()| args::build_run_spec(&request, &templates));
        let spec = build.map_err(|source| Error::BuildAnalysisRun {
            namespace: namespace.clone(),
            name: request.name.clone(),
            rollout: self.name(),
            source,
        })?;
        let mut annotations = request.annotations.clone();
        annotations.insert(REVISION_ANNOTATION.into(), request.revision.to_string());
        let mut run = AnalysisRun::new(&request.name, spec);
        run.metadata.namespace = Some(namespace.clone());
        // Argo labels the runs a Rollout creates with the Rollout's controller instance.
        let mut labels = request.labels.clone();
        if let Some(id) = self
            .rollout
            .labels()
            .get(crate::controller::instance::LABEL)
        {
            labels.insert(crate::controller::instance::LABEL.into(), id.clone());
        }
        run.metadata.labels = Some(labels);
        run.metadata.annotations = Some(annotations);
        run.metadata.owner_references = self.rollout.controller_owner_ref(&()).map(|o| vec![o]);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &run).await {
            Ok(mut created) => {
                created.managed_fields_mut().clear();
                self.analysis_runs.wrote(key, None, Some(created));
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(Error::CreateAnalysisRun {
                namespace,
                name: request.name.clone(),
                source,
            }),
        }
    }

    /// The templates a request names and everything they reference, read once per run creation.
    async fn templates(
        &self,
        request: &AnalysisRunRequest,
    ) -> Result<Vec<(String, AnalysisTemplateSpec)>, Error> {
        let roots = args::request_templates(request);
        template_fetch::fetch(self.client, &self.namespace(), &roots)
            .await
            .map_err(|e| match e {
                FetchError::Args(source) => Error::BuildAnalysisRun {
                    namespace: self.namespace(),
                    name: request.name.clone(),
                    rollout: self.name(),
                    source,
                },
                FetchError::NotFound {
                    kind,
                    namespace,
                    name,
                } => Error::TemplateNotFound {
                    kind,
                    namespace,
                    name,
                    rollout: self.name(),
                },
                FetchError::Read {
                    kind,
                    namespace,
                    name,
                    source,
                } => Error::ReadTemplate {
                    kind,
                    namespace,
                    name,
                    source,
                },
            })
    }
}
