//! Whether an aborted update is reverted in Git, and what the revert changes.
//!
//! A Rollout annotated `sluice.dev/git-revert: <secret>[:<path>]` opts in: when an update is
//! aborted (a failed analysis, `kubectl argo rollouts abort`, a progress deadline), the images of
//! the aborted pod template are set back to the stable ReplicaSet's in the file Git declares the
//! Rollout in, so the next sync does not deploy the bad version again. `<secret>` names the
//! Secret (in the Rollout's namespace) with the push credentials (`username` / `password`, as
//! Flux's); `<path>`, relative to the repository's root, the file — by default the file under the
//! Flux Kustomization's `spec.path` that declares a Rollout of this name.
//!
//! Decides only; the controller (`controller::git_revert`) finds the repository, pushes and
//! records the result as the [`CONDITION`] condition, whose message names the aborted pod
//! template so one abort is never pushed twice. Must never do I/O or read the clock.

use crate::api::argo::rollout::{RolloutCondition, RolloutStatus};

/// The opt-in annotation.
pub const ANNOTATION: &str = "sluice.dev/git-revert";

/// The status condition recording a revert (True: pushed or already in Git; False: failed).
pub const CONDITION: &str = "GitReverted";

/// The annotation's value, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The Secret holding the push credentials.
    pub secret: String,
    /// The file declaring the Rollout, relative to the repository's root, when given.
    pub path: Option<String>,
}

/// One container whose image the revert sets back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageChange {
    pub container: String,
    /// The aborted template's image (what Git declares now).
    pub from: String,
    /// The stable ReplicaSet's image.
    pub to: String,
}

/// The action "revert in Git": what to change, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRevert {
    pub target: Target,
    /// The aborted pod template's hash (named in the recording condition).
    pub aborted_hash: String,
    pub images: Vec<ImageChange>,
    /// Why: the abort's message (it names the failed analysis).
    pub reason: String,
}

/// Why an annotation cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error(
        "annotation {ANNOTATION} must be `<secret>` or `<secret>:<path>` (a Secret name with the push credentials, then the file's path in the repository): got {0:?}"
    )]
    Malformed(String),
}

/// Parses `<secret>[:<path>]`.
pub fn parse(value: &str) -> Result<Target, AnnotationError> {
    let malformed = || AnnotationError::Malformed(value.to_string());
    let (secret, path) = match value.trim().split_once(':') {
        Some((secret, path)) => (secret.trim(), Some(path.trim())),
        None => (value.trim(), None),
    };
    let valid_name = !secret.is_empty()
        && secret.len() <= 253
        && secret
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let valid_path = path.is_none_or(|p| {
        !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|part| part == "..")
    });
    if !valid_name || !valid_path {
        return Err(malformed());
    }
    Ok(Target {
        secret: secret.to_string(),
        path: path.map(str::to_string),
    })
}

/// The marker naming the aborted pod template in the condition's message.
pub fn marker(hash: &str) -> String {
    format!("pod template {hash}")
}

/// Whether a revert of the update to `hash` was already attempted (pushed, found in Git, or
/// failed): each abort is tried once.
pub fn recorded(status: &RolloutStatus, hash: &str) -> bool {
    let marker = marker(hash);
    status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION && c.message.contains(&marker))
}

/// The revert to do for `status` (the status just planned), if any: the Rollout opted in
/// (`annotation`), its update is aborted and not yet reverted, and its template's images differ
/// from the stable ReplicaSet's. `current` and `stable` are (container, image) of the Rollout's
/// template and of the stable ReplicaSet's (`None`: not observed).
pub fn plan(
    annotation: Option<&str>,
    status: &RolloutStatus,
    current: &[(String, String)],
    stable: Option<&[(String, String)]>,
) -> Option<Result<GitRevert, AnnotationError>> {
    let annotation = annotation?;
    let aborted = status.abort
        && !status.current_pod_hash.is_empty()
        && !status.stable_rs.is_empty()
        && status.current_pod_hash != status.stable_rs;
    if !aborted || recorded(status, &status.current_pod_hash) {
        return None;
    }
    let target = match parse(annotation) {
        Ok(target) => target,
        Err(e) => return Some(Err(e)),
    };
    let images = current
        .iter()
        .filter_map(|(container, from)| {
            let (_, to) = stable?.iter().find(|(c, _)| c == container)?;
            (to != from).then(|| ImageChange {
                container: container.clone(),
                from: from.clone(),
                to: to.clone(),
            })
        })
        .collect();
    Some(Ok(GitRevert {
        target,
        aborted_hash: status.current_pod_hash.clone(),
        images,
        reason: status.message.clone(),
    }))
}

