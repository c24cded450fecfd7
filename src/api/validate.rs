//! Offline validation of a manifest against Sluice's CRDs, the way the apiserver would judge it.
//!
//! Decides, without a cluster, whether a document of one of Sluice's kinds (looked up by
//! `apiVersion` and `kind` in [`crate::api::crds`]) would be stored exactly as written: every field
//! is declared in the structural schema (nothing would be pruned), values have the declared types,
//! enums, bounds and required fields, list-map keys are unique, and the CRDs' CEL rules
//! (`x-kubernetes-validations`) hold. Used by the tests and by `sluice lint`.
//!
//! It never talks to a cluster, never mutates or defaults the document it is given, and has no
//! opinion on kinds that are not Sluice's (they pass). Not checked: `format`, and ObjectMeta
//! beyond `metadata.name`, `generateName` and `namespace`. `pattern` is matched with the CEL engine's regex (RE2 syntax, as the
//! apiserver's Go regexp).

use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};

/// One problem with one field, printed like the apiserver prints it:
/// `spec.analysis.stepWeight: Invalid value: "integer": must be between 1 and 100`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, `spec.analysis.webhooks[0].type` (map keys as `labels[app]`); empty for
    /// the document itself.
    pub path: String,
    /// What is wrong, starting with the apiserver's error type (`Invalid value`, `Required value`,
    /// `Unsupported value`, `Unknown field`, `Too many`, `Too long`, `Duplicate value`).
    pub message: String,
}

impl FieldError {
    fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// A document of a multi-document YAML stream that is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document is not YAML that maps onto JSON.
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        /// Position of the document in the stream, from 0.
        index: usize,
        /// The parser's complaint.
        #[source]
        source: serde_yaml::Error,
    },
    /// The document is one of Sluice's kinds and the apiserver would refuse or prune it.
    #[error("document {index} ({kind} {name}): {}", join(errors))]
    Invalid {
        /// Position of the document in the stream, from 0.
        index: usize,
        /// `kind` of the document.
        kind: String,
        /// `metadata.name` of the document.
        name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A served version of one of Sluice's CRDs.
struct Served {
    group: String,
    api_version: String,
    kind: String,
    schema: Value,
}

fn served() -> &'static [Served] {
    static SERVED: OnceLock<Vec<Served>> = OnceLock::new();
    SERVED.get_or_init(|| {
        let mut served = Vec::new();
        for crd in crate::api::crds() {
            for version in crd.spec.versions.iter().filter(|v| v.served) {
                let Some(schema) = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                else {
                    continue;
                };
                served.push(Served {
                    group: crd.spec.group.clone(),
                    api_version: format!("{}/{}", crd.spec.group, version.name),
                    kind: crd.spec.names.kind.clone(),
                    schema: serde_json::to_value(schema).expect("a JSONSchemaProps serializes"),
                });
            }
        }
        served
    })
}

/// Whether `apiVersion` + `kind` name one of the kinds Sluice serves.
pub fn is_sluice_kind(api_version: &str, kind: &str) -> bool {
    served()
        .iter()
        .any(|s| s.api_version == api_version && s.kind == kind)
}

