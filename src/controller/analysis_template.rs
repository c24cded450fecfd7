//! Checks AnalysisTemplates and ClusterAnalysisTemplates as they change, and records a Warning
//! Event `InvalidSpec` on a template whose metrics cannot be used (a condition that does not parse,
//! with its position; a bad duration, count or regular expression), naming the field. Templates
//! have no status in Argo's API, so the Event is where `kubectl describe` shows it; runs made from
//! such a template fail with the same message.
//!
//! This module only reads templates and records Events; it never changes a template.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::Shared;
use crate::api::argo::analysis::{AnalysisTemplate, AnalysisTemplateSpec, ClusterAnalysisTemplate};
use crate::engine::analysis::run::validate_template;

/// What the checker of one kind needs: where to record Events, and where the kind keeps its spec.
struct Checker<K> {
    shared: Shared,
    spec: fn(&K) -> &AnalysisTemplateSpec,
}

async fn check<K>(
    template: Arc<K>,
    checker: Arc<Checker<K>>,
) -> Result<Action, std::convert::Infallible>
where
    K: Resource<DynamicType = ()>,
{
    let shared = &checker.shared;
    if let Err(errors) = validate_template((checker.spec)(&template)) {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidSpec".into(),
            note: Some(super::event_note(&format!(
                "{} {}: {message}; AnalysisRuns made from it will fail with this error",
                K::kind(&()),
                template.name_any()
            ))),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = shared
            .recorder
            .publish(&event, &template.object_ref(&()))
            .await
        {
            tracing::warn!(template = %template.name_any(), error = %e, "recording an event");
        }
    }
    Ok(Action::await_change())
}

async fn watch<K>(
    api: Api<K>,
    shared: Shared,
    spec: fn(&K) -> &AnalysisTemplateSpec,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let watch = shared.instance.watch();
    Controller::new(api, watch)
        .graceful_shutdown_on(shutdown)
        .run(
            check,
            |_, _, _| Action::await_change(),
            Arc::new(Checker { shared, spec }),
        )
        .for_each(|_| async {})
        .await;
}

/// Watches templates in `shared.namespace` (and ClusterAnalysisTemplates when cluster-wide) until
/// `shutdown` resolves.
pub async fn run(
    shared: Shared,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let client = shared.client.clone();
    let namespaced: Api<AnalysisTemplate> = match &shared.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let templates = watch(namespaced, shared.clone(), |t| &t.spec, shutdown.clone());
    if shared.namespace.is_some() {
        templates.await;
        return;
    }
    let clustered = watch(
        Api::<ClusterAnalysisTemplate>::all(client),
        shared,
        |t| &t.spec.template,
        shutdown,
    );
    tokio::join!(templates, clustered);
}
