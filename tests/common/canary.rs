//! Objects the Canary tests share.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

/// A Canary's target: Deployment `name` (its `app` label too) with `replicas` pods of one
/// container `podinfo` running `image` and serving on `port` (named `http`).
pub fn target(name: &str, replicas: i32, image: &str, port: u16) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "podinfo", "image": image,
                    "ports": [{"containerPort": port, "name": "http"}]}]},
            },
        },
    }))
    .expect("target Deployment JSON")
}

/// A Canary of the `kubernetes` provider on Deployment `name` (Service port 80 → 9898) with
/// `analysis`, and `progressDeadlineSeconds` when given.
pub fn kubernetes(name: &str, deadline: Option<i32>, analysis: Value) -> Value {
    let mut canary = json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "service": {"port": 80, "targetPort": 9898},
            "analysis": analysis,
        },
    });
    if let Some(seconds) = deadline {
        canary["spec"]["progressDeadlineSeconds"] = json!(seconds);
    }
    canary
}
