//! Hostile HTTP endpoints on the real cluster (issue 14): answers far larger than any cap, Secrets
//! that must never show, AlertProviders in another tenant's namespace, and redirects. Each test
//! starts its own `sluice controller` process, limited to its namespace, and local HTTP servers.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use common::controller::ControllerProcess;
use common::{TestEnv, eventually};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun};
use sluice::api::flagger::alert_provider::AlertProvider;
use sluice::api::flagger::canary::{Canary, CanaryPhase};

/// One request a test server received: method, path with query, headers.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

/// A local HTTP server that records every request and answers through `answer`.
struct Server {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start<F>(answer: F) -> Server
    where
        F: Fn(&Seen) -> axum::response::Response + Clone + Send + Sync + 'static,
    {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let sink = seen.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
                let (sink, answer) = (sink.clone(), answer.clone());
                async move {
                    let request = Seen {
                        method,
                        path: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers,
                    };
                    sink.lock().unwrap().push(request.clone());
                    answer(&request)
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn hits(&self, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.starts_with(prefix))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: StatusCode, body: impl Into<Body>) -> axum::response::Response {
    axum::response::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

/// 64 KiB of `x`, shared by every chunk of a huge body (nothing is allocated per chunk).
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A 500 answer whose body is `chunks` × 64 KiB, generated as it is sent.
fn huge_500(chunks: usize) -> axum::response::Response {
    let stream = futures::stream::repeat_with(|| Ok::<_, Infallible>(Bytes::from_static(&CHUNK)))
        .take(chunks);
    respond(StatusCode::INTERNAL_SERVER_ERROR, Body::from_stream(stream))
}

/// The controller's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the controller's RSS every 20 ms until dropped; keeps the maximum.
struct RssSampler {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let (max_kib, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (max, done) = (max_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { max_kib, stop }
    }

    fn max_kib(&self) -> u64 {
        self.max_kib.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Messages of every Event in `ns` (any kind), oldest first.
async fn all_event_messages(env: &TestEnv, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let mut list = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// Waits for an Event (any kind) in `ns` whose text contains every one of `expected`.
async fn event_having(
    env: &TestEnv,
    ns: &str,
    expected: &[&str],
    ctl: &ControllerProcess,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let events = all_event_messages(env, ns).await;
        if let Some(e) = events
            .iter()
            .find(|e| expected.iter().all(|x| e.contains(x)))
        {
            return e.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no Event with {expected:?} in {ns}: {events:#?}\ncontroller log:\n{}",
                ctl.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create<K>(env: &TestEnv, ns: &str, manifest: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(manifest).expect("manifest JSON");
    Api::<K>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {object:?}: {e}"));
}

async fn create_target(env: &TestEnv, ns: &str) {
    let deployment = common::canary::target("podinfo", 1, "podinfo:6.0.0", 9898);
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating the target Deployment");
}

async fn set_image(env: &TestEnv, ns: &str, image: &str) {
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": image}]}}}})),
        )
        .await
        .expect("updating the target's image");
}

async fn create_canary(env: &TestEnv, ns: &str, analysis: Value) {
    create::<Canary>(
        env,
        ns,
        common::canary::kubernetes("podinfo", Some(120), analysis),
    )
    .await;
}

async fn wait_phase(env: &TestEnv, ns: &str, phase: CanaryPhase, ctl: &ControllerProcess) {
    let api: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let canary = api.get("podinfo").await.expect("reading the Canary");
        if canary.status.as_ref().and_then(|s| s.phase) == Some(phase) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "Canary not {phase:?}; status: {:?}\nevents: {:#?}\ncontroller log:\n{}",
                canary.status,
                all_event_messages(env, ns).await,
                ctl.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn alert_provider(env: &TestEnv, ns: &str, name: &str, spec: Value) {
    create::<AlertProvider>(
        env,
        ns,
        json!({"apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
            "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

async fn secret(env: &TestEnv, ns: &str, name: &str, data: Value) {
    create::<Secret>(
        env,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
    )
    .await;
}

/// Waits until the run's metric `metric` has a measurement whose message holds `expected`; the
/// message.
async fn measurement_message(
    env: &TestEnv,
    ns: &str,
    run: &str,
    metric: &str,
    expected: &str,
    ctl: &ControllerProcess,
) -> String {
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let found = api.get(run).await.ok().and_then(|r| {
            r.status?
                .metric_results
                .into_iter()
                .find(|m| m.name == metric)?
                .measurements
                .into_iter()
                .filter_map(|m| m.message)
                .find(|m| m.contains(expected))
        });
        if let Some(message) = found {
            return message;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no measurement of {run}/{metric} says {expected:?}: {:?}\ncontroller log:\n{}",
                api.get(run).await.ok().and_then(|r| r.status),
                ctl.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Item 1: a 256 MiB error answer to a Canary webhook, an AlertProvider, a web metric and a
/// Prometheus metric; the controller's RSS stays within 64 MiB of its baseline, and the failures
/// say what answered, with a short excerpt.
#[tokio::test]
async fn huge_error_answers_are_read_only_as_far_as_needed() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-body").await;
    let server = Server::start(|_| huge_500(4096)).await;
    alert_provider(
        &env,
        &ns.name,
        "huge",
        json!({"type": "slack", "channel": "ops", "address": server.url("/alert")}),
    )
    .await;
    create_target(&env, &ns.name).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    // Let the controller settle (caches listed, first allocations made) before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss_kib(ctl.pid());
    let sampler = RssSampler::start(ctl.pid());

    create::<AnalysisRun>(
        &env,
        &ns.name,
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": "huge"},
        "spec": {"metrics": [
            {"name": "web", "count": 2, "interval": "1s", "consecutiveErrorLimit": 2,
             "successCondition": "result == 1",
             "provider": {"web": {"url": server.url("/web"), "timeoutSeconds": 30}}},
            {"name": "prom", "count": 2, "interval": "1s", "consecutiveErrorLimit": 2,
             "successCondition": "result[0] == 1",
             "provider": {"prometheus": {"address": server.url("/prom"), "query": "up",
                "timeout": 30}}},
        ]}}),
    )
    .await;
    create_canary(
        &env,
        &ns.name,
        json!({
            "interval": "1s", "threshold": 2, "iterations": 3,
            "webhooks": [{"name": "gate", "type": "pre-rollout", "url": server.url("/hook"),
                "timeout": "30s"}],
            "alerts": [{"name": "team", "severity": "info", "providerRef": {"name": "huge"}}],
        }),
    )
    .await;
    wait_phase(&env, &ns.name, CanaryPhase::Initialized, &ctl).await;
    set_image(&env, &ns.name, "podinfo:6.0.1").await;
    wait_phase(&env, &ns.name, CanaryPhase::Failed, &ctl).await;

    // Waits on what any version says, so that the memory is what fails first.
    let hook = event_having(&env, &ns.name, &["/hook answered"], &ctl).await;
    let alert = event_having(&env, &ns.name, &["Alert team not sent", "500"], &ctl).await;
    let web = measurement_message(&env, &ns.name, "huge", "web", "failed", &ctl).await;
    let prom = measurement_message(&env, &ns.name, "huge", "prom", "failed", &ctl).await;
    for prefix in ["/hook", "/alert", "/web", "/prom"] {
        assert!(server.hits(prefix) >= 1, "{prefix} was called");
    }
    let max = sampler.max_kib();
    drop(sampler);
    println!("controller RSS: baseline {baseline} KiB, max {max} KiB");
    assert!(baseline > 0 && max > 0, "RSS was sampled");
    assert!(
        max < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {max} KiB reading 256 MiB error answers"
    );
    for message in [&hook, &alert, &web] {
        assert!(
            message.contains("HTTP 500")
                && message.contains("xxxx")
                && message.contains("the rest was not read"),
            "the status and a short excerpt, said to be cut: {message}"
        );
        assert!(
            message.len() < 1100,
            "{} characters: {message}",
            message.len()
        );
    }
    assert!(prom.contains("HTTP 500"), "{prom}");
    assert!(prom.len() < 1100, "{} characters: {prom}", prom.len());
}

/// Item 2: an AlertProvider whose Secret holds the address (with a secret path and query), a
/// token and a proxy with a password; its alerts fail (through the dead proxy, and at an
/// endpoint answering 500 that echoes the path back). No Event and no log line holds any of
/// them, while the Events still say which provider failed and why.
#[tokio::test]
async fn secret_sourced_values_never_reach_events_or_logs() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-secret").await;
    // Echoes the path and query it was called with, as some chat services do.
    let server = Server::start(|seen| {
        respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"no such hook {}\"}}", seen.path),
        )
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = server.url("/services/T000/B000/SECRETPATH?token=SECRETQ");
    secret(
        &env,
        &ns.name,
        "proxied",
        json!({"address": address, "token": "SECRETTOKEN",
            "proxy": format!("http://proxyuser:SECRETPROXY@127.0.0.1:{closed}")}),
    )
    .await;
    secret(
        &env,
        &ns.name,
        "direct",
        json!({"address": address, "token": "SECRETTOKEN"}),
    )
    .await;
    for name in ["proxied", "direct"] {
        alert_provider(
            &env,
            &ns.name,
            name,
            json!({"type": "slack", "secretRef": {"name": name}}),
        )
        .await;
    }
    create_target(&env, &ns.name).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    create_canary(
        &env,
        &ns.name,
        json!({
            "interval": "1s", "threshold": 2, "iterations": 2,
            "alerts": [
                {"name": "via-proxy", "severity": "info", "providerRef": {"name": "proxied"}},
                {"name": "direct", "severity": "info", "providerRef": {"name": "direct"}},
            ],
        }),
    )
    .await;
    let proxied = event_having(
        &env,
        &ns.name,
        &["Alert via-proxy not sent", "AlertProvider proxied"],
        &ctl,
    )
    .await;
    let direct = event_having(
        &env,
        &ns.name,
        &["Alert direct not sent", "AlertProvider direct", "500"],
        &ctl,
    )
    .await;
    assert!(server.hits("/services/") >= 1, "the direct alert was sent");
    // The log line for the same failures is written just before the Event.
    eventually(
        Duration::from_secs(10),
        "the alert failures in the log",
        || async { ctl.log_text().contains("alert not sent").then_some(()) },
    )
    .await;
    let events = all_event_messages(&env, &ns.name).await;
    let log = ctl.log_text();
    for secret in ["SECRETPATH", "SECRETQ", "SECRETTOKEN", "SECRETPROXY"] {
        for event in &events {
            assert!(!event.contains(secret), "{secret} in an Event: {event}");
        }
        for line in log.lines() {
            assert!(!line.contains(secret), "{secret} in the log: {line}");
        }
    }
    println!("{proxied}\n{direct}");
}

/// Item 3: a Canary in namespace A naming AlertProviders in namespace B (refused: B's server
/// hears nothing, one Warning per generation names the field) and in the configured global
/// namespace G (used).
#[tokio::test]
async fn alert_providers_only_from_the_own_and_the_global_namespace() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let (a, b, g) = (
        env.namespace("alerts-a").await,
        env.namespace("alerts-b").await,
        env.namespace("alerts-global").await,
    );
    let server = Server::start(|_| respond(StatusCode::OK, "{}")).await;
    secret(
        &env,
        &b.name,
        "team-b",
        json!({"address": server.url("/foreign"), "token": "team-b-token"}),
    )
    .await;
    alert_provider(
        &env,
        &b.name,
        "team-b",
        json!({"type": "webhook", "secretRef": {"name": "team-b"}}),
    )
    .await;
    alert_provider(
        &env,
        &g.name,
        "shared",
        json!({"type": "webhook", "address": server.url("/global")}),
    )
    .await;
    create_target(&env, &a.name).await;
    let ctl =
        ControllerProcess::start_with(&env, &a.name, &["--alert-provider-namespace", &g.name])
            .await;
    create_canary(
        &env,
        &a.name,
        json!({
            "interval": "1s", "threshold": 2, "iterations": 2,
            "alerts": [
                {"name": "foreign", "severity": "info",
                 "providerRef": {"name": "team-b", "namespace": b.name}},
                {"name": "global", "severity": "info",
                 "providerRef": {"name": "shared", "namespace": g.name}},
            ],
        }),
    )
    .await;
    wait_phase(&env, &a.name, CanaryPhase::Initialized, &ctl).await;
    set_image(&env, &a.name, "podinfo:6.0.1").await;
    wait_phase(&env, &a.name, CanaryPhase::Succeeded, &ctl).await;
    // Initialised, new revision, promoted: at least three alerts to each subscription.
    eventually(
        Duration::from_secs(30),
        "three alerts through the global provider",
        || async { (server.hits("/global") >= 3).then_some(()) },
    )
    .await;
    assert_eq!(
        server.hits("/foreign"),
        0,
        "nothing sent with namespace {}'s provider",
        b.name
    );
    let field = "spec.analysis.alerts[0].providerRef.namespace";
    let warning = event_having(&env, &a.name, &["Warning", field], &ctl).await;
    assert!(
        warning.contains(&b.name) && warning.contains(&g.name),
        "names the refused and the allowed namespaces: {warning}"
    );
    // Give a late duplicate time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warnings: Vec<String> = all_event_messages(&env, &a.name)
        .await
        .into_iter()
        .filter(|e| e.contains(field))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one Warning per generation: {warnings:#?}"
    );
    for event in all_event_messages(&env, &a.name).await {
        assert!(!event.contains("/foreign"), "B's address in A: {event}");
    }
}

/// A web metric's AnalysisRun against `url`, with `headers`.
fn web_run(name: &str, url: &str, headers: Value) -> Value {
    json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": name},
        "spec": {"metrics": [{"name": "web", "successCondition": "result == 1",
            "consecutiveErrorLimit": 0,
            "provider": {"web": {"url": url, "jsonPath": "{$.ok}", "headers": headers}}}]}})
}

/// Two servers: `second` answers `{"ok": 1}`; `first` redirects every request to `second`
/// (another origin: another port) with a 302.
async fn redirecting_servers() -> (Server, Server) {
    let second = Server::start(|_| respond(StatusCode::OK, "{\"ok\": 1}")).await;
    let target = second.url("/landing?from=first");
    let first = Server::start(move |_| {
        axum::response::Response::builder()
            .status(StatusCode::FOUND)
            .header("location", target.as_str())
            .body(Body::empty())
            .unwrap()
    })
    .await;
    (first, second)
}

fn secret_headers() -> Value {
    json!([{"key": "X-Api-Key", "value": "k3y"}, {"key": "Authorization", "value": "Bearer t0k"}])
}

/// Item 7b, default: a web metric and a Canary webhook answered with a 302 to another server;
/// the redirect is not followed (the second server hears nothing) and the failure says so.
#[tokio::test]
async fn redirects_are_not_followed_by_default() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("redirect-off").await;
    let (first, second) = redirecting_servers().await;
    create_target(&env, &ns.name).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    create::<AnalysisRun>(
        &env,
        &ns.name,
        web_run("plain", &first.url("/plain"), json!([])),
    )
    .await;
    create::<AnalysisRun>(
        &env,
        &ns.name,
        web_run("headers", &first.url("/headers"), secret_headers()),
    )
    .await;
    create_canary(
        &env,
        &ns.name,
        json!({
            "interval": "1s", "threshold": 1, "iterations": 2,
            // Also: a timeout above the 5m maximum is cut, with a Warning naming the field.
            "webhooks": [{"name": "gate", "type": "pre-rollout", "url": first.url("/hook"),
                "timeout": "10m"}],
        }),
    )
    .await;
    for run in ["plain", "headers"] {
        let message = measurement_message(&env, &ns.name, run, "web", "HTTP 302", &ctl).await;
        assert!(message.contains("not followed"), "{message}");
    }
    wait_phase(&env, &ns.name, CanaryPhase::Initialized, &ctl).await;
    set_image(&env, &ns.name, "podinfo:6.0.1").await;
    wait_phase(&env, &ns.name, CanaryPhase::Failed, &ctl).await;
    let hook = event_having(&env, &ns.name, &["/hook answered HTTP 302"], &ctl).await;
    assert!(hook.contains("not followed"), "{hook}");
    let timeout = event_having(
        &env,
        &ns.name,
        &["Warning", "spec.analysis.webhooks[0].timeout", "300s"],
        &ctl,
    )
    .await;
    println!("{timeout}");
    assert!(first.hits("/hook") >= 1 && first.hits("/plain") >= 1 && first.hits("/headers") >= 1);
    assert_eq!(
        second.seen().len(),
        0,
        "the redirect target heard: {:#?}",
        second.seen()
    );
}

/// Item 7b, `--http-follow-redirects`: a request without custom headers follows the redirect to
/// another origin with no `Referer`; one with custom headers or credentials is not followed
/// there, so they never reach the other origin.
#[tokio::test]
async fn followed_redirects_carry_no_referer_and_no_headers_across_origins() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("redirect-on").await;
    let (first, second) = redirecting_servers().await;
    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--http-follow-redirects"]).await;
    create::<AnalysisRun>(
        &env,
        &ns.name,
        web_run("plain", &first.url("/plain?secret=SECRETQ"), json!([])),
    )
    .await;
    create::<AnalysisRun>(
        &env,
        &ns.name,
        web_run("headers", &first.url("/headers"), secret_headers()),
    )
    .await;
    let message = measurement_message(&env, &ns.name, "headers", "web", "HTTP 302", &ctl).await;
    assert!(message.contains("not followed"), "{message}");
    let landed = eventually(Duration::from_secs(60), "the followed redirect", || async {
        second.seen().into_iter().next()
    })
    .await;
    assert_eq!(landed.path, "/landing?from=first");
    assert_eq!(landed.method, Method::GET);
    assert!(first.hits("/headers") >= 1, "the headers run was measured");
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), &ns.name);
    eventually(Duration::from_secs(60), "the plain run to pass", || async {
        let run = api.get("plain").await.ok()?;
        (run.status?.phase? == AnalysisPhase::Successful).then_some(())
    })
    .await;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for seen in second.seen() {
        for (name, value) in &seen.headers {
            headers
                .entry(name.to_string())
                .or_default()
                .push(value.to_str().unwrap_or_default().to_string());
        }
    }
    for forbidden in ["referer", "x-api-key", "authorization"] {
        assert!(
            !headers.contains_key(forbidden),
            "{forbidden} reached the other origin: {headers:#?}"
        );
    }
}
