//! The Experiment controller: observes each Experiment's ReplicaSets, Services and AnalysisRuns
//! through watch caches, runs the pure experiment engine (`crate::engine::experiment`), executes
//! its actions and writes the status it returns.
//!
//! Everything an Experiment creates carries its controller ownerReference, so deleting the
//! Experiment garbage-collects its ReplicaSets, Services and AnalysisRuns. Status is written
//! through the main resource or `/status`, as the installed CRD serves (Argo's has no
//! subresource), after the actions, so a crash in between replans the same actions.
//!
//! This module must never decide anything: phases, replica counts, names of runs and deadlines
//! all come from the engine.

mod execute;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use super::Shared;
use super::fresh::{self, Fresh};
use super::status_route::StatusRoute;
use crate::api::argo::analysis::AnalysisRun;
use crate::api::argo::experiment::{
    EXPERIMENT_NAME_LABEL, EXPERIMENT_TEMPLATE_NAME_ANNOTATION, Experiment, ExperimentStatus,
};
use crate::api::argo::rollout::{POD_TEMPLATE_HASH_LABEL, SCALE_DOWN_DEADLINE_ANNOTATION};
use crate::engine::ReplicaSetObservation;
use crate::engine::experiment::{self, Action, Observed};

/// Errors of one reconcile; the Experiment is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of Experiment {namespace}/{name}: {source}")]
    PatchStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{what} for Experiment {namespace}/{name}: {source}")]
    Write {
        what: String,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("building AnalysisRun {namespace}/{run} for Experiment {name}: {message}")]
    BuildAnalysisRun {
        namespace: String,
        name: String,
        run: String,
        message: String,
    },
    #[error(
        "ReplicaSet {namespace}/{replica_set} exists and is not Experiment {experiment}'s: rename the template or delete that ReplicaSet"
    )]
    NotOurs {
        namespace: String,
        replica_set: String,
        experiment: String,
    },
}

/// Shared state of the Experiment controller.
struct Ctx {
    shared: Shared,
    replica_sets: Store<ReplicaSet>,
    services: Store<Service>,
    analysis_runs: Store<AnalysisRun>,
    /// Our status writes, trusted over an older cached copy (no transition announced twice).
    written: Fresh<Experiment>,
    status_route: StatusRoute,
}

/// Watches Experiments (and what they own) in `shared.namespace` until `shutdown` resolves.
pub async fn run(shared: Shared, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    tracing::info!(namespace = ?shared.namespace, "experiment controller starting");
    let labelled = || {
        watcher::Config::default()
            .any_semantic()
            .labels(EXPERIMENT_NAME_LABEL)
    };
    let (replica_sets, rs_writer) = reflector::store();
    let rs_events = reflector::reflector(
        rs_writer,
        watcher(shared.api::<ReplicaSet>(), labelled()).default_backoff(),
    )
    .applied_objects();
    let (services, svc_writer) = reflector::store();
    let svc_events = reflector::reflector(
        svc_writer,
        watcher(shared.api::<Service>(), labelled()).default_backoff(),
    )
    .applied_objects();
    let (analysis_runs, run_writer) = reflector::store();
    let run_events = reflector::reflector(
        run_writer,
        watcher(shared.api::<AnalysisRun>(), shared.instance.watch()).default_backoff(),
    )
    .applied_objects();
    let ctx = Arc::new(Ctx {
        status_route: StatusRoute::new::<Experiment>(shared.client.clone()),
        shared: shared.clone(),
        replica_sets,
        services,
        analysis_runs,
        written: Fresh::default(),
    });
    Controller::new(shared.api::<Experiment>(), shared.instance.watch())
        .owns_stream(rs_events)
        .owns_stream(svc_events)
        .owns_stream(run_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "experiment reconcile");
            }
        })
        .await;
}

fn error_policy(experiment: Arc<Experiment>, error: &Error, ctx: Arc<Ctx>) -> Requeue {
    tracing::warn!(experiment = %experiment.name_any(), %error, "experiment reconcile failed");
    ctx.written.forget(&fresh::key(experiment.as_ref()));
    Requeue::requeue(ctx.shared.backoff.retry_after(experiment.as_ref(), error))
}

async fn reconcile(experiment: Arc<Experiment>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    let key = fresh::key(experiment.as_ref());
    let experiment = ctx
        .written
        .view(&key, Some(experiment.clone()))
        .unwrap_or(experiment);
    let result = reconcile_inner(&experiment, &ctx).await;
    ctx.shared.backoff.record(experiment.as_ref(), result)
}

