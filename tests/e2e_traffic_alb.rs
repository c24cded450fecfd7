//! The ALB router driven by a real Rollout through `sluice controller`, on the real cluster.
//!
//! No AWS Load Balancer Controller runs here: the Ingress annotations are the contract, so the
//! tests read them byte for byte as that controller (and Argo Rollouts' own e2e suite) reads
//! them. The Ingress is applied the way Argo CD does it (server-side apply under
//! `argocd-controller`); the Rollout's Services are `web-stable` / `web-canary`, the rule's
//! backend `web-root` (`rootService`, port `use-annotation`).
//!
//! - `alb_canary_steps_header_route_and_abort`: the split action follows every step (20, 60,
//!   exact JSON), a header route adds its action, its conditions and a first `/*` path, and an
//!   abort sends everything back to stable: the split action stays at 0/100 (an Ingress without
//!   it has no target), every other annotation and `spec` are Git's again and Sluice's borrowing
//!   field manager owns nothing.
//! - `alb_declared_action_on_two_ingresses_is_given_back`: an action annotation the manifest
//!   declares (two Ingresses, `ingresses`, stickiness) is borrowed during the update and, after
//!   completion, each Ingress is exactly its manifest again.
//! - `alb_ping_pong_services_trade_roles_at_each_promotion`: with `pingPong` the split action
//!   names `ping` and `pong` (no stable / canary Services), the canary's Service is the one not
//!   serving stable, and each promotion hands it the stable role (`stablePingPong`), as Argo's
//!   `TestALBPingPongUpdate` expects: 100/0, 75/25, 0/100, 25/75, 100/0.
//! - `alb_experiment_step_template_weight_on_two_ingresses`: an `experiment:` step whose template
//!   has `weight: 20` after `setWeight: 10` puts the template's Service between canary and
//!   stable in both Ingresses' action (10 / 20 / 70, Argo's exact JSON), and the step's end gives
//!   its share back to stable (10 / 90), as Argo's `TestALBExperimentStep*` expect.
//! - `alb_acts_while_another_router_of_the_rollout_fails`: the Rollout's Istio VirtualService does
//!   not exist yet; the ALB action is written all the same (a failing router does not hold the
//!   others), and once the VirtualService is created both routers carry the update's weight.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use sluice::api::argo::rollout::{Rollout, RolloutPhase, RolloutStatus};
use sluice::engine::intent::{self, Intent};

use common::controller::ControllerProcess;
use common::traffic::{
    GITOPS, api_for, assert_as_declared, experiment_split_verified, first_template_status,
    gitops_apply, wait_released,
};
use common::{TestEnv, TestNamespace, eventually};

const ROLLOUT: &str = "web";
const STABLE_SVC: &str = "web-stable";
const CANARY_SVC: &str = "web-canary";
const ROOT_SVC: &str = "web-root";
const ACTION: &str = "alb.ingress.kubernetes.io/actions.web-root";
const TIMEOUT: Duration = Duration::from_secs(120);

/// The split action Argo Rollouts writes for `canary` of 100 on port 80.
fn split(canary: i32) -> String {
    format!(
        r#"{{"Type":"forward","ForwardConfig":{{"TargetGroups":[{{"ServiceName":"{CANARY_SVC}","ServicePort":"80","Weight":{canary}}},{{"ServiceName":"{STABLE_SVC}","ServicePort":"80","Weight":{}}}]}}}}"#,
        100 - canary
    )
}

fn ingress(name: &str, extra: &[(&str, &str)]) -> Value {
    let mut annotations: BTreeMap<&str, &str> = [
        ("kubernetes.io/ingress.class", "alb"),
        ("alb.ingress.kubernetes.io/scheme", "internet-facing"),
    ]
    .into();
    annotations.extend(extra.iter().copied());
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"rules": [{"host": "web.example", "http": {"paths": [
            {"path": "/*", "pathType": "ImplementationSpecific", "backend": {
                "service": {"name": ROOT_SVC, "port": {"name": "use-annotation"}}}},
            {"path": "/static", "pathType": "Prefix", "backend": {
                "service": {"name": "cdn", "port": {"number": 80}}}},
        ]}}]},
    })
}

