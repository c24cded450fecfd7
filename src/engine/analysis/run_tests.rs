//! Table tests for the AnalysisRun core, tick by tick: a spec from YAML, `due` and `apply` at
//! given seconds after T0, and provider outcomes fed back as `Taken`.

use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use crate::api::argo::analysis::{DryRun, MetricProvider, PrometheusMetric};

const T0: i64 = 1_700_000_000;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(T0 + s).expect("a valid second")
}

fn t(s: i64) -> Option<Time> {
    Some(Time(at(s)))
}

fn spec(yaml: &str) -> AnalysisRunSpec {
    serde_yaml::from_str(yaml).expect("a run spec")
}

fn value(x: f64) -> Observed {
    Observed::Value {
        result: Value::List(vec![Value::Number(x)]),
        query: Some("sum(up)".into()),
        metadata: BTreeMap::new(),
    }
}

fn error(message: &str) -> Observed {
    Observed::error(message)
}

fn judged(phase: AnalysisPhase) -> Observed {
    Observed::Judged {
        phase,
        value: None,
        message: None,
        metadata: BTreeMap::new(),
    }
}

fn in_progress(seconds: u64) -> Observed {
    Observed::InProgress {
        metadata: BTreeMap::from([("job-name".to_string(), "run-1-job".to_string())]),
        message: Some("job running".into()),
        resume_after: Duration::from_secs(seconds),
    }
}

/// A run under test: its spec, the status so far, and the last plan's events and requeue.
struct Run {
    spec: AnalysisRunSpec,
    status: AnalysisRunStatus,
    events: Vec<Event>,
    requeue: Option<Duration>,
}

impl Run {
    fn new(yaml: &str) -> Self {
        Self {
            spec: spec(yaml),
            status: AnalysisRunStatus::default(),
            events: Vec::new(),
            requeue: None,
        }
    }

    /// What is due at second `s`, as `metric:kind` labels.
    fn due(&self, s: i64) -> Vec<String> {
        due(&self.spec, &self.status, at(s))
            .into_iter()
            .map(|d| {
                let kind = match d.kind {
                    DueKind::New => "new",
                    DueKind::Resume(_) => "resume",
                    DueKind::Terminate(_) => "terminate",
                };
                format!("{}:{kind}", d.metric)
            })
            .collect()
    }

    /// Applies outcomes taken from second `started` to second `finished`.
    fn apply_span(&mut self, started: i64, finished: i64, outcomes: Vec<(&str, Observed)>) {
        let taken = outcomes
            .into_iter()
            .map(|(metric, observed)| Taken {
                metric: metric.to_string(),
                started_at: at(started),
                finished_at: at(finished),
                observed,
            })
            .collect();
        let plan = apply(&self.spec, &self.status, at(finished), taken);
        self.status = plan.status;
        self.events = plan.events;
        self.requeue = plan.requeue_after;
    }

    /// Checks that exactly the outcomes' metrics are due at `s`, then applies them at `s`.
    fn tick(&mut self, s: i64, outcomes: Vec<(&str, Observed)>) {
        let mut expected: Vec<String> = outcomes.iter().map(|(m, _)| format!("{m}:new")).collect();
        let mut due = self.due(s);
        expected.sort();
        due.sort();
        assert_eq!(due, expected, "due at {s}s");
        self.apply_span(s, s, outcomes);
    }

    fn phase(&self) -> AnalysisPhase {
        self.status.phase()
    }

    fn result(&self, name: &str) -> &MetricResult {
        self.status.metric_result(name).expect("a metric result")
    }

    fn requeue_secs(&self) -> Option<u64> {
        self.requeue.map(|d| d.as_secs())
    }

    fn reasons(&self) -> Vec<(&'static str, bool)> {
        self.events.iter().map(|e| (e.reason, e.warning)).collect()
    }
}

const ONE: &str = r#"
metrics:
- name: m
  successCondition: result[0] >= 0.95
  provider: {prometheus: {query: "sum(up)"}}
"#;

#[test]
fn single_measurement_success() {
    let mut run = Run::new(ONE);
    run.tick(0, vec![("m", value(0.97))]);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
    assert_eq!(run.requeue_secs(), None);
    assert_eq!(run.status.started_at, t(0));
    assert_eq!(run.status.completed_at, t(0));
    let r = run.result("m");
    assert_eq!(
        (r.count, r.successful, r.phase),
        (1, 1, AnalysisPhase::Successful)
    );
    let m = &r.measurements[0];
    assert_eq!(m.value.as_deref(), Some("[0.97]"));
    assert_eq!(m.query.as_deref(), Some("sum(up)"));
    assert_eq!((m.started_at.clone(), m.finished_at.clone()), (t(0), t(0)));
    let verdict = m.condition.as_ref().expect("a verdict");
    assert_eq!(verdict.success_condition_met, Some(true));
    assert_eq!(
        verdict.message.as_deref(),
        Some("result [0.97]: successCondition held: Successful")
    );
    assert_eq!(
        run.status.run_summary,
        Some(RunSummary {
            count: 1,
            successful: 1,
            ..RunSummary::default()
        })
    );
    assert_eq!(run.status.dry_run_summary, None);
    assert_eq!(
        run.reasons(),
        [
            ("MetricSuccessful", false),
            ("AnalysisRunSuccessful", false)
        ]
    );
    assert!(run.due(100).is_empty(), "a completed run measures nothing");
}

