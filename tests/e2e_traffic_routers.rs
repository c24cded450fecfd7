//! The Istio, NGINX, SMI and Traefik routers against the real cluster and the real CRDs.
//!
//! The user's objects are applied the way a GitOps agent does it (server-side apply under
//! `argocd-controller`). Each test drives the router through the weights of a canary
//! (10 / 30 / 60 / 100, observed after every step), managed routes where the router has them,
//! and an abort-shaped (30 → 0 → release) or completed (100 → release) ending. After release,
//! objects Git owns must be exactly what the manifest declares: a server-side dry-run apply of
//! the manifest under `argocd-controller` changes nothing, and no manager but
//! `argocd-controller` owns a spec field (Argo Rollouts #3854).

mod common;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use sluice::api::argo::rollout::{
    HeaderRoutingMatch, IstioDestinationRule, IstioTcpRoute, IstioTrafficRouting,
    IstioVirtualService, NginxTrafficRouting, RouteMatch, SmiTrafficRouting, StringMatch,
    TraefikTrafficRouting,
};
use sluice::traffic::istio::IstioRouter;
use sluice::traffic::nginx::{NginxRouter, canary_ingress_name};
use sluice::traffic::smi::SmiRouter;
use sluice::traffic::traefik::TraefikRouter;
use sluice::traffic::{HeaderRoute, MirrorRoute, Router, RouterContext, Weights};

use common::traffic::{api_for, assert_as_declared, gitops_apply, name_of, strip_times};

/// An inert Rollout (no controller watches the test namespace): the owner of generated objects.
async fn owner_rollout(client: &kube::Client, ns: &str, name: &str) -> String {
    let manifest = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
            "strategy": {"canary": {"canaryService": "canary", "stableService": "stable"}},
        },
    });
    let api = api_for(client, ns, &manifest).await;
    let obj: DynamicObject = serde_json::from_value(manifest).expect("Rollout object");
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .expect("creating the owner Rollout");
    created.metadata.uid.expect("uid")
}

/// Reads through the API (the Rollout controller's route caches are exercised by
/// `e2e_rollout_routers`).
fn ctx(client: &kube::Client, ns: &str, rollout: &str, uid: &str) -> RouterContext {
    RouterContext::direct(client.clone(), ns, rollout, uid)
}

fn weights(canary: i32, max_weight: i32) -> Weights {
    Weights {
        canary,
        max_weight,
        canary_service: "canary".into(),
        stable_service: "stable".into(),
        canary_hash: "6d4f8c9b7".into(),
        stable_hash: "5c7d9e8f1".into(),
        additional: Vec::new(),
    }
}

async fn step(router: &dyn Router, ctx: &RouterContext, w: &Weights) {
    router
        .set_weight(ctx, w)
        .await
        .unwrap_or_else(|e| panic!("{} set_weight {}: {e}", router.name(), w.canary));
    let observed = router
        .observe(ctx, w)
        .await
        .unwrap_or_else(|e| panic!("{} observe: {e}", router.name()));
    assert_eq!(
        observed.canary,
        Some(w.canary),
        "{} observed {observed:?}",
        router.name()
    );
}

async fn get(api: &Api<DynamicObject>, name: &str) -> Value {
    api.get(name).await.expect("get").data["spec"].clone()
}

fn http_names(spec: &Value) -> Vec<String> {
    spec["http"]
        .as_array()
        .expect("spec.http")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect()
}

// === Istio ===

fn istio_vs(name: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": name, "labels": {"team": "payments"}},
        "spec": {
            "hosts": ["app"],
            "http": [
                {"name": "primary", "retries": {"attempts": 3, "perTryTimeout": "2s"}, "route": [
                    {"destination": {"host": "stable", "port": {"number": 80}}, "weight": 100},
                    {"destination": {"host": "canary", "port": {"number": 80}}, "weight": 0},
                ]},
                {"name": "static", "match": [{"uri": {"prefix": "/static"}}],
                 "route": [{"destination": {"host": "cdn"}}]},
            ],
            "tcp": [
                {"match": [{"port": 5432}], "route": [
                    {"destination": {"host": "stable", "port": {"number": 5432}}, "weight": 100},
                    {"destination": {"host": "canary", "port": {"number": 5432}}, "weight": 0},
                ]},
            ],
        },
    })
}