/// The pod template; its port gives an experiment template's pods a Service.
fn template(image: &str) -> Value {
    json!({"metadata": {"labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": image,
                                    "ports": [{"containerPort": 8080}]}]}})
}

struct Harness {
    env: TestEnv,
    ns: TestNamespace,
    ctl: ControllerProcess,
    rollouts: Api<Rollout>,
}

impl Harness {
    async fn start(prefix: &str) -> Option<Harness> {
        let env = common::test_env().await?;
        let ns = env.namespace(prefix).await;
        for svc in [STABLE_SVC, CANARY_SVC, ROOT_SVC] {
            env.create(
                &ns.name,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc},
                       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
            )
            .await;
        }
        let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
        let rollouts = Api::namespaced(env.client.clone(), &ns.name);
        Some(Harness {
            env,
            ns,
            ctl,
            rollouts,
        })
    }

    /// Creates the Rollout and waits for its first revision to be Healthy.
    async fn create_rollout(&self, routing: Value, steps: Value) {
        self.create_canary(json!({
            "canaryService": CANARY_SVC, "stableService": STABLE_SVC,
            "trafficRouting": routing, "steps": steps,
        }))
        .await;
    }

    /// Creates the Rollout with canary strategy `canary` and waits for its first revision to be
    /// Healthy.
    async fn create_canary(&self, canary: Value) {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": ROLLOUT},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template("registry.invalid/web:1"),
                "strategy": {"canary": canary},
            },
        }))
        .expect("the Rollout");
        self.rollouts
            .create(&PostParams::default(), &rollout)
            .await
            .expect("creating the Rollout");
        self.wait("the first revision to be Healthy", |s| {
            !s.stable_rs.is_empty()
                && s.stable_rs == s.current_pod_hash
                && s.phase == Some(RolloutPhase::Healthy)
        })
        .await;
    }

    async fn update(&self) {
        self.update_to("registry.invalid/web:2").await;
    }

    async fn update_to(&self, image: &str) {
        let patch = json!({"spec": {"template": template(image)}});
        self.rollouts
            .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("a new revision");
    }

    async fn wait(&self, what: &str, check: impl Fn(&RolloutStatus) -> bool) -> Rollout {
        let what = format!("{what} (controller log: {})", self.ctl.log.display());
        let check = &check;
        eventually(TIMEOUT, &what, || async move {
            let r = self.rollouts.get(ROLLOUT).await.ok()?;
            check(&r.status.clone().unwrap_or_default()).then_some(r)
        })
        .await
    }

    /// Waits for a pause at step `index` with `weight` verified by the controller.
    async fn paused_at(&self, index: i32, weight: i32) {
        self.wait(&format!("a pause at step {index}, weight {weight}"), |s| {
            s.current_step_index == Some(index)
                && !s.pause_conditions.is_empty()
                && s.canary
                    .weights
                    .as_ref()
                    .is_some_and(|w| w.canary.weight == weight && w.verified == Some(true))
        })
        .await;
    }

    async fn intent(&self, intent: Intent) {
        let r = self.rollouts.get(ROLLOUT).await.expect("the Rollout");
        let (spec_patch, status_patch) = intent::patches(intent, &r);
        if let Some(p) = spec_patch {
            self.rollouts
                .patch(ROLLOUT, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("intent (spec)");
        }
        if let Some(p) = status_patch {
            self.rollouts
                .patch_status(ROLLOUT, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("intent (status)");
        }
    }

    async fn ingress(&self, name: &str) -> DynamicObject {
        api_for(&self.env.client, &self.ns.name, &ingress(name, &[]))
            .await
            .get(name)
            .await
            .expect("the Ingress")
    }
}

fn annotation(obj: &DynamicObject, key: &str) -> Option<String> {
    obj.metadata.annotations.as_ref()?.get(key).cloned()
}

fn path_backends(obj: &DynamicObject) -> Vec<String> {
    obj.data["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|p| {
            p["backend"]["service"]["name"]
                .as_str()
                .unwrap_or("")
                .into()
        })
        .collect()
}

