//! Specs that cannot run are explained, not silent (issue 14, items 5, 10 and 11), on the real
//! cluster with `sluice controller` as a process per test:
//!
//! - a Rollout whose analysis cannot be built (a template that does not exist, an argument with
//!   no value, a metric two templates define, a missing background template) or whose pod
//!   template has no container is `InvalidSpec` / Degraded naming the cause, with one Event, and
//!   nothing is scaled; fixing the cause lets it proceed;
//! - a Canary whose provider Sluice cannot route, whose MetricTemplate has a type Sluice cannot
//!   query, or whose Service port the apiserver refuses gets one Warning naming the field and is
//!   not acted on;
//! - a MetricTemplate's `secretRef` (basic auth) and `headers` reach Prometheus (behind a proxy
//!   that requires both), and the Secret's value is never shown.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::controller::ControllerProcess;
use common::exporter::Exporter;
use common::{TestEnv, TestNamespace, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::{AnalysisTemplate, ClusterAnalysisTemplate};
use sluice::api::argo::rollout::{Rollout, RolloutPhase};
use sluice::api::flagger::canary::{Canary, CanaryPhase};
use sluice::api::flagger::metric_template::MetricTemplate;
use sluice::engine::health::reason;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Fixture {
    env: TestEnv,
    ns: TestNamespace,
    ctl: ControllerProcess,
}

async fn fixture(prefix: &str) -> Option<Fixture> {
    let env = common::test_env().await?;
    let ns = env.namespace(prefix).await;
    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
    Some(Fixture { env, ns, ctl })
}

impl Fixture {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.env.client.clone(), &self.ns.name)
    }

    async fn create<K>(&self, object: Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        let object: K =
            serde_json::from_value(object).unwrap_or_else(|e| panic!("{what} JSON: {e}"));
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {what}: {e}"))
    }

    async fn patch<K>(&self, name: &str, patch: Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patching {name}: {e}"));
    }

    fn log_tail(&self) -> String {
        let log = self.ctl.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Events regarding `kind`/`name`: (type, reason, note), each occurrence of a series counted.
    async fn events_of(&self, kind: &str, name: &str) -> Vec<(String, String, String)> {
        let mut events: Vec<Event> = self
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
            .into_iter()
            .flat_map(|e| {
                let n = e.series.as_ref().map_or(1, |s| s.count.max(1)) as usize;
                let event = (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                );
                std::iter::repeat_n(event, n)
            })
            .collect()
    }

    /// The Warning Events about `kind`/`name` whose note contains `needle`, once there is one,
    /// after `settle` more (a repeat would show).
    async fn warnings_once(
        &self,
        kind: &str,
        name: &str,
        needle: &str,
        settle: Duration,
    ) -> Vec<String> {
        let matching = |events: Vec<(String, String, String)>| -> Vec<String> {
            events
                .into_iter()
                .filter(|(t, _, note)| t == "Warning" && note.contains(needle))
                .map(|(_, reason, note)| format!("{reason}: {note}"))
                .collect()
        };
        eventually(
            TIMEOUT,
            &format!("a Warning on {kind} {name} saying {needle:?}"),
            || async { (!matching(self.events_of(kind, name).await).is_empty()).then_some(()) },
        )
        .await;
        tokio::time::sleep(settle).await;
        matching(self.events_of(kind, name).await)
    }
}

// === Rollouts whose analysis cannot be built ===

fn pod_template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": image}]},
    })
}

fn rollout(name: &str, canary: Value) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template("registry.invalid/web:1"),
            "strategy": {"canary": canary},
        },
    })
}

/// A template with one metric that passes (`vector(1) >= 1`), and `args`.
fn analysis_template(prometheus: &str, name: &str, metric: &str, args: Value) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {
            "args": args,
            "metrics": [{
                "name": metric,
                "successCondition": "result[0] >= 1",
                "provider": {"prometheus": {"address": prometheus, "query": "vector(1)"}},
            }],
        },
    })
}

fn status(r: &Rollout) -> sluice::api::argo::rollout::RolloutStatus {
    r.status.clone().unwrap_or_default()
}

