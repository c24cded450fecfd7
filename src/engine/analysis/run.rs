//! The pure AnalysisRun core: given a run's spec (arguments already substituted), its status and
//! the time, decides which metrics need the provider now ([`due`]), and, given what the providers
//! reported, judges each value with the metric's conditions, updates counters, metric and run
//! phases, summaries and messages, and says when to look again ([`apply`]).
//!
//! It must never do I/O: no kube client, no HTTP, no clock, no randomness. The time is an input,
//! and status times are written in whole seconds, as on the wire. It never panics, whatever the
//! spec, status or outcomes.
//!
//! Semantics follow Argo Rollouts (`analysis/analysis.go`, `utils/analysis`, `utils/evaluate`):
//! the schedule (first measurement at `startedAt + initialDelay`, then `finishedAt + interval`),
//! the counters, `assessMetricStatus`, termination on a failing metric or `spec.terminate`, the
//! phase precedence Failed > Error > Inconclusive > Successful, dry-run metrics and measurement
//! retention. Where Sluice differs:
//!
//! - **A metric never ends Successful without a successful measurement** (upstream #4479). Upstream
//!   calls a metric Successful once `count` is reached or the run is terminated, so `count: 2,
//!   failureLimit: -1` with two failed measurements, or a run terminated before it measured
//!   anything, reads as a success. Here such a metric ends **Error** when every measurement
//!   errored and **Inconclusive** otherwise (including "terminated before any measurement"), and
//!   its message says so. The run phase follows from the metric phases as usual, so a run
//!   terminated before its first measurement ends Inconclusive, not Successful; whoever terminated
//!   it (the Rollout) should not read a verdict into it.
//! - **After an Error measurement the retry is 10 s later even when `interval` is set** (upstream
//!   waits a full interval when one is set).
//! - **A spec that cannot be used** (a condition that does not parse, a bad duration or count, a
//!   bad `dryRun`/`measurementRetention` regular expression, duplicate metric names) puts the run in
//!   Error at once with a message `InvalidSpec: <field path>: <reason>` (for a condition, with the
//!   position), an `InvalidSpec` event, and nothing measured. Upstream reads a bad int-or-string as
//!   0 and a bad duration as "skip this metric forever".
//! - A failing metric finishes the other metrics in the same [`apply`] (upstream needs one more
//!   reconcile), and an interval below one second counts as one second, so a run never spins.
//! - Measurements carry the query sent and a [`ConditionVerdict`] explaining the judgement.
//! - **NaN and empty results are no evidence.** A value that holds a NaN (a ratio over no traffic)
//!   or is empty (no series, `[]`, `{}`) is judged Inconclusive, not Successful, unless a condition
//!   tests for that case on purpose (`isNaN(...)` for NaN, `len(...)` or `isNil(...)` for empty),
//!   or the failureCondition held. Upstream judges it like any value, so a failure-only condition
//!   passes `[NaN]` (every comparison with NaN is false) and `all(result, ...)` passes `[]`.
//!   Inconclusive rather than Error: the provider answered, so retrying at once would change
//!   nothing; an Inconclusive metric pauses the Rollout for a person (or counts against
//!   `inconclusiveLimit`) where Error would abort it for want of traffic.
//! - **What is recorded is bounded and masked** ([`recordable`]): every text of the status has the
//!   run's secret arguments masked in every encoding ([`Masker`]), each field is cut to
//!   [`MAX_RECORDED_BYTES`] saying so, and the oldest measurements go when their text passes
//!   [`MAX_MEASUREMENT_BYTES`]; verdicts are judged on the whole value first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use regex::Regex;

use super::args::{Masker, ResolvedArg, resolve};
use super::expr::{Expr, ExprError, Value};
use super::observed::Observed;
use crate::api::argo::analysis::{
    AnalysisPhase, AnalysisRunSpec, AnalysisRunStatus, AnalysisTemplateSpec, ConditionVerdict,
    FieldError, Measurement, Metric, MetricResult, RunSummary,
};
use crate::engine::Event;

/// How long after an Error measurement it is retried (upstream `DefaultErrorRetryInterval`).
pub const DEFAULT_ERROR_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The longest value shown inside a message; the full value is on the measurement.
const MAX_VALUE_IN_MESSAGE: usize = 200;

/// Longest text kept in one recorded field (a measurement's value, message, query, condition or
/// metadata value; a result's or the run's message). A 2 MB value would make every status write
/// fail (etcd keeps objects under 1.5 MiB) and the run would never finish.
pub const MAX_RECORDED_BYTES: usize = 4096;

/// Measurement text a status keeps in all; beyond it the oldest measurements are dropped (each
/// metric keeps its latest), whatever `measurementRetention` allows.
pub const MAX_MEASUREMENT_BYTES: usize = 256 * 1024;

/// A metric that needs the provider now.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    pub metric: String,
    pub kind: DueKind,
    /// When the measurement was scheduled (for measuring scheduling delay); `None` for a
    /// termination, which is not scheduled.
    pub planned_at: Option<Timestamp>,
}

/// What to ask the provider.
#[derive(Clone, Debug, PartialEq)]
pub enum DueKind {
    /// Take a new measurement.
    New,
    /// The last measurement is in progress and its `resumeAt` has passed: resume it.
    Resume(Measurement),
    /// The run is terminating and this measurement is still in flight: stop it.
    Terminate(Measurement),
}

/// One provider outcome handed back to [`apply`].
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    pub metric: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub observed: Observed,
}

/// What [`apply`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPlan {
    pub status: AnalysisRunStatus,
    /// When to look again (`None`: the run is complete, nothing scheduled).
    pub requeue_after: Option<Duration>,
    /// Events to record on the run: one per metric completion and one on run completion.
    pub events: Vec<Event>,
}

