//! Route objects as a GitOps agent owns them, for the router end-to-end tests
//! (`e2e_traffic_routers`, `e2e_rollout_routers`): apply a manifest the way Argo CD does
//! (server-side apply under [`GITOPS`]), and check after a rollout that the object is exactly
//! what the manifest declares again (Argo Rollouts #3854): same spec, annotations and
//! managedFields as after Git's own apply, no Sluice entry, no other manager owning a spec field,
//! and a server-side dry-run apply of the manifest under [`GITOPS`] that changes nothing.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery;
use pretty_assertions::assert_eq;
use serde_json::Value;

use super::eventually;

/// The GitOps agent's field manager.
pub const GITOPS: &str = "argocd-controller";

/// The API of `manifest`'s kind in `ns` (the kind must be served).
pub async fn api_for(client: &kube::Client, ns: &str, manifest: &Value) -> Api<DynamicObject> {
    let api_version = manifest["apiVersion"].as_str().expect("apiVersion");
    let kind = manifest["kind"].as_str().expect("kind");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("the cluster serves no {kind} {api_version}: {e}"));
    Api::namespaced_with(client.clone(), ns, &ar)
}

pub fn name_of(manifest: &Value) -> &str {
    manifest["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
}

/// Applies `manifest` as Argo CD with server-side apply would; returns the stored object.
pub async fn gitops_apply(client: &kube::Client, ns: &str, manifest: &Value) -> DynamicObject {
    let api = api_for(client, ns, manifest).await;
    api.patch(
        name_of(manifest),
        &PatchParams::apply(GITOPS).force(),
        &Patch::Apply(manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {} as {GITOPS}: {e}", name_of(manifest)))
}

/// The managedFields entries without their timestamps.
pub fn strip_times(obj: &DynamicObject) -> Vec<Value> {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            let mut v = serde_json::to_value(e).expect("managedFields entry");
            if let Some(m) = v.as_object_mut() {
                m.remove("time");
            }
            v
        })
        .collect()
}

/// Whether Sluice's field manager still has an entry on the object.
pub fn sluice_owns_something(obj: &DynamicObject) -> bool {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|e| e.manager.as_deref() == Some(sluice::traffic::FIELD_MANAGER))
}

/// Waits until the object `manifest` names has no managedFields entry of Sluice's any more
/// (the controller released it), and returns it.
pub async fn wait_released(
    client: &kube::Client,
    ns: &str,
    manifest: &Value,
    timeout: Duration,
) -> DynamicObject {
    let api = api_for(client, ns, manifest).await;
    let name = name_of(manifest);
    eventually(
        timeout,
        &format!("{name} to be released by Sluice"),
        || async {
            let live = api.get(name).await.ok()?;
            (!sluice_owns_something(&live)).then_some(live)
        },
    )
    .await
}

/// After release: the object is its manifest again and Git's manager alone owns its spec.
/// `original` is the object as Git's last apply stored it.
pub async fn assert_as_declared(
    client: &kube::Client,
    ns: &str,
    manifest: &Value,
    original: &DynamicObject,
) {
    let api = api_for(client, ns, manifest).await;
    let name = name_of(manifest);
    let live = api.get(name).await.expect("the object after release");
    assert_eq!(
        live.data["spec"], original.data["spec"],
        "{name}: spec restored"
    );
    // `original` may be a snapshot taken mid-rollout (Git re-synced): without Sluice's parts.
    let expected_annotations = original
        .metadata
        .annotations
        .clone()
        .map(|mut a| {
            a.remove(sluice::traffic::ownership::ORIGINALS_ANNOTATION);
            a
        })
        .filter(|a| !a.is_empty());
    assert_eq!(
        live.metadata.annotations, expected_annotations,
        "{name}: annotations restored"
    );
    assert_eq!(live.metadata.labels, original.metadata.labels);
    for entry in live.metadata.managed_fields.iter().flatten() {
        let manager = entry.manager.clone().unwrap_or_default();
        assert_ne!(
            manager,
            sluice::traffic::FIELD_MANAGER,
            "{name}: Sluice still owns {entry:?}"
        );
        let owns_spec = entry
            .fields_v1
            .as_ref()
            .is_some_and(|f| f.0.get("f:spec").is_some());
        assert!(
            !owns_spec || manager == GITOPS,
            "{name}: {manager} owns spec fields: {entry:?}"
        );
    }
    let expected_fields: Vec<Value> = strip_times(original)
        .into_iter()
        .filter(|e| e["manager"] != sluice::traffic::FIELD_MANAGER)
        .collect();
    assert_eq!(
        strip_times(&live),
        expected_fields,
        "{name}: managedFields as after Git's apply"
    );
    let dry = api
        .patch(
            name,
            &PatchParams {
                dry_run: true,
                ..PatchParams::apply(GITOPS).force()
            },
            &Patch::Apply(manifest),
        )
        .await
        .expect("dry-run apply of the manifest");
    assert_eq!(dry.data["spec"], live.data["spec"], "{name}: dry-run diff");
    assert_eq!(dry.metadata.annotations, live.metadata.annotations);
    assert_eq!(
        strip_times(&dry),
        strip_times(&live),
        "{name}: dry-run managedFields"
    );
    assert_eq!(
        dry.metadata.resource_version, live.metadata.resource_version,
        "{name}: a dry-run apply of the manifest would change the object"
    );
}