#[tokio::test]
async fn alb_canary_steps_header_route_and_abort() {
    let Some(h) = Harness::start("alb-steps").await else {
        return;
    };
    let manifest = ingress("web", &[]);
    let original = gitops_apply(&h.env.client, &h.ns.name, &manifest).await;
    let routing = json!({
        "managedRoutes": [{"name": "header"}],
        "alb": {"ingress": "web", "rootService": ROOT_SVC, "servicePort": 80},
    });
    let steps = json!([
        {"setWeight": 20}, {"pause": {}},
        {"setHeaderRoute": {"name": "header", "match": [
            {"headerName": "Custom-Header", "headerValue": {"exact": "Mozilla*"}}]}},
        {"setWeight": 60}, {"pause": {}},
    ]);
    h.create_rollout(routing, steps).await;
    // As with Argo: the settled Rollout's action sends everything to stable.
    let settled = eventually(TIMEOUT, "the split action at 0", || async {
        let live = h.ingress("web").await;
        (annotation(&live, ACTION) == Some(split(0))).then_some(live)
    })
    .await;
    assert_eq!(settled.data["spec"], original.data["spec"]);

    h.update().await;
    h.paused_at(1, 20).await;
    let live = h.ingress("web").await;
    assert_eq!(annotation(&live, ACTION), Some(split(20)));
    assert_eq!(
        annotation(&live, "alb.ingress.kubernetes.io/conditions.header"),
        None
    );

    h.intent(Intent::Promote).await;
    h.paused_at(4, 60).await;
    let live = h.ingress("web").await;
    assert_eq!(annotation(&live, ACTION), Some(split(60)));
    assert_eq!(
        annotation(&live, "alb.ingress.kubernetes.io/actions.header").as_deref(),
        Some(
            r#"{"Type":"forward","ForwardConfig":{"TargetGroups":[{"ServiceName":"web-canary","ServicePort":"80","Weight":100}]}}"#
        )
    );
    assert_eq!(
        annotation(&live, "alb.ingress.kubernetes.io/conditions.header").as_deref(),
        Some(
            r#"[{"field":"http-header","httpHeaderConfig":{"httpHeaderName":"Custom-Header","values":["Mozilla*"]}}]"#
        )
    );
    assert_eq!(path_backends(&live), ["header", ROOT_SVC, "cdn"]);
    assert_eq!(
        live.data["spec"]["rules"][0]["http"]["paths"][0],
        json!({"path": "/*", "pathType": "ImplementationSpecific",
               "backend": {"service": {"name": "header", "port": {"name": "use-annotation"}}}})
    );

    h.intent(Intent::Abort).await;
    h.wait("the abort to put all traffic back on stable", |s| {
        s.abort
            && s.canary
                .weights
                .as_ref()
                .is_some_and(|w| w.canary.weight == 0 && w.verified == Some(true))
    })
    .await;
    wait_released(&h.env.client, &h.ns.name, &manifest, TIMEOUT).await;
    let live = eventually(TIMEOUT, "the header route's annotations to go", || async {
        let fresh = h.ingress("web").await;
        annotation(&fresh, "alb.ingress.kubernetes.io/conditions.header")
            .is_none()
            .then_some(fresh)
    })
    .await;
    // Git's annotations and spec as declared, plus the split action on stable.
    let mut expected = original.metadata.annotations.clone().unwrap_or_default();
    expected.insert(ACTION.into(), split(0));
    assert_eq!(
        live.metadata.annotations.clone().unwrap_or_default(),
        expected
    );
    assert_eq!(live.data["spec"], original.data["spec"], "spec as declared");
    for entry in live.metadata.managed_fields.iter().flatten() {
        let manager = entry.manager.as_deref().unwrap_or_default();
        let owns_spec = entry
            .fields_v1
            .as_ref()
            .is_some_and(|f| f.0.get("f:spec").is_some());
        assert!(
            !owns_spec || manager == GITOPS,
            "{manager} owns spec: {entry:?}"
        );
    }
    // Nothing writes it again: the settled Rollout reads the stable action as applied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = h.ingress("web").await;
    assert_eq!(
        again.metadata.resource_version, live.metadata.resource_version,
        "the Ingress was written again after the abort settled"
    );
}

