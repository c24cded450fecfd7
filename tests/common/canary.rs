//! Objects the Canary tests share.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

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
