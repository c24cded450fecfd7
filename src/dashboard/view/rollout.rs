//! A Rollout's page: summary with Argo CD's health, weights desired and as the routers verified
//! them, the step list with the current step marked, revisions with images and ready pods, every
//! AnalysisRun measurement with its query and verdict, Events, and the allowed actions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

use super::{ago, badge, events_table, wire_name};
use crate::api::argo::analysis::{AnalysisRun, Measurement};
use crate::api::argo::rollout::{POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, Rollout};
use crate::dashboard::actions::Action;
use crate::dashboard::cache::Snapshot;
use crate::dashboard::html::{esc, seg};
use crate::engine::health::{Health, argocd_health};

/// What the viewer may press.
pub struct Controls<'a> {
    pub csrf: &'a str,
    /// The actions the viewer is allowed (empty: read-only).
    pub allowed: &'a [Action],
    /// Why there are no buttons, when there are none.
    pub read_only: &'a str,
}

/// The `<main>` of a Rollout's page, or `None` when the cache holds no such Rollout.
pub fn render(
    snap: &Snapshot,
    namespace: &str,
    name: &str,
    controls: &Controls<'_>,
    now: Timestamp,
) -> Option<String> {
    let rollout = snap
        .rollouts
        .iter()
        .find(|r| r.namespace().as_deref() == Some(namespace) && r.name_any() == name)?;
    let mut out = format!(
        "<h1>Rollout <span class=\"ns\">{}/</span>{}</h1>",
        esc(namespace),
        esc(name)
    );
    out.push_str(&summary(rollout));
    out.push_str(&actions(rollout, controls));
    out.push_str(&steps(rollout));
    out.push_str("<h2>Revisions</h2>");
    out.push_str(&revisions(rollout, &snap.replica_sets, now));
    out.push_str("<h2>Analysis</h2>");
    out.push_str(&analysis(rollout, &snap.runs));
    out.push_str("<h2>Events</h2>");
    out.push_str(&events_table(&snap.events, "Rollout", namespace, name, now));
    Some(out)
}

/// Argo CD's health of a Rollout, by name.
pub fn health(rollout: &Rollout) -> &'static str {
    let status = rollout.status.clone().unwrap_or_default();
    match argocd_health(
        &rollout.spec,
        &status,
        rollout.metadata.generation.unwrap_or_default(),
    ) {
        Health::Healthy => "Healthy",
        Health::Progressing => "Progressing",
        Health::Suspended => "Suspended",
        Health::Degraded => "Degraded",
    }
}

pub fn strategy(rollout: &Rollout) -> &'static str {
    if rollout.spec.strategy.blue_green.is_some() {
        "BlueGreen"
    } else {
        "Canary"
    }
}

/// `current/total` steps, or `-` without steps.
pub fn step_position(rollout: &Rollout) -> String {
    let total = step_count(rollout);
    if total == 0 {
        return "-".into();
    }
    let status = rollout.status.clone().unwrap_or_default();
    format!("{}/{total}", status.current_step_index.unwrap_or(0))
}

fn step_count(rollout: &Rollout) -> usize {
    rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map_or(0, |c| c.steps().len())
}

fn updating(rollout: &Rollout) -> bool {
    let status = rollout.status.clone().unwrap_or_default();
    !status.current_pod_hash.is_empty() && status.current_pod_hash != status.stable_rs
}

/// The canary weight the steps ask for now: the last `setWeight` up to the current step (100
/// past the last step, 0 when no update or an abort is under way).
pub fn desired_weight(rollout: &Rollout) -> i32 {
    let status = rollout.status.clone().unwrap_or_default();
    if !updating(rollout) || status.abort {
        return 0;
    }
    let steps = rollout
        .spec
        .strategy
        .canary
        .as_ref()
        .map(|c| c.steps())
        .unwrap_or_default();
    let index = status.current_step_index.unwrap_or(0).max(0) as usize;
    if status.promote_full || index >= steps.len() {
        return 100;
    }
    steps[..=index]
        .iter()
        .rev()
        .find_map(|s| s.set_weight)
        .unwrap_or(0)
}

/// The weight the traffic routers report, and whether they verified it; `None` without a router.
pub fn router_weight(rollout: &Rollout) -> Option<(i32, Option<bool>)> {
    let weights = rollout.status.as_ref()?.canary.weights.as_ref()?;
    Some((weights.canary.weight, weights.verified))
}

