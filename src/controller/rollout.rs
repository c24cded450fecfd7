//! The Rollout controller: for each Rollout, observe the cluster through watch caches, ask the
//! pure engine for a plan, write the status it returns and carry out its actions.
//!
//! ```text
//!  watch caches ──observe──▶ Observations ──engine::plan──▶ Plan ──▶ 1. status (SSA, only if changed)
//!  (Rollouts, ReplicaSets,                                            2. actions (idempotent)
//!   Services, EndpointSlices,                                         3. Events
//!   AnalysisRuns, Deployments,                                        4. requeue_after
//!   analysis templates,
//!   route objects: crate::traffic::cache)
//! ```
//!
//! The status goes first (only a new ReplicaSet, idempotent by name, is created before it, and
//! `canaryMetadata` / `stableMetadata` are put on pods before it),
//! conditioned on the resourceVersion the plan was made from: a user's
//! patch (abort, promote) that lands meanwhile makes the write fail and the plan is made again,
//! instead of being overwritten; and an AnalysisRun is only created once the status that names
//! it is stored, so a crash in between is safe (the engine adopts runs the status references).
//! What this controller wrote is used over an older cached copy until the watch shows it, so a
//! quick second reconcile never repeats an action or an Event.
//!
//! While a Rollout's routers carry a canary share it holds the `sluice.dev/traffic` finalizer
//! ([`finalizer`]), so deleting it mid-way gives its routes back before its pods go.
//!
//! This module must never decide what a Rollout does next (that is [`crate::engine`]), and never
//! read an object through the API per reconcile (templates are read once per run creation).

mod adopt;
mod ephemeral;
mod events;
mod execute;
mod experiment;
mod finalizer;
mod git_revert;
mod index;
mod observe;
mod traffic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::fresh::{self, Fresh};
use super::metrics::{RolloutInfoLabels, RolloutReplicas};
use super::shared_watch::Subscription;
use super::{FIELD_MANAGER, Shared};
use crate::api::argo::analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
use crate::api::argo::experiment::Experiment;
use crate::api::argo::rollout::{POD_TEMPLATE_HASH_LABEL, Rollout, RolloutPhase, RolloutStatus};
use crate::engine::analysis::args::ArgsError;
use crate::engine::{self, Action, Input};
use crate::traffic::cache::RouteObjects;
use observe::{Caches, Indexes, SERVICE_NAME_LABEL};

/// Rollouts reconciled at the same time.
///
/// Higher than Argo's 10 workers: a reconcile is async and mostly waits on the apiserver (status
/// write, ReplicaSet create, Event), so with 10 a template change on 1,000 Rollouts queued for
/// 10+ s at ~150 reconciles/s while the controller used 12% of a core. `SLUICE_ROLLOUT_WORKERS`
/// overrides it.
const CONCURRENCY: u16 = 64;

