//! Borrowing fields of objects Git owns, and giving them back exactly (Argo Rollouts #3854).
//!
//! A router that must change an object a GitOps agent manages (an Istio VirtualService, a
//! DestinationRule, a TraefikService, an HTTPRoute) writes only the fields a canary needs, with
//! server-side apply under [`FIELD_MANAGER`] and `force`. Those fields are usually atomic lists to
//! server-side apply (`spec.http` of a VirtualService: CRDs without `x-kubernetes-list-type`), so
//! the forced apply takes the whole list away from the GitOps agent's field manager. Left like
//! that, the agent no longer sees its own field as its own (with Argo CD's
//! `managedFieldsManagers` ignore rule it then never syncs Git edits of the list again).
//!
//! What this module decides:
//! - **Before a write** ([`apply`]): for every field about to be written that Sluice does not own
//!   yet, record its current value and which managers own it (their `fieldsV1` subtree, manager,
//!   operation, apiVersion) in the annotation [`ORIGINALS_ANNOTATION`] on the object itself, in
//!   the same apply. A field Sluice already owns keeps its first record; a field some other manager
//!   took back meanwhile (Git re-synced with force) is recorded afresh. Every apply repeats all the
//!   fields Sluice owns on the object, because an apply that omits one would delete it.
//! - **At release** ([`release`]): (1) apply the recorded values under Sluice, so the object's
//!   content is again what its owners wrote; (2) in one merge patch guarded by `resourceVersion`,
//!   hand the fields back: rewrite `metadata.managedFields` with the recorded subtrees returned to
//!   their managers' entries and Sluice's entries gone, and drop the annotation. Writing
//!   `managedFields` directly is the API's documented way to edit ownership; unlike re-applying
//!   under the original manager's name it also works for managers that used `Update`
//!   (client-side `kubectl apply`, Argo CD without server-side apply, Helm) and when the restored
//!   value equals the live one, where no write would move ownership. A field that another manager
//!   owns again at release is left alone: its owner's newer value wins.
//!
//! Objects are read through the router's [`RouterContext`] (the controller's watch caches, which
//! keep the main resource's managedFields entries); every write is reported back to it, so the
//! next read never sees the object as it was before. Only the hand-back reads the object afresh,
//! and only when the cached copy shows something to give back.
//!
//! What it must never do: delete or change a field it did not record, change a field whose
//! original it does not know, or leave Sluice owning anything after a successful [`release`].
//! One object lent to two Rollouts at once (two Rollouts on one VirtualService) shares one record;
//! the first release gives the fields back.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{FIELD_MANAGER, RouterContext, TrafficError};

/// Annotation holding the [`Record`] of the fields Sluice borrowed on an object.
pub const ORIGINALS_ANNOTATION: &str = "sluice.dev/original-fields";

/// A field path, as object keys from the root (`["spec", "http"]`).
pub type FieldPath = Vec<String>;

/// What Sluice borrowed on one object, stored as JSON in [`ORIGINALS_ANNOTATION`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub fields: Vec<FieldRecord>,
}

/// One borrowed field: its value before Sluice's first write and who owned it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FieldRecord {
    pub path: FieldPath,
    /// `None` when the field did not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default)]
    pub owners: Vec<Owner>,
}

/// A managedFields entry that owned (part of) a borrowed field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub manager: String,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// The entry's `fieldsV1` subtree at the field's path (`{}` for a whole atomic list).
    pub fields: Value,
}

/// Where the object is, for error messages.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub router: &'static str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Target<'_> {
    /// A failed API call on the object.
    pub fn kube(&self, action: &'static str, e: kube::Error) -> TrafficError {
        TrafficError::Kube {
            router: self.router,
            action,
            kind: self.kind.to_string(),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            source: Box::new(e),
        }
    }
    /// A failed read of the object (through the cache).
    pub fn read(&self, e: super::cache::ReadError) -> TrafficError {
        match e {
            super::cache::ReadError::NotServed {
                api_version,
                kind,
                reason,
            } => TrafficError::NotServed {
                router: self.router,
                kind,
                api_version,
                reason,
            },
            super::cache::ReadError::Kube(e) => self.kube("get", e),
        }
    }
    /// The object exists but cannot be used as it is.
    pub fn invalid(&self, reason: String) -> TrafficError {
        TrafficError::Invalid {
            router: self.router,
            kind: self.kind.to_string(),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            reason,
        }
    }
    /// The object does not exist.
    pub fn not_found(&self) -> TrafficError {
        TrafficError::NotFound {
            router: self.router,
            kind: self.kind.to_string(),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
        }
    }
}

