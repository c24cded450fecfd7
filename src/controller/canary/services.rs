//! The apex (→ primary), `-primary` and `-canary` Services of a Canary, built as Flagger's
//! `reconcileService` (`pkg/router/kubernetes_default.go`) builds them: `service.port` first, then
//! with `service.portDiscovery` every other container port of the target (Flagger's `getPorts`:
//! sidecars `istio-proxy` / `envoy` and the port the Services target left out, unnamed ports
//! `tcp-<container>-<index>`), `clusterIP: None` with `service.headless`,
//! `service.trafficDistribution`, and the labels and annotations of `service.apex` / `primary` /
//! `canary` beside the selector label and the no-drift annotations.
//!
//! Labels and annotations named in `service.unmanagedMetadata` keep the value they have on the
//! live Service (another tool manages them). Keys that other field managers set are never
//! removed anyway: the Services are server-side applied.
//!
//! An owned Service is applied only when the cache shows it different (its selector, its ports,
//! or [`CHECKSUM_ANNOTATION`], a hash of everything else applied), so an idle Canary makes no API
//! request. Services the user made are taken over instead (`takeover`): their ports and selector
//! only, as Flagger updates metadata only of the Services it owns.
//!
//! This module decides and applies Services only; it never decides a run.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use super::{Ctx, Error, FIELD_MANAGER, generated_annotations, owner, selector_label, takeover};
use crate::api::flagger::canary::{Canary, CanaryService, CustomMetadata};

/// Hash of what Sluice last applied to a Service it owns (beside its selector and ports).
pub const CHECKSUM_ANNOTATION: &str = "sluice.dev/service-checksum";
/// Containers whose ports are never discovered (service mesh proxies), as Flagger's `sidecars`.
const SIDECARS: [&str; 2] = ["istio-proxy", "envoy"];

/// The ports of the generated Services: `service.port`, then the discovered ones by name.
pub(super) fn ports(service: &CanaryService, pod: Option<&PodSpec>) -> Vec<Value> {
    let target_port = service
        .target_port
        .as_ref()
        .map_or(json!(service.port), |p| json!(p));
    let mut first = json!({
        "name": service.port_name.clone().unwrap_or_else(|| "http".into()),
        "port": service.port,
        "protocol": "TCP",
        "targetPort": target_port,
    });
    if let Some(app_protocol) = &service.app_protocol {
        first["appProtocol"] = json!(app_protocol);
    }
    let mut ports = vec![first];
    if service.port_discovery == Some(true) {
        let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
        ports.extend(discovered(service, containers).into_iter().map(|(name, port)| {
            json!({"name": name, "port": port, "protocol": "TCP", "targetPort": port})
        }));
    }
    ports
}

/// Flagger's `getPorts`: every container port but the one the Services target, by port name
/// (a later container's port of the same name wins, as in Flagger's map).
fn discovered(service: &CanaryService, containers: &[Container]) -> BTreeMap<String, i32> {
    let mut found = BTreeMap::new();
    for container in containers {
        if SIDECARS.contains(&container.name.as_str()) {
            continue;
        }
        for (i, port) in container.ports.iter().flatten().enumerate() {
            let targeted = match &service.target_port {
                None => port.container_port == service.port,
                Some(IntOrString::Int(n)) => port.container_port == *n,
                Some(IntOrString::String(name)) => port.name.as_deref() == Some(name.as_str()),
            };
            if targeted {
                continue;
            }
            let name = port
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("tcp-{}-{i}", container.name));
            found.insert(name, port.container_port);
        }
    }
    found
}

/// One Service the Canary owns: its name, the selector value and the metadata of its field
/// (`service.apex`, `primary` or `canary`).
pub(super) struct Wanted<'a> {
    pub name: &'a str,
    pub label: &'a str,
    pub selector: &'a str,
    pub metadata: Option<&'a CustomMetadata>,
}