#[test]
fn single_measurement_failure() {
    let mut run = Run::new(ONE);
    run.tick(0, vec![("m", value(0.5))]);
    assert_eq!(run.phase(), AnalysisPhase::Failed);
    assert_eq!(run.requeue_secs(), None);
    let r = run.result("m");
    assert_eq!(
        r.message.as_deref(),
        Some("failed 1 of 1 measurements, failureLimit 0")
    );
    assert_eq!(
        r.measurements[0]
            .condition
            .as_ref()
            .and_then(|c| c.success_condition_met),
        Some(false)
    );
    assert_eq!(
        run.status.message.as_deref(),
        Some("metric \"m\" assessed Failed: failed 1 of 1 measurements, failureLimit 0")
    );
    assert_eq!(
        run.reasons(),
        [("MetricFailed", true), ("AnalysisRunFailed", true)]
    );
}

#[test]
fn completed_run_is_returned_unchanged() {
    let mut run = Run::new(ONE);
    run.tick(0, vec![("m", value(0.97))]);
    let before = run.status.clone();
    let plan = apply(
        &run.spec,
        &before,
        at(50),
        vec![Taken {
            metric: "m".into(),
            started_at: at(50),
            finished_at: at(50),
            observed: value(0.1),
        }],
    );
    assert_eq!(plan.status, before);
    assert_eq!(plan.requeue_after, None);
    assert!(plan.events.is_empty());
}

#[test]
fn count_three_every_ten_seconds() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 10s
  count: 3
  successCondition: result[0] >= 0.95
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(0.99))]);
    assert_eq!(run.phase(), AnalysisPhase::Running);
    assert_eq!(run.result("m").phase, AnalysisPhase::Running);
    assert_eq!(run.requeue_secs(), Some(10));
    assert!(run.events.is_empty(), "no event per measurement");
    assert!(run.due(9).is_empty());
    // The second measurement takes two seconds: the next one is an interval after it finished.
    assert_eq!(run.due(10), ["m:new"]);
    run.apply_span(10, 12, vec![("m", value(0.99))]);
    assert_eq!(run.requeue_secs(), Some(10));
    assert!(run.due(21).is_empty());
    run.tick(22, vec![("m", value(0.99))]);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
    assert_eq!(run.result("m").count, 3);
    assert_eq!(
        run.result("m").message.as_deref(),
        Some("3 of 3 measurements successful, count 3 reached")
    );
    assert_eq!(run.status.completed_at, t(22));
    assert_eq!(run.requeue_secs(), None);
}

#[test]
fn initial_delay_postpones_the_first_measurement() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  initialDelay: 30s
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    assert!(run.due(0).is_empty());
    run.apply_span(0, 0, vec![]);
    assert_eq!(run.phase(), AnalysisPhase::Running);
    assert_eq!(run.status.started_at, t(0));
    assert!(
        run.status.metric_results.is_empty(),
        "no result before the first measurement"
    );
    assert_eq!(run.requeue_secs(), Some(30));
    // Looked at early (some other change): still waiting, and the requeue counts down.
    run.apply_span(12, 12, vec![]);
    assert_eq!(run.requeue_secs(), Some(18));
    assert!(run.due(29).is_empty());
    run.tick(30, vec![("m", value(1.0))]);
    assert_eq!(
        run.phase(),
        AnalysisPhase::Successful,
        "no conditions: Successful"
    );
}

#[test]
fn errors_are_retried_after_ten_seconds_until_the_fifth_in_a_row() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 60s
  count: 2
  successCondition: result[0] >= 0.95
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", error("connection refused"))]);
    assert_eq!(
        run.requeue_secs(),
        Some(10),
        "retry after 10 s, not the interval"
    );
    assert!(run.due(9).is_empty());
    for s in [10, 20, 30] {
        run.tick(s, vec![("m", error("connection refused"))]);
        assert_eq!(run.result("m").phase, AnalysisPhase::Running, "at {s}s");
    }
    assert_eq!(run.result("m").consecutive_error, 4);
    assert_eq!(
        run.result("m").message.as_deref(),
        Some("connection refused"),
        "a running metric shows its last error"
    );
    run.tick(40, vec![("m", error("connection refused"))]);
    let r = run.result("m");
    assert_eq!(r.phase, AnalysisPhase::Error);
    assert_eq!((r.error, r.consecutive_error, r.count), (5, 5, 0));
    assert_eq!(
        r.message.as_deref(),
        Some(
            "5 consecutive measurement errors, consecutiveErrorLimit 4; last error: connection \
             refused"
        )
    );
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert_eq!(
        run.reasons(),
        [("MetricError", true), ("AnalysisRunError", true)]
    );
}

#[test]
fn a_success_resets_the_error_streak() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  consecutiveErrorLimit: 1
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", error("timeout"))]);
    run.tick(10, vec![("m", value(1.0))]);
    let r = run.result("m");
    assert_eq!((r.error, r.consecutive_error, r.successful), (1, 0, 1));
    assert_eq!(run.phase(), AnalysisPhase::Successful);
}

const FAILURE_LIMIT: &str = r#"
metrics:
- name: m
  interval: 10s
  count: 5
  failureLimit: LIMIT
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
"#;

#[test]
fn failure_limit_counts_failed_measurements() {
    let mut run = Run::new(&FAILURE_LIMIT.replace("LIMIT", "2"));
    run.tick(0, vec![("m", value(0.1))]);
    run.tick(10, vec![("m", value(0.9))]);
    run.tick(20, vec![("m", value(0.1))]);
    assert_eq!(
        run.phase(),
        AnalysisPhase::Running,
        "2 failures are within the limit"
    );
    run.tick(30, vec![("m", value(0.1))]);
    assert_eq!(run.phase(), AnalysisPhase::Failed);
    assert_eq!(
        run.result("m").message.as_deref(),
        Some("failed 3 of 4 measurements, failureLimit 2")
    );
}