/// The weights as a phrase for tables.
pub fn weight_text(rollout: &Rollout) -> String {
    let desired = desired_weight(rollout);
    match router_weight(rollout) {
        Some((w, Some(false))) => format!("{desired}% (router {w}%, not verified)"),
        Some((w, _)) => format!("{desired}% (router {w}%)"),
        None => format!("{desired}%"),
    }
}

fn summary(rollout: &Rollout) -> String {
    let status = rollout.status.clone().unwrap_or_default();
    let phase = wire_name(status.phase, "Unknown");
    let health = health(rollout);
    let verified = match router_weight(rollout) {
        Some((w, Some(true))) => format!("<span class=\"verified\">{w}% verified</span>"),
        Some((w, Some(false))) => {
            format!("<span class=\"unverified\">{w}% not verified yet</span>")
        }
        Some((w, None)) => format!("{w}% (the router does not verify)"),
        None => "no traffic router: replica ratio".into(),
    };
    let mut out = format!(
        "<dl class=\"summary\">\
         <dt>Phase</dt><dd id=\"phase\">{}</dd>\
         <dt>Health</dt><dd id=\"health\">{}</dd>\
         <dt>Strategy</dt><dd>{}</dd>\
         <dt>Step</dt><dd id=\"step\">{}</dd>\
         <dt>Weight desired</dt><dd id=\"weight-desired\">{}%</dd>\
         <dt>Weight applied</dt><dd id=\"weight-verified\">{verified}</dd>\
         <dt>Replicas</dt><dd>{} desired, {} updated, {} ready, {} available</dd>",
        badge(&phase),
        badge(health),
        strategy(rollout),
        esc(&step_position(rollout)),
        desired_weight(rollout),
        rollout.spec.replicas(),
        status.updated_replicas,
        status.ready_replicas,
        status.available_replicas,
    );
    if !status.message.is_empty() {
        out.push_str(&format!(
            "<dt>Message</dt><dd>{}</dd>",
            esc(&status.message)
        ));
    }
    if let Some(revision) = git_revision(rollout) {
        out.push_str(&format!(
            "<dt>Git revision</dt><dd><code>{}</code></dd>",
            esc(&revision)
        ));
    }
    out.push_str("</dl>");
    out
}

/// The Git revision GitOps tools record on the object, when one does.
fn git_revision(rollout: &Rollout) -> Option<String> {
    const KEYS: [&str; 2] = [
        "kustomize.toolkit.fluxcd.io/revision",
        "argocd.argoproj.io/revision",
    ];
    let annotations = rollout.annotations();
    let labels = rollout.labels();
    KEYS.iter()
        .find_map(|k| annotations.get(*k).or_else(|| labels.get(*k)))
        .cloned()
}

fn actions(rollout: &Rollout, controls: &Controls<'_>) -> String {
    if controls.allowed.is_empty() {
        return format!("<p class=\"read-only\">{}</p>", esc(controls.read_only));
    }
    let base = format!(
        "/rollouts/{}/{}",
        seg(&rollout.namespace().unwrap_or_default()),
        seg(&rollout.name_any())
    );
    let mut out = String::from("<div class=\"actions\">");
    for action in controls.allowed {
        out.push_str(&format!(
            "<form method=\"post\" action=\"{base}/{name}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" id=\"action-{name}\">{name}</button></form>",
            name = action.name(),
            csrf = esc(controls.csrf),
        ));
    }
    out.push_str("</div>");
    out
}

/// One step in words: `setWeight: 20`, `pause`, `pause: {"duration":"1m"}`.
fn step_text(step: &impl serde::Serialize) -> String {
    let value = serde_json::to_value(step).unwrap_or_default();
    value
        .as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| match v {
            Value::Object(m) if m.is_empty() => k.clone(),
            v => format!("{k}: {v}"),
        })
        .unwrap_or_default()
}