#[tokio::test]
async fn alb_declared_action_on_two_ingresses_is_given_back() {
    let Some(h) = Harness::start("alb-declared").await else {
        return;
    };
    // The manifest's own action: Argo's reset form (stable only).
    let declared = format!(
        r#"{{"Type":"forward","ForwardConfig":{{"TargetGroups":[{{"ServiceName":"{STABLE_SVC}","ServicePort":"80","Weight":100}}]}}}}"#
    );
    let manifests = [
        ingress("web-a", &[(ACTION, &declared)]),
        ingress("web-b", &[(ACTION, &declared)]),
    ];
    let mut originals = Vec::new();
    for m in &manifests {
        originals.push(gitops_apply(&h.env.client, &h.ns.name, m).await);
    }
    let routing = json!({"alb": {
        "ingresses": ["web-a", "web-b"], "rootService": ROOT_SVC, "servicePort": 80,
        "stickinessConfig": {"enabled": true, "durationSeconds": 3600},
    }});
    h.create_rollout(routing, json!([{"setWeight": 30}, {"pause": {}}]))
        .await;
    h.update().await;
    h.paused_at(1, 30).await;
    let sticky = split(30).replace(
        "}]}}",
        r#"}],"TargetGroupStickinessConfig":{"Enabled":true,"DurationSeconds":3600}}}"#,
    );
    for name in ["web-a", "web-b"] {
        assert_eq!(
            annotation(&h.ingress(name).await, ACTION),
            Some(sticky.clone())
        );
    }
    h.intent(Intent::Promote).await;
    h.wait("the update to complete", |s| {
        s.stable_rs == s.current_pod_hash
            && s.phase == Some(RolloutPhase::Healthy)
            && s.canary
                .weights
                .as_ref()
                .is_some_and(|w| w.canary.weight == 0 && w.verified == Some(true))
    })
    .await;
    for (m, o) in manifests.iter().zip(&originals) {
        wait_released(&h.env.client, &h.ns.name, m, TIMEOUT).await;
        assert_as_declared(&h.env.client, &h.ns.name, m, o).await;
    }
}

/// Argo's split action with an experiment template's Service between canary and stable (Argo's
/// e2e `actionTemplateWithExperiment`).
fn split_with_experiment(canary: i32, service: &str, weight: i32) -> String {
    format!(
        r#"{{"Type":"forward","ForwardConfig":{{"TargetGroups":[{{"ServiceName":"{CANARY_SVC}","ServicePort":"80","Weight":{canary}}},{{"ServiceName":"{service}","ServicePort":"80","Weight":{weight}}},{{"ServiceName":"{STABLE_SVC}","ServicePort":"80","Weight":{}}}]}}}}"#,
        100 - canary - weight
    )
}

