//! Canary (placeholder, being written).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "flagger.app", version = "v1beta1", kind = "Canary", namespaced)]
pub struct CanarySpec {}
