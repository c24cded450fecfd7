//! The overview: every Rollout and Canary the viewer may list, one row each.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::rollout::{health, step_position, strategy, weight_text};
use super::{ago, badge, wire_name};
use crate::dashboard::cache::Snapshot;
use crate::dashboard::html::{esc, seg};

/// The `<main>` of the overview.
pub fn render(snap: &Snapshot, now: Timestamp) -> String {
    let mut out = String::from("<h1>Rollouts</h1>");
    let mut rollouts: Vec<_> = snap.rollouts.iter().collect();
    rollouts.sort_by_key(|r| (r.namespace(), r.name_any()));
    if rollouts.is_empty() {
        out.push_str("<p class=\"none\">No Rollouts you may list.</p>");
    } else {
        out.push_str(
            "<table class=\"rollouts\"><thead><tr><th>Namespace</th><th>Name</th><th>Phase</th>\
             <th>Health</th><th>Strategy</th><th>Step</th><th>Canary weight</th><th>Age</th>\
             </tr></thead><tbody>",
        );
        for r in rollouts {
            let ns = r.namespace().unwrap_or_default();
            let phase = wire_name(r.status.as_ref().and_then(|s| s.phase), "Unknown");
            out.push_str(&format!(
                "<tr><td>{}</td><td><a href=\"/rollouts/{}/{}\">{}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&ns),
                seg(&ns),
                seg(&r.name_any()),
                esc(&r.name_any()),
                badge(&phase),
                badge(health(r)),
                strategy(r),
                esc(&step_position(r)),
                esc(&weight_text(r)),
                ago(r.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h1>Canaries</h1>");
    let mut canaries: Vec<_> = snap.canaries.iter().collect();
    canaries.sort_by_key(|c| (c.namespace(), c.name_any()));
    if canaries.is_empty() {
        out.push_str("<p class=\"none\">No Canaries you may list.</p>");
        return out;
    }
    out.push_str(
        "<table class=\"canaries\"><thead><tr><th>Namespace</th><th>Name</th><th>Phase</th>\
         <th>Weight</th><th>Failed checks</th><th>Last transition</th></tr></thead><tbody>",
    );
    for c in canaries {
        let ns = c.namespace().unwrap_or_default();
        let status = c.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/canaries/{}/{}\">{}</a></td><td>{}</td><td>{}%</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&ns),
            seg(&ns),
            seg(&c.name_any()),
            esc(&c.name_any()),
            badge(&wire_name(status.phase, "Unknown")),
            status.canary_weight.unwrap_or(0),
            status.failed_checks.unwrap_or(0),
            ago(status.last_transition_time.as_ref().map(|t| t.0), now),
        ));
    }
    out.push_str("</tbody></table>");
    out
}