/// [`CONCURRENCY`], or `SLUICE_ROLLOUT_WORKERS` when set to a positive number.
fn concurrency() -> u16 {
    std::env::var("SLUICE_ROLLOUT_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(CONCURRENCY)
}
/// How often `rollout_info` series of deleted Rollouts are removed.
const INFO_SWEEP: Duration = Duration::from_secs(30);

/// Why one reconcile of a Rollout failed; it is planned again after a back-off
/// ([`super::backoff`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("traffic routing of Rollout {namespace}/{name}: {source}")]
    Traffic {
        namespace: String,
        name: String,
        source: crate::traffic::TrafficError,
    },
    #[error("writing the status of Rollout {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "Rollout {namespace}/{name} changed while it was being planned (a user patch or a new spec); planning again"
    )]
    Conflict { namespace: String, name: String },
    #[error("creating ReplicaSet {namespace}/{name}: {source}")]
    CreateReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "Rollout {namespace}/{name}: ReplicaSet {replica_set} exists but is not controlled by this Rollout, and counting the collision in status.collisionCount failed: {source}"
    )]
    CollisionCount {
        namespace: String,
        name: String,
        replica_set: String,
        source: kube::Error,
    },
    #[error("patching ReplicaSet {namespace}/{name}: {source}")]
    PatchReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting old ReplicaSet {namespace}/{name}: {source}")]
    DeleteReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "setting the selector of Service {namespace}/{name} for Rollout {rollout}: {source} (check that the Service exists)"
    )]
    SetServiceSelector {
        namespace: String,
        name: String,
        rollout: String,
        source: kube::Error,
    },
    #[error(
        "removing the rollouts-pod-template-hash selector from Service {namespace}/{name}, which Rollout {rollout} no longer names: {source} (check the controller's RBAC on Services)"
    )]
    ReleaseService {
        namespace: String,
        name: String,
        rollout: String,
        source: kube::Error,
    },
    #[error("scaling Deployment {namespace}/{name} (the Rollout's workloadRef): {source}")]
    ScaleWorkload {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "{kind} {namespace}/{name} named by Rollout {rollout}'s analysis does not exist: create it or fix the templateName"
    )]
    TemplateNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        rollout: String,
    },
    #[error("reading {kind} {namespace}/{name}: {source}")]
    ReadTemplate {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("building AnalysisRun {namespace}/{name} for Rollout {rollout}: {source}")]
    BuildAnalysisRun {
        namespace: String,
        name: String,
        rollout: String,
        source: ArgsError,
    },
    #[error("creating AnalysisRun {namespace}/{name}: {source}")]
    CreateAnalysisRun {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "evicting pod {namespace}/{name} to restart Rollout {rollout}'s pods (spec.restartAt): {source}"
    )]
    EvictPod {
        namespace: String,
        name: String,
        rollout: String,
        source: kube::Error,
    },
    #[error(
        "setting Rollout {rollout}'s ephemeral metadata (canaryMetadata, stableMetadata, activeMetadata, previewMetadata) on pod {namespace}/{name}: {source}"
    )]
    PatchPod {
        namespace: String,
        name: String,
        rollout: String,
        source: kube::Error,
    },
    #[error("listing the pods of ReplicaSet {namespace}/{name}: {source}")]
    ListPods {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "building Experiment {namespace}/{name} for Rollout {rollout}'s experiment step: {source}"
    )]
    BuildExperiment {
        namespace: String,
        name: String,
        rollout: String,
        source: ArgsError,
    },
    #[error(
        "reading ReplicaSet {namespace}/{name} to build an Experiment from its pod template: {source}"
    )]
    ReadExperimentReplicaSet {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating Experiment {namespace}/{name}: {source}")]
    CreateExperiment {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("terminating Experiment {namespace}/{name}: {source}")]
    TerminateExperiment {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("terminating AnalysisRun {namespace}/{name}: {source}")]
    TerminateAnalysisRun {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "comparing the pod template of Rollout {namespace}/{name} with its existing ReplicaSets: {source}"
    )]
    Adopt {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "updating the finalizer {finalizer} of Rollout {namespace}/{name}: {source} (if Sluice is gone, remove the finalizer by hand)",
        finalizer = finalizer::TRAFFIC_FINALIZER
    )]
    Finalizer {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// State shared by every reconcile.
pub struct Ctx {
    shared: Shared,
    caches: Caches,
    rollouts: Fresh<Rollout>,
    replica_sets: Fresh<ReplicaSet>,
    analysis_runs: Fresh<AnalysisRun>,
    /// The `rollout_info` labels last exported per Rollout, to replace them when they change.
    info: Mutex<HashMap<fresh::Key, RolloutInfoLabels>>,
    last_sweep: Mutex<Instant>,
    changes: Arc<Changes>,
    /// The routers' objects, watched (shared by every Rollout).
    route_objects: Arc<RouteObjects>,
    /// Writes the Rollouts' Events, in order per Rollout.
    events: Arc<events::EventSink>,
}

/// When each Rollout's not-yet-observed generation arrived on the watch, for
/// `sluice_rollout_reaction_seconds`. Only Rollouts with a change pending have an entry.
#[derive(Default)]
struct Changes(Mutex<HashMap<fresh::Key, Instant>>);

impl Changes {
    fn apply(&self, event: &watcher::Event<Rollout>) {
        let Ok(mut pending) = self.0.lock() else {
            return;
        };
        match event {
            watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                let observed = r.status.as_ref().map(|s| s.observed_generation.as_str());
                let generation = r.metadata.generation.map(|g| g.to_string());
                if observed.is_some() && observed != generation.as_deref() {
                    pending.entry(fresh::key(r)).or_insert_with(Instant::now);
                } else {
                    pending.remove(&fresh::key(r));
                }
            }
            watcher::Event::Delete(r) => {
                pending.remove(&fresh::key(r));
            }
            _ => {}
        }
    }

    /// How long ago the pending change of `key` arrived (taken: observed once).
    fn take(&self, key: &fresh::Key) -> Option<Duration> {
        self.0.lock().ok()?.remove(key).map(|at| at.elapsed())
    }
}

