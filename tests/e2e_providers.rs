//! The Graphite and InfluxDB providers against the real servers of the test environment
//! (`tests/env/metricstores`: Debian's graphite-carbon + graphite-web and InfluxDB 1.6), for both
//! APIs: an AnalysisRun whose metrics pass and fail on points the test wrote, and Canaries whose
//! MetricTemplates of those types promote one revision and roll another back.
//!
//! InfluxDB 1.6 has no Flux, so the real server answers InfluxQL; Flux is covered by the unit
//! tests of `src/analysis/influxdb.rs` against a recorded answer shape.
//!
//! Datadog has no server to run: a fake on 127.0.0.1 ([`FakeDatadog`]) answers as Datadog's API
//! docs describe (v1 `/api/v1/query`, v2 `/api/v2/query/scalar`), from the answers recorded in
//! `tests/data/`, checking both key headers (403 otherwise) and rate limiting with a 429; New
//! Relic likewise, a fake NerdGraph (`POST /graphql`, [`fake_nerdgraph`]).

mod common;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::analysis::{phase, status_text, wait_completed};
use common::controller::ControllerProcess;
use common::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun, MetricResult};
use sluice::api::flagger::canary::{Canary, CanaryPhase};

/// The address of one metric store, from the environment or the env file `tests/env/up` wrote;
/// `None` after saying "skipped" (a panic under `CI=true`) when the environment has none.
fn store(key: &str) -> Option<String> {
    let from_file = || {
        let text = std::fs::read_to_string(common::env_file()).ok()?;
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(&format!("export {key}="))?;
            Some(rest.trim_matches('\'').to_string())
        })
    };
    let found = std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(from_file);
    if found.is_none() {
        let msg = format!(
            "skipped: no {key} in the test env (tests/env/metricstores; SLUICE_METRIC_STORES=0?)"
        );
        assert!(!common::is_ci(), "CI=true but {msg}");
        eprintln!("{msg}");
    }
    found
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Writes `path value` at a few seconds ago to carbon, and waits until graphite-web serves it.
async fn graphite_points(carbon: &str, graphite: &str, points: &[(&str, f64)]) {
    let at = now() - 5;
    let mut stream = std::net::TcpStream::connect(carbon).expect("connecting to carbon");
    for (path, value) in points {
        writeln!(stream, "{path} {value} {at}").expect("writing to carbon");
    }
    drop(stream);
    for (path, value) in points {
        let url = format!("{graphite}/render?target={path}&from=-10min&format=json");
        eventually(
            Duration::from_secs(60),
            &format!("{path} served by graphite-web"),
            || {
                let url = url.clone();
                async move {
                    let body: serde_json::Value =
                        reqwest::get(&url).await.ok()?.json().await.ok()?;
                    let points = body.get(0)?.get("datapoints")?.as_array()?.clone();
                    points
                        .iter()
                        .any(|p| p.get(0).and_then(serde_json::Value::as_f64) == Some(*value))
                        .then_some(())
                }
            },
        )
        .await;
    }
}

/// Creates database `db` and writes `requests,app=<app> rate=<value>` points to InfluxDB.
async fn influx_points(influx: &str, db: &str, points: &[(&str, f64)]) {
    let client = reqwest::Client::new();
    let create = client
        .post(format!("{influx}/query"))
        .form(&[("q", format!("CREATE DATABASE \"{db}\""))])
        .send()
        .await
        .expect("creating the InfluxDB database");
    assert!(create.status().is_success(), "{:?}", create.text().await);
    let lines: Vec<String> = points
        .iter()
        .map(|(app, value)| format!("requests,app={app} rate={value} {}", now() - 5))
        .collect();
    let write = client
        .post(format!("{influx}/write?db={db}&precision=s"))
        .body(lines.join("\n"))
        .send()
        .await
        .expect("writing to InfluxDB");
    assert_eq!(write.status().as_u16(), 204, "{:?}", write.text().await);
}