/// Validates one document (already parsed to JSON). Documents whose `apiVersion` is not in one of
/// Sluice's API groups pass untouched; a Sluice group with an unknown version or kind is an error.
pub fn validate_manifest(doc: &Value) -> Result<(), Vec<FieldError>> {
    let Some(object) = doc.as_object() else {
        return Err(vec![FieldError::new(
            "",
            format!("Invalid value: {}: must be an object", type_name(doc)),
        )]);
    };
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let kind = object.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        let mut errors = Vec::new();
        for field in ["apiVersion", "kind"] {
            if object.get(field).and_then(Value::as_str).is_none() {
                errors.push(FieldError::new(field, "Required value"));
            }
        }
        return Err(errors);
    };
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let Some(served) = served()
        .iter()
        .find(|s| s.api_version == api_version && s.kind == kind)
    else {
        if served().iter().any(|s| s.group == group) {
            return Err(vec![FieldError::new(
                "kind",
                format!(
                    "Invalid value: {kind:?}: no kind {kind:?} is served by Sluice in version {api_version:?}"
                ),
            )]);
        }
        return Ok(());
    };

    let mut walker = Walker::default();
    let pruned = walker.root(&served.schema, object);
    let mut errors = walker.errors;
    // The apiserver evaluates CEL on the pruned object; a value of the wrong type would only make
    // the rules fail for the wrong reason, so they run when the structure is sound.
    if !walker.type_errors
        && let Err(cel_errors) =
            kube::core::cel::Validator::new().validate(&served.schema, &pruned, None)
    {
        for error in cel_errors.iter() {
            let found = lookup(&pruned, &error.field_path).map(type_name);
            let message = match found {
                Some(found) => format!("Invalid value: {found:?}: {}", error.message),
                None => format!("Invalid value: {}", error.message),
            };
            errors.push(FieldError::new(&error.field_path, message));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Validates every document of a multi-document YAML stream with [`validate_manifest`]; returns
/// how many documents were of Sluice's kinds. Empty documents are skipped.
pub fn validate_yaml(text: &str) -> Result<usize, Vec<ManifestError>> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(doc) => doc,
            Err(source) => {
                // The parser cannot resynchronise after an error (it would repeat it forever).
                problems.push(ManifestError::Yaml { index, source });
                break;
            }
        };
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if is_sluice_kind(api_version, kind) {
            checked += 1;
        }
        if let Err(errors) = validate_manifest(&doc) {
            problems.push(ManifestError::Invalid {
                index,
                kind: kind.to_owned(),
                name: doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                errors,
            });
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

/// What is wrong with a DNS-1123 subdomain (`label` = false) or label, in the apiserver's words;
/// `None` when it is valid.
fn dns1123_problem(text: &str, max: usize, label: bool) -> Option<String> {
    let what = if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character"
    };
    if text.len() > max {
        return Some(format!("must be no more than {max} characters"));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let parts: Vec<&str> = if label {
        vec![text]
    } else {
        text.split('.').collect()
    };
    let valid = parts.iter().all(|part| {
        part.starts_with(alnum)
            && part.ends_with(alnum)
            && part.chars().all(|c| alnum(c) || c == '-')
    });
    (!valid).then(|| what.to_string())
}

/// The JSON type name the apiserver uses in messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value at a CEL error path (`spec.analysis.webhooks[0].timeout`), if it can be found.
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = root;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let index = index.strip_suffix(']')?;
            current = match index.parse::<usize>() {
                Ok(i) => current.get(i)?,
                Err(_) => current.get(index)?,
            };
        }
    }
    Some(current)
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Walks a value against a structural schema, collecting errors and building the pruned value.
#[derive(Default)]
struct Walker {
    errors: Vec<FieldError>,
    /// A type, enum, required or bound error: the apiserver refuses the object outright.
    type_errors: bool,
}

