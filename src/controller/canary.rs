//! The Canary (Flagger `flagger.app/v1beta1`) controller: for each Canary, observe its target
//! Deployment and `-primary` copy through watch caches, tick the pure scheduling core
//! ([`crate::engine::flagger`]), run the webhooks and metric checks it asks for, write the status
//! it returns and carry out its actions.
//!
//! ```text
//!  watch caches ──observe──▶ Observations ──tick──▶ Need(check) ──run webhook / metric──▶ tick again
//!  (Canaries, Deployments,                          Plan ──▶ 1. status (SSA, conditioned on the
//!   Services)                                                   resourceVersion it was planned from)
//!                                                            2. actions (idempotent) 3. Events
//! ```
//!
//! Generated objects (`<target>-primary`, the apex / `-primary` / `-canary` Services) are owned by
//! the Canary and carry Flux's "reconcile disabled" and Helm's "drift detection disabled"
//! annotations, as Flagger's do, so a GitOps tool does not fight over them.
//!
//! Providers (`spec.provider`, else `--mesh-provider`, default `istio` as Flagger's):
//! `kubernetes` (Blue/Green by switching the apex Service alone); `gatewayapi`,
//! `istio`, `smi` / `linkerd`, `traefik` and `nginx` through the routing objects
//! `canary::routing` generates (owned by the Canary, weights read back from watch caches; a tick
//! waits until the last route write is applied). A Canary naming another provider is refused
//! once per generation with a Warning Event naming `spec.provider`, and nothing is written for it.
//!
//! Services of the Canary's names that the user made are taken over, not owned (`takeover`); a
//! write the apiserver refuses is a Warning and a `Stalled` condition (`refusal`).
//!
//! Submodules: `config_tracking` (ConfigMaps/Secrets the target references: checksums in
//! `status.trackedConfigs`, `-primary` copies; a kind the controller may not watch is disabled
//! and each Canary it concerns told once), `finalizer` (`revertOnDeletion`), `hpa` (the
//! `-primary` HorizontalPodAutoscaler; another autoscaler kind is an invalid spec, reported and
//! not acted upon), `alerts` (AlertProviders, through [`crate::alert`], sent by a background task
//! so a slow chat endpoint never holds a tick), `recording` (Flagger's `flagger_canary_*` metrics).
//!
//! Nothing is planned or written before every watch cache has its first list (the same predicate
//! turns `/readyz` ready): from a partial view a restarted controller could initialise a Canary
//! again or start a run for a config it has not seen yet. A route kind the controller may not
//! list/watch is not cached and does not hold that (see `routing`); a Canary whose provider
//! routes through it is told once per generation with a Warning Event (`RoutingNotPermitted`) and
//! nothing is written for it, not even a finalizer.
//!
//! What the controller remembers per Canary (when it last ticked, writes not yet seen applied,
//! cookies, routes held, warnings given) is valid only for the Canary's uid, so a Canary
//! re-created under the same name starts afresh, and is dropped for Canaries no longer in the
//! watch cache every [`SWEEP`] (kube's `Controller` does not reconcile deletions).
//!
//! This module must never decide what a Canary does next (that is the engine), never write a
//! field of the user's target Deployment other than `spec.replicas`, and never read an object
//! through the API per reconcile while the Canary is idle (AlertProviders, the target's HPA, the
//! Secrets of MetricTemplates and the data of tracked configs are read only when a run needs
//! them; MetricTemplates come from a watch cache, so that a provider type Sluice cannot query is
//! refused, with a Warning naming `spec.provider.type`, before a run starts).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::shared_watch::Subscription;
use super::{FIELD_MANAGER, Shared};
use crate::alert::global::GlobalAlerting;
use crate::analysis::{HttpClients, MeasureContext, Providers, metric_template};
use crate::api::argo::analysis::{Metric, MetricProvider, PrometheusMetric};
use crate::api::flagger::canary::{
    Canary, CanaryMetric, CanaryPhase, CanaryStatus, CanaryWebhook, HookType, MAX_WEBHOOK_TIMEOUT,
    parse_go_duration,
};
use crate::api::flagger::metric_template::{MetricProviderType, MetricTemplate};
use crate::engine::analysis::flagger::{
    MetricCheck, MetricVars, builtin_query, judge, metrics_provider, render,
};
use crate::engine::analysis::observed::Observed;
use crate::engine::flagger::{
    self as core, Action, Check, Input, Observations, Outcome, Plan, Target, Verdict, Workload,
};

mod alerts;
mod config_tracking;
mod finalizer;
mod hpa;
mod recording;
mod refusal;
mod routing;
mod services;
mod takeover;

/// Canaries ticked at the same time.
const CONCURRENCY: u16 = 10;
/// The provider used when a Canary names none and `--mesh-provider` is not given: Flagger's
/// default (`-mesh-provider` of `cmd/flagger`).
pub const DEFAULT_PROVIDER: &str = "istio";
/// Environment variable that lowers the 10s minimum analysis interval (tests use 1s).
pub const MIN_INTERVAL_ENV: &str = "SLUICE_CANARY_MIN_INTERVAL";
/// Flux: do not reconcile this object (it is generated).
pub const FLUX_RECONCILE_ANNOTATION: &str = "kustomize.toolkit.fluxcd.io/reconcile";
/// Helm controller: do not detect drift on this object.
pub const HELM_DRIFT_ANNOTATION: &str = "helm.toolkit.fluxcd.io/driftDetection";
/// Labels Flagger picks the selector label from, in order (`-selector-labels`).
const SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];
/// Checks in one tick at most (there are six kinds; more means a bug).
const MAX_CHECKS: usize = 8;
/// How often readiness looks at the watch caches, and how soon a Canary reconciled before they
/// have synced is looked at again.
const CACHE_POLL: Duration = Duration::from_millis(100);
/// How often what the controller remembers about Canaries that are gone is dropped.
const SWEEP: Duration = Duration::from_secs(60);

