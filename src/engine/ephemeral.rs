//! Ephemeral pod metadata (`canaryMetadata` / `stableMetadata`, blue-green's `previewMetadata` /
//! `activeMetadata`): which labels and annotations the pods of each ReplicaSet should carry right
//! now, as Argo's `reconcileEphemeralMetadata` decides.
//!
//! The new ReplicaSet's pods carry `canaryMetadata` (`previewMetadata`) until it is promoted and
//! `stableMetadata` (`activeMetadata`) from then on; the stable's carry `stableMetadata`
//! (`activeMetadata`); every other ReplicaSet carries none. What a
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
    let (stable, new) = match (&spec.strategy.canary, &spec.strategy.blue_green) {
        (Some(canary), _) => (&canary.stable_metadata, &canary.canary_metadata),
        (None, Some(blue_green)) => (&blue_green.active_metadata, &blue_green.preview_metadata),
        (None, None) => return None,
    };
    let metadata = if hash == status.stable_rs || status.stable_rs.is_empty() {
        stable.as_ref()
    } else if hash == status.current_pod_hash {
        new.as_ref()
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
    fn blue_green_preview_then_active() {
        let spec: RolloutSpec = serde_json::from_value(json!({"strategy": {"blueGreen": {
            "activeService": "web",
            "previewMetadata": {"labels": {"role": "preview"}},
            "activeMetadata": {"labels": {"role": "active"}},
        }}}))
        .unwrap();
        let status = RolloutStatus {
            stable_rs: "a".into(),
            current_pod_hash: "b".into(),
            ..Default::default()
        };
        assert_eq!(desired(&spec, &status, "a"), labels("active"));
        assert_eq!(desired(&spec, &status, "b"), labels("preview"));
        let promoted = RolloutStatus {
            stable_rs: "b".into(),
            ..status
        };
        assert_eq!(desired(&spec, &promoted, "b"), labels("active"));
        assert_eq!(desired(&spec, &promoted, "a"), None);
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