fn result<'a>(run: &'a AnalysisRun, name: &str) -> &'a MetricResult {
    run.status
        .as_ref()
        .and_then(|s| s.metric_results.iter().find(|m| m.name == name))
        .unwrap_or_else(|| panic!("no result for metric {name}: {}", status_text(run)))
}

/// A run with metrics `ok` and `bad`, each `provider` (a JSON object) with its `query`, both
/// succeeding while `result[0] < 0.05`.
fn two_metric_run(
    name: &str,
    provider: &str,
    ok: serde_json::Value,
    bad: serde_json::Value,
) -> AnalysisRun {
    let metric = |metric: &str, settings: serde_json::Value| {
        json!({"name": metric, "successCondition": "result[0] < 0.05",
            "provider": {provider: settings}})
    };
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": name},
        "spec": {"metrics": [metric("ok", ok), metric("bad", bad)]},
    }))
    .expect("AnalysisRun JSON")
}

/// Checks that metric `ok` passed and `bad` failed, each with the value written and the exact
/// query recorded.
fn assert_ok_and_bad(run: &AnalysisRun, queries: (&str, &str)) {
    assert_eq!(phase(run), AnalysisPhase::Failed, "{}", status_text(run));
    for (name, expected, value, query) in [
        ("ok", AnalysisPhase::Successful, "0.01", queries.0),
        ("bad", AnalysisPhase::Failed, "0.5", queries.1),
    ] {
        let m = result(run, name);
        assert_eq!(m.phase, expected, "{}", status_text(run));
        let measurement = m.measurements.last().expect("a measurement");
        assert_eq!(
            measurement.value.as_deref(),
            Some(format!("[{value}]").as_str()),
            "{}",
            status_text(run)
        );
        assert_eq!(
            measurement.query.as_deref(),
            Some(query),
            "{}",
            status_text(run)
        );
    }
}

#[tokio::test]
async fn graphite_analysis_run_passes_and_fails_on_real_points() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let (Some(graphite), Some(carbon)) =
        (store("SLUICE_GRAPHITE_URL"), store("SLUICE_CARBON_ADDR"))
    else {
        return;
    };
    let ns = env.namespace("prov-graphite").await;
    let (ok, bad) = (
        format!("sluice.{}.ok", ns.name),
        format!("sluice.{}.bad", ns.name),
    );
    graphite_points(&carbon, &graphite, &[(&ok, 0.01), (&bad, 0.5)]).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let query = |path: &str| format!("target={path}&from=-10min");
    let run = two_metric_run(
        "graphite",
        "graphite",
        json!({"address": graphite, "query": query(&ok)}),
        json!({"address": graphite, "query": query(&bad)}),
    );
    let name = common::analysis::create_run(&env, &ns.name, run).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_ok_and_bad(&run, (&query(&ok), &query(&bad)));
}

#[tokio::test]
async fn influxdb_analysis_run_reads_its_profile_secret_and_passes_and_fails_on_real_points() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(influx) = store("SLUICE_INFLUXDB_URL") else {
        return;
    };
    let ns = env.namespace("prov-influx").await;
    let db = ns.name.replace('-', "_");
    influx_points(&influx, &db, &[("ok", 0.01), ("bad", 0.5)]).await;
    // Argo's profile Secret: address, authToken and org (the test server has auth off).
    env.create(
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influx-profile"},
            "stringData": {"address": influx, "authToken": "t0ken-never-shown", "org": "sluice"}}),
    )
    .await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let query = |app: &str| {
        format!("SELECT last(rate) FROM \"{db}\".\"autogen\".\"requests\" WHERE app = '{app}'")
    };
    let run = two_metric_run(
        "influx",
        "influxdb",
        json!({"profile": "influx-profile", "query": query("ok")}),
        json!({"profile": "influx-profile", "query": query("bad")}),
    );
    let name = common::analysis::create_run(&env, &ns.name, run).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_ok_and_bad(&run, (&query("ok"), &query("bad")));
    let text = serde_json::to_string(&run.status).unwrap_or_default();
    assert!(!text.contains("t0ken-never-shown"), "{text}");
}