/// A watch cache fed by `events` (managed fields, last-applied annotations and whatever `slim`
/// removes dropped to save memory), and the stream that feeds it, which also triggers reconciles.
/// `index` sees every event after the store has applied it.
fn cache<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    slim: impl Fn(&mut K) + Send + Sync + 'static,
    index: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let events = events.default_backoff().modify(move |object: &mut K| {
        object.managed_fields_mut().clear();
        object
            .annotations_mut()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
        slim(object);
    });
    let stream = reflector::reflector(writer, events)
        .inspect(move |event| {
            if let Ok(event) = event {
                index(event);
            }
        })
        .touched_objects();
    (reader, stream)
}

/// Runs the Rollout controller until `shutdown` resolves.
pub async fn run(
    shared: Shared,
    deployments: Subscription<Deployment>,
    services: Subscription<Service>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    tracing::info!(namespace = ?shared.namespace, "rollout controller starting");
    let index = Arc::new(Indexes::default());
    let config = || watcher::Config::default().any_semantic();
    let idx = index.clone();
    let changes = Arc::new(Changes::default());
    let seen = changes.clone();
    let event_sink = Arc::new(events::EventSink::new(shared.client.clone()));
    let added = events::Added::new(event_sink.clone(), shared.metrics.clone());
    // Argo's kinds: only this controller instance's (`--instance-id`).
    let argo = || shared.instance.watch();
    let (rollouts, rollout_events) = cache(
        watcher(shared.api::<Rollout>(), argo()),
        |_| {},
        move |e| {
            idx.rollouts_by_service.apply(e);
            idx.rollouts_by_deployment.apply(e);
            seen.apply(e);
            added.apply(e);
        },
    );
    // Only ReplicaSets a Rollout made (Argo's label-filtered informer): Deployments' are ignored.
    let idx = index.clone();
    let (replica_sets, rs_events) = cache(
        watcher(
            shared.api::<ReplicaSet>(),
            config().labels(POD_TEMPLATE_HASH_LABEL),
        ),
        adopt::slim_replica_set,
        move |e| idx.replica_sets.apply(e),
    );
    let (services, service_events) = (services.store.clone(), services.changes());
    let idx = index.clone();
    let (endpoint_slices, slice_events) = cache(
        watcher(
            shared.api::<EndpointSlice>(),
            config().labels(SERVICE_NAME_LABEL),
        ),
        |_| {},
        move |e| idx.endpoint_slices.apply(e),
    );
    let idx = index.clone();
    let (analysis_runs, run_events) = cache(
        watcher(shared.api::<AnalysisRun>(), argo()),
        |_| {},
        move |e| idx.analysis_runs.apply(e),
    );
    let idx = index.clone();
    let (experiments, experiment_events) = cache(
        watcher(shared.api::<Experiment>(), argo()),
        |_| {},
        move |e| idx.experiments.apply(e),
    );
    let (deployments, deployment_events) = (deployments.store.clone(), deployments.changes());
    // Pods are only read while a restart is asked for: their metadata and Ready condition are
    // kept (a ReplicaSet's status lags behind the pods it just lost and re-created, so a restart
    // budgets on the pods' own readiness too). Their changes trigger nothing: a restart in
    // progress looks again on its own (and ReplicaSet status changes wake it).
    let idx = index.clone();
    let (pods, pod_events) = cache(
        watcher(
            shared.api::<Pod>(),
            config().labels(POD_TEMPLATE_HASH_LABEL),
        ),
        observe::slim_pod,
        move |e| idx.pods.apply(e),
    );
    tokio::spawn(pod_events.for_each(|_| async {}));
    // The analysis templates a Rollout references are part of its validation (`engine::validate`).
    let (analysis_templates, template_events) = cache(
        watcher(shared.api::<AnalysisTemplate>(), argo()),
        |_| {},
        |_| {},
    );
    let (cluster_analysis_templates, cluster_template_events) = cache(
        watcher(
            Api::<ClusterAnalysisTemplate>::all(shared.client.clone()),
            argo(),
        ),
        |_| {},
        |_| {},
    );
    shared.metrics.argo.watch_templates(
        analysis_templates.clone(),
        cluster_analysis_templates.clone(),
    );
    // Route objects (HTTPRoutes, VirtualServices, ...) are watched per kind from the first
    // Rollout that names one; a changed route wakes the Rollouts that read it.
    let (route_objects, route_changes) =
        RouteObjects::new(shared.client.clone(), shared.namespace.clone());
    let controller = Controller::for_stream(rollout_events, rollouts.clone())
        .with_config(ControllerConfig::default().concurrency(concurrency()))
        .reconcile_on(
            route_changes.map(|(namespace, name)| ObjectRef::new(&name).within(&namespace)),
        );
    let caches = Caches {
        rollouts: rollouts.clone(),
        replica_sets,
        services,
        endpoint_slices,
        analysis_runs,
        experiments,
        deployments,
        pods,
        analysis_templates,
        cluster_analysis_templates,
        index,
    };

    let ready = caches.clone();
    let readiness = shared.ready.clone();
    tokio::spawn(async move {
        super::store_synced(&ready.rollouts).await;
        super::store_synced(&ready.replica_sets).await;
        super::store_synced(&ready.services).await;
        super::store_synced(&ready.endpoint_slices).await;
        super::store_synced(&ready.analysis_runs).await;
        super::store_synced(&ready.experiments).await;
        super::store_synced(&ready.deployments).await;
        super::store_synced(&ready.pods).await;
        super::store_synced(&ready.analysis_templates).await;
        super::store_synced(&ready.cluster_analysis_templates).await;
        tracing::info!("rollout controller: watch caches synced");
        readiness.synced();
    });

    let by_service = caches.clone();
    let by_slice = caches.clone();
    let by_deployment = caches.clone();
    let by_template = caches.clone();
    let by_cluster_template = caches.clone();
    let ctx = Arc::new(Ctx {
        shared,
        caches,
        rollouts: Fresh::default(),
        replica_sets: Fresh::default(),
        analysis_runs: Fresh::default(),
        info: Mutex::default(),
        last_sweep: Mutex::new(Instant::now()),
        changes,
        route_objects,
        events: event_sink,
    });
    controller
        .owns_stream(rs_events)
        .owns_stream(run_events)
        .owns_stream(experiment_events)
        .watches_stream(service_events, move |service: Service| {
            by_service.service_changed(&service);
            by_service.rollouts_for_service(&service)
        })
        .watches_stream(slice_events, move |slice: EndpointSlice| {
            match slice.labels().get(SERVICE_NAME_LABEL) {
                Some(service) => {
                    by_slice.rollouts_using_service(&slice.namespace().unwrap_or_default(), service)
                }
                None => Vec::new(),
            }
        })
        .watches_stream(deployment_events, move |deployment: Deployment| {
            by_deployment.rollouts_using_deployment(
                &deployment.namespace().unwrap_or_default(),
                &deployment.name_any(),
            )
        })
        .watches_stream(template_events, move |template: AnalysisTemplate| {
            let namespace = template.namespace().unwrap_or_default();
            by_template.rollouts_for_template(Some(&namespace), &template.name_any())
        })
        .watches_stream(
            cluster_template_events,
            move |template: ClusterAnalysisTemplate| {
                by_cluster_template.rollouts_for_template(None, &template.name_any())
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "rollout reconcile");
            }
        })
        .await;
}

