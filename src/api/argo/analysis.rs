//! AnalysisTemplate, ClusterAnalysisTemplate and AnalysisRun (placeholder, being written).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "argoproj.io", version = "v1alpha1", kind = "AnalysisTemplate", namespaced)]
pub struct AnalysisTemplateSpec {}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "argoproj.io", version = "v1alpha1", kind = "ClusterAnalysisTemplate")]
pub struct ClusterAnalysisTemplateSpec {}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "argoproj.io", version = "v1alpha1", kind = "AnalysisRun", namespaced)]
pub struct AnalysisRunSpec {}