/// Two Canaries in one namespace, `good` and `bad`, each checking metric `errors` through the
/// MetricTemplate of its name (`template(app)` is that template's `spec`); `good` must be
/// promoted and `bad` rolled back, with the query and the value in the Halt Event. Returns the
/// controller (still running), for its log.
async fn canaries_promote_good_and_roll_back_bad(
    env: &TestEnv,
    ns: &str,
    template: impl Fn(&str) -> serde_json::Value,
    bad_query: &str,
) -> ControllerProcess {
    let ctl = ControllerProcess::start(env, ns).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    for app in ["good", "bad"] {
        env.create(
            ns,
            json!({"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
                "metadata": {"name": app}, "spec": template(app)}),
        )
        .await;
        deployments
            .create(
                &PostParams::default(),
                &common::canary::target(app, 1, "podinfo:6.0.0", 9898),
            )
            .await
            .expect("creating a target");
        let canary: Canary = serde_json::from_value(common::canary::kubernetes(
            app,
            Some(60),
            json!({"interval": "1s", "threshold": 2, "iterations": 2,
                "metrics": [{"name": "errors", "templateRef": {"name": app},
                    "thresholdRange": {"max": 0.05}}]}),
        ))
        .expect("Canary JSON");
        canaries
            .create(&PostParams::default(), &canary)
            .await
            .expect("creating a Canary");
    }
    let wait = |app: &'static str, want: CanaryPhase| {
        let canaries = canaries.clone();
        let ctl = &ctl;
        async move {
            let phase = || async {
                let c = canaries.get(app).await.ok()?;
                (c.status?.phase? == want).then_some(())
            };
            if tokio::time::timeout(Duration::from_secs(120), async {
                while phase().await.is_none() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
            .await
            .is_err()
            {
                let c = canaries.get(app).await.ok();
                panic!(
                    "Canary {app} not {want:?}: {:?}\ncontroller log:\n{}",
                    c.and_then(|c| c.status),
                    ctl.log_text()
                );
            }
        }
    };
    for app in ["good", "bad"] {
        wait(app, CanaryPhase::Initialized).await;
        deployments
            .patch(
                app,
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
            )
            .await
            .expect("updating a target's image");
    }
    wait("good", CanaryPhase::Succeeded).await;
    wait("bad", CanaryPhase::Failed).await;
    let events = common::events::canary_messages(&env.client, ns).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Halt advancement errors 0.50 > 0.05")
                && e.ends_with(&format!("query: {bad_query}"))),
        "the Halt Event names the value and the exact query: {events:#?}"
    );
    ctl
}

#[tokio::test]
async fn graphite_metric_templates_promote_a_good_canary_and_roll_back_a_bad_one() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let (Some(graphite), Some(carbon)) =
        (store("SLUICE_GRAPHITE_URL"), store("SLUICE_CARBON_ADDR"))
    else {
        return;
    };
    let ns = env.namespace("prov-graphite-canary").await;
    let path = |app: &str| format!("sluice.{}.{app}", ns.name);
    graphite_points(
        &carbon,
        &graphite,
        &[(&path("good"), 0.01), (&path("bad"), 0.5)],
    )
    .await;
    // The template renders `{{ namespace }}` and `{{ target }}` as Flagger does.
    let template = |_: &str| {
        json!({"provider": {"type": "graphite", "address": graphite},
            "query": "target=sluice.{{ namespace }}.{{ target }}&from=-1h"})
    };
    let bad_query = format!("target={}&from=-1h", path("bad"));
    canaries_promote_good_and_roll_back_bad(&env, &ns.name, template, &bad_query).await;
}

