//! Schema helpers shared by the wire types, and the last touches applied to every generated CRD.
//!
//! Decides how the generated OpenAPI schemas look on the wire (what is preserved, what is trimmed);
//! never changes what a field means.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::Value;

/// A free-form object kept as-is by the apiserver (`x-kubernetes-preserve-unknown-fields`).
///
/// For nested structures Sluice passes through without interpreting (for example Istio-typed
/// `retries` on a Flagger Canary), so that no documented field is pruned.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Like [`preserve_unknown_object`], but for a value that may also be null.
pub fn preserve_unknown_nullable(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Any JSON value at all (number, string, list, object), preserved as-is.
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list of standard conditions, merged by `type` under server-side apply.
pub fn conditions<T: schemars::JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<T>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Final touches on a derived CRD before it is printed or installed.
///
/// Descriptions are dropped inside embedded Kubernetes types (pod templates, job specs): they are
/// upstream's documentation, they make up most of the size, and the apiserver caps object size.
pub fn finish_crd(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("a JSONSchemaProps serializes");
            widen_quantities(&mut value);
            trim_embedded_descriptions(&mut value, false);
            *schema = serde_json::from_value::<JSONSchemaProps>(value)
                .expect("a trimmed schema is still a JSONSchemaProps");
        }
    }
}

/// The start of k8s-openapi's description of `Quantity`, which tells it from `IntOrString`.
const QUANTITY_DESCRIPTION: &str = "Quantity is a fixed-point representation";

/// Resource quantities accept what a Pod accepts: a string, an integer or any JSON number
/// (`cpu: 0.001`). k8s-openapi types them `x-kubernetes-int-or-string`, which refuses `0.001`;
/// a structural schema has no "number or string", so they are kept untyped, as Argo's CRDs
/// keep them (the apiserver checks the quantity when the ReplicaSet or Pod is created).
fn widen_quantities(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_quantity = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                && map
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.starts_with(QUANTITY_DESCRIPTION));
            if is_quantity {
                *value = serde_json::json!({ "x-kubernetes-preserve-unknown-fields": true });
                return;
            }
            map.values_mut().for_each(widen_quantities);
        }
        Value::Array(items) => items.iter_mut().for_each(widen_quantities),
        _ => {}
    }
}

/// Property names whose subtree is an embedded Kubernetes type (k8s-openapi), not Sluice's own.
const EMBEDDED: &[&str] = &["template", "job", "selector", "metadata"];

fn trim_embedded_descriptions(value: &mut Value, inside_embedded: bool) {
    match value {
        Value::Object(map) => {
            if inside_embedded {
                map.remove("description");
            }
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, prop) in props.iter_mut() {
                    let embedded = inside_embedded || EMBEDDED.contains(&name.as_str());
                    trim_embedded_descriptions(prop, embedded);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(child) = map.get_mut(key) {
                    trim_embedded_descriptions(child, inside_embedded);
                }
            }
            for key in ["allOf", "anyOf", "oneOf"] {
                if let Some(Value::Array(children)) = map.get_mut(key) {
                    for child in children {
                        trim_embedded_descriptions(child, inside_embedded);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                trim_embedded_descriptions(item, inside_embedded);
            }
        }
        _ => {}
    }
}
