//! Hostile and broken analysis inputs on the real cluster (issue 14, items 4, 6, 7, 8): an
//! AnalysisRun whose owner is a Secret, Prometheus answering NaN or nothing, an endpoint that
//! echoes a secret back in several encodings, and one answering a 2 MB value. Each test runs its
//! own `sluice controller` limited to its own namespace.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use common::analysis::{phase, status_text, wait_completed};
use common::controller::ControllerProcess;
use common::exporter::Exporter;
use common::{TestEnv, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::api::argo::analysis::AnalysisPhase;
use sluice::api::flagger::canary::{Canary, CanaryPhase};
use sluice::api::flagger::metric_template::MetricTemplate;

async fn create_run(env: &TestEnv, ns: &str, run: serde_json::Value) -> String {
    let run = serde_json::from_value(run).expect("test AnalysisRun JSON");
    common::analysis::create_run(env, ns, run).await
}

/// Every string in a JSON document, unescaped, one per line, plus the document itself.
fn all_text(doc: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::Object(map) => map.iter().for_each(|(k, i)| {
                out.push_str(k);
                out.push('\n');
                walk(i, out);
            }),
            _ => {}
        }
    }
    let mut out = doc.to_string();
    out.push('\n');
    walk(doc, &mut out);
    out
}

/// The namespace's Events, as JSON.
async fn events_json(env: &TestEnv, ns: &str) -> serde_json::Value {
    let api: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .expect("listing Events");
    serde_json::to_value(&list.items).expect("Events as JSON")
}

/// The messages of the Events recorded on AnalysisRun `name`.
async fn run_event_messages(env: &TestEnv, ns: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .expect("listing Events");
    list.items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("AnalysisRun"))
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

/// Each byte but ASCII letters and digits as `%XX` (what a strict encoder sends).
fn percent_all(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// === Item 4 ===

#[tokio::test]
async fn a_field_ref_never_reads_a_secret_that_owns_the_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-fieldref").await;
    let password = format!("pw-{}", common::unique_name("fieldref"));
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "stringData": {"password": password},
    }))
    .expect("Secret JSON");
    let secret = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    let uid = secret.metadata.uid.expect("the Secret's uid");
    let ctl = ControllerProcess::start(&env, &ns.name).await;

    let name = create_run(
        &env,
        &ns.name,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "steal", "ownerReferences": [{
                "apiVersion": "v1", "kind": "Secret", "name": "db", "uid": uid,
                "controller": true,
            }]},
            "spec": {
                "args": [{"name": "pw", "valueFrom": {"fieldRef": {"fieldPath": "data.password"}}}],
                "metrics": [{"name": "m", "provider": {"prometheus": {
                    "query": "vector(1) # {{args.pw}}",
                }}}],
            },
        }),
    )
    .await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    assert_eq!(phase(&run), AnalysisPhase::Error, "{}", status_text(&run));
    let message = run
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    for expected in ["args.pw", "fieldRef", "Rollout", "Secret db"] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    let events = eventually(
        Duration::from_secs(20),
        "the InvalidSpec Event on the run",
        || async {
            let messages = run_event_messages(&env, &ns.name, &name).await;
            messages
                .iter()
                .any(|m| m.starts_with("InvalidSpec") && m.contains("args.pw"))
                .then_some(messages)
        },
    )
    .await;

    let encoded = STANDARD.encode(&password);
    let object = serde_json::to_value(&run).expect("run JSON");
    let everywhere = format!(
        "{}\n{}\n{events:?}\n{}",
        all_text(&object),
        all_text(&events_json(&env, &ns.name).await),
        ctl.log_text()
    );
    for form in [password.as_str(), encoded.as_str()] {
        assert!(
            !everywhere.contains(form),
            "the Secret's password ({form}) leaked: {}",
            status_text(&run)
        );
    }
}

// === Item 6 ===

