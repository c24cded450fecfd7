//! `sluice controller`: observes the cluster through watch caches, runs the pure engine, executes
//! the actions it returns and writes status.
//!
//! Each kind has its own module with a kube-runtime `Controller`; this module wires them to one
//! client, one metrics registry and one HTTP server, and stops them all on SIGTERM / Ctrl-C
//! (in-flight reconciles finish first).
//!
//! Nothing here decides what a rollout or a run should do next: that is `crate::engine`.

pub mod analysis_run;
pub mod analysis_template;
pub mod backoff;
pub mod canary;
pub mod client_metrics;
pub mod experiment;
pub mod fresh;
pub mod http;
pub mod instance;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod rollout;
pub mod shared_watch;
pub mod status_route;
pub mod template_fetch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

/// The field manager for every write Sluice makes (server-side apply).
pub const FIELD_MANAGER: &str = "sluice";

/// Which halves of the controller run (`--argo`, `--flagger`); the chart drops the RBAC of a
/// half turned off.
#[derive(Clone, Copy, Debug)]
pub struct Apis {
    /// Rollouts, AnalysisRuns, AnalysisTemplates, Experiments.
    pub argo: bool,
    /// Canaries (with their MetricTemplates and AlertProviders).
    pub flagger: bool,
}

impl Apis {
    /// How many controllers must report their caches synced before `/readyz` says ready: the
    /// Rollout and AnalysisRun controllers, the Canary controller.
    fn controllers(self) -> usize {
        2 * usize::from(self.argo) + usize::from(self.flagger)
    }
}

/// The longest Event note the apiserver accepts, in bytes (`events.k8s.io/v1` refuses longer).
pub const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// `text` as an Event note: cut (on a character boundary, marked with `…`) to
/// [`MAX_EVENT_NOTE_BYTES`], so a long message is shortened rather than the Event refused.
pub fn event_note(text: &str) -> String {
    if text.len() <= MAX_EVENT_NOTE_BYTES {
        return text.to_string();
    }
    const MARK: &str = "…";
    let mut end = MAX_EVENT_NOTE_BYTES - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// What every controller shares.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<metrics::Metrics>,
    /// Watch and manage only this namespace.
    pub namespace: Option<String>,
    pub ready: Readiness,
    /// Reconcile failure streaks, by object uid (of every kind: uids are unique).
    pub backoff: Arc<backoff::Backoff>,
    /// Which Argo objects this controller handles (`--instance-id`).
    pub instance: instance::Instance,
}

impl Shared {
    /// The API of a namespaced kind: in the watched namespace, or in all of them.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }
}

/// Counts controllers whose watch caches have synced; `/readyz` turns ready when all have.
#[derive(Clone)]
pub struct Readiness {
    health: Arc<http::Health>,
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl Readiness {
    fn new(health: Arc<http::Health>, controllers: usize) -> Self {
        health.ready.store(controllers == 0, Ordering::Relaxed);
        Self {
            health,
            pending: Arc::new(controllers.into()),
        }
    }

    /// One controller's caches have synced.
    pub fn synced(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.health.ready.store(true, Ordering::Relaxed);
        }
    }
}

/// Resolves once `store` has its first full list.
///
/// Polls instead of awaiting `Store::wait_until_ready` from a second task: in kube-runtime 4.2
/// that future is backed by a oneshot channel that keeps a single waker, so when the
/// `Controller` waits on the same store one of the two waiters is never woken.
pub async fn store_synced<K>(store: &kube::runtime::reflector::Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while store.wait_until_ready().now_or_never().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How `sluice controller` runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch and manage only this namespace (default: the whole cluster).
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub http_addr: SocketAddr,
    /// Prometheus address for metrics that name none.
    pub default_prometheus: Option<String>,
    /// Elect a leader on this Lease (`namespace`, `name`) before acting; `None` acts at once.
    pub leader_election: Option<(String, String)>,
    /// This replica's identity in the election.
    pub identity: String,
    /// Which APIs are served.
    pub apis: Apis,
    /// How long the controller may wait on the apiserver without any answer before `/healthz`
    /// fails ([`liveness`]).
    pub healthz_stall: std::time::Duration,
    /// Follow HTTP redirects from metric providers, webhooks and alert providers (off by default).
    pub http_follow_redirects: bool,
    /// The namespace whose AlertProviders every Canary may use, besides its own.
    pub alert_provider_namespace: Option<String>,
    /// The provider of Canaries without `spec.provider` (`--mesh-provider`).
    pub mesh_provider: String,
    /// Flagger's controller-wide notifier and event webhook (`--slack-url`, `--event-webhook`, …).
    pub alerting: crate::alert::global::GlobalAlerting,
    /// The target labels a `-primary` Deployment gets (`--include-label-prefix`; `None`: all).
    pub include_label_prefix: Option<Vec<String>>,
    /// Which Argo objects to handle (`--instance-id`).
    pub instance: instance::Instance,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the cluster (kubeconfig or in-cluster config): {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Leader(#[from] leader::Error),
    #[error("serving metrics and health on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The kube client every controller shares (kubeconfig or in-cluster config, as
/// `Client::try_default`), with each request counted on `/metrics`
/// (`controller_clientset_k8s_request_total`) and its answer noted for `/healthz`.
async fn counted_client(
    metrics: &metrics::Metrics,
    liveness: &Arc<liveness::Liveness>,
) -> Result<Client, Error> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::Client(kube::Error::InferConfig(e)))?;
    let layer = client_metrics::CountLayer::new(metrics.api_requests.clone())
        .with_liveness(liveness.clone());
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(Error::Client)?
        .with_layer(&layer)
        .build())
}

