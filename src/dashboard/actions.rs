//! The dashboard's actions on a Rollout: which RBAC each needs, and running it with the CLI's
//! own patches ([`Session`]); nothing here builds a patch.

use kube::Client;

use crate::api::argo::rollout::Rollout;
use crate::cli::rollouts::{Error, Session};
use crate::engine::intent::Intent;

/// A button on a Rollout's page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Pause,
    Resume,
    Restart,
    Undo,
}

/// Every action, in the order the page shows them.
pub const ALL: [Action; 8] = [
    Action::Promote,
    Action::PromoteFull,
    Action::Abort,
    Action::Retry,
    Action::Pause,
    Action::Resume,
    Action::Restart,
    Action::Undo,
];

/// One permission an action needs on `rollouts` (the subresource `status`, or the object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub verb: &'static str,
    pub subresource: Option<&'static str>,
}

const PATCH: Needs = Needs {
    verb: "patch",
    subresource: None,
};
const PATCH_STATUS: Needs = Needs {
    verb: "patch",
    subresource: Some("status"),
};

impl Action {
    /// The path segment (`promote-full`).
    pub fn name(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::PromoteFull => "promote-full",
            Action::Abort => "abort",
            Action::Retry => "retry",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Restart => "restart",
            Action::Undo => "undo",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        ALL.into_iter().find(|a| a.name() == name)
    }

    /// What the CLI's patches for this action on `rollout` write (the same patches
    /// [`crate::engine::intent::patches`] computes for the send): the viewer must be allowed
    /// every one.
    pub fn needs(self, rollout: &Rollout) -> Vec<Needs> {
        let Some(intent) = self.intent() else {
            // restart and undo patch the spec.
            return vec![PATCH];
        };
        let (spec, status) = crate::engine::intent::patches(intent, rollout);
        let mut needs = Vec::new();
        if spec.is_some() {
            needs.push(PATCH);
        }
        if status.is_some() {
            needs.push(PATCH_STATUS);
        }
        needs
    }

    fn intent(self) -> Option<Intent> {
        match self {
            Action::Promote => Some(Intent::Promote),
            Action::PromoteFull => Some(Intent::PromoteFull),
            Action::Abort => Some(Intent::Abort),
            Action::Retry => Some(Intent::Retry),
            Action::Pause => Some(Intent::Pause),
            Action::Resume => Some(Intent::Resume),
            Action::Restart | Action::Undo => None,
        }
    }

    /// Runs the action as `sluice <verb>` would; the CLI's message on success.
    pub async fn run(self, client: Client, namespace: &str, name: &str) -> Result<String, Error> {
        let session = Session {
            client,
            namespace: namespace.to_string(),
        };
        match self.intent() {
            Some(intent) => session.intent(name, intent).await,
            None if self == Action::Restart => session.restart(name).await,
            None => session.undo(name, None).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in ALL {
            assert_eq!(Action::parse(a.name()), Some(a));
        }
        assert_eq!(Action::parse("delete"), None);
    }

    fn rollout(paused: bool) -> Rollout {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web"},
            "spec": {"paused": paused, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}},
            "status": {"currentPodHash": "b", "stableRS": "a", "currentStepIndex": 1},
        }))
        .unwrap()
    }

    #[test]
    fn each_action_needs_what_its_patches_write() {
        assert_eq!(Action::Promote.needs(&rollout(false)), [PATCH_STATUS]);
        assert_eq!(Action::Promote.needs(&rollout(true)), [PATCH, PATCH_STATUS]);
        assert_eq!(Action::Abort.needs(&rollout(false)), [PATCH_STATUS]);
        assert_eq!(Action::PromoteFull.needs(&rollout(false)), [PATCH_STATUS]);
        assert_eq!(Action::Pause.needs(&rollout(false)), [PATCH]);
        assert_eq!(Action::Resume.needs(&rollout(false)), [PATCH, PATCH_STATUS]);
        assert_eq!(Action::Restart.needs(&rollout(false)), [PATCH]);
        assert_eq!(Action::Undo.needs(&rollout(false)), [PATCH]);
    }
}