fn steps(rollout: &Rollout) -> String {
    let Some(canary) = rollout.spec.strategy.canary.as_ref() else {
        return String::new();
    };
    if canary.steps().is_empty() {
        return String::new();
    }
    let current = rollout
        .status
        .as_ref()
        .and_then(|s| s.current_step_index)
        .unwrap_or(0);
    let updating = updating(rollout);
    let mut out = String::from("<h2>Steps</h2><ol class=\"steps\" start=\"0\">");
    for (i, step) in canary.steps().iter().enumerate() {
        let i = i as i32;
        let state = if i < current {
            "done"
        } else if i == current && updating {
            "current"
        } else {
            "todo"
        };
        let aria = if state == "current" {
            " aria-current=\"step\""
        } else {
            ""
        };
        out.push_str(&format!(
            "<li class=\"step {state}\" data-index=\"{i}\"{aria}>{}</li>",
            esc(&step_text(step))
        ));
    }
    out.push_str("</ol>");
    out
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

fn revision_of(annotations: &BTreeMap<String, String>) -> i64 {
    annotations
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn revisions(rollout: &Rollout, sets: &[Arc<ReplicaSet>], now: Timestamp) -> String {
    let uid = rollout.uid().unwrap_or_default();
    let status = rollout.status.clone().unwrap_or_default();
    let mut mine: Vec<&ReplicaSet> = sets
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| owned_by(&s.metadata, &uid))
        .collect();
    mine.sort_by_key(|s| std::cmp::Reverse(revision_of(s.annotations())));
    if mine.is_empty() {
        return "<p class=\"none\">No ReplicaSets yet.</p>".into();
    }
    let mut out = String::from(
        "<table class=\"revisions\"><thead><tr><th>Revision</th><th>ReplicaSet</th><th>Role</th>\
         <th>Images</th><th>Ready</th><th>Age</th></tr></thead><tbody>",
    );
    for rs in mine {
        let hash = rs
            .labels()
            .get(POD_TEMPLATE_HASH_LABEL)
            .cloned()
            .unwrap_or_default();
        let role = if hash == status.stable_rs {
            "stable"
        } else if hash == status.current_pod_hash {
            "canary"
        } else {
            ""
        };
        let images: Vec<String> = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
            .map(|p| {
                p.containers
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.image.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let desired = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready = rs
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        out.push_str(&format!(
            "<tr class=\"rs {role}\"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td>{ready}/{desired}</td><td>{}</td></tr>",
            revision_of(rs.annotations()),
            esc(&rs.name_any()),
            role,
            esc(&images.join(", ")),
            ago(rs.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

fn analysis(rollout: &Rollout, runs: &[Arc<AnalysisRun>]) -> String {
    let uid = rollout.uid().unwrap_or_default();
    let mut mine: Vec<&AnalysisRun> = runs
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| owned_by(&r.metadata, &uid))
        .collect();
    mine.sort_by_key(|r| std::cmp::Reverse(r.metadata.creation_timestamp.clone()));
    if mine.is_empty() {
        return "<p class=\"none\">No AnalysisRuns.</p>".into();
    }
    let mut out = String::new();
    for run in mine {
        let status = run.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "<section class=\"run\"><h3>{} {}</h3>",
            esc(&run.name_any()),
            badge(&wire_name(status.phase, "Pending"))
        ));
        for metric in &status.metric_results {
            out.push_str(&format!(
                "<h4>{} {}</h4><table class=\"measurements\"><thead><tr><th>Finished</th>\
                 <th>Verdict</th><th>Value</th><th>Query</th><th>Condition</th></tr></thead><tbody>",
                esc(&metric.name),
                badge(&wire_name(Some(metric.phase), "Pending")),
            ));
            for m in &metric.measurements {
                out.push_str(&measurement_row(m));
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("</section>");
    }
    out
}

/// A measurement: its value, the exact query sent, and how each condition judged it.
fn measurement_row(m: &Measurement) -> String {
    let finished = m
        .finished_at
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "-".into());
    let condition = m
        .condition
        .as_ref()
        .map(|c| {
            let judged = |cond: &Option<String>, met: Option<bool>, label: &str| {
                cond.as_ref().map(|cond| {
                    let verdict = match met {
                        Some(true) => "held",
                        Some(false) => "did not hold",
                        None => "not evaluated",
                    };
                    format!("{label} <code>{}</code> {verdict}", esc(cond))
                })
            };
            [
                judged(&c.success_condition, c.success_condition_met, "success"),
                judged(&c.failure_condition, c.failure_condition_met, "failure"),
                c.message.as_ref().map(|m| esc(m)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("<br>")
        })
        .or_else(|| m.message.as_ref().map(|m| esc(m)))
        .unwrap_or_default();
    format!(
        "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
        esc(&finished),
        badge(&wire_name(Some(m.phase), "Pending")),
        esc(m.value.as_deref().unwrap_or("-")),
        esc(m.query.as_deref().unwrap_or("-")),
        condition
    )
}
