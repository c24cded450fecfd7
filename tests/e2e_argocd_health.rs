//! Argo CD's own health checks (its Lua scripts for `argoproj.io/Rollout` and
//! `flagger.app/Canary`, `tests/common/argocd.rs`) run on every status Sluice writes on the real
//! cluster, as Argo CD would show them: never Healthy before an update is complete, Suspended at
//! a pause, Degraded after an abort or a failed analysis, Progressing in between. Sluice's Rust
//! copy of the Rollout check (`sluice::engine::health::argocd_health`, used by the engine's
//! simulation tests) must give the same answer on every status Sluice wrote.
//!
//! The first two tests need no cluster: Argo CD's own `health_test.yaml` cases pass through the
//! runner, which proves it runs the scripts as Argo CD does.

mod common;

use std::time::Duration;

use common::argocd::{ArgoHealth, HealthScript, health_cases, read_object};
use common::controller::ControllerProcess;
use common::exporter::Exporter;
use common::recorder::{Record, StatusRecorder};
use common::rollouts::{Fixture, fixture};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice::api::argo::rollout::{Rollout, RolloutStatus};
use sluice::api::flagger::canary::{Canary, CanaryPhase};
use sluice::api::flagger::metric_template::MetricTemplate;
use sluice::engine::health::{Health, argocd_health, health_of_phase};
use sluice::engine::intent::{self, Intent};

const ROLLOUT: &str = "argoproj.io/Rollout";
const CANARY: &str = "flagger.app/Canary";

