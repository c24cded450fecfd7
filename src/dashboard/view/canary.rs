//! A Flagger Canary's page: phase, weight, iterations and failed checks, conditions, the
//! analysis' metrics with their queries and thresholds, and Events (Flagger records each
//! check's outcome as an Event).

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{badge, events_table, wire_name};
use crate::dashboard::cache::Snapshot;
use crate::dashboard::html::esc;

/// The `<main>` of a Canary's page, or `None` when the cache holds no such Canary.
pub fn render(snap: &Snapshot, namespace: &str, name: &str, now: Timestamp) -> Option<String> {
    let canary = snap
        .canaries
        .iter()
        .find(|c| c.namespace().as_deref() == Some(namespace) && c.name_any() == name)?;
    let status = canary.status.clone().unwrap_or_default();
    let mut out = format!(
        "<h1>Canary <span class=\"ns\">{}/</span>{}</h1>\
         <dl class=\"summary\"><dt>Phase</dt><dd id=\"phase\">{}</dd>\
         <dt>Target</dt><dd>Deployment {}</dd>\
         <dt>Weight</dt><dd id=\"weight-verified\">{}%</dd>\
         <dt>Iterations</dt><dd>{}</dd><dt>Failed checks</dt><dd>{}</dd>",
        esc(namespace),
        esc(name),
        badge(&wire_name(status.phase, "Unknown")),
        esc(&canary.spec.target_ref.name),
        status.canary_weight.unwrap_or(0),
        status.iterations.unwrap_or(0),
        status.failed_checks.unwrap_or(0),
    );
    for c in &status.conditions {
        out.push_str(&format!(
            "<dt>{}</dt><dd>{} {} {}</dd>",
            esc(&c.r#type),
            esc(&c.status),
            esc(&c.reason),
            esc(c.message.as_deref().unwrap_or(""))
        ));
    }
    out.push_str("</dl><h2>Metrics</h2>");
    let metrics = canary
        .analysis()
        .map(|a| a.metrics.as_slice())
        .unwrap_or_default();
    if metrics.is_empty() {
        out.push_str("<p class=\"none\">No metrics.</p>");
    } else {
        out.push_str(
            "<table class=\"metrics\"><thead><tr><th>Name</th><th>Query or template</th>\
             <th>Threshold</th></tr></thead><tbody>",
        );
        for m in metrics {
            let source = m
                .query
                .clone()
                .or_else(|| {
                    m.template_ref
                        .as_ref()
                        .map(|t| format!("MetricTemplate {}", t.name))
                })
                .unwrap_or_else(|| "builtin".into());
            let threshold = match (&m.threshold_range, &m.threshold) {
                (Some(r), _) => format!(
                    "{} … {}",
                    r.min.as_ref().map_or("-".into(), |n| n.to_string()),
                    r.max.as_ref().map_or("-".into(), |n| n.to_string())
                ),
                (None, Some(t)) => t.to_string(),
                (None, None) => "-".into(),
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&m.name),
                esc(&source),
                esc(&threshold)
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h2>Events</h2>");
    out.push_str(&events_table(&snap.events, "Canary", namespace, name, now));
    Some(out)
}