fn istio_config(vs: &[&str]) -> IstioTrafficRouting {
    IstioTrafficRouting {
        virtual_services: Some(
            vs.iter()
                .map(|n| IstioVirtualService {
                    name: n.to_string(),
                    routes: Some(vec!["primary".into()]),
                    tcp_routes: Some(vec![IstioTcpRoute { port: Some(5432) }]),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

fn header_route() -> HeaderRoute {
    HeaderRoute {
        name: "header-route".into(),
        matches: vec![HeaderRoutingMatch {
            header_name: "x-canary".into(),
            header_value: StringMatch {
                exact: Some("yes".into()),
                ..Default::default()
            },
        }],
    }
}

fn mirror_route() -> MirrorRoute {
    MirrorRoute {
        name: "mirror-route".into(),
        matches: vec![RouteMatch {
            path: Some(StringMatch {
                prefix: Some("/api".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        percentage: Some(50),
    }
}

fn dest_weights(route: &Value) -> Vec<(String, i64)> {
    route["route"]
        .as_array()
        .expect("route destinations")
        .iter()
        .map(|d| {
            (
                d["destination"]["host"].as_str().unwrap_or("").to_string(),
                d["weight"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn istio_host_split_with_header_and_mirror_routes_completes() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("istio-host").await;
    let client = &env.client;
    let manifests = [istio_vs("app-a"), istio_vs("app-b")];
    let mut originals = Vec::new();
    for m in &manifests {
        originals.push(gitops_apply(client, &ns.name, m).await);
    }
    let router = IstioRouter::new(
        &istio_config(&["app-a", "app-b"]),
        vec!["header-route".into(), "mirror-route".into()],
    )
    .expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    let api = api_for(client, &ns.name, &manifests[0]).await;

    step(&router, &ctx, &weights(10, 100)).await;
    let spec = get(&api, "app-a").await;
    assert_eq!(
        dest_weights(&spec["http"][0]),
        [("stable".into(), 90), ("canary".into(), 10)]
    );
    assert_eq!(dest_weights(&spec["tcp"][0])[1], ("canary".into(), 10));
    assert_eq!(
        spec["http"][0]["retries"],
        manifests[0]["spec"]["http"][0]["retries"]
    );

    router
        .set_header_route(&ctx, &weights(10, 100), &header_route())
        .await
        .expect("set header route");
    let spec = get(&api, "app-b").await;
    assert_eq!(http_names(&spec), ["header-route", "primary", "static"]);
    assert_eq!(
        spec["http"][0]["match"],
        json!([{"headers": {"x-canary": {"exact": "yes"}}}])
    );
    assert_eq!(
        spec["http"][0]["route"],
        json!([{"destination": {"host": "canary", "port": {"number": 80}}, "weight": 100}])
    );

    step(&router, &ctx, &weights(30, 100)).await;
    router
        .set_mirror_route(&ctx, &weights(30, 100), &mirror_route())
        .await
        .expect("set mirror route");
    let spec = get(&api, "app-a").await;
    assert_eq!(
        http_names(&spec),
        ["header-route", "mirror-route", "primary", "static"],
        "managed routes first, in managedRoutes order"
    );
    assert_eq!(
        spec["http"][1]["mirror"],
        json!({"host": "canary", "port": {"number": 80}})
    );
    assert_eq!(spec["http"][1]["mirrorPercentage"], json!({"value": 50}));
    assert_eq!(
        spec["http"][1]["match"],
        json!([{"uri": {"prefix": "/api"}}])
    );
    let observed = router
        .observe(&ctx, &weights(30, 100))
        .await
        .expect("observe");
    assert_eq!(observed.managed_routes, ["header-route", "mirror-route"]);

    step(&router, &ctx, &weights(60, 100)).await;
    let spec = get(&api, "app-a").await;
    assert_eq!(
        dest_weights(&spec["http"][1]),
        [("stable".into(), 40), ("canary".into(), 60)],
        "the mirror route follows the split"
    );

    router
        .remove_managed_routes(&ctx)
        .await
        .expect("remove managed routes");
    let spec = get(&api, "app-b").await;
    assert_eq!(http_names(&spec), ["primary", "static"]);
    let observed = router
        .observe(&ctx, &weights(60, 100))
        .await
        .expect("observe");
    assert!(observed.managed_routes.is_empty());

    step(&router, &ctx, &weights(100, 100)).await;
    // Completed: stable is now the new version; weights end as declared (stable 100).
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    for (m, o) in manifests.iter().zip(&originals) {
        assert_as_declared(client, &ns.name, m, o).await;
    }
    let spec = get(&api, "app-a").await;
    assert_eq!(
        dest_weights(&spec["http"][0]),
        [("stable".into(), 100), ("canary".into(), 0)]
    );
    // Release is idempotent.
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release again");
}

#[tokio::test]
async fn istio_abort_with_routes_left_in_place_releases_everything() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("istio-abort").await;
    let client = &env.client;
    let manifest = istio_vs("app");
    let original = gitops_apply(client, &ns.name, &manifest).await;
    let router = IstioRouter::new(
        &istio_config(&["app"]),
        vec!["mirror-route".into(), "header-route".into()],
    )
    .expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    router
        .set_header_route(&ctx, &weights(0, 100), &header_route())
        .await
        .expect("header route");
    step(&router, &ctx, &weights(30, 100)).await;
    router
        .set_mirror_route(&ctx, &weights(30, 100), &mirror_route())
        .await
        .expect("mirror route");
    let api = api_for(client, &ns.name, &manifest).await;
    assert_eq!(
        http_names(&get(&api, "app").await),
        ["mirror-route", "header-route", "primary", "static"]
    );
    // Abort: back to 0 (the manifest's own value), then release with the routes still there.
    step(&router, &ctx, &weights(0, 100)).await;
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    assert_as_declared(client, &ns.name, &manifest, &original).await;
}

#[tokio::test]
async fn istio_subset_split_labels_destination_rule_subsets() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("istio-subset").await;
    let client = &env.client;
    let dr = json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": "app"},
        "spec": {
            "host": "app",
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}},
            "subsets": [
                {"name": "canary", "labels": {"app": "app"}},
                {"name": "stable", "labels": {"app": "app"}},
            ],
        },
    });
    let vs = json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "app"},
        "spec": {
            "hosts": ["app"],
            "http": [{"route": [
                {"destination": {"host": "app", "subset": "stable"}, "weight": 100},
                {"destination": {"host": "app", "subset": "canary"}, "weight": 0},
            ]}],
        },
    });
    let dr_original = gitops_apply(client, &ns.name, &dr).await;
    let vs_original = gitops_apply(client, &ns.name, &vs).await;
    let config = IstioTrafficRouting {
        virtual_service: Some(IstioVirtualService {
            name: "app".into(),
            ..Default::default()
        }),
        destination_rule: Some(IstioDestinationRule {
            name: "app".into(),
            canary_subset_name: "canary".into(),
            stable_subset_name: "stable".into(),
            additional_subset_names: None,
        }),
        ..Default::default()
    };
    let router = IstioRouter::new(&config, vec!["header-route".into()]).expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    let dr_api = api_for(client, &ns.name, &dr).await;
    for w in [10, 30, 60, 100] {
        step(&router, &ctx, &weights(w, 100)).await;
        let subsets = get(&dr_api, "app").await["subsets"].clone();
        assert_eq!(
            subsets,
            json!([
                {"name": "canary", "labels": {"app": "app", "rollouts-pod-template-hash": "6d4f8c9b7"}},
                {"name": "stable", "labels": {"app": "app", "rollouts-pod-template-hash": "5c7d9e8f1"}},
            ])
        );
    }
    router
        .set_header_route(&ctx, &weights(100, 100), &header_route())
        .await
        .expect("header route");
    let vs_api = api_for(client, &ns.name, &vs).await;
    let spec = get(&vs_api, "app").await;
    assert_eq!(
        spec["http"][0]["route"],
        json!([{"destination": {"host": "app", "subset": "canary"}, "weight": 100}])
    );
    // A hash the subsets do not carry is not "applied".
    let other = Weights {
        stable_hash: "other".into(),
        ..weights(100, 100)
    };
    assert_eq!(
        router.observe(&ctx, &other).await.expect("observe").canary,
        None
    );
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    assert_as_declared(client, &ns.name, &dr, &dr_original).await;
    assert_as_declared(client, &ns.name, &vs, &vs_original).await;
}

#[tokio::test]
async fn istio_hands_back_to_a_client_side_manager_even_when_values_are_unchanged() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("istio-update").await;
    let client = &env.client;
    let manifest = istio_vs("app");
    let api = api_for(client, &ns.name, &manifest).await;
    // Created with an Update (client-side apply, Helm, Argo CD without server-side apply).
    let obj: DynamicObject = serde_json::from_value(manifest.clone()).expect("object");
    let original = api
        .create(
            &PostParams {
                field_manager: Some("kubectl-client-side-apply".into()),
                ..Default::default()
            },
            &obj,
        )
        .await
        .expect("create");
    let router = IstioRouter::new(&istio_config(&["app"]), vec![]).expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    step(&router, &ctx, &weights(30, 100)).await;
    step(&router, &ctx, &weights(0, 100)).await;
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    let live = api.get("app").await.expect("get");
    assert_eq!(live.data["spec"], original.data["spec"]);
    assert_eq!(strip_times(&live), strip_times(&original));
}

// === NGINX ===

fn stable_ingress(name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": {"kubernetes.io/ingress.class": "nginx"}},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "stable", "port": {"number": 80}}}},
            ]}}],
        },
    })
}