fn invalid_message(r: &Rollout) -> Option<String> {
    status(r)
        .conditions
        .iter()
        .find(|c| c.type_ == reason::INVALID_SPEC && c.status == "True")
        .map(|c| c.message.clone())
}

impl Fixture {
    async fn rollout(&self, name: &str) -> Rollout {
        self.api::<Rollout>()
            .get(name)
            .await
            .expect("reading the Rollout")
    }

    async fn wait_rollout(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Rollout) -> bool,
    ) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let r = self.rollout(name).await;
            if check(&r) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "Rollout {name}: timed out waiting for {what}\nstatus: {}\nlog:\n{}",
                    serde_json::to_string_pretty(&r.status).unwrap_or_default(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_healthy(&self, name: &str) -> Rollout {
        self.wait_rollout(name, "Healthy", |r| {
            let s = status(r);
            s.phase == Some(RolloutPhase::Healthy)
                && !s.current_pod_hash.is_empty()
                && s.stable_rs == s.current_pod_hash
        })
        .await
    }

    /// Waits for `name` to be InvalidSpec (Degraded) with a message containing each of `says`,
    /// and checks there is exactly one InvalidSpec Event about it (no repeat after 7 s, more than
    /// the 5 s error retry).
    async fn assert_invalid(&self, name: &str, says: &[&str]) -> Rollout {
        let r = self
            .wait_rollout(name, &format!("InvalidSpec saying {says:?}"), |r| {
                invalid_message(r).is_some_and(|m| says.iter().all(|s| m.contains(s)))
            })
            .await;
        assert_eq!(status(&r).phase, Some(RolloutPhase::Degraded), "{name}");
        let events = self
            .warnings_once("Rollout", name, says[0], Duration::from_secs(7))
            .await;
        assert_eq!(events.len(), 1, "one Warning for {name}: {events:#?}");
        assert!(events[0].starts_with("InvalidSpec: "), "{events:#?}");
        r
    }

    /// `spec.replicas` of the ReplicaSets of Rollout `name`, by pod-template hash.
    async fn replica_sets_of(&self, name: &str) -> BTreeMap<String, i32> {
        self.api::<ReplicaSet>()
            .list(&ListParams::default().labels("rollouts-pod-template-hash"))
            .await
            .expect("listing ReplicaSets")
            .items
            .into_iter()
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Rollout" && o.name == name)
            })
            .map(|rs| {
                let hash =
                    rs.metadata.labels.unwrap_or_default()["rollouts-pod-template-hash"].clone();
                (hash, rs.spec.and_then(|s| s.replicas).unwrap_or(0))
            })
            .collect()
    }
}

/// An update whose analysis step names a template that does not exist is InvalidSpec before
/// anything moves: the canary never gets a pod (its weight stays 0), one Event names the
/// template; creating the template lets the update run through to Healthy.
#[tokio::test]
async fn an_update_naming_a_missing_template_is_invalid_and_shifts_nothing() {
    let Some(f) = fixture("hs-missing").await else {
        return;
    };
    let steps = json!({"steps": [
        {"setWeight": 25},
        {"analysis": {"templates": [{"templateName": "smoke"}]}},
        {"setWeight": 75},
    ]});
    f.create::<Rollout>(rollout("web", json!({"steps": [{"setWeight": 25}]})))
        .await;
    let stable = status(&f.wait_healthy("web").await).stable_rs;
    let before = f.replica_sets_of("web").await;
    f.patch::<Rollout>(
        "web",
        json!({"spec": {"template": pod_template("registry.invalid/web:2"),
            "strategy": {"canary": steps}}}),
    )
    .await;
    f.assert_invalid(
        "web",
        &[
            "AnalysisTemplate/smoke not found",
            "spec.strategy.canary.steps[1].analysis.templates[0].templateName",
        ],
    )
    .await;
    assert_eq!(
        f.replica_sets_of("web").await,
        before,
        "no canary ReplicaSet made or scaled: the weight stays 0"
    );

    let prometheus = f.env.prometheus_url.clone();
    f.create::<AnalysisTemplate>(analysis_template(&prometheus, "smoke", "probe", json!([])))
        .await;
    let r = f.wait_healthy("web").await;
    assert_ne!(status(&r).stable_rs, stable, "the update went through");
    assert!(invalid_message(&r).is_none());
}

