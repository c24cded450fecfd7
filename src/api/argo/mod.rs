//! `argoproj.io/v1alpha1`: Rollout, AnalysisTemplate, ClusterAnalysisTemplate, AnalysisRun.

pub mod analysis;
pub mod rollout;

pub use analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
pub use rollout::Rollout;