#[test]
fn failure_limit_minus_one_disables_the_limit() {
    let mut run = Run::new(&FAILURE_LIMIT.replace("LIMIT", "-1"));
    for s in [0, 10, 20, 30] {
        run.tick(s, vec![("m", value(0.1))]);
        assert_eq!(run.phase(), AnalysisPhase::Running);
    }
    run.tick(40, vec![("m", value(0.9))]);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
    assert_eq!(run.result("m").failed, 4);
}

#[test]
fn inconclusive_limit() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 10s
  count: 3
  inconclusiveLimit: 1
  successCondition: result[0] > 0.9
  failureCondition: result[0] < 0.1
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(0.5))]);
    let verdict = run.result("m").measurements[0]
        .condition
        .clone()
        .expect("verdict");
    assert_eq!(
        (verdict.success_condition_met, verdict.failure_condition_met),
        (Some(false), Some(false))
    );
    assert_eq!(
        verdict.message.as_deref(),
        Some("result [0.5]: neither successCondition nor failureCondition held: Inconclusive")
    );
    assert_eq!(run.phase(), AnalysisPhase::Running);
    run.tick(10, vec![("m", value(0.95))]);
    run.tick(20, vec![("m", value(0.5))]);
    assert_eq!(run.result("m").phase, AnalysisPhase::Inconclusive);
    assert_eq!(
        run.result("m").message.as_deref(),
        Some("2 of 3 measurements inconclusive, inconclusiveLimit 1")
    );
    assert_eq!(run.phase(), AnalysisPhase::Inconclusive);
    assert_eq!(
        run.reasons(),
        [
            ("MetricInconclusive", true),
            ("AnalysisRunInconclusive", true)
        ]
    );
}

#[test]
fn a_failing_dry_run_metric_does_not_fail_the_run() {
    let mut run = Run::new(
        r#"
dryRun:
- metricName: "^b$"
metrics:
- name: a
  interval: 10s
  count: 2
  provider: {prometheus: {query: "sum(up)"}}
- name: b
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("a", value(1.0)), ("b", value(0.1))]);
    let b = run.result("b");
    assert_eq!((b.phase, b.dry_run), (AnalysisPhase::Failed, true));
    assert!(!run.result("a").dry_run);
    assert_eq!(
        run.phase(),
        AnalysisPhase::Running,
        "a dry-run failure terminates nothing"
    );
    assert_eq!(run.reasons(), [("MetricFailed", true)]);
    assert!(run.events[0].message.contains("(dry run)"));
    run.tick(10, vec![("a", value(1.0))]);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
    assert_eq!(
        run.status.run_summary,
        Some(RunSummary {
            count: 1,
            successful: 1,
            ..RunSummary::default()
        })
    );
    assert_eq!(
        run.status.dry_run_summary,
        Some(RunSummary {
            count: 1,
            failed: 1,
            ..RunSummary::default()
        })
    );
}

#[test]
fn only_dry_run_metrics_complete_successful() {
    let mut run = Run::new(
        r#"
dryRun: [{metricName: ".*"}]
metrics:
- name: m
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(0.1))]);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
    assert_eq!(run.status.message, None);
}

#[test]
fn retention_keeps_the_newest_measurements_and_every_count() {
    let mut run = Run::new(
        r#"
measurementRetention: [{metricName: "^m$", limit: 2}]
metrics:
- name: m
  interval: 10s
  count: 4
  provider: {prometheus: {query: "sum(up)"}}
- name: other
  interval: 10s
  count: 12
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    for s in [0, 10, 20, 30] {
        run.tick(s, vec![("m", value(1.0)), ("other", value(1.0))]);
    }
    let m = run.result("m");
    assert_eq!(m.measurements.len(), 2);
    assert_eq!((m.count, m.successful), (4, 4));
    assert_eq!(m.measurements[1].finished_at, t(30));
    assert_eq!(m.measurements[0].finished_at, t(20));
    assert_eq!(m.phase, AnalysisPhase::Successful);
    for s in (40..=110).step_by(10) {
        run.tick(s, vec![("other", value(1.0))]);
    }
    let other = run.result("other");
    assert_eq!(
        (other.measurements.len(), other.count),
        (10, 12),
        "default retention 10"
    );
    assert_eq!(run.phase(), AnalysisPhase::Successful);
}

#[test]
fn terminate_mid_run_completes_successful_with_a_success() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 10s
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(1.0))]);
    run.tick(10, vec![("m", value(1.0))]);
    assert_eq!(run.requeue_secs(), Some(10), "unbounded count keeps going");
    run.spec.terminate = Some(true);
    assert!(run.due(20).is_empty(), "nothing new once terminating");
    run.apply_span(15, 15, vec![]);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
    assert_eq!(run.status.message.as_deref(), Some("Run Terminated"));
    assert_eq!(run.status.completed_at, t(15));
    assert_eq!(run.requeue_secs(), None);
    assert_eq!(
        run.result("m").message.as_deref(),
        Some("the run was terminated after 2 of 2 measurements succeeded")
    );
}