/// ln C(n, k).
fn ln_choose(n: usize, k: usize) -> f64 {
    let ln_fact = |m: usize| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
    ln_fact(n) - ln_fact(k) - ln_fact(n - k)
}

/// The central 99.9% interval [lo, hi] of Binomial(n, p): P(X < lo) <= 0.0005 and
/// P(X > hi) <= 0.0005.
pub fn binomial_interval(n: usize, p: f64) -> (usize, usize) {
    if p <= 0.0 {
        return (0, 0);
    }
    if p >= 1.0 {
        return (n, n);
    }
    let pmf: Vec<f64> = (0..=n)
        .map(|k| (ln_choose(n, k) + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp())
        .collect();
    let tail = 0.0005;
    let (mut lo, mut acc) = (0, 0.0);
    while lo < n && acc + pmf[lo] <= tail {
        acc += pmf[lo];
        lo += 1;
    }
    let (mut hi, mut acc) = (n, 0.0);
    while hi > 0 && acc + pmf[hi] <= tail {
        acc += pmf[hi];
        hi -= 1;
    }
    (lo, hi)
}

/// The (first, second) weight pairs Traefik applies for the rules of HTTPRoute `<ns>/<route>`,
/// from its API at `api_url` (the weighted services it builds for the route, in its order);
/// empty when Traefik has none or cannot be asked.
pub async fn traefik_weight_sets(
    api_url: &str,
    ns: &str,
    route: &str,
    (first, second): (&str, &str),
) -> Vec<(i64, i64)> {
    let Some(services) = async {
        reqwest::get(format!("{api_url}/api/http/services"))
            .await
            .ok()?
            .json::<Vec<Value>>()
            .await
            .ok()
    }
    .await
    else {
        return Vec::new();
    };
    let prefix = format!("httproute-{ns}-{route}-");
    services
        .iter()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?;
            let list = s.pointer("/weighted/services")?.as_array()?;
            if !name.starts_with(&prefix) {
                return None;
            }
            let weight_of = |svc: &str| {
                list.iter()
                    .find(|x| {
                        x.get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| n.contains(&format!("{ns}-{svc}-")))
                    })
                    .map(|x| x.get("weight").and_then(Value::as_i64).unwrap_or(1))
            };
            Some((weight_of(first)?, weight_of(second)?))
        })
        .collect()
}

/// An `experiment:` step's split is verified: `canary` to the canary, one extra destination with
/// `extra` (the template's Service), the rest to stable (`status.canary.weights`).
pub fn experiment_split_verified(
    s: &sluice::api::argo::rollout::RolloutStatus,
    canary: i32,
    extra: i32,
) -> bool {
    s.canary.weights.as_ref().is_some_and(|w| {
        w.canary.weight == canary
            && w.stable.weight == 100 - canary - extra
            && w.additional.len() == 1
            && w.additional[0].weight == extra
            && w.verified == Some(true)
    })
}

/// The status of the first template of Experiment `name` (its Service, its pod-template hash).
pub async fn first_template_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> sluice::api::argo::experiment::TemplateStatus {
    let experiments: Api<sluice::api::argo::experiment::Experiment> =
        Api::namespaced(client.clone(), ns);
    let experiment = experiments.get(name).await.expect("the step's Experiment");
    experiment.status.unwrap_or_default().template_statuses[0].clone()
}
