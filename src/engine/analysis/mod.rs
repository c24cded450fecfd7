//! Pure decisions about AnalysisRuns: which metrics are due, what a measurement means, and the
//! run's phase. The controller measures (I/O) and feeds the values back in; nothing here talks to
//! a provider, reads a clock or a Secret.
//!
//! - [`expr`]: Argo's condition language (`result[0] >= 0.95`, `isNaN(result)`, …).
//! - [`observed`]: what a provider reports for one measurement.

pub mod expr;
pub mod observed;
pub mod run;

pub use observed::Observed;
