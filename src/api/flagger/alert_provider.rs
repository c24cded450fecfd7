//! `AlertProvider` (`flagger.app/v1beta1`): where a Canary's alerts are sent.
//!
//! Decides the wire shape of an AlertProvider (upstream `pkg/apis/flagger/v1beta1/alert.go` and
//! `artifacts/flagger/crd.yaml`), the chat services it may name and the defaults of `channel` and
//! `username`. It never sends a message and never reads the referenced Secret (whose `address`,
//! `token` and `proxy` keys take precedence over the spec; that is the notifier's business).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::metric_template::{SecretReference, TemplateCondition};

/// Default `channel` when absent (Flagger: `general`).
pub const DEFAULT_CHANNEL: &str = "general";
/// Default `username` when absent (Flagger: `flagger`).
pub const DEFAULT_USERNAME: &str = "flagger";

/// A chat service alerts are posted to, referenced from `Canary.spec.analysis.alerts[].providerRef`.
#[derive(
    CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq,
)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "AlertProvider",
    plural = "alertproviders",
    singular = "alertprovider",
    namespaced,
    category = "all",
    status = "AlertProviderStatus",
    derive = "PartialEq",
    doc = "AlertProvider is the configuration of alerting for a specific chat provider (Flagger flagger.app/v1beta1).",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.address) || has(self.secretRef)").message("one of address or secretRef is required"))]
pub struct AlertProviderSpec {
    /// The chat service.
    pub r#type: AlertProviderType,
    /// Channel to post to (default `general`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Bot user name (default `flagger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Incoming webhook URL (ignored when the Secret has an `address` key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// HTTP(S) proxy to post through (ignored when the Secret has a `proxy` key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Secret in the provider's namespace with `address`, `token` and/or `proxy` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// The chat services upstream's CRD accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertProviderType {
    /// Slack (incoming webhook, or bot token via the Secret's `token`).
    #[default]
    Slack,
    /// Microsoft Teams.
    Msteams,
    /// Discord (Slack-compatible webhook).
    Discord,
    /// Rocket.Chat.
    Rocket,
    /// Google Chat.
    Gchat,
    /// **Sluice addition**: any HTTP endpoint, POSTed a plain JSON alert (`name`, `namespace`,
    /// `message`, `severity`, `fields`); Flagger has no such type.
    Webhook,
}

/// Status of an AlertProvider (upstream declares the subresource; nothing writes it today).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertProviderStatus {
    /// Conditions of the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::schema::conditions::<TemplateCondition>")]
    pub conditions: Vec<TemplateCondition>,
}

impl AlertProviderSpec {
    /// `channel`, default `general`.
    pub fn channel(&self) -> &str {
        self.channel
            .as_deref()
            .filter(|c| !c.is_empty())
            .unwrap_or(DEFAULT_CHANNEL)
    }

    /// `username`, default `flagger`.
    pub fn username(&self) -> &str {
        self.username
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(DEFAULT_USERNAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::round_trip;
    use kube::CustomResourceExt;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    // docs/gitbook/usage/alerting.md: address and secretRef together (upstream's CRD `oneOf`
    // would refuse this documented manifest; Sluice accepts it).
    #[test]
    fn slack_provider_round_trips() {
        let provider: AlertProvider = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: AlertProvider
metadata:
  name: on-call
  namespace: flagger
spec:
  type: slack
  channel: on-call-alerts
  username: flagger
  address: https://hooks.slack.com/services/YOUR/SLACK/WEBHOOK
  proxy: http://my-http-proxy.com
  secretRef:
    name: on-call-url
"#,
        );
        assert_eq!(provider.spec.r#type, AlertProviderType::Slack);
        assert_eq!(provider.spec.channel(), "on-call-alerts");
        assert_eq!(
            kube::core::cel::validate_cel(&provider).map_err(|e| e.to_string()),
            Ok(())
        );
    }

    #[test]
    fn msteams_provider_defaults() {
        let provider: AlertProvider = round_trip(
            r#"
apiVersion: flagger.app/v1beta1
kind: AlertProvider
metadata:
  name: on-call-msteams
spec:
  type: msteams
  secretRef:
    name: on-call-msteams-url
"#,
        );
        assert_eq!(provider.spec.channel(), "general");
        assert_eq!(provider.spec.username(), "flagger");
    }

    #[test]
    fn every_upstream_type_parses_and_others_do_not() {
        for name in ["slack", "msteams", "discord", "rocket", "gchat"] {
            let parsed: AlertProviderType = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(serde_json::to_value(parsed).unwrap(), json!(name));
        }
        assert!(serde_json::from_value::<AlertProviderType>(json!("pagerduty")).is_err());
    }

    #[test]
    fn cel_requires_an_address_or_a_secret() {
        let provider: AlertProvider = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "AlertProvider",
            "metadata": {"name": "p"},
            "spec": {"type": "discord", "channel": "alerts"},
        }))
        .unwrap();
        let errors = kube::core::cel::validate_cel(&provider).unwrap_err();
        assert!(errors.iter().any(|e| {
            e.message
                .contains("one of address or secretRef is required")
        }));
    }

    #[test]
    fn crd_names_and_columns_match_upstream() {
        let crd = AlertProvider::crd();
        assert_eq!(crd.spec.names.plural, "alertproviders");
        assert_eq!(crd.spec.names.singular.as_deref(), Some("alertprovider"));
        assert_eq!(crd.spec.names.categories, Some(vec!["all".to_string()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert_eq!(columns.len(), 1);
        assert_eq!(
            (columns[0].name.as_str(), columns[0].json_path.as_str()),
            ("Type", ".spec.type")
        );
        assert!(!serde_json::to_string(&crd).unwrap().contains("\"default\""));
    }
}