impl Walker {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.type_errors = true;
        self.errors.push(FieldError::new(path, message));
    }

    /// `metadata.name`, `generateName` and `namespace` as the apiserver checks them for custom
    /// resources: names are DNS-1123 subdomains (`NameIsDNSSubdomain`), a namespace a DNS-1123
    /// label; `generateName` is checked without the suffix the apiserver appends.
    fn metadata_names(&mut self, metadata: &Map<String, Value>) {
        for (key, max, label) in [
            ("name", 253, false),
            ("generateName", 248, false),
            ("namespace", 63, true),
        ] {
            let path = format!("metadata.{key}");
            match metadata.get(key) {
                None => {}
                Some(Value::String(text)) => {
                    let text = if key == "generateName" {
                        text.trim_end_matches('-')
                    } else {
                        text.as_str()
                    };
                    if let Some(problem) = dns1123_problem(text, max, label)
                        && !(key == "generateName" && text.is_empty())
                    {
                        self.error(&path, format!("Invalid value: {text:?}: {problem}"));
                    }
                }
                Some(other) => self.error(
                    &path,
                    format!(
                        "Invalid value: {:?}: must be of type string",
                        type_name(other)
                    ),
                ),
            }
        }
    }

    /// The document root: `apiVersion`, `kind` and `metadata` are the apiserver's, not the schema's.
    fn root(&mut self, schema: &Value, object: &Map<String, Value>) -> Value {
        let mut rest = object.clone();
        let mut out = Map::new();
        for key in ["apiVersion", "kind"] {
            if let Some(value) = rest.remove(key) {
                out.insert(key.to_owned(), value);
            }
        }
        match rest.remove("metadata") {
            Some(Value::Object(metadata)) => {
                let named = ["name", "generateName"].iter().any(|k| {
                    metadata
                        .get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                });
                if !named {
                    self.error(
                        "metadata.name",
                        "Required value: name or generateName is required",
                    );
                }
                self.metadata_names(&metadata);
                out.insert("metadata".to_owned(), Value::Object(metadata));
            }
            Some(other) => self.error(
                "metadata",
                format!(
                    "Invalid value: {:?}: must be of type object",
                    type_name(&other)
                ),
            ),
            None => self.error(
                "metadata.name",
                "Required value: name or generateName is required",
            ),
        }
        if let Value::Object(walked) = self.walk(schema, &Value::Object(rest), "") {
            out.extend(walked);
        }
        Value::Object(out)
    }

    /// Checks `value` against `schema` at `path`; returns the value as the apiserver would store it
    /// (unknown fields and nulls dropped).
    fn walk(&mut self, schema: &Value, value: &Value, path: &str) -> Value {
        let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if value.is_null() {
            if !nullable {
                self.errors.push(FieldError::new(
                    path,
                    "Invalid value: \"null\": the field is not nullable; the apiserver would drop it",
                ));
            }
            return Value::Null;
        }
        if !self.check_type(schema, value, path) {
            return value.clone();
        }
        self.check_enum(schema, value, path);
        self.check_bounds(schema, value, path);

        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        let embedded = schema
            .get("x-kubernetes-embedded-resource")
            .and_then(Value::as_bool)
            == Some(true);
        match value {
            Value::Object(object) => {
                let properties = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                let mut out = Map::new();
                for (key, child_value) in object {
                    // The apiserver drops a null field before validating (nullable or not:
                    // `webhooks: null` in Helm output); one still required is reported below.
                    // Null list items are validated (and refused) as they are.
                    let declared = properties.is_some_and(|p| p.contains_key(key))
                        || additional.is_some_and(Value::is_object);
                    if child_value.is_null() && declared {
                        continue;
                    }
                    if let Some(property) = properties.and_then(|p| p.get(key)) {
                        let walked = self.walk(property, child_value, &child(path, key));
                        if !walked.is_null() {
                            out.insert(key.clone(), walked);
                        }
                    } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                        let walked = self.walk(additional, child_value, &format!("{path}[{key}]"));
                        if !walked.is_null() {
                            out.insert(key.clone(), walked);
                        }
                    } else if preserve
                        || additional == Some(&Value::Bool(true))
                        || (embedded && ["apiVersion", "kind", "metadata"].contains(&key.as_str()))
                    {
                        out.insert(key.clone(), child_value.clone());
                    } else {
                        self.errors.push(FieldError::new(
                            &child(path, key),
                            "Unknown field: not declared in the schema; the apiserver would prune it",
                        ));
                    }
                }
                for required in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(required) = required.as_str()
                        && object.get(required).is_none_or(Value::is_null)
                    {
                        self.error(&child(path, required), "Required value");
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => {
                self.check_list_type(schema, items, path);
                let Some(item_schema) = schema.get("items") else {
                    return value.clone();
                };
                let walked = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.walk(item_schema, item, &format!("{path}[{i}]")))
                    .collect();
                Value::Array(walked)
            }
            _ => value.clone(),
        }
    }

    fn check_type(&mut self, schema: &Value, value: &Value, path: &str) -> bool {
        if schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true)
        {
            if is_integer(value) || value.is_string() {
                return true;
            }
            self.error(
                path,
                format!(
                    "Invalid value: {:?}: must be an integer or a string",
                    type_name(value)
                ),
            );
            return false;
        }
        let Some(expected) = schema.get("type").and_then(Value::as_str) else {
            return true;
        };
        let ok = match expected {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => is_integer(value),
            "number" => value.is_number(),
            _ => true,
        };
        if !ok {
            self.error(
                path,
                format!(
                    "Invalid value: {:?}: must be of type {expected}",
                    type_name(value)
                ),
            );
        }
        ok
    }

    fn check_enum(&mut self, schema: &Value, value: &Value, path: &str) {
        let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
            return;
        };
        if !allowed.contains(value) {
            let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
            self.error(
                path,
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    supported.join(", ")
                ),
            );
        }
    }

    fn check_bounds(&mut self, schema: &Value, value: &Value, path: &str) {
        let limit = |key: &str| schema.get(key).and_then(Value::as_u64);
        match value {
            Value::String(s) => {
                let length = s.chars().count() as u64;
                if let Some(max) = limit("maxLength").filter(|max| length > *max) {
                    self.error(path, format!("Too long: may not be longer than {max}"));
                }
                if let Some(min) = limit("minLength").filter(|min| length < *min) {
                    self.error(
                        path,
                        format!("Invalid value: {value}: should be at least {min} chars long"),
                    );
                }
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                    && matches_pattern(pattern, s) == Some(false)
                {
                    self.error(
                        path,
                        format!("Invalid value: {value}: should match '{pattern}'"),
                    );
                }
            }
            Value::Array(items) => {
                let count = items.len() as u64;
                if let Some(max) = limit("maxItems").filter(|max| count > *max) {
                    self.error(
                        path,
                        format!("Too many: {count}: must have at most {max} items"),
                    );
                }
                if let Some(min) = limit("minItems").filter(|min| count < *min) {
                    self.error(
                        path,
                        format!("Invalid value: {count}: should have at least {min} items"),
                    );
                }
            }
            Value::Object(object) => {
                let count = object.len() as u64;
                if let Some(max) = limit("maxProperties").filter(|max| count > *max) {
                    self.error(
                        path,
                        format!("Too many: {count}: must have at most {max} items"),
                    );
                }
                if let Some(min) = limit("minProperties").filter(|min| count < *min) {
                    self.error(
                        path,
                        format!("Invalid value: {count}: should have at least {min} properties"),
                    );
                }
            }
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return };
                let exclusive = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                    let bad = if exclusive("exclusiveMinimum") {
                        x <= min
                    } else {
                        x < min
                    };
                    if bad {
                        let relation = if exclusive("exclusiveMinimum") {
                            "greater than"
                        } else {
                            "greater than or equal to"
                        };
                        self.error(
                            path,
                            format!("Invalid value: {value}: should be {relation} {min}"),
                        );
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                    let bad = if exclusive("exclusiveMaximum") {
                        x >= max
                    } else {
                        x > max
                    };
                    if bad {
                        let relation = if exclusive("exclusiveMaximum") {
                            "less than"
                        } else {
                            "less than or equal to"
                        };
                        self.error(
                            path,
                            format!("Invalid value: {value}: should be {relation} {max}"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// `x-kubernetes-list-type: set` items and `map` keys must be unique.
    fn check_list_type(&mut self, schema: &Value, items: &[Value], path: &str) {
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        self.error(&format!("{path}[{i}]"), format!("Duplicate value: {item}"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Vec<Value> {
                    keys.iter()
                        .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                        .collect()
                };
                for (i, item) in items.iter().enumerate() {
                    let key = key_of(item);
                    if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                        let shown: Map<String, Value> = keys
                            .iter()
                            .zip(key)
                            .map(|(k, v)| ((*k).to_owned(), v))
                            .collect();
                        self.error(
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {}", Value::Object(shown)),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether `value` matches the OpenAPI `pattern`, evaluated as CEL `matches` (RE2, like the
/// apiserver's Go regexp); `None` when the pattern cannot be written as a CEL raw string or does
/// not compile.
fn matches_pattern(pattern: &str, value: &str) -> Option<bool> {
    let literal = ["'", "\"", "'''", "\"\"\""]
        .iter()
        .find(|quote| !pattern.contains(**quote))
        .map(|quote| format!("r{quote}{pattern}{quote}"))?;
    let schema = serde_json::json!({
        "type": "string",
        "x-kubernetes-validations": [{"rule": format!("self.matches({literal})")}],
    });
    let value = Value::String(value.to_owned());
    match kube::core::cel::Validator::new().validate(&schema, &value, None) {
        Ok(()) => Some(true),
        Err(errors)
            if errors
                .iter()
                .all(|e| e.kind == kube::core::cel::ErrorKind::ValidationFailure) =>
        {
            Some(false)
        }
        Err(_) => None,
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn canary() -> Value {
        json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test", "labels": {"app": "podinfo"}},
            "spec": {
                "provider": "istio",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "service": {
                    "port": 9898,
                    "targetPort": "http",
                    "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}, "anything": {"at": ["all"]}},
                },
                "analysis": {
                    "interval": "1m",
                    "threshold": 5,
                    "maxWeight": 50,
                    "stepWeight": 10,
                    "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "1m"}],
                    "webhooks": [{"name": "load-test", "url": "http://flagger-loadtester.test/", "timeout": "5s"}],
                },
            },
        })
    }

    fn errors(doc: &Value) -> Vec<String> {
        match validate_manifest(doc) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_valid_canary_passes() {
        assert_eq!(errors(&canary()), Vec::<String>::new());
    }

    #[test]
    fn null_fields_are_dropped_as_the_apiserver_drops_them_but_null_items_and_required_are_not() {
        let mut doc = canary();
        doc["spec"]["analysis"]["webhooks"] = Value::Null;
        doc["spec"]["analysis"]["metrics"] = Value::Null;
        doc["spec"]["service"]["gateways"] = Value::Null;
        assert_eq!(errors(&doc), Vec::<String>::new());
        doc["spec"]["analysis"]["webhooks"] = json!([null]);
        assert_eq!(errors(&doc).len(), 1, "{:?}", errors(&doc));
        let mut doc = canary();
        doc["spec"]["targetRef"] = Value::Null;
        assert_eq!(errors(&doc), ["spec.targetRef: Required value"]);
    }

    #[test]
    fn other_kinds_pass_untouched() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"bogus": 1}});
        assert_eq!(validate_manifest(&deployment), Ok(()));
        assert!(!is_sluice_kind("apps/v1", "Deployment"));
        assert!(is_sluice_kind("flagger.app/v1beta1", "Canary"));
        assert!(is_sluice_kind("argoproj.io/v1alpha1", "Rollout"));
    }

    #[test]
    fn unknown_kind_or_version_in_a_sluice_group_is_an_error() {
        let mut doc = canary();
        doc["apiVersion"] = json!("flagger.app/v1alpha3");
        assert_eq!(
            errors(&doc),
            [
                r#"kind: Invalid value: "Canary": no kind "Canary" is served by Sluice in version "flagger.app/v1alpha3""#
            ]
        );
        let mut doc = canary();
        doc["kind"] = json!("Canery");
        assert_eq!(errors(&doc).len(), 1);
    }

    #[test]
    fn missing_api_version_kind_or_name_is_an_error() {
        assert_eq!(
            errors(&json!({"metadata": {"name": "x"}})),
            ["apiVersion: Required value", "kind: Required value"]
        );
        let mut doc = canary();
        doc["metadata"] = json!({"generateName": "podinfo-"});
        assert_eq!(errors(&doc), Vec::<String>::new());
        doc["metadata"] = json!({"labels": {}});
        assert_eq!(
            errors(&doc),
            ["metadata.name: Required value: name or generateName is required"]
        );
        assert_eq!(
            errors(&json!([1])),
            [r#"Invalid value: array: must be an object"#]
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let mut doc = canary();
        doc["spec"]["analysis"]["stepWeigth"] = json!(5);
        doc["spec"]["analysis"]["webhooks"][0]["headers"] = json!({"a": "b"});
        doc["spec"]["unmanagedMetadata"] = json!({"labels": ["x"]});
        assert_eq!(
            errors(&doc),
            [
                "spec.analysis.stepWeigth: Unknown field: not declared in the schema; the apiserver would prune it",
                "spec.analysis.webhooks[0].headers: Unknown field: not declared in the schema; the apiserver would prune it",
                "spec.unmanagedMetadata: Unknown field: not declared in the schema; the apiserver would prune it",
            ]
        );
    }

    #[test]
    fn unknown_fields_under_preserved_objects_are_kept() {
        let mut doc = canary();
        doc["spec"]["service"]["retries"] = json!({"attempts": 3, "retryRemoteLocalities": true});
        assert_eq!(errors(&doc), Vec::<String>::new());
    }

    #[test]
    fn types_enums_and_required_fields_are_checked() {
        let mut doc = canary();
        doc["spec"]["service"]["port"] = json!("http");
        doc["spec"]["service"]["targetPort"] = json!(true);
        doc["spec"]["analysis"]["webhooks"][0]["type"] = json!("pre-promotion");
        doc["spec"]["analysis"]["metrics"][0]
            .as_object_mut()
            .unwrap()
            .remove("name");
        doc["spec"]["targetRef"]["name"] = Value::Null;
        let found = errors(&doc);
        assert!(
            found.contains(
                &r#"spec.service.port: Invalid value: "string": must be of type integer"#
                    .to_owned()
            ),
            "{found:#?}"
        );
        assert!(found.contains(&r#"spec.service.targetPort: Invalid value: "boolean": must be an integer or a string"#.to_owned()), "{found:#?}");
        assert!(found.iter().any(|e| e.starts_with(r#"spec.analysis.webhooks[0].type: Unsupported value: "pre-promotion": supported values: "", "confirm-rollout""#)), "{found:#?}");
        assert!(
            found.contains(&"spec.analysis.metrics[0].name: Required value".to_owned()),
            "{found:#?}"
        );
        assert!(
            found.contains(&"spec.targetRef.name: Required value".to_owned()),
            "{found:#?}"
        );
        // The apiserver drops the null before validating: only "Required value" is said.
        assert!(
            !found
                .iter()
                .any(|e| e.starts_with("spec.targetRef.name: Invalid value: \"null\"")),
            "{found:#?}"
        );
    }

    #[test]
    fn whole_floats_count_as_integers() {
        let mut doc = canary();
        doc["spec"]["service"]["port"] = json!(9898.0);
        assert_eq!(errors(&doc), Vec::<String>::new());
    }

    #[test]
    fn cel_rules_are_reported_like_the_apiserver() {
        let mut doc = canary();
        doc["spec"]["analysis"]["stepWeight"] = json!(0);
        assert_eq!(
            errors(&doc),
            [r#"spec.analysis.stepWeight: Invalid value: "integer": must be between 1 and 100"#]
        );

        let mut doc = canary();
        doc["spec"]["analysis"]["metrics"][0]["thresholdRange"] = json!({"min": 10, "max": 1});
        assert_eq!(
            errors(&doc),
            [
                r#"spec.analysis.metrics[0].thresholdRange: Invalid value: "object": min must not exceed max"#
            ]
        );
    }

    #[test]
    fn cel_rules_on_the_spec_root_are_checked() {
        let doc = json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "AlertProvider",
            "metadata": {"name": "on-call"},
            "spec": {"type": "slack", "channel": "on-call"},
        });
        assert_eq!(
            errors(&doc),
            [r#"spec: Invalid value: "object": one of address or secretRef is required"#]
        );
    }

    #[test]
    fn bounds_are_checked() {
        let mut doc = canary();
        let hook = doc["spec"]["analysis"]["webhooks"][0].clone();
        doc["spec"]["analysis"]["webhooks"] = Value::Array(vec![hook; 65]);
        doc["spec"]["analysis"]["interval"] = json!(format!("{}s", "1".repeat(70)));
        let found = errors(&doc);
        assert!(
            found.contains(
                &"spec.analysis.webhooks: Too many: 65: must have at most 64 items".to_owned()
            ),
            "{found:#?}"
        );
        assert!(
            found.contains(
                &"spec.analysis.interval: Too long: may not be longer than 64".to_owned()
            ),
            "{found:#?}"
        );
    }

    #[test]
    fn list_map_keys_must_be_unique() {
        let mut doc = canary();
        let condition = json!({"type": "Promoted", "status": "True", "reason": "Succeeded"});
        doc["status"] = json!({"phase": "Succeeded", "conditions": [condition.clone(), condition]});
        assert_eq!(
            errors(&doc),
            [r#"status.conditions[1]: Duplicate value: {"type":"Promoted"}"#]
        );
    }

    #[test]
    fn type_errors_stop_cel_from_running() {
        let mut doc = canary();
        doc["spec"]["analysis"]["stepWeight"] = json!("ten");
        assert_eq!(
            errors(&doc),
            [r#"spec.analysis.stepWeight: Invalid value: "string": must be of type integer"#]
        );
    }

    #[test]
    fn a_yaml_stream_is_checked_document_by_document() {
        let stream = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
spec: {}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: latency
spec:
  provider:
    type: prometheus
    address: http://prometheus:9090
  query: "1"
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: broken
spec:
  provider:
    type: statsd
  query: "1"
---
"#;
        let problems = validate_yaml(stream).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            r#"document 2 (MetricTemplate broken): spec.provider.type: Unsupported value: "statsd": supported values: "prometheus", "influxdb", "datadog", "externalmetrics", "stackdriver", "cloudwatch", "newrelic", "graphite", "dynatrace", "keptn", "splunk""#
        );
        assert_eq!(
            validate_yaml(&stream.replace("statsd", "datadog")).unwrap(),
            2
        );
        assert!(matches!(
            validate_yaml("a: [").unwrap_err()[0],
            ManifestError::Yaml { index: 0, .. }
        ));
    }

    #[test]
    fn patterns_are_matched() {
        let duration = r"^[0-9]+$|^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
        assert_eq!(matches_pattern(duration, "1h30m"), Some(true));
        assert_eq!(matches_pattern(duration, "30"), Some(true));
        assert_eq!(matches_pattern(duration, "ten minutes"), Some(false));
        assert_eq!(matches_pattern("^it's$", "it's"), Some(true));
        assert_eq!(
            matches_pattern(r#"^a'b"c'''d"""$"#, "x"),
            None,
            "no raw string holds it"
        );
        assert_eq!(matches_pattern("(", "x"), None, "does not compile");

        let mut walker = Walker::default();
        let schema = json!({"type": "string", "pattern": "^[a-z]+$"});
        walker.walk(&schema, &json!("abc"), "spec.x");
        walker.walk(&schema, &json!("ABC"), "spec.y");
        assert_eq!(
            walker.errors,
            [FieldError::new(
                "spec.y",
                r#"Invalid value: "ABC": should match '^[a-z]+$'"#
            )]
        );
    }

    #[test]
    fn lookup_follows_cel_paths() {
        let doc = json!({"spec": {"list": [{"a": 1}, {"b": [true]}]}});
        assert_eq!(lookup(&doc, "spec.list[1].b[0]"), Some(&json!(true)));
        assert_eq!(lookup(&doc, ""), Some(&doc));
        assert_eq!(lookup(&doc, "spec.missing"), None);
    }
}