#[tokio::test]
async fn influxdb_metric_templates_with_a_secret_promote_a_good_canary_and_roll_back_a_bad_one() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(influx) = store("SLUICE_INFLUXDB_URL") else {
        return;
    };
    let ns = env.namespace("prov-influx-canary").await;
    let db = ns.name.replace('-', "_");
    influx_points(&influx, &db, &[("good", 0.01), ("bad", 0.5)]).await;
    // Flagger's secretRef keys for influxdb: token and org.
    env.create(
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influx"},
            "stringData": {"token": "t0ken-never-shown", "org": "sluice"}}),
    )
    .await;
    let query = |app: &str| {
        format!("SELECT last(rate) FROM \"{db}\".\"autogen\".\"requests\" WHERE app = '{app}'")
    };
    let template = |app: &str| {
        json!({"provider": {"type": "influxdb", "address": influx, "secretRef": {"name": "influx"}},
            "query": query(app)})
    };
    canaries_promote_good_and_roll_back_bad(&env, &ns.name, template, &query("bad")).await;
    let events = common::events::canary_messages(&env.client, &ns.name).await;
    assert!(
        !format!("{events:?}").contains("t0ken-never-shown"),
        "{events:#?}"
    );
}

/// A Graphite MetricTemplate without `address` is refused before the Canary's run starts, naming
/// the field; nothing is created for the Canary.
#[tokio::test]
async fn a_graphite_template_without_address_is_refused_before_the_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("prov-no-address").await;
    env.create(
        &ns.name,
        json!({"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "errors"},
            "spec": {"provider": {"type": "graphite"}, "query": "target=x"}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &common::canary::target("app", 1, "podinfo:6.0.0", 9898),
        )
        .await
        .expect("creating the target");
    let _ctl = ControllerProcess::start(&env, &ns.name).await;
    let canary: Canary = serde_json::from_value(common::canary::kubernetes(
        "app",
        Some(60),
        json!({"interval": "1s", "threshold": 2, "iterations": 2,
            "metrics": [{"name": "errors", "templateRef": {"name": "errors"},
                "thresholdRange": {"max": 0.05}}]}),
    ))
    .expect("Canary JSON");
    Api::<Canary>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &canary)
        .await
        .expect("creating the Canary");
    let message = eventually(Duration::from_secs(60), "the refusal Event", || async {
        common::events::canary_messages(&env.client, &ns.name)
            .await
            .into_iter()
            .find(|m| m.contains("spec.provider.address is required"))
    })
    .await;
    assert!(
        message.contains("spec.analysis.metrics[0].templateRef"),
        "{message}"
    );
    assert!(
        deployments
            .get_opt("app-primary")
            .await
            .expect("reading")
            .is_none(),
        "nothing is created for a refused Canary"
    );
}

/// The keys the fake Datadog accepts; they must never appear in a status, an Event or a log.
const DD_API_KEY: &str = "dd-api-never-shown";
const DD_APP_KEY: &str = "dd-app-never-shown";