#[tokio::test]
async fn nginx_canary_ingresses_follow_the_weights_and_go_at_release() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("nginx").await;
    let client = &env.client;
    let manifests = [
        stable_ingress("web", "web.example"),
        stable_ingress("api", "api.example"),
    ];
    let mut originals = Vec::new();
    for m in &manifests {
        originals.push(gitops_apply(client, &ns.name, m).await);
    }
    let uid = owner_rollout(client, &ns.name, "app").await;
    let config = NginxTrafficRouting {
        stable_ingresses: Some(vec!["web".into(), "api".into()]),
        additional_ingress_annotations: Some(
            [("canary-by-cookie".to_string(), "beta".to_string())].into(),
        ),
        ..Default::default()
    };
    let router = NginxRouter::new(&config).expect("router");
    let ctx = ctx(client, &ns.name, "app", &uid);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    for w in [10, 30] {
        step(&router, &ctx, &weights(w, 100)).await;
    }
    router
        .set_header_route(&ctx, &weights(30, 100), &header_route())
        .await
        .expect("header route");
    for w in [60, 100] {
        step(&router, &ctx, &weights(w, 100)).await;
    }
    for stable in ["web", "api"] {
        let canary = ingresses
            .get(&canary_ingress_name("app", stable))
            .await
            .expect("canary Ingress");
        let a = canary.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(a["nginx.ingress.kubernetes.io/canary"], "true");
        assert_eq!(a["nginx.ingress.kubernetes.io/canary-weight"], "100");
        assert_eq!(a["nginx.ingress.kubernetes.io/canary-by-cookie"], "beta");
        assert_eq!(
            a["nginx.ingress.kubernetes.io/canary-by-header"],
            "x-canary"
        );
        assert_eq!(
            a["nginx.ingress.kubernetes.io/canary-by-header-value"],
            "yes"
        );
        assert_eq!(a["kubernetes.io/ingress.class"], "nginx");
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/canary-weight-total"));
        let owner = &canary.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Rollout", uid.as_str())
        );
        let rule = &canary
            .spec
            .clone()
            .unwrap_or_default()
            .rules
            .unwrap_or_default()[0];
        let backend = rule.http.as_ref().expect("http").paths[0]
            .backend
            .service
            .clone()
            .expect("service backend");
        assert_eq!(backend.name, "canary");
    }
    let observed = router
        .observe(&ctx, &weights(100, 100))
        .await
        .expect("observe");
    assert_eq!(observed.managed_routes, ["header-route"]);
    router
        .remove_managed_routes(&ctx)
        .await
        .expect("remove routes");
    let canary = ingresses
        .get(&canary_ingress_name("app", "web"))
        .await
        .expect("canary Ingress");
    let a = canary.metadata.annotations.unwrap_or_default();
    assert!(!a.contains_key("nginx.ingress.kubernetes.io/canary-by-header"));
    assert_eq!(a["nginx.ingress.kubernetes.io/canary-weight"], "100");

    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    for stable in ["web", "api"] {
        assert!(
            ingresses
                .get_opt(&canary_ingress_name("app", stable))
                .await
                .expect("get")
                .is_none(),
            "canary Ingress for {stable} deleted at release"
        );
    }
    for (m, o) in manifests.iter().zip(&originals) {
        let live = api_for(client, &ns.name, m)
            .await
            .get(name_of(m))
            .await
            .expect("stable Ingress");
        assert_eq!(
            live.metadata.resource_version, o.metadata.resource_version,
            "the stable Ingress is never written"
        );
        assert_as_declared(client, &ns.name, m, o).await;
    }
}

