//! Ephemeral pod metadata (`canaryMetadata` / `stableMetadata`): which labels and annotations the
//! pods of each ReplicaSet should carry right now, as Argo's `reconcileEphemeralMetadata` decides.
//!
//! The canary's pods carry `canaryMetadata` while it is a canary and `stableMetadata` once it is
//! promoted; the stable's carry `stableMetadata`; every other ReplicaSet carries none. What a
//! ReplicaSet carries is read from its record annotation, so a changed or removed field is taken
//! off the pods again. Pure: it only compares and returns actions.

use crate::api::argo::rollout::{PodTemplateMetadata, RolloutSpec, RolloutStatus};
use crate::engine::{Action, ReplicaSetObservation};

/// The metadata the pods of the ReplicaSet with `hash` should carry.
pub fn desired(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    hash: &str,
) -> Option<PodTemplateMetadata> {
    let canary = spec.strategy.canary.as_ref()?;
    let metadata = if hash == status.stable_rs || status.stable_rs.is_empty() {
        canary.stable_metadata.as_ref()
    } else if hash == status.current_pod_hash {
        canary.canary_metadata.as_ref()
    } else {
        None
    };
    // Empty maps are dropped, so the record written reads back equal and nothing is rewritten.
    let non_empty = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.clone().filter(|m| !m.is_empty())
    };
    let metadata = metadata.map(|m| PodTemplateMetadata {
        labels: non_empty(&m.labels),
        annotations: non_empty(&m.annotations),
    });
    metadata.filter(|m| m.labels.is_some() || m.annotations.is_some())
}

/// Actions that bring every observed ReplicaSet to the metadata it should carry.
pub fn sync(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    replica_sets: &[ReplicaSetObservation],
) -> Vec<Action> {
    replica_sets
        .iter()
        .filter_map(|rs| {
            let want = desired(spec, status, &rs.pod_template_hash);
            (rs.ephemeral_metadata != want).then(|| Action::SetEphemeralMetadata {
                pod_template_hash: rs.pod_template_hash.clone(),
                previous: rs.ephemeral_metadata.clone(),
                desired: want,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> RolloutSpec {
        serde_json::from_value(json!({"strategy": {"canary": {
            "canaryMetadata": {"labels": {"role": "canary"}},
            "stableMetadata": {"labels": {"role": "stable"}, "annotations": {}},
        }}}))
        .unwrap()
    }

    fn labels(role: &str) -> Option<PodTemplateMetadata> {
        serde_json::from_value(json!({"labels": {"role": role}})).unwrap()
    }

    fn rs(hash: &str, metadata: Option<PodTemplateMetadata>) -> ReplicaSetObservation {
        ReplicaSetObservation {
            pod_template_hash: hash.into(),
            ephemeral_metadata: metadata,
            ..Default::default()
        }
    }

    #[test]
    fn canary_stable_and_others_get_their_own_metadata() {
        let status = RolloutStatus {
            stable_rs: "a".into(),
            current_pod_hash: "b".into(),
            ..Default::default()
        };
        assert_eq!(desired(&spec(), &status, "a"), labels("stable"));
        assert_eq!(desired(&spec(), &status, "b"), labels("canary"));
        assert_eq!(desired(&spec(), &status, "c"), None);
        let promoted = RolloutStatus {
            stable_rs: "b".into(),
            ..status
        };
        assert_eq!(desired(&spec(), &promoted, "b"), labels("stable"));
        assert_eq!(desired(&spec(), &promoted, "a"), None);
    }

    #[test]
    fn only_replica_sets_carrying_something_else_are_changed() {
        let status = RolloutStatus {
            stable_rs: "a".into(),
            current_pod_hash: "a".into(),
            ..Default::default()
        };
        let sets = [
            rs("a", labels("stable")),
            rs("old", labels("canary")),
            rs("bare", None),
        ];
        assert_eq!(
            sync(&spec(), &status, &sets),
            vec![Action::SetEphemeralMetadata {
                pod_template_hash: "old".into(),
                previous: labels("canary"),
                desired: None,
            }]
        );
    }
}