/// A fake Datadog API: checks `DD-API-KEY` / `DD-APPLICATION-KEY` (403 with Datadog's error body
/// otherwise), answers 429 with `Retry-After: 7` to a query naming `limited`, and otherwise the
/// recorded answer of the endpoint with the value 0.5 for a query naming `bad`, else 0.01.
struct FakeDatadog {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeDatadog {
    async fn start() -> FakeDatadog {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                };
                let keys_ok = header("dd-api-key") == DD_API_KEY
                    && header("dd-application-key") == DD_APP_KEY;
                let (queries, recorded, pointer) = match (parts.method.as_str(), parts.uri.path()) {
                    ("GET", "/api/v1/query") => {
                        let params: std::collections::HashMap<String, String> =
                            reqwest::Url::parse(&format!("http://fake{}", parts.uri))
                                .expect("request URL")
                                .query_pairs()
                                .into_owned()
                                .collect();
                        let window = params
                            .get("to")
                            .and_then(|t| t.parse::<i64>().ok())
                            .zip(params.get("from").and_then(|f| f.parse::<i64>().ok()));
                        assert_eq!(window.map(|(to, from)| to - from), Some(300), "{params:?}");
                        (
                            params.get("query").cloned().unwrap_or_default(),
                            include_str!("data/datadog-v1-query.json"),
                            "/series/0/pointlist/2/1",
                        )
                    }
                    ("POST", "/api/v2/query/scalar") => {
                        let request: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        (
                            request.to_string(),
                            include_str!("data/datadog-v2-scalar.json"),
                            "/data/attributes/columns/0/values/0",
                        )
                    }
                    _ => {
                        return (StatusCode::NOT_FOUND, "{\"errors\":[\"Not found\"]}")
                            .into_response();
                    }
                };
                log.lock()
                    .unwrap()
                    .push(format!("{} {queries}", parts.uri.path()));
                if !keys_ok {
                    return (StatusCode::FORBIDDEN, "{\"errors\":[\"Forbidden\"]}").into_response();
                }
                if queries.contains("limited") {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "7")],
                        "{\"errors\":[\"Rate limit exceeded\"]}",
                    )
                        .into_response();
                }
                let mut answer: serde_json::Value =
                    serde_json::from_str(recorded).expect("recorded answer");
                *answer.pointer_mut(pointer).expect("the recorded value") =
                    json!(if queries.contains("bad") { 0.5 } else { 0.01 });
                ([("content-type", "application/json")], answer.to_string()).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDatadog { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// No key in the run's status, the namespace's Events or the controller's log.
async fn assert_no_keys(env: &TestEnv, ns: &str, shown: &str, ctl: &ControllerProcess) {
    let events = common::events::canary_messages(&env.client, ns).await;
    let all: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(env.client.clone(), ns);
    let events = format!(
        "{events:?}{:?}",
        all.list(&Default::default())
            .await
            .expect("listing Events")
            .items
    );
    for key in [DD_API_KEY, DD_APP_KEY] {
        for (what, text) in [
            ("status", shown),
            ("Events", &events),
            ("log", &ctl.log_text()),
        ] {
            assert!(!text.contains(key), "a Datadog key in the {what}: {text}");
        }
    }
}

/// An AnalysisRun through the fake Datadog with Argo's keys Secret (`datadog`: api-key, app-key,
/// address): a v1 query passes, a v2 formula fails, a 429 and a 403 are Errors (never Failed),
/// each with the query recorded, and the keys are shown nowhere.
#[tokio::test]
async fn datadog_analysis_run_passes_fails_and_errors_against_a_fake_api() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let dd = FakeDatadog::start().await;
    let ns = env.namespace("prov-datadog").await;
    for (name, api, app) in [
        ("datadog", DD_API_KEY, DD_APP_KEY),
        ("dd-wrong", DD_API_KEY, "wrong"),
    ] {
        env.create(
            &ns.name,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": {"api-key": api, "app-key": app, "address": dd.url}}),
        )
        .await;
    }
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let metric = |name: &str, settings: serde_json::Value| {
        json!({"name": name, "successCondition": "result < 0.05", "consecutiveErrorLimit": 0,
            "provider": {"datadog": settings}})
    };
    let run: AnalysisRun = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": "datadog"},
        "spec": {"metrics": [
            metric("ok", json!({"query": "avg:errors{app:ok}"})),
            metric("bad", json!({"apiVersion": "v2", "aggregator": "sum", "formula": "a / b",
                "queries": {"a": "sum:errors{app:bad}", "b": "sum:requests{app:bad}"}})),
            metric("limited", json!({"query": "avg:errors{app:limited}"})),
            metric("denied", json!({"query": "avg:errors{app:ok}",
                "secretRef": {"name": "dd-wrong", "namespaced": true}})),
        ]},
    }))
    .expect("AnalysisRun JSON");
    let name = common::analysis::create_run(&env, &ns.name, run).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(90), &ctl).await;
    let text = status_text(&run);
    for (metric, want, value, query) in [
        (
            "ok",
            AnalysisPhase::Successful,
            Some("0.01"),
            "avg:errors{app:ok}",
        ),
        (
            "bad",
            AnalysisPhase::Failed,
            Some("0.5"),
            "a: sum:errors{app:bad}; b: sum:requests{app:bad}; formula: a / b",
        ),
        (
            "limited",
            AnalysisPhase::Error,
            None,
            "avg:errors{app:limited}",
        ),
        ("denied", AnalysisPhase::Error, None, "avg:errors{app:ok}"),
    ] {
        let m = result(&run, metric);
        assert_eq!(m.phase, want, "{metric}: {text}");
        let measurement = m.measurements.last().expect("a measurement");
        assert_eq!(measurement.value.as_deref(), value, "{metric}: {text}");
        assert_eq!(
            measurement.query.as_deref(),
            Some(query),
            "{metric}: {text}"
        );
    }
    let message = |metric: &str| {
        result(&run, metric)
            .measurements
            .last()
            .and_then(|m| m.message.clone())
            .unwrap_or_default()
    };
    assert!(
        message("limited").contains("429") && message("limited").contains("retry after 7 s"),
        "{text}"
    );
    assert!(
        message("denied").contains("403") && message("denied").contains("Forbidden"),
        "{text}"
    );
    let seen = dd.seen();
    assert!(
        seen.iter().any(|r| r.starts_with("/api/v1/query ")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.starts_with("/api/v2/query/scalar ")),
        "{seen:?}"
    );
    let status = serde_json::to_string(&run.status).unwrap_or_default();
    assert_no_keys(&env, &ns.name, &status, &ctl).await;
}

