//! MetricTemplate (placeholder, being written).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "flagger.app", version = "v1beta1", kind = "MetricTemplate", namespaced)]
pub struct MetricTemplateSpec {}