#[tokio::test]
async fn nan_and_empty_results_do_not_pass_an_analysis_run() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-nan").await;
    let exporter = Exporter::start(&env, "hostile-nan").await;
    exporter.set("nan", f64::NAN);
    exporter.wait_scraped("nan", f64::NAN).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let run = |name: &str, query: String, condition: serde_json::Value| {
        let mut metric = json!({"name": "m", "provider": {"prometheus": {"query": query}}});
        if let Some(map) = metric.as_object_mut() {
            map.extend(condition.as_object().cloned().unwrap_or_default());
        }
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name},
            "spec": {"metrics": [metric]},
        })
    };
    // Both pass in Argo: NaN > 0.05 is false, and any() of nothing is false.
    let nan = create_run(
        &env,
        &ns.name,
        run(
            "nan",
            exporter.selector("nan"),
            json!({"failureCondition": "result[0] > 0.05"}),
        ),
    )
    .await;
    let empty = create_run(
        &env,
        &ns.name,
        run(
            "empty",
            exporter.selector("no-such-series"),
            json!({"failureCondition": "any(result, # > 0.05)"}),
        ),
    )
    .await;
    for (name, why) in [(nan, "holds NaN"), (empty, "is empty")] {
        let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
        assert_eq!(
            phase(&run),
            AnalysisPhase::Inconclusive,
            "{name}: {}",
            status_text(&run)
        );
        let message = run
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        assert!(message.contains(why), "{name}: {message}");
    }
}

/// A Canary target Deployment with the MetricTemplate `template` querying `query`.
async fn canary_with_metric(env: &TestEnv, ns: &str, name: &str, query: &str) {
    let template: MetricTemplate = serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": name},
        "spec": {"provider": {"type": "prometheus"}, "query": query},
    }))
    .expect("MetricTemplate JSON");
    Api::<MetricTemplate>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &template)
        .await
        .expect("creating the MetricTemplate");
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .create(
            &PostParams::default(),
            &common::canary::target(name, 1, "podinfo:6.0.0", 9898),
        )
        .await
        .expect("creating the target");
    let canary: Canary = serde_json::from_value(common::canary::kubernetes(
        name,
        Some(60),
        json!({
            "interval": "1s", "threshold": 2, "iterations": 2,
            "metrics": [{"name": "errors", "templateRef": {"name": name},
                "thresholdRange": {"max": 1}}],
        }),
    ))
    .expect("Canary JSON");
    Api::<Canary>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &canary)
        .await
        .expect("creating the Canary");
}

async fn canary_phase(env: &TestEnv, ns: &str, name: &str) -> Option<CanaryPhase> {
    let api: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    api.get(name).await.ok()?.status?.phase
}

