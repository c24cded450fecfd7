//! AlertProvider (placeholder, being written).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "flagger.app", version = "v1beta1", kind = "AlertProvider", namespaced)]
pub struct AlertProviderSpec {}