#[tokio::test]
async fn nginx_abort_with_max_traffic_weight() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("nginx-abort").await;
    let client = &env.client;
    let manifest = stable_ingress("web", "web.example");
    gitops_apply(client, &ns.name, &manifest).await;
    let uid = owner_rollout(client, &ns.name, "app").await;
    let config = NginxTrafficRouting {
        stable_ingress: Some("web".into()),
        annotation_prefix: Some("custom.nginx.org".into()),
        ..Default::default()
    };
    let router = NginxRouter::new(&config).expect("router");
    let ctx = ctx(client, &ns.name, "app", &uid);
    step(&router, &ctx, &weights(300, 1000)).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let canary = ingresses
        .get(&canary_ingress_name("app", "web"))
        .await
        .expect("canary Ingress");
    let a = canary.metadata.annotations.unwrap_or_default();
    assert_eq!(a["custom.nginx.org/canary-weight"], "300");
    assert_eq!(a["custom.nginx.org/canary-weight-total"], "1000");
    step(&router, &ctx, &weights(0, 1000)).await;
    router
        .release(&ctx, &weights(0, 1000))
        .await
        .expect("release");
    assert!(
        ingresses
            .get_opt(&canary_ingress_name("app", "web"))
            .await
            .expect("get")
            .is_none()
    );
    // Released means no canary Ingress: NGINX sends the canary nothing.
    let observed = router
        .observe(&ctx, &weights(0, 1000))
        .await
        .expect("observe");
    assert_eq!(observed.canary, Some(0));
}