/// Every other cause, on creation: each Rollout is InvalidSpec naming its cause with one Event
/// and gets no ReplicaSet; fixing the template (or the pod template) makes it Healthy.
#[tokio::test]
async fn analyses_that_cannot_be_built_are_invalid_until_fixed() {
    let Some(f) = fixture("hs-causes").await else {
        return;
    };
    let prometheus = f.env.prometheus_url.clone();
    let cluster_name = common::unique_name("hs-cluster");
    let step = |templates: Value| json!({"steps": [{"analysis": {"templates": templates}}]});
    // An argument the template declares without a value, and the Rollout does not pass.
    f.create::<AnalysisTemplate>(analysis_template(
        &prometheus,
        "needs-arg",
        "probe",
        json!([{"name": "service"}]),
    ))
    .await;
    // Two templates defining the same metric name.
    f.create::<AnalysisTemplate>(analysis_template(&prometheus, "dup-a", "probe", json!([])))
        .await;
    f.create::<AnalysisTemplate>(analysis_template(&prometheus, "dup-b", "probe", json!([])))
        .await;
    f.create::<Rollout>(rollout(
        "cluster",
        step(json!([{"templateName": cluster_name, "clusterScope": true}])),
    ))
    .await;
    f.create::<Rollout>(rollout("arg", step(json!([{"templateName": "needs-arg"}]))))
        .await;
    f.create::<Rollout>(rollout(
        "dup",
        step(json!([{"templateName": "dup-a"}, {"templateName": "dup-b"}])),
    ))
    .await;
    f.create::<Rollout>(rollout(
        "background",
        json!({"steps": [{"setWeight": 50}],
            "analysis": {"templates": [{"templateName": "bg"}]}}),
    ))
    .await;
    let mut empty = rollout("empty", json!({"steps": [{"setWeight": 50}]}));
    empty["spec"]["template"]["spec"]["containers"] = json!([]);
    f.create::<Rollout>(empty).await;

    let cluster_display = format!("ClusterAnalysisTemplate/{cluster_name} not found");
    let cases: [(&str, Vec<&str>); 5] = [
        (
            "cluster",
            vec![
                cluster_display.as_str(),
                "spec.strategy.canary.steps[0].analysis.templates[0].templateName",
            ],
        ),
        (
            "arg",
            vec![
                "argument \"service\"",
                "AnalysisTemplate/needs-arg",
                "has no value",
            ],
        ),
        (
            "dup",
            vec![
                "metric \"probe\" is defined by both",
                "AnalysisTemplate/dup-b",
            ],
        ),
        (
            "background",
            vec![
                "AnalysisTemplate/bg not found",
                "spec.strategy.canary.analysis.templates[0].templateName",
            ],
        ),
        ("empty", vec!["spec.template.spec.containers"]),
    ];
    for (name, says) in &cases {
        f.assert_invalid(name, says).await;
        assert!(
            f.replica_sets_of(name).await.is_empty(),
            "Rollout {name}: nothing created while invalid"
        );
    }

    // Fix each cause; each Rollout then proceeds.
    let clusters: Api<ClusterAnalysisTemplate> = Api::all(f.env.client.clone());
    let mut cluster = analysis_template(&prometheus, &cluster_name, "probe", json!([]));
    cluster["kind"] = json!("ClusterAnalysisTemplate");
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(cluster).expect("ClusterAnalysisTemplate JSON"),
        )
        .await
        .expect("creating the ClusterAnalysisTemplate");
    f.patch::<AnalysisTemplate>(
        "needs-arg",
        json!({"spec": {"args": [{"name": "service", "value": "web"}]}}),
    )
    .await;
    let mut renamed = analysis_template(&prometheus, "dup-b", "probe-b", json!([]));
    f.patch::<AnalysisTemplate>("dup-b", json!({"spec": renamed["spec"].take()}))
        .await;
    f.create::<AnalysisTemplate>(analysis_template(&prometheus, "bg", "probe", json!([])))
        .await;
    f.patch::<Rollout>(
        "empty",
        json!({"spec": {"template": pod_template("registry.invalid/web:1")}}),
    )
    .await;
    for (name, _) in &cases {
        f.wait_healthy(name).await;
    }
    let _ = clusters
        .delete(&cluster_name, &DeleteParams::default())
        .await;
}