/// Why one tick of a Canary failed; it is ticked again after a back-off ([`super::backoff`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of Canary {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("Canary {namespace}/{name} changed while it was being planned; planning again")]
    Conflict { namespace: String, name: String },
    #[error(
        "Canary {namespace}/{name}: Deployment {target} has none of the selector labels {labels:?} in spec.selector.matchLabels: add `app: {target}`"
    )]
    NoSelectorLabel {
        namespace: String,
        name: String,
        target: String,
        labels: [&'static str; 3],
    },
    #[error("{action} {kind} {namespace}/{name} for Canary {canary}: {source}")]
    Write {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        canary: String,
        source: kube::Error,
    },
    #[error(
        "the scheduling core asked for more than {MAX_CHECKS} checks in one tick of Canary {namespace}/{name}"
    )]
    TooManyChecks { namespace: String, name: String },
    #[error(transparent)]
    Routing(#[from] routing::RoutingError),
    #[error("a JSON patch of Service {namespace}/{name} could not be built: {reason}")]
    Patch {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// State shared by every tick.
pub struct Ctx {
    shared: Shared,
    deployments: Store<Deployment>,
    services: Store<Service>,
    configs: config_tracking::Caches,
    /// Route watch caches and writes not yet seen applied (`routing`).
    routing: routing::Routing,
    providers: Providers,
    /// Clients for webhooks and alerts, shared with the metric providers.
    http: Arc<HttpClients>,
    /// The namespace whose AlertProviders every Canary may use (`--alert-provider-namespace`).
    alert_provider_namespace: Option<String>,
    default_prometheus: Option<String>,
    min_interval: Duration,
    /// When each Canary last ticked (a restart ticks at once, as Flagger does).
    last_tick: PerCanary<Timestamp>,
    canaries: Store<Canary>,
    /// The Canaries (namespace, target) that have metric series (`recording`).
    recorded: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Alerts waiting for the background sender (`alerts`).
    alerts: alerts::Queue,
    /// Warnings already given, by Canary uid and what they were about ([`Ctx::warn_once`]).
    warned: Mutex<std::collections::HashSet<(String, String)>>,
    /// MetricTemplates (their provider type is checked before a Canary is acted on).
    metric_templates: Store<MetricTemplate>,
    /// Canaries whose last tick had a write refused after its status write (`refusal`).
    refused_later: PerCanary<()>,
    /// The provider of Canaries without `spec.provider` (`--mesh-provider`).
    mesh_provider: String,
    /// The controller-wide notifier and event webhook (`--slack-url`, `--event-webhook`, …).
    alerting: GlobalAlerting,
    /// The target labels a `-primary` Deployment gets (`--include-label-prefix`; `None`: all).
    include_label_prefix: Option<Vec<String>>,
}

fn min_interval() -> Duration {
    std::env::var(MIN_INTERVAL_ENV)
        .ok()
        .and_then(|v| parse_go_duration(&v))
        .filter(|d| !d.is_zero())
        .unwrap_or(crate::api::flagger::canary::MIN_ANALYSIS_INTERVAL)
}

/// How the Canary controller runs, from the controller's flags.
#[derive(Debug)]
pub struct Options {
    /// Prometheus address for metrics that name none.
    pub default_prometheus: Option<String>,
    /// The HTTP clients for metrics, webhooks and alerts.
    pub http: Arc<HttpClients>,
    /// The namespace whose AlertProviders every Canary may use.
    pub alert_provider_namespace: Option<String>,
    /// The provider of Canaries without `spec.provider` (`--mesh-provider`).
    pub mesh_provider: String,
    /// The controller-wide notifier and event webhook (`--slack-url`, `--event-webhook`, …).
    pub alerting: GlobalAlerting,
    /// The target labels a `-primary` Deployment gets (`--include-label-prefix`; `None`: all).
    pub include_label_prefix: Option<Vec<String>>,
}

/// Runs the Canary controller until `shutdown` resolves.
pub async fn run(
    shared: Shared,
    deployments: Subscription<Deployment>,
    services: Subscription<Service>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Options {
        default_prometheus,
        http,
        alert_provider_namespace,
        mesh_provider,
        alerting,
        include_label_prefix,
    } = options;
    shared.metrics.set_mesh_provider(&mesh_provider);
    tracing::info!(namespace = ?shared.namespace, "canary controller starting");
    let controller = Controller::new(
        shared.api::<Canary>(),
        watcher::Config::default().any_semantic(),
    )
    .with_config(ControllerConfig::default().concurrency(CONCURRENCY));
    let canaries = controller.store();

    let (deployments, deployment_events) = (deployments.store.clone(), deployments.changes());
    // Services only need to be in the cache; their changes do not start a tick.
    let services = services.store;
    let (configs, config_map_events, secret_events) = config_tracking::Caches::new(&shared).await;
    let (metric_templates, template_writer) = reflector::store();
    let template_events = reflector::reflector(
        template_writer,
        watcher(
            shared.api::<MetricTemplate>(),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff(),
    )
    .touched_objects();

    let (routing, route_events) =
        routing::Routing::start(shared.client.clone(), shared.namespace.clone()).await;
    let by_deployment = canaries.clone();
    let by_template = canaries.clone();
    let (cm_canaries, cm_deployments) = (canaries.clone(), deployments.clone());
    let (secret_canaries, secret_deployments) = (canaries.clone(), deployments.clone());
    let (alert_queue, alert_receiver) = alerts::Queue::new();
    let metrics = shared.metrics.clone();
    let ctx = Arc::new(Ctx {
        shared,
        deployments,
        services,
        configs,
        routing,
        providers: Providers::with_http(http.clone()),
        http,
        alert_provider_namespace,
        default_prometheus,
        min_interval: min_interval(),
        last_tick: PerCanary::default(),
        canaries: canaries.clone(),
        recorded: Mutex::default(),
        alerts: alert_queue,
        warned: Mutex::default(),
        metric_templates,
        refused_later: PerCanary::default(),
        mesh_provider,
        alerting,
        include_label_prefix,
    });
    tokio::spawn(alerts::run(Arc::downgrade(&ctx), alert_receiver, metrics));
    // Deleted Canaries are not reconciled (no finalizer without revertOnDeletion): their state
    // is dropped by a sweep against the watch cache instead, which also catches deletions a
    // re-list folded away.
    let sweeper = Arc::downgrade(&ctx);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP).await;
            let Some(ctx) = sweeper.upgrade() else { break };
            ctx.forget_deleted();
        }
    });
    // `/readyz` and every tick wait for the same thing: all watch caches listed once.
    let ready = ctx.clone();
    tokio::spawn(async move {
        while !ready.synced() {
            tokio::time::sleep(CACHE_POLL).await;
        }
        tracing::info!("canary controller: watch caches synced");
        ready.shared.ready.synced();
    });
    let after = ctx.clone();
    controller
        // A route's change (its Gateway accepting a write) ticks the Canary owning it.
        .reconcile_on(route_events)
        .watches_stream(deployment_events, move |deployment: Deployment| {
            canaries_of(&by_deployment, &deployment)
        })
        .watches_stream(config_map_events, move |cm: ConfigMap| {
            let namespace = cm.namespace().unwrap_or_default();
            config_tracking::Caches::canaries_using(
                &cm_canaries,
                &cm_deployments,
                config_tracking::CONFIG_MAP,
                &namespace,
                &cm.name_any(),
            )
        })
        .watches_stream(secret_events, move |secret: Secret| {
            let namespace = secret.namespace().unwrap_or_default();
            config_tracking::Caches::canaries_using(
                &secret_canaries,
                &secret_deployments,
                config_tracking::SECRET,
                &namespace,
                &secret.name_any(),
            )
        })
        .watches_stream(template_events, move |template: MetricTemplate| {
            canaries_using_template(&by_template, &template)
        })
        .graceful_shutdown_on(shutdown)
        .run(
            |canary, ctx| async move {
                let result = reconcile(canary.clone(), ctx.clone()).await;
                ctx.shared.backoff.record(canary.as_ref(), result)
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "canary reconcile");
            }
        })
        .await;
    // The last ticks' alerts still go out, within one send timeout.
    after
        .alerts
        .drain(crate::alert::SEND_TIMEOUT + Duration::from_secs(1))
        .await;
}

/// The Canaries whose target (or primary) is this Deployment.
fn canaries_of(store: &Store<Canary>, deployment: &Deployment) -> Vec<ObjectRef<Canary>> {
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let target = name.strip_suffix("-primary").unwrap_or(&name).to_string();
    store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|c| c.spec.target_ref.name == name || c.spec.target_ref.name == target)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The Canaries whose metrics name this MetricTemplate.