/// One reason a run's spec cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the field inside the spec, e.g. `metrics[0].successCondition`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks everything [`due`] and [`apply`] read from the spec: every condition parses, every
/// interval, delay, count and limit is usable, the `dryRun` and `measurementRetention` names are
/// regular expressions, metric names are unique. Errors are in field order.
pub fn validate(spec: &AnalysisRunSpec) -> Result<(), Vec<SpecError>> {
    compile(spec).map(|_| ())
}

/// Which metrics to measure, resume or terminate now. `spec.metrics` must have `{{args.*}}`
/// already substituted. Nothing for a completed run or an invalid spec.
pub fn due(spec: &AnalysisRunSpec, status: &AnalysisRunStatus, now: Timestamp) -> Vec<Due> {
    if status.phase().is_completed() {
        return Vec::new();
    }
    let Ok(rules) = compile(spec) else {
        return Vec::new();
    };
    let now = now.as_second();
    let started = status.started_at.as_ref().map_or(now, seconds);
    let terminating = is_terminating(spec, &rules, status);
    let mut out = Vec::new();
    for rule in &rules {
        let name = &rule.metric.name;
        let result = status.metric_result(name);
        if result.is_some_and(|r| r.phase.is_completed()) {
            continue;
        }
        if let Some(last) = result
            .and_then(|r| r.measurements.last())
            .filter(|m| in_flight(m))
        {
            let resume_at = last.resume_at.as_ref().map_or(now, seconds);
            if terminating {
                out.push(Due {
                    metric: name.clone(),
                    kind: DueKind::Terminate(last.clone()),
                    planned_at: None,
                });
            } else if resume_at <= now {
                out.push(Due {
                    metric: name.clone(),
                    kind: DueKind::Resume(last.clone()),
                    planned_at: Some(timestamp(resume_at)),
                });
            }
            continue;
        }
        if terminating {
            continue;
        }
        if let Some(at) = next_at(rule, result, started, false, now)
            && at <= now
        {
            out.push(Due {
                metric: name.clone(),
                kind: DueKind::New,
                planned_at: Some(timestamp(at)),
            });
        }
    }
    out
}

/// Records the outcomes, judges values with the conditions, updates counters, phases and
/// summaries, and decides when to look again. A completed run is returned unchanged.
pub fn apply(
    spec: &AnalysisRunSpec,
    status: &AnalysisRunStatus,
    now: Timestamp,
    taken: Vec<Taken>,
) -> RunPlan {
    apply_masked(spec, status, now, taken, &Masker::default())
}