#[test]
fn terminate_before_any_measurement_is_inconclusive() {
    let mut run = Run::new(
        r#"
terminate: true
metrics:
- name: m
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    assert!(run.due(0).is_empty());
    run.apply_span(0, 0, vec![]);
    assert_eq!(run.phase(), AnalysisPhase::Inconclusive);
    assert_eq!(
        run.status.message.as_deref(),
        Some(
            "Run Terminated: metric \"m\" assessed Inconclusive: the run was terminated before \
             any measurement"
        )
    );
    assert_eq!(run.requeue_secs(), None);
}

#[test]
fn a_failing_metric_terminates_the_others() {
    let mut run = Run::new(
        r#"
metrics:
- name: job
  provider: {job: {spec: {template: {spec: {containers: [{name: c, image: busybox}]}}}}}
- name: rate
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
- name: background
  interval: 60s
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(
        0,
        vec![
            ("job", in_progress(30)),
            ("rate", value(0.1)),
            ("background", value(1.0)),
        ],
    );
    assert_eq!(run.result("rate").phase, AnalysisPhase::Failed);
    assert_eq!(
        run.result("background").phase,
        AnalysisPhase::Successful,
        "finished at once: it had a success and no breach"
    );
    assert_eq!(run.result("job").phase, AnalysisPhase::Running);
    assert_eq!(
        run.phase(),
        AnalysisPhase::Running,
        "waits for the job to be stopped"
    );
    assert_eq!(run.requeue_secs(), Some(0));
    let due = due(&run.spec, &run.status, at(1));
    assert_eq!(due.len(), 1);
    let DueKind::Terminate(m) = &due[0].kind else {
        panic!("expected a termination, got {due:?}");
    };
    assert_eq!(
        m.metadata.get("job-name").map(String::as_str),
        Some("run-1-job")
    );
    run.apply_span(1, 1, vec![("job", judged(AnalysisPhase::Successful))]);
    let job = run.result("job");
    assert_eq!(job.phase, AnalysisPhase::Successful);
    assert_eq!(
        job.measurements[0].message.as_deref(),
        Some("metric terminated")
    );
    assert_eq!(job.measurements[0].started_at, t(0));
    assert_eq!(job.measurements[0].finished_at, t(1));
    assert_eq!(run.phase(), AnalysisPhase::Failed);
    assert_eq!(
        run.status.message.as_deref(),
        Some("metric \"rate\" assessed Failed: failed 1 of 1 measurements, failureLimit 0")
    );
    assert_eq!(
        run.status.run_summary,
        Some(RunSummary {
            count: 3,
            successful: 2,
            failed: 1,
            ..RunSummary::default()
        })
    );
}

#[test]
fn an_in_progress_measurement_is_resumed_at_resume_at() {
    let mut run = Run::new(
        r#"
metrics:
- name: job
  provider: {job: {spec: {template: {spec: {containers: [{name: c, image: busybox}]}}}}}
"#,
    );
    run.tick(0, vec![("job", in_progress(30))]);
    let m = &run.result("job").measurements[0];
    assert_eq!(
        (m.phase, m.resume_at.clone(), m.finished_at.clone()),
        (AnalysisPhase::Running, t(30), None)
    );
    assert_eq!(run.requeue_secs(), Some(30));
    assert!(run.due(29).is_empty());
    assert_eq!(run.due(30), ["job:resume"]);
    run.apply_span(30, 31, vec![("job", judged(AnalysisPhase::Successful))]);
    let r = run.result("job");
    assert_eq!(
        r.measurements.len(),
        1,
        "the measurement was completed in place"
    );
    assert_eq!(r.measurements[0].started_at, t(0));
    assert_eq!(r.measurements[0].resume_at, None);
    assert_eq!(run.phase(), AnalysisPhase::Successful);
}

#[test]
fn an_empty_result_says_which_query_returned_no_data() {
    let mut run = Run::new(ONE);
    let query = "sum(rate(http_requests_total{code!~\"5..\"}[5m]))";
    run.tick(
        0,
        vec![(
            "m",
            Observed::Value {
                result: Value::List(vec![]),
                query: Some(query.into()),
                metadata: BTreeMap::new(),
            },
        )],
    );
    let m = &run.result("m").measurements[0];
    assert_eq!(m.phase, AnalysisPhase::Error);
    assert_eq!(m.value.as_deref(), Some("[]"));
    let message = m.message.as_deref().expect("a message");
    assert!(message.contains(query), "{message}");
    assert!(message.contains("no data"), "{message}");
    assert!(message.contains("result[0] >= 0.95"), "{message}");
    assert_eq!(
        message,
        format!(
            "successCondition \"result[0] >= 0.95\" could not be evaluated: query `{query}` \
             returned no data (an empty result): index 0 out of range: result has 0 elements"
        )
    );
    assert_eq!(run.phase(), AnalysisPhase::Running);
    assert_eq!(run.requeue_secs(), Some(10));
}

#[test]
fn nan_results_with_is_nan() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  successCondition: "!isNaN(result[0]) && result[0] >= 0.95"
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(f64::NAN))]);
    assert_eq!(
        run.result("m").measurements[0].value.as_deref(),
        Some("[NaN]")
    );
    assert_eq!(run.phase(), AnalysisPhase::Failed);

    let metric: Metric = serde_yaml::from_str(
        "name: m\nfailureCondition: isNaN(result[0])\nprovider: {prometheus: {query: up}}\n",
    )
    .expect("a metric");
    let nan = Value::List(vec![Value::Number(f64::NAN)]);
    let (phase, verdict) = judge(&metric, &nan);
    assert_eq!(phase, AnalysisPhase::Failed);
    assert_eq!(verdict.failure_condition_met, Some(true));
    let (phase, _) = judge(&metric, &Value::List(vec![Value::Number(1.0)]));
    assert_eq!(phase, AnalysisPhase::Successful);
}

