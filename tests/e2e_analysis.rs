//! AnalysisRuns on the real cluster, measured by `sluice controller` running as a process, against
//! the real Prometheus of the test environment (values served by a test exporter it scrapes), a
//! local HTTP server (web provider) and real Jobs (job provider; kwok completes or fails their pods).
//!
//! Each test gets its own namespace and its own controller limited to it.

mod common;

use std::time::Duration;

use common::analysis::{phase, status_text, wait_completed};
use common::controller::ControllerProcess;
use common::exporter::Exporter;
use common::{TestEnv, eventually};
use kube::api::{Api, Patch, PatchParams, PostParams};
use sluice::api::argo::analysis::{AnalysisPhase, AnalysisRun, MetricResult};

/// Creates an AnalysisRun from YAML (`metadata.name` required) in `ns`.
async fn create_run(env: &TestEnv, ns: &str, yaml: &str) -> String {
    let run = serde_yaml::from_str(yaml).expect("test AnalysisRun YAML");
    common::analysis::create_run(env, ns, run).await
}

/// `spec.terminate: true`, as `kubectl argo rollouts terminate analysisrun` sends it.
async fn terminate(api: &Api<AnalysisRun>, name: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"terminate": true}})),
    )
    .await
    .expect("terminating the run");
}

fn metric<'a>(run: &'a AnalysisRun, name: &str) -> &'a MetricResult {
    run.status
        .as_ref()
        .and_then(|s| s.metric_results.iter().find(|m| m.name == name))
        .unwrap_or_else(|| panic!("no result for metric {name}: {:?}", run.status))
}

fn prom_run(name: &str, query: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: {name}
spec:
  metrics:
  - name: m
    provider:
      prometheus:
        query: '{query}'
{extra}
"#
    )
}

#[tokio::test]
async fn prometheus_successful_run_records_every_measurement() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-success").await;
    let exporter = Exporter::start(&env, "success").await;
    exporter.set("rate", 0.97);
    exporter.wait_scraped("rate", 0.97).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;

    let query = exporter.selector("rate");
    let yaml = prom_run(
        "ok",
        &query,
        "    count: 3\n    interval: 1s\n    successCondition: result[0] >= 0.95\n",
    );
    let name = create_run(&env, &ns.name, &yaml).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    let m = metric(&run, "m");
    assert_eq!(
        (m.count, m.successful, m.failed, m.error),
        (3, 3, 0, 0),
        "{}",
        status_text(&run)
    );
    assert_eq!(m.measurements.len(), 3);
    for meas in &m.measurements {
        assert_eq!(meas.phase, AnalysisPhase::Successful);
        assert_eq!(meas.value.as_deref(), Some("[0.97]"));
        assert_eq!(meas.query.as_deref(), Some(query.as_str()));
        assert!(meas.started_at.is_some() && meas.finished_at.is_some());
        let verdict = meas.condition.as_ref().expect("condition verdict recorded");
        assert_eq!(
            verdict.success_condition.as_deref(),
            Some("result[0] >= 0.95")
        );
        assert_eq!(verdict.success_condition_met, Some(true));
    }
    let status = run.status.as_ref().expect("status");
    assert!(status.started_at.is_some() && status.completed_at.is_some());
    let summary = status.run_summary.as_ref().expect("runSummary");
    assert_eq!((summary.count, summary.successful), (1, 1));
    // measurements are spaced by the interval (whole seconds on the wire)
    let times: Vec<_> = m
        .measurements
        .iter()
        .filter_map(|x| x.started_at.as_ref().map(|t| t.0))
        .collect();
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]).as_secs_f64();
        assert!(
            (0.9..=3.1).contains(&gap),
            "gap {gap}s between measurements: {}",
            status_text(&run)
        );
    }
}

