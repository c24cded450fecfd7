//! Sluice: a progressive delivery controller for Kubernetes.
//!
//! Data flows one way: `api` (wire types) → `engine` (pure decisions) → `controller` (I/O).
#![forbid(unsafe_code)]

pub mod alert;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod dashboard;
pub mod engine;
pub mod gitops;
pub mod loadtester;
pub mod outbound;
pub mod traffic;

/// Makes ring (kube's choice) the process's rustls crypto provider, which every TLS client here
/// (kube, reqwest for Prometheus, webhooks and alerts) builds on; reqwest is built without a
/// provider of its own. Idempotent: call it before building any HTTP client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
