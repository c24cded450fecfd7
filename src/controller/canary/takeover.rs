//! Services the user made before the Canary (Flagger's `test/kubernetes/test-deployment.sh`
//! pre-creates the apex): taken over as Flagger's `reconcileService` does, and given back.
//!
//! A Service of the three names (apex, `-primary`, `-canary`) that exists without the Canary's
//! owner reference is the user's. Its `spec.ports` and `spec.selector` are *replaced* by the
//! Canary's (a JSON patch: server-side apply would merge the port lists, and two ports named
//! `http` are refused), Flux's and Helm's no-drift annotations are added as Flagger adds them
//! (else Flux would put the user's ports and selector back), its type, labels, other
//! annotations and owners are left as they are, and no owner reference is added (deleting the
//! Canary never deletes the user's Service). The values it had before the first take-over, and
//! which annotations were added, are recorded in [`ORIGINAL_ANNOTATION`] on the Service;
//! `revertOnDeletion` puts them back and drops the added annotations and the record, so nothing
//! of Sluice's is left on it (Flagger restores from kubectl's last-applied annotation, or points
//! the apex at the target).
//!
//! This module decides only the patches; it never creates or deletes a Service and never
//! touches a field other than the ports, the selector, the no-drift annotations and its own.

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::flagger::canary::Canary;

/// The ports and selector a taken-over Service had before Sluice first replaced them.
pub const ORIGINAL_ANNOTATION: &str = "sluice.dev/original-service";

/// What [`ORIGINAL_ANNOTATION`] holds.
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
struct Original {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selector: Option<Value>,
    /// The no-drift annotations the take-over added (the Service did not have them).
    #[serde(
        default,
        rename = "addedAnnotations",
        skip_serializing_if = "Vec::is_empty"
    )]
    added_annotations: Vec<String>,
}

/// The Service exists and is not owned by this Canary (by uid): the user's.
pub(super) fn is_foreign(service: &Service, canary: &Canary) -> bool {
    let uid = canary.uid().unwrap_or_default();
    !service.owner_references().iter().any(|o| o.uid == uid)
}