/// A pod-template quantity the apiserver refuses (`memory: invalid`, as in Argo's
/// `test/e2e/expectedfailures/malformed-rollout.yaml`) is InvalidSpec naming the field, with one
/// Event, and no ReplicaSet is attempted; a valid quantity lets the Rollout become Healthy. Argo
/// instead reads the value as zero and writes the Rollout back (README, Differences).
#[tokio::test]
async fn a_malformed_resource_quantity_is_invalid_until_fixed() {
    let Some(f) = fixture("hs-quantity").await else {
        return;
    };
    let mut malformed = rollout("malformed", json!({"steps": [{"setWeight": 50}]}));
    malformed["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"memory": "invalid"}});
    f.create::<Rollout>(malformed).await;
    f.assert_invalid(
        "malformed",
        &[
            "spec.template.spec.containers[0].resources.requests.memory",
            "\"invalid\" is not a resource quantity",
        ],
    )
    .await;
    assert!(f.replica_sets_of("malformed").await.is_empty());
    let mut fixed = pod_template("registry.invalid/web:1");
    fixed["spec"]["containers"][0]["resources"] = json!({"requests": {"memory": "64Mi"}});
    f.patch::<Rollout>("malformed", json!({"spec": {"template": fixed}}))
        .await;
    let r = f.wait_healthy("malformed").await;
    assert!(invalid_message(&r).is_none());
}

// === Canaries that cannot run ===

fn canary(name: &str, provider: &str, port: i32, analysis: Value) -> Value {
    json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "provider": provider,
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 60,
            "service": {"port": port, "targetPort": 9898},
            "analysis": analysis,
        },
    })
}

impl Fixture {
    async fn target(&self, name: &str) {
        let target = common::canary::target(name, 2, "podinfo:6.0.0", 9898);
        self.api::<Deployment>()
            .create(&PostParams::default(), &target)
            .await
            .expect("creating the target Deployment");
    }