async fn reconcile_inner(experiment: &Experiment, ctx: &Ctx) -> Result<Requeue, Error> {
    if experiment.meta().deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    let status = experiment.status.clone().unwrap_or_default();
    let observed = observe(experiment, ctx);
    let name = experiment.name_any();
    let plan = experiment::plan(experiment::Input {
        name: &name,
        spec: &experiment.spec,
        status: &status,
        observed: &observed,
    });
    let target = execute::Target {
        client: &ctx.shared.client,
        experiment,
    };
    for action in &plan.actions {
        target.execute(action).await?;
    }
    if plan.status != status {
        write_status(experiment, &plan.status, ctx).await?;
    }
    publish(experiment, &plan.actions, ctx);
    Ok(match plan.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// Whether `object` is controlled by `experiment`.
fn controlled_by<K: Resource>(object: &K, experiment: &Experiment) -> bool {
    let uid = experiment.uid();
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// What the engine reads, from the watch caches.
fn observe(experiment: &Experiment, ctx: &Ctx) -> Observed {
    let namespace = experiment.namespace();
    let mine = |meta_ns: Option<String>| meta_ns == namespace;
    let mut observed = Observed {
        now: Timestamp::now(),
        replica_sets: Default::default(),
        services: Default::default(),
        analysis_runs: Default::default(),
    };
    for rs in ctx.replica_sets.state() {
        if !mine(rs.namespace()) || !controlled_by(rs.as_ref(), experiment) {
            continue;
        }
        let Some(template) = rs.annotations().get(EXPERIMENT_TEMPLATE_NAME_ANNOTATION) else {
            continue;
        };
        observed
            .replica_sets
            .insert(template.clone(), replica_set(&rs));
    }
    for svc in ctx.services.state() {
        if !mine(svc.namespace()) || !controlled_by(svc.as_ref(), experiment) {
            continue;
        }
        if let Some(template) = svc.annotations().get(EXPERIMENT_TEMPLATE_NAME_ANNOTATION) {
            observed.services.insert(template.clone(), svc.name_any());
        }
    }
    for run in ctx.analysis_runs.state() {
        if !mine(run.namespace()) || !controlled_by(run.as_ref(), experiment) {
            continue;
        }
        let status = run.status.clone().unwrap_or_default();
        observed.analysis_runs.insert(
            run.name_any(),
            (
                status
                    .phase
                    .unwrap_or(crate::api::argo::analysis::AnalysisPhase::Pending),
                status.message,
            ),
        );
    }
    observed
}

fn replica_set(rs: &ReplicaSet) -> ReplicaSetObservation {
    let status = rs.status.as_ref();
    ReplicaSetObservation {
        pod_template_hash: rs
            .labels()
            .get(POD_TEMPLATE_HASH_LABEL)
            .cloned()
            .unwrap_or_default(),
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        status_replicas: status.map_or(0, |s| s.replicas),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
        scale_down_deadline: rs
            .annotations()
            .get(SCALE_DOWN_DEADLINE_ANNOTATION)
            .and_then(|d| d.parse().ok()),
        ..Default::default()
    }
}

async fn write_status(
    experiment: &Experiment,
    status: &ExperimentStatus,
    ctx: &Ctx,
) -> Result<(), Error> {
    let namespace = experiment.namespace().unwrap_or_default();
    let name = experiment.name_any();
    let api: Api<Experiment> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    // A merge patch of the whole status; fields that went away are set to null.
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let (Some(old), Some(new)) = (
        experiment
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok()),
        body.as_object_mut(),
    ) && let Some(old) = old.as_object()
    {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let params = PatchParams {
        field_manager: Some(super::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let old = experiment.status.clone();
    let stored = ctx
        .status_route
        .merge_status(&api, &name, &params, &body, |stored| {
            stored.status == old && old.as_ref() != Some(status)
        })
        .await
        .map_err(|source| Error::PatchStatus {
            namespace,
            name,
            source,
        })?;
    let mut stored = stored;
    stored.managed_fields_mut().clear();
    ctx.written.wrote(
        fresh::key(experiment),
        experiment.resource_version(),
        Some(stored),
    );
    Ok(())
}

fn publish(experiment: &Experiment, actions: &[Action], ctx: &Ctx) {
    let events: Vec<KubeEvent> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Event(event) => Some(KubeEvent {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.to_string(),
                note: Some(super::event_note(&event.message)),
                action: "Reconcile".to_string(),
                secondary: None,
            }),
            _ => None,
        })
        .collect();
    if events.is_empty() {
        return;
    }
    let reference = experiment.object_ref(&());
    let recorder = ctx.shared.recorder.clone();
    let name = experiment.name_any();
    tokio::spawn(async move {
        for event in events {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(experiment = %name, %error, "recording an event");
            }
        }
    });
}
