//! `sluice dashboard`: a web view of Rollouts and Canaries, with the CLI's actions behind
//! permission.
//!
//! It decides what a viewer sees and may do; it never decides anything about a rollout (the
//! engine does) and never sends a patch of its own (actions are the CLI's patches,
//! [`crate::cli::rollouts::Session`]). Every page is rendered from one shared watch
//! ([`cache`]): a viewer costs the apiserver nothing, except the TokenReview and
//! SubjectAccessReviews of `--auth token`, which ask the apiserver what the viewer's own RBAC
//! allows (never the dashboard's).

pub mod actions;
pub mod auth;
pub mod cache;
pub mod csrf;
pub mod html;
pub mod server;
pub mod view;

use std::net::SocketAddr;

/// How viewers are identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// The viewer is the kubeconfig's user (local use, on a loopback address only).
    Kubeconfig,
    /// Every request carries a Kubernetes bearer token (TokenReview), and each read and action is
    /// authorised by the viewer's RBAC (SubjectAccessReview): in-cluster use.
    Token,
}

/// `sluice dashboard`'s settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    /// Watch only this namespace (default: every namespace).
    pub namespace: Option<String>,
    pub auth: AuthMode,
    /// Without it every action is refused (403): the dashboard is read-only.
    pub enable_actions: bool,
}

/// `sluice dashboard`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Port to listen on.
    #[arg(long, env = "SLUICE_DASHBOARD_PORT", default_value_t = 3100)]
    pub port: u16,
    /// Address to listen on (a loopback one unless `--auth token`).
    #[arg(long, env = "SLUICE_DASHBOARD_ADDRESS", default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Show only this namespace (default: every namespace the kubeconfig may watch).
    #[arg(short = 'n', long, env = "SLUICE_NAMESPACE")]
    pub namespace: Option<String>,
    /// How viewers are identified: `kubeconfig` (local) or `token` (in-cluster, each viewer's own
    /// RBAC).
    #[arg(
        long,
        value_enum,
        env = "SLUICE_DASHBOARD_AUTH",
        default_value = "kubeconfig"
    )]
    pub auth: AuthMode,
    /// Allow the actions (promote, abort, ...); without it the dashboard is read-only.
    #[arg(long, env = "SLUICE_DASHBOARD_ENABLE_ACTIONS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_actions: bool,
}

impl From<Args> for Config {
    fn from(a: Args) -> Config {
        Config {
            addr: SocketAddr::new(a.address, a.port),
            namespace: a.namespace,
            auth: a.auth,
            enable_actions: a.enable_actions,
        }
    }
}

/// Why the dashboard could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--auth kubeconfig serves with your own credentials, so it listens on a loopback address \
         only (got {0}); use --auth token to serve other viewers"
    )]
    NotLoopback(SocketAddr),
    #[error("connecting to the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error("loading the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::InferConfigError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// Connects with the user's kubeconfig (or the in-cluster config), starts the shared watch and
/// serves until the process ends.
pub async fn run(config: Config) -> Result<(), Error> {
    if config.auth == AuthMode::Kubeconfig && !config.addr.ip().is_loopback() {
        return Err(Error::NotLoopback(config.addr));
    }
    let kube_config = kube::Config::infer().await.map_err(Error::Kubeconfig)?;
    let client = kube::Client::try_from(kube_config).map_err(Error::Client)?;
    let cache = cache::Cache::start(client.clone(), config.namespace.as_deref());
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| Error::Listen {
            addr: config.addr,
            source,
        })?;
    tracing::info!(addr = %config.addr, auth = ?config.auth, actions = config.enable_actions, "dashboard listening");
    let state = server::State::new(client, cache, config);
    axum::serve(listener, server::router(state))
        .await
        .map_err(Error::Serve)
}