/// The server-side apply body of an owned Service, [`CHECKSUM_ANNOTATION`] included. `live` is
/// the Service as cached (the values of `unmanagedMetadata` keys are read from it).
pub(super) fn body(
    canary: &Canary,
    service: &CanaryService,
    wanted: &Wanted<'_>,
    ports: &[Value],
    live: Option<&Service>,
) -> Value {
    let custom = wanted.metadata.cloned().unwrap_or_default();
    let mut labels = custom.labels.unwrap_or_default();
    labels.insert(wanted.label.to_string(), wanted.name.to_string());
    let mut annotations = custom.annotations.unwrap_or_default();
    annotations.extend(generated_annotations());
    if let (Some(unmanaged), Some(live)) = (&service.unmanaged_metadata, live) {
        keep_live(&mut labels, &unmanaged.labels, live.labels());
        keep_live(&mut annotations, &unmanaged.annotations, live.annotations());
    }
    let mut spec = json!({
        "type": "ClusterIP",
        "selector": {wanted.label: wanted.selector},
        "ports": ports,
    });
    if service.headless == Some(true) {
        spec["clusterIP"] = json!("None");
    }
    if let Some(distribution) = service
        .traffic_distribution
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        spec["trafficDistribution"] = json!(distribution);
    }
    let mut body = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": wanted.name,
            "namespace": canary.namespace().unwrap_or_default(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owner(canary).into_iter().collect::<Vec<_>>(),
        },
        "spec": spec,
    });
    let checksum = crate::engine::hash::safe_encode(
        &crate::engine::hash::fnv32a(body.to_string().as_bytes()).to_string(),
    );
    body["metadata"]["annotations"][CHECKSUM_ANNOTATION] = json!(checksum);
    body
}

/// The keys of `unmanaged` the live object has keep their live value.
fn keep_live(
    wanted: &mut BTreeMap<String, String>,
    unmanaged: &[String],
    live: &BTreeMap<String, String>,
) {
    for key in unmanaged {
        if let Some(value) = live.get(key) {
            wanted.insert(key.clone(), value.clone());
        }
    }
}