fn error_policy(rollout: Arc<Rollout>, error: &Error, ctx: Arc<Ctx>) -> Requeue {
    ctx.shared.metrics.rollout_reconcile_error.inc();
    ctx.rollouts.forget(&fresh::key(rollout.as_ref()));
    match error {
        Error::Conflict { .. } => {
            tracing::debug!(rollout = %rollout.name_any(), namespace = ?rollout.namespace(), %error, "planning again");
            Requeue::requeue(Duration::from_millis(200))
        }
        _ => Requeue::requeue(ctx.shared.backoff.retry_after(rollout.as_ref(), error)),
    }
}

async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let key = fresh::key(rollout.as_ref());
    // The cache may lag behind our last status write; plan from what we wrote then.
    let rollout = ctx
        .rollouts
        .view(&key, Some(rollout.clone()))
        .unwrap_or(rollout);
    let result = reconcile_inner(&rollout, &ctx).await;
    ctx.shared
        .metrics
        .rollout_reconcile
        .observe(started.elapsed().as_secs_f64());
    ctx.shared.backoff.record(rollout.as_ref(), result)
}

async fn reconcile_inner(rollout: &Rollout, ctx: &Ctx) -> Result<Requeue, Error> {
    if !ctx.caches.synced() {
        return Ok(Requeue::requeue(Duration::from_millis(100)));
    }
    let key = fresh::key(rollout);
    if rollout.meta().deletion_timestamp.is_some() {
        // Its ReplicaSets and AnalysisRuns go with it (owner references); its routes are given
        // back first, while the canary's pods still serve.
        if finalizer::has(rollout) {
            release_before_deletion(rollout, ctx).await?;
        }
        ctx.rollouts.forget(&key);
        ctx.drop_info(&key);
        ctx.route_objects.forget(&key);
        return Ok(Requeue::await_change());
    }
    let (spec, workload) = observe::resolve_spec(rollout, &ctx.caches);
    let replica_sets = observe::replica_sets(rollout, &spec, &ctx.caches, &ctx.replica_sets);
    // A Rollout migrated from Argo Rollouts runs ReplicaSets named by Argo's hash.
    if adopt::adopt(
        &ctx.shared.client,
        rollout,
        &spec,
        &replica_sets,
        &ctx.replica_sets,
    )
    .await
    .map_err(|source| Error::Adopt {
        namespace: rollout.namespace().unwrap_or_default(),
        name: rollout.name_any(),
        source,
    })? {
        return Ok(Requeue::requeue(Duration::ZERO));
    }
    let mut observed = observe::observations(
        rollout,
        &spec,
        workload,
        &replica_sets,
        &ctx.caches,
        Timestamp::now(),
    );
    // Routers that cannot be built are a spec error: InvalidSpec, like any other.
    let mut routers = traffic::Traffic::new(&ctx.shared.client, &ctx.route_objects, rollout, &spec)
        .unwrap_or_else(|error| {
            observed.traffic_config_error = Some(error.to_string());
            None
        });
    if let Some(routers) = &routers {
        // What the routers' objects say, from the route caches.
        observed.traffic = routers.observe().await;
    }
    let status = rollout.status.clone().unwrap_or_default();
    let name = rollout.name_any();
    let mut plan = engine::plan(Input {
        name: &name,
        spec: &spec,
        status: &status,
        observed: &observed,
    });
    // kstatus conditions (Ready / Reconciling / Stalled) for `kubectl wait` and Flux, from the
    // status just planned.
    engine::health::set_kstatus_conditions(
        &spec,
        &mut plan.status,
        observed.generation,
        observed.now,
    );

    // The finalizer goes on when an update starts, before its first traffic action, and comes
    // off once the routes are released (the engine plans ReleaseTraffic only then). An invalid
    // Rollout is not acted on: it neither takes the finalizer nor gives it up (its routes may
    // still carry the share they had when the spec broke).
    let invalid = plan
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == engine::health::reason::INVALID_SPEC && c.status == "True");
    if let Some(routers) = routers.as_mut() {
        routers.follow(&plan.status);
    }
    let updating = plan.status.stable_rs != plan.status.current_pod_hash;
    let hold_traffic = routers.is_some()
        && !invalid
        && (updating || finalizer::has(rollout))
        && !plan.actions.contains(&Action::ReleaseTraffic);
    let target = execute::Target {
        client: &ctx.shared.client,
        rollout,
        spec: &spec,
        replica_sets: &ctx.replica_sets,
        replica_set_cache: &ctx.caches.replica_sets,
        analysis_runs: &ctx.analysis_runs,
        analysis_run_cache: &ctx.caches.analysis_runs,
        experiment_cache: &ctx.caches.experiments,
        traffic: routers.as_ref(),
    };
    // A new ReplicaSet is what a template change waits for, and creating it is idempotent (its
    // name is the template's hash; an existing one of ours is adopted), so it does not wait for
    // the status write. Ephemeral pod metadata (idempotent labels, no traffic) is in place before
    // the status says Healthy, as in Argo. Everything else follows the status, as the module doc
    // explains.
    let (first, then): (Vec<&Action>, Vec<&Action>) = plan
        .actions
        .iter()
        .partition(|a| matches!(a, Action::CreateReplicaSet { .. }));
    let (labels, then): (Vec<&Action>, Vec<&Action>) = then
        .into_iter()
        .partition(|a| matches!(a, Action::SetEphemeralMetadata { .. }));
    for action in labels {
        target.execute(action).await?;
    }
    if !first.is_empty() {
        for action in first {
            target.execute(action).await?;
        }
        if let Some(reaction) = ctx.changes.take(&key) {
            ctx.shared
                .metrics
                .rollout_reaction
                .observe(reaction.as_secs_f64());
        }
    }
    // The new ReplicaSet (no traffic yet) does not wait for the finalizer: one round trip less
    // between a template change and its canary.
    if hold_traffic && !finalizer::has(rollout) {
        let updated = finalizer::add(&ctx.shared.client, rollout)
            .await
            .map_err(|source| match source {
                kube::Error::Api(e) if e.code == 409 => Error::Conflict {
                    namespace: rollout.namespace().unwrap_or_default(),
                    name: rollout.name_any(),
                },
                source => finalizer_error(rollout, source),
            })?;
        ctx.rollouts
            .wrote(key, rollout.resource_version(), Some(updated));
        // Plan again from the version that carries it (the status write is conditioned on it).
        return Ok(Requeue::requeue(Duration::ZERO));
    }
    // A new phase is what tools wait for before reading the Rollout's history: its Events are
    // written first, so a Rollout seen Healthy (or Degraded) already shows why.
    let events_first = plan.status.phase != status.phase;
    if events_first {
        publish(rollout, &plan.actions, ctx, true).await;
    }
    if plan.status != status {
        write_status(rollout, &plan.status, ctx).await?;
    }
    ctx.export_info(rollout, &plan.status);

    let mut failed = None;
    for action in then {
        if let Err(error) = target.execute(action).await {
            failed = Some(error);
            break;
        }
    }
    // Events describe the status just stored, so they go out even if an action failed.
    if !events_first {
        publish(rollout, &plan.actions, ctx, false).await;
    }
    if let Some(error) = failed {
        return Err(error);
    }
    // After the abort's traffic actions: traffic goes back to stable before Git is written.
    if plan.status.abort {
        git_revert::run(rollout, &spec, &plan.status, &replica_sets, ctx).await?;
    }
    if !hold_traffic && !invalid && finalizer::has(rollout) {
        finalizer::remove(&ctx.shared.client, rollout)
            .await
            .map_err(|source| finalizer_error(rollout, source))?;
    }
    ctx.sweep_info();
    Ok(match plan.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// Applies `status` through the status subresource, only if the Rollout is still the version the
/// plan was made from.
async fn write_status(rollout: &Rollout, status: &RolloutStatus, ctx: &Ctx) -> Result<(), Error> {
    let namespace = rollout.namespace().unwrap_or_default();
    let name = rollout.name_any();
    let body = status_body(status);
    let patch = json!({
        "apiVersion": Rollout::api_version(&()),
        "kind": Rollout::kind(&()),
        "metadata": {"name": name, "resourceVersion": rollout.resource_version()},
        "status": body,
    });
    let api: Api<Rollout> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(mut updated) => {
            // Kept until the watch catches up: without managedFields, like the cache.
            updated.managed_fields_mut().clear();
            ctx.rollouts.wrote(
                fresh::key(rollout),
                rollout.resource_version(),
                Some(updated),
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict { namespace, name }),
        Err(source) => Err(Error::WriteStatus {
            namespace,
            name,
            source,
        }),
    }
}

/// The status as applied: fields a user sets with a merge patch are owned by the user's field
/// manager, so omitting them from an apply would leave the user's value in place; their plain
/// values are always sent.
fn status_body(status: &RolloutStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = body.as_object_mut() {
        fields.insert("abort".into(), json!(status.abort));
        fields.insert("promoteFull".into(), json!(status.promote_full));
        fields.insert("controllerPause".into(), json!(status.controller_pause));
        fields.insert("pauseConditions".into(), json!(status.pause_conditions));
    }
    body
}

/// Records the plan's Events in the background, in order: they are not on the path from a change
/// to the reaction (each is one more apiserver write) — unless `wait`, then they are written
/// (within [`EVENTS_FIRST_BOUND`]) before this returns.
async fn publish(rollout: &Rollout, actions: &[Action], ctx: &Ctx, wait: bool) {
    let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
    let records: Vec<events::Record> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Event(event) => Some(event),
            _ => None,
        })
        .map(|event| {
            let metrics = &ctx.shared.metrics.argo;
            metrics.rollout_event(&namespace, &name, event.warning, event.reason);
            events::Record {
                warning: event.warning,
                reason: event.reason.to_string(),
                message: event.message.clone(),
            }
        })
        .collect();
    if wait {
        let reference = rollout.object_ref(&());
        ctx.events
            .send_and_wait(reference, records, EVENTS_FIRST_BOUND)
            .await;
    } else {
        ctx.events.send(rollout.object_ref(&()), records);
    }
}

