//! Flagger's `-include-label-prefix`, spelled as Flagger's Deployment passes it (one dash): the
//! generated `-primary` Deployment carries only the target's labels with a listed prefix (and
//! its selector label), never Flux's.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::controller::ControllerProcess;
use common::eventually;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice::api::flagger::canary::Canary;

#[tokio::test]
async fn the_primary_gets_only_the_target_labels_with_an_included_prefix() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("label-prefix").await;
    let ctl =
        ControllerProcess::start_with(&env, &ns.name, &["-include-label-prefix=team.,app"]).await;
    let mut target = common::canary::target("podinfo", 1, "podinfo:1", 9898);
    target.metadata.labels = Some(
        [
            ("app", "podinfo"),
            ("team.example.com/owner", "a"),
            ("kustomize.toolkit.fluxcd.io/name", "apps"),
            ("version", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &target)
        .await
        .expect("creating the target");
    let canary: Canary = serde_json::from_value(common::canary::kubernetes(
        "podinfo",
        None,
        json!({"interval": "1s", "threshold": 2, "iterations": 2}),
    ))
    .expect("Canary JSON");
    Api::<Canary>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &canary)
        .await
        .expect("creating the Canary");
    let primary = eventually(Duration::from_secs(60), "podinfo-primary", || async {
        deployments.get_opt("podinfo-primary").await.ok()?
    })
    .await;
    let labels: BTreeMap<String, String> = primary.metadata.labels.unwrap_or_default();
    let want: BTreeMap<String, String> =
        [("app", "podinfo-primary"), ("team.example.com/owner", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(labels, want, "controller log:\n{}", ctl.log_end());
}
