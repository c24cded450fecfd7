//! The load tester's HTTP API, Flagger's paths, status codes and bodies: `POST /` runs the task a
//! webhook's `metadata` describes; `/gate/*` and `/rollback/*` read and set the gates;
//! `/healthz`. Every request body is bounded.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;

use super::gate::{Gates, gate_key, rollback_key};
use super::hey::parse_bool;
use super::task::{Runner, Task, run_program};

/// Largest request body accepted (a webhook payload is a few hundred bytes); larger is a 413.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What the handlers share.
pub struct LoadTester {
    pub gates: Gates,
    pub runner: Arc<Runner>,
    /// `--namespace-regexp`: only Canaries in matching namespaces are served (unanchored, as Go's
    /// `MatchString`).
    pub namespaces: Option<regex::Regex>,
}

/// Flagger's `CanaryWebhookPayload`; other fields are ignored, as Go's decoder does.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

/// The routes, on `state`.
pub fn router(state: Arc<LoadTester>) -> Router {
    Router::new()
        .route("/healthz", any(|| async { (StatusCode::OK, "OK") }))
        .route("/gate/approve", any(|| async { (StatusCode::OK, "OK") }))
        .route(
            "/gate/halt",
            any(|| async { (StatusCode::FORBIDDEN, "Forbidden") }),
        )
        .route("/gate/check", any(gate_check))
        .route("/gate/open", any(gate_open))
        .route("/gate/close", any(gate_close))
        .route("/rollback/check", any(rollback_check))
        .route("/rollback/open", any(rollback_open))
        .route("/rollback/close", any(rollback_close))
        // Go's mux sends every other path to `/`.
        .fallback(new_task)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// The payload, refused as Flagger refuses it: 400 when it does not decode, 403 outside
/// `--namespace-regexp`.
fn payload(state: &LoadTester, body: &[u8]) -> Result<Payload, (StatusCode, String)> {
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        tracing::error!(error = %e, "decoding the request body failed");
        (
            StatusCode::BAD_REQUEST,
            format!("decoding the request body failed: {e}"),
        )
    })?;
    if let Some(allowed) = &state.namespaces
        && !allowed.is_match(&payload.namespace)
    {
        return Err((StatusCode::FORBIDDEN, "Forbidden".into()));
    }
    Ok(payload)
}

/// `GET|POST /gate/check` and `/rollback/check`: 200 `Approved` when open, else 403.
fn check(state: &LoadTester, body: &[u8], key: fn(&str, &str) -> String) -> Response {
    let p = match payload(state, body) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let key = key(&p.name, &p.namespace);
    let approved = state.gates.is_open(&key);
    tracing::info!("{key} check: approved {approved}");
    if approved {
        (StatusCode::OK, "Approved").into_response()
    } else {
        (StatusCode::FORBIDDEN, "Forbidden").into_response()
    }
}

/// `/gate/open|close`, `/rollback/open|close`: 202, no body.
fn set(state: &LoadTester, body: &[u8], key: fn(&str, &str) -> String, open: bool) -> Response {
    let p = match payload(state, body) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let key = key(&p.name, &p.namespace);
    if open {
        state.gates.open(&key);
    } else {
        state.gates.close(&key);
    }
    tracing::info!("{key} {}", if open { "opened" } else { "closed" });
    StatusCode::ACCEPTED.into_response()
}

async fn gate_check(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    check(&s, &body, gate_key)
}

async fn gate_open(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    set(&s, &body, gate_key, true)
}

async fn gate_close(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    set(&s, &body, gate_key, false)
}

async fn rollback_check(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    check(&s, &body, rollback_key)
}

async fn rollback_open(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    set(&s, &body, rollback_key, true)
}

async fn rollback_close(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    set(&s, &body, rollback_key, false)
}

/// `POST /`: the task `metadata.type` names (default `cmd`).
async fn new_task(State(s): State<Arc<LoadTester>>, body: Bytes) -> Response {
    let p = match payload(&s, &body) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let Some(metadata) = p.metadata.filter(|m| !m.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "metadata not found in payload").into_response();
    };
    let canary = format!("{}.{}", p.name, p.namespace);
    let command = metadata.get("cmd").cloned();
    let return_output = metadata
        .get("returnCmdOutput")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    match metadata.get("type").map_or("cmd", String::as_str) {
        "cmd" => background(&s, canary, command, &metadata),
        "bash" => {
            let command = command.unwrap_or_default();
            tracing::info!(%canary, "bash command {command}");
            blocking(
                &s,
                "bash",
                &["-c", &command],
                &command,
                &canary,
                return_output,
            )
            .await
        }
        kind @ ("helm" | "helmv3" | "kubectl") => {
            // Flagger runs the binary with the command's words as arguments.
            let program = if kind == "kubectl" { "kubectl" } else { "helm" };
            let command = command.unwrap_or_default();
            if !on_path(program) {
                let message = format!(
                    "task type {kind} needs the {program} binary, which is not on this load tester's PATH"
                );
                return (StatusCode::BAD_REQUEST, message).into_response();
            }
            let args: Vec<&str> = command.split_whitespace().collect();
            blocking(&s, program, &args, &command, &canary, return_output).await
        }
        kind @ ("concord" | "ngrinder") => {
            let message = format!(
                "task type {kind} is not supported by sluice loadtester; run it with Flagger's load tester"
            );
            (StatusCode::BAD_REQUEST, message).into_response()
        }
        other => (
            StatusCode::BAD_REQUEST,
            format!("unknown task type {other}"),
        )
            .into_response(),
    }
}

