//! Carries out the experiment engine's actions for one Experiment, each idempotently. Objects are
//! named, annotated and owned as Argo's experiment controller makes them (`<experiment>-<template>`,
//! `experiment.argoproj.io/name` and `template-name`), plus Sluice's `sluice.dev/experiment` and
//! `sluice.dev/experiment-template` labels so a query can select each template's pods.
//!
//! This module must never choose an action or a value: every number and name comes from the plan
//! and the Experiment's spec.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Error;
use crate::api::argo::analysis::AnalysisRun;
use crate::api::argo::experiment::{
    EXPERIMENT_NAME_ANNOTATION, EXPERIMENT_NAME_LABEL, EXPERIMENT_TEMPLATE_LABEL,
    EXPERIMENT_TEMPLATE_NAME_ANNOTATION, Experiment, ExperimentTemplate,
};
use crate::api::argo::rollout::{POD_TEMPLATE_HASH_LABEL, SCALE_DOWN_DEADLINE_ANNOTATION};
use crate::controller::FIELD_MANAGER;
use crate::controller::template_fetch;
use crate::engine::analysis::args::{self, RunCaller};
use crate::engine::experiment::{Action, RunRequest, replica_set_name};

/// What one Experiment's actions need.
pub struct Target<'a> {
    pub client: &'a kube::Client,
    pub experiment: &'a Experiment,
}

