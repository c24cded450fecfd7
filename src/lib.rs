//! Sluice: a progressive delivery controller for Kubernetes.
//!
//! Data flows one way: `api` (wire types) → `engine` (pure decisions) → `controller` (I/O).
#![forbid(unsafe_code)]

pub mod alert;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod traffic;
