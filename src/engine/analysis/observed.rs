//! What a metric provider reported for one measurement: the boundary between the I/O side
//! (`crate::analysis` providers, run by the controller) and the pure run core
//! ([`super::run`]), which judges it and records it in the AnalysisRun's status.
//!
//! Providers never judge a value against the metric's conditions; they return the raw result and
//! the exact query they sent, and the engine decides. Only providers whose outcome *is* the verdict
//! (a Job succeeding or failing) return [`Observed::Judged`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::expr::Value;
use crate::api::argo::analysis::AnalysisPhase;

/// The outcome of taking (or resuming) one measurement.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// A value to judge with the metric's `successCondition` / `failureCondition`
    /// (Prometheus: a number for a scalar, a list of numbers for a vector; web: the JSON selected
    /// by `jsonPath`).
    Value {
        result: Value,
        /// The exact query or request sent, after argument substitution, with secret argument
        /// values masked. `None` when the provider has nothing meaningful to show.
        query: Option<String>,
        /// Provider state to keep on the measurement.
        metadata: BTreeMap<String, String>,
    },
    /// The provider decided the verdict itself (a Job that completed or failed).
    Judged {
        /// Successful, Failed, Inconclusive or Error.
        phase: AnalysisPhase,
        value: Option<String>,
        message: Option<String>,
        metadata: BTreeMap<String, String>,
    },
    /// The measurement was started and is still going (a Job is running): look again after
    /// `resume_after`, passing the measurement back to the provider's `resume`.
    InProgress {
        metadata: BTreeMap<String, String>,
        message: Option<String>,
        resume_after: Duration,
    },
    /// The measurement could not be taken: provider unreachable, bad query, timeout, a body that
    /// is not JSON, …. `message` carries the provider's own words and what was being done.
    Error {
        message: String,
        query: Option<String>,
        metadata: BTreeMap<String, String>,
    },
}

impl Observed {
    /// An error with no query or metadata.
    pub fn error(message: impl Into<String>) -> Self {
        Observed::Error {
            message: message.into(),
            query: None,
            metadata: BTreeMap::new(),
        }
    }
}