#[tokio::test]
async fn prometheus_failed_inconclusive_and_nan() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-fail").await;
    let exporter = Exporter::start(&env, "fail").await;
    exporter.set("low", 0.5);
    exporter.set("mid", 0.8);
    exporter.set("nan", f64::NAN);
    exporter.wait_scraped("low", 0.5).await;
    exporter.wait_scraped("mid", 0.8).await;
    exporter.wait_scraped("nan", f64::NAN).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;

    // failureLimit 1: the second failed measurement fails the metric
    let failed = create_run(
        &env,
        &ns.name,
        &prom_run(
            "failed",
            &exporter.selector("low"),
            "    count: 4\n    interval: 1s\n    failureLimit: 1\n    successCondition: result[0] >= 0.95\n",
        ),
    )
    .await;
    let inconclusive = create_run(
        &env,
        &ns.name,
        &prom_run(
            "inconclusive",
            &exporter.selector("mid"),
            "    successCondition: result[0] >= 0.95\n    failureCondition: result[0] < 0.5\n",
        ),
    )
    .await;
    let nan = create_run(
        &env,
        &ns.name,
        &prom_run(
            "nan",
            &exporter.selector("nan"),
            "    successCondition: '!isNaN(result[0]) && result[0] >= 0.95'\n",
        ),
    )
    .await;

    let run = wait_completed(&env, &ns.name, &failed, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Failed, "{}", status_text(&run));
    let m = metric(&run, "m");
    assert_eq!((m.count, m.failed), (2, 2), "{}", status_text(&run));
    assert_eq!(m.measurements[0].value.as_deref(), Some("[0.5]"));
    assert_eq!(
        m.measurements[0]
            .condition
            .as_ref()
            .and_then(|c| c.success_condition_met),
        Some(false)
    );

    let run = wait_completed(&env, &ns.name, &inconclusive, Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Inconclusive,
        "{}",
        status_text(&run)
    );

    let run = wait_completed(&env, &ns.name, &nan, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Failed, "{}", status_text(&run));
    assert_eq!(
        metric(&run, "m").measurements[0].value.as_deref(),
        Some("[NaN]")
    );
}

