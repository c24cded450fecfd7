//! Flagger's controller-wide alerting flags against a real controller: `--slack-url` (with
//! `--slack-channel`, `--slack-user`) alerts a Canary that has no `analysis.alerts`, and
//! `--event-webhook` receives every Canary Event as Flagger's event payload. Both URLs point at
//! a listener the test runs, with credential-like paths that must never appear in an Event or
//! the controller's log.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::controller::ControllerProcess;
use common::eventually;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::flagger::canary::{Canary, CanaryPhase};

/// What the listener received: (path, body).
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A listener answering every POST with 200 and recording it; its base URL.
async fn listener(received: Received) -> String {
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  body: axum::Json<Value>| {
                let sink = received.clone();
                async move {
                    sink.lock().unwrap().push((path, body.0));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn bodies(received: &Received, prefix: &str) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .map(|(_, b)| b.clone())
        .collect()
}

#[tokio::test]
async fn global_slack_and_event_webhook_flags_post_flaggers_payloads_and_never_show_the_urls() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("global-alerts").await;
    let received: Received = Arc::default();
    let base = listener(received.clone()).await;
    let slack_url = format!("{base}/slack/T0SLACKSECRET/B0SLACKSECRET/xoxSlackPathSecret");
    let event_url = format!("{base}/events/evWebhookPathSecret");
    let ctl = ControllerProcess::start_with(
        &env,
        &ns.name,
        &[
            "--slack-url",
            &slack_url,
            // Flagger's own spellings work too.
            "-slack-channel",
            "deploys",
            "-slack-user=sluice-bot",
            "--event-webhook",
            &event_url,
        ],
    )
    .await;

    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &common::canary::target("podinfo", 1, "podinfo:1", 9898),
        )
        .await
        .expect("creating the target");
    let canary: Canary = serde_json::from_value(common::canary::kubernetes(
        "podinfo",
        Some(60),
        json!({"interval": "1s", "threshold": 2, "iterations": 2}),
    ))
    .expect("Canary JSON");
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns.name);
    canaries
        .create(&PostParams::default(), &canary)
        .await
        .expect("creating the Canary");
    let phase = |want: CanaryPhase| {
        let canaries = canaries.clone();
        async move {
            let c = canaries.get("podinfo").await.ok()?;
            (c.status?.phase? == want).then_some(())
        }
    };
    eventually(Duration::from_secs(90), "Initialized", || {
        phase(CanaryPhase::Initialized)
    })
    .await;
    deployments
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:2"}]}}}})),
        )
        .await
        .expect("updating the target's image");
    eventually(Duration::from_secs(120), "Succeeded", || {
        phase(CanaryPhase::Succeeded)
    })
    .await;

    // Slack: Flagger's message shape, on the flags' channel and user, every alert of the run.
    let done = "Canary analysis completed successfully, promotion finished.";
    let slack = eventually(Duration::from_secs(20), "the promotion alert", || async {
        let all = bodies(
            &received,
            "slack/T0SLACKSECRET/B0SLACKSECRET/xoxSlackPathSecret",
        );
        all.iter()
            .any(|b| b["attachments"][0]["text"] == done)
            .then_some(all)
    })
    .await;
    let texts: Vec<&str> = slack
        .iter()
        .filter_map(|b| b["attachments"][0]["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        vec![
            "New Deployment detected, initialization completed.",
            "New revision detected, progressing canary analysis.",
            done,
        ],
        "every alert, in order"
    );
    for body in &slack {
        assert_eq!(body["channel"], "deploys");
        assert_eq!(body["username"], "sluice-bot");
        assert_eq!(body["icon_emoji"], ":rocket:");
        let attachment = &body["attachments"][0];
        assert_eq!(attachment["color"], "good");
        assert_eq!(attachment["author_name"], format!("podinfo.{}", ns.name));
        assert_eq!(attachment["mrkdwn_in"], json!(["text"]));
    }

    // Event webhook: Flagger's CanaryWebhookPayload for each Event.
    let events = bodies(&received, "events/evWebhookPathSecret");
    let message = |b: &Value| {
        b["metadata"]["eventMessage"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let new_revision = events
        .iter()
        .find(|b| message(b).starts_with("New revision detected! Scaling up podinfo."))
        .unwrap_or_else(|| panic!("no new-revision event in {events:#?}"));
    assert_eq!(new_revision["name"], "podinfo");
    assert_eq!(new_revision["namespace"], ns.name.as_str());
    assert_eq!(new_revision["metadata"]["eventType"], "Normal");
    assert!(new_revision["phase"].is_string(), "{new_revision}");
    assert!(
        new_revision["checksum"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{new_revision}"
    );
    let millis: u64 = new_revision["metadata"]["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a timestamp in ms: {new_revision}"));
    assert!(millis > 1_700_000_000_000, "{millis}");
    assert!(
        events
            .iter()
            .any(|b| message(b).contains("Promotion completed")
                || message(b).contains("promotion finished")
                || b["phase"] == "Succeeded"),
        "the promotion reaches the webhook: {events:#?}"
    );

    // The URLs are credentials: in no Event, nowhere in the log.
    let recorded = common::events::canary_messages(&env.client, &ns.name).await;
    assert!(!recorded.is_empty());
    for text in recorded.iter().chain(std::iter::once(&ctl.log_text())) {
        for secret in ["SLACKSECRET", "xoxSlackPathSecret", "evWebhookPathSecret"] {
            assert!(!text.contains(secret), "{secret} shown in: {text}");
        }
    }
}
