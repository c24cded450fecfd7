//! Canary alerts through AlertProviders (Flagger's `pkg/notifier` and `controller/events.go`):
//! which subscriptions (`spec.analysis.alerts[]`) an alert goes to, the JSON each chat service is
//! sent, and sending it.
//!
//! ```text
//!   alert(severity, message, fields) ──admits()──▶ per subscription: AlertProvider + Secret
//!        ──resolve()──▶ Destination {url, token, proxy} ──payload()──▶ POST (5s timeout)
//! ```
//!
//! Payloads are upstream's: Slack, Discord and Rocket.Chat get a Slack message with one
//! attachment (Discord through its Slack-compatible `/slack` endpoint), Microsoft Teams a
//! MessageCard, Google Chat a card. `webhook` is a Sluice addition: a plain JSON alert for any
//! endpoint. The address is `spec.address`, or the `address` key of `spec.secretRef` (which also
//! may hold `token`, sent as a bearer token, and `proxy`).
//!
//! Severity filtering is ordered, info < warn < error: a subscription receives alerts at its
//! severity or above, as the API documents. (Upstream's code sends an `error` subscription the
//! `warn` alerts and a `warn` subscription no `error` alerts, fluxcd/flagger `events.go`.)
//!
//! A Canary may use AlertProviders from its own namespace and from the one configured global
//! namespace (`--alert-provider-namespace`, as Flagger's model); any other `providerRef.namespace`
//! is refused before anything in that namespace is read.
//!
//! Alerts are best effort: this module returns what failed and the caller logs it; it never
//! decides anything about a run and never retries.
//!
//! Must never: put a value read from the provider's Secret (address, token, proxy) into an error
//! text, so into an Event or a log line: for Slack, Teams or Discord the URL *is* the credential.
//! Such a URL is shown as its origin only ([`Destination::shown_url`]).

pub mod global;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::analysis::http::display_url;
use crate::api::flagger::alert_provider::{AlertProvider, AlertProviderType};
use crate::api::flagger::canary::{AlertSeverity, Canary, CanaryAlert};
use crate::outbound::{self, HttpClients};

/// How long one alert may take (upstream: 5s).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "alert {alert:?}: AlertProvider {namespace}/{name} is in another namespace: a Canary may use AlertProviders from its own namespace ({canary_namespace}){global}; move the AlertProvider or fix providerRef.namespace"
    )]
    ForeignNamespace {
        alert: String,
        namespace: String,
        name: String,
        canary_namespace: String,
        /// ` and from the global namespace <ns>` when one is configured.
        global: String,
    },
    #[error(
        "AlertProvider {namespace}/{name} (alert {alert:?}) does not exist: create it or fix providerRef"
    )]
    ProviderNotFound {
        namespace: String,
        name: String,
        alert: String,
    },
    #[error("reading AlertProvider {namespace}/{name}: {source}")]
    ReadProvider {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("reading Secret {namespace}/{secret} of AlertProvider {provider}: {source}")]
    ReadSecret {
        namespace: String,
        secret: String,
        provider: String,
        source: Box<kube::Error>,
    },
    #[error(
        "AlertProvider {namespace}/{name} has no address: set spec.address or an `address` key in its Secret"
    )]
    NoAddress { namespace: String, name: String },
    #[error("AlertProvider {provider}: invalid {what} URL {url:?}: {reason}")]
    InvalidUrl {
        provider: String,
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("sending the alert through AlertProvider {provider} to {url}: {reason}")]
    Send {
        provider: String,
        url: String,
        reason: String,
    },
}

/// A name and value shown with an alert (upstream `notifier.Field`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// One alert, before it is rendered for a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The Canary's name (upstream names the workload after the Canary).
    pub name: String,
    pub namespace: String,
    pub message: String,
    pub fields: Vec<Field>,
    pub severity: AlertSeverity,
}