    async fn exists<K>(&self, name: &str) -> bool
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>()
            .get_opt(name)
            .await
            .expect("reading an object")
            .is_some()
    }

    async fn replicas(&self, name: &str) -> i32 {
        let d = self
            .api::<Deployment>()
            .get(name)
            .await
            .expect("a Deployment");
        d.spec.and_then(|s| s.replicas).unwrap_or(1)
    }

    /// Asserts the Canary `name` was not acted on: no primary, no Service, no status, the
    /// target as created.
    async fn assert_untouched(&self, name: &str) {
        let primary = format!("{name}-primary");
        assert!(!self.exists::<Deployment>(&primary).await, "no {primary}");
        for service in [name.to_string(), primary, format!("{name}-canary")] {
            assert!(
                !self.exists::<Service>(&service).await,
                "no Service {service}"
            );
        }
        assert_eq!(self.replicas(name).await, 2, "target untouched");
        let c = self.api::<Canary>().get(name).await.expect("the Canary");
        assert!(
            c.status.as_ref().and_then(|s| s.phase).is_none(),
            "no status: {:?}",
            c.status
        );
        assert!(c.metadata.finalizers.unwrap_or_default().is_empty());
    }

    async fn wait_canary(&self, name: &str, phase: CanaryPhase, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.api::<Canary>().get(name).await.expect("the Canary");
            if c.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "Canary {name} not {phase:?}: {:?}\nevents: {:#?}\nlog:\n{}",
                    c.status,
                    self.events_of("Canary", name).await,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A provider Sluice cannot route is refused once per generation, naming spec.provider, and
/// nothing is created or changed.
#[tokio::test]
async fn a_canary_with_an_unroutable_provider_is_refused_once_per_generation() {
    let Some(f) = fixture("hs-contour").await else {
        return;
    };
    f.target("podinfo").await;
    f.create::<Canary>(canary(
        "podinfo",
        "contour",
        80,
        json!({"interval": "1s", "threshold": 2, "iterations": 2}),
    ))
    .await;
    let warnings = f
        .warnings_once("Canary", "podinfo", "spec.provider", Duration::from_secs(7))
        .await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("InvalidSpec: ") && warnings[0].contains("\"contour\""),
        "{warnings:#?}"
    );
    f.assert_untouched("podinfo").await;

    f.patch::<Canary>("podinfo", json!({"spec": {"analysis": {"iterations": 3}}}))
        .await;
    eventually(
        TIMEOUT,
        "a second Warning after the spec change",
        || async {
            let n = f
                .events_of("Canary", "podinfo")
                .await
                .iter()
                .filter(|(t, _, note)| t == "Warning" && note.contains("spec.provider"))
                .count();
            (n == 2).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warnings = f
        .warnings_once("Canary", "podinfo", "spec.provider", Duration::ZERO)
        .await;
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    f.assert_untouched("podinfo").await;
}

/// A MetricTemplate of a type Sluice does not query is refused before the run starts, naming
/// spec.provider.type; no query goes anywhere.
#[tokio::test]
async fn a_metric_template_of_an_unsupported_type_stops_the_canary_before_it_starts() {
    let Some(f) = fixture("hs-dynatrace").await else {
        return;
    };
    f.create::<MetricTemplate>(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": "dt"},
        "spec": {"provider": {"type": "dynatrace", "address": "http://127.0.0.1:9"},
            "query": "builtin:service.requestCount.total"},
    }))
    .await;
    f.target("podinfo").await;
    f.create::<Canary>(canary(
        "podinfo",
        "kubernetes",
        80,
        json!({"interval": "1s", "threshold": 2, "iterations": 2,
            "metrics": [{"name": "requests", "templateRef": {"name": "dt"},
                "thresholdRange": {"min": 1}}]}),
    ))
    .await;
    let warnings = f
        .warnings_once(
            "Canary",
            "podinfo",
            "spec.provider.type",
            Duration::from_secs(7),
        )
        .await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("\"dynatrace\"")
            && warnings[0].contains("spec.analysis.metrics[0].templateRef"),
        "{warnings:#?}"
    );
    f.assert_untouched("podinfo").await;
}

/// A Service port the apiserver refuses (here `targetPort`) is one Warning naming spec.service
/// with the apiserver's reason, not a log line every 5 s; fixing it lets the Canary initialise.
#[tokio::test]
async fn a_canary_port_the_apiserver_refuses_is_reported_once() {
    let Some(f) = fixture("hs-port").await else {
        return;
    };
    f.target("podinfo").await;
    // The CRD bounds `port`; `targetPort` (int or string) only the Service's validation checks.
    let mut refused = canary(
        "podinfo",
        "kubernetes",
        80,
        json!({"interval": "1s", "threshold": 2, "iterations": 2}),
    );
    refused["spec"]["service"]["targetPort"] = json!(70000);
    f.create::<Canary>(refused).await;
    let warnings = f
        .warnings_once("Canary", "podinfo", "spec.service", Duration::from_secs(7))
        .await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("InvalidSpec: ") && warnings[0].contains("70000"),
        "{warnings:#?}"
    );
    f.patch::<Canary>(
        "podinfo",
        json!({"spec": {"service": {"targetPort": 9898}}}),
    )
    .await;
    f.wait_canary("podinfo", CanaryPhase::Initialized, TIMEOUT)
        .await;
}

// === MetricTemplate credentials and headers ===

const USER: &str = "flagger";
const PASSWORD: &str = "s3cret-pass";
/// `base64("flagger:s3cret-pass")`.
const BASIC: &str = "Basic ZmxhZ2dlcjpzM2NyZXQtcGFzcw==";
const TENANT_HEADER: &str = "x-scope-orgid";
const TENANT: &str = "tenant-a";

