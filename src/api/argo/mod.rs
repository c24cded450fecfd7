//! `argoproj.io/v1alpha1`: Rollout, AnalysisTemplate, ClusterAnalysisTemplate, AnalysisRun,
//! Experiment.

pub mod analysis;
pub mod experiment;
pub mod judge;
pub mod rollout;

pub use analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
pub use experiment::Experiment;
pub use rollout::Rollout;
