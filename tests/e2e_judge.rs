//! The built-in statistical judge (`provider.judge`) on the real cluster: a Rollout's analysis
//! step compares the canary's series against the stable's, both served by a test exporter that
//! the environment's Prometheus scrapes every second (a latency gauge cycling through a fixed set
//! of values, and request / error counters). An equal canary is promoted; a degraded one (latency
//! ×1.5, twenty times the errors) is aborted, and the AnalysisRun explains per metric why.
//!
//! Each test gets its own namespace and its own controller limited to it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::exporter::Exporter;
use common::rollouts::{Fixture, fixture};
use common::{TestEnv, eventually};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun, AnalysisTemplate};
use sluice::api::argo::rollout::{Rollout, RolloutPhase};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Latencies both versions serve in turn (ms); the degraded canary serves them ×1.5.
const LATENCIES: [f64; 10] = [
    90.0, 95.0, 98.0, 100.0, 101.0, 103.0, 105.0, 108.0, 110.0, 115.0,
];
/// The window the judge compares, and its resolution.
const LOOKBACK_SECONDS: u64 = 30;

/// The exporter with the two versions' series, changing every 700 ms until dropped.
struct Traffic {
    exporter: Arc<Exporter>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Traffic {
    async fn start(env: &TestEnv, prefix: &str, degraded: bool) -> Traffic {
        let exporter = Arc::new(Exporter::start(env, prefix).await);
        let id = exporter.id.clone();
        let (canary_errors, canary_factor) = if degraded { (20.0, 1.5) } else { (1.0, 1.0) };
        for (version, errors) in [("canary", canary_errors), ("stable", 1.0)] {
            exporter.count(&requests(&id, version, "200"), 100.0);
            exporter.count(&requests(&id, version, "500"), errors);
        }
        let served = exporter.clone();
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            loop {
                // Different phases, the same values: equal distributions, unequal series.
                served.set("canary", LATENCIES[i % 10] * canary_factor);
                served.set("stable", LATENCIES[(i + 3) % 10]);
                i += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        });
        let traffic = Traffic { exporter, task };
        traffic.wait_for_history(env).await;
        traffic
    }

    /// Waits until Prometheus holds a full window of both series (plus a little).
    async fn wait_for_history(&self, env: &TestEnv) {
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1/query", env.prometheus_url);
        let query = format!(
            "min(count_over_time({}[{}s]))",
            self.exporter
                .selector("canary")
                .replace("series=\"canary\"", "series=~\"canary|stable\""),
            LOOKBACK_SECONDS + 5
        );
        eventually(
            Duration::from_secs(90),
            "Prometheus to hold a window of both series",
            || {
                let (http, url, query) = (http.clone(), url.clone(), query.clone());
                async move {
                    let body: Value = http
                        .get(&url)
                        .query(&[("query", query.as_str())])
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    let n: f64 = body["data"]["result"][0]["value"][1]
                        .as_str()?
                        .parse()
                        .ok()?;
                    // Scraped every second: most of the window's 35 scrapes are there.
                    (n >= 30.0).then_some(())
                }
            },
        )
        .await;
    }

    fn selector(&self, series: &str) -> String {
        self.exporter.selector(series)
    }

    fn id(&self) -> &str {
        &self.exporter.id
    }
}

fn requests(id: &str, version: &str, code: &str) -> String {
    format!("judge_requests_total{{test=\"{id}\",version=\"{version}\",code=\"{code}\"}}")
}

/// The judge template: latency (Mann-Whitney, increase is bad) and errors (proportion).
fn judge_template(env: &TestEnv, traffic: &Traffic) -> Value {
    let id = traffic.id();
    let count = |version: &str, code: &str| {
        format!(
            "sum(increase(judge_requests_total{{test=\"{id}\",version=\"{version}\"{code}}}[{LOOKBACK_SECONDS}s]))"
        )
    };
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "judge"},
        "spec": {"metrics": [{
            "name": "canary-vs-stable",
            "provider": {"judge": {
                "prometheus": {"address": env.prometheus_url},
                "lookback": format!("{LOOKBACK_SECONDS}s"),
                "step": "1s",
                "confidence": 0.99,
                "threshold": {"pass": 90, "marginal": 50},
                "metrics": [
                    {
                        "name": "latency",
                        "canaryQuery": traffic.selector("canary"),
                        "baselineQuery": traffic.selector("stable"),
                        "direction": "increase",
                        "allowedIncrease": 1.1,
                    },
                    {
                        "name": "errors",
                        "test": "proportion",
                        "canaryQuery": count("canary", ",code=\"500\""),
                        "canaryTotalQuery": count("canary", ""),
                        "baselineQuery": count("stable", ",code=\"500\""),
                        "baselineTotalQuery": count("stable", ""),
                        "direction": "increase",
                    },
                ],
            }},
        }]},
    })
}

fn rollout() -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
            },
            "strategy": {"canary": {"steps": [
                {"setWeight": 50},
                {"analysis": {"templates": [{"templateName": "judge"}]}},
            ]}},
        },
    }))
    .expect("test Rollout")
}

/// Creates the template and a Rollout, waits for its first revision, then updates the image;
/// returns the first revision's hash.
async fn start_update(f: &Fixture, traffic: &Traffic) -> String {
    let templates: Api<AnalysisTemplate> = Api::namespaced(f.env.client.clone(), &f.ns.name);
    templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(judge_template(&f.env, traffic)).expect("judge template"),
        )
        .await
        .expect("creating the judge AnalysisTemplate");
    f.rollouts
        .create(&PostParams::default(), &rollout())
        .await
        .expect("creating the Rollout");
    let first = wait(f, "the first revision Healthy", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.phase == Some(RolloutPhase::Healthy) && !s.stable_rs.is_empty()
    })
    .await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.invalid/web:2"}
    ]}}}});
    f.rollouts
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("updating the image");
    first.status.unwrap_or_default().stable_rs
}

