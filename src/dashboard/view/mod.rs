//! Pure rendering: a [`Snapshot`] of the caches (already limited to what the viewer may read)
//! becomes the HTML of a page's `<main>`. No I/O, no clock (the time is an argument); text from
//! the cluster is always escaped, and Secrets are never among the inputs.

pub mod canary;
pub mod overview;
pub mod rollout;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::html::esc;

/// A wire enum's name (`Paused`), or `fallback`.
fn wire_name<T: Serialize>(value: Option<T>, fallback: &str) -> String {
    value
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(String::from))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

/// `<span class="badge phase-x">X</span>`.
fn badge(text: &str) -> String {
    format!(
        "<span class=\"badge b-{}\">{}</span>",
        esc(&text.to_ascii_lowercase()),
        esc(text)
    )
}

/// How long ago, shortly (`42s`, `5m`, `3h`, `2d`).
fn ago(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "-".into();
    };
    match (now.as_second() - then.as_second()).max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The newest `limit` Events about `kind`/`name` in `namespace`, as a table.
fn events_table(
    events: &[std::sync::Arc<Event>],
    kind: &str,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> String {
    const LIMIT: usize = 30;
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let mut mine: Vec<&Event> = events
        .iter()
        .map(|e| e.as_ref())
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
                && e.metadata.namespace.as_deref() == Some(namespace)
        })
        .collect();
    mine.sort_by_key(|e| std::cmp::Reverse(when(e)));
    if mine.is_empty() {
        return "<p class=\"none\">No Events.</p>".into();
    }
    let mut out = String::from(
        "<table class=\"events\"><thead><tr><th>Age</th><th>Type</th><th>Reason</th>\
         <th>Message</th></tr></thead><tbody>",
    );
    for e in mine.into_iter().take(LIMIT) {
        out.push_str(&format!(
            "<tr class=\"ev-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.type_.clone().unwrap_or_default().to_ascii_lowercase()),
            ago(when(e), now),
            esc(e.type_.as_deref().unwrap_or("")),
            esc(e.reason.as_deref().unwrap_or("")),
            esc(e.message.as_deref().unwrap_or("")),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        let now = Timestamp::from_second(100_000).unwrap();
        let at = |s| Some(Timestamp::from_second(s).unwrap());
        assert_eq!(ago(at(99_958), now), "42s");
        assert_eq!(ago(at(99_700), now), "5m");
        assert_eq!(ago(None, now), "-");
    }
}