// === SMI ===

#[tokio::test]
async fn smi_traffic_split_is_created_owned_and_weighted() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("smi").await;
    let client = &env.client;
    let uid = owner_rollout(client, &ns.name, "app").await;
    let router = SmiRouter::new(&SmiTrafficRouting {
        root_service: Some("app-root".into()),
        traffic_split_name: None,
    });
    let ctx = ctx(client, &ns.name, "app", &uid);
    for w in [10, 30, 60, 100] {
        step(&router, &ctx, &weights(w, 100)).await;
    }
    let observed = router
        .observe(&ctx, &weights(100, 100))
        .await
        .expect("observe");
    let api_version = observed.detail["apiVersion"].clone();
    let (_, version) = api_version.split_once('/').expect("group/version");
    let api = api_for(
        client,
        &ns.name,
        &json!({"apiVersion": api_version, "kind": "TrafficSplit"}),
    )
    .await;
    let ts = api
        .get("app")
        .await
        .expect("TrafficSplit named after the Rollout");
    let weight = |n: i32| {
        if version == "v1alpha1" {
            json!(n.to_string())
        } else {
            json!(n)
        }
    };
    assert_eq!(
        ts.data["spec"],
        json!({"service": "app-root", "backends": [
            {"service": "canary", "weight": weight(100)},
            {"service": "stable", "weight": weight(0)},
        ]})
    );
    assert_eq!(
        ts.metadata.owner_references.unwrap_or_default()[0].uid,
        uid,
        "owned by the Rollout"
    );
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    assert_eq!(
        router
            .observe(&ctx, &weights(0, 100))
            .await
            .expect("observe")
            .canary,
        Some(0)
    );

    // Abort-shaped, on a TrafficSplit with an explicit name.
    let named = SmiRouter::new(&SmiTrafficRouting {
        root_service: None,
        traffic_split_name: Some("split".into()),
    });
    step(&named, &ctx, &weights(30, 100)).await;
    step(&named, &ctx, &weights(0, 100)).await;
    named
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    let ts = api.get("split").await.expect("TrafficSplit 'split'");
    assert_eq!(
        ts.data["spec"]["service"], "stable",
        "rootService defaults to stable"
    );

    // A TrafficSplit the Rollout does not control is never taken over.
    let foreign = SmiRouter::new(&SmiTrafficRouting {
        root_service: None,
        traffic_split_name: Some("split".into()),
    });
    let other = RouterContext {
        rollout_uid: "someone-else".into(),
        ..ctx.clone()
    };
    let err = foreign
        .set_weight(&other, &weights(10, 100))
        .await
        .expect_err("foreign TrafficSplit");
    assert!(
        err.to_string().contains("not controlled by Rollout"),
        "{err}"
    );
}