/// How long a phase change waits for its Events before the status is written anyway.
const EVENTS_FIRST_BOUND: Duration = Duration::from_secs(2);

fn finalizer_error(rollout: &Rollout, source: kube::Error) -> Error {
    Error::Finalizer {
        namespace: rollout.namespace().unwrap_or_default(),
        name: rollout.name_any(),
        source,
    }
}

/// A Rollout being deleted while its routes still carry a canary share or Sluice's routes: give
/// every route object back as its manifest declares it, then let the deletion proceed. A Rollout
/// whose routers cannot be built any more (its spec names an unsupported one) has nothing Sluice
/// could release: the finalizer comes off with a warning.
async fn release_before_deletion(rollout: &Rollout, ctx: &Ctx) -> Result<(), Error> {
    let (spec, _) = observe::resolve_spec(rollout, &ctx.caches);
    match traffic::Traffic::new(&ctx.shared.client, &ctx.route_objects, rollout, &spec) {
        Ok(Some(routers)) => {
            routers
                .execute(&Action::ReleaseTraffic)
                .await
                .map_err(|source| Error::Traffic {
                    namespace: rollout.namespace().unwrap_or_default(),
                    name: rollout.name_any(),
                    source,
                })?;
            tracing::info!(rollout = %rollout.name_any(), namespace = ?rollout.namespace(), "routes released before deletion");
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(rollout = %rollout.name_any(), %error, "cannot build the routers to release them; deleting anyway");
        }
    }
    finalizer::remove(&ctx.shared.client, rollout)
        .await
        .map_err(|source| finalizer_error(rollout, source))
}