#[tokio::test]
async fn prometheus_errors_carry_the_reason() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-error").await;
    let exporter = Exporter::start(&env, "error").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;

    // empty result: result[0] is an index error that names the query and says it returned no data
    let empty_query = exporter.selector("absent");
    let empty = create_run(
        &env,
        &ns.name,
        &prom_run(
            "empty",
            &empty_query,
            "    successCondition: result[0] >= 0.95\n    consecutiveErrorLimit: 0\n",
        ),
    )
    .await;
    // bad PromQL: the server's parse error is in the message
    let bad = create_run(
        &env,
        &ns.name,
        &prom_run("bad", "sum(rate(x[1m]", "    consecutiveErrorLimit: 0\n"),
    )
    .await;
    // server down
    let down = create_run(
        &env,
        &ns.name,
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: down
spec:
  metrics:
  - name: m
    consecutiveErrorLimit: 0
    provider:
      prometheus:
        address: http://127.0.0.1:9
        query: up
"#,
    )
    .await;

    // timeout: a server that accepts connections and never answers
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let slow = create_run(
        &env,
        &ns.name,
        &format!(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: slow
spec:
  metrics:
  - name: m
    consecutiveErrorLimit: 0
    provider:
      prometheus:
        address: http://{silent_addr}
        query: up
        timeout: 1
"#
        ),
    )
    .await;

    let run = wait_completed(&env, &ns.name, &slow, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let msg = metric(&run, "m").measurements[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(msg.contains("timed out"), "a timeout says so: {msg}");
    hold.abort();

    let run = wait_completed(&env, &ns.name, &empty, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let msg = metric(&run, "m").measurements[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(msg.contains(&empty_query), "message names the query: {msg}");
    assert!(
        msg.contains("no data"),
        "message says the query returned no data: {msg}"
    );
    assert!(
        msg.contains("result[0] >= 0.95"),
        "message names the condition: {msg}"
    );

    let run = wait_completed(&env, &ns.name, &bad, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let msg = metric(&run, "m").measurements[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        msg.contains("parse error"),
        "Prometheus' own message is kept: {msg}"
    );

    let run = wait_completed(&env, &ns.name, &down, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let msg = metric(&run, "m").measurements[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(msg.contains("127.0.0.1:9"), "the address is named: {msg}");
}

#[tokio::test]
async fn consecutive_errors_are_retried_then_error() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-errlimit").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    // consecutiveErrorLimit 1: the second consecutive error (retried after 10 s) ends the run
    let name = create_run(
        &env,
        &ns.name,
        &prom_run(
            "errlimit",
            "sum(",
            "    consecutiveErrorLimit: 1\n    interval: 1s\n    count: 5\n",
        ),
    )
    .await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let m = metric(&run, "m");
    assert_eq!(
        (m.error, m.consecutive_error, m.count),
        (2, 2, 0),
        "{}",
        status_text(&run)
    );
    let t: Vec<_> = m
        .measurements
        .iter()
        .filter_map(|x| x.started_at.as_ref().map(|t| t.0))
        .collect();
    let gap = t[1].duration_since(t[0]).as_secs_f64();
    assert!(
        (9.0..=13.0).contains(&gap),
        "errors are retried after 10 s, not the 1 s interval: {gap}"
    );
}

#[tokio::test]
async fn dry_run_metric_does_not_fail_the_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-dryrun").await;
    let exporter = Exporter::start(&env, "dryrun").await;
    exporter.set("good", 0.99);
    exporter.set("bad", 0.1);
    exporter.wait_scraped("good", 0.99).await;
    exporter.wait_scraped("bad", 0.1).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let yaml = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: dryrun
spec:
  dryRun:
  - metricName: experimental-.*
  metrics:
  - name: success-rate
    successCondition: result[0] >= 0.95
    provider:
      prometheus:
        query: '{}'
  - name: experimental-latency
    successCondition: result[0] >= 0.95
    provider:
      prometheus:
        query: '{}'
"#,
        exporter.selector("good"),
        exporter.selector("bad")
    );
    let name = create_run(&env, &ns.name, &yaml).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    let dry = metric(&run, "experimental-latency");
    assert!(dry.dry_run);
    assert_eq!(dry.phase, AnalysisPhase::Failed);
    let status = run.status.as_ref().expect("status");
    assert_eq!(
        status.dry_run_summary.as_ref().map(|s| s.failed),
        Some(1),
        "{}",
        status_text(&run)
    );
    assert_eq!(
        status.run_summary.as_ref().map(|s| s.successful),
        Some(1),
        "{}",
        status_text(&run)
    );
}

#[tokio::test]
async fn terminate_stops_an_open_ended_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-terminate").await;
    let exporter = Exporter::start(&env, "terminate").await;
    exporter.set("rate", 1.0);
    exporter.wait_scraped("rate", 1.0).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    // interval without count: runs until terminated
    let name = create_run(
        &env,
        &ns.name,
        &prom_run(
            "open",
            &exporter.selector("rate"),
            "    interval: 1s\n    successCondition: result[0] >= 0.95\n",
        ),
    )
    .await;
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), &ns.name);
    eventually(Duration::from_secs(30), "two measurements", || async {
        let run = api.get(&name).await.ok()?;
        (run.status?.metric_results.first()?.count >= 2).then_some(())
    })
    .await;
    terminate(&api, &name).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(30), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    let message = run
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.contains("Terminated"), "{message}");
}

