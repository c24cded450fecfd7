//! The AnalysisRun controller: for each run, resolve its arguments, ask the engine which metrics
//! are due, take those measurements through the providers, hand the outcomes back to the engine
//! and write the status it returns.
//!
//! Timing comes from the reconcile queue: each reconcile ends with `requeue_after` from the
//! engine, so an idle run costs one timer and no task, no API request and no provider call until
//! its next measurement is due. Reads come from the watch cache; the only requests per
//! measurement are the provider's own and one status patch (plus a Secret read for runs with
//! `secretKeyRef` arguments).
//!
//! Its Prometheus series (`analysis_run_info`, `analysis_run_metric_phase`,
//! `sluice_analysis_measurement_value`, …) are computed from the watch cache at scrape time
//! ([`Metrics::watch_analysis_runs`]), so they follow each run's status and vanish with the run.
//!
//! A `valueFrom.fieldRef` argument is read from the Rollout that controls the run and from nothing
//! else: ownerReferences are written by whoever creates the run.
//!
//! This module must never judge a measurement or compute a phase (that is
//! `crate::engine::analysis::run`), never log a secret argument's value, and never write a status
//! or an Event the engine has not masked and bounded (`run::apply_masked`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};

use super::fresh::{self, Fresh};
use super::metrics::{MeasurementLabels, Metrics};
use super::status_route::StatusRoute;
use crate::analysis::{MeasureContext, Providers};
use crate::api::argo::analysis::{AnalysisRun, AnalysisRunSpec, AnalysisRunStatus, Metric};
use crate::api::argo::rollout::Rollout;
use crate::engine::analysis::Observed;
use crate::engine::analysis::args::{self, Masker, ResolvedArg};
use crate::engine::analysis::run::{self, Due, DueKind, Taken};

/// Errors of one reconcile; the run is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of AnalysisRun {namespace}/{name}: {source}")]
    PatchStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting AnalysisRun {namespace}/{name} after its ttlStrategy: {source}")]
    Delete {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Shared state of the AnalysisRun controller.
pub struct Ctx {
    pub client: Client,
    pub providers: Providers,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub field_manager: String,
    pub default_prometheus: Option<String>,
    /// What this controller last wrote per run, trusted over an older cached copy, so a
    /// measurement is never taken twice because the watch event for our own write is late.
    written: Fresh<AnalysisRun>,
    /// Maskers by the secret values they hide: building one compiles a pattern (milliseconds
    /// for a long token), and a run's secrets rarely change between measurements.
    maskers: Mutex<HashMap<Vec<String>, Arc<Masker>>>,
    /// Reconcile failure streaks, by run uid.
    backoff: super::backoff::Backoff,
    /// `/status` or the main resource, as the installed CRD serves (Argo's has no subresource).
    status_route: StatusRoute,
}

/// Cached maskers kept at most; past it the cache starts again (a rebuild costs milliseconds).
const MAX_CACHED_MASKERS: usize = 1024;

impl Ctx {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        field_manager: String,
        default_prometheus: Option<String>,
    ) -> Self {
        Self {
            providers: Providers::new(),
            status_route: StatusRoute::new::<AnalysisRun>(client.clone()),
            client,
            recorder,
            metrics,
            field_manager,
            default_prometheus,
            written: Fresh::default(),
            maskers: Mutex::default(),
            backoff: Default::default(),
        }
    }

    /// The masker for these arguments' secret values, built once per distinct set.
    fn masker(&self, args: &[ResolvedArg]) -> Arc<Masker> {
        let secrets: Vec<String> = args
            .iter()
            .filter(|a| a.secret)
            .filter_map(|a| a.value.clone())
            .collect();
        if secrets.is_empty() {
            return Arc::default();
        }
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
        let mut maskers = self.maskers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(masker) = maskers.get(&secrets) {
            return masker.clone();
        }
        if maskers.len() >= MAX_CACHED_MASKERS {
            maskers.clear();
        }
        let masker = Arc::new(Masker::new(args));
        maskers.insert(secrets, masker.clone());
        masker
    }

    /// The freshest copy of `run` we know of.
    fn fresh(&self, run: Arc<AnalysisRun>) -> Arc<AnalysisRun> {
        let key = fresh::key(run.as_ref());
        self.written.view(&key, Some(run.clone())).unwrap_or(run)
    }

    fn forget(&self, run: &AnalysisRun) {
        self.written.forget(&fresh::key(run));
    }
}