/// [`apply`] for a run with secret arguments: `masker` hides them in every text of the returned
/// status and events ([`recordable`]).
pub fn apply_masked(
    spec: &AnalysisRunSpec,
    status: &AnalysisRunStatus,
    now: Timestamp,
    taken: Vec<Taken>,
    masker: &Masker,
) -> RunPlan {
    if status.phase().is_completed() {
        return unchanged(status);
    }
    let rules = match compile(spec) {
        Ok(rules) => rules,
        Err(errors) => {
            let message = errors
                .iter()
                .map(SpecError::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return invalid(spec, status, now, &message);
        }
    };
    // Status times are whole seconds; the requeue is measured from the precise time, so the next
    // measurement starts at its planned second rather than up to a second after it.
    let precise_now = now;
    let now = now.as_second();
    let mut status = status.clone();
    let before: HashMap<String, AnalysisPhase> = status
        .metric_results
        .iter()
        .map(|r| (r.name.clone(), r.phase))
        .collect();
    if status.started_at.is_none() {
        status.started_at = Some(time(now));
    }
    let started = status.started_at.as_ref().map_or(now, seconds);
    let was_terminating = is_terminating(spec, &rules, &status);

    for taken in taken {
        let Some(rule) = rules.iter().find(|r| r.metric.name == taken.metric) else {
            continue; // not a metric of this run: nothing to record it against
        };
        let result = result_mut(&mut status, rule);
        if result.phase.is_completed() {
            continue;
        }
        record(rule, result, taken, was_terminating, masker);
    }
    for rule in &rules {
        if let Some(result) = status
            .metric_results
            .iter_mut()
            .find(|r| r.name == rule.metric.name)
        {
            result.dry_run = rule.dry_run;
            let excess = result.measurements.len().saturating_sub(rule.retention);
            result.measurements.drain(..excess);
        }
    }

    // Assess once; if a metric just failed, the run is now terminating and the others finish too.
    let mut terminating = was_terminating;
    assess_all(&rules, &mut status, terminating);
    if !terminating && is_terminating(spec, &rules, &status) {
        terminating = true;
        assess_all(&rules, &mut status, terminating);
    }

    let mut events = Vec::new();
    for rule in &rules {
        let Some(result) = status.metric_result(&rule.metric.name) else {
            continue;
        };
        let was_complete = before
            .get(&rule.metric.name)
            .is_some_and(|p| p.is_completed());
        if result.phase.is_completed() && !was_complete {
            events.push(Event {
                warning: result.phase != AnalysisPhase::Successful,
                reason: metric_reason(result.phase),
                message: format!(
                    "metric {:?}{} completed {}{}",
                    rule.metric.name,
                    if rule.dry_run { " (dry run)" } else { "" },
                    result.phase,
                    result
                        .message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            });
        }
    }

    let verdict = run_verdict(spec, &rules, &status);
    status.run_summary = Some(verdict.summary);
    status.dry_run_summary = verdict.dry_run_summary;
    let requeue_after = match verdict.phase {
        Some(phase) => {
            status.phase = Some(phase);
            status.message = verdict.message;
            status.completed_at = Some(time(now));
            events.push(Event {
                warning: phase != AnalysisPhase::Successful,
                reason: run_reason(phase),
                message: match &status.message {
                    Some(m) => format!("analysis run completed {phase}: {m}"),
                    None => format!("analysis run completed {phase}"),
                },
            });
            None
        }
        None => {
            status.phase = Some(AnalysisPhase::Running);
            status.message = None;
            let next = rules
                .iter()
                .filter(|rule| {
                    !status
                        .metric_result(&rule.metric.name)
                        .is_some_and(|r| r.phase.is_completed())
                })
                .filter_map(|rule| {
                    let result = status.metric_result(&rule.metric.name);
                    next_at(rule, result, started, terminating, now)
                })
                .min()
                // Every incomplete metric has a next time; this only guards a hand-edited status.
                .unwrap_or(now.saturating_add(retry_seconds()));
            let wait = timestamp(next).duration_since(precise_now);
            Some(wait.max(SignedDuration::ZERO).unsigned_abs())
        }
    };
    recordable(&mut status, masker);
    for event in &mut events {
        masker.redact_in_place(&mut event.message);
    }
    RunPlan {
        status,
        requeue_after,
        events,
    }
}

/// Makes a status fit to store: every recorded text has the secrets `masker` knows masked, then
/// is cut to [`MAX_RECORDED_BYTES`] (saying so), then the oldest measurements are dropped while
/// the measurements' text passes [`MAX_MEASUREMENT_BYTES`]. Applying it twice changes nothing.
pub fn recordable(status: &mut AnalysisRunStatus, masker: &Masker) {
    let fix = |text: &mut String| {
        masker.redact_in_place(text);
        cap(text);
    };
    status.message.iter_mut().for_each(fix);
    for result in &mut status.metric_results {
        result.message.iter_mut().for_each(fix);
        result.metadata.values_mut().for_each(fix);
        for m in &mut result.measurements {
            for text in measurement_texts(m) {
                fix(text);
            }
        }
    }
    trim_measurements(status);
}

/// Every free text of a measurement.
fn measurement_texts(m: &mut Measurement) -> Vec<&mut String> {
    let mut texts: Vec<&mut String> = Vec::new();
    texts.extend(m.message.as_mut());
    texts.extend(m.value.as_mut());
    texts.extend(m.query.as_mut());
    texts.extend(m.metadata.values_mut());
    if let Some(c) = m.condition.as_mut() {
        texts.extend(c.success_condition.as_mut());
        texts.extend(c.failure_condition.as_mut());
        texts.extend(c.message.as_mut());
    }
    texts
}

/// Cuts `text` to [`MAX_RECORDED_BYTES`] at a character boundary, ending with how long it was.
fn cap(text: &mut String) {
    if text.len() <= MAX_RECORDED_BYTES {
        return;
    }
    let note = format!("… [truncated: {} bytes in all]", text.len());
    let mut keep = MAX_RECORDED_BYTES.saturating_sub(note.len());
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    text.truncate(keep);
    text.push_str(&note);
}

/// Drops the oldest measurements (never a metric's latest) until their text fits
/// [`MAX_MEASUREMENT_BYTES`].
fn trim_measurements(status: &mut AnalysisRunStatus) {
    let size =
        |m: &mut Measurement| -> usize { measurement_texts(m).iter().map(|t| t.len()).sum() };
    let mut total: usize = status
        .metric_results
        .iter_mut()
        .flat_map(|r| r.measurements.iter_mut())
        .map(size)
        .sum();
    while total > MAX_MEASUREMENT_BYTES {
        // The oldest droppable measurement across metrics.
        let oldest = status
            .metric_results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.measurements.len() > 1)
            .min_by_key(|(_, r)| r.measurements[0].started_at.as_ref().map(seconds))
            .map(|(i, _)| i);
        let Some(i) = oldest else { break };
        let mut dropped = status.metric_results[i].measurements.remove(0);
        total = total.saturating_sub(size(&mut dropped));
    }
}

/// Completes a run in Error because it cannot be used as written (an invalid spec, or arguments
/// the controller could not resolve): message `InvalidSpec: <message>`, an `InvalidSpec` event,
/// nothing measured, no requeue. A completed run is returned unchanged.
pub fn invalid(
    _spec: &AnalysisRunSpec,
    status: &AnalysisRunStatus,
    now: Timestamp,
    message: &str,
) -> RunPlan {
    if status.phase().is_completed() {
        return unchanged(status);
    }
    let now = now.as_second();
    let mut status = status.clone();
    let message = format!("InvalidSpec: {message}");
    status.phase = Some(AnalysisPhase::Error);
    status.message = Some(message.clone());
    if status.started_at.is_none() {
        status.started_at = Some(time(now));
    }
    status.completed_at = Some(time(now));
    if status.run_summary.is_none() {
        status.run_summary = Some(RunSummary::default());
    }
    RunPlan {
        status,
        requeue_after: None,
        events: vec![Event {
            warning: true,
            reason: "InvalidSpec",
            message,
        }],
    }
}

/// When a completed run may be deleted under its `ttlStrategy`: `completedAt` plus the seconds
/// for its phase. `None` while running, without a TTL for the phase, or without `completedAt`.
pub fn ttl_expiry(spec: &AnalysisRunSpec, status: &AnalysisRunStatus) -> Option<Timestamp> {
    let ttl = spec.ttl_strategy.as_ref()?;
    let after = ttl.seconds_for(status.phase())?;
    let completed = status.completed_at.as_ref()?;
    Some(timestamp(
        seconds(completed).saturating_add(i64::from(after)),
    ))
}

/// Judges a measured value with the metric's conditions, as upstream `EvaluateResult`: neither
/// condition → Successful; success only → Successful if it holds, else Failed; failure only →
/// Failed if it holds, else Successful; both → Failed if failure holds, else Successful if success
/// holds, else Inconclusive. A condition that does not parse or cannot be evaluated → Error, with
/// the reason in the verdict's message.
pub fn judge(metric: &Metric, result: &Value) -> (AnalysisPhase, ConditionVerdict) {
    let parse = |c: Option<&String>| condition_text(c).map(Expr::parse).transpose();
    match (
        parse(metric.success_condition.as_ref()),
        parse(metric.failure_condition.as_ref()),
    ) {
        (Ok(success), Ok(failure)) => {
            let (phase, verdict, _) = evaluate(
                success.as_ref(),
                failure.as_ref(),
                result,
                None,
                &Masker::default(),
            );
            (phase, verdict)
        }
        (Err(e), _) | (_, Err(e)) => (
            AnalysisPhase::Error,
            ConditionVerdict {
                success_condition: condition_text(metric.success_condition.as_ref())
                    .map(str::to_owned),
                failure_condition: condition_text(metric.failure_condition.as_ref())
                    .map(str::to_owned),
                message: Some(e.to_string()),
                ..ConditionVerdict::default()
            },
        ),
    }
}

// === The spec, compiled ===

/// One metric with every field parsed and every default applied.
struct Rule<'a> {
    metric: &'a Metric,
    success: Option<Expr>,
    failure: Option<Expr>,
    /// Seconds between measurements (at least 1); `None` without an interval.
    interval: Option<i64>,
    initial_delay: i64,
    /// Measurements to take; `None` until terminated.
    count: Option<i32>,
    failure_limit: i32,
    inconclusive_limit: i32,
    consecutive_error_limit: i32,
    consecutive_success_limit: i32,
    dry_run: bool,
    retention: usize,
}