#[tokio::test]
async fn alb_experiment_step_template_weight_on_two_ingresses() {
    let Some(h) = Harness::start("alb-exp").await else {
        return;
    };
    for name in ["web-a", "web-b"] {
        gitops_apply(&h.env.client, &h.ns.name, &ingress(name, &[])).await;
    }
    let routing = json!({"alb": {
        "ingresses": ["web-a", "web-b"], "rootService": ROOT_SVC, "servicePort": 80,
    }});
    let steps = json!([
        {"setWeight": 10},
        {"experiment": {"templates": [{"name": "exp", "specRef": "canary", "weight": 20}]}},
        {"pause": {}},
    ]);
    h.create_rollout(routing, steps).await;
    h.update().await;
    let r = h
        .wait(
            "the experiment step with its template's weight verified",
            |s| s.current_step_index == Some(1) && experiment_split_verified(s, 10, 20),
        )
        .await;
    let experiment = r.status.unwrap_or_default().canary.current_experiment;
    let template = first_template_status(&h.env.client, &h.ns.name, &experiment).await;
    let service = template.service_name.expect("the template's Service");
    for name in ["web-a", "web-b"] {
        assert_eq!(
            annotation(&h.ingress(name).await, ACTION),
            Some(split_with_experiment(10, &service, 20)),
            "{name}: the experiment's target group during the step"
        );
    }
    h.intent(Intent::Promote).await;
    h.wait(
        "a pause at step 2 with the experiment's share back on stable",
        |s| {
            s.current_step_index == Some(2)
                && !s.pause_conditions.is_empty()
                && s.canary.weights.as_ref().is_some_and(|w| {
                    w.canary.weight == 10
                        && w.stable.weight == 90
                        && w.additional.is_empty()
                        && w.verified == Some(true)
                })
        },
    )
    .await;
    for name in ["web-a", "web-b"] {
        assert_eq!(
            annotation(&h.ingress(name).await, ACTION),
            Some(split(10)),
            "{name}: the experiment's share back on stable after the step"
        );
    }
    h.intent(Intent::Promote).await;
    h.wait("the update to complete", |s| {
        s.stable_rs == s.current_pod_hash
            && s.phase == Some(RolloutPhase::Healthy)
            && s.canary.weights.as_ref().is_some_and(|w| {
                w.canary.weight == 0 && w.additional.is_empty() && w.verified == Some(true)
            })
    })
    .await;
    for name in ["web-a", "web-b"] {
        assert_eq!(annotation(&h.ingress(name).await, ACTION), Some(split(0)));
    }
}

/// Argo's split action between two named Services: `canary` first, as Argo writes it.
fn split_between(canary_svc: &str, stable_svc: &str, canary: i32) -> String {
    format!(
        r#"{{"Type":"forward","ForwardConfig":{{"TargetGroups":[{{"ServiceName":"{canary_svc}","ServicePort":"80","Weight":{canary}}},{{"ServiceName":"{stable_svc}","ServicePort":"80","Weight":{}}}]}}}}"#,
        100 - canary
    )
}