/// Where and how an AlertProvider posts.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    pub kind: AlertProviderType,
    pub url: String,
    pub token: Option<String>,
    pub proxy: Option<String>,
    pub channel: String,
    pub username: String,
    /// `url` came from the Secret (so it is never shown whole).
    pub url_from_secret: bool,
    /// `proxy` came from the Secret.
    pub proxy_from_secret: bool,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("kind", &self.kind)
            .field("url", &self.shown_url())
            .field("token", &self.token.as_ref().map(|_| "*****"))
            .field("proxy", &self.proxy.as_ref().map(|_| "*****"))
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// The URL as it may be shown in an Event or a log line: its origin only when it came from
    /// the Secret, else as written with any password hidden.
    pub fn shown_url(&self) -> String {
        shown(&self.url, self.url_from_secret)
    }

    /// `text` with every value that came from the Secret (the URL, its path, long path segments
    /// and query values, the token, the proxy) replaced by `*****`: an endpoint may echo them
    /// back in its error answer.
    pub fn mask(&self, text: &str) -> String {
        let mut secrets: Vec<String> = self.token.iter().cloned().collect();
        if self.proxy_from_secret {
            secrets.extend(self.proxy.iter().cloned());
        }
        if self.url_from_secret {
            secrets.push(self.url.clone());
            if let Ok(url) = reqwest::Url::parse(&self.url) {
                secrets.push(url.path().to_string());
                secrets.extend(url.query().map(str::to_string));
                secrets.extend(
                    url.path_segments()
                        .into_iter()
                        .flatten()
                        .map(str::to_string)
                        .filter(|s| s.len() >= 8),
                );
                secrets.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
            }
        }
        // Longest first, so a value's parts never leave the rest of it shown.
        secrets.retain(|s| s.len() >= 4);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.iter().fold(text.to_string(), |text, secret| {
            text.replace(secret.as_str(), "*****")
        })
    }
}

fn shown(url: &str, from_secret: bool) -> String {
    if from_secret {
        outbound::redacted_url(url)
    } else {
        display_url(url)
    }
}

fn rank(severity: AlertSeverity) -> u8 {
    match severity {
        AlertSeverity::Unspecified | AlertSeverity::Info => 0,
        AlertSeverity::Warn => 1,
        AlertSeverity::Error => 2,
    }
}

/// Whether a subscription at `level` receives an alert of `severity` (info < warn < error).
pub fn admits(level: AlertSeverity, severity: AlertSeverity) -> bool {
    rank(severity) >= rank(level)
}

/// The subscriptions of `canary` that receive an alert of `severity`.
pub fn subscriptions(canary: &Canary, severity: AlertSeverity) -> Vec<CanaryAlert> {
    canary
        .analysis()
        .map(|a| a.alerts.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|a| admits(a.severity_level(), severity))
        .cloned()
        .collect()
}

/// The Canary's fields sent with the alerts that ask for metadata (upstream `alertMetadata`).
pub fn metadata_fields(canary: &Canary) -> Vec<Field> {
    let analysis = canary.analysis().cloned().unwrap_or_default();
    let target = &canary.spec.target_ref;
    let field = |name: &str, value: String| Field {
        name: name.to_string(),
        value,
    };
    let mut fields = vec![
        field(
            "Target",
            format!(
                "{}/{}.{}",
                target.kind,
                target.name,
                canary.namespace().unwrap_or_default()
            ),
        ),
        field("Failed checks threshold", analysis.threshold().to_string()),
        field(
            "Progress deadline",
            format!("{}s", canary.progress_deadline_seconds()),
        ),
    ];
    let max_weight = analysis.max_weight.unwrap_or(0);
    let routing = if analysis.step_weight() > 0 {
        Some(format!(
            "Weight step: {} max: {max_weight}",
            analysis.step_weight()
        ))
    } else if !analysis.step_weights.is_empty() {
        let steps: Vec<String> = analysis.step_weights.iter().map(i32::to_string).collect();
        Some(format!(
            "Weight steps: {} max: {max_weight}",
            steps.join(",")
        ))
    } else if !analysis.r#match.is_empty() {
        Some("A/B Testing".to_string())
    } else if analysis.iterations() > 0 {
        Some("Blue/Green".to_string())
    } else {
        None
    };
    if let Some(routing) = routing {
        fields.push(field("Traffic routing", routing));
    }
    fields
}

/// Flagger's wire string for a severity.
pub fn severity_name(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Unspecified | AlertSeverity::Info => "info",
        AlertSeverity::Warn => "warn",
        AlertSeverity::Error => "error",
    }
}