fn assert_argo_cds_own_cases_pass(kind: &str) {
    let script = HealthScript::of(kind);
    let cases = health_cases(kind);
    assert!(cases.len() >= 6, "too few cases for {kind}: {cases:?}");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = script.health(&read_object(&case.input));
            (got.as_ref() != Ok(&case.expected)).then(|| {
                format!(
                    "{}: expected {:?}, got {got:?}",
                    case.input.display(),
                    case.expected
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn argo_cds_own_rollout_health_cases_pass_through_the_runner() {
    assert_argo_cds_own_cases_pass(ROLLOUT);
}

/// Sluice's Rust copy against Argo CD's script on Argo CD's own cases, without `status.phase`
/// (the copy recomputes from the fields; with a phase, the script only shows it).
#[test]
fn the_rust_copy_agrees_with_argo_cds_script_on_argo_cds_own_cases() {
    let script = HealthScript::of(ROLLOUT);
    let mut compared = 0;
    let mut disagreements = Vec::new();
    for case in health_cases(ROLLOUT) {
        let object = without_phase(&read_object(&case.input));
        let Ok(rollout) = serde_json::from_value::<Rollout>(upgraded(&object)) else {
            println!("not a Rollout Sluice reads: {}", case.input.display());
            continue;
        };
        if let Some(why) = not_comparable(&object) {
            println!("not compared: {}: {why}", case.input.display());
            continue;
        }
        let lua = script.health(&object).expect("the script runs");
        let rust = rust_health(&rollout);
        compared += 1;
        if rust != lua.status {
            disagreements.push(format!(
                "{}: Argo CD {lua:?}, Rust copy {rust}",
                case.input.display()
            ));
        }
    }
    assert!(compared >= 10, "only {compared} cases compared");
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// Why a case of Argo CD's cannot be judged by the Rust copy: a field only Argo Rollouts writes.
fn not_comparable(object: &Value) -> Option<&'static str> {
    let annotation = &object["metadata"]["annotations"]["rollout.argoproj.io/workload-generation"];
    (!annotation.is_null())
        .then_some("the workload-generation annotation, which Sluice does not write (README)")
}

/// A status of Argo Rollouts before v0.8 in today's format, as Argo CD's script reads it:
/// `status.canary.stableRS` is `status.stableRS`, and a blue-green status without one (v0.7)
/// is taken as stable.
fn upgraded(object: &Value) -> Value {
    let mut object = object.clone();
    let legacy = object["status"]["canary"]["stableRS"].clone();
    let blue_green = !object["spec"]["strategy"]["blueGreen"].is_null();
    let current = object["status"]["currentPodHash"].clone();
    if let Some(status) = object["status"].as_object_mut()
        && !status.contains_key("stableRS")
    {
        if !legacy.is_null() {
            status.insert("stableRS".into(), legacy);
        } else if blue_green {
            status.insert("stableRS".into(), current);
        }
    }
    object
}

#[test]
fn argo_cds_own_canary_health_cases_pass_through_the_runner() {
    assert_argo_cds_own_cases_pass(CANARY);
}

const TIMEOUT: Duration = Duration::from_secs(90);

/// A recorded state and the health Argo CD's script gives it.
struct Judged {
    record: Record,
    argo: ArgoHealth,
}

/// Argo CD's health of every recorded state; a script error fails the test (Argo CD would show
/// the error instead of a health).
fn judge(script: &HealthScript, records: Vec<Record>) -> Vec<Judged> {
    assert!(!records.is_empty(), "nothing was recorded");
    records
        .into_iter()
        .map(|record| {
            let argo = script.health(&record.object).unwrap_or_else(|e| {
                panic!(
                    "Argo CD's script fails on a status Sluice wrote: {e}\n{}",
                    serde_json::to_string_pretty(&record.object).unwrap_or_default()
                )
            });
            Judged { record, argo }
        })
        .collect()
}

/// The health statuses in order, repeats folded: the phases Argo CD's UI goes through.
fn collapsed(judged: &[Judged]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for j in judged {
        if out.last() != Some(&j.argo.status.as_str()) {
            out.push(&j.argo.status);
        }
    }
    out
}

/// One line per recorded state, for failure messages.
fn timeline(judged: &[Judged]) -> String {
    judged
        .iter()
        .map(|j| {
            let s = j.record.status();
            format!(
                "rv {} gen {} {} phase {} | Argo CD: {} {:?} | status {}",
                j.record.resource_version,
                j.record.generation(),
                if j.record.by_test { "(test)" } else { "" },
                s["phase"],
                j.argo.status,
                j.argo.message,
                compact_status(s)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn compact_status(s: &Value) -> String {
    let mut s = s.clone();
    if let Some(o) = s.as_object_mut() {
        for noisy in [
            "conditions",
            "canary",
            "blueGreen",
            "selector",
            "trackedConfigs",
        ] {
            o.remove(noisy);
        }
    }
    s.to_string()
}

// === Rollout ===

fn rollout_of(record: &Record) -> Rollout {
    serde_json::from_value(record.object.clone()).expect("a recorded Rollout")
}

fn status(r: &Rollout) -> RolloutStatus {
    r.status.clone().unwrap_or_default()
}

fn observed(r: &Rollout) -> bool {
    status(r).observed_generation == r.metadata.generation.unwrap_or(0).to_string()
}

/// The update is complete: the current revision is the stable one and every replica of it is
/// updated and available; a canary (without traffic routing) has no old replica left, a
/// blue-green one has its active Service on the current pods (old ones wait for their delay).
fn complete(r: &Rollout) -> bool {
    let s = status(r);
    let want = r.spec.replicas.unwrap_or(1);
    let settled = if r.spec.strategy.blue_green.is_some() {
        s.blue_green.active_selector == s.current_pod_hash
    } else {
        s.replicas == want
    };
    observed(r)
        && !s.current_pod_hash.is_empty()
        && s.stable_rs == s.current_pod_hash
        && s.updated_replicas == want
        && s.available_replicas == want
        && settled
}

fn paused(r: &Rollout) -> bool {
    observed(r) && !status(r).pause_conditions.is_empty()
}

/// The object without `status.phase` and `status.message`: Argo CD's script then computes the
/// health from the status fields, as Sluice's Rust copy does.
fn without_phase(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(status) = object["status"].as_object_mut() {
        status.remove("phase");
        status.remove("message");
    }
    object
}

fn rust_health(r: &Rollout) -> &'static str {
    health_name(argocd_health(
        &r.spec,
        &status(r),
        r.metadata.generation.unwrap_or(0),
    ))
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Healthy => "Healthy",
        Health::Progressing => "Progressing",
        Health::Suspended => "Suspended",
        Health::Degraded => "Degraded",
    }
}

struct RolloutRun<'a> {
    f: &'a Fixture,
    recorder: &'a StatusRecorder,
    script: &'a HealthScript,
}

impl RolloutRun<'_> {
    fn failure(&self, what: &str) -> String {
        let judged = judge(self.script, self.recorder.records());
        format!(
            "{what}\nrecorded:\n{}\ncontroller log (end):\n{}",
            timeline(&judged),
            self.f.ctl.log_end()
        )
    }

    async fn wait(&self, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let r = self
                .f
                .rollouts
                .get("web")
                .await
                .expect("reading the Rollout");
            if check(&r) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{}", self.failure(&format!("timed out waiting for {what}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn set_image(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
        let r = self
            .f
            .rollouts
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the image");
        self.recorder.by_test(r.metadata.resource_version);
    }

    /// Sends an intent with the exact patches of Argo's kubectl plugin.
    async fn intent(&self, intent: Intent) {
        let r = self
            .f
            .rollouts
            .get("web")
            .await
            .expect("reading the Rollout");
        let (spec, status) = intent::patches(intent, &r);
        let pp = PatchParams::default();
        if let Some(patch) = spec {
            let r = self
                .f
                .rollouts
                .patch("web", &pp, &Patch::Merge(&patch))
                .await;
            self.recorder
                .by_test(r.expect("patching the Rollout").metadata.resource_version);
        }
        if let Some(patch) = status {
            let r = self
                .f
                .rollouts
                .patch_status("web", &pp, &Patch::Merge(&patch))
                .await;
            self.recorder
                .by_test(r.expect("patching the status").metadata.resource_version);
        }
    }
}

fn rollout(strategy: Value) -> Rollout {
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
            "strategy": strategy,
        },
    }))
    .expect("test Rollout")
}

/// The health Argo CD's script shows as a Rollout with `strategy` goes through its first deploy,
/// an update paused (at a step or for promotion) then promoted, and a second update aborted at
/// the pause: Progressing until the first revision is up, Healthy, Progressing, Suspended at the
/// pause (with `pause_reason` as the message, as Argo writes it), Progressing, Healthy once the
/// new revision is stable, Progressing, Suspended, then Degraded from the abort on; Healthy only
/// on complete statuses; and Sluice's Rust copy of the check agrees with the script on every
/// status Sluice wrote, read with or without `status.phase`.
async fn assert_health_through_promote_and_abort(f: &Fixture, strategy: Value, pause_reason: &str) {
    let script = HealthScript::of(ROLLOUT);
    let recorder = StatusRecorder::start::<Rollout>(&f.env.client, &f.ns.name, "web").await;
    let run = RolloutRun {
        f,
        recorder: &recorder,
        script: &script,
    };
    let created = f
        .rollouts
        .create(&PostParams::default(), &rollout(strategy))
        .await
        .expect("creating the Rollout");
    recorder.by_test(created.metadata.resource_version);
    let first = run.wait("the first revision complete", complete).await;

    run.set_image("registry.invalid/web:2").await;
    let held = run.wait("paused", paused).await;
    let second = status(&held).current_pod_hash;
    assert_ne!(second, status(&first).current_pod_hash);
    run.intent(Intent::Promote).await;
    run.wait("the second revision complete", |r| {
        complete(r) && status(r).stable_rs == second
    })
    .await;

    run.set_image("registry.invalid/web:3").await;
    run.wait("paused again", |r| {
        paused(r) && status(r).current_pod_hash != second
    })
    .await;
    run.intent(Intent::Abort).await;
    let last = run
        .wait("aborted and back on the stable pods", |r| {
            let s = status(r);
            observed(r)
                && s.abort
                && s.stable_rs == second
                && s.phase
                    .is_some_and(|p| health_name(health_of_phase(p)) == "Degraded")
                && s.available_replicas == 2
        })
        .await;
    recorder.wait_seen(last.metadata.resource_version).await;

    let judged = judge(&script, recorder.records());
    let context = || run.failure("");
    println!("{}", timeline(&judged));
    assert_eq!(
        collapsed(&judged),
        [
            "Progressing",
            "Healthy",
            "Progressing",
            "Suspended",
            "Progressing",
            "Healthy",
            "Progressing",
            "Suspended",
            "Degraded"
        ],
        "{}",
        context()
    );
    let mut aborted = false;
    for j in &judged {
        let r = rollout_of(&j.record);
        let s = status(&r);
        let at = format!(
            "at rv {}: {:?}\n{}",
            j.record.resource_version,
            j.argo,
            context()
        );
        if j.argo.status == "Healthy" {
            assert!(complete(&r), "Healthy before the update is complete {at}");
        }
        if j.record.by_test {
            // The user's own writes (a new spec, promote's cleared pauseConditions) keep the
            // phase Sluice wrote until it reconciles: Argo CD shows that phase, as with Argo.
            continue;
        }
        let rust = rust_health(&r);
        assert_eq!(
            rust, j.argo.status,
            "Sluice's Rust copy of Argo CD's check disagrees with Argo CD's script {at}"
        );
        let from_fields = script
            .health(&without_phase(&j.record.object))
            .expect("the script runs");
        assert_eq!(
            rust, from_fields.status,
            "Sluice's Rust copy disagrees with Argo CD's script reading the fields only {at}"
        );
        if paused(&r) && !s.abort {
            assert_eq!(
                (j.argo.status.as_str(), j.argo.message.as_str()),
                ("Suspended", pause_reason),
                "a pause shows as Argo's {at}"
            );
        }
        aborted |= s.abort && observed(&r);
        if aborted {
            assert_eq!(j.argo.status, "Degraded", "after the abort {at}");
            assert!(
                j.argo.message.starts_with("RolloutAborted"),
                "the abort is the message {at}"
            );
        }
    }
    assert!(
        aborted,
        "no status after the abort was recorded\n{}",
        context()
    );
}

/// A canary Rollout (no traffic routing) paused at a `pause: {}` step.
#[tokio::test]
async fn argo_cds_health_script_follows_a_canary_rollout_through_promote_and_abort() {
    let Some(f) = fixture("argocd-ro").await else {
        return;
    };
    let canary = json!({"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}});
    assert_health_through_promote_and_abort(&f, canary, "CanaryPauseStep").await;
}

/// A blue-green Rollout waiting for a manual promotion (`autoPromotionEnabled: false`).
#[tokio::test]
async fn argo_cds_health_script_follows_a_blue_green_rollout_through_promote_and_abort() {
    let Some(f) = fixture("argocd-bg").await else {
        return;
    };
    for name in ["web-active", "web-preview"] {
        f.env
            .create(
                &f.ns.name,
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
                }),
            )
            .await;
    }
    let blue_green = json!({"blueGreen": {"activeService": "web-active",
        "previewService": "web-preview", "autoPromotionEnabled": false}});
    assert_health_through_promote_and_abort(&f, blue_green, "BlueGreenPause").await;
}

// === Canary ===

struct CanaryRun {
    env: common::TestEnv,
    ns: common::TestNamespace,
    ctl: ControllerProcess,
    recorder: StatusRecorder,
    _exporter: Exporter,
}

impl CanaryRun {
    /// A target Deployment, a metric (`rate`, served at `value`) that must be at least 99, and a
    /// Canary for it (three 1 s iterations, two failed checks roll back), recorded from its
    /// creation on.
    async fn start(prefix: &str, value: f64) -> Option<CanaryRun> {
        let env = common::test_env().await?;
        let ns = env.namespace(prefix).await;
        let exporter = Exporter::start(&env, prefix).await;
        exporter.set("rate", value);
        exporter.wait_scraped("rate", value).await;
        let template: MetricTemplate = serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "success-rate"},
            "spec": {"provider": {"type": "prometheus"}, "query": exporter.selector("rate")},
        }))
        .expect("MetricTemplate JSON");
        Api::<MetricTemplate>::namespaced(env.client.clone(), &ns.name)
            .create(&PostParams::default(), &template)
            .await
            .expect("creating the MetricTemplate");
        Api::<Deployment>::namespaced(env.client.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &common::canary::target("podinfo", 2, "podinfo:6.0.0", 9898),
            )
            .await
            .expect("creating the target");
        let ctl = ControllerProcess::start(&env, &ns.name).await;
        let recorder = StatusRecorder::start::<Canary>(&env.client, &ns.name, "podinfo").await;
        let canary: Canary = serde_json::from_value(common::canary::kubernetes(
            "podinfo",
            Some(60),
            json!({"interval": "1s", "threshold": 2, "iterations": 3,
                    "metrics": [{"name": "success", "templateRef": {"name": "success-rate"},
                        "thresholdRange": {"min": 99}}]}),
        ))
        .expect("Canary JSON");
        let created = Api::<Canary>::namespaced(env.client.clone(), &ns.name)
            .create(&PostParams::default(), &canary)
            .await
            .expect("creating the Canary");
        recorder.by_test(created.metadata.resource_version);
        Some(CanaryRun {
            env,
            ns,
            ctl,
            recorder,
            _exporter: exporter,
        })
    }

    fn failure(&self, script: &HealthScript, what: &str) -> String {
        let judged = judge(script, self.recorder.records());
        format!(
            "{what}\nrecorded:\n{}\ncontroller log (end):\n{}",
            timeline(&judged),
            self.ctl.log_end()
        )
    }

    async fn wait_phase(&self, script: &HealthScript, phase: CanaryPhase) {
        let canaries: Api<Canary> = Api::namespaced(self.env.client.clone(), &self.ns.name);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let c = canaries.get("podinfo").await.expect("reading the Canary");
            if c.status.and_then(|s| s.phase) == Some(phase) {
                self.recorder.wait_seen(c.metadata.resource_version).await;
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{}", self.failure(script, &format!("Canary not {phase:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn set_image(&self, image: &str) {
        Api::<Deployment>::namespaced(self.env.client.clone(), &self.ns.name)
            .patch(
                "podinfo",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "podinfo", "image": image}]}}}})),
            )
            .await
            .expect("updating the target's image");
    }

    /// Runs initialisation and one new revision to `end`, then judges every recorded status:
    /// Argo CD's script must go through `expected` (repeats folded), show Healthy only on a
    /// promoted spec with no canary traffic, and never leave Degraded once the run failed.
    async fn assert_health_through(&self, end: CanaryPhase, expected: &[&str]) {
        let script = HealthScript::of(CANARY);
        self.wait_phase(&script, CanaryPhase::Initialized).await;
        self.set_image("podinfo:6.0.1").await;
        self.wait_phase(&script, end).await;

        let judged = judge(&script, self.recorder.records());
        let context = || self.failure(&script, "");
        println!("{}", timeline(&judged));
        assert_eq!(collapsed(&judged), expected, "{}", context());
        let mut failed = false;
        for j in &judged {
            let s = j.record.status();
            let at = format!(
                "at rv {}: {:?}\n{}",
                j.record.resource_version,
                j.argo,
                context()
            );
            if j.argo.status == "Healthy" {
                assert!(
                    s["lastAppliedSpec"] == s["lastPromotedSpec"] && s["canaryWeight"] == 0,
                    "Healthy before the primary runs the target's spec {at}"
                );
            }
            failed |= s["phase"] == "Failed";
            if failed {
                assert_eq!(j.argo.status, "Degraded", "after the failure {at}");
            }
        }
    }
}

/// A Canary through Initialized, a new revision's analysis and promotion to Succeeded: Argo CD
/// shows Unknown while it initialises (as for Flagger), Healthy once initialised, Progressing
/// through the analysis and promotion, Healthy when Succeeded.
#[tokio::test]
async fn argo_cds_health_script_follows_a_canary_to_succeeded() {
    let Some(run) = CanaryRun::start("argocd-cn-ok", 99.5).await else {
        return;
    };
    run.assert_health_through(
        CanaryPhase::Succeeded,
        &["Unknown", "Healthy", "Progressing", "Healthy"],
    )
    .await;
}

/// A Canary whose new revision fails its metric: Argo CD shows Degraded from the rollback on.
#[tokio::test]
async fn argo_cds_health_script_shows_a_failed_canary_as_degraded() {
    let Some(run) = CanaryRun::start("argocd-cn-bad", 50.0).await else {
        return;
    };
    run.assert_health_through(
        CanaryPhase::Failed,
        &["Unknown", "Healthy", "Progressing", "Degraded"],
    )
    .await;
}