/// A reverse proxy in front of the test Prometheus that answers 401 unless the request carries
/// the basic-auth credentials and the tenant header. Returns its base URL.
async fn auth_proxy(prometheus: String) -> String {
    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};

    async fn forward(
        State(upstream): State<Arc<(reqwest::Client, String)>>,
        request: Request,
    ) -> Response {
        let headers = request.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if header("authorization") != BASIC || header(TENANT_HEADER) != TENANT {
            return (
                StatusCode::UNAUTHORIZED,
                "credentials and tenant header required",
            )
                .into_response();
        }
        let (client, base) = upstream.as_ref();
        let method = request.method().clone();
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let content_type = header("content-type").to_string();
        let body = axum::body::to_bytes(request.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let answer = client
            .request(method, format!("{base}{path}"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        match answer {
            Ok(answer) => {
                let status = answer.status();
                let bytes = answer.bytes().await.unwrap_or_default();
                (status, [("content-type", "application/json")], bytes).into_response()
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    }

    sluice::install_crypto_provider();
    let state = Arc::new((reqwest::Client::new(), prometheus));
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the proxy");
    let address = listener.local_addr().expect("the proxy's address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

/// The MetricTemplate with `secretRef` and `headers` passes through the proxy and the Canary
/// promotes; the same template without them is refused by the proxy and the check fails with
/// Prometheus' 401 in the message. The password is in no Event, status or log line.
#[tokio::test]
async fn metric_template_credentials_and_headers_reach_prometheus() {
    let Some(f) = fixture("hs-promauth").await else {
        return;
    };
    let exporter = Exporter::start(&f.env, "hs-auth").await;
    exporter.set("rate", 99.5);
    exporter.wait_scraped("rate", 99.5).await;
    let proxy = auth_proxy(f.env.prometheus_url.clone()).await;
    f.create::<Secret>(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "prom-auth"},
        "stringData": {"username": USER, "password": PASSWORD},
    }))
    .await;
    let template = |name: &str, secret: bool| {
        let mut provider = json!({"type": "prometheus", "address": proxy,
            "headers": {"X-Scope-OrgID": [TENANT]}});
        if secret {
            provider["secretRef"] = json!({"name": "prom-auth"});
        }
        json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": name},
            "spec": {"provider": provider, "query": exporter.selector("rate")},
        })
    };
    f.create::<MetricTemplate>(template("with-auth", true))
        .await;
    f.create::<MetricTemplate>(template("without-auth", false))
        .await;
    let analysis = |template: &str| {
        json!({"interval": "1s", "threshold": 2, "iterations": 2,
            "metrics": [{"name": "success", "templateRef": {"name": template},
                "thresholdRange": {"min": 99}}]})
    };
    for (name, template) in [("authed", "with-auth"), ("anonymous", "without-auth")] {
        f.target(name).await;
        f.create::<Canary>(canary(name, "kubernetes", 80, analysis(template)))
            .await;
    }
    for name in ["authed", "anonymous"] {
        f.wait_canary(name, CanaryPhase::Initialized, TIMEOUT).await;
        f.patch::<Deployment>(
            name,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:6.0.1",
                 "ports": [{"containerPort": 9898, "name": "http"}]}]}}}}),
        )
        .await;
    }
    f.wait_canary("authed", CanaryPhase::Succeeded, Duration::from_secs(90))
        .await;
    f.wait_canary("anonymous", CanaryPhase::Failed, Duration::from_secs(90))
        .await;
    let refused = f
        .events_of("Canary", "anonymous")
        .await
        .into_iter()
        .map(|(_, _, note)| note)
        .filter(|note| note.starts_with("Halt advancement") && note.contains("401"))
        .count();
    assert!(
        refused >= 1,
        "the check names the refusal: {:#?}",
        f.events_of("Canary", "anonymous").await
    );

    let mut shown = format!("{:?}", f.events_of("Canary", "authed").await);
    shown += &format!("{:?}", f.events_of("Canary", "anonymous").await);
    for name in ["authed", "anonymous"] {
        let c = f.api::<Canary>().get(name).await.expect("the Canary");
        shown += &serde_json::to_string(&c.status).unwrap_or_default();
    }
    shown += &f.ctl.log_text();
    shown += &f.ctl.metrics().await;
    assert!(!shown.contains(PASSWORD), "the Secret's password was shown");
}