/// Runs the controller until `shutdown` resolves. `namespace` limits the watch to one namespace,
/// `watch` to this controller instance's runs.
pub async fn run(
    ctx: Arc<Ctx>,
    namespace: Option<&str>,
    watch: watcher::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    on_ready: impl FnOnce() + Send + 'static,
) {
    let api: Api<AnalysisRun> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // The cache keeps runs without managedFields: they mirror the status field by field and would
    // roughly double the memory per run.
    let (store, writer) = reflector::store();
    let events = watcher::watcher(api, watch)
        .default_backoff()
        .modify(|run: &mut AnalysisRun| run.managed_fields_mut().clear());
    let trigger = reflector::reflector(writer, events).applied_objects();
    // The `analysis_run_*` series are read from this cache at scrape time, so a deleted run's
    // series disappear with it (no per-run state in the metrics to clean up).
    ctx.metrics.watch_analysis_runs(store.clone());
    let ready = store.clone();
    tokio::spawn(async move {
        super::store_synced(&ready).await;
        on_ready();
    });
    Controller::for_stream(trigger, store)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "analysisrun reconcile");
            }
        })
        .await;
}

fn error_policy(run: Arc<AnalysisRun>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.analysis_run_reconcile_error.inc();
    ctx.forget(&run);
    Action::requeue(ctx.backoff.retry_after(run.as_ref(), error))
}

async fn reconcile(run: Arc<AnalysisRun>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(ctx.fresh(run.clone()), &ctx).await;
    ctx.metrics
        .analysis_run_reconcile
        .observe(started.elapsed().as_secs_f64());
    ctx.backoff.record(run.as_ref(), result)
}