/// Every controller of the enabled APIs, until `shutdown`; add new ones here (and to
/// [`Apis::controllers`] if they report readiness).
async fn controllers(
    shared: Shared,
    config: &Config,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    // Deployments and Services are read by both the Rollout and the Canary controllers.
    let mut deployments = shared_watch::SharedWatch::new(shared.api());
    let mut services = shared_watch::SharedWatch::new(shared.api());
    // One HTTP client cache (and redirect setting) for metrics, webhooks and alerts.
    let http = Arc::new(crate::outbound::HttpClients::new(
        config.http_follow_redirects,
    ));
    let argo = config.apis.argo.then(|| {
        let mut analysis = analysis_run::Ctx::new(
            shared.client.clone(),
            shared.recorder.clone(),
            shared.metrics.clone(),
            FIELD_MANAGER.to_string(),
            config.default_prometheus.clone(),
        );
        analysis.providers = crate::analysis::Providers::with_http(http.clone());
        let analysis = Arc::new(analysis);
        let ready = shared.ready.clone();
        let namespace = shared.namespace.clone();
        let watch = shared.instance.watch();
        let analysis_runs = {
            let shutdown = shutdown.clone();
            async move {
                analysis_run::run(analysis, namespace.as_deref(), watch, shutdown, move || {
                    ready.synced()
                })
                .await
            }
        };
        let rollouts = rollout::run(
            shared.clone(),
            deployments.subscribe(),
            services.subscribe(),
            shutdown.clone(),
        );
        let templates = analysis_template::run(shared.clone(), shutdown.clone());
        let experiments = experiment::run(shared.clone(), shutdown.clone());
        async move {
            tokio::join!(analysis_runs, rollouts, templates, experiments);
        }
    });
    let flagger = config.apis.flagger.then(|| {
        canary::run(
            shared.clone(),
            deployments.subscribe(),
            services.subscribe(),
            canary::Options {
                default_prometheus: config.default_prometheus.clone(),
                http,
                alert_provider_namespace: config.alert_provider_namespace.clone(),
                mesh_provider: config.mesh_provider.clone(),
                alerting: config.alerting.clone(),
                include_label_prefix: config.include_label_prefix.clone(),
            },
            shutdown.clone(),
        )
    });
    deployments.start();
    services.start();
    let argo = async move {
        if let Some(argo) = argo {
            argo.await
        }
    };
    let flagger = async move {
        if let Some(flagger) = flagger {
            flagger.await
        }
    };
    tokio::join!(argo, flagger);
}

/// Runs every controller until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::new());
    let liveness = liveness::Liveness::new(config.healthz_stall);
    let client = counted_client(&metrics, &liveness).await?;
    let health = Arc::new(http::Health {
        metrics: metrics.clone(),
        ready: Default::default(),
        liveness,
    });
    let shutdown = shutdown_signal().shared();

    let (bound, server) = http::serve(config.http_addr, health.clone(), shutdown.clone())
        .await
        .map_err(|source| Error::Http {
            addr: config.http_addr,
            source,
        })?;
    tracing::info!(%bound, namespace = ?config.namespace, "sluice controller started");

    let elector = config
        .leader_election
        .as_ref()
        .map(|(ns, name)| leader::Elector::new(client.clone(), ns, name, &config.identity));
    let mut term = None;
    if let Some(elector) = &elector {
        // A standby replica is healthy and ready to take over.
        health.ready.store(true, Ordering::Relaxed);
        tokio::select! {
            won = elector.acquire() => term = Some(won),
            _ = shutdown.clone() => {
                let _ = server.await;
                return Ok(());
            }
        }
    }
    metrics.leader.set(1);

    let reporter = Reporter {
        controller: "sluice".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let shared = Shared {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        namespace: config.namespace.clone(),
        ready: Readiness::new(health.clone(), config.apis.controllers()),
        backoff: Arc::default(),
        instance: config.instance.clone(),
    };
    let controllers = controllers(shared, &config, shutdown.clone());
    let lost = async {
        match (&elector, term) {
            (Some(elector), Some(won)) => elector.keep(won).await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = controllers => {}
        lost = lost => {
            // Dropping `controllers` here stops every reconcile at its next await; the caller
            // exits without draining (see `leader`).
            metrics.leader.set(0);
            tracing::error!(error = %lost, "stopped acting: leadership can no longer be proven");
            return Err(lost.into());
        }
    }
    if let Some(elector) = &elector {
        elector.release().await;
    }
    let _ = server.await;
    tracing::info!("sluice controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_what_the_apiserver_accepts() {
        assert_eq!(event_note("short"), "short");
        let long = "é".repeat(1000);
        let note = event_note(&long);
        assert!(note.len() <= MAX_EVENT_NOTE_BYTES, "{}", note.len());
        assert!(note.ends_with('…') && note.starts_with("éé"));
    }
}