/// Fields Flagger reinterprets silently (maxWeight 0, stepWeight with the kubernetes provider,
/// no metrics and no webhooks) get one Warning each naming the field; the Canary still runs.
#[tokio::test]
async fn reinterpreted_canary_fields_are_warned_once_each() {
    let Some(f) = fixture("hs-reinterpret").await else {
        return;
    };
    f.target("podinfo").await;
    f.create::<Canary>(canary(
        "podinfo",
        "kubernetes",
        80,
        json!({"interval": "1s", "threshold": 2, "iterations": 2, "maxWeight": 0, "stepWeight": 10}),
    ))
    .await;
    f.wait_canary("podinfo", CanaryPhase::Initialized, TIMEOUT)
        .await;
    for field in [
        "spec.analysis.maxWeight: 0",
        "spec.analysis.stepWeight: the kubernetes provider",
        "spec.analysis.metrics: the Canary has no metrics and no webhooks",
    ] {
        let warnings = f
            .warnings_once("Canary", "podinfo", field, Duration::from_secs(2))
            .await;
        assert_eq!(warnings.len(), 1, "{field}: {warnings:#?}");
        assert!(warnings[0].starts_with("Reinterpreted: "), "{warnings:#?}");
    }
}

// === The Job provider only touches its own Jobs ===

/// A Job that never finishes (its pod can never be scheduled), as a user or the run makes it.
fn stuck_job_spec() -> Value {
    json!({
        "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"sluice.dev/no-such-node": "true"},
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "exit 0"]}],
        }},
    })
}

/// A measurement whose status names a Job the run did not create (the status is writable by
/// whoever may patch the run) is an error: that Job is neither read nor, on termination,
/// deleted.
#[tokio::test]
async fn the_job_provider_leaves_a_job_it_did_not_create_alone() {
    use k8s_openapi::api::batch::v1::Job;
    use sluice::api::argo::analysis::AnalysisRun;

    let Some(f) = fixture("hs-job").await else {
        return;
    };
    f.create::<Job>(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "victim"},
        "spec": stuck_job_spec(),
    }))
    .await;
    f.create::<AnalysisRun>(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": "run"},
        "spec": {"metrics": [{"name": "smoke", "provider": {"job": {"spec": stuck_job_spec()}}}]},
    }))
    .await;
    let runs = f.api::<AnalysisRun>();
    let in_progress = |run: &AnalysisRun| -> bool {
        run.status.as_ref().is_some_and(|s| {
            s.metric_results.iter().any(|m| {
                m.measurements
                    .last()
                    .is_some_and(|x| x.finished_at.is_none() && x.metadata.contains_key("job-name"))
            })
        })
    };
    eventually(TIMEOUT, "a measurement running its Job", || async {
        let run = runs.get("run").await.ok()?;
        in_progress(&run).then_some(())
    })
    .await;
    // Point the running measurement at the victim, as a hostile status patch would.
    eventually(TIMEOUT, "the status patched to name the victim", || async {
        let run = runs.get("run").await.ok()?;
        let mut status = serde_json::to_value(run.status.as_ref()?).ok()?;
        let results = status["metricResults"].as_array_mut()?;
        let measurements = results[0]["measurements"].as_array_mut()?;
        let last = measurements.last_mut()?;
        last["metadata"]["job-name"] = json!("victim");
        let patch = json!({"metadata": {"resourceVersion": run.metadata.resource_version},
            "status": status});
        // `/status` where the CRD serves it, else the main resource (Argo's CRD shape).
        let patch = Patch::Merge(&patch);
        match runs
            .patch_status("run", &PatchParams::default(), &patch)
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => runs
                .patch("run", &PatchParams::default(), &patch)
                .await
                .ok(),
            written => written.ok(),
        }
        .map(|_| ())
    })
    .await;
    // The next look at it (every 10 s) refuses the victim; then the run is terminated.
    eventually(
        Duration::from_secs(45),
        "the victim refused by name",
        || async {
            let run = runs.get("run").await.ok()?;
            let text = serde_json::to_string(&run.status).ok()?;
            text.contains("victim named in the measurement is not controlled by this AnalysisRun")
                .then_some(())
        },
    )
    .await;
    f.patch::<AnalysisRun>("run", json!({"spec": {"terminate": true}}))
        .await;
    eventually(TIMEOUT, "the run completed", || async {
        let run = runs.get("run").await.ok()?;
        run.status?.phase.filter(|p| p.is_completed()).map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        f.exists::<Job>("victim").await,
        "the Job the run did not create is still there"
    );
}