/// Canaries with Flagger's datadog MetricTemplate (`secretRef`: datadog_api_key,
/// datadog_application_key) against the fake Datadog: the good one is promoted, the bad one
/// rolled back with the query in the Halt Event, and the keys are shown nowhere.
#[tokio::test]
async fn datadog_metric_templates_promote_a_good_canary_and_roll_back_a_bad_one() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let dd = FakeDatadog::start().await;
    let ns = env.namespace("prov-datadog-canary").await;
    env.create(
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dd"},
            "stringData": {"datadog_api_key": DD_API_KEY, "datadog_application_key": DD_APP_KEY}}),
    )
    .await;
    let template = |_: &str| {
        json!({"provider": {"type": "datadog", "address": dd.url, "secretRef": {"name": "dd"}},
            "query": "avg:errors{app:{{ target }}}"})
    };
    let ctl =
        canaries_promote_good_and_roll_back_bad(&env, &ns.name, template, "avg:errors{app:bad}")
            .await;
    assert!(
        dd.seen()
            .iter()
            .any(|r| r == "/api/v1/query avg:errors{app:good}"),
        "{:?}",
        dd.seen()
    );
    assert_no_keys(&env, &ns.name, "", &ctl).await;
}

/// The key and account the fake NerdGraph accepts; the key must never be shown.
const NR_KEY: &str = "NRAK-never-shown";
const NR_ACCOUNT: i64 = 1_234_567;