/// The live Service already is what `body` says.
fn up_to_date(live: &Service, body: &Value) -> bool {
    let value = serde_json::to_value(live).unwrap_or(Value::Null);
    let decided = |ports: &Value| -> Vec<Value> {
        ports
            .as_array()
            .into_iter()
            .flatten()
            .map(takeover::decided)
            .collect()
    };
    value["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        == body["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        && value["spec"]["selector"] == body["spec"]["selector"]
        && decided(&value["spec"]["ports"]) == decided(&body["spec"]["ports"])
}

impl Ctx {
    /// The apex (→ primary), `-primary` and `-canary` Services, applied only when the cache
    /// shows them different (an idle Canary makes no API request).
    pub(super) async fn ensure_services(&self, canary: &Canary) -> Result<(), Error> {
        let Some(target) = self.target(canary) else {
            return Ok(());
        };
        let Some(service) = canary.spec.service.as_ref() else {
            return Ok(());
        };
        let namespace = canary.namespace().unwrap_or_default();
        let (label, value) = selector_label(&target).ok_or_else(|| Self::no_selector(canary))?;
        let (apex, primary, canary_svc) = canary.service_names();
        let primary_value = format!("{value}-primary");
        let pod = target.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let ports = ports(service, pod);
        for (name, selector, metadata) in [
            (&apex, &primary_value, service.apex.as_ref()),
            (&primary, &primary_value, service.primary.as_ref()),
            (&canary_svc, &value, service.canary.as_ref()),
        ] {
            let cached = self.services.get(&ObjectRef::new(name).within(&namespace));
            if let Some(user) = cached.as_ref().filter(|s| takeover::is_foreign(s, canary)) {
                let selector = json!({&label: selector});
                self.take_over(canary, user, &json!(ports), &selector)
                    .await?;
                continue;
            }
            let wanted = Wanted {
                name,
                label: &label,
                selector,
                metadata,
            };
            let body = body(canary, service, &wanted, &ports, cached.as_deref());
            if cached.as_ref().is_some_and(|live| up_to_date(live, &body)) {
                continue;
            }
            let api: Api<Service> = Api::namespaced(self.shared.client.clone(), &namespace);
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| Self::write_error(canary, "applying", "Service", name, e))?;
        }
        Ok(())
    }

    /// Replaces the ports and selector of a Service the user made ([`takeover`]), when they
    /// differ from the Canary's.
    async fn take_over(
        &self,
        canary: &Canary,
        service: &Service,
        ports: &Value,
        selector: &Value,
    ) -> Result<(), Error> {
        let Some(patch) = takeover::take_over_patch(service, ports, selector) else {
            return Ok(());
        };
        self.json_patch_service(canary, "taking over", &service.name_any(), patch)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> CanaryService {
        serde_json::from_value(spec).unwrap()
    }

    fn pod() -> PodSpec {
        serde_json::from_value(json!({"containers": [
            {"name": "podinfod", "ports": [
                {"name": "http", "containerPort": 9898},
                {"name": "http-metrics", "containerPort": 9797},
                {"containerPort": 9999}]},
            {"name": "istio-proxy", "ports": [{"name": "http-envoy-prom", "containerPort": 15090}]},
        ]}))
        .unwrap()
    }

    #[test]
    fn discovery_adds_every_other_container_port_as_flagger_names_them() {
        let s = service(json!({"port": 80, "targetPort": 9898, "portDiscovery": true}));
        let names: Vec<(Value, Value)> = ports(&s, Some(&pod()))
            .iter()
            .map(|p| (p["name"].clone(), p["targetPort"].clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                (json!("http"), json!(9898)),
                (json!("http-metrics"), json!(9797)),
                (json!("tcp-podinfod-2"), json!(9999)),
            ]
        );
        // By name: the port named like targetPort is the one left out.
        let s = service(json!({"port": 80, "targetPort": "http", "portDiscovery": true}));
        let names: Vec<Value> = ports(&s, Some(&pod()))
            .iter()
            .map(|p| p["name"].clone())
            .collect();
        assert_eq!(
            names,
            vec![
                json!("http"),
                json!("http-metrics"),
                json!("tcp-podinfod-2")
            ]
        );
        // Without portDiscovery: service.port only.
        let s = service(json!({"port": 80, "targetPort": 9898}));
        assert_eq!(ports(&s, Some(&pod())).len(), 1);
    }

    #[test]
    fn the_body_carries_metadata_headless_and_traffic_distribution() {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "n", "uid": "u"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"}},
        }))
        .unwrap();
        let s = service(
            json!({"port": 80, "headless": true, "trafficDistribution": "PreferClose",
            "apex": {"labels": {"team": "a", "app": "x"}, "annotations": {"note": "n"}},
            "unmanagedMetadata": {"annotations": ["note"]}}),
        );
        let wanted = Wanted {
            name: "podinfo",
            label: "app",
            selector: "podinfo-primary",
            metadata: s.apex.as_ref(),
        };
        let live: Service = serde_json::from_value(json!({"metadata": {"name": "podinfo",
            "annotations": {"note": "set-elsewhere"}}}))
        .unwrap();
        let body = body(&canary, &s, &wanted, &ports(&s, None), Some(&live));
        let meta = &body["metadata"];
        assert_eq!(meta["labels"], json!({"app": "podinfo", "team": "a"}));
        assert_eq!(meta["annotations"]["note"], "set-elsewhere");
        assert_eq!(
            meta["annotations"]["kustomize.toolkit.fluxcd.io/reconcile"],
            "disabled"
        );
        assert_eq!(body["spec"]["clusterIP"], "None");
        assert_eq!(body["spec"]["trafficDistribution"], "PreferClose");
        let mut applied: Service = serde_json::from_value(body.clone()).unwrap();
        assert!(up_to_date(&applied, &body));
        applied
            .spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .insert("app".into(), "podinfo".into());
        assert!(
            !up_to_date(&applied, &body),
            "a changed selector is re-applied"
        );
    }
}