/// `["spec", "http"]` from `"spec.http"`-like static paths.
pub fn path(keys: &[&str]) -> FieldPath {
    keys.iter().map(|k| k.to_string()).collect()
}

/// The value at `path` in `obj`, if present (and not null).
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for key in path {
        cur = cur.get(key)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// Sets `value` at `path`, creating objects on the way.
pub fn set_at(obj: &mut Value, path: &[String], value: Value) {
    let mut cur = obj;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        cur = map.entry(key.clone()).or_insert(Value::Null);
    }
    *cur = value;
}

/// The `fieldsV1` subtree at `path` (`f:<key>` at every level).
fn fields_subtree<'a>(fields: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = fields;
    for key in path {
        cur = cur.get(format!("f:{key}"))?;
    }
    Some(cur)
}

/// Removes the subtree at `path` from `fields`, and parents left empty.
#[cfg(test)]
fn remove_fields_subtree(fields: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = fields.as_object_mut() else {
        return;
    };
    let key = format!("f:{first}");
    if rest.is_empty() {
        map.remove(&key);
    } else if let Some(child) = map.get_mut(&key) {
        remove_fields_subtree(child, rest);
        // `{}` on an intermediate map key means nothing is owned below it any more
        // (a map that is itself owned carries `.`).
        if child.as_object().is_some_and(|m| m.is_empty()) {
            map.remove(&key);
        }
    }
}

/// Merges `subtree` into `fields` at `path` (set union of owned fields).
fn insert_fields_subtree(fields: &mut Value, path: &[String], subtree: &Value) {
    let mut cur = fields;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        cur = map
            .entry(format!("f:{key}"))
            .or_insert(Value::Object(Map::new()));
    }
    union_fields(cur, subtree);
}

fn union_fields(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                union_fields(a.entry(k.clone()).or_insert(Value::Object(Map::new())), v);
            }
        }
        (into, from) => *into = from.clone(),
    }
}

fn is_sluice(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(FIELD_MANAGER)
}

/// Whether Sluice's entries own anything at or below `path`.
pub fn sluice_owns(entries: &[ManagedFieldsEntry], path: &[String]) -> bool {
    entries.iter().filter(|e| is_sluice(e)).any(|e| {
        e.fields_v1
            .as_ref()
            .and_then(|f| fields_subtree(&f.0, path))
            .is_some()
    })
}

/// The other managers that own anything at or below `path`.
pub fn owners_at(entries: &[ManagedFieldsEntry], path: &[String]) -> Vec<Owner> {
    entries
        .iter()
        .filter(|e| !is_sluice(e))
        .filter_map(|e| {
            let sub = fields_subtree(&e.fields_v1.as_ref()?.0, path)?;
            Some(Owner {
                manager: e.manager.clone().unwrap_or_default(),
                operation: e.operation.clone().unwrap_or_default(),
                api_version: e.api_version.clone(),
                subresource: e.subresource.clone().filter(|s| !s.is_empty()),
                fields: sub.clone(),
            })
        })
        .collect()
}

/// The record after writing `paths`: fields Sluice already owns keep their record; the others
/// (first write, or taken back by their owner since) are recorded from the live object.
pub fn plan_record(
    live: &Value,
    entries: &[ManagedFieldsEntry],
    previous: Option<&Record>,
    paths: &[FieldPath],
) -> Record {
    let mut fields: Vec<FieldRecord> = Vec::new();
    let mut all: Vec<&FieldPath> = paths.iter().collect();
    if let Some(prev) = previous {
        for f in &prev.fields {
            if !all.contains(&&f.path) {
                all.push(&f.path);
            }
        }
    }
    for p in all {
        let prev = previous.and_then(|r| r.fields.iter().find(|f| &f.path == p));
        if sluice_owns(entries, p) {
            if let Some(prev) = prev {
                fields.push(prev.clone());
            }
            // Owned without a record (annotation removed by hand): nothing trustworthy to keep.
            continue;
        }
        if !paths.contains(p) {
            // Recorded earlier, no longer ours and not written now: its owner has it back.
            continue;
        }
        fields.push(FieldRecord {
            path: p.clone(),
            value: value_at(live, p).cloned(),
            owners: owners_at(entries, p),
        });
    }
    Record { fields }
}

/// The record stored on `obj`, if any.
pub fn read_record(obj: &DynamicObject) -> Result<Option<Record>, String> {
    let Some(text) = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ORIGINALS_ANNOTATION))
    else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("annotation {ORIGINALS_ANNOTATION} is not a Sluice record: {e}"))
}