#[test]
fn judge_follows_upstream_evaluate() {
    let metric = |s: Option<&str>, f: Option<&str>| Metric {
        name: "m".into(),
        success_condition: s.map(str::to_owned),
        failure_condition: f.map(str::to_owned),
        ..Metric::default()
    };
    let v = |x: f64| Value::Number(x);
    let cases = [
        (None, None, 0.0, AnalysisPhase::Successful),
        (Some("result > 1"), None, 2.0, AnalysisPhase::Successful),
        (Some("result > 1"), None, 0.0, AnalysisPhase::Failed),
        (None, Some("result > 1"), 2.0, AnalysisPhase::Failed),
        (None, Some("result > 1"), 0.0, AnalysisPhase::Successful),
        (
            Some("result > 1"),
            Some("result > 5"),
            9.0,
            AnalysisPhase::Failed,
        ),
        (
            Some("result > 1"),
            Some("result > 5"),
            2.0,
            AnalysisPhase::Successful,
        ),
        (
            Some("result > 1"),
            Some("result > 5"),
            0.0,
            AnalysisPhase::Inconclusive,
        ),
        (
            Some("result > 1"),
            Some("result < 0"),
            0.5,
            AnalysisPhase::Inconclusive,
        ),
        (Some("result"), None, 1.0, AnalysisPhase::Error),
        (Some("result >"), None, 1.0, AnalysisPhase::Error),
        (Some(""), Some(" "), 1.0, AnalysisPhase::Successful),
    ];
    for (s, f, x, want) in cases {
        let (phase, verdict) = judge(&metric(s, f), &v(x));
        assert_eq!(phase, want, "{s:?} {f:?} on {x}: {verdict:?}");
        assert!(verdict.message.is_some());
    }
}

#[test]
fn issue_4479_no_successful_measurement_is_never_successful() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 10s
  count: 2
  failureLimit: -1
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(0.1))]);
    run.tick(10, vec![("m", value(0.1))]);
    let r = run.result("m");
    assert_eq!(
        r.phase,
        AnalysisPhase::Inconclusive,
        "upstream says Successful"
    );
    let message = r.message.as_deref().expect("a message");
    assert!(
        message.contains("no measurement was successful"),
        "{message}"
    );
    assert_eq!(run.phase(), AnalysisPhase::Inconclusive);
}

#[test]
fn issue_4479_only_errors_then_terminated_is_error() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 10s
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", error("no route to host"))]);
    run.spec.terminate = Some(true);
    run.apply_span(5, 5, vec![]);
    let r = run.result("m");
    assert_eq!(r.phase, AnalysisPhase::Error);
    assert!(
        r.message
            .as_deref()
            .is_some_and(|m| m.contains("every measurement errored"))
    );
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert!(
        run.status
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("Run Terminated: metric \"m\" assessed Error"))
    );
}

#[test]
fn an_invalid_condition_is_an_invalid_spec() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  successCondition: "result[0] >="
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    assert!(run.due(0).is_empty(), "nothing is measured");
    run.apply_span(0, 0, vec![("m", value(1.0))]);
    assert_eq!(run.phase(), AnalysisPhase::Error);
    let message = run.status.message.as_deref().expect("a message");
    assert!(
        message.starts_with("InvalidSpec: metrics[0].successCondition: cannot parse condition"),
        "{message}"
    );
    assert!(message.contains("at position 12"), "{message}");
    assert!(run.status.metric_results.is_empty());
    assert_eq!(run.requeue_secs(), None);
    assert_eq!(run.reasons(), [("InvalidSpec", true)]);
    assert_eq!(run.status.completed_at, t(0));
}

#[test]
fn validate_names_every_bad_field() {
    let bad = spec(
        r#"
dryRun: [{metricName: "("}]
measurementRetention: [{metricName: ok, limit: 3}]
metrics:
- name: a
  interval: soon
  count: "{{args.count}}"
  failureCondition: result ==
  consecutiveErrorLimit: -2
  provider: {prometheus: {query: up}}
- name: a
  count: 3
  provider: {}
"#,
    );
    let errors = validate(&bad).expect_err("invalid");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "dryRun[0].metricName",
            "metrics[0].failureCondition",
            "metrics[0].consecutiveErrorLimit",
            "metrics[0].count",
            "metrics[0].interval",
            "metrics[1].name",
            "metrics[1].provider",
            "metrics[1].count",
        ]
    );
    assert!(validate(&spec(ONE)).is_ok());
}

#[test]
fn invalid_plan_for_unresolvable_arguments() {
    let plan = invalid(
        &spec(ONE),
        &AnalysisRunStatus::default(),
        at(3),
        "args.token: Secret default/creds not found",
    );
    assert_eq!(plan.status.phase, Some(AnalysisPhase::Error));
    assert_eq!(
        plan.status.message.as_deref(),
        Some("InvalidSpec: args.token: Secret default/creds not found")
    );
    assert_eq!(plan.requeue_after, None);
    assert_eq!(plan.events[0].reason, "InvalidSpec");
}

