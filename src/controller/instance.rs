//! Argo's `--instance-id`: which Argo objects this controller handles. With an id, only those
//! labelled `argo-rollouts.argoproj.io/controller-instance-id=<id>`; without, only those without
//! that label, so two controllers (or Sluice beside Argo) can share a cluster.
//!
//! Applied to every Argo kind the controller watches (Rollouts, AnalysisRuns, AnalysisTemplates,
//! ClusterAnalysisTemplates), as Argo's informers are; AnalysisRuns a Rollout creates carry its
//! label. This module only says what is selected; it never reads or writes an object.

use kube::runtime::watcher;

/// The label Argo Rollouts segregates controller instances by.
pub const LABEL: &str = "argo-rollouts.argoproj.io/controller-instance-id";

/// The instance this controller is: `None` handles unlabelled objects only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance(Option<String>);

impl Instance {
    /// `id`, with an empty id meaning none (as Argo's flag).
    pub fn new(id: Option<String>) -> Self {
        Self(id.filter(|id| !id.is_empty()))
    }

    /// The id, if any.
    pub fn id(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The label selector of the objects this instance handles.
    pub fn selector(&self) -> String {
        match &self.0 {
            Some(id) => format!("{LABEL}={id}"),
            None => format!("!{LABEL}"),
        }
    }

    /// A watch of the Argo objects this instance handles.
    pub fn watch(&self) -> watcher::Config {
        watcher::Config::default()
            .any_semantic()
            .labels(&self.selector())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_its_own_label_or_its_absence() {
        assert_eq!(
            Instance::new(Some("a".into())).selector(),
            "argo-rollouts.argoproj.io/controller-instance-id=a"
        );
        assert_eq!(
            Instance::new(None).selector(),
            "!argo-rollouts.argoproj.io/controller-instance-id"
        );
        assert_eq!(Instance::new(Some(String::new())), Instance::new(None));
    }
}