// === Traefik ===

#[tokio::test]
async fn traefik_weighted_service_weights_and_release() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("traefik").await;
    let client = &env.client;
    let manifest = json!({
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "TraefikService",
        "metadata": {"name": "app-wrr"},
        "spec": {"weighted": {
            "services": [
                {"name": "stable", "port": 80, "weight": 100},
                {"name": "canary", "port": 80, "weight": 0},
                {"name": "legacy", "port": 8080, "weight": 1},
            ],
            "sticky": {"cookie": {"name": "lvl1"}},
        }},
    });
    let original = gitops_apply(client, &ns.name, &manifest).await;
    let router = TraefikRouter::new(&TraefikTrafficRouting {
        weighted_traefik_service_name: "app-wrr".into(),
    })
    .expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    let api = api_for(client, &ns.name, &manifest).await;
    for w in [10, 30, 60, 100] {
        step(&router, &ctx, &weights(w, 100)).await;
        let spec = get(&api, "app-wrr").await;
        assert_eq!(spec["weighted"]["services"][0]["weight"], json!(100 - w));
        assert_eq!(spec["weighted"]["services"][1]["weight"], json!(w));
        assert_eq!(
            spec["weighted"]["services"][2],
            manifest["spec"]["weighted"]["services"][2]
        );
        assert_eq!(
            spec["weighted"]["sticky"],
            manifest["spec"]["weighted"]["sticky"]
        );
    }
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    assert_as_declared(client, &ns.name, &manifest, &original).await;

    // Abort-shaped: 30, back to 0, release.
    step(&router, &ctx, &weights(30, 100)).await;
    step(&router, &ctx, &weights(0, 100)).await;
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    assert_as_declared(client, &ns.name, &manifest, &original).await;
}