#[tokio::test]
async fn args_from_a_secret_are_used_and_masked() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-secret").await;
    let exporter = Exporter::start(&env, "secret").await;
    exporter.set("hidden", 0.99);
    exporter.wait_scraped("hidden", 0.99).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.client.clone(), &ns.name);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "analysis"},
        "stringData": {"series": "hidden"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    let yaml = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: secret
spec:
  args:
  - name: series
    valueFrom:
      secretKeyRef: {{name: analysis, key: series}}
  - name: test
    value: {}
  metrics:
  - name: m
    successCondition: result[0] >= 0.95
    provider:
      prometheus:
        query: 'sluice_test_value{{test="{{{{args.test}}}}",series="{{{{args.series}}}}"}}'
"#,
        exporter.id
    );
    let name = create_run(&env, &ns.name, &yaml).await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    let meas = &metric(&run, "m").measurements[0];
    assert_eq!(meas.value.as_deref(), Some("[0.99]"));
    let query = meas.query.clone().unwrap_or_default();
    assert!(
        query.contains(&exporter.id),
        "plain args are shown: {query}"
    );
    assert!(
        !query.contains("hidden"),
        "secret values are masked: {query}"
    );
    assert!(query.contains("*****"), "{query}");
}

#[tokio::test]
async fn web_provider_judges_json_and_rejects_null_or_non_json() {
    use axum::Router;
    use axum::routing::get;
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-web").await;
    let app = Router::new()
        .route(
            "/ok",
            get(|| async { axum::Json(serde_json::json!({"data": {"rate": 0.99}})) }),
        )
        .route(
            "/null",
            get(|| async { ([("content-type", "application/json")], "null") }),
        )
        .route("/html", get(|| async { "<html>oops</html>" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let web_run = |name: &str, path: &str| {
        format!(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: {name}
spec:
  metrics:
  - name: m
    successCondition: result >= 0.95
    consecutiveErrorLimit: 0
    provider:
      web:
        url: http://{addr}{path}
        jsonPath: "{{$.data.rate}}"
"#
        )
    };
    let ok = create_run(&env, &ns.name, &web_run("ok", "/ok")).await;
    let null = create_run(&env, &ns.name, &web_run("null-body", "/null")).await;
    let html = create_run(&env, &ns.name, &web_run("html-body", "/html")).await;

    let run = wait_completed(&env, &ns.name, &ok, Duration::from_secs(60), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    assert_eq!(
        metric(&run, "m").measurements[0].value.as_deref(),
        Some("0.99")
    );
    for name in [null, html] {
        let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
        assert_eq!(
            phase(&run),
            AnalysisPhase::Error,
            "{name} must never pass: {}",
            status_text(&run)
        );
        let msg = metric(&run, "m").measurements[0]
            .message
            .clone()
            .unwrap_or_default();
        assert!(!msg.is_empty(), "{name}: the error says why");
    }
    server.abort();
}

#[tokio::test]
async fn job_metric_succeeds_or_fails_with_its_job() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-job").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let job_run = |name: &str, fail: bool| {
        format!(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: {name}
spec:
  metrics:
  - name: smoke
    provider:
      job:
        metadata:
          labels: {{team: sluice}}
        spec:
          backoffLimit: 0
          template:
            metadata:
              labels: {{sim/fail: "{fail}"}}
            spec:
              restartPolicy: Never
              containers:
              - name: smoke
                image: busybox
                command: [sh, -c, "exit 0"]
"#
        )
    };
    let pass = create_run(&env, &ns.name, &job_run("pass", false)).await;
    let fail = create_run(&env, &ns.name, &job_run("fail", true)).await;
    let run = wait_completed(&env, &ns.name, &pass, Duration::from_secs(90), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    let meas = &metric(&run, "smoke").measurements[0];
    assert!(
        meas.metadata.contains_key("job-name"),
        "{}",
        status_text(&run)
    );
    let run = wait_completed(&env, &ns.name, &fail, Duration::from_secs(90), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Failed, "{}", status_text(&run));
    // the Jobs are real, labelled and owned by their run
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client.clone(), &ns.name);
    let list = jobs.list(&Default::default()).await.expect("listing Jobs");
    assert_eq!(list.items.len(), 2, "one Job per measurement");
    for job in &list.items {
        let owners = job.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owners.iter().any(|o| o.kind == "AnalysisRun"),
            "{:?}",
            job.metadata
        );
        assert_eq!(
            job.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("sluice")
        );
    }
}

/// A one-container Job metric running `image` with `args`.
fn job_run_with(name: &str, image: &str, args: &str) -> String {
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisRun
metadata:
  name: {name}
spec:
  metrics:
  - name: smoke
    count: 1
    provider:
      job:
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: smoke
                image: {image}
                command: [sh, -c]
                args: [{args}]
"#
    )
}