#[tokio::test]
async fn nan_and_empty_metrics_do_not_promote_a_canary() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-canary-nan").await;
    let exporter = Exporter::start(&env, "hostile-cnan").await;
    exporter.set("nan", f64::NAN);
    exporter.wait_scraped("nan", f64::NAN).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let cases = [
        ("nan", exporter.selector("nan")),
        ("empty", exporter.selector("no-such-series")),
    ];
    for (name, query) in &cases {
        canary_with_metric(&env, &ns.name, name, query).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    for (name, _) in &cases {
        eventually(
            Duration::from_secs(90),
            "the Canary initialised",
            || async {
                (canary_phase(&env, &ns.name, name).await == Some(CanaryPhase::Initialized))
                    .then_some(())
            },
        )
        .await;
        deployments
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "podinfo", "image": "podinfo:6.0.1"}]}}}})),
            )
            .await
            .expect("a new revision");
    }
    for (name, _) in &cases {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let phase = loop {
            match canary_phase(&env, &ns.name, name).await {
                Some(p @ (CanaryPhase::Failed | CanaryPhase::Succeeded)) => break p,
                _ if tokio::time::Instant::now() > deadline => panic!(
                    "Canary {name} neither failed nor succeeded; log:\n{}",
                    ctl.log_end()
                ),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        assert_eq!(phase, CanaryPhase::Failed, "{name}");
        let primary = deployments
            .get(&format!("{name}-primary"))
            .await
            .expect("the primary");
        let image = primary
            .spec
            .and_then(|s| s.template.spec)
            .map(|s| s.containers[0].image.clone());
        assert_eq!(
            image,
            Some(Some("podinfo:6.0.0".to_string())),
            "{name} not promoted"
        );
    }
}

// === Item 7 ===

#[tokio::test]
async fn a_secret_echoed_back_in_any_encoding_is_masked_everywhere() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-echo").await;
    // Characters that percent-encoding and JSON escaping change.
    let token = format!("Tk {}/\"+x", common::unique_name("echo"));
    let served = token.clone();
    let app = Router::new().route(
        "/echo",
        get(move |uri: axum::http::Uri| {
            let token = served.clone();
            async move {
                axum::Json(json!({
                    "ok": true,
                    "plain": token,
                    "percent": percent_all(&token),
                    "base64": STANDARD.encode(&token),
                    "base64url": URL_SAFE.encode(&token),
                    "query": uri.query().unwrap_or_default(),
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the echo server");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "stringData": {"token": token},
    }))
    .expect("Secret JSON");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    let ctl = ControllerProcess::start(&env, &ns.name).await;

    let name = create_run(
        &env,
        &ns.name,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "echo"},
            "spec": {
                "args": [{"name": "token", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
                "metrics": [{
                    "name": "m",
                    "successCondition": "result.ok == true && result.plain == '{{args.token}}'",
                    "provider": {"web": {
                        "url": format!("http://{addr}/echo?t={{{{args.token}}}}"),
                        "headers": [{"key": "Authorization", "value": "Bearer {{args.token}}"}],
                    }},
                }],
            },
        }),
    )
    .await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    // Judged on the real value: the echo is the token.
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    eventually(
        Duration::from_secs(20),
        "the run's completion Event",
        || async {
            let messages = run_event_messages(&env, &ns.name, &name).await;
            messages
                .iter()
                .any(|m| m.starts_with("AnalysisRunSuccessful"))
                .then_some(())
        },
    )
    .await;

    let object = serde_json::to_value(&run).expect("run JSON");
    let everywhere = format!(
        "{}\n{}\n{}",
        all_text(&object),
        all_text(&events_json(&env, &ns.name).await),
        ctl.log_text()
    );
    let forms = [
        token.clone(),
        percent_all(&token),
        STANDARD.encode(&token),
        URL_SAFE.encode(&token),
        URL_SAFE_NO_PAD.encode(&token),
        serde_json::to_string(&token).expect("JSON string"),
    ];
    for form in &forms {
        assert!(
            !everywhere.contains(form.trim_matches('"')),
            "{form:?} leaked: {}",
            status_text(&run)
        );
    }
    let value = run
        .status
        .as_ref()
        .and_then(|s| s.metric_results[0].measurements[0].value.clone());
    assert!(
        value.is_some_and(|v| v.contains("*****")),
        "{}",
        status_text(&run)
    );
}

// === Item 8 ===

#[tokio::test]
async fn a_two_megabyte_value_is_stored_truncated_and_the_run_completes() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-huge").await;
    let body = json!({"ok": true, "blob": "x".repeat(2 * 1024 * 1024)}).to_string();
    let app = Router::new().route(
        "/huge",
        get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the server");
    let addr = listener.local_addr().expect("server address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let name = create_run(
        &env,
        &ns.name,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "huge"},
            "spec": {"metrics": [{
                "name": "m",
                "successCondition": "result.ok == true && len(result.blob) == 2097152",
                "provider": {"web": {"url": format!("http://{addr}/huge")}},
            }]},
        }),
    )
    .await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(90), &ctl).await;
    assert_eq!(
        phase(&run),
        AnalysisPhase::Successful,
        "{}",
        status_text(&run)
    );
    let value = run
        .status
        .as_ref()
        .and_then(|s| s.metric_results[0].measurements[0].value.clone())
        .unwrap_or_default();
    assert!(value.len() <= 4096, "stored {} bytes", value.len());
    assert!(value.contains("truncated"), "{value}");
}

/// A run's Event whose message is longer than the apiserver accepts (1,024 bytes) is cut, not
/// refused: here an InvalidSpec quoting a long condition that does not parse.
#[tokio::test]
async fn a_long_run_event_is_cut_not_lost() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let ns = env.namespace("hostile-long-event").await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let condition = format!("result == '{}", "x".repeat(1500));
    let name = create_run(
        &env,
        &ns.name,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": "long-event"},
            "spec": {"metrics": [{
                "name": "m",
                "successCondition": condition,
                "provider": {"web": {"url": "http://127.0.0.1:9/never-called"}},
            }]},
        }),
    )
    .await;
    let run = wait_completed(&env, &ns.name, &name, Duration::from_secs(60), &ctl).await;
    let message = run
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.len() > 1024, "a long message: {}", message.len());
    let events = common::eventually(
        Duration::from_secs(20),
        "the run's InvalidSpec Event",
        || {
            let env = &env;
            let ns = &ns.name;
            let name = &name;
            async move {
                let events = run_event_messages(env, ns, name).await;
                events
                    .iter()
                    .any(|e| e.starts_with("InvalidSpec: "))
                    .then_some(events)
            }
        },
    )
    .await;
    let note = events
        .iter()
        .find_map(|e| e.strip_prefix("InvalidSpec: "))
        .unwrap_or_default();
    assert!(note.len() <= 1024 && note.ends_with('…'), "{note}");
}