fn slack_like(destination: &Destination, alert: &Alert, color: &str) -> Value {
    let fields: Vec<Value> = alert
        .fields
        .iter()
        .map(|f| json!({"title": f.name, "value": f.value, "short": false}))
        .collect();
    json!({
        "channel": destination.channel,
        "username": destination.username,
        "icon_url": "",
        "icon_emoji": ":rocket:",
        "attachments": [{
            "color": color,
            "author_name": format!("{}.{}", alert.name, alert.namespace),
            "text": alert.message,
            "mrkdwn_in": ["text"],
            "fields": fields,
        }],
    })
}

/// The JSON body the provider is sent (upstream's shapes; `webhook` is Sluice's own).
pub fn payload(destination: &Destination, alert: &Alert) -> Value {
    let error = alert.severity == AlertSeverity::Error;
    let workload = format!("{}.{}", alert.name, alert.namespace);
    match destination.kind {
        AlertProviderType::Slack | AlertProviderType::Discord => {
            slack_like(destination, alert, if error { "danger" } else { "good" })
        }
        AlertProviderType::Rocket => slack_like(
            destination,
            alert,
            if error { "#FF0000" } else { "#0076D7" },
        ),
        AlertProviderType::Msteams => {
            let facts: Vec<Value> = alert
                .fields
                .iter()
                .map(|f| json!({"name": f.name, "value": f.value}))
                .collect();
            json!({
                "@type": "MessageCard",
                "@context": "http://schema.org/extensions",
                "themeColor": if error { "FF0000" } else { "0076D7" },
                "summary": workload,
                "sections": [{
                    "activityTitle": alert.message,
                    "activitySubtitle": workload,
                    "facts": facts,
                }],
            })
        }
        AlertProviderType::Gchat => {
            let text = |t: String| json!({"widgets": [{"textParagraph": {"text": t}}]});
            let mut sections = vec![text(format!(
                "<font color=#848484><strong>{}</strong></font>",
                alert.message
            ))];
            sections.extend(alert.fields.iter().map(|f| {
                text(format!(
                    "{}<br><font color=#848484><strong>{}</strong></font>",
                    f.name, f.value
                ))
            }));
            json!({"cards": [{
                "header": {
                    "title": "Flagger",
                    "subtitle": workload,
                    "imageUrl": "https://flagger.app/favicon.png",
                },
                "sections": sections,
            }]})
        }
        AlertProviderType::Webhook => {
            let fields: Vec<Value> = alert
                .fields
                .iter()
                .map(|f| json!({"name": f.name, "value": f.value}))
                .collect();
            json!({
                "name": alert.name,
                "namespace": alert.namespace,
                "message": alert.message,
                "severity": severity_name(alert.severity),
                "fields": fields,
            })
        }
    }
}

/// The URL posted to: Discord's Slack-compatible endpoint gets `/slack` appended (as upstream).
pub fn post_url(kind: AlertProviderType, address: &str) -> String {
    if kind == AlertProviderType::Discord && !address.trim_end_matches('/').ends_with("/slack") {
        format!("{}/slack", address.trim_end_matches('/'))
    } else {
        address.to_string()
    }
}