impl Ctx {
    /// Sets `rollout_info` for one Rollout, replacing its previous series, and its weight and
    /// replica gauges.
    fn export_info(&self, rollout: &Rollout, status: &RolloutStatus) {
        let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
        let metrics = &self.shared.metrics;
        metrics.set_rollout_weight(&namespace, &name, i64::from(canary_weight(status)));
        metrics.set_rollout_replicas(
            &namespace,
            &name,
            RolloutReplicas {
                desired: i64::from(rollout.spec.replicas.unwrap_or(1)),
                updated: i64::from(status.updated_replicas),
                available: i64::from(status.available_replicas),
                unavailable: i64::from(status.replicas - status.available_replicas),
            },
        );
        let phase = status.phase.unwrap_or(RolloutPhase::Progressing);
        let labels = RolloutInfoLabels {
            namespace: rollout.namespace().unwrap_or_default(),
            name: rollout.name_any(),
            strategy: if rollout.spec.strategy.blue_green.is_some() {
                "blueGreen".into()
            } else {
                "canary".into()
            },
            traffic_router: traffic_router(rollout),
            phase: serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        };
        metrics.argo.set_rollout_phase(
            &labels.namespace,
            &labels.name,
            &labels.strategy,
            &status.conditions,
        );
        let Ok(mut info) = self.info.lock() else {
            return;
        };
        let key = fresh::key(rollout);
        if info.get(&key) == Some(&labels) {
            return;
        }
        if let Some(old) = info.insert(key, labels.clone()) {
            self.shared.metrics.rollout_info.remove(&old);
        }
        self.shared
            .metrics
            .rollout_info
            .get_or_create(&labels)
            .set(1);
    }