#[tokio::test]
async fn alb_ping_pong_services_trade_roles_at_each_promotion() {
    let Some(h) = Harness::start("alb-pingpong").await else {
        return;
    };
    for svc in ["ping", "pong"] {
        h.env
            .create(
                &h.ns.name,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc},
                       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
            )
            .await;
    }
    gitops_apply(&h.env.client, &h.ns.name, &ingress("web", &[])).await;
    h.create_canary(json!({
        "pingPong": {"pingService": "ping", "pongService": "pong"},
        "trafficRouting": {"alb": {"ingress": "web", "rootService": ROOT_SVC, "servicePort": 80}},
        "steps": [{"setWeight": 25}, {"pause": {}}],
    }))
    .await;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(h.env.client.clone(), &h.ns.name);
    let selects = |name: &'static str| {
        let services = services.clone();
        async move {
            let svc = services.get(name).await.expect("the Service");
            svc.spec?
                .selector?
                .get("rollouts-pod-template-hash")
                .cloned()
        }
    };
    let action_is = |want: String| {
        let h = &h;
        async move {
            let what = format!("the split action {want}");
            eventually(TIMEOUT, &what, || async {
                (annotation(&h.ingress("web").await, ACTION).as_ref() == Some(&want)).then_some(())
            })
            .await;
        }
    };
    // The first deploy: ping serves stable, all traffic on it.
    action_is(split_between("pong", "ping", 0)).await;
    let first = h.rollouts.get(ROLLOUT).await.expect("the Rollout");
    let status = first.status.clone().unwrap_or_default();
    assert_eq!(status.canary.stable_ping_pong, "ping");
    assert_eq!(selects("ping").await, Some(status.stable_rs.clone()));

    // Update 1: pong takes the canary.
    h.update().await;
    h.paused_at(1, 25).await;
    action_is(split_between("pong", "ping", 25)).await;
    let paused = h.rollouts.get(ROLLOUT).await.expect("the Rollout");
    let paused = paused.status.unwrap_or_default();
    assert_eq!(selects("pong").await, Some(paused.current_pod_hash.clone()));
    assert_eq!(selects("ping").await, Some(paused.stable_rs.clone()));

    // Promotion: pong becomes stable with everything; ping carries nothing.
    h.intent(Intent::Promote).await;
    let done = h
        .wait("update 1 to complete on pong", |s| {
            s.stable_rs == s.current_pod_hash
                && s.phase == Some(RolloutPhase::Healthy)
                && s.canary.stable_ping_pong == "pong"
        })
        .await;
    action_is(split_between("ping", "pong", 0)).await;
    let second = done.status.unwrap_or_default().stable_rs;
    assert_eq!(selects("pong").await, Some(second.clone()));

    // Update 2: ping takes the canary, pong keeps serving stable.
    h.update_to("registry.invalid/web:3").await;
    h.paused_at(1, 25).await;
    action_is(split_between("ping", "pong", 25)).await;
    assert_eq!(selects("pong").await, Some(second));
    h.intent(Intent::Promote).await;
    h.wait("update 2 to complete on ping", |s| {
        s.stable_rs == s.current_pod_hash
            && s.phase == Some(RolloutPhase::Healthy)
            && s.canary.stable_ping_pong == "ping"
    })
    .await;
    action_is(split_between("pong", "ping", 0)).await;
}

#[tokio::test]
async fn alb_acts_while_another_router_of_the_rollout_fails() {
    let Some(h) = Harness::start("alb-vsmissing").await else {
        return;
    };
    gitops_apply(&h.env.client, &h.ns.name, &ingress("web", &[])).await;
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": ROLLOUT},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("registry.invalid/web:1"),
            "strategy": {"canary": {
                "canaryService": CANARY_SVC, "stableService": STABLE_SVC,
                "trafficRouting": {
                    "alb": {"ingress": "web", "rootService": ROOT_SVC, "servicePort": 80},
                    "istio": {"virtualService": {"name": "web-vs", "routes": ["primary"]}},
                },
                "steps": [{"setWeight": 30}, {"pause": {}}],
            }},
        },
    }))
    .expect("the Rollout");
    h.rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("creating the Rollout");
    eventually(
        TIMEOUT,
        "the split action at 0 without the VirtualService",
        || async { (annotation(&h.ingress("web").await, ACTION) == Some(split(0))).then_some(()) },
    )
    .await;

    h.env
        .create(
            &h.ns.name,
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                   "metadata": {"name": "web-vs"},
                   "spec": {"hosts": ["web"], "http": [{"name": "primary", "route": [
                       {"destination": {"host": STABLE_SVC}, "weight": 100},
                       {"destination": {"host": CANARY_SVC}, "weight": 0}]}]}}),
        )
        .await;
    h.wait("the first revision to be Healthy", |s| {
        !s.stable_rs.is_empty() && s.stable_rs == s.current_pod_hash
    })
    .await;
    h.update().await;
    h.paused_at(1, 30).await;
    assert_eq!(annotation(&h.ingress("web").await, ACTION), Some(split(30)));
}
