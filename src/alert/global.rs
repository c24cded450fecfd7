//! Flagger's controller-wide alerting (`cmd/flagger/main.go` `initNotifier`, `controller/events.go`
//! `alert` / `sendEventToWebhook`): the Slack or Microsoft Teams notifier that alerts Canaries
//! without `analysis.alerts`, and the webhook every Canary Event is posted to when the Canary has
//! no `event` webhook of its own.
//!
//! Flags as Flagger's (`--slack-url` … `--event-webhook`), each also a `SLUICE_` environment
//! variable and, as in Flagger, read from Flagger's own variables (`SLACK_URL`, `SLACK_TOKEN`,
//! `SLACK_PROXY_URL`, `MSTEAMS_URL`, `MSTEAMS_PROXY_URL`, `EVENT_WEBHOOK_URL`) when not given, so
//! a chart's `secretKeyRef` environment keeps working. When both are set Teams wins (as upstream).
//!
//! Deliberate difference: a Slack URL without a channel is refused at start (Flagger's notifier
//! refuses it too, logs one line and silently sends nothing).
//!
//! Must never: show these URLs, the token or a proxy in a log line, an Event or an error: Slack
//! and Teams webhook URLs are credentials. They are held as Secret-sourced [`Destination`]s, so
//! errors carry their origin only and masked answers.

use super::Destination;
use crate::api::flagger::alert_provider::AlertProviderType;

/// The command-line flags (flattened into `sluice controller`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// Slack incoming-webhook URL alerting Canaries that have no `analysis.alerts` (Flagger's
    /// `-slack-url`; else $SLACK_URL).
    #[arg(long, env = "SLUICE_SLACK_URL", hide_env_values = true)]
    pub slack_url: Option<String>,
    /// Slack bot token, sent as a bearer token (Flagger's `-slack-token`; else $SLACK_TOKEN).
    #[arg(long, env = "SLUICE_SLACK_TOKEN", hide_env_values = true)]
    pub slack_token: Option<String>,
    /// Proxy for the Slack URL (Flagger's `-slack-proxy-url`; else $SLACK_PROXY_URL).
    #[arg(long, env = "SLUICE_SLACK_PROXY_URL", hide_env_values = true)]
    pub slack_proxy_url: Option<String>,
    /// Slack user name of the alerts.
    #[arg(long, env = "SLUICE_SLACK_USER", default_value = "flagger")]
    pub slack_user: String,
    /// Slack channel of the alerts (required with --slack-url).
    #[arg(long, env = "SLUICE_SLACK_CHANNEL")]
    pub slack_channel: Option<String>,
    /// Microsoft Teams incoming-webhook URL; wins over --slack-url (Flagger's `-msteams-url`;
    /// else $MSTEAMS_URL).
    #[arg(long, env = "SLUICE_MSTEAMS_URL", hide_env_values = true)]
    pub msteams_url: Option<String>,
    /// Proxy for the Teams URL (Flagger's `-msteams-proxy-url`; else $MSTEAMS_PROXY_URL).
    #[arg(long, env = "SLUICE_MSTEAMS_PROXY_URL", hide_env_values = true)]
    pub msteams_proxy_url: Option<String>,
    /// URL every Canary Event is POSTed to (Flagger's event payload) unless the Canary has an
    /// `event` webhook (Flagger's `-event-webhook`; else $EVENT_WEBHOOK_URL).
    #[arg(long, env = "SLUICE_EVENT_WEBHOOK", hide_env_values = true)]
    pub event_webhook: Option<String>,
}

/// The controller-wide alerting, resolved from [`Flags`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalAlerting {
    /// Alerts Canaries without `analysis.alerts` (Slack or Teams).
    pub notifier: Option<Destination>,
    /// Receives every Canary Event (kind `webhook`; only the URL is used).
    pub event_webhook: Option<Destination>,
}

/// A flag that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// Not an http(s) URL (the value itself is never shown).
    #[error("--{flag} (or its environment variable) is not an http or https URL: {reason}")]
    InvalidUrl { flag: &'static str, reason: String },
    /// `--slack-url` without `--slack-channel`.
    #[error(
        "--slack-url is set but --slack-channel is not: Slack alerts need a channel (Flagger's notifier refuses it too and sends nothing); set --slack-channel or the chart value slack.channel"
    )]
    NoSlackChannel,
    /// `--slack-user ""`.
    #[error("--slack-user is empty: Slack alerts need a user name (default flagger)")]
    NoSlackUser,
}

