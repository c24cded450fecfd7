//! Every PromQL expression in dashboards/*.json names only metrics Sluice really exports: the
//! names come from scraping a running `sluice controller`'s /metrics, not from a list kept by hand.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use std::time::Duration;

use common::controller::ControllerProcess;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::analysis::AnalysisRun;
use sluice::api::argo::rollout::Rollout;
use sluice::api::flagger::canary::{Canary, CanaryPhase};

/// Every series name the exposition can produce: `# TYPE` lines give families (a family with no
/// samples yet still has one), expanded with the suffixes of their type.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Whether the exposition has a sample of `metric` carrying every one of `labels` (`key="value"`)
/// with `value` (compared as numbers: a float gauge writes `1.0`).
fn has_sample(exposition: &str, metric: &str, labels: &[&str], value: &str) -> bool {
    exposition.lines().any(|line| {
        line.strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix('{'))
            .and_then(|rest| rest.rsplit_once("} "))
            .is_some_and(|(set, v)| {
                v.trim().parse::<f64>().ok() == value.parse::<f64>().ok()
                    && labels.iter().all(|l| set.split(',').any(|p| p == *l))
            })
    })
}

/// Scrapes the controller at `http_url` until `ready` holds; on timeout, panics showing the
/// samples that carry `label` (the test's namespace) and the controller's log.
async fn scrape_until(
    http_url: &str,
    log: &Path,
    label: &str,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = scrape(http_url).await;
        if ready(&text) {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            let ours: Vec<&str> = text.lines().filter(|l| l.contains(label)).collect();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "timed out after {timeout:?}; the scrape's samples with {label}:\n{}\ncontroller log (tail):\n{}",
                ours.join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn scrape(http_url: &str) -> String {
    reqwest::get(format!("{http_url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// `sluice controller` limited to `namespace` with Canary analysis intervals down to 1s (which
/// [`ControllerProcess`] cannot set); killed on drop.
struct FastController {
    child: std::process::Child,
    http_url: String,
    log: std::path::PathBuf,
}

impl FastController {
    async fn start(env: &common::TestEnv, namespace: &str) -> FastController {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let logs = env.dir.join("logs");
        std::fs::create_dir_all(&logs).expect("log directory");
        let log = logs.join(format!("controller-{namespace}-{port}.log"));
        let file = std::fs::File::create(&log).expect("controller log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("controller")
            .args(["--namespace", namespace])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--prometheus-address", &env.prometheus_url])
            .args(["--leader-elect", "false"])
            .env("KUBECONFIG", &env.kubeconfig)
            .env("RUST_LOG", "info,sluice=debug")
            .env("SLUICE_CANARY_MIN_INTERVAL", "1s")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("starting sluice controller");
        let ctl = FastController {
            child,
            http_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let url = format!("{}/readyz", ctl.http_url);
        common::eventually(Duration::from_secs(30), "sluice controller ready", || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        ctl
    }
}

impl Drop for FastController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr` (panel targets) and templating `query` of a dashboard.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    // Template variables: `label_values(<selector>, <label>)` reads the selector.
                    ("query", Value::String(q)) if q.starts_with("label_values(") => {
                        let inner = &q["label_values(".len()..];
                        let end = inner.rfind(',').unwrap_or(inner.len());
                        out.push(inner[..end].to_string());
                    }
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "le",
    "inf",
    "nan",
];

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (in `{}` or grouping lists), strings, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth_braces = 0;
    while let Some(c) = chars.next() {
        match c {
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '"' | '\'' => {
                // Skip the string.
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '$' => {
                while chars
                    .peek()
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_')
                {
                    chars.next();
                }
                cleaned.push(' ');
            }
            c if depth_braces > 0 => {
                let _ = c;
            }
            c => cleaned.push(c),
        }
    }
    // Grouping lists hold label names.
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let cleaned = grouping.replace_all(&cleaned, " ");
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").unwrap();
    ident
        .captures_iter(&cleaned)
        .filter(|c| c.get(1).is_none())
        .map(|c| c[0].trim().to_string())
        .filter(|n| !KEYWORDS.contains(&n.to_lowercase().as_str()))
        .filter(|n| {
            // Numbers like 1e-9 start with a digit and never match; "e" alone would.
            n.len() > 1
        })
        .collect()
}

#[test]
fn the_promql_scanner_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(rollout_reconcile_bucket{job=~"$job"}[$__rate_interval])))"#
        ),
        ["rollout_reconcile_bucket".to_string()].into()
    );
    assert_eq!(
        metric_names(r#"count(rollout_info{phase="Degraded"}) or vector(0)"#),
        ["rollout_info".to_string()].into()
    );
}

#[tokio::test]
async fn every_dashboard_expression_uses_only_exported_metrics() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("dashboards").await;
    let ctl = FastController::start(&env, &ns.name).await;
    // Families without series are not exposed: give the per-Rollout gauges a Rollout, the
    // per-run gauges and the measurement counter a run with one measurement, and Flagger's
    // families a Canary promoted once.
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}]}},
        },
    }))
    .unwrap();
    Api::<Rollout>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &rollout)
        .await
        .expect("creating a Rollout");
    let run: AnalysisRun = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun", "metadata": {"name": "probe"},
        "spec": {"metrics": [{
            "name": "up", "count": 1, "successCondition": "result[0] >= 0",
            "provider": {"prometheus": {"address": env.prometheus_url, "query": "vector(1)"}},
        }]},
    }))
    .unwrap();
    Api::<AnalysisRun>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &run)
        .await
        .expect("creating an AnalysisRun");
    for manifest in [
        json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "success-rate"},
            "spec": {"provider": {"type": "prometheus", "address": env.prometheus_url},
                     "query": "vector(99.5)"},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "podinfo"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "podinfo"}},
                "template": {"metadata": {"labels": {"app": "podinfo"}},
                             "spec": {"containers": [{"name": "podinfo", "image": "podinfo:6.0.0"}]}},
            },
        }),
        common::canary::kubernetes(
            "podinfo",
            None,
            json!({
                "interval": "1s", "threshold": 1, "iterations": 1,
                "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
                             "thresholdRange": {"min": 99}}],
            }),
        ),
    ] {
        env.create(&ns.name, manifest).await;
    }
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns.name);
    common::eventually(
        Duration::from_secs(60),
        "the Canary Initialized",
        || async {
            let c = canaries.get("podinfo").await.ok()?;
            (c.status?.phase? == CanaryPhase::Initialized).then_some(())
        },
    )
    .await;
    Api::<Deployment>::namespaced(env.client.clone(), &ns.name)
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
        )
        .await
        .expect("a new revision of the Canary's target");
    // The per-object series must really be there, with their values, not only their families.
    let probe = |metric: &'static str, labels: &'static [&'static str], value: &'static str| {
        (metric, labels, value)
    };
    let wanted = [
        probe("sluice_rollout_canary_weight", &[r#"name="web""#], "0"),
        probe("flagger_canary_total", &[], "1"),
        probe("flagger_canary_status", &[r#"name="podinfo""#], "1"),
        probe(
            "flagger_canary_weight",
            &[r#"workload="podinfo-primary""#],
            "100",
        ),
        probe(
            "flagger_canary_metric_analysis",
            &[r#"name="podinfo""#, r#"metric="success""#],
            "99.5",
        ),
        probe(
            "flagger_canary_successes_total",
            &[r#"name="podinfo""#, r#"analysis_status="completed""#],
            "1",
        ),
        probe("rollout_info_replicas_desired", &[r#"name="web""#], "1"),
        probe(
            "analysis_run_info",
            &[r#"name="probe""#, r#"phase="Successful""#],
            "1",
        ),
        probe(
            "analysis_run_metric_phase",
            &[
                r#"metric="up""#,
                r#"type="Prometheus""#,
                r#"phase="Successful""#,
            ],
            "1",
        ),
        probe(
            "analysis_run_metric_phase",
            &[r#"metric="up""#, r#"phase="Failed""#],
            "0",
        ),
        probe(
            "analysis_run_metric_type",
            &[r#"metric="up""#, r#"type="Prometheus""#],
            "1",
        ),
        probe(
            "sluice_analysis_measurement_value",
            &[r#"name="probe""#, r#"metric="up""#],
            "1",
        ),
    ];
    let ns_label = format!("namespace=\"{}\"", ns.name);
    let text = scrape_until(
        &ctl.http_url,
        &ctl.log,
        &ns_label,
        Duration::from_secs(90),
        |text| {
            let names = exported_names(text);
            names.contains("rollout_info")
                && names.contains("sluice_analysis_measurements_total")
                && wanted.iter().all(|(metric, labels, value)| {
                    has_sample(
                        text,
                        metric,
                        &[&[ns_label.as_str()], *labels].concat(),
                        value,
                    )
                })
        },
    )
    .await;
    let exported = exported_names(&text);
    assert!(
        exported.contains("rollout_info") && exported.contains("sluice_leader"),
        "the scrape lacks Sluice's metrics: {exported:?}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{}: no panels",
            path.display()
        );
        let mut exprs = Vec::new();
        expressions(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "{}: no PromQL", path.display());
        for expr in exprs {
            let names = metric_names(&expr);
            if names.is_empty() {
                failures.push(format!("{}: {expr:?} reads no metric", path.display()));
            }
            for name in names {
                checked += 1;
                if !exported.contains(&name) {
                    failures.push(format!(
                        "{}: {name} (in {expr:?}) is not exported by sluice controller",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} metric references checked");
    assert!(
        failures.is_empty(),
        "{}\nexported: {exported:?}",
        failures.join("\n")
    );
}

/// The per-AnalysisRun series follow the run and go away with it, so the controller's memory does
/// not grow with every run ever made.
#[tokio::test]
async fn analysis_run_series_vanish_with_the_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("run-series").await;
    let ctl = ControllerProcess::start_with(&env, &ns.name, &["--leader-elect=false"]).await;
    let run: AnalysisRun = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun", "metadata": {"name": "gone"},
        "spec": {"metrics": [{
            "name": "ratio", "count": 1, "successCondition": "result[0] > 1",
            "provider": {"prometheus": {"address": env.prometheus_url, "query": "vector(0.25)"}},
        }]},
    }))
    .unwrap();
    let api = Api::<AnalysisRun>::namespaced(env.client.clone(), &ns.name);
    api.create(&PostParams::default(), &run)
        .await
        .expect("creating an AnalysisRun");
    let ns_label = format!("namespace=\"{}\"", ns.name);
    let labels = [ns_label.as_str(), r#"name="gone""#];
    common::eventually(
        Duration::from_secs(60),
        "the failed run's verdict and value on /metrics",
        || async {
            let text = ctl.metrics().await;
            (has_sample(
                &text,
                "analysis_run_info",
                &[&labels[..], &[r#"phase="Failed""#]].concat(),
                "1",
            ) && has_sample(
                &text,
                "analysis_run_metric_phase",
                &[&labels[..], &[r#"metric="ratio""#, r#"phase="Failed""#]].concat(),
                "1",
            ) && has_sample(
                &text,
                "sluice_analysis_measurement_value",
                &[&labels[..], &[r#"metric="ratio""#]].concat(),
                "0.25",
            ))
            .then_some(())
        },
    )
    .await;
    api.delete("gone", &Default::default())
        .await
        .expect("deleting the AnalysisRun");
    common::eventually(
        Duration::from_secs(30),
        "no series of the deleted run on /metrics",
        || async {
            let text = ctl.metrics().await;
            let left: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.starts_with('#') && l.contains(&ns_label) && l.contains(r#"name="gone""#)
                })
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;
}
