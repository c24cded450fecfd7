//! Rollout (placeholder, being written).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "argoproj.io", version = "v1alpha1", kind = "Rollout", namespaced)]
pub struct RolloutSpec {}