/// managedFields after handing the recorded fields back: Sluice's entries removed, each owner's
/// subtree merged back into its entry (same manager, operation and subresource), or a new entry.
pub fn hand_back(entries: &[ManagedFieldsEntry], record: &Record) -> Vec<ManagedFieldsEntry> {
    let mut out: Vec<ManagedFieldsEntry> =
        entries.iter().filter(|e| !is_sluice(e)).cloned().collect();
    for field in &record.fields {
        for owner in &field.owners {
            let existing = out.iter_mut().find(|e| {
                e.manager.as_deref() == Some(owner.manager.as_str())
                    && e.operation.as_deref() == Some(owner.operation.as_str())
                    && e.subresource.clone().filter(|s| !s.is_empty()) == owner.subresource
            });
            match existing {
                Some(entry) => {
                    let mut fields = entry
                        .fields_v1
                        .take()
                        .map(|f| f.0)
                        .unwrap_or_else(|| json!({}));
                    insert_fields_subtree(&mut fields, &field.path, &owner.fields);
                    entry.fields_v1 = Some(FieldsV1(fields));
                }
                None => {
                    let mut fields = json!({});
                    insert_fields_subtree(&mut fields, &field.path, &owner.fields);
                    out.push(ManagedFieldsEntry {
                        api_version: owner.api_version.clone(),
                        fields_type: Some("FieldsV1".into()),
                        fields_v1: Some(FieldsV1(fields)),
                        manager: Some(owner.manager.clone()),
                        operation: Some(owner.operation.clone()),
                        subresource: owner.subresource.clone(),
                        time: None,
                    });
                }
            }
        }
    }
    out
}

/// Drops Sluice's ownership of `path` from `entries` (for the unit tests' simulated apply).
#[cfg(test)]
fn without_path(entries: &[ManagedFieldsEntry], path: &[String]) -> Vec<ManagedFieldsEntry> {
    entries
        .iter()
        .cloned()
        .map(|mut e| {
            if let Some(f) = e.fields_v1.as_mut() {
                remove_fields_subtree(&mut f.0, path);
            }
            e
        })
        .collect()
}

/// The server-side apply body: the object's identity, the record annotation, and `fields`.
fn apply_body(
    obj: &DynamicObject,
    record: &Record,
    fields: &[(FieldPath, Option<Value>)],
) -> Value {
    let types = obj.types.clone().unwrap_or_default();
    let mut body = json!({
        "apiVersion": types.api_version,
        "kind": types.kind,
        "metadata": {
            "name": obj.metadata.name,
            "annotations": {
                ORIGINALS_ANNOTATION: serde_json::to_string(record).unwrap_or_default(),
            },
        },
    });
    for (p, v) in fields {
        if let Some(v) = v {
            set_at(&mut body, p, v.clone());
        }
    }
    body
}

/// Writes `desired` (path → value) on the live object `live` under Sluice with force, recording
/// the originals first (see the module doc). Skips the write when nothing would change.
/// Returns the object as stored.
pub async fn apply(
    ctx: &RouterContext,
    ar: &ApiResource,
    target: &Target<'_>,
    live: &DynamicObject,
    desired: &[(FieldPath, Value)],
) -> Result<DynamicObject, TrafficError> {
    let live_json = serde_json::to_value(live).map_err(|e| target.invalid(e.to_string()))?;
    let entries = live.metadata.managed_fields.clone().unwrap_or_default();
    let previous = read_record(live).map_err(|e| target.invalid(e))?;
    let paths: Vec<FieldPath> = desired.iter().map(|(p, _)| p.clone()).collect();
    let unchanged = desired
        .iter()
        .all(|(p, v)| value_at(&live_json, p) == Some(v));
    if unchanged {
        // Nothing to write: never take a field (or refresh the record) for nothing.
        return Ok(live.clone());
    }
    let record = plan_record(&live_json, &entries, previous.as_ref(), &paths);
    // Every field Sluice owns is repeated (live value), or the apply would delete it.
    let mut fields: Vec<(FieldPath, Option<Value>)> = desired
        .iter()
        .map(|(p, v)| (p.clone(), Some(v.clone())))
        .collect();
    for f in &record.fields {
        if !paths.contains(&f.path) {
            fields.push((f.path.clone(), value_at(&live_json, &f.path).cloned()));
        }
    }
    let body = apply_body(live, &record, &fields);
    let stored = ctx
        .api(ar, target.namespace)
        .patch(
            target.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| target.kube("apply", e))?;
    ctx.wrote(ar, &stored);
    Ok(stored)
}