/// A fake NerdGraph (`POST /graphql`): checks `API-Key` (a GraphQL error otherwise, as NerdGraph
/// answers), that the NRQL comes as Argo sends it (`nrql(query: $query …)` with the account id),
/// and answers the recorded result with `successRate` 80 for an NRQL naming `bad`, else 99.5.
async fn fake_nerdgraph() -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let key_ok = parts.headers.get("api-key").and_then(|v| v.to_str().ok()) == Some(NR_KEY);
        let shaped = parts.method == "POST"
            && parts.uri.path() == "/graphql"
            && request["query"]
                .as_str()
                .is_some_and(|q| q.contains("nrql(query: $query"))
            && request["variables"]["accountId"] == NR_ACCOUNT;
        let answer = if !shaped {
            json!({"errors": [{"message": "unexpected request"}]})
        } else if !key_ok {
            json!({"errors": [{"message": "Invalid API key",
                "extensions": {"errorClass": "UNAUTHORIZED"}}]})
        } else {
            let nrql = request["variables"]["query"].as_str().unwrap_or_default();
            let mut answer: serde_json::Value =
                serde_json::from_str(include_str!("data/newrelic-nerdgraph-nrql.json"))
                    .expect("recorded answer");
            answer["data"]["actor"]["account"]["nrql"]["results"][0]["successRate"] =
                json!(if nrql.contains("bad") { 80.0 } else { 99.5 });
            answer
        };
        ([("content-type", "application/json")], answer.to_string()).into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let url = format!("http://{}/graphql", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// An AnalysisRun through the fake NerdGraph with Argo's profile Secret (`newrelic`:
/// personal-api-key, account-id, base-url-nerdgraph): an NRQL row passes, another fails, a wrong
/// key is an Error with NerdGraph's message, and the key is shown nowhere.
#[tokio::test]
async fn newrelic_analysis_run_passes_fails_and_errors_against_a_fake_nerdgraph() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let nerdgraph = fake_nerdgraph().await;
    let ns = env.namespace("prov-newrelic").await;
    for (name, key) in [("newrelic", NR_KEY), ("nr-wrong", "NRAK-wrong")] {
        env.create(
            &ns.name,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": {"personal-api-key": key, "account-id": NR_ACCOUNT.to_string(),
                    "base-url-nerdgraph": nerdgraph}}),
        )
        .await;
    }
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let nrql = |app: &str| {
        format!(
            "FROM Transaction SELECT percentage(count(*), WHERE httpResponseCode != 500) as successRate WHERE appName = '{app}'"
        )
    };
    let metric = |name: &str, settings: serde_json::Value| {
        json!({"name": name, "successCondition": "result.successRate >= 95",
            "consecutiveErrorLimit": 0, "provider": {"newRelic": settings}})
    };
    let run: AnalysisRun = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
        "metadata": {"name": "newrelic"},
        "spec": {"metrics": [
            metric("ok", json!({"query": nrql("ok")})),
            metric("bad", json!({"query": nrql("bad")})),
            metric("denied", json!({"profile": "nr-wrong", "query": nrql("ok")})),
        ]},
    }))
    .expect("AnalysisRun JSON");
    let name = common::analysis::create_run(&env, &ns.name, run).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(90), &ctl).await;
    let text = status_text(&run);
    for (metric, want, value) in [
        ("ok", AnalysisPhase::Successful, Some("99.5")),
        ("bad", AnalysisPhase::Failed, Some("80")),
        ("denied", AnalysisPhase::Error, None),
    ] {
        let m = result(&run, metric);
        assert_eq!(m.phase, want, "{metric}: {text}");
        let measurement = m.measurements.last().expect("a measurement");
        match value {
            Some(v) => assert!(
                measurement.value.as_deref().is_some_and(|s| s.contains(v)),
                "{metric}: {text}"
            ),
            None => assert!(
                measurement
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("Invalid API key")),
                "{metric}: {text}"
            ),
        }
        let query = if metric == "bad" {
            nrql("bad")
        } else {
            nrql("ok")
        };
        assert_eq!(measurement.query.as_deref(), Some(query.as_str()), "{text}");
    }
    let status = serde_json::to_string(&run.status).unwrap_or_default();
    let log = ctl.log_text();
    for text in [&status, &log] {
        assert!(!text.contains(NR_KEY), "the New Relic key shown: {text}");
    }
}
