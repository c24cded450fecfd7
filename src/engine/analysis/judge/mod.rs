//! The built-in statistical judge (a Sluice extension; Argo asks a Kayenta server, Flagger has
//! none): compares a canary's samples against a baseline's over the same window and reaches a
//! Kayenta `NetflixACAJudge`-like verdict. Pure: the samples come in (measured by
//! `crate::analysis::judge`), a [`Judgement`] goes out — no I/O, no clock, no randomness.
//!
//! - [`config`]: the spec with defaults applied, or every field that cannot be used;
//! - [`mann_whitney`]: the Mann-Whitney U test (exact for small samples without ties, else the
//!   normal approximation with tie and continuity corrections), as scipy computes it;
//! - [`proportion`]: Fisher's exact test for small counts, else the pooled two-proportion z-test;
//! - [`classify`]: one metric's class (Pass / High / Low / NoData) from its test, direction,
//!   tolerances and `nanStrategy`;
//! - [`score`]: the weighted 0–100 score and the verdict.
//!
//! Must never: panic on any samples (NaN, infinities, empty series, counts that are not counts),
//! or call a canary Successful on missing data.

pub mod classify;
pub mod config;
mod dist;
pub mod mann_whitney;
pub mod proportion;
pub mod score;

pub use classify::{Class, MetricJudgement, Samples};
pub use config::{Config, ConfigError, MetricConfig, configure};
pub use score::{Judgement, judge};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