/// An InvalidSpec message longer than the 1,024 bytes an Event note may hold is cut, not lost:
/// the Event is there, ending with `…`, and the status keeps the whole message.
#[tokio::test]
async fn an_event_longer_than_the_apiserver_accepts_is_cut_not_lost() {
    let Some(f) = fixture("hs-long").await else {
        return;
    };
    // One missing template per step: one error each.
    let steps: Vec<Value> = (0..20)
        .map(|i| {
            json!({"analysis": {"templates": [
                {"templateName": format!("missing-template-with-a-rather-long-name-{i:02}")}]}})
        })
        .collect();
    f.create::<Rollout>(rollout("web", json!({"steps": steps})))
        .await;
    let r = f
        .wait_rollout("web", "InvalidSpec", |r| invalid_message(r).is_some())
        .await;
    let message = invalid_message(&r).unwrap_or_default();
    assert!(message.len() > 1024, "a long message: {}", message.len());
    let events = f
        .warnings_once(
            "Rollout",
            "web",
            "The Rollout is invalid",
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let note = events[0].trim_start_matches("InvalidSpec: ");
    assert!(note.len() <= 1024 && note.ends_with('…'), "{note}");
}

/// `pingPong` where Sluice cannot route it as Argo does is InvalidSpec naming the field, with one
/// Event: Istio without stableService / canaryService (its routes given back would send traffic
/// to whichever Service the manifest names), a router Argo does not pair with it (nginx), ALB
/// without `rootService`.
#[tokio::test]
async fn ping_pong_with_routers_it_cannot_work_with_is_invalid() {
    let Some(f) = fixture("hs-pingpong").await else {
        return;
    };
    let ping_pong = json!({"pingService": "ping", "pongService": "pong"});
    f.create::<Rollout>(rollout(
        "istio",
        json!({"pingPong": ping_pong,
               "trafficRouting": {"istio": {"virtualService": {"name": "vs"}}},
               "steps": [{"setWeight": 25}]}),
    ))
    .await;
    f.create::<Rollout>(rollout(
        "nginx",
        json!({"pingPong": ping_pong, "stableService": "s", "canaryService": "c",
               "trafficRouting": {"nginx": {"stableIngress": "web"}},
               "steps": [{"setWeight": 25}]}),
    ))
    .await;
    f.create::<Rollout>(rollout(
        "alb",
        json!({"pingPong": ping_pong,
               "trafficRouting": {"alb": {"ingress": "web", "servicePort": 80}},
               "steps": [{"setWeight": 25}]}),
    ))
    .await;
    f.assert_invalid("istio", &["spec.strategy.canary.pingPong", "istio"])
        .await;
    f.assert_invalid("nginx", &["spec.strategy.canary.trafficRouting.nginx"])
        .await;
    f.assert_invalid(
        "alb",
        &["spec.strategy.canary.trafficRouting.alb.rootService"],
    )
    .await;
    for name in ["istio", "nginx", "alb"] {
        assert!(
            f.replica_sets_of(name).await.is_empty(),
            "Rollout {name}: nothing created while invalid"
        );
    }
}
