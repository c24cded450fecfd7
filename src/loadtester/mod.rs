//! `sluice loadtester`: Flagger's load tester (`flagger-loadtester`) in Rust, so Canary webhooks
//! written for Flagger work unchanged. It serves Flagger's endpoints with its status codes and
//! bodies ([`server`]): tasks from a webhook's `metadata` (`cmd` in the background, deduplicated;
//! `bash`, `helm`, `kubectl` blocking), the confirm and rollback gates kept in memory ([`gate`]),
//! and `hey` load tests run by a built-in generator ([`hey`], [`load`]) instead of a binary.
//!
//! It never talks to the Kubernetes API and decides nothing about a Canary: it only answers
//! the controller's webhook calls and runs what they ask.

pub mod gate;
pub mod hey;
pub mod load;
pub mod server;
pub mod task;
pub mod words;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How to run it (Flagger's flags).
pub struct Config {
    pub addr: SocketAddr,
    /// Bound on every task (`-timeout`, Flagger's default one hour).
    pub timeout: Duration,
    /// `-namespace-regexp`: serve only Canaries in matching namespaces (empty: all).
    pub namespace_regexp: String,
}

/// Why the load tester could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("-namespace-regexp {pattern:?} is not a valid regular expression: {source}")]
    NamespaceRegexp {
        pattern: String,
        source: regex::Error,
    },
    #[error("serving the load tester on {addr}: {source}; choose another -port")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long requests still being answered (a blocking `bash` task) may finish after SIGTERM
/// (Flagger's shutdown timeout).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Serves until SIGTERM or Ctrl-C, then lets requests in flight finish for up to a minute; tasks
/// still running in the background are dropped with the process.
pub async fn run(config: Config) -> Result<(), Error> {
    let namespaces = Some(config.namespace_regexp.as_str())
        .filter(|p| !p.is_empty())
        .map(|pattern| {
            regex::Regex::new(pattern).map_err(|source| Error::NamespaceRegexp {
                pattern: pattern.to_string(),
                source,
            })
        })
        .transpose()?;
    let state = Arc::new(server::LoadTester {
        gates: gate::Gates::default(),
        runner: task::Runner::new(config.timeout),
        namespaces,
    });
    let serve = |source| Error::Serve {
        addr: config.addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(serve)?;
    tracing::info!(addr = %config.addr, timeout = ?config.timeout, "starting the load tester");
    let signal = futures::FutureExt::shared(crate::controller::shutdown_signal());
    let server =
        axum::serve(listener, server::router(state)).with_graceful_shutdown(signal.clone());
    let grace = async {
        signal.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.map_err(serve)?,
        () = grace => tracing::warn!("requests still running {SHUTDOWN_GRACE:?} after the signal; stopping anyway"),
    }
    tracing::info!("HTTP server stopped");
    Ok(())
}
