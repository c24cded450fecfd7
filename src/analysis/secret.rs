//! The Secrets providers read their settings from (Argo's `profile` / keys Secrets), always in
//! the AnalysisRun's namespace.
//!
//! Decides how a Secret's key reads (trimmed UTF-8; empty is absent) and the words of a missing
//! Secret. Must never put a value into a message: errors name the Secret, the field that names
//! it and the keys it needs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::MeasureContext;

/// The keys of Secret `name` in the run's namespace, named by metric field `field`
/// (`provider.newRelic.profile`); `needs` says what to create it with when it does not exist.
pub async fn keys(
    ctx: &MeasureContext,
    name: &str,
    field: &str,
    needs: &str,
) -> Result<Keys, String> {
    let ns = &ctx.namespace;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{name} ({field}): {e}"))?
        .ok_or_else(|| {
            format!("Secret {ns}/{name} ({field}) does not exist: create it with {needs}")
        })?;
    Ok(Keys {
        label: format!("Secret {ns}/{name} ({field})"),
        data: secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim().to_string()))
            .filter(|(_, v)| !v.is_empty())
            .collect(),
    })
}

/// A Secret's non-empty keys.
pub struct Keys {
    /// `Secret ns/name (field)`, for messages.
    pub label: String,
    data: BTreeMap<String, String>,
}

impl Keys {
    /// The key's value, `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<String> {
        self.data.get(key).cloned()
    }
}