async fn wait(f: &Fixture, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = f.rollouts.get("web").await.expect("reading the Rollout");
        if check(&r) {
            return r;
        }
        if tokio::time::Instant::now() > deadline {
            let runs = runs(f).await;
            panic!(
                "timed out waiting for {what}\nrollout status: {}\nruns: {}\ncontroller log (end):\n{}",
                serde_json::to_string_pretty(&r.status).unwrap_or_default(),
                serde_json::to_string_pretty(&runs).unwrap_or_default(),
                f.ctl.log_end()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn runs(f: &Fixture) -> Vec<AnalysisRun> {
    Api::<AnalysisRun>::namespaced(f.env.client.clone(), &f.ns.name)
        .list(&ListParams::default())
        .await
        .expect("listing AnalysisRuns")
        .items
}

/// The one run's judge measurement: (run phase, measurement message, score, metadata).
async fn judged(f: &Fixture) -> (AnalysisPhase, String, Option<String>, Value) {
    let runs = runs(f).await;
    assert_eq!(runs.len(), 1, "one run for the analysis step: {runs:#?}");
    let status = runs[0].status.clone().expect("run status");
    let result = status
        .metric_results
        .iter()
        .find(|m| m.name == "canary-vs-stable")
        .unwrap_or_else(|| panic!("no judge result: {status:#?}"));
    let m = result.measurements.last().expect("a measurement");
    let metadata: serde_json::Map<String, Value> = m
        .metadata
        .iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
            (k.clone(), parsed)
        })
        .collect();
    (
        status.phase.expect("run phase"),
        m.message.clone().unwrap_or_default(),
        m.value.clone(),
        Value::Object(metadata),
    )
}

#[tokio::test]
async fn an_equal_canary_is_promoted() {
    let Some(f) = fixture("judge-equal").await else {
        return;
    };
    let traffic = Traffic::start(&f.env, "judge-equal", false).await;
    let first = start_update(&f, &traffic).await;
    wait(&f, "the update promoted", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.phase == Some(RolloutPhase::Healthy)
            && s.stable_rs != first
            && s.stable_rs == s.current_pod_hash
            && s.current_step_index == Some(2)
    })
    .await;
    let (phase, message, score, metadata) = judged(&f).await;
    assert_eq!(phase, AnalysisPhase::Successful, "{message}\n{metadata:#}");
    assert_eq!(score.as_deref(), Some("100"), "{message}");
    for name in ["latency", "errors"] {
        assert_eq!(metadata[name]["class"], "Pass", "{name}: {metadata:#}");
        let p = metadata[name]["pValue"].as_f64().expect("a p-value");
        assert!(p >= 0.01, "{name}: {metadata:#}");
    }
    let latency = &metadata["latency"];
    assert!(latency["U"].is_number(), "{latency:#}");
    assert!(latency["canary"]["n"].as_u64() >= Some(20), "{latency:#}");
    assert_eq!(latency["canaryQuery"], traffic.selector("canary"));
    assert!(metadata["errors"]["effectSize"].is_number(), "{metadata:#}");
}

#[tokio::test]
async fn a_degraded_canary_is_aborted_with_the_reasons() {
    let Some(f) = fixture("judge-degraded").await else {
        return;
    };
    let traffic = Traffic::start(&f.env, "judge-degraded", true).await;
    start_update(&f, &traffic).await;
    wait(&f, "the update aborted", |r| {
        let s = r.status.clone().unwrap_or_default();
        s.abort && s.phase == Some(RolloutPhase::Degraded)
    })
    .await;
    let (phase, message, score, metadata) = judged(&f).await;
    assert_eq!(phase, AnalysisPhase::Failed, "{message}\n{metadata:#}");
    assert_eq!(score.as_deref(), Some("0"), "{message}");
    for name in ["latency", "errors"] {
        assert_eq!(metadata[name]["class"], "High", "{name}: {metadata:#}");
        let p = metadata[name]["pValue"].as_f64().expect("a p-value");
        assert!(p < 0.01, "{name}: {metadata:#}");
        assert!(
            message.contains(&format!("{name} High: canary higher")),
            "{message}"
        );
    }
    let effect = metadata["latency"]["effectSize"].as_f64().expect("effect");
    assert!((1.3..1.7).contains(&effect), "{metadata:#}");
    assert!(
        metadata["errors"]["effectSize"].as_f64() > Some(5.0),
        "{metadata:#}"
    );
}

#[tokio::test]
async fn a_judge_without_a_canary_query_is_refused_before_any_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("judge-invalid").await;
    let ctl = common::controller::ControllerProcess::start(&env, &ns.name).await;
    let template: AnalysisTemplate = serde_yaml::from_str(
        r#"
metadata: {name: no-canary}
spec:
  metrics:
  - name: m
    provider:
      judge:
        threshold: {pass: 50, marginal: 60}
        metrics: [{name: latency, baselineQuery: "vector(1)"}]
"#,
    )
    .expect("template");
    Api::<AnalysisTemplate>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &template)
        .await
        .expect("creating the template");
    let note = common::events::note_on(&env.client, &ns.name, "InvalidSpec", "no-canary").await;
    assert!(
        note.contains("metrics[0].provider.judge.metrics[0].canaryQuery: is required"),
        "{note}\n{}",
        ctl.log_text()
    );
    assert!(
        note.contains("metrics[0].provider.judge.threshold.marginal"),
        "{note}"
    );
}