fn canaries_using_template(
    store: &Store<Canary>,
    template: &MetricTemplate,
) -> Vec<ObjectRef<Canary>> {
    let namespace = template.namespace().unwrap_or_default();
    let name = template.name_any();
    store
        .state()
        .iter()
        .filter(|c| {
            let own = c.namespace().unwrap_or_default();
            let metrics = c
                .analysis()
                .map(|a| a.metrics.as_slice())
                .unwrap_or_default();
            metrics
                .iter()
                .filter_map(|m| m.template_ref.as_ref())
                .any(|r| r.name == name && r.namespace.as_deref().unwrap_or(&own) == namespace)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn error_policy(canary: Arc<Canary>, error: &Error, ctx: Arc<Ctx>) -> Requeue {
    match error {
        Error::Conflict { .. } => Requeue::requeue(Duration::from_millis(200)),
        _ => Requeue::requeue(ctx.shared.backoff.retry_after(canary.as_ref(), error)),
    }
}

/// The analysis interval: `analysis.interval` (default 60s), never below the controller minimum.
fn interval(canary: &Canary, min: Duration) -> Duration {
    canary
        .analysis()
        .and_then(|a| a.interval.as_deref())
        .and_then(parse_go_duration)
        .unwrap_or(crate::api::flagger::canary::DEFAULT_ANALYSIS_INTERVAL)
        .max(min)
}

/// Refuses at start a `--mesh-provider` Sluice cannot route (every Canary without
/// `spec.provider` would be refused).
pub fn check_mesh_provider(name: &str) -> Result<(), UnroutedMeshProvider> {
    match routing::Provider::parse(name) {
        routing::Parsed::Unsupported => Err(UnroutedMeshProvider {
            provider: name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `--mesh-provider` names a provider Sluice does not route.
#[derive(Debug, thiserror::Error)]
#[error(
    "--mesh-provider {provider:?} (SLUICE_MESH_PROVIDER, Helm value meshProvider) is not routed by Sluice: use istio, gatewayapi:v1, gatewayapi:v1beta1, smi:v1alpha2/3/4, linkerd, traefik, nginx or kubernetes"
)]
pub struct UnroutedMeshProvider {
    provider: String,
}

/// Why the Canary's target is not run: Sluice runs Deployments only (Flagger also DaemonSets and,
/// with provider kubernetes, Services).
fn unsupported_target(canary: &Canary) -> Option<String> {
    let target = &canary.spec.target_ref;
    (target.kind != "Deployment").then(|| {
        format!(
            "spec.targetRef.kind: {:?} targets are not run by Sluice yet (only Deployment); the Canary is not acted on (nothing is created or changed) until spec.targetRef names a Deployment",
            target.kind
        )
    })
}

/// `spec.provider`, else the controller's `--mesh-provider`.
fn provider(canary: &Canary, mesh_provider: &str) -> String {
    canary
        .spec
        .provider
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| mesh_provider.to_string())
}

fn workload(deployment: &Deployment) -> Workload {
    let status = deployment.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let progress_deadline_exceeded = conditions.iter().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let unavailable_since = conditions
        .iter()
        .find(|c| {
            c.type_ == "Available"
                && c.status == "False"
                && c.reason.as_deref() == Some("MinimumReplicasUnavailable")
        })
        .and_then(|c| c.last_update_time.as_ref().map(|t| t.0));
    Workload {
        generation: deployment.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        spec_replicas: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        progress_deadline_exceeded,
        unavailable_since,
    }
}

fn template_hash(deployment: &Deployment) -> String {
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    crate::engine::hash::pod_template_hash(&template, None)
}

fn key(canary: &Canary) -> (String, String) {
    (canary.namespace().unwrap_or_default(), canary.name_any())
}

async fn reconcile(canary: Arc<Canary>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    // Planned from a partial view (a primary or a config not listed yet), a Canary could be
    // initialised again or start a run; nothing is written (not even a finalizer) before.
    if !ctx.synced() {
        return Ok(Requeue::requeue(CACHE_POLL));
    }
    if canary.meta().deletion_timestamp.is_some() {
        ctx.last_tick.remove(&canary);
    }
    // Routed through a kind the controller may not watch: its routes could be neither read nor
    // seen applied, so nothing is written (not even the finalizer) and the user is told once.
    if canary.meta().deletion_timestamp.is_none()
        && let Err(error) = ctx
            .routing
            .permitted(&canary, &provider(&canary, &ctx.mesh_provider))
    {
        ctx.warn_once(
            &canary,
            &format!(
                "routing-not-permitted:{}",
                canary.meta().generation.unwrap_or(0)
            ),
            "RoutingNotPermitted",
            &error.to_string(),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    // A provider Sluice cannot route: analysing and promoting without ever shifting traffic
    // would report a canary that never was. Refused like the above: nothing is written.
    if canary.meta().deletion_timestamp.is_none()
        && let Err(error) = routing::routable(&canary, &provider(&canary, &ctx.mesh_provider))
    {
        ctx.warn_once(
            &canary,
            &format!(
                "unsupported-provider:{}",
                canary.meta().generation.unwrap_or(0)
            ),
            "InvalidSpec",
            &format!(
                "spec.provider: {error}; the Canary is not acted on (nothing is created or changed) until spec.provider names one of them"
            ),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    // A DaemonSet (or any non-Deployment) target read as a Deployment would be half-run.
    if canary.meta().deletion_timestamp.is_none()
        && let Some(message) = unsupported_target(&canary)
    {
        ctx.refuse_spec(&canary, "target-kind", &message).await;
        return Ok(Requeue::await_change());
    }
    // revertOnDeletion; the primary and the Services go with the Canary (owner references).
    if let Some(requeue) = ctx.finalizer(&canary).await? {
        return Ok(requeue);
    }
    if canary.meta().deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    // An autoscaler Sluice cannot copy: acting would fight it over the target's replicas.
    if let Some(message) = hpa::unsupported(&canary) {
        ctx.warn_once(
            &canary,
            &format!("autoscaler:{}", canary.meta().generation.unwrap_or(0)),
            "InvalidSpec",
            &message,
        )
        .await;
        return Ok(Requeue::await_change());
    }
    // A metric Sluice cannot query would fail every check (or worse, be sent to the wrong
    // API): the Canary does not start; the template's change wakes it.
    if let Some(message) = ctx.unsupported_metric_template(&canary) {
        ctx.warn_once(
            &canary,
            &format!(
                "metric-template:{}:{message}",
                canary.meta().generation.unwrap_or(0)
            ),
            "InvalidSpec",
            &format!("{message}; the Canary is not acted on until it names a supported type"),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    // Fields the run reads differently from what they say (maxWeight 0, weights beside
    // iterations, ...) are followed as upstream does, and the user is told once per generation.
    for message in core::reinterpreted(&canary, &provider(&canary, &ctx.mesh_provider)) {
        let what = format!(
            "reinterpreted:{}:{message}",
            canary.meta().generation.unwrap_or(0)
        );
        ctx.warn_once(&canary, &what, "Reinterpreted", &message)
            .await;
    }
    let started = std::time::Instant::now();
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let target_name = canary.spec.target_ref.name.clone();
    let cached = |n: &str| ctx.deployments.get(&ObjectRef::new(n).within(&namespace));
    let target = cached(&target_name);
    ctx.warn_untracked_secrets(&canary, target.as_deref()).await;
    ctx.warn_webhook_timeouts(&canary).await;
    let primary = cached(&format!("{target_name}-primary"));
    let provider = provider(&canary, &ctx.mesh_provider);
    let interval = interval(&canary, ctx.min_interval);
    let last_tick = ctx.last_tick.get(&canary);
    // A step never advances before the route reports the last write applied.
    let observation = match ctx.routing.observe(&canary, &provider).await {
        Ok(observation) => observation,
        Err(error) => return ctx.refused(&canary, Error::Routing(error)).await,
    };
    let router = match observation {
        routing::Observation::Ready(weights) => weights,
        routing::Observation::Pending(reason) => {
            tracing::debug!(canary = %name, %namespace, %reason, "waiting for the route");
            return Ok(Requeue::requeue(Duration::from_secs(1)));
        }
        // No Gateway accepts the route: the run is held (not ticked), the cause told once.
        routing::Observation::NotAccepted { reason, warning } => {
            tracing::debug!(canary = %name, %namespace, %reason, "route not accepted");
            if let Some(message) = warning {
                let status = canary.status.clone().unwrap_or_default();
                ctx.event(&canary, &provider, &status, true, &message).await;
            }
            return Ok(Requeue::requeue(Duration::from_secs(2)));
        }
    };
    let mut observed = Observations {
        now: Timestamp::now(),
        last_tick,
        target: target.as_ref().map(|d| Target {
            template_hash: template_hash(d),
            workload: workload(d),
        }),
        primary: primary.as_deref().map(workload),
        configs: ctx.configs.observe(
            &namespace,
            target
                .as_ref()
                .and_then(|d| d.spec.as_ref()?.template.spec.as_ref()),
        ),
        router,
        verdicts: BTreeMap::new(),
    };

    let mut plan: Option<Plan> = None;
    for _ in 0..MAX_CHECKS {
        let outcome = core::tick(&Input {
            canary: &canary,
            provider: &provider,
            interval,
            observed: &observed,
        });
        match outcome {
            Outcome::Plan(p) => {
                plan = Some(*p);
                break;
            }
            Outcome::Need(check) => {
                let verdict = ctx.check(&canary, check).await;
                tracing::debug!(canary = %name, %namespace, ?check, ?verdict, "check");
                observed.verdicts.insert(check, verdict);
            }
        }
    }
    let Some(plan) = plan else {
        return Err(Error::TooManyChecks { namespace, name });
    };

    // The objects a status vouches for are made first (idempotently, and planned again on every
    // tick): a Canary never reads Initialized while its primary or Services are missing.
    let (first, then): (Vec<&Action>, Vec<&Action>) = plan
        .actions
        .iter()
        .partition(|a| matches!(a, Action::CreatePrimary | Action::EnsureServices));
    for action in first {
        if let Err(error) = ctx.execute(&canary, &provider, &plan.status, action).await {
            return ctx.refused(&canary, error).await;
        }
    }
    // These writes went through: a refusal they had is over, unless a later action of the last
    // tick was refused (told again below, so the condition does not flap every tick).
    let mut planned = plan.status.clone();
    if ctx.refused_later.get(&canary).is_none() {
        refusal::without_stalled(&mut planned);
    }
    let status = canary.status.clone().unwrap_or_default();
    let mut current = (*canary).clone();
    if planned != status {
        current.metadata.resource_version = Some(write_status(&canary, &planned, &ctx).await?);
        current.status = Some(planned.clone());
    }
    let elapsed = plan.ticked.then(|| started.elapsed());
    // Flagger records the weight the route carries (Blue/Green's status says 0 meanwhile).
    let routed = plan
        .actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::SetRoutes { canary_weight, .. } => Some(*canary_weight),
            _ => None,
        })
        .or(observed.router.map(|r| r.canary_weight));
    ctx.record(&canary, &provider, &status, &planned, routed, elapsed);
    if plan.ticked {
        ctx.last_tick.insert(&canary, observed.now);
    }
    let mut failed = None;
    for action in then {
        if let Err(error) = ctx.execute(&canary, &provider, &planned, action).await {
            failed = Some(error);
            break;
        }
    }
    if let Some(error) = failed {
        if refusal::refusal(&error).is_some() {
            ctx.refused_later.insert(&canary, ());
        }
        return ctx.refused(&current, error).await;
    }
    if ctx.refused_later.get(&canary).is_some() {
        // The next tick drops the condition.
        ctx.refused_later.remove(&canary);
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    Ok(match plan.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// Applies `status` (guarded by the resourceVersion `canary` was read at); the new
/// resourceVersion.
async fn write_status(canary: &Canary, status: &CanaryStatus, ctx: &Ctx) -> Result<String, Error> {
    let namespace = canary.namespace().unwrap_or_default();
    let name = canary.name_any();
    let patch = json!({
        "apiVersion": Canary::api_version(&()),
        "kind": Canary::kind(&()),
        "metadata": {"name": name, "resourceVersion": canary.resource_version()},
        "status": status,
    });
    let api: Api<Canary> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(written) => Ok(written.resource_version().unwrap_or_default()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict { namespace, name }),
        Err(source) => Err(Error::WriteStatus {
            namespace,
            name,
            source,
        }),
    }
}

fn owner(canary: &Canary) -> Option<OwnerReference> {
    canary.controller_owner_ref(&())
}

fn generated_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            FLUX_RECONCILE_ANNOTATION.to_string(),
            "disabled".to_string(),
        ),
        (HELM_DRIFT_ANNOTATION.to_string(), "disabled".to_string()),
    ])
}

/// The annotations of `<target>-primary`: the target's, as Flagger copies them (without Flux's
/// `toolkit.fluxcd.io` keys), but for the ones about the target alone (kubectl's last applied
/// configuration, the Deployment controller's revision), and the no-drift annotations.
fn primary_annotations(target: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    const ABOUT_THE_TARGET: [&str; 2] = [
        "kubectl.kubernetes.io/last-applied-configuration",
        "deployment.kubernetes.io/revision",
    ];
    let mut annotations: BTreeMap<String, String> = target
        .iter()
        .filter(|(k, _)| {
            !k.contains("toolkit.fluxcd.io") && !ABOUT_THE_TARGET.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.extend(generated_annotations());
    annotations
}

/// The selector label Flagger uses and its value on the target.
fn selector_label(target: &Deployment) -> Option<(String, String)> {
    let labels = target
        .spec
        .as_ref()?
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    SELECTOR_LABELS
        .iter()
        .find_map(|l| labels.get(*l).map(|v| (l.to_string(), v.clone())))
}

/// The store has its first full list.
fn listed<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// What the controller remembers about each Canary, by namespace and name, valid only for the
/// Canary (uid) it was remembered for: a Canary re-created under the same name never inherits
/// what its predecessor left (a write to wait for, a warning already given, a hold).
pub(crate) struct PerCanary<T>(Mutex<HashMap<(String, String), (String, T)>>);

impl<T> Default for PerCanary<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> PerCanary<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (String, T)>> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on what is remembered for `canary` (`None`: nothing, or only for another uid);
    /// what `f` leaves in the slot is remembered.
    pub(crate) fn update<R>(&self, canary: &Canary, f: impl FnOnce(&mut Option<T>) -> R) -> R {
        let uid = canary.uid().unwrap_or_default();
        let mut map = self.lock();
        let mut slot = map
            .remove(&key(canary))
            .filter(|(u, _)| *u == uid)
            .map(|(_, v)| v);
        let result = f(&mut slot);
        if let Some(value) = slot {
            map.insert(key(canary), (uid, value));
        }
        result
    }

    pub(crate) fn get(&self, canary: &Canary) -> Option<T>
    where
        T: Clone,
    {
        self.update(canary, |slot| slot.clone())
    }

    pub(crate) fn insert(&self, canary: &Canary, value: T) {
        self.update(canary, |slot| *slot = Some(value));
    }

    pub(crate) fn remove(&self, canary: &Canary) {
        self.update(canary, |slot| *slot = None);
    }

    /// Forgets the Canaries `store` no longer holds (by uid). Each entry is looked up in the
    /// store while the lock is held, so an entry made for a Canary just created (already in the
    /// store: the reflector writes before the controller sees it) is never dropped.
    pub(crate) fn forget_absent(&self, store: &Store<Canary>) {
        self.lock().retain(|(namespace, name), (uid, _)| {
            store
                .get(&ObjectRef::new(name).within(namespace))
                .is_some_and(|c| c.uid().as_deref() == Some(uid.as_str()))
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The verbs of `verbs` the controller may not use on `group`/`resource` where it watches (in
/// `namespace`, else cluster-wide), asked with SelfSubjectAccessReviews; `None` when the
/// apiserver could not be asked (then the first list tells).
pub(crate) async fn missing_verbs(
    client: &kube::Client,
    namespace: Option<&str>,
    group: &str,
    resource: &str,
    verbs: &[&'static str],
) -> Option<Vec<&'static str>> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for verb in verbs {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: namespace.map(str::to_owned),
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &review).await {
            Ok(review) => {
                if !review.status.is_some_and(|s| s.allowed) {
                    missing.push(*verb);
                }
            }
            Err(error) => {
                tracing::debug!(%group, %resource, %error, "could not ask whether the controller may watch; the first list will tell");
                return None;
            }
        }
    }
    Some(missing)
}

impl Ctx {
    /// Drops what is remembered about Canaries that are gone: per-Canary state here and in
    /// `routing`, warnings given, and (`recording`) their metric series.
    fn forget_deleted(&self) {
        if !listed(&self.canaries) {
            return;
        }
        self.last_tick.forget_absent(&self.canaries);
        self.refused_later.forget_absent(&self.canaries);
        self.routing.forget_absent(&self.canaries);
        {
            let mut warned = self
                .warned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let present: std::collections::HashSet<String> = self
                .canaries
                .state()
                .iter()
                .filter_map(|c| c.uid())
                .collect();
            warned.retain(|(uid, _)| present.contains(uid));
        }
        self.record_totals();
    }

    /// Every watch cache has its first list: Canaries, Deployments, Services, the tracked configs
    /// and the routes (a kind the controller may not watch excepted).
    fn synced(&self) -> bool {
        listed(&self.canaries)
            && listed(&self.deployments)
            && listed(&self.services)
            && self.configs.ready()
            && self.routing.synced()
            && listed(&self.metric_templates)
    }

    /// A Warning Event about `what`, once per Canary (and controller process), not per tick.
    async fn warn_once(&self, canary: &Canary, what: &str, reason: &str, message: &str) {
        let uid = canary.uid().unwrap_or_default();
        {
            let Ok(mut warned) = self.warned.lock() else {
                return;
            };
            // The Canaries that are gone are forgotten by the sweep.
            if !warned.insert((uid, what.to_string())) {
                return;
            }
        }
        tracing::warn!(canary = %canary.name_any(), namespace = ?canary.namespace(), %reason, %message, "canary warning");
        let status = canary.status.clone().unwrap_or_default();
        self.event_with_reason(canary, &status, true, reason, message)
            .await;
    }

    /// Tells a Canary once that the Secrets its target references are not tracked, and why.
    async fn warn_untracked_secrets(&self, canary: &Canary, target: Option<&Deployment>) {
        if !self.configs.secrets_disabled() {
            return;
        }
        let Some(target) = target else {
            return;
        };
        let Some(pod) = target.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            return;
        };
        let secrets = config_tracking::references(pod).secrets;
        if secrets.is_empty() {
            return;
        }
        let names: Vec<String> = secrets.into_iter().collect();
        let target = target.name_any();
        let message = format!(
            "Secrets of {target} are not tracked ({}): the controller's ServiceAccount may not list/watch Secrets, so a change to them does not start a run and {target}-primary uses them as they are (no -primary copies); {} to track them",
            names.join(", "),
            config_tracking::SECRETS_GRANT
        );
        self.warn_once(canary, "untracked-secrets", "SecretsNotTracked", &message)
            .await;
    }

    fn target(&self, canary: &Canary) -> Option<Arc<Deployment>> {
        let namespace = canary.namespace().unwrap_or_default();
        self.deployments
            .get(&ObjectRef::new(&canary.spec.target_ref.name).within(&namespace))
    }

    fn write_error(
        canary: &Canary,
        action: &'static str,
        kind: &'static str,
        name: &str,
        source: kube::Error,
    ) -> Error {
        Error::Write {
            action,
            kind,
            namespace: canary.namespace().unwrap_or_default(),
            name: name.to_string(),
            canary: canary.name_any(),
            source,
        }
    }

    fn no_selector(canary: &Canary) -> Error {
        Error::NoSelectorLabel {
            namespace: canary.namespace().unwrap_or_default(),
            name: canary.name_any(),
            target: canary.spec.target_ref.name.clone(),
            labels: SELECTOR_LABELS,
        }
    }

    async fn execute(
        &self,
        canary: &Canary,
        provider: &str,
        status: &CanaryStatus,
        action: &Action,
    ) -> Result<(), Error> {
        let namespace = canary.namespace().unwrap_or_default();
        match action {
            Action::CreatePrimary => {
                let primary = format!("{}-primary", canary.spec.target_ref.name);
                let cached = self
                    .deployments
                    .get(&ObjectRef::new(&primary).within(&namespace));
                if cached.is_none() {
                    self.apply_primary(canary, None).await?;
                    self.reconcile_primary_scaler(canary).await?;
                }
                Ok(())
            }
            Action::Promote => {
                // With an autoscaler the primary's HPA owns its replicas.
                let replicas = self
                    .target(canary)
                    .and_then(|t| t.spec.as_ref()?.replicas)
                    .filter(|_| canary.spec.autoscaler_ref.is_none());
                self.apply_primary(canary, replicas.filter(|r| *r > 0))
                    .await?;
                self.reconcile_primary_scaler(canary).await
            }
            Action::EnsureServices => self.ensure_services(canary).await,
            Action::ScaleTarget { replicas } => {
                let Some(target) = self.target(canary) else {
                    return Ok(());
                };
                let current = target.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                if current == *replicas {
                    return Ok(());
                }
                let api: Api<Deployment> = Api::namespaced(self.shared.client.clone(), &namespace);
                let name = target.name_any();
                api.patch(
                    &name,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await
                .map_err(|e| Self::write_error(canary, "scaling", "Deployment", &name, e))?;
                Ok(())
            }
            Action::SetRoutes {
                primary_weight,
                canary_weight,
                mirrored,
            } => {
                let split = routing::Split {
                    primary: *primary_weight,
                    canary: *canary_weight,
                    mirrored: *mirrored,
                };
                // An unroutable provider never gets here (refused before anything is planned).
                Ok(self.routing.set_routes(canary, provider, split).await?)
            }
            Action::RunHooks(hook) => {
                let hooks: Vec<CanaryWebhook> = canary
                    .analysis()
                    .map(|a| a.webhooks_of(*hook).cloned().collect())
                    .unwrap_or_default();
                let phase = status.phase.unwrap_or(CanaryPhase::Unspecified);
                for hook in hooks {
                    if let Err(message) = self.call_webhook(canary, &hook, phase).await {
                        tracing::info!(canary = %canary.name_any(), %namespace, hook = %hook.name, %message, "post-rollout hook failed (ignored)");
                    }
                }
                Ok(())
            }
            Action::Event { warning, message } => {
                self.event(canary, provider, status, *warning, message)
                    .await;
                Ok(())
            }
            Action::Alert {
                severity,
                message,
                metadata,
            } => {
                self.alert(canary, status, *severity, message, *metadata);
                Ok(())
            }
        }
    }

    async fn event(
        &self,
        canary: &Canary,
        _provider: &str,
        status: &CanaryStatus,
        warning: bool,
        message: &str,
    ) {
        self.event_with_reason(canary, status, warning, "Synced", message)
            .await;
    }

    /// An Event with its own reason (Flagger's are all `Synced`), also sent to the event webhooks.
    async fn event_with_reason(
        &self,
        canary: &Canary,
        status: &CanaryStatus,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        // Created directly rather than through kube's Recorder: it folds every Event with the same
        // type, reason and action into one series keeping the first note, and Flagger gives all
        // its Events the reason `Synced`.
        let reference = canary.object_ref(&());
        let name = canary.name_any();
        let event = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}-"), "namespace": canary.namespace()},
            "eventTime": MicroTime(Timestamp::now()),
            "type": if warning { "Warning" } else { "Normal" },
            "reason": reason,
            "action": "Reconcile",
            "note": super::event_note(message),
            "regarding": reference,
            "reportingController": "sluice",
            "reportingInstance": std::env::var("POD_NAME").unwrap_or_else(|_| "sluice".into()),
        });
        let created = match serde_json::from_value::<EventV1>(event) {
            Ok(event) => {
                let api: Api<EventV1> = Api::namespaced(
                    self.shared.client.clone(),
                    &canary.namespace().unwrap_or_default(),
                );
                api.create(&PostParams::default(), &event)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = created {
            tracing::warn!(canary = %name, %error, "recording an event");
        }
        self.event_webhooks(canary, status, warning, message).await;
    }

    /// Posts an Event to the Canary's `event` webhooks, else to `--event-webhook` (as Flagger's
    /// `sendEventToWebhook`): `eventMessage`, `eventType` and `timestamp` (ms) in the metadata,
    /// over any of the hook's own keys.
    async fn event_webhooks(
        &self,
        canary: &Canary,
        status: &CanaryStatus,
        warning: bool,
        message: &str,
    ) {
        let mut hooks: Vec<CanaryWebhook> = canary
            .analysis()
            .map(|a| a.webhooks_of(HookType::Event).cloned().collect())
            .unwrap_or_default();
        let global = match (&self.alerting.event_webhook, hooks.is_empty()) {
            (Some(destination), true) => {
                hooks.push(CanaryWebhook {
                    name: "events".into(),
                    url: destination.url.clone(),
                    ..CanaryWebhook::default()
                });
                Some(destination)
            }
            _ => None,
        };
        let timestamp = Timestamp::now().as_millisecond().to_string();
        for mut hook in hooks {
            let mut metadata = hook.metadata.take().unwrap_or_default();
            metadata.insert("eventMessage".into(), message.into());
            metadata.insert(
                "eventType".into(),
                if warning { "Warning" } else { "Normal" }.into(),
            );
            metadata.insert("timestamp".into(), timestamp.clone());
            hook.metadata = Some(metadata);
            let phase = status.phase.unwrap_or(CanaryPhase::Unspecified);
            if let Err(error) = self.call_webhook(canary, &hook, phase).await {
                // The flag's URL is a credential: never logged.
                let error = global.map_or(error.clone(), |d| d.mask(&error));
                tracing::debug!(canary = %canary.name_any(), hook = %hook.name, %error, "event webhook failed");
            }
        }
    }

    /// Server-side applies `<target>-primary` from the target: its template with the selector
    /// label's value suffixed `-primary`, owned by the Canary.
    async fn apply_primary(&self, canary: &Canary, replicas: Option<i32>) -> Result<(), Error> {
        let Some(target) = self.target(canary) else {
            return Ok(());
        };
        let namespace = canary.namespace().unwrap_or_default();
        let (label, value) = selector_label(&target).ok_or_else(|| Self::no_selector(canary))?;
        let primary_name = format!("{}-primary", target.name_any());
        let primary_value = format!("{value}-primary");
        let spec = target.spec.clone().unwrap_or_default();
        // The configs it references are copied as `-primary` and the copy references those.
        let configs = self
            .configs
            .observe(&namespace, spec.template.spec.as_ref());
        config_tracking::copy_to_primary(&self.shared, canary, &configs).await?;
        let mut pod_template = spec.template.clone();
        if let Some(pod) = pod_template.spec.as_mut() {
            config_tracking::rewrite(pod, &configs);
        }
        let mut template = serde_json::to_value(&pod_template).unwrap_or(Value::Null);
        template["metadata"]["labels"][&label] = json!(primary_value);
        let mut match_labels = spec.selector.match_labels.clone().unwrap_or_default();
        match_labels.insert(label.clone(), primary_value.clone());
        let existing = self
            .deployments
            .get(&ObjectRef::new(&primary_name).within(&namespace));
        let replicas = replicas
            .or_else(|| existing.as_ref().and_then(|p| p.spec.as_ref()?.replicas))
            .or(spec.replicas.filter(|r| *r > 0))
            .unwrap_or(1);
        let mut labels = match &self.include_label_prefix {
            Some(prefixes) => crate::engine::label_prefix::include(target.labels(), prefixes),
            None => target.labels().clone(),
        };
        labels.insert(label.clone(), primary_value.clone());
        let mut body = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": primary_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": primary_annotations(target.annotations()),
                "ownerReferences": owner(canary).into_iter().collect::<Vec<_>>(),
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": match_labels},
                "template": template,
            },
        });
        for field in [
            "minReadySeconds",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
            "strategy",
        ] {
            if let Some(v) = serde_json::to_value(&spec)
                .ok()
                .and_then(|s| s.get(field).cloned())
            {
                body["spec"][field] = v;
            }
        }
        let api: Api<Deployment> = Api::namespaced(self.shared.client.clone(), &namespace);
        api.patch(
            &primary_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| Self::write_error(canary, "applying", "Deployment", &primary_name, e))?;
        Ok(())
    }

    /// A JSON patch of a Service in the Canary's namespace.
    async fn json_patch_service(
        &self,
        canary: &Canary,
        action: &'static str,
        name: &str,
        patch: Value,
    ) -> Result<(), Error> {
        let namespace = canary.namespace().unwrap_or_default();
        let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Patch {
            namespace: namespace.clone(),
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let api: Api<Service> = Api::namespaced(self.shared.client.clone(), &namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::<()>::Json(patch))
            .await
            .map_err(|e| Self::write_error(canary, action, "Service", name, e))?;
        Ok(())
    }

    /// Runs one check the core asked for.
    async fn check(&self, canary: &Canary, check: Check) -> Verdict {
        let analysis = canary.analysis().cloned().unwrap_or_default();
        let phase = canary
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(CanaryPhase::Unspecified);
        let hook_type = match check {
            Check::ConfirmRollout => HookType::ConfirmRollout,
            Check::PreRollout => HookType::PreRollout,
            Check::Analysis => HookType::Rollout,
            Check::ConfirmTrafficIncrease => HookType::ConfirmTrafficIncrease,
            Check::ConfirmPromotion => HookType::ConfirmPromotion,
            Check::Rollback => HookType::Rollback,
        };
        let hooks: Vec<CanaryWebhook> = analysis.webhooks_of(hook_type).cloned().collect();
        if check == Check::Rollback {
            for hook in &hooks {
                let phase = core::hook_phase(check, phase);
                if self.call_webhook(canary, hook, phase).await.is_ok() {
                    return Verdict::pass();
                }
            }
            return Verdict::fail("no rollback requested");
        }
        let hook_phase = core::hook_phase(check, phase);
        for hook in &hooks {
            if let Err(message) = self.call_webhook(canary, hook, hook_phase).await {
                let what = match check {
                    Check::Analysis => "external check",
                    Check::PreRollout => "pre-rollout check",
                    _ => "gate",
                };
                return Verdict::fail(format!(
                    "Halt {}.{} advancement {what} {} failed {message}",
                    canary.name_any(),
                    canary.namespace().unwrap_or_default(),
                    hook.name
                ));
            }
        }
        if check == Check::Analysis {
            for metric in &analysis.metrics {
                let verdict = self.metric(canary, metric).await;
                if !verdict.ok {
                    return verdict;
                }
            }
        }
        Verdict::pass()
    }

    /// Tells a Canary once per generation which webhook timeouts are cut to the maximum.
    async fn warn_webhook_timeouts(&self, canary: &Canary) {
        let Some(analysis) = canary.analysis() else {
            return;
        };
        let generation = canary.meta().generation.unwrap_or(0);
        for (index, hook) in analysis.webhooks.iter().enumerate() {
            if hook.timeout_above_max() {
                let message = format!(
                    "spec.analysis.webhooks[{index}].timeout {:?} is above the maximum of {}s; webhook {} is called with a {}s timeout",
                    hook.timeout.as_deref().unwrap_or_default(),
                    MAX_WEBHOOK_TIMEOUT.as_secs(),
                    hook.name,
                    MAX_WEBHOOK_TIMEOUT.as_secs()
                );
                let what = format!("webhook-timeout:{generation}:{index}");
                self.warn_once(canary, &what, "InvalidSpec", &message).await;
            }
        }
    }

    /// POSTs Flagger's payload to a webhook, with its timeout and retries; 200–202 passes.
    async fn call_webhook(
        &self,
        canary: &Canary,
        hook: &CanaryWebhook,
        phase: CanaryPhase,
    ) -> Result<(), String> {
        let status = canary.status.clone().unwrap_or_default();
        let checksum = {
            let text = format!(
                "{}{}",
                status.last_applied_spec.unwrap_or_default(),
                serde_json::to_string(&status.tracked_configs).unwrap_or_default()
            );
            crate::engine::hash::safe_encode(
                &crate::engine::hash::fnv32a(text.as_bytes()).to_string(),
            )
        };
        let payload = json!({
            "name": canary.name_any(),
            "namespace": canary.namespace().unwrap_or_default(),
            "phase": core::phase_name(phase),
            "checksum": checksum,
            "metadata": hook.metadata.clone().unwrap_or_default(),
        });
        let attempts = hook.retries().max(0) + 1;
        let client = self
            .http
            .get(hook.disable_tls.unwrap_or(false), false)
            .map_err(|e| format!("calling {}: {e}", hook.url))?;
        let mut last = String::new();
        for _ in 0..attempts {
            let request = client
                .post(&hook.url)
                .timeout(hook.timeout())
                .json(&payload)
                .send()
                .await;
            match request {
                Ok(response) if (200..=202).contains(&response.status().as_u16()) => return Ok(()),
                Ok(response) => {
                    let answer = crate::outbound::describe_answer(response, hook.timeout()).await;
                    last = format!("{} answered {answer}", hook.url);
                }
                Err(error) if error.is_timeout() => {
                    last = format!("{} did not answer within {:?}", hook.url, hook.timeout());
                }
                Err(error) => {
                    last = format!(
                        "calling {}: {}",
                        hook.url,
                        crate::outbound::error_chain(&error)
                    );
                }
            }
        }
        Err(last)
    }

    /// One metric check: a MetricTemplate (through the provider of its type), an inline query or
    /// a builtin (on Prometheus), judged as Flagger does.
    async fn metric(&self, canary: &Canary, metric: &CanaryMetric) -> Verdict {
        let namespace = canary.namespace().unwrap_or_default();
        let vars = MetricVars::for_canary(canary, metric);
        let server = canary.spec.metrics_server.clone().filter(|s| !s.is_empty());
        let plain = |query: String| {
            let prom = Metric {
                name: metric.name.clone(),
                provider: MetricProvider {
                    prometheus: Some(PrometheusMetric {
                        query: Some(query),
                        address: server.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            (prom.clone(), prom, MetricProviderType::Prometheus)
        };
        let ((real, masked, kind), builtin) = if let Some(reference) = &metric.template_ref {
            match self.template_metric(canary, metric, reference, &vars).await {
                Ok(triple) => (triple, None),
                Err(message) => return Verdict::fail(format!("Halt advancement: {message}")),
            }
        } else if let Some(query) = metric.query.as_deref().filter(|q| !q.trim().is_empty()) {
            match render(query, &vars) {
                Ok(q) => (plain(q), None),
                Err(e) => {
                    return Verdict::fail(format!("Halt advancement: metric {}: {e}", metric.name));
                }
            }
        } else {
            let provider = metrics_provider(canary.spec.provider.as_deref(), &self.mesh_provider);
            match builtin_query(&metric.name, &provider, &vars) {
                Some(Ok(b)) => (plain(b.query.clone()), Some(b)),
                Some(Err(e)) => {
                    return Verdict::fail(format!("Halt advancement: {e}"));
                }
                None => {
                    return Verdict::fail(format!(
                        "Halt advancement: metric {} has neither templateRef nor query and is not a builtin (request-success-rate, request-duration)",
                        metric.name
                    ));
                }
            }
        };
        let observed = self.measure(canary, &real, &masked).await;
        let (value, query) = metric_template::value(kind, observed);
        let value = match value {
            Ok(v) => v,
            Err(message) => {
                return Verdict::fail(format!(
                    "Halt advancement: metric {} query failed: {message}",
                    metric.name
                ));
            }
        };
        let value = match (&builtin, value) {
            (Some(b), Some(v)) => Some(b.check_value(v)),
            (_, v) => v,
        };
        if let Some(v) = value {
            let target = &canary.spec.target_ref.name;
            self.shared
                .metrics
                .set_canary_metric_analysis(&namespace, target, &metric.name, v);
        }
        let query = query.unwrap_or_default();
        let verdict = judge(&MetricCheck::new(
            metric,
            &query,
            value,
            builtin.as_ref().map(|b| b.builtin),
        ));
        Verdict {
            ok: verdict.passed,
            message: verdict.message,
        }
    }

    /// The MetricTemplate a metric names, from the watch cache (or read, when it is in a
    /// namespace the controller does not watch).
    async fn metric_template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<MetricTemplate>, kube::Error> {
        if let Some(cached) = self
            .metric_templates
            .get(&ObjectRef::new(name).within(namespace))
        {
            return Ok(Some((*cached).clone()));
        }
        let api: Api<MetricTemplate> = Api::namespaced(self.shared.client.clone(), namespace);
        api.get_opt(name).await
    }

    /// The provider metric (its masked copy, and the template's type) of a metric that names a
    /// MetricTemplate: every field of the template's provider, credentials from its `secretRef`.
    async fn template_metric(
        &self,
        canary: &Canary,
        metric: &CanaryMetric,
        reference: &crate::api::flagger::canary::NamespacedReference,
        vars: &MetricVars,
    ) -> Result<(Metric, Metric, MetricProviderType), String> {
        let ns = reference
            .namespace
            .clone()
            .unwrap_or_else(|| canary.namespace().unwrap_or_default());
        let shown = format!("MetricTemplate {ns}/{}", reference.name);
        let template = match self.metric_template(&ns, &reference.name).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(format!(
                    "{shown} of metric {} does not exist: create it or fix templateRef",
                    metric.name
                ));
            }
            Err(error) => return Err(format!("reading {shown}: {error}")),
        };
        if let Some(message) = metric_template::unsupported_type(&template) {
            return Err(message);
        }
        let query = render(&template.spec.query, vars)
            .map_err(|e| format!("metric {} ({shown}): {e}", metric.name))?;
        let secret = match &template.spec.provider.secret_ref {
            None => None,
            Some(secret) => {
                let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &ns);
                let found = api.get_opt(&secret.name).await.map_err(|e| {
                    format!(
                        "reading Secret {ns}/{} ({shown} spec.provider.secretRef): {e}",
                        secret.name
                    )
                })?;
                Some(found.ok_or_else(|| {
                    format!(
                        "Secret {ns}/{} named by {shown} spec.provider.secretRef does not exist",
                        secret.name
                    )
                })?)
            }
        };
        let server = canary.spec.metrics_server.clone().filter(|s| !s.is_empty());
        let (real, masked) =
            metric_template::metric(&template, &metric.name, &query, server, secret.as_ref())?;
        Ok((real, masked, template.spec.provider.r#type))
    }

    /// The first MetricTemplate the Canary's metrics name (in a namespace the controller
    /// watches) whose provider type Sluice cannot query, as a message naming the field.
    fn unsupported_metric_template(&self, canary: &Canary) -> Option<String> {
        let namespace = canary.namespace().unwrap_or_default();
        let metrics = canary
            .analysis()
            .map(|a| a.metrics.as_slice())
            .unwrap_or_default();
        metrics.iter().enumerate().find_map(|(i, metric)| {
            let reference = metric.template_ref.as_ref()?;
            let ns = reference.namespace.as_deref().unwrap_or(&namespace);
            let template = self
                .metric_templates
                .get(&ObjectRef::new(&reference.name).within(ns))?;
            metric_template::unsupported_type(&template)
                .map(|message| format!("spec.analysis.metrics[{i}].templateRef: {message}"))
        })
    }

    /// Takes one measurement of `metric` through its provider (the same ones AnalysisRuns use).
    /// Messages and the reported query come from `masked`.
    async fn measure(&self, canary: &Canary, metric: &Metric, masked: &Metric) -> Observed {
        let provider = match self.providers.get(metric) {
            Ok(p) => p,
            Err(e) => return Observed::error(e.to_string()),
        };
        let ctx = MeasureContext {
            client: self.shared.client.clone(),
            namespace: canary.namespace().unwrap_or_default(),
            run_name: canary.name_any(),
            run_uid: canary.uid().unwrap_or_default(),
            default_prometheus_address: self.default_prometheus.clone(),
            now: Timestamp::now(),
            measurement_number: 1,
        };
        provider.run(&ctx, metric, masked).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    #[test]
    fn selector_label_prefers_app_then_name() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "podinfo"},
            "spec": {"selector": {"matchLabels": {"name": "x", "app": "podinfo"}},
                     "template": {}},
        }))
        .unwrap();
        assert_eq!(
            selector_label(&d),
            Some(("app".to_string(), "podinfo".to_string()))
        );
    }

    #[test]
    fn workload_reads_deadline_conditions() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "podinfo", "generation": 3},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                "availableReplicas": 1, "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
                    {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                     "lastUpdateTime": "2024-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let w = workload(&d);
        assert!(w.progress_deadline_exceeded);
        assert_eq!(
            w.unavailable_since.map(|t| t.as_second()),
            Some(1_704_067_200)
        );
        assert_eq!(
            (w.generation, w.spec_replicas, w.available_replicas),
            (3, 2, 1)
        );
    }

    #[test]
    fn a_cache_counts_as_listed_only_after_its_first_full_list() {
        let (store, mut writer) = reflector::store::<Service>();
        assert!(!listed(&store));
        let service: Service =
            serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "n"}})).unwrap();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(service));
        assert!(!listed(&store), "half a list is not a list");
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert!(listed(&store));
        // A cache that never started (its writer gone) is not listed either.
        let (never, writer) = reflector::store::<Service>();
        drop(writer);
        assert!(!listed(&never));
    }

    #[test]
    fn the_primary_gets_the_targets_annotations_but_fluxs_and_the_targets_own() {
        let target = BTreeMap::from(
            [
                ("app.kubernetes.io/instance", "test-annotation-prefix"),
                ("kustomize.toolkit.fluxcd.io/checksum", "abc"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
                ("deployment.kubernetes.io/revision", "3"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let annotations = primary_annotations(&target);
        assert_eq!(
            annotations.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "app.kubernetes.io/instance",
                HELM_DRIFT_ANNOTATION,
                FLUX_RECONCILE_ANNOTATION
            ]
        );
    }

    #[test]
    fn interval_honours_the_controller_minimum() {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "c"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                     "analysis": {"interval": "2s"}},
        }))
        .unwrap();
        assert_eq!(
            interval(&canary, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            interval(&canary, Duration::from_secs(1)),
            Duration::from_secs(2)
        );
    }
}