/// `type: cmd`: started in the background, 202 at once (a `hey` line on the built-in generator).
fn background(
    s: &LoadTester,
    canary: String,
    command: Option<String>,
    metadata: &HashMap<String, String>,
) -> Response {
    let Some(command) = command else {
        return (StatusCode::BAD_REQUEST, "cmd not found in metadata").into_response();
    };
    let log_output = metadata
        .get("logCmdOutput")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    let task = match super::words::split(&command) {
        Some(words) if words.first().is_some_and(|w| w == "hey") => {
            match super::hey::parse(&words) {
                Ok(hey) => Task::Hey {
                    command,
                    hey: Box::new(hey),
                },
                Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
            }
        }
        _ => Task::Shell(command),
    };
    s.runner.add(canary, task, log_output);
    StatusCode::ACCEPTED.into_response()
}

/// `type: bash` / `helm` / `kubectl`: run now; 200 (with the output when `returnCmdOutput`), or
/// 500 with why it failed.
async fn blocking(
    s: &LoadTester,
    program: &str,
    args: &[&str],
    command: &str,
    canary: &str,
    return_output: bool,
) -> Response {
    match run_program(program, args, command, s.runner.timeout()).await {
        Ok(output) => {
            tracing::info!(%canary, output = %String::from_utf8_lossy(&output), "command finished {command}");
            let body = if return_output { output } else { Vec::new() };
            (StatusCode::OK, body).into_response()
        }
        Err(e) => {
            tracing::error!(%canary, "{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// Whether `program` is an executable file in a `$PATH` directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn serve(namespaces: Option<&str>) -> String {
        let state = Arc::new(LoadTester {
            gates: Gates::default(),
            runner: Runner::new(std::time::Duration::from_secs(10)),
            namespaces: namespaces.map(|n| regex::Regex::new(n).unwrap()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        format!("http://{addr}")
    }

    async fn post(url: String, body: serde_json::Value) -> (u16, String) {
        crate::install_crypto_provider();
        let r = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn gates_answer_as_flaggers() {
        let base = serve(None).await;
        let canary = json!({"name": "podinfo", "namespace": "test", "phase": "Progressing"});
        assert_eq!(
            post(format!("{base}/gate/approve"), json!({})).await,
            (200, "OK".into())
        );
        assert_eq!(
            post(format!("{base}/gate/halt"), json!({})).await,
            (403, "Forbidden".into())
        );
        let check = || post(format!("{base}/gate/check"), canary.clone());
        assert_eq!(check().await, (403, "Forbidden".into()));
        assert_eq!(
            post(format!("{base}/gate/open"), canary.clone()).await,
            (202, String::new())
        );
        assert_eq!(check().await, (200, "Approved".into()));
        assert_eq!(
            post(format!("{base}/rollback/check"), canary.clone()).await,
            (403, "Forbidden".into()),
            "the rollback gate is separate"
        );
        assert_eq!(
            post(format!("{base}/rollback/open"), canary.clone())
                .await
                .0,
            202
        );
        assert_eq!(
            post(format!("{base}/rollback/check"), canary.clone())
                .await
                .0,
            200
        );
        assert_eq!(
            post(format!("{base}/gate/close"), canary.clone()).await.0,
            202
        );
        assert_eq!(check().await.0, 403);
        assert_eq!(
            post(format!("{base}/rollback/close"), canary.clone())
                .await
                .0,
            202
        );
        assert_eq!(post(format!("{base}/rollback/check"), canary).await.0, 403);
        let r = reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap()),
            (200, "OK".into())
        );
    }

    #[tokio::test]
    async fn tasks_answer_as_flaggers() {
        let base = serve(None).await;
        let task = |metadata: serde_json::Value| {
            post(
                format!("{base}/"),
                json!({"name": "a", "namespace": "b", "metadata": metadata}),
            )
        };
        assert_eq!(
            post(format!("{base}/"), json!({"name": "a"})).await,
            (400, "metadata not found in payload".into())
        );
        assert_eq!(
            task(json!({"type": "cmd"})).await,
            (400, "cmd not found in metadata".into())
        );
        assert_eq!(task(json!({"cmd": "true"})).await.0, 202);
        assert_eq!(
            task(json!({"type": "nope", "cmd": "x"})).await,
            (400, "unknown task type nope".into())
        );
        let (code, body) = task(json!({"type": "concord"})).await;
        assert_eq!(code, 400);
        assert!(body.contains("concord"), "{body}");
        let (code, body) = task(json!({"cmd": "hey -k http://a/"})).await;
        assert_eq!(
            (code, body.as_str()),
            (400, "hey: flag provided but not defined: -k")
        );
        assert_eq!(
            task(json!({"type": "bash", "cmd": "echo hi", "returnCmdOutput": "true"})).await,
            (200, "hi\n".into())
        );
        assert_eq!(
            task(json!({"type": "bash", "cmd": "echo hi"})).await,
            (200, String::new())
        );
        let (code, body) = task(json!({"type": "bash", "cmd": "echo no; false"})).await;
        assert_eq!(code, 500);
        assert!(
            body.starts_with("command echo no; false failed: no\n"),
            "{body}"
        );
        assert_eq!(
            post(format!("{base}/"), json!("not an object")).await.0,
            400
        );
        let huge = "x".repeat(MAX_REQUEST_BYTES + 1);
        assert_eq!(task(json!({"cmd": huge})).await.0, 413);
    }

    #[tokio::test]
    async fn namespaces_outside_the_regexp_are_forbidden() {
        let base = serve(Some("^team-")).await;
        let (code, body) = post(
            format!("{base}/gate/open"),
            json!({"name": "a", "namespace": "other"}),
        )
        .await;
        assert_eq!((code, body.as_str()), (403, "Forbidden"));
        assert_eq!(
            post(
                format!("{base}/gate/open"),
                json!({"name": "a", "namespace": "team-a"})
            )
            .await
            .0,
            202
        );
    }
}