#[test]
fn ttl_expiry_counts_from_completion() {
    let mut run = Run::new(
        r#"
ttlStrategy: {secondsAfterSuccess: 60, secondsAfterFailure: 600}
metrics:
- name: m
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    assert_eq!(ttl_expiry(&run.spec, &run.status), None);
    run.tick(5, vec![("m", value(1.0))]);
    assert_eq!(ttl_expiry(&run.spec, &run.status), Some(at(65)));
}

#[test]
fn status_times_are_whole_seconds() {
    let mut run = Run::new(ONE);
    let now = at(0)
        .checked_add(k8s_openapi::jiff::SignedDuration::from_millis(750))
        .expect("a time");
    let plan = apply(
        &run.spec,
        &run.status,
        now,
        vec![Taken {
            metric: "m".into(),
            started_at: now,
            finished_at: now,
            observed: value(1.0),
        }],
    );
    run.status = plan.status;
    assert_eq!(run.status.started_at, t(0));
    assert_eq!(run.result("m").measurements[0].finished_at, t(0));
}

#[test]
fn a_measurement_the_provider_cannot_stop_ends_in_error() {
    let mut run = Run::new(
        r#"
metrics:
- name: job
  provider: {job: {spec: {template: {spec: {containers: [{name: c, image: busybox}]}}}}}
"#,
    );
    run.tick(0, vec![("job", in_progress(30))]);
    run.spec.terminate = Some(true);
    assert_eq!(
        run.due(1),
        ["job:terminate"],
        "terminated at once, not at resumeAt"
    );
    run.apply_span(1, 1, vec![("job", in_progress(30))]);
    let m = &run.result("job").measurements[0];
    assert_eq!(m.phase, AnalysisPhase::Error);
    assert!(
        m.message
            .as_deref()
            .is_some_and(|m| m.contains("did not stop"))
    );
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert_eq!(run.requeue_secs(), None);
}

#[test]
fn consecutive_success_limit() {
    let yaml = r#"
metrics:
- name: m
  interval: 10s
  count: 4
  failureLimit: 3
  consecutiveSuccessLimit: 2
  successCondition: result[0] > 0.5
  provider: {prometheus: {query: "sum(up)"}}
"#;
    let mut run = Run::new(yaml);
    run.tick(0, vec![("m", value(0.1))]);
    run.tick(10, vec![("m", value(0.9))]);
    run.tick(20, vec![("m", value(0.9))]);
    assert_eq!(
        run.phase(),
        AnalysisPhase::Successful,
        "streak of 2 before count 4"
    );
    assert_eq!(
        run.result("m").message.as_deref(),
        Some("2 consecutive successful measurements, consecutiveSuccessLimit 2")
    );

    let mut run = Run::new(yaml);
    for (s, x) in [(0, 0.9), (10, 0.1), (20, 0.9), (30, 0.1)] {
        run.tick(s, vec![("m", value(x))]);
    }
    assert_eq!(
        run.phase(),
        AnalysisPhase::Inconclusive,
        "count ran out before the streak"
    );
}

#[test]
fn a_run_without_metrics_is_invalid() {
    let mut run = Run::new("metrics: []\n");
    run.apply_span(0, 0, vec![]);
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert_eq!(
        run.status.message.as_deref(),
        Some("InvalidSpec: metrics: at least one metric is required")
    );
}

// === Property test ===

const CONDITIONS: [(Option<&str>, Option<&str>); 4] = [
    (Some("result[0] >= 0.5"), None),
    (None, Some("result[0] < 0.2")),
    (Some("result[0] >= 0.5"), Some("result[0] < 0.2")),
    (None, None),
];

#[derive(Clone, Debug)]
struct MetricCase {
    count: i32,
    interval: bool,
    failure_limit: i32,
    inconclusive_limit: i32,
    consecutive_error_limit: i32,
    conditions: usize,
    dry_run: bool,
    initial_delay: bool,
}

fn metric_case() -> impl Strategy<Value = MetricCase> {
    (
        0..4i32,
        any::<bool>(),
        -1..2i32,
        0..2i32,
        0..3i32,
        0..CONDITIONS.len(),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                count,
                interval,
                failure_limit,
                inconclusive_limit,
                cel,
                conditions,
                dry_run,
                initial_delay,
            )| {
                MetricCase {
                    // Above 1 needs an interval.
                    count: if interval { count } else { count.min(1) },
                    interval,
                    failure_limit,
                    inconclusive_limit,
                    consecutive_error_limit: cel,
                    conditions,
                    dry_run,
                    initial_delay,
                }
            },
        )
}

fn build(cases: &[MetricCase]) -> AnalysisRunSpec {
    let metrics = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (s, f) = CONDITIONS[c.conditions];
            Metric {
                name: format!("m{i}"),
                interval: c.interval.then(|| "10s".to_string()),
                initial_delay: c.initial_delay.then(|| "15s".to_string()),
                count: Some(IntOrString::Int(c.count)),
                success_condition: s.map(str::to_owned),
                failure_condition: f.map(str::to_owned),
                failure_limit: Some(IntOrString::Int(c.failure_limit)),
                inconclusive_limit: Some(IntOrString::Int(c.inconclusive_limit)),
                consecutive_error_limit: Some(IntOrString::Int(c.consecutive_error_limit)),
                consecutive_success_limit: None,
                provider: MetricProvider {
                    prometheus: Some(PrometheusMetric::default()),
                    ..MetricProvider::default()
                },
            }
        })
        .collect();
    let dry_run = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.dry_run)
        .map(|(i, _)| DryRun {
            metric_name: format!("^m{i}$"),
        })
        .collect();
    AnalysisRunSpec {
        metrics,
        dry_run,
        ..AnalysisRunSpec::default()
    }
}

