//! Identity hashes: the pod-template hash that names ReplicaSets and the step hash that detects
//! edited steps. Pure functions of their input.

use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::api::argo::rollout::CanaryStep;

/// The characters Kubernetes uses for safe, vowel-free name suffixes (`rand.SafeEncodeString`).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits (what Go's `hash/fnv.New32a` computes).
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Kubernetes' `rand.SafeEncodeString`: maps each character onto a vowel-free alphabet.
pub fn safe_encode(s: &str) -> String {
    s.chars()
        .map(|c| ALPHANUMS[(c as usize) % ALPHANUMS.len()] as char)
        .collect()
}

/// The hash of a pod template, as used in `rollouts-pod-template-hash`.
///
/// FNV-32a over the template's canonical JSON (keys sorted), then the collision count, encoded
/// like Kubernetes does. Argo hashes a Go-specific dump of the struct instead, so values differ
/// from Argo's; the controller adopts an existing ReplicaSet whose template matches
/// (`controller::rollout::adopt`), so a Rollout migrated from Argo does not start a needless
/// update.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // serde_json::Value keeps object keys sorted, which makes the bytes canonical.
    let canonical = serde_json::to_value(template).expect("a PodTemplateSpec serializes");
    let mut bytes = serde_json::to_vec(&canonical).expect("a JSON value serializes");
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&count.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Argo's `ComputeStepHash`: FNV-32a over the JSON of the canary steps, safe-encoded.
pub fn step_hash(steps: Option<&Vec<CanaryStep>>) -> String {
    let bytes = serde_json::to_vec(&steps).expect("canary steps serialize");
    safe_encode(&fnv32a(&bytes).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv32a_matches_known_vectors() {
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn safe_encode_uses_the_kubernetes_alphabet() {
        // '0' is 48: 48 % 27 = 21 -> '4'; '9' is 57: 57 % 27 = 3 -> 'f'.
        assert_eq!(safe_encode("09"), "4f");
    }

    #[test]
    fn pod_template_hash_is_stable_and_sensitive() {
        let mut t = PodTemplateSpec::default();
        let a = pod_template_hash(&t, None);
        assert_eq!(a, pod_template_hash(&t, None));
        assert_ne!(a, pod_template_hash(&t, Some(1)));
        t.metadata = Some(Default::default());
        t.metadata.as_mut().unwrap().labels = Some([("app".to_string(), "x".to_string())].into());
        assert_ne!(a, pod_template_hash(&t, None));
    }

    #[test]
    fn step_hash_matches_go_json_of_steps() {
        // Go's json.Marshal of [{"setWeight":20},{"pause":{}}]; the same bytes give the same hash.
        let steps: Vec<CanaryStep> =
            serde_json::from_str(r#"[{"setWeight":20},{"pause":{}}]"#).unwrap();
        assert_eq!(
            step_hash(Some(&steps)),
            safe_encode(&fnv32a(br#"[{"setWeight":20},{"pause":{}}]"#).to_string())
        );
        assert_eq!(step_hash(None), safe_encode(&fnv32a(b"null").to_string()));
    }
}