fn compile(spec: &AnalysisRunSpec) -> Result<Vec<Rule<'_>>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut patterns: HashMap<&str, Regex> = HashMap::new();
    let names = spec
        .dry_run
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("dryRun[{i}].metricName"), d.metric_name.as_str()))
        .chain(spec.measurement_retention.iter().enumerate().map(|(i, r)| {
            (
                format!("measurementRetention[{i}].metricName"),
                r.metric_name.as_str(),
            )
        }));
    for (field, pattern) in names {
        match Regex::new(pattern) {
            Ok(re) => {
                patterns.insert(pattern, re);
            }
            Err(e) => errors.push(SpecError::new(
                field,
                format!("{pattern:?} is not a regular expression: {e}"),
            )),
        }
    }
    let matches =
        |pattern: &str, name: &str| patterns.get(pattern).is_some_and(|re| re.is_match(name));

    if spec.metrics.is_empty() {
        // A run with nothing to measure would succeed without a single measurement.
        errors.push(SpecError::new("metrics", "at least one metric is required"));
    }
    let mut seen = HashSet::new();
    let mut rules = Vec::with_capacity(spec.metrics.len());
    for (i, metric) in spec.metrics.iter().enumerate() {
        let mut field_error = |field: &str, message: String| {
            errors.push(SpecError::new(format!("metrics[{i}].{field}"), message));
        };
        if metric.name.is_empty() {
            field_error("name", "must not be empty".into());
        } else if !seen.insert(metric.name.as_str()) {
            field_error("name", format!("duplicate metric name {:?}", metric.name));
        }
        if let Err(e) = metric.provider.kind() {
            field_error("provider", strip_field(&e));
        }
        if let Some(Err(judge_errors)) = metric.provider.judge.as_ref().map(super::judge::configure)
        {
            for e in judge_errors {
                field_error(&format!("provider.judge.{}", e.field), e.message);
            }
        }
        let mut condition = |field: &str, text: Option<&String>| match condition_text(text)
            .map(Expr::parse)
            .transpose()
        {
            Ok(expr) => expr,
            Err(e) => {
                field_error(field, e.to_string());
                None
            }
        };
        let success = condition("successCondition", metric.success_condition.as_ref());
        let failure = condition("failureCondition", metric.failure_condition.as_ref());
        let mut field = |name: &str, value: Result<i32, FieldError>, min: i32| match value {
            Ok(v) if v < min => {
                field_error(name, format!("{v} must be at least {min}"));
                0
            }
            Ok(v) => v,
            Err(e) => {
                field_error(name, strip_field(&e));
                0
            }
        };
        let failure_limit = field("failureLimit", metric.failure_limit(), i32::MIN);
        let inconclusive_limit = field("inconclusiveLimit", metric.inconclusive_limit(), 0);
        let consecutive_error_limit =
            field("consecutiveErrorLimit", metric.consecutive_error_limit(), 0);
        let consecutive_success_limit = field(
            "consecutiveSuccessLimit",
            metric.consecutive_success_limit(),
            0,
        );
        let count = match metric.effective_count() {
            Ok(Some(n)) if n < 0 => {
                field_error("count", format!("{n} must be at least 0"));
                None
            }
            Ok(count) => count,
            Err(e) => {
                field_error("count", strip_field(&e));
                None
            }
        };
        let interval = match metric.interval() {
            // Below a second would requeue at once, forever.
            Ok(d) => d.map(|d| ceil_seconds(d).max(1)),
            Err(e) => {
                field_error("interval", strip_field(&e));
                None
            }
        };
        let initial_delay = match metric.initial_delay() {
            Ok(d) => d.map_or(0, ceil_seconds),
            Err(e) => {
                field_error("initialDelay", strip_field(&e));
                0
            }
        };
        let retention = spec.measurement_retention(&metric.name, matches);
        rules.push(Rule {
            metric,
            success,
            failure,
            interval,
            initial_delay,
            count,
            failure_limit,
            inconclusive_limit,
            consecutive_error_limit,
            consecutive_success_limit,
            dry_run: spec.is_dry_run(&metric.name, matches),
            retention: usize::try_from(retention.max(1)).unwrap_or(1),
        });
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// A condition as written, or `None` when unset or blank (upstream treats `""` as unset).
fn condition_text(text: Option<&String>) -> Option<&str> {
    text.map(String::as_str).filter(|t| !t.trim().is_empty())
}

/// A field error's message without its leading field name (the path names the field already).
fn strip_field(e: &FieldError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((_, rest)) => rest.to_owned(),
        None => text,
    }
}

