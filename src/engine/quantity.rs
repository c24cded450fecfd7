//! Resource quantities in a Rollout's pod template (`requests` / `limits`), checked with the
//! grammar of Kubernetes' `resource.ParseQuantity`.
//!
//! Argo's CRD types them as int-or-string, so `memory: invalid` reaches the controller; the
//! apiserver then refuses every ReplicaSet made from it. Argo's tolerant decoder reads such a
//! value as zero and writes the Rollout back (a silent change to what Git holds); Sluice reports
//! `InvalidSpec` naming the field instead. Pure; never panics.

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
use regex::Regex;

/// `<sign>? <digits>[.<digits>] <suffix>?`, the suffix one of the binary SI (`Ki`…`Ei`), decimal SI
/// (`n`, `u`, `m`, `k`, `M`…`E`) or a decimal exponent (`e3`, `E-2`).
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
        .expect("the quantity pattern compiles")
});

/// Whether `text` is a quantity the apiserver accepts.
pub fn is_valid(text: &str) -> bool {
    QUANTITY.is_match(text)
}

/// `(field, value)` of every requests / limits entry of `pod` that is not a quantity; `base` is
/// the pod spec's path (`spec.template.spec`).
pub fn invalid_in_pod(base: &str, pod: &PodSpec) -> Vec<(String, String)> {
    let lists = [
        (
            "containers",
            pod.containers
                .iter()
                .map(|c| c.resources.as_ref())
                .collect::<Vec<_>>(),
        ),
        (
            "initContainers",
            pod.init_containers
                .iter()
                .flatten()
                .map(|c| c.resources.as_ref())
                .collect(),
        ),
        (
            "ephemeralContainers",
            pod.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c.resources.as_ref())
                .collect(),
        ),
    ];
    let mut invalid = Vec::new();
    for (list, resources) in lists {
        for (i, resources) in resources.into_iter().enumerate() {
            let field = format!("{base}.{list}[{i}].resources");
            invalid.extend(invalid_in(&field, resources));
        }
    }
    invalid
}

fn invalid_in(field: &str, resources: Option<&ResourceRequirements>) -> Vec<(String, String)> {
    let Some(resources) = resources else {
        return Vec::new();
    };
    [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ]
    .into_iter()
    .flat_map(|(kind, map)| map.iter().flatten().map(move |(name, q)| (kind, name, q)))
    .filter(|(_, _, q)| !is_valid(&q.0))
    .map(|(kind, name, q)| (format!("{field}.{kind}.{name}"), q.0.clone()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_parse_quantity_accepts() {
        for q in [
            "1", "0.001", "100m", "64Mi", "1Gi", "1e3", "1E-2", "+1", "-1", ".5", "5.", "2k",
            "10n", "3u",
        ] {
            assert!(is_valid(q), "{q}");
        }
    }

    #[test]
    fn refuses_what_parse_quantity_refuses() {
        for q in [
            "", "invalid", "1 Gi", "Mi", "1MB", "1.2.3", "1ki", "e3", "1e", "--1",
        ] {
            assert!(!is_valid(q), "{q}");
        }
    }

    #[test]
    fn names_the_field_of_each_bad_value() {
        let pod: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "b", "resources": {"requests": {"memory": "invalid"}, "limits": {"cpu": "x"}}},
            ],
            "ephemeralContainers": [{"name": "e", "resources": {"requests": {"memory": "bad"}}}],
        }))
        .unwrap();
        assert_eq!(
            invalid_in_pod("spec.template.spec", &pod),
            [
                (
                    "spec.template.spec.containers[1].resources.requests.memory".to_string(),
                    "invalid".to_string()
                ),
                (
                    "spec.template.spec.containers[1].resources.limits.cpu".to_string(),
                    "x".to_string()
                ),
                (
                    "spec.template.spec.ephemeralContainers[0].resources.requests.memory"
                        .to_string(),
                    "bad".to_string()
                ),
            ]
        );
    }
}