/// The destination of an AlertProvider: the Secret's `address`, `token` and `proxy` win over the
/// spec.
pub fn destination(
    provider: &AlertProvider,
    secret: Option<&BTreeMap<String, String>>,
) -> Result<Destination, Error> {
    let spec = &provider.spec;
    let from_secret = |key: &str| {
        secret
            .and_then(|s| s.get(key))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let secret_address = from_secret("address");
    let url_from_secret = secret_address.is_some();
    let address = secret_address
        .or_else(|| spec.address.clone().filter(|a| !a.is_empty()))
        .ok_or_else(|| Error::NoAddress {
            namespace: provider.namespace().unwrap_or_default(),
            name: provider.name_any(),
        })?;
    let url = post_url(spec.r#type, &address);
    let invalid = |reason: String| Error::InvalidUrl {
        provider: provider.name_any(),
        what: "address",
        url: shown(&address, url_from_secret),
        reason,
    };
    // The parser's message never quotes its input.
    let parsed = reqwest::Url::parse(&url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    let secret_proxy = from_secret("proxy");
    let proxy_from_secret = secret_proxy.is_some();
    Ok(Destination {
        kind: spec.r#type,
        url,
        token: from_secret("token"),
        proxy: secret_proxy.or_else(|| spec.proxy.clone().filter(|p| !p.is_empty())),
        channel: spec.channel().to_string(),
        username: spec.username().to_string(),
        url_from_secret,
        proxy_from_secret,
    })
}

/// The namespace of the AlertProvider a subscription names: the Canary's own, or the global
/// namespace `global`; any other is refused (before anything in it is read).
pub fn provider_namespace(
    canary: &Canary,
    subscription: &CanaryAlert,
    global: Option<&str>,
) -> Result<String, Error> {
    let own = canary.namespace().unwrap_or_default();
    let Some(named) = subscription
        .provider_ref
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
    else {
        return Ok(own);
    };
    if named == own || global.is_some_and(|g| g == named) {
        return Ok(named);
    }
    Err(Error::ForeignNamespace {
        alert: subscription.name.clone(),
        namespace: named,
        name: subscription.provider_ref.name.clone(),
        canary_namespace: own,
        global: global
            .map(|g| format!(" and from the global namespace {g}"))
            .unwrap_or_default(),
    })
}

/// Reads the AlertProvider a subscription names (and its Secret) and works out its destination;
/// `global` is the namespace every Canary may use AlertProviders from.
pub async fn resolve(
    client: &Client,
    canary: &Canary,
    subscription: &CanaryAlert,
    global: Option<&str>,
) -> Result<Destination, Error> {
    let namespace = provider_namespace(canary, subscription, global)?;
    let name = subscription.provider_ref.name.clone();
    let providers: Api<AlertProvider> = Api::namespaced(client.clone(), &namespace);
    let provider = match providers.get_opt(&name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(Error::ProviderNotFound {
                namespace,
                name,
                alert: subscription.name.clone(),
            });
        }
        Err(source) => {
            return Err(Error::ReadProvider {
                namespace,
                name,
                source: Box::new(source),
            });
        }
    };
    let secret = match &provider.spec.secret_ref {
        Some(reference) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let secret =
                secrets
                    .get(&reference.name)
                    .await
                    .map_err(|source| Error::ReadSecret {
                        namespace: namespace.clone(),
                        secret: reference.name.clone(),
                        provider: name.clone(),
                        source: Box::new(source),
                    })?;
            let data: BTreeMap<String, String> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            Some(data)
        }
        None => None,
    };
    destination(&provider, secret.as_ref())
}

/// POSTs the alert; only 200 is success (as upstream). At most a few KiB of an error answer are
/// read, and no error text holds a value from the Secret.
pub async fn send(
    http: &HttpClients,
    destination: &Destination,
    alert: &Alert,
    provider: &str,
) -> Result<(), Error> {
    let send_error = |reason: String| Error::Send {
        provider: provider.to_string(),
        url: destination.shown_url(),
        reason: destination.mask(&reason),
    };
    let credentials = destination.token.is_some();
    let client = match &destination.proxy {
        Some(proxy) => {
            let invalid = |reason: String| Error::InvalidUrl {
                provider: provider.to_string(),
                what: "proxy",
                url: shown(proxy, destination.proxy_from_secret),
                reason,
            };
            let proxy =
                reqwest::Proxy::all(proxy).map_err(|e| invalid(outbound::error_chain(&e)))?;
            // Built per alert: a proxy is rare, and a client keyed by a Secret's value would
            // keep it in memory after the Secret changes.
            outbound::builder(false, http.redirects(credentials))
                .proxy(proxy)
                .build()
                .map_err(|e| send_error(outbound::error_chain(&e)))?
        }
        None => http
            .get(false, credentials)
            .map_err(|e| send_error(e.to_string()))?,
    };
    let mut request = client
        .post(&destination.url)
        .timeout(SEND_TIMEOUT)
        .json(&payload(destination, alert));
    if let Some(token) = &destination.token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) if response.status().as_u16() == 200 => Ok(()),
        Ok(response) => {
            let answer = outbound::describe_answer(response, SEND_TIMEOUT).await;
            Err(send_error(format!("answered {answer}")))
        }
        Err(e) if e.is_timeout() => Err(send_error(format!("no answer within {SEND_TIMEOUT:?}"))),
        Err(e) => Err(send_error(outbound::error_chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn alert(severity: AlertSeverity) -> Alert {
        Alert {
            name: "podinfo".into(),
            namespace: "test".into(),
            message: "New revision detected, progressing canary analysis.".into(),
            fields: vec![Field {
                name: "Target".into(),
                value: "Deployment/podinfo.test".into(),
            }],
            severity,
        }
    }

    fn dest(kind: AlertProviderType) -> Destination {
        Destination {
            kind,
            url: "https://hooks.example/x".into(),
            token: None,
            proxy: None,
            channel: "general".into(),
            username: "flagger".into(),
            url_from_secret: false,
            proxy_from_secret: false,
        }
    }

    #[test]
    fn severity_is_ordered() {
        use AlertSeverity::*;
        assert!(admits(Info, Info) && admits(Info, Error) && admits(Unspecified, Warn));
        assert!(admits(Warn, Warn) && admits(Warn, Error) && !admits(Warn, Info));
        assert!(admits(Error, Error) && !admits(Error, Warn) && !admits(Error, Info));
    }

    #[test]
    fn slack_payload_is_upstreams() {
        assert_eq!(
            payload(&dest(AlertProviderType::Slack), &alert(AlertSeverity::Info)),
            json!({
                "channel": "general", "username": "flagger", "icon_url": "", "icon_emoji": ":rocket:",
                "attachments": [{"color": "good", "author_name": "podinfo.test",
                    "text": "New revision detected, progressing canary analysis.",
                    "mrkdwn_in": ["text"],
                    "fields": [{"title": "Target", "value": "Deployment/podinfo.test", "short": false}]}],
            })
        );
        let error = payload(
            &dest(AlertProviderType::Slack),
            &alert(AlertSeverity::Error),
        );
        assert_eq!(error["attachments"][0]["color"], "danger");
        let rocket = payload(
            &dest(AlertProviderType::Rocket),
            &alert(AlertSeverity::Warn),
        );
        assert_eq!(rocket["attachments"][0]["color"], "#0076D7");
    }

    #[test]
    fn teams_payload_is_a_message_card() {
        assert_eq!(
            payload(
                &dest(AlertProviderType::Msteams),
                &alert(AlertSeverity::Error)
            ),
            json!({
                "@type": "MessageCard", "@context": "http://schema.org/extensions",
                "themeColor": "FF0000", "summary": "podinfo.test",
                "sections": [{"activityTitle": "New revision detected, progressing canary analysis.",
                    "activitySubtitle": "podinfo.test",
                    "facts": [{"name": "Target", "value": "Deployment/podinfo.test"}]}],
            })
        );
    }

    #[test]
    fn gchat_payload_is_a_card() {
        let body = payload(&dest(AlertProviderType::Gchat), &alert(AlertSeverity::Info));
        assert_eq!(body["cards"][0]["header"]["title"], "Flagger");
        assert_eq!(body["cards"][0]["header"]["subtitle"], "podinfo.test");
        let sections = body["cards"][0]["sections"].as_array().unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(
            sections[1]["widgets"][0]["textParagraph"]["text"],
            "Target<br><font color=#848484><strong>Deployment/podinfo.test</strong></font>"
        );
    }

    #[test]
    fn webhook_payload_is_plain() {
        assert_eq!(
            payload(
                &dest(AlertProviderType::Webhook),
                &alert(AlertSeverity::Warn)
            ),
            json!({"name": "podinfo", "namespace": "test",
                "message": "New revision detected, progressing canary analysis.",
                "severity": "warn",
                "fields": [{"name": "Target", "value": "Deployment/podinfo.test"}]})
        );
    }

    #[test]
    fn discord_posts_to_the_slack_endpoint() {
        assert_eq!(
            post_url(
                AlertProviderType::Discord,
                "https://discord.com/api/webhooks/1/abc"
            ),
            "https://discord.com/api/webhooks/1/abc/slack"
        );
        assert_eq!(
            post_url(
                AlertProviderType::Discord,
                "https://discord.com/api/webhooks/1/abc/slack"
            ),
            "https://discord.com/api/webhooks/1/abc/slack"
        );
        assert_eq!(
            post_url(AlertProviderType::Slack, "https://hooks.slack.com/x"),
            "https://hooks.slack.com/x"
        );
    }

    #[test]
    fn the_secret_wins_over_the_spec() {
        let provider: AlertProvider = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"type": "slack", "address": "https://spec.example/hook", "channel": "ops",
                     "secretRef": {"name": "s"}},
        }))
        .unwrap();
        let d = destination(&provider, None).unwrap();
        assert_eq!(
            (d.url.as_str(), d.channel.as_str(), d.token.as_deref()),
            ("https://spec.example/hook", "ops", None)
        );
        let secret = BTreeMap::from([
            (
                "address".to_string(),
                "https://secret.example/hook\n".to_string(),
            ),
            ("token".to_string(), "t0k".to_string()),
        ]);
        let d = destination(&provider, Some(&secret)).unwrap();
        assert_eq!(
            (d.url.as_str(), d.token.as_deref()),
            ("https://secret.example/hook", Some("t0k"))
        );
        let mut bad = provider.clone();
        bad.spec.address = Some("not a url".into());
        assert!(matches!(
            destination(&bad, None),
            Err(Error::InvalidUrl { .. })
        ));
        bad.spec.address = None;
        assert!(matches!(
            destination(&bad, None),
            Err(Error::NoAddress { .. })
        ));
    }

    #[test]
    fn secret_values_are_never_shown() {
        let provider: AlertProvider = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"type": "slack", "secretRef": {"name": "s"}},
        }))
        .unwrap();
        let secret = BTreeMap::from([
            (
                "address".to_string(),
                "https://hooks.example/services/T0/B0/SECRETPATH?token=SECRETQ".to_string(),
            ),
            ("token".to_string(), "SECRETTOKEN".to_string()),
            (
                "proxy".to_string(),
                "http://u:SECRETPROXY@proxy:3128".to_string(),
            ),
        ]);
        let d = destination(&provider, Some(&secret)).unwrap();
        let echoed = "no hook /services/T0/B0/SECRETPATH?token=SECRETQ; SECRETPATH, SECRETQ, SECRETTOKEN, http://u:SECRETPROXY@proxy:3128";
        let shown = format!("{} {} {:?}", d.shown_url(), d.mask(echoed), d);
        for secret in ["SECRETPATH", "SECRETQ", "SECRETTOKEN", "SECRETPROXY"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.starts_with("https://hooks.example/"), "{shown}");
        let mut bad = secret.clone();
        bad.insert("address".into(), "ftp://x/SECRETPATH".into());
        let err = destination(&provider, Some(&bad)).unwrap_err().to_string();
        assert!(!err.contains("SECRETPATH"), "{err}");
    }

    #[test]
    fn providers_only_from_the_own_or_the_global_namespace() {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "team-a"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"}},
        }))
        .unwrap();
        let sub = |ns: Option<&str>| -> CanaryAlert {
            serde_json::from_value(
                json!({"name": "a", "providerRef": {"name": "p", "namespace": ns}}),
            )
            .unwrap()
        };
        let ns = |s: &CanaryAlert, g: Option<&str>| provider_namespace(&canary, s, g);
        assert_eq!(ns(&sub(None), None).unwrap(), "team-a");
        assert_eq!(ns(&sub(Some("team-a")), None).unwrap(), "team-a");
        assert_eq!(
            ns(&sub(Some("flagger")), Some("flagger")).unwrap(),
            "flagger"
        );
        let err = ns(&sub(Some("team-b")), Some("flagger"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("team-b/p") && err.contains("global namespace flagger"),
            "{err}"
        );
        assert!(ns(&sub(Some("team-b")), None).is_err());
    }

    #[test]
    fn metadata_fields_are_upstreams() {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                     "analysis": {"threshold": 5, "stepWeight": 10, "maxWeight": 50}},
        }))
        .unwrap();
        let fields: Vec<(String, String)> = metadata_fields(&canary)
            .into_iter()
            .map(|f| (f.name, f.value))
            .collect();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            fields,
            vec![
                pair("Target", "Deployment/podinfo.test"),
                pair("Failed checks threshold", "5"),
                pair("Progress deadline", "600s"),
                pair("Traffic routing", "Weight step: 10 max: 50"),
            ]
        );
    }
}