fn outcome(kind: u8) -> Observed {
    match kind % 9 {
        0 => value(0.0),
        1 => value(0.3),
        2 => value(0.9),
        3 => value(f64::NAN),
        4 => Observed::Value {
            result: Value::List(vec![]),
            query: Some("sum(up)".into()),
            metadata: BTreeMap::new(),
        },
        5 => error("boom"),
        6 => in_progress(5),
        7 => judged(AnalysisPhase::Successful),
        _ => judged(AnalysisPhase::Failed),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn runs_never_succeed_without_a_success_and_requeue_iff_running(
        cases in prop::collection::vec(metric_case(), 1..4),
        outcomes in prop::collection::vec(any::<u8>(), 1..80),
        waits in prop::collection::vec(0..4i64, 1..80),
        terminate_at in prop::option::of(0..30usize),
    ) {
        let mut spec = build(&cases);
        let mut status = AnalysisRunStatus::default();
        let mut now = 0i64;
        let mut draws = outcomes.iter().cycle();
        for step in 0..60 {
            if terminate_at == Some(step) {
                spec.terminate = Some(true);
            }
            let taken: Vec<Taken> = due(&spec, &status, at(now))
                .into_iter()
                .map(|d| Taken {
                    metric: d.metric,
                    started_at: at(now),
                    finished_at: at(now),
                    observed: outcome(draws.next().copied().unwrap_or(0)),
                })
                .collect();
            let plan = apply(&spec, &status, at(now), taken);
            let phase = plan.status.phase();
            prop_assert_eq!(plan.requeue_after.is_none(), phase.is_completed(), "{:?}", plan.status);
            for r in &plan.status.metric_results {
                if r.phase == AnalysisPhase::Successful {
                    prop_assert!(r.successful > 0, "metric {} Successful without a success", r.name);
                }
            }
            if phase == AnalysisPhase::Successful {
                for (i, c) in cases.iter().enumerate().filter(|(_, c)| !c.dry_run) {
                    let r = plan.status.metric_result(&format!("m{i}"));
                    prop_assert!(
                        r.is_some_and(|r| r.successful > 0),
                        "run Successful but m{} ({:?}) has no success: {:?}", i, c, plan.status
                    );
                }
            }
            status = plan.status;
            if phase.is_completed() {
                prop_assert!(due(&spec, &status, at(now + 1000)).is_empty());
                break;
            }
            let wait = plan.requeue_after.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            now += wait + waits.get(step % waits.len()).copied().unwrap_or(0);
        }
    }
}

#[test]
fn the_requeue_counts_from_the_precise_time_not_the_whole_second() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 10s
  count: 2
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    // Measured during second 0, finished at 0.7 s: recorded as second 0, so the next measurement
    // is planned for second 10, which is 9.3 s away (not 10 s, which would start it 0.7 s late).
    let finished = at(0) + SignedDuration::from_millis(700);
    let plan = apply(
        &run.spec,
        &run.status,
        finished,
        vec![Taken {
            metric: "m".into(),
            started_at: at(0),
            finished_at: finished,
            observed: value(0.99),
        }],
    );
    assert_eq!(plan.requeue_after, Some(Duration::from_millis(9300)));
    run.status = plan.status;
    assert_eq!(run.due(10), ["m:new"]);
}

#[test]
fn a_template_with_a_bad_condition_is_reported_with_its_position() {
    let template: crate::api::argo::analysis::AnalysisTemplateSpec = serde_yaml::from_str(
        r#"
args: [{name: threshold}, {name: service}]
metrics:
- name: ok
  successCondition: result[0] >= {{args.threshold}}
  provider: {prometheus: {query: "rate(x{service='{{args.service}}'}[1m])"}}
- name: bad
  successCondition: "result[0] >= "
  provider: {prometheus: {query: "sum(up)"}}
"#,
    )
    .expect("template");
    let errors = validate_template(&template).expect_err("the bad condition is found");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "metrics[1].successCondition");
    assert!(
        errors[0].message.contains("position"),
        "{}",
        errors[0].message
    );
    let only_refs: crate::api::argo::analysis::AnalysisTemplateSpec =
        serde_yaml::from_str("templates: [{templateName: other}]").expect("template");
    assert_eq!(validate_template(&only_refs), Ok(()));
}

// === Issue 14: no evidence, secrets, sizes ===

#[test]
fn nan_and_empty_results_are_inconclusive_unless_a_condition_tests_for_them() {
    use AnalysisPhase::{Error as Errored, Failed, Inconclusive, Successful};
    let metric = |s: Option<&str>, f: Option<&str>| Metric {
        name: "m".into(),
        success_condition: s.map(str::to_owned),
        failure_condition: f.map(str::to_owned),
        ..Metric::default()
    };
    let nan = Value::List(vec![Value::Number(f64::NAN)]);
    let some_nan = Value::List(vec![Value::Number(0.1), Value::Number(f64::NAN)]);
    let empty = Value::List(vec![]);
    let cases = [
        // Upstream passes these two: NaN > 0.05 is false, all() of nothing is true.
        (None, Some("result[0] > 0.05"), &nan, Inconclusive),
        (Some("all(result, # < 0.05)"), None, &empty, Inconclusive),
        (None, Some("any(result, # > 0.05)"), &empty, Inconclusive),
        (None, None, &nan, Inconclusive),
        (Some("result[0] >= 0.95"), None, &nan, Inconclusive),
        (None, Some("any(result, # > 0.05)"), &some_nan, Failed),
        (Some("all(result, # < 0.5)"), None, &some_nan, Inconclusive),
        // Tested on purpose: judged as written.
        (
            None,
            Some("isNaN(result[0]) || result[0] > 0.05"),
            &nan,
            Failed,
        ),
        (
            Some("!isNaN(result[0]) && result[0] < 0.05"),
            None,
            &nan,
            Failed,
        ),
        (Some("isNaN(result[0])"), None, &nan, Successful),
        (
            Some("len(result) == 0 || result[0] < 0.05"),
            None,
            &empty,
            Successful,
        ),
        (
            Some("len(result) > 0 && result[0] < 0.05"),
            None,
            &empty,
            Failed,
        ),
        // Unchanged: an index into nothing cannot be evaluated.
        (Some("result[0] < 0.05"), None, &empty, Errored),
    ];
    for (s, f, value, want) in cases {
        let (phase, verdict) = judge(&metric(s, f), value);
        assert_eq!(phase, want, "{s:?} {f:?} on {value:?}: {verdict:?}");
    }
    let (_, verdict) = judge(&metric(None, Some("result[0] > 0.05")), &nan);
    let message = verdict.message.unwrap_or_default();
    assert!(
        message.contains("NaN") && message.contains("isNaN("),
        "{message}"
    );
}