/// Whether Sluice holds nothing of the object: no field, no record.
fn nothing_borrowed(object: &DynamicObject) -> bool {
    let entries = object
        .metadata
        .managed_fields
        .as_deref()
        .unwrap_or_default();
    !entries.iter().any(is_sluice) && read_record(object).ok().flatten().is_none()
}

/// Gives every borrowed field of the object back (see the module doc). Idempotent; a missing
/// object is fine. The cached copy says whether there is anything to give back (so a settled
/// Rollout costs no API call); the hand-back itself starts from a fresh read, because it
/// rewrites the whole managedFields list (the cache keeps only part of it).
pub async fn release(
    ctx: &RouterContext,
    ar: &ApiResource,
    target: &Target<'_>,
) -> Result<(), TrafficError> {
    match ctx
        .read(ar, target.namespace, target.name)
        .await
        .map_err(|e| target.read(e))?
    {
        Some(cached) if !nothing_borrowed(&cached) => {}
        _ => return Ok(()),
    }
    let api = ctx.api(ar, target.namespace);
    let Some(live) = api
        .get_opt(target.name)
        .await
        .map_err(|e| target.kube("get", e))?
    else {
        return Ok(());
    };
    let entries = live.metadata.managed_fields.clone().unwrap_or_default();
    if nothing_borrowed(&live) {
        return Ok(());
    }
    let Some(record) = read_record(&live).map_err(|e| target.invalid(e))? else {
        return Err(target.invalid(format!(
            "Sluice owns fields of it but the record of their original values (annotation \
             {ORIGINALS_ANNOTATION}) is gone; re-sync the object from Git, then remove Sluice's \
             managedFields entry"
        )));
    };
    let live_json = serde_json::to_value(&live).map_err(|e| target.invalid(e.to_string()))?;
    // Fields another manager took back keep that manager's value.
    let mine = Record {
        fields: record
            .fields
            .iter()
            .filter(|f| sluice_owns(&entries, &f.path))
            .cloned()
            .collect(),
    };
    // (1) The recorded values, under Sluice (an absent original is omitted, so it is removed).
    let mut current = live.clone();
    if mine
        .fields
        .iter()
        .any(|f| value_at(&live_json, &f.path) != f.value.as_ref())
    {
        let fields: Vec<(FieldPath, Option<Value>)> = mine
            .fields
            .iter()
            .map(|f| (f.path.clone(), f.value.clone()))
            .collect();
        let body = apply_body(&live, &record, &fields);
        current = api
            .patch(
                target.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| target.kube("restore the original fields of", e))?;
        ctx.wrote(ar, &current);
    }
    // (2) Ownership back to the recorded owners, Sluice's entries and annotation gone.
    let entries = current.metadata.managed_fields.clone().unwrap_or_default();
    let handed = hand_back(&entries, &mine);
    // An empty list would mean "leave managedFields alone"; `[{}]` is the API's "clear".
    let managed = if handed.is_empty() {
        json!([{}])
    } else {
        serde_json::to_value(&handed).map_err(|e| target.invalid(e.to_string()))?
    };
    let patch = json!({
        "metadata": {
            "resourceVersion": current.metadata.resource_version,
            "annotations": { ORIGINALS_ANNOTATION: null },
            "managedFields": managed,
        }
    });
    let after = api
        .patch(
            target.name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| target.kube("hand the borrowed fields back on", e))?;
    ctx.wrote(ar, &after);
    let left: BTreeMap<String, String> = after
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .filter(|e| is_sluice(e))
        .map(|e| {
            (
                e.operation.clone().unwrap_or_default(),
                e.fields_v1
                    .as_ref()
                    .map(|f| f.0.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    if !left.is_empty() {
        return Err(target.invalid(format!(
            "the apiserver kept Sluice's field ownership after the hand-back ({left:?}); retry"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn entry(manager: &str, op: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            api_version: Some("networking.istio.io/v1beta1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            manager: Some(manager.into()),
            operation: Some(op.into()),
            subresource: None,
            time: None,
        }
    }

    fn http() -> FieldPath {
        path(&["spec", "http"])
    }

    #[test]
    fn first_write_records_value_and_owners() {
        let live = json!({"spec": {"hosts": ["a"], "http": [{"route": []}]}});
        let entries = vec![entry(
            "argocd-controller",
            "Apply",
            json!({"f:spec": {"f:hosts": {}, "f:http": {}}}),
        )];
        let r = plan_record(&live, &entries, None, &[http()]);
        assert_eq!(
            r,
            Record {
                fields: vec![FieldRecord {
                    path: http(),
                    value: Some(json!([{"route": []}])),
                    owners: vec![Owner {
                        manager: "argocd-controller".into(),
                        operation: "Apply".into(),
                        api_version: Some("networking.istio.io/v1beta1".into()),
                        subresource: None,
                        fields: json!({}),
                    }],
                }]
            }
        );
    }

    #[test]
    fn later_writes_keep_the_first_record_until_git_takes_the_field_back() {
        let first = Record {
            fields: vec![FieldRecord {
                path: http(),
                value: Some(json!(["git"])),
                owners: vec![],
            }],
        };
        let live = json!({"spec": {"http": ["sluice"]}});
        let ours = vec![entry(
            FIELD_MANAGER,
            "Apply",
            json!({"f:spec": {"f:http": {}}}),
        )];
        assert_eq!(plan_record(&live, &ours, Some(&first), &[http()]), first);
        // Git re-synced with force: the live value is Git's again, recorded afresh.
        let theirs = vec![entry(
            "argocd-controller",
            "Apply",
            json!({"f:spec": {"f:http": {}}}),
        )];
        let live = json!({"spec": {"http": ["git v2"]}});
        let r = plan_record(&live, &theirs, Some(&first), &[http()]);
        assert_eq!(r.fields[0].value, Some(json!(["git v2"])));
        assert_eq!(r.fields[0].owners[0].manager, "argocd-controller");
    }

    #[test]
    fn a_recorded_field_not_written_now_stays_recorded_while_sluice_owns_it() {
        let tls = path(&["spec", "tls"]);
        let prev = Record {
            fields: vec![FieldRecord {
                path: tls.clone(),
                value: Some(json!([])),
                owners: vec![],
            }],
        };
        let ours = vec![entry(
            FIELD_MANAGER,
            "Apply",
            json!({"f:spec": {"f:tls": {}}}),
        )];
        let r = plan_record(
            &json!({"spec": {"http": []}}),
            &ours,
            Some(&prev),
            &[http()],
        );
        assert_eq!(r.fields.len(), 2);
        assert!(r.fields.iter().any(|f| f.path == tls));
    }

    #[test]
    fn hand_back_returns_subtrees_and_drops_sluice() {
        let entries = vec![
            entry(
                "argocd-controller",
                "Apply",
                json!({"f:metadata": {"f:labels": {"f:team": {}}}, "f:spec": {"f:hosts": {}}}),
            ),
            entry(
                FIELD_MANAGER,
                "Apply",
                json!({"f:metadata": {"f:annotations": {}}, "f:spec": {"f:http": {}}}),
            ),
        ];
        let record = Record {
            fields: vec![FieldRecord {
                path: http(),
                value: None,
                owners: vec![
                    Owner {
                        manager: "argocd-controller".into(),
                        operation: "Apply".into(),
                        api_version: None,
                        subresource: None,
                        fields: json!({}),
                    },
                    Owner {
                        manager: "kubectl-edit".into(),
                        operation: "Update".into(),
                        api_version: Some("networking.istio.io/v1".into()),
                        subresource: None,
                        fields: json!({}),
                    },
                ],
            }],
        };
        let out = hand_back(&entries, &record);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].fields_v1.as_ref().map(|f| f.0.clone()),
            Some(json!({
                "f:metadata": {"f:labels": {"f:team": {}}},
                "f:spec": {"f:hosts": {}, "f:http": {}}
            }))
        );
        assert_eq!(out[1].manager.as_deref(), Some("kubectl-edit"));
        assert_eq!(
            out[1].fields_v1.as_ref().map(|f| f.0.clone()),
            Some(json!({"f:spec": {"f:http": {}}}))
        );
    }

    #[test]
    fn ownership_checks_walk_f_keys() {
        let entries = vec![entry(
            FIELD_MANAGER,
            "Apply",
            json!({"f:spec": {"f:weighted": {"f:services": {}}}}),
        )];
        assert!(sluice_owns(
            &entries,
            &path(&["spec", "weighted", "services"])
        ));
        assert!(sluice_owns(&entries, &path(&["spec", "weighted"])));
        assert!(!sluice_owns(&entries, &http()));
        let stripped = without_path(&entries, &path(&["spec", "weighted", "services"]));
        assert!(!sluice_owns(&stripped, &path(&["spec", "weighted"])));
    }

    #[test]
    fn set_and_read_values() {
        let mut v = json!({});
        set_at(&mut v, &path(&["spec", "weighted", "services"]), json!([1]));
        assert_eq!(v, json!({"spec": {"weighted": {"services": [1]}}}));
        assert_eq!(
            value_at(&v, &path(&["spec", "weighted", "services"])),
            Some(&json!([1]))
        );
        assert_eq!(value_at(&v, &path(&["spec", "x"])), None);
    }
}