/// The condition recording the outcome of `revert` (`ok`: pushed or already in Git).
pub fn condition(
    revert_hash: &str,
    ok: bool,
    reason: &str,
    outcome: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> RolloutCondition {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    RolloutCondition {
        type_: CONDITION.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_update_time: now.clone(),
        last_transition_time: now,
        reason: reason.into(),
        message: format!("{} of the aborted {}", outcome, marker(revert_hash)),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aborted() -> RolloutStatus {
        RolloutStatus {
            abort: true,
            current_pod_hash: "bad".into(),
            stable_rs: "good".into(),
            message: "Rollout aborted update to revision 2: AnalysisRun app-bad-1 Failed".into(),
            ..Default::default()
        }
    }

    fn images(image: &str) -> Vec<(String, String)> {
        vec![
            ("app".to_string(), image.to_string()),
            ("sidecar".to_string(), "proxy:1".to_string()),
        ]
    }

    #[test]
    fn an_aborted_update_is_reverted_to_the_stable_images_once() {
        let stable = images("app:v1");
        let plan = plan(
            Some("git-creds"),
            &aborted(),
            &images("app:v2"),
            Some(&stable),
        )
        .expect("a revert")
        .expect("a valid annotation");
        assert_eq!(
            plan.images,
            [ImageChange {
                container: "app".into(),
                from: "app:v2".into(),
                to: "app:v1".into()
            }]
        );
        assert_eq!(plan.aborted_hash, "bad");
        assert!(plan.reason.contains("AnalysisRun app-bad-1 Failed"));
        assert_eq!(plan.target.secret, "git-creds");
        let mut status = aborted();
        let now = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        status
            .conditions
            .push(condition("bad", true, "Pushed", "pushed abc", now));
        assert_eq!(
            super::plan(Some("git-creds"), &status, &images("app:v2"), Some(&stable)),
            None,
            "one abort is reverted once"
        );
        status.current_pod_hash = "worse".into();
        assert!(
            super::plan(Some("git-creds"), &status, &images("app:v3"), Some(&stable)).is_some(),
            "another aborted update is reverted again"
        );
    }

    #[test]
    fn nothing_without_the_annotation_or_an_abort() {
        let stable = images("app:v1");
        assert_eq!(
            plan(None, &aborted(), &images("app:v2"), Some(&stable)),
            None
        );
        let running = RolloutStatus {
            abort: false,
            ..aborted()
        };
        assert_eq!(
            plan(Some("s"), &running, &images("app:v2"), Some(&stable)),
            None
        );
        let settled = RolloutStatus {
            stable_rs: "bad".into(),
            ..aborted()
        };
        assert_eq!(
            plan(Some("s"), &settled, &images("app:v2"), Some(&stable)),
            None
        );
    }

    #[test]
    fn the_annotation_names_a_secret_and_maybe_a_path() {
        assert_eq!(
            parse("creds:apps/web/rollout.yaml"),
            Ok(Target {
                secret: "creds".into(),
                path: Some("apps/web/rollout.yaml".into())
            })
        );
        assert_eq!(parse("creds").map(|t| t.path), Ok(None));
        for bad in [
            "",
            "Creds",
            "creds:",
            "creds:/etc/passwd",
            "creds:a/../../b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            plan(Some("BAD"), &aborted(), &[], None),
            Some(Err(_))
        ));
    }
}
