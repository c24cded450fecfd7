//! Sends a Canary's alerts (the core's `Action::Alert`) through the AlertProviders its
//! `analysis.alerts` subscribe with ([`crate::alert`]). A failed alert is logged and recorded as a
//! Warning Event on the Canary; it never fails or delays the run beyond the send timeout.

use kube::ResourceExt;

use super::Ctx;
use crate::alert::{self, Alert};
use crate::api::flagger::canary::{AlertSeverity, Canary, CanaryStatus};

impl Ctx {
    pub(super) async fn alert(
        &self,
        canary: &Canary,
        status: &CanaryStatus,
        severity: AlertSeverity,
        message: &str,
        metadata: bool,
    ) {
        let subscriptions = alert::subscriptions(canary, severity);
        if subscriptions.is_empty() {
            return;
        }
        let alert = Alert {
            name: canary.name_any(),
            namespace: canary.namespace().unwrap_or_default(),
            message: message.to_string(),
            fields: if metadata {
                alert::metadata_fields(canary)
            } else {
                Vec::new()
            },
            severity,
        };
        for subscription in subscriptions {
            let sent = match alert::resolve(&self.shared.client, canary, &subscription).await {
                Ok(destination) => {
                    alert::send(
                        &self.http,
                        &destination,
                        &alert,
                        &subscription.provider_ref.name,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match sent {
                Ok(()) => {
                    tracing::debug!(canary = %alert.name, namespace = %alert.namespace, alert = %subscription.name, "alert sent");
                }
                Err(error) => {
                    tracing::warn!(canary = %alert.name, namespace = %alert.namespace, alert = %subscription.name, %error, "alert not sent");
                    let text = format!("Alert {} not sent: {error}", subscription.name);
                    self.event(canary, "", status, true, &text).await;
                }
            }
        }
    }
}