impl Target<'_> {
    fn namespace(&self) -> String {
        self.experiment.namespace().unwrap_or_default()
    }

    fn name(&self) -> String {
        self.experiment.name_any()
    }

    fn rs_name(&self, template: &str) -> String {
        replica_set_name(&self.name(), template)
    }

    fn template(&self, name: &str) -> Option<&ExperimentTemplate> {
        self.experiment
            .spec
            .templates
            .iter()
            .find(|t| t.name == name)
    }

    fn write_error(&self, what: String, source: kube::Error) -> Error {
        Error::Write {
            what,
            namespace: self.namespace(),
            name: self.name(),
            source,
        }
    }

    /// Carry out one action (Events are published by the caller).
    pub async fn execute(&self, action: &Action) -> Result<(), Error> {
        match action {
            Action::CreateReplicaSet {
                template,
                pod_template_hash,
                replicas,
            } => match self.template(template) {
                Some(t) => {
                    self.create_replica_set(self.replica_set(t, pod_template_hash, *replicas))
                        .await
                }
                None => Ok(()),
            },
            Action::ScaleReplicaSet { template, replicas } => {
                let patch = json!({"spec": {"replicas": replicas}});
                self.patch_replica_set(template, &patch).await
            }
            Action::SetScaleDownDeadline { template, deadline } => {
                let value = deadline.map(|d| d.to_string());
                let patch =
                    json!({"metadata": {"annotations": {SCALE_DOWN_DEADLINE_ANNOTATION: value}}});
                self.patch_replica_set(template, &patch).await
            }
            Action::CreateService {
                template,
                service,
                pod_template_hash,
            } => match self.template(template) {
                Some(t) => self.create_service(t, service, pod_template_hash).await,
                None => Ok(()),
            },
            Action::DeleteService { service, .. } => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace());
                match api.delete(service, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(source) => {
                        Err(self.write_error(format!("deleting Service {service}"), source))
                    }
                }
            }
            Action::CreateAnalysisRun(request) => self.create_analysis_run(request).await,
            Action::TerminateAnalysisRun { name } => {
                let api: Api<AnalysisRun> = Api::namespaced(self.client.clone(), &self.namespace());
                let patch = Patch::Merge(json!({"spec": {"terminate": true}}));
                match api.patch(name, &params(), &patch).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(source) => {
                        Err(self.write_error(format!("terminating AnalysisRun {name}"), source))
                    }
                }
            }
            Action::Event(_) => Ok(()),
        }
    }

    /// Labels of everything made for `template`: the selector's plus Sluice's experiment labels.
    fn object_labels(&self, template: &str, hash: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string()),
            (EXPERIMENT_NAME_LABEL.to_string(), self.name()),
            (EXPERIMENT_TEMPLATE_LABEL.to_string(), template.to_string()),
        ])
    }

    fn annotations(&self, template: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (EXPERIMENT_NAME_ANNOTATION.to_string(), self.name()),
            (
                EXPERIMENT_TEMPLATE_NAME_ANNOTATION.to_string(),
                template.to_string(),
            ),
        ])
    }

    /// The template's ReplicaSet, as Argo's `newReplicaSetFromTemplate` makes it.
    fn replica_set(&self, template: &ExperimentTemplate, hash: &str, replicas: i32) -> ReplicaSet {
        let mut pods = crate::engine::experiment::without_hash_label(&template.template);
        let meta = pods.metadata.get_or_insert_with(Default::default);
        let mut labels = meta.labels.clone().unwrap_or_default();
        labels.extend(self.object_labels(&template.name, hash));
        meta.labels = Some(labels.clone());
        let mut selector = template.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(self.rs_name(&template.name)),
                namespace: self.experiment.namespace(),
                labels: Some(labels),
                annotations: Some(self.annotations(&template.name)),
                owner_references: self.experiment.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: template.min_ready_seconds,
                selector,
                template: Some(pods),
            }),
            status: None,
        }
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
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Created by an earlier reconcile whose watch event has not arrived, or by
                // someone else: only the former is ours to use.
                let existing = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| self.write_error(format!("reading ReplicaSet {name}"), e))?;
                match existing {
                    Some(rs) if super::controlled_by(&rs, self.experiment) => Ok(()),
                    _ => Err(Error::NotOurs {
                        namespace,
                        replica_set: name,
                        experiment: self.name(),
                    }),
                }
            }
            Err(source) => Err(self.write_error(format!("creating ReplicaSet {name}"), source)),
        }
    }

    async fn patch_replica_set(
        &self,
        template: &str,
        patch: &serde_json::Value,
    ) -> Result<(), Error> {
        let name = self.rs_name(template);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace());
        match api.patch(&name, &params(), &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(self.write_error(format!("patching ReplicaSet {name}"), source)),
        }
    }

    /// A Service selecting the template's pods, with its containers' ports (Argo's
    /// `CreateService`).
    async fn create_service(
        &self,
        template: &ExperimentTemplate,
        name: &str,
        hash: &str,
    ) -> Result<(), Error> {
        let ports: Vec<ServicePort> = template
            .template
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| ServicePort {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: p.container_port,
                target_port: Some(IntOrString::Int(p.container_port)),
                ..Default::default()
            })
            .collect();
        let mut selector = template.selector.match_labels.clone().unwrap_or_default();
        selector.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
        let service = Service {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: self.experiment.namespace(),
                labels: Some(self.object_labels(&template.name, hash)),
                annotations: Some(self.annotations(&template.name)),
                owner_references: self.experiment.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &service).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(self.write_error(format!("creating Service {name}"), source)),
        }
    }

    async fn create_analysis_run(&self, request: &RunRequest) -> Result<(), Error> {
        let namespace = self.namespace();
        let roots = [crate::api::argo::analysis::AnalysisTemplateRef {
            template_name: request.template.0.clone(),
            cluster_scope: request.template.1.then_some(true),
        }];
        let what = || format!("creating AnalysisRun {}", request.name);
        let templates = template_fetch::fetch(self.client, &namespace, &roots)
            .await
            .map_err(|e| self.build_error(&request.name, e.to_string()))?;
        let caller = RunCaller {
            name: "the Experiment's analysis",
            args: request.args.clone(),
            dry_run: &request.dry_run,
            measurement_retention: &request.measurement_retention,
        };
        let spec = args::build_run_spec_for(&caller, &templates)
            .map_err(|e| self.build_error(&request.name, e.to_string()))?;
        let mut run = AnalysisRun::new(&request.name, spec);
        run.metadata.namespace = Some(namespace.clone());
        let mut labels = request.labels.clone();
        if let Some(id) = self
            .experiment
            .labels()
            .get(crate::controller::instance::LABEL)
        {
            labels.insert(crate::controller::instance::LABEL.into(), id.clone());
        }
        run.metadata.labels = Some(labels);
        run.metadata.annotations = Some(request.annotations.clone());
        run.metadata.owner_references = self.experiment.controller_owner_ref(&()).map(|o| vec![o]);
        let api: Api<AnalysisRun> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &run).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(self.write_error(what(), source)),
        }
    }

    fn build_error(&self, run: &str, message: String) -> Error {
        Error::BuildAnalysisRun {
            namespace: self.namespace(),
            name: self.name(),
            run: run.to_string(),
            message,
        }
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}