/// The fields of a port the Canary decides (the apiserver adds `nodePort` to some types).
pub(super) fn decided(port: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in ["name", "port", "protocol", "targetPort", "appProtocol"] {
        if let Some(v) = port.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

fn escaped(annotation: &str) -> String {
    annotation.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch that takes `service` over with `ports` and `selector`, or `None` when it has
/// them already (and its original is recorded).
pub(super) fn take_over_patch(service: &Service, ports: &Value, selector: &Value) -> Option<Value> {
    let live = serde_json::to_value(service).unwrap_or(Value::Null);
    let live_ports: Vec<Value> = live["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(decided)
        .collect();
    let wanted: Vec<Value> = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(decided)
        .collect();
    let recorded = service.annotations().contains_key(ORIGINAL_ANNOTATION);
    if recorded && live_ports == wanted && live["spec"]["selector"] == *selector {
        return None;
    }
    let mut ops = vec![
        json!({"op": "add", "path": "/spec/ports", "value": ports}),
        json!({"op": "add", "path": "/spec/selector", "value": selector}),
    ];
    if !recorded {
        let mut added = super::generated_annotations();
        added.retain(|key, _| !service.annotations().contains_key(key));
        let original = Original {
            ports: live["spec"].get("ports").cloned(),
            selector: live["spec"].get("selector").cloned(),
            added_annotations: added.keys().cloned().collect(),
        };
        added.insert(
            ORIGINAL_ANNOTATION.to_string(),
            serde_json::to_string(&original).unwrap_or_default(),
        );
        if service.metadata.annotations.is_none() {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": added}));
        } else {
            ops.extend(added.into_iter().map(|(key, value)| {
                json!({"op": "add",
                    "path": format!("/metadata/annotations/{}", escaped(&key)), "value": value})
            }));
        }
    }
    Some(Value::Array(ops))
}

/// The JSON patch that gives a taken-over Service its recorded ports and selector back and drops
/// the record; `None` when Sluice never took it over. An unreadable record gives back nothing
/// but the annotation (a value it cannot know is never written).
pub(super) fn give_back_patch(service: &Service) -> Option<Value> {
    let text = service.annotations().get(ORIGINAL_ANNOTATION)?;
    let remove_record = json!({"op": "remove",
        "path": format!("/metadata/annotations/{}", escaped(ORIGINAL_ANNOTATION))});
    let Ok(original) = serde_json::from_str::<Original>(text) else {
        return Some(json!([remove_record]));
    };
    let spec = service.spec.clone().unwrap_or_default();
    let mut ops: Vec<Value> = original
        .added_annotations
        .iter()
        .filter(|key| service.annotations().contains_key(*key))
        .map(|key| {
            json!({"op": "remove", "path": format!("/metadata/annotations/{}", escaped(key))})
        })
        .collect();
    for (field, value, present) in [
        ("ports", original.ports, spec.ports.is_some()),
        ("selector", original.selector, spec.selector.is_some()),
    ] {
        match value {
            Some(v) => ops.push(json!({"op": "add", "path": format!("/spec/{field}"), "value": v})),
            None if present => ops.push(json!({"op": "remove", "path": format!("/spec/{field}")})),
            None => {}
        }
    }
    ops.push(remove_record);
    Some(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_service(annotations: Option<Value>) -> Service {
        let mut s = json!({
            "metadata": {"name": "podinfo", "labels": {"team": "a"}},
            "spec": {"type": "ClusterIP", "selector": {"app": "podinfo"},
                "ports": [{"name": "http", "port": 9898, "protocol": "TCP", "targetPort": "http"}]},
        });
        if let Some(a) = annotations {
            s["metadata"]["annotations"] = a;
        }
        serde_json::from_value(s).unwrap()
    }

    fn apply(service: &Service, patch: Value) -> Service {
        let mut value = serde_json::to_value(service).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_user_service_is_replaced_recorded_and_given_back_exactly() {
        let user = user_service(None);
        let ports = json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9898}]);
        let selector = json!({"app": "podinfo-primary"});
        let taken = apply(&user, take_over_patch(&user, &ports, &selector).unwrap());
        let spec = serde_json::to_value(taken.spec.clone()).unwrap();
        assert_eq!(spec["ports"], ports, "replaced, not merged");
        assert_eq!(spec["selector"], selector);
        assert_eq!(taken.labels(), user.labels());
        for key in [
            super::super::FLUX_RECONCILE_ANNOTATION,
            super::super::HELM_DRIFT_ANNOTATION,
        ] {
            assert_eq!(
                taken.annotations().get(key).map(String::as_str),
                Some("disabled"),
                "{key}, as Flagger adds it to a Service it takes over"
            );
        }
        assert!(take_over_patch(&taken, &ports, &selector).is_none());
        // A second take-over (the user re-applied) keeps the first record.
        let reapplied = {
            let mut s = user_service(taken.metadata.annotations.clone().map(|a| json!(a)));
            s.metadata.name = Some("podinfo".into());
            s
        };
        let again = apply(
            &reapplied,
            take_over_patch(&reapplied, &ports, &selector).unwrap(),
        );
        let back = apply(&again, give_back_patch(&again).unwrap());
        assert_eq!(back, user_service(Some(json!({}))));
    }

    #[test]
    fn other_annotations_stay_and_a_service_never_taken_over_is_not_given_back() {
        let user = user_service(Some(json!({"owner": "team-a",
            "helm.toolkit.fluxcd.io/driftDetection": "enabled"})));
        assert!(give_back_patch(&user).is_none());
        let ports = json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9898}]);
        let taken = apply(
            &user,
            take_over_patch(&user, &ports, &json!({"app": "x"})).unwrap(),
        );
        let back = apply(&taken, give_back_patch(&taken).unwrap());
        assert_eq!(back, user);
    }
}
