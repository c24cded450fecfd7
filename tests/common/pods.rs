//! Pod helpers shared by the e2e files: setting a condition the way Argo's fixtures set their
//! readiness gate (`argoproj.io/e2e-readiness`), so the test env's kwok stage makes the pod Ready.

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::{Api, PostParams};

/// Sets condition `type_` of `pod` (as read) to `status` with UpdateStatus, as Argo's fixtures do.
pub async fn set_condition(
    pods: &Api<Pod>,
    mut pod: Pod,
    type_: &str,
    status: &str,
) -> Result<Pod, kube::Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let conditions = pod
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != type_);
    conditions.push(PodCondition {
        type_: type_.into(),
        status: status.into(),
        ..Default::default()
    });
    pods.replace_status(&name, &PostParams::default(), &pod)
        .await
}