impl Flags {
    /// The alerting these flags ask for, reading Flagger's environment variables through `env`
    /// for what is not given.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GlobalAlerting, FlagError> {
        let pick = |flag: &Option<String>, var: &str| {
            flag.clone()
                .or_else(|| env(var))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let msteams = pick(&self.msteams_url, "MSTEAMS_URL");
        let slack = pick(&self.slack_url, "SLACK_URL");
        let notifier = match (msteams, slack) {
            (Some(url), _) => Some(Destination {
                kind: AlertProviderType::Msteams,
                proxy: checked(
                    "msteams-proxy-url",
                    pick(&self.msteams_proxy_url, "MSTEAMS_PROXY_URL"),
                )?,
                ..secret_destination(AlertProviderType::Msteams, "msteams-url", url)?
            }),
            (None, Some(url)) => {
                let channel = self
                    .slack_channel
                    .clone()
                    .filter(|c| !c.trim().is_empty())
                    .ok_or(FlagError::NoSlackChannel)?;
                if self.slack_user.trim().is_empty() {
                    return Err(FlagError::NoSlackUser);
                }
                Some(Destination {
                    token: pick(&self.slack_token, "SLACK_TOKEN"),
                    proxy: checked(
                        "slack-proxy-url",
                        pick(&self.slack_proxy_url, "SLACK_PROXY_URL"),
                    )?,
                    channel,
                    username: self.slack_user.clone(),
                    ..secret_destination(AlertProviderType::Slack, "slack-url", url)?
                })
            }
            (None, None) => None,
        };
        let event_webhook = pick(&self.event_webhook, "EVENT_WEBHOOK_URL")
            .map(|url| secret_destination(AlertProviderType::Webhook, "event-webhook", url))
            .transpose()?;
        Ok(GlobalAlerting {
            notifier,
            event_webhook,
        })
    }
}

/// `url` checked, as a destination never shown whole.
fn secret_destination(
    kind: AlertProviderType,
    flag: &'static str,
    url: String,
) -> Result<Destination, FlagError> {
    let url = checked(flag, Some(url))?.unwrap_or_default();
    Ok(Destination {
        kind,
        url,
        token: None,
        proxy: None,
        channel: String::new(),
        username: String::new(),
        url_from_secret: true,
        proxy_from_secret: true,
    })
}

/// `url` when it parses as http(s); the parser's message never quotes its input.
fn checked(flag: &'static str, url: Option<String>) -> Result<Option<String>, FlagError> {
    let Some(url) = url else { return Ok(None) };
    let invalid = |reason: String| FlagError::InvalidUrl { flag, reason };
    let parsed = reqwest::Url::parse(&url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn flags() -> Flags {
        Flags {
            slack_user: "flagger".into(),
            ..Flags::default()
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn nothing_set_is_no_global_alerting() {
        assert_eq!(flags().resolve(no_env), Ok(GlobalAlerting::default()));
    }

    #[test]
    fn slack_needs_a_channel_and_takes_user_token_and_proxy() {
        let mut f = Flags {
            slack_url: Some("https://hooks.slack.com/services/T0/B0/secret".into()),
            ..flags()
        };
        assert_eq!(f.resolve(no_env), Err(FlagError::NoSlackChannel));
        f.slack_channel = Some("general".into());
        f.slack_proxy_url = Some("http://proxy:3128".into());
        let env = |k: &str| (k == "SLACK_TOKEN").then(|| "xoxb-1".to_string());
        let slack = f.resolve(env).unwrap().notifier.unwrap();
        assert_eq!(slack.kind, AlertProviderType::Slack);
        assert_eq!(slack.channel, "general");
        assert_eq!(slack.username, "flagger");
        assert_eq!(slack.token.as_deref(), Some("xoxb-1"));
        assert_eq!(slack.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(
            slack.shown_url(),
            "https://hooks.slack.com/… (from a Secret, not shown)"
        );
        assert!(!format!("{slack:?}").contains("secret"));
    }

    #[test]
    fn teams_wins_over_slack_and_flaggers_variables_are_read() {
        let f = Flags {
            slack_url: Some("https://hooks.slack.com/x".into()),
            ..flags()
        };
        let env = |k: &str| match k {
            "MSTEAMS_URL" => Some("https://example.webhook.office.com/abc".to_string()),
            "EVENT_WEBHOOK_URL" => Some("http://events.example/hook".to_string()),
            _ => None,
        };
        let resolved = f.resolve(env).unwrap();
        assert_eq!(
            resolved.notifier.map(|d| d.kind),
            Some(AlertProviderType::Msteams)
        );
        assert_eq!(
            resolved.event_webhook.map(|d| d.url),
            Some("http://events.example/hook".to_string())
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_it() {
        let f = Flags {
            event_webhook: Some("ftp://user:pw@host/x".into()),
            ..flags()
        };
        let err = f.resolve(no_env).unwrap_err().to_string();
        assert!(err.contains("--event-webhook"), "{err}");
        assert!(!err.contains("pw@host"), "{err}");
        let f = Flags {
            slack_url: Some("not a url pw".into()),
            slack_channel: Some("c".into()),
            ..flags()
        };
        let err = f.resolve(no_env).unwrap_err().to_string();
        assert!(!err.contains("pw"), "{err}");
    }
}