#[tokio::test]
async fn a_job_that_cannot_pull_its_image_or_is_terminated_is_inconclusive() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-job-stuck").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    // Upstream v1.10: a pod that can never start is no verdict, so the Rollout pauses for a person.
    let stuck = job_run_with(
        "stuck",
        "nonexistent-image-that-does-not-exist:latest",
        "\"true\"",
    );
    let stuck = create_run(&env, &ns.name, &stuck).await;
    let run = wait_completed(&env, &ns.name, &stuck, Duration::from_secs(90), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Inconclusive,
        "{}",
        status_text(&run)
    );
    let message = metric(&run, "smoke").measurements[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("ErrImagePull"),
        "the measurement says why: {message}"
    );
    // A Job stopped by termination never finished: Inconclusive, not Successful.
    let long = create_run(
        &env,
        &ns.name,
        &job_run_with("long", "busybox", "\"sleep 6000\""),
    )
    .await;
    let runs: Api<AnalysisRun> = Api::namespaced(env.client.clone(), &ns.name);
    eventually(
        Duration::from_secs(60),
        "the long job measurement starts",
        || async {
            let run = runs.get(&long).await.ok()?;
            let results = run.status?.metric_results;
            results
                .iter()
                .any(|m| !m.measurements.is_empty())
                .then_some(())
        },
    )
    .await;
    terminate(&runs, &long).await;
    let run = wait_completed(&env, &ns.name, &long, Duration::from_secs(90), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Inconclusive,
        "{}",
        status_text(&run)
    );
    let last = metric(&run, "smoke")
        .measurements
        .last()
        .cloned()
        .expect("a measurement");
    assert_eq!(
        last.phase,
        AnalysisPhase::Inconclusive,
        "{}",
        status_text(&run)
    );
    assert_eq!(last.message.as_deref(), Some("metric terminated"));
}

#[tokio::test]
async fn a_condition_that_does_not_parse_is_reported_not_passed() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("ar-invalid").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let name = create_run(
        &env,
        &ns.name,
        &prom_run(
            "invalid",
            "vector(1)",
            "    successCondition: 'result[0] >= '\n",
        ),
    )
    .await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(30), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let message = run
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.contains("InvalidSpec"), "{message}");
    assert!(message.contains("metrics[0].successCondition"), "{message}");
    assert!(message.contains("position"), "{message}");
    assert!(
        metric_results_empty(&run),
        "nothing was measured: {}",
        status_text(&run)
    );
}

fn metric_results_empty(run: &AnalysisRun) -> bool {
    run.status
        .as_ref()
        .is_none_or(|s| s.metric_results.iter().all(|m| m.measurements.is_empty()))
}

#[tokio::test]
async fn a_template_with_a_bad_condition_gets_an_invalid_spec_event() {
    use sluice::api::argo::analysis::AnalysisTemplate;
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("at-invalid").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let template: AnalysisTemplate = serde_yaml::from_str(
        r#"
metadata: {name: broken}
spec:
  metrics:
  - name: m
    successCondition: "result[0] >= "
    provider: {prometheus: {query: "vector(1)"}}
"#,
    )
    .expect("template");
    Api::<AnalysisTemplate>::namespaced(env.client.clone(), &ns.name)
        .create(&PostParams::default(), &template)
        .await
        .expect("creating the template");
    let note = common::events::note_on(&env.client, &ns.name, "InvalidSpec", "broken").await;
    assert!(
        note.contains("metrics[0].successCondition"),
        "{note}\n{}",
        ctl.log_text()
    );
    assert!(note.contains("position"), "{note}");
}
