//! The Events the controller records on Canaries, as the tests read them.
//!
//! The controller writes an Event after the status it describes (and after the actions before
//! it), so a test that has just seen a phase must wait for the Event rather than list once.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};

/// The messages of the Events on Canaries in `namespace`, oldest first.
pub async fn canary_messages(client: &Client, namespace: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.sort_by_key(|e| {
        e.event_time
            .clone()
            .map(|t| t.0)
            .or(e.metadata.creation_timestamp.clone().map(|t| t.0))
    });
    list.into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Canary"))
        .filter_map(|e| e.message)
        .collect()
}

/// [`canary_messages`] once a message containing each of `expected` is there (or 20 s have
/// passed: the caller's assertion then shows what is missing), and 1 s more, so that a duplicate
/// recorded just after would show too.
pub async fn canary_messages_having(
    client: &Client,
    namespace: &str,
    expected: &[&str],
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages = canary_messages(client, namespace).await;
        let all_there = expected
            .iter()
            .all(|x| messages.iter().any(|m| m.contains(x)));
        if all_there || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    canary_messages(client, namespace).await
}

/// Waits (30 s) for an `events.k8s.io/v1` Event with `reason` regarding the object `name` in
/// `namespace`, and returns its note.
pub async fn note_on(client: &Client, namespace: &str, reason: &str, name: &str) -> String {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    super::eventually(
        Duration::from_secs(30),
        &format!("a {reason} event on {name}"),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                (e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await
}