async fn reconcile_inner(run: Arc<AnalysisRun>, ctx: &Ctx) -> Result<Action, Error> {
    if run.meta().deletion_timestamp.is_some() {
        ctx.forget(&run);
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let status = run.status.clone().unwrap_or_default();
    if status.phase.is_some_and(|p| p.is_completed()) {
        return ttl(&run, &status, now, ctx).await;
    }

    let resolved = match resolve(&run, ctx).await {
        Ok(resolved) => resolved,
        Err(message) => {
            let plan = run::invalid(&run.spec, &status, now, &message);
            write_status(&run, plan.status, ctx).await?;
            publish(&run, plan.events, ctx).await;
            return Ok(Action::await_change());
        }
    };

    let due = run::due(&resolved.spec, &status, now);
    let base = MeasureContext {
        client: ctx.client.clone(),
        namespace: run.namespace().unwrap_or_default(),
        run_name: run.name_any(),
        run_uid: run.uid().unwrap_or_default(),
        default_prometheus_address: ctx.default_prometheus.clone(),
        now,
        measurement_number: 1,
    };
    let resolved = &resolved;
    let taken = futures::future::join_all(due.into_iter().map(|due| {
        let mcx = MeasureContext {
            now: Timestamp::now(),
            measurement_number: MeasureContext::measurement_number_for(
                status.metric_results.iter().find(|r| r.name == due.metric),
            ),
            ..base.clone()
        };
        async move { measure(ctx, &mcx, resolved, due).await }
    }))
    .await;
    let measured: Vec<String> = taken.iter().map(|t| t.metric.clone()).collect();
    let plan = run::apply_masked(
        &resolved.spec,
        &status,
        Timestamp::now(),
        taken,
        &resolved.masker,
    );
    if plan.status != status {
        write_status(&run, plan.status, ctx).await?;
    }
    publish(&run, plan.events, ctx).await;
    collect_garbage(ctx, &base, &resolved.spec, &measured).await;
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Lets providers drop what they keep beyond the retained measurements (the job provider's old
/// Jobs), for the metrics just measured. Best effort: a failure only delays the clean-up.
async fn collect_garbage(
    ctx: &Ctx,
    mcx: &MeasureContext,
    spec: &AnalysisRunSpec,
    measured: &[String],
) {
    let matches =
        |pattern: &str, name: &str| regex::Regex::new(pattern).is_ok_and(|r| r.is_match(name));
    for metric in spec.metrics.iter().filter(|m| measured.contains(&m.name)) {
        let Some(provider) = ctx.providers.for_metric(metric) else {
            continue;
        };
        let keep = spec.measurement_retention(&metric.name, matches).max(1);
        if let Err(e) = provider
            .garbage_collect(mcx, metric, keep.unsigned_abs() as usize)
            .await
        {
            tracing::warn!(run = %mcx.run_name, metric = %metric.name, error = %e, "garbage collection");
        }
    }
}

/// The run's metrics with arguments substituted: the real values to measure with, a copy with
/// secret values masked for what is recorded in status, and what hides them in any other text.
struct Resolved {
    spec: AnalysisRunSpec,
    masked: Vec<Metric>,
    masker: Arc<Masker>,
}

async fn resolve(run: &AnalysisRun, ctx: &Ctx) -> Result<Resolved, String> {
    let namespace = run.namespace().unwrap_or_default();
    let mut values = Vec::with_capacity(run.spec.args.len());
    for arg in &run.spec.args {
        let from = arg.value_from.as_ref();
        let (value, secret) = if let Some(value) = &arg.value {
            (Some(value.clone()), false)
        } else if let Some(r) = from.and_then(|f| f.secret_key_ref.as_ref()) {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            let secret = api.get_opt(&r.name).await.map_err(|e| {
                format!(
                    "args.{}: reading Secret {namespace}/{}: {e}",
                    arg.name, r.name
                )
            })?;
            let data = secret.and_then(|s| s.data).ok_or_else(|| {
                format!("args.{}: Secret {namespace}/{} not found", arg.name, r.name)
            })?;
            let bytes = data.get(&r.key).ok_or_else(|| {
                format!(
                    "args.{}: Secret {namespace}/{} has no key {:?}",
                    arg.name, r.name, r.key
                )
            })?;
            let text = String::from_utf8(bytes.0.clone()).map_err(|_| {
                format!(
                    "args.{}: Secret {namespace}/{} key {:?} is not UTF-8 text",
                    arg.name, r.name, r.key
                )
            })?;
            (Some(text), true)
        } else if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
            let owner = owning_rollout(run, ctx, &arg.name).await?;
            let value = args::field_ref(&owner, &f.field_path)
                .map_err(|e| format!("args.{}: {e}", arg.name))?;
            (Some(value), false)
        } else {
            (None, false)
        };
        values.push(ResolvedArg {
            name: arg.name.clone(),
            value,
            secret,
        });
    }
    let metrics = args::resolve(&run.spec.metrics, &values).map_err(|e| e.to_string())?;
    let masked = args::masked(&run.spec.metrics, &values).map_err(|e| e.to_string())?;
    let mut spec = run.spec.clone();
    spec.metrics = metrics;
    Ok(Resolved {
        spec,
        masked,
        masker: ctx.masker(&values),
    })
}

/// The object a `fieldRef` argument reads: the Rollout that controls the run (upstream freezes
/// such arguments from it when it creates the run), with the uid the ownerReference names. Never
/// any other owner: the ownerReference is written by whoever creates the run, and following it
/// to any kind would hand them any object the controller can read (a Secret's `data.password`).
async fn owning_rollout(
    run: &AnalysisRun,
    ctx: &Ctx,
    arg: &str,
) -> Result<serde_json::Value, String> {
    let namespace = run.namespace().unwrap_or_default();
    let controller = run
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let Some(owner) =
        controller.filter(|o| o.kind == "Rollout" && o.api_version == "argoproj.io/v1alpha1")
    else {
        let found = match controller {
            Some(o) => format!("its controller is {} {} {}", o.api_version, o.kind, o.name),
            None => "it has no controlling owner".to_owned(),
        };
        return Err(format!(
            "args.{arg}: valueFrom.fieldRef is read only from the Rollout that owns the run, and \
             {found}; give the argument a value instead"
        ));
    };
    let api: Api<Rollout> = Api::namespaced(ctx.client.clone(), &namespace);
    let rollout = api
        .get_opt(&owner.name)
        .await
        .map_err(|e| {
            format!(
                "args.{arg}: reading the owning Rollout {namespace}/{}: {e}",
                owner.name
            )
        })?
        .filter(|r| r.uid().as_deref() == Some(owner.uid.as_str()))
        .ok_or_else(|| {
            format!(
                "args.{arg}: valueFrom.fieldRef: the owning Rollout {namespace}/{} with uid {} \
                 does not exist",
                owner.name, owner.uid
            )
        })?;
    serde_json::to_value(rollout).map_err(|e| format!("args.{arg}: {e}"))
}

async fn measure(ctx: &Ctx, mcx: &MeasureContext, resolved: &Resolved, due: Due) -> Taken {
    let started_at = Timestamp::now();
    let found = resolved
        .spec
        .metrics
        .iter()
        .zip(&resolved.masked)
        .find(|(m, _)| m.name == due.metric);
    // Not masked here: providers may echo a secret in any field, and the engine masks every
    // text it records (`run::apply_masked`).
    let observed = match found {
        None => Observed::error(format!("metric {} is not in the run's spec", due.metric)),
        Some((metric, masked)) => match ctx.providers.get(metric) {
            Err(e) => Observed::error(format!("metric {}: {e}", metric.name)),
            Ok(provider) => match &due.kind {
                DueKind::New => provider.run(mcx, metric, masked).await,
                DueKind::Resume(m) => provider.resume(mcx, metric, m).await,
                DueKind::Terminate(m) => provider.terminate(mcx, metric, m).await,
            },
        },
    };
    if let Some(planned) = due.planned_at {
        let late = started_at.duration_since(planned).as_secs_f64().max(0.0);
        ctx.metrics.measurement_delay.observe(late);
    }
    let provider = found
        .and_then(|(m, _)| m.provider.kind().ok())
        .map(|k| k.wire_name())
        .unwrap_or("unknown");
    ctx.metrics
        .measurements
        .get_or_create(&MeasurementLabels {
            provider: provider.to_string(),
            phase: observed_phase(&observed).to_string(),
        })
        .inc();
    Taken {
        metric: due.metric,
        started_at,
        finished_at: Timestamp::now(),
        observed,
    }
}

fn observed_phase(observed: &Observed) -> &'static str {
    match observed {
        Observed::Value { .. } => "Measured",
        Observed::Judged { phase, .. } => phase.as_str(),
        Observed::InProgress { .. } => "Running",
        Observed::Error { .. } => "Error",
    }
}

async fn write_status(
    run: &AnalysisRun,
    status: AnalysisRunStatus,
    ctx: &Ctx,
) -> Result<(), Error> {
    let namespace = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let api: Api<AnalysisRun> = Api::namespaced(ctx.client.clone(), &namespace);
    // A merge patch of the whole status (fields that went away set to null) and nothing else, on
    // `/status` or the main resource as the CRD serves: the controller is the only writer of a
    // run's status, and a merge patch costs the apiserver far less than a server-side apply at a
    // hundred measurements a second.
    let mut body = serde_json::to_value(&status).unwrap_or_default();
    if let (Some(old), Some(new)) = (
        run.status
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
        field_manager: Some(ctx.field_manager.clone()),
        ..Default::default()
    };
    let mut updated = ctx
        .status_route
        .merge_status(&api, &name, &params, &body, |stored| {
            stored.status == run.status && run.status.as_ref() != Some(&status)
        })
        .await
        .map_err(|source| Error::PatchStatus {
            namespace,
            name,
            source,
        })?;
    updated.managed_fields_mut().clear();
    ctx.written
        .wrote(fresh::key(run), run.resource_version(), Some(updated));
    Ok(())
}

async fn publish(run: &AnalysisRun, events: Vec<crate::engine::Event>, ctx: &Ctx) {
    let reference = run.object_ref(&());
    for event in events {
        let ev = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_string(),
            note: Some(super::event_note(&event.message)),
            action: "Analyze".to_string(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(run = %run.name_any(), error = %e, "recording an event");
        }
    }
}

/// Deletes a completed run once its `ttlStrategy` says so; otherwise wakes up when it will.
async fn ttl(
    run: &AnalysisRun,
    status: &AnalysisRunStatus,
    now: Timestamp,
    ctx: &Ctx,
) -> Result<Action, Error> {
    match run::ttl_expiry(&run.spec, status) {
        None => Ok(Action::await_change()),
        Some(at) if at > now => Ok(Action::requeue(now.duration_until(at).unsigned_abs())),
        Some(_) => {
            let namespace = run.namespace().unwrap_or_default();
            let name = run.name_any();
            let api: Api<AnalysisRun> = Api::namespaced(ctx.client.clone(), &namespace);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(Error::Delete {
                        namespace,
                        name,
                        source,
                    });
                }
            }
            ctx.forget(run);
            Ok(Action::await_change())
        }
    }
}