#[test]
fn a_failure_only_metric_on_nan_never_succeeds_and_says_why() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  failureCondition: result[0] > 0.05
  provider: {prometheus: {query: "sum(up)"}}
"#,
    );
    run.tick(0, vec![("m", value(f64::NAN))]);
    assert_eq!(run.phase(), AnalysisPhase::Inconclusive);
    let r = run.result("m");
    assert_eq!(r.measurements[0].phase, AnalysisPhase::Inconclusive);
    let message = r.message.as_deref().unwrap_or_default();
    assert!(message.contains("holds NaN"), "{message}");
}

fn secret(name: &str, value: &str) -> ResolvedArg {
    ResolvedArg {
        name: name.into(),
        value: Some(value.into()),
        secret: true,
    }
}

/// Every string of a status, one per line (unescaped, as a reader of the object sees them).
fn all_text(status: &AnalysisRunStatus) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::Object(map) => map.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(&serde_json::to_value(status).unwrap(), &mut out);
    out
}

#[test]
fn every_recorded_text_is_masked_in_every_encoding() {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let token = r#"s3cr3t/t0"ken+x y"#;
    let masker = Masker::new(&[secret("token", token)]);
    let encodings = [
        token.to_owned(),
        "s3cr3t%2Ft0%22ken%2Bx%20y".to_owned(),
        "s3cr3t%2ft0%22ken%2bx+y".to_owned(),
        STANDARD.encode(token),
        URL_SAFE_NO_PAD.encode(token),
        // Basic authentication: the secret after `user:` inside one base64 text.
        STANDARD.encode(format!("user:{token}")),
    ];
    let spec = spec(&format!(
        r#"
metrics:
- name: m
  successCondition: result.echo != '{token}'
  provider: {{web: {{url: "http://x"}}}}
"#
    ));
    let echoed = Value::Map(BTreeMap::from([(
        "echo".to_string(),
        Value::String(encodings.join(" | ")),
    )]));
    let taken = vec![Taken {
        metric: "m".into(),
        started_at: at(0),
        finished_at: at(0),
        observed: Observed::Value {
            result: echoed,
            query: Some(format!("GET http://x/?t={}", encodings[1])),
            metadata: BTreeMap::from([("echo".to_string(), encodings.join(" "))]),
        },
    }];
    let plan = apply_masked(&spec, &AnalysisRunStatus::default(), at(0), taken, &masker);
    let text = format!("{}\n{:?}", all_text(&plan.status), plan.events);
    for (i, form) in encodings.iter().enumerate() {
        let bare = form.trim_end_matches('=');
        let core = &bare[8..bare.len() - 2];
        assert!(
            !text.contains(form.as_str()) && !text.contains(core),
            "encoding {i} {form:?} in {text}"
        );
    }
    // JSON-escaped, as the value's display writes it.
    assert!(!text.contains(r#"t0\"ken"#), "{text}");
    assert!(text.contains("*****"), "{text}");
    // The verdict is on the real value: the echo is not the token, so the condition held.
    assert_eq!(plan.status.phase, Some(AnalysisPhase::Successful), "{text}");
    // Recording again changes nothing (no status write loop).
    let mut again = plan.status.clone();
    recordable(&mut again, &masker);
    assert_eq!(again, plan.status);
}

#[test]
fn a_secret_containing_the_mask_character_settles() {
    let masker = Masker::new(&[secret("t", "a*")]);
    let once = masker.redact("xa*a*****y");
    assert_eq!(masker.redact(&once), once);
    assert!(!once.contains("a*"), "{once}");
}

#[test]
fn huge_values_are_cut_and_the_run_still_completes_on_the_whole_value() {
    let spec = spec(
        r#"
metrics:
- name: m
  successCondition: len(result.items) == 200000
  provider: {web: {url: "http://x"}}
"#,
    );
    let items = Value::List(vec![Value::Number(1.5); 200_000]);
    let taken = vec![Taken {
        metric: "m".into(),
        started_at: at(0),
        finished_at: at(0),
        observed: Observed::Value {
            result: Value::Map(BTreeMap::from([("items".to_string(), items)])),
            query: None,
            metadata: BTreeMap::new(),
        },
    }];
    let plan = apply(&spec, &AnalysisRunStatus::default(), at(0), taken);
    assert_eq!(plan.status.phase, Some(AnalysisPhase::Successful));
    let m = &plan.status.metric_results[0].measurements[0];
    let stored = m.value.as_deref().unwrap_or_default();
    assert!(stored.len() <= MAX_RECORDED_BYTES, "{}", stored.len());
    assert!(stored.contains("truncated"), "{stored}");
    let mut again = plan.status.clone();
    recordable(&mut again, &Masker::default());
    assert_eq!(again, plan.status);
}

#[test]
fn the_status_keeps_a_bounded_amount_of_measurement_text() {
    let mut run = Run::new(
        r#"
metrics:
- name: m
  interval: 1s
  successCondition: "true"
  provider: {web: {url: "http://x"}}
measurementRetention: [{metricName: m, limit: 1000}]
"#,
    );
    let big = Value::String("x".repeat(10_000));
    for s in 0..200 {
        let observed = Observed::Value {
            result: big.clone(),
            query: None,
            metadata: BTreeMap::new(),
        };
        run.apply_span(s, s, vec![("m", observed)]);
    }
    let r = run.result("m");
    assert_eq!(r.count, 200);
    let bytes: usize = r
        .measurements
        .iter()
        .map(|m| serde_json::to_string(m).unwrap().len())
        .sum();
    assert!(bytes <= MAX_MEASUREMENT_BYTES + 64 * 1024, "{bytes}");
    assert!(r.measurements.len() > 1 && r.measurements.len() < 200);
}