    fn drop_info(&self, key: &fresh::Key) {
        self.shared.metrics.remove_rollout(&key.0, &key.1);
        if let Ok(mut info) = self.info.lock()
            && let Some(old) = info.remove(key)
        {
            self.shared.metrics.rollout_info.remove(&old);
        }
    }

    /// Deleted Rollouts are never reconciled again: drop their series now and then.
    fn sweep_info(&self) {
        let Ok(mut last) = self.last_sweep.lock() else {
            return;
        };
        if last.elapsed() < INFO_SWEEP {
            return;
        }
        *last = Instant::now();
        let gone: Vec<fresh::Key> = match self.info.lock() {
            Ok(info) => info
                .keys()
                .filter(|(ns, name)| {
                    self.caches
                        .rollouts
                        .get(&ObjectRef::new(name).within(ns))
                        .is_none()
                })
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for key in gone {
            self.drop_info(&key);
            self.rollouts.forget(&key);
            self.route_objects.forget(&key);
        }
    }
}

/// The canary's share of traffic for `sluice_rollout_canary_weight`: what the routers report
/// applied, or without a router the canary's share of available pods (Argo's "actual weight").
fn canary_weight(status: &RolloutStatus) -> i32 {
    if let Some(weights) = &status.canary.weights {
        return weights.canary.weight;
    }
    if status.stable_rs == status.current_pod_hash || status.available_replicas <= 0 {
        return 0;
    }
    (100 * status.updated_replicas.min(status.available_replicas) / status.available_replicas)
        .clamp(0, 100)
}

/// Argo's `traffic_router` label: the router kinds configured, or empty.
fn traffic_router(rollout: &Rollout) -> String {
    let Some(routing) = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .and_then(|c| c.traffic_routing.as_ref())
    else {
        return String::new();
    };
    let value = serde_json::to_value(routing).unwrap_or_default();
    let mut kinds: Vec<String> = value
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| !matches!(k.as_str(), "maxTrafficWeight" | "managedRoutes"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_settable_fields_are_always_applied() {
        let body = status_body(&RolloutStatus::default());
        assert_eq!(body["abort"], json!(false));
        assert_eq!(body["promoteFull"], json!(false));
        assert_eq!(body["controllerPause"], json!(false));
        assert_eq!(body["pauseConditions"], json!([]));
    }

    #[test]
    fn traffic_router_label_lists_the_configured_kinds() {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "r"},
            "spec": {"strategy": {"canary": {"trafficRouting": {
                "maxTrafficWeight": 100, "nginx": {"stableIngress": "web"}, "smi": {},
            }}}},
        }))
        .unwrap();
        assert_eq!(traffic_router(&rollout), "nginx,smi");
    }
}
