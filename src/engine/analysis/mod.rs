//! Pure decisions about AnalysisRuns: which metrics are due, what a measurement means, and the
//! run's phase. The controller measures (I/O) and feeds the values back in; nothing here talks to
//! a provider, reads a clock or a Secret.
//!
//! - [`expr`]: Argo's condition language (`result[0] >= 0.95`, `isNaN(result)`, …).
//! - [`args`]: template merging and `{{args.*}}` substitution (Argo).
//! - [`flagger`]: Flagger metric queries and threshold checks.
//! - [`judge`]: the built-in statistical judge (canary against baseline).
//! - [`observed`]: what a provider reports for one measurement.
//! - [`tags`]: upstream's `{{tag}}` splicing, shared by the argument and experiment resolvers.

pub mod args;
pub mod expr;
pub mod flagger;
pub mod judge;
pub mod observed;
pub mod run;
pub mod tags;

pub use observed::Observed;
