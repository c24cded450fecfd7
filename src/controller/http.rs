//! The controller's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the process
//! is not stuck on the apiserver: [`super::liveness`]) and `/readyz` (the watch caches have synced
//! and, with leader election, the process may act). Never decides or writes anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::liveness::Liveness;
use super::metrics::Metrics;

/// What the endpoints report.
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once every watch cache has its first full list.
    pub ready: AtomicBool,
    /// Requests to the apiserver and their answers.
    pub liveness: Arc<Liveness>,
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address (port 0 picks one)
/// and the server task.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, task))
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.liveness.check(std::time::Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(stuck) => (StatusCode::SERVICE_UNAVAILABLE, stuck),
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watch caches not synced yet",
        )
    }
}