// === Time ===

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

fn timestamp(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap_or(if second < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// A status time: whole seconds, as on the wire.
fn time(second: i64) -> Time {
    Time(timestamp(second))
}

fn ceil_seconds(d: Duration) -> i64 {
    let whole = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(whole).unwrap_or(i64::MAX)
}

fn retry_seconds() -> i64 {
    ceil_seconds(DEFAULT_ERROR_RETRY_INTERVAL)
}

// === Scheduling ===

/// A measurement still being taken (started, not judged yet).
fn in_flight(m: &Measurement) -> bool {
    !m.phase.is_completed()
}

/// Terminating: asked to stop, or a metric that counts has already decided the run.
fn is_terminating(spec: &AnalysisRunSpec, rules: &[Rule<'_>], status: &AnalysisRunStatus) -> bool {
    spec.is_terminated()
        || rules.iter().any(|rule| {
            !rule.dry_run
                && status.metric_result(&rule.metric.name).is_some_and(|r| {
                    matches!(
                        r.phase,
                        AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
                    )
                })
        })
}

/// When an incomplete metric next needs the provider, in seconds; `None` when it needs nothing
/// more (its count is reached, or the run is terminating and nothing is in flight).
fn next_at(
    rule: &Rule<'_>,
    result: Option<&MetricResult>,
    started: i64,
    terminating: bool,
    now: i64,
) -> Option<i64> {
    let Some((result, last)) = result.and_then(|r| r.measurements.last().map(|m| (r, m))) else {
        return (!terminating).then(|| started.saturating_add(rule.initial_delay));
    };
    if in_flight(last) {
        if terminating {
            return Some(now);
        }
        return Some(last.resume_at.as_ref().map_or(now, seconds));
    }
    if terminating || rule.count.is_some_and(|c| result.count >= c) {
        return None;
    }
    let finished = last
        .finished_at
        .as_ref()
        .or(last.started_at.as_ref())
        .map_or(now, seconds);
    if last.phase == AnalysisPhase::Error {
        return Some(finished.saturating_add(retry_seconds()));
    }
    rule.interval.map(|i| finished.saturating_add(i))
}

// === Recording ===

fn result_mut<'s>(status: &'s mut AnalysisRunStatus, rule: &Rule<'_>) -> &'s mut MetricResult {
    let index = match status
        .metric_results
        .iter()
        .position(|r| r.name == rule.metric.name)
    {
        Some(index) => index,
        None => {
            status.metric_results.push(MetricResult {
                name: rule.metric.name.clone(),
                phase: AnalysisPhase::Running,
                measurements: Vec::new(),
                message: None,
                count: 0,
                successful: 0,
                failed: 0,
                inconclusive: 0,
                error: 0,
                consecutive_error: 0,
                consecutive_success: 0,
                dry_run: rule.dry_run,
                metadata: BTreeMap::new(),
            });
            status.metric_results.len() - 1
        }
    };
    &mut status.metric_results[index]
}

/// Records one outcome: a new measurement, or the in-flight one resumed or terminated.
fn record(
    rule: &Rule<'_>,
    result: &mut MetricResult,
    taken: Taken,
    terminating: bool,
    masker: &Masker,
) {
    let started = taken.started_at.as_second();
    let finished = taken.finished_at.as_second().max(started);
    let replacing = result.measurements.last().is_some_and(in_flight);
    let mut m = if replacing {
        result
            .measurements
            .pop()
            .unwrap_or_else(|| fresh_measurement(started))
    } else {
        fresh_measurement(started)
    };
    if m.started_at.is_none() {
        m.started_at = Some(time(started));
    }
    m.resume_at = None;
    m.finished_at = Some(time(finished));
    match taken.observed {
        Observed::Value {
            result: value,
            query,
            metadata,
        } => {
            let (phase, verdict, error) = evaluate(
                rule.success.as_ref(),
                rule.failure.as_ref(),
                &value,
                query.as_deref(),
                masker,
            );
            m.phase = phase;
            m.message = error;
            m.value = Some(value.display());
            m.query = query;
            m.condition = Some(verdict);
            m.metadata.extend(metadata);
        }
        Observed::Judged {
            phase,
            value,
            message,
            metadata,
        } => {
            if phase.is_completed() {
                m.phase = phase;
                m.message = message;
            } else {
                m.phase = AnalysisPhase::Error;
                m.message = Some(format!(
                    "the provider reported {phase} as a verdict{}",
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                ));
            }
            m.value = value;
            m.metadata.extend(metadata);
        }
        Observed::InProgress {
            metadata, message, ..
        } if replacing && terminating => {
            // Waiting on a provider that cannot stop would keep the run open (and requeued at
            // once) forever; the run is over, so the measurement ends here.
            m.phase = AnalysisPhase::Error;
            m.message = Some(format!(
                "the provider did not stop the in-flight measurement while the run was \
                 terminating{}",
                message.map(|m| format!(": {m}")).unwrap_or_default()
            ));
            m.metadata.extend(metadata);
        }
        Observed::InProgress {
            metadata,
            message,
            resume_after,
        } => {
            m.phase = AnalysisPhase::Running;
            m.message = message;
            m.finished_at = None;
            m.resume_at = Some(time(finished.saturating_add(ceil_seconds(resume_after))));
            m.metadata.extend(metadata);
        }
        Observed::Error {
            message,
            query,
            metadata,
        } => {
            m.phase = AnalysisPhase::Error;
            m.message = Some(message);
            if query.is_some() {
                m.query = query;
            }
            m.metadata.extend(metadata);
        }
    }
    if replacing && terminating && m.phase == AnalysisPhase::Successful && m.message.is_none() {
        m.message = Some("metric terminated".into());
    }
    count_verdict(result, m.phase);
    result.measurements.push(m);
}

fn fresh_measurement(started: i64) -> Measurement {
    Measurement {
        phase: AnalysisPhase::Running,
        message: None,
        started_at: Some(time(started)),
        finished_at: None,
        value: None,
        metadata: BTreeMap::new(),
        resume_at: None,
        query: None,
        condition: None,
    }
}

/// Upstream's counters: every verdict but Error counts toward `count` and resets the error streak.
fn count_verdict(r: &mut MetricResult, phase: AnalysisPhase) {
    let bump = |n: &mut i32| *n = n.saturating_add(1);
    match phase {
        AnalysisPhase::Successful => {
            bump(&mut r.successful);
            bump(&mut r.count);
            bump(&mut r.consecutive_success);
            r.consecutive_error = 0;
        }
        AnalysisPhase::Failed | AnalysisPhase::Inconclusive => {
            if phase == AnalysisPhase::Failed {
                bump(&mut r.failed);
            } else {
                bump(&mut r.inconclusive);
            }
            bump(&mut r.count);
            r.consecutive_error = 0;
            r.consecutive_success = 0;
        }
        AnalysisPhase::Error => {
            bump(&mut r.error);
            bump(&mut r.consecutive_error);
            r.consecutive_success = 0;
        }
        AnalysisPhase::Pending | AnalysisPhase::Running => {}
    }
}

// === Judging ===

/// Judges `value`; the third element is the measurement's message when evaluation failed or the
/// value is no evidence ([`doubt`]).
fn evaluate(
    success: Option<&Expr>,
    failure: Option<&Expr>,
    value: &Value,
    query: Option<&str>,
    masker: &Masker,
) -> (AnalysisPhase, ConditionVerdict, Option<String>) {
    let mut verdict = ConditionVerdict {
        success_condition: success.map(|e| e.source().to_owned()),
        failure_condition: failure.map(|e| e.source().to_owned()),
        ..ConditionVerdict::default()
    };
    // Masked before it is cut, so a cut never leaves the start of a secret.
    let shown = truncated(&masker.redact(&value.display()));
    let run = |which: &str, expr: Option<&Expr>| -> Result<Option<bool>, String> {
        let Some(expr) = expr else { return Ok(None) };
        expr.eval_bool(value)
            .map(Some)
            .map_err(|e| explain_error(which, expr, value, &shown, query, e))
    };
    // Success first, as upstream: its error is the one reported when both would fail.
    let outcome = run("successCondition", success).and_then(|s| {
        verdict.success_condition_met = s;
        run("failureCondition", failure).map(|f| (s, f))
    });
    let (s, f) = match outcome {
        Ok(pair) => pair,
        Err(message) => {
            verdict.message = Some(format!("{message}: Error"));
            return (AnalysisPhase::Error, verdict, Some(message));
        }
    };
    verdict.failure_condition_met = f;
    let (phase, why) = match (s, f) {
        (None, None) => (
            AnalysisPhase::Successful,
            "no successCondition or failureCondition".to_owned(),
        ),
        (Some(true), None) => (AnalysisPhase::Successful, "successCondition held".into()),
        (Some(false), None) => (
            AnalysisPhase::Failed,
            "successCondition did not hold".into(),
        ),
        (None, Some(true)) => (AnalysisPhase::Failed, "failureCondition held".into()),
        (None, Some(false)) => (
            AnalysisPhase::Successful,
            "failureCondition did not hold".into(),
        ),
        (Some(s), Some(true)) => (
            AnalysisPhase::Failed,
            if s {
                "failureCondition held (successCondition held too; failure wins)".into()
            } else {
                "failureCondition held".into()
            },
        ),
        (Some(true), Some(false)) => (
            AnalysisPhase::Successful,
            "successCondition held and failureCondition did not".into(),
        ),
        (Some(false), Some(false)) => (
            AnalysisPhase::Inconclusive,
            "neither successCondition nor failureCondition held".into(),
        ),
    };
    if f != Some(true)
        && let Some(doubt) = doubt(value, [success, failure].into_iter().flatten())
    {
        let phase = AnalysisPhase::Inconclusive;
        verdict.message = Some(format!("result {shown}: {doubt}: {phase}"));
        return (phase, verdict, Some(format!("result {shown}: {doubt}")));
    }
    verdict.message = Some(format!("result {shown}: {why}: {phase}"));
    (phase, verdict, None)
}

/// Why `value` is no evidence either way, unless one of `conditions` judges that case on
/// purpose: an empty result (no series, `[]`, `{}`, null) unless a condition calls `len` or
/// `isNil`; a NaN anywhere in it unless one calls `isNaN`.
fn doubt<'a>(value: &Value, conditions: impl Iterator<Item = &'a Expr> + Clone) -> Option<String> {
    let calls = |f: &str| conditions.clone().any(|e| e.calls(f));
    let empty = match value {
        Value::Null => true,
        Value::List(items) => items.is_empty(),
        Value::Map(entries) => entries.is_empty(),
        _ => false,
    };
    if empty && !calls("len") && !calls("isNil") {
        return Some(
            "the result is empty (no data), which is no evidence either way; to judge an empty \
             result on purpose, test it in a condition (len(result) == 0)"
                .into(),
        );
    }
    if has_nan(value) && !calls("isNaN") {
        return Some(
            "the result holds NaN (often 0/0: no traffic), which is no evidence either way; to \
             judge NaN on purpose, test it in a condition (isNaN(result[0]))"
                .into(),
        );
    }
    None
}

fn has_nan(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_nan(),
        Value::List(items) => items.iter().any(has_nan),
        Value::Map(entries) => entries.values().any(has_nan),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

/// Says exactly what went wrong: which condition, which query, what it returned.
fn explain_error(
    which: &str,
    expr: &Expr,
    value: &Value,
    shown: &str,
    query: Option<&str>,
    error: ExprError,
) -> String {
    let reason = match error {
        ExprError::Eval { reason, .. } | ExprError::Parse { reason, .. } => reason,
    };
    // The sentence below already says so.
    let reason = reason.trim_end_matches(" (the query returned no data)");
    let source = match query {
        // Verbatim, so the query can be copied from the message and run by hand.
        Some(q) => format!("query `{q}`"),
        None => "the provider".to_owned(),
    };
    let returned = match value {
        Value::List(items) if items.is_empty() => "returned no data (an empty result)".to_owned(),
        Value::Null => "returned no data (null)".to_owned(),
        _ => format!("returned {shown}"),
    };
    format!(
        "{which} {:?} could not be evaluated: {source} {returned}: {reason}",
        expr.source()
    )
}

fn truncated(text: &str) -> String {
    match text.char_indices().nth(MAX_VALUE_IN_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

// === Assessing ===

fn assess_all(rules: &[Rule<'_>], status: &mut AnalysisRunStatus, terminating: bool) {
    for rule in rules {
        let exists = status.metric_result(&rule.metric.name).is_some();
        if !exists {
            if !terminating {
                continue; // upstream records no result before the first measurement
            }
            result_mut(status, rule);
        }
        if let Some(result) = status
            .metric_results
            .iter_mut()
            .find(|r| r.name == rule.metric.name)
        {
            let (phase, message) = assess(rule, result, terminating);
            result.phase = phase;
            result.message = message;
        }
    }
}

/// A metric's phase and why (upstream `assessMetricStatus`, plus the #4479 rule).
fn assess(rule: &Rule<'_>, r: &MetricResult, terminating: bool) -> (AnalysisPhase, Option<String>) {
    if r.phase.is_completed() {
        return (r.phase, r.message.clone());
    }
    let Some(last) = r.measurements.last() else {
        if terminating {
            return (
                AnalysisPhase::Inconclusive,
                Some("the run was terminated before any measurement".into()),
            );
        }
        return (AnalysisPhase::Pending, None);
    };
    if in_flight(last) {
        return (AnalysisPhase::Running, last.message.clone());
    }
    if rule.failure_limit >= 0 && r.failed > rule.failure_limit {
        return (
            AnalysisPhase::Failed,
            Some(format!(
                "failed {} of {} measurements, failureLimit {}",
                r.failed, r.count, rule.failure_limit
            )),
        );
    }
    if r.inconclusive > rule.inconclusive_limit {
        return (
            AnalysisPhase::Inconclusive,
            Some(format!(
                "{} of {} measurements inconclusive, inconclusiveLimit {}{}",
                r.inconclusive,
                r.count,
                rule.inconclusive_limit,
                last_message(last, AnalysisPhase::Inconclusive)
            )),
        );
    }
    if r.consecutive_error > rule.consecutive_error_limit {
        return (
            AnalysisPhase::Error,
            Some(format!(
                "{} consecutive measurement errors, consecutiveErrorLimit {}{}",
                r.consecutive_error,
                rule.consecutive_error_limit,
                last_error(last)
            )),
        );
    }
    let csl = rule.consecutive_success_limit;
    if csl > 0 && r.consecutive_success >= csl {
        return successful(
            r,
            format!(
                "{} consecutive successful measurements, consecutiveSuccessLimit {csl}",
                r.consecutive_success
            ),
        );
    }
    if let Some(count) = rule.count.filter(|c| r.count >= *c) {
        if csl > 0 {
            // Upstream: the count ran out before the streak was reached.
            let phase = if rule.failure_limit >= 0 {
                AnalysisPhase::Inconclusive
            } else {
                AnalysisPhase::Failed
            };
            return (
                phase,
                Some(format!(
                    "count {count} reached without {csl} consecutive successful measurements \
                     (consecutiveSuccessLimit)"
                )),
            );
        }
        return successful(
            r,
            format!(
                "{} of {} measurements successful, count {count} reached",
                r.successful, r.count
            ),
        );
    }
    if terminating {
        return successful(
            r,
            format!(
                "the run was terminated after {} of {} measurements succeeded",
                r.successful, r.count
            ),
        );
    }
    (AnalysisPhase::Running, last.message.clone())
}

/// Successful, unless no measurement ever was (the #4479 rule).
fn successful(r: &MetricResult, why: String) -> (AnalysisPhase, Option<String>) {
    if r.successful > 0 {
        return (AnalysisPhase::Successful, Some(why));
    }
    if r.count == 0 && r.error > 0 {
        return (
            AnalysisPhase::Error,
            Some(format!(
                "{why}, but every measurement errored ({} errors) and a metric needs a successful \
                 measurement to succeed",
                r.error
            )),
        );
    }
    (
        AnalysisPhase::Inconclusive,
        Some(format!(
            "{why}, but no measurement was successful ({} failed, {} inconclusive, {} errors) and \
             a metric needs a successful measurement to succeed",
            r.failed, r.inconclusive, r.error
        )),
    )
}

fn last_error(last: &Measurement) -> String {
    match (&last.phase, &last.message) {
        (AnalysisPhase::Error, Some(m)) => format!("; last error: {m}"),
        _ => String::new(),
    }
}

/// `; last measurement: <message>` when the last measurement is in `phase` and says why.
fn last_message(last: &Measurement, phase: AnalysisPhase) -> String {
    match &last.message {
        Some(m) if last.phase == phase => format!("; last measurement: {m}"),
        _ => String::new(),
    }
}

struct RunVerdict {
    /// The final phase when the run is complete; `None` while running.
    phase: Option<AnalysisPhase>,
    message: Option<String>,
    summary: RunSummary,
    dry_run_summary: Option<RunSummary>,
}

/// How bad a completed phase is for the run (upstream `IsWorse`).
fn severity(phase: AnalysisPhase) -> u8 {
    match phase {
        AnalysisPhase::Failed => 4,
        AnalysisPhase::Error => 3,
        AnalysisPhase::Inconclusive => 2,
        AnalysisPhase::Pending | AnalysisPhase::Running => 1,
        AnalysisPhase::Successful => 0,
    }
}

fn run_verdict(
    spec: &AnalysisRunSpec,
    rules: &[Rule<'_>],
    status: &AnalysisRunStatus,
) -> RunVerdict {
    let mut summary = RunSummary::default();
    let mut dry = RunSummary::default();
    let mut complete = true;
    let mut worst: Option<(AnalysisPhase, &str, Option<&str>)> = None;
    for rule in rules {
        let result = status.metric_result(&rule.metric.name);
        let phase = result.map_or(AnalysisPhase::Pending, |r| r.phase);
        let s = if rule.dry_run { &mut dry } else { &mut summary };
        s.count = s.count.saturating_add(1);
        match phase {
            AnalysisPhase::Successful => s.successful = s.successful.saturating_add(1),
            AnalysisPhase::Failed => s.failed = s.failed.saturating_add(1),
            AnalysisPhase::Inconclusive => s.inconclusive = s.inconclusive.saturating_add(1),
            AnalysisPhase::Error => s.error = s.error.saturating_add(1),
            AnalysisPhase::Pending | AnalysisPhase::Running => complete = false,
        }
        if !rule.dry_run
            && phase.is_completed()
            && worst.is_none_or(|(w, _, _)| severity(phase) > severity(w))
        {
            worst = Some((
                phase,
                &rule.metric.name,
                result.and_then(|r| r.message.as_deref()),
            ));
        }
    }
    let dry_run_summary = rules.iter().any(|r| r.dry_run).then_some(dry);
    if !complete {
        return RunVerdict {
            phase: None,
            message: None,
            summary,
            dry_run_summary,
        };
    }
    let phase = worst.map_or(AnalysisPhase::Successful, |(p, _, _)| p);
    let detail = worst
        .filter(|(p, _, _)| *p != AnalysisPhase::Successful)
        .map(|(p, name, message)| match message {
            Some(m) => format!("metric {name:?} assessed {p}: {m}"),
            None => format!("metric {name:?} assessed {p}"),
        });
    let message = if spec.is_terminated() {
        Some(match detail {
            Some(d) => format!("Run Terminated: {d}"),
            None => "Run Terminated".to_owned(),
        })
    } else {
        detail
    };
    RunVerdict {
        phase: Some(phase),
        message,
        summary,
        dry_run_summary,
    }
}

fn metric_reason(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Successful => "MetricSuccessful",
        AnalysisPhase::Failed => "MetricFailed",
        AnalysisPhase::Error => "MetricError",
        AnalysisPhase::Inconclusive => "MetricInconclusive",
        AnalysisPhase::Pending | AnalysisPhase::Running => "MetricRunning",
    }
}

fn run_reason(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Successful => "AnalysisRunSuccessful",
        AnalysisPhase::Failed => "AnalysisRunFailed",
        AnalysisPhase::Error => "AnalysisRunError",
        AnalysisPhase::Inconclusive => "AnalysisRunInconclusive",
        AnalysisPhase::Pending | AnalysisPhase::Running => "AnalysisRunRunning",
    }
}

fn unchanged(status: &AnalysisRunStatus) -> RunPlan {
    RunPlan {
        status: status.clone(),
        requeue_after: None,
        events: Vec::new(),
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;

/// Checks an AnalysisTemplate (or ClusterAnalysisTemplate) the way [`validate`] checks a run, so a
/// condition that does not parse is reported on the template before any run is made from it.
/// Arguments are not known yet, so each `{{args.*}}` stands in as `0` (which keeps conditions,
/// counts and durations parseable); a template whose metrics all come from `templates`
/// references may have none of its own.
pub fn validate_template(template: &AnalysisTemplateSpec) -> Result<(), Vec<SpecError>> {
    if template.metrics.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<ResolvedArg> = template
        .args
        .iter()
        .map(|a| ResolvedArg {
            name: a.name.clone(),
            value: Some("0".into()),
            secret: false,
        })
        .collect();
    let metrics = resolve(&template.metrics, &placeholders)
        .map_err(|e| vec![SpecError::new("metrics", e.to_string())])?;
    validate(&AnalysisRunSpec {
        metrics,
        dry_run: template.dry_run.clone(),
        measurement_retention: template.measurement_retention.clone(),
        ..Default::default()
    })
}