#[tokio::test]
async fn istio_hands_back_to_a_manager_whose_entry_vanished() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("istio-vanished").await;
    let client = &env.client;
    // Two GitOps applications share the object; one of them owns nothing but `spec.http`, so
    // Sluice's first write removes its managedFields entry altogether.
    let hosts = json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "app"},
        "spec": {"hosts": ["app"]},
    });
    let mut routes = istio_vs("app");
    routes["spec"] = json!({"http": [routes["spec"]["http"][0].clone()]});
    routes["metadata"] = json!({"name": "app"});
    let api = api_for(client, &ns.name, &hosts).await;
    api.patch(
        "app",
        &PatchParams::apply("hosts-app"),
        &Patch::Apply(&hosts),
    )
    .await
    .expect("apply hosts");
    let original = api
        .patch(
            "app",
            &PatchParams::apply("routes-app"),
            &Patch::Apply(&routes),
        )
        .await
        .expect("apply routes");
    let config = IstioTrafficRouting {
        virtual_service: Some(IstioVirtualService {
            name: "app".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let router = IstioRouter::new(&config, vec![]).expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    step(&router, &ctx, &weights(30, 100)).await;
    let during = api.get("app").await.expect("get");
    assert!(
        !during
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|e| e.manager.as_deref() == Some("routes-app")),
        "precondition: the forced apply removed routes-app's entry"
    );
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    let live = api.get("app").await.expect("get");
    assert_eq!(live.data["spec"], original.data["spec"]);
    let mut owners: Vec<(String, Value)> = live
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.fields_v1
                    .as_ref()
                    .map(|f| f.0.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    owners.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        owners,
        [
            ("hosts-app".to_string(), json!({"f:spec": {"f:hosts": {}}})),
            ("routes-app".to_string(), json!({"f:spec": {"f:http": {}}})),
        ]
    );
    let dry = api
        .patch(
            "app",
            &PatchParams {
                dry_run: true,
                ..PatchParams::apply("routes-app")
            },
            &Patch::Apply(&routes),
        )
        .await
        .expect("dry-run apply without force: no conflict");
    assert_eq!(
        dry.metadata.resource_version,
        live.metadata.resource_version
    );
}

#[tokio::test]
async fn traefik_git_resync_mid_rollout_is_recorded_afresh() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("traefik-resync").await;
    let client = &env.client;
    let mut manifest = json!({
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "TraefikService",
        "metadata": {"name": "app-wrr"},
        "spec": {"weighted": {"services": [
            {"name": "stable", "port": 80, "weight": 100},
            {"name": "canary", "port": 80, "weight": 0},
        ]}},
    });
    gitops_apply(client, &ns.name, &manifest).await;
    let router = TraefikRouter::new(&TraefikTrafficRouting {
        weighted_traefik_service_name: "app-wrr".into(),
    })
    .expect("router");
    let ctx = ctx(client, &ns.name, "app", "uid-unused");
    step(&router, &ctx, &weights(30, 100)).await;
    // Git changes the object and self-heal applies it with force mid-rollout.
    manifest["spec"]["weighted"]["services"][0]["port"] = json!(8080);
    let resynced = gitops_apply(client, &ns.name, &manifest).await;
    step(&router, &ctx, &weights(60, 100)).await;
    let api = api_for(client, &ns.name, &manifest).await;
    assert_eq!(
        get(&api, "app-wrr").await["weighted"]["services"][0]["port"],
        json!(8080),
        "Git's change is kept under the canary weights"
    );
    router
        .release(&ctx, &weights(0, 100))
        .await
        .expect("release");
    assert_as_declared(client, &ns.name, &manifest, &resynced).await;
}
