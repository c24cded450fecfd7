//! Shared helpers for the end-to-end tests: the test cluster and Prometheus that `tests/env/up`
//! starts (`tests/run` does it for you).
//!
//! [`test_env`] finds the environment in `target/testenv/env` (written by `tests/env/up`), or in
//! already-exported variables when `SLUICE_TESTENV_DIR` is set. Without one, an e2e test returns
//! early with a "skipped" line, so a plain `cargo test` still runs the unit tests; with `CI=true`
//! a missing environment is an error instead, so CI can never pass by skipping.
//!
//! ```ignore
//! mod common;
//!
//! #[tokio::test]
//! async fn something_real() {
//!     let Some(env) = common::test_env().await else { return };
//!     let ns = env.namespace("something").await; // deleted again when `ns` drops
//!     // ... env.client, ns.name, env.prometheus_url ...
//! }
//! ```
#![allow(dead_code)] // each test binary uses its own subset

pub mod analysis;
pub mod apiserver;
pub mod argocd;
pub mod browser;
pub mod canary;
pub mod chart;
pub mod controller;
pub mod dashboard;
pub mod events;
pub mod exporter;
pub mod gitops;
pub mod loadtester;
pub mod pods;
pub mod proxy;
pub mod recorder;
pub mod rollouts;
pub mod service_account;
pub mod traffic;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersionKind, ObjectMeta};
use kube::discovery::{self, Scope};
use kube::{Client, Config};

/// The field manager e2e tests write with.
pub const FIELD_MANAGER: &str = "sluice-e2e";

/// Label put on every namespace a test creates, for cleaning up after crashed runs.
pub const TEST_NAMESPACE_LABEL: &str = "sluice.dev/e2e";

/// The running test environment.
pub struct TestEnv {
    /// Client for the test cluster's kube-apiserver (as the cluster admin).
    pub client: Client,
    /// Prometheus' base URL, e.g. `http://127.0.0.1:19090`.
    pub prometheus_url: String,
    /// Directory Prometheus reads scrape targets from (`file_sd`, `*.json`, refreshed every second).
    pub prom_targets_dir: PathBuf,
    /// Kubeconfig of the test cluster.
    pub kubeconfig: PathBuf,
    /// The kubectl that `tests/env/up` chose (compatible with the cluster's version).
    pub kubectl: PathBuf,
    /// `target/testenv`.
    pub dir: PathBuf,
    /// The Gateway API data plane (Traefik and the pods' network namespace), when `tests/env/up`
    /// could start it (it needs root).
    pub gateway: Option<GatewayEnv>,
    /// The helm 3 that `tests/env/up` built (`None` in an env file from before it did).
    pub helm: Option<PathBuf>,
    /// Flux and the Git server it reads (`tests/env/gitops`), when `tests/env/up` started them.
    pub gitops: Option<gitops::GitopsEnv>,
}

/// The real Gateway API data plane `tests/env/up` runs: Traefik reading the test cluster, and
/// an echo backend answering on every kwok pod IP with that IP.
#[derive(Clone, Debug)]
pub struct GatewayEnv {
    /// Base URL of the listener a Gateway with port [`port`](Self::port) binds, e.g.
    /// `http://127.0.0.1:18000`. Route by `Host`: every test's Gateway shares it.
    pub url: String,
    /// The GatewayClass Traefik implements (`traefik`).
    pub class: String,
    /// The listener port a test's Gateway must declare.
    pub port: u16,
    /// Traefik's metrics base URL (`/metrics`, `/ping`), also scraped by Prometheus (job `traefik`).
    pub metrics_url: String,
    /// Traefik's read-only API base URL (`/api/http/services`: the weights it really applies).
    pub api_url: String,
    /// The port the echo backend serves on every pod IP (use it as the Services' targetPort).
    pub echo_port: u16,
}

/// Path of the env file `tests/env/up` writes.
pub fn env_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/testenv/env")
}

/// Whether this is a CI run (`CI=true`), where a missing part fails a test instead of skipping it.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Writes straight to stderr, past libtest's output capture, so a skip is visible in a normal run.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Parses the `export KEY='value'` lines of the env file.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// Where the environment's settings come from: the env file, else exported variables (only when
/// `SLUICE_TESTENV_DIR` marks them as the test environment, so a developer's own `KUBECONFIG`
/// is never mistaken for it).
fn settings() -> Option<(String, BTreeMap<String, String>)> {
    let file = env_file();
    if let Ok(text) = std::fs::read_to_string(&file) {
        return Some((file.display().to_string(), parse_env_file(&text)));
    }
    std::env::var_os("SLUICE_TESTENV_DIR")?;
    let vars = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("SLUICE_")
                || ["KUBECONFIG", "KUBECTL", "PROMETHEUS_URL", "HELM"].contains(&k.as_str())
        })
        .collect();
    Some(("the environment variables".to_string(), vars))
}

/// The test environment, or `None` after printing "skipped: ..." when there is none (a panic
/// instead when `CI=true`). A present but unreachable environment always panics.
pub async fn test_env() -> Option<TestEnv> {
    let Some((source, vars)) = settings() else {
        let msg = format!(
            "skipped: no test env, run tests/env/up (or tests/run); looked for {} and SLUICE_TESTENV_DIR",
            env_file().display()
        );
        if is_ci() {
            panic!("CI=true but the e2e test environment is missing: {msg}");
        }
        say(&msg);
        return None;
    };
    let get = |key: &str| -> String {
        vars.get(key)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{source} does not set {key}: rerun tests/env/up"))
            .clone()
    };
    let kubeconfig = PathBuf::from(get("KUBECONFIG"));
    let env = TestEnv {
        client: client_for(&kubeconfig).await,
        prometheus_url: get("PROMETHEUS_URL"),
        prom_targets_dir: PathBuf::from(get("SLUICE_PROM_TARGETS_DIR")),
        kubectl: PathBuf::from(get("KUBECTL")),
        dir: PathBuf::from(get("SLUICE_TESTENV_DIR")),
        gateway: gateway_env(&vars),
        helm: vars
            .get("HELM")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        gitops: gitops::GitopsEnv::from_vars(&vars),
        kubeconfig,
    };
    match tokio::time::timeout(Duration::from_secs(10), env.client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            panic!("the test cluster from {source} does not answer ({e}): rerun tests/env/up")
        }
        Err(_) => {
            panic!("the test cluster from {source} did not answer within 10s: rerun tests/env/up")
        }
    }
    Some(env)
}

/// The data plane's settings, when the env file has them all.
fn gateway_env(vars: &BTreeMap<String, String>) -> Option<GatewayEnv> {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    Some(GatewayEnv {
        url: get("SLUICE_GATEWAY_URL")?,
        class: get("SLUICE_GATEWAY_CLASS")?,
        port: get("SLUICE_GATEWAY_PORT")?.parse().ok()?,
        metrics_url: get("SLUICE_TRAEFIK_METRICS_URL")?,
        api_url: get("SLUICE_TRAEFIK_API_URL")?,
        echo_port: get("SLUICE_ECHO_PORT")?.parse().ok()?,
    })
}

impl TestEnv {
    /// The Gateway API data plane, or `None` after printing "skipped: ..." when `tests/env/up`
    /// did not start it (a panic instead when `CI=true`).
    pub fn gateway_or_skip(&self) -> Option<GatewayEnv> {
        if self.gateway.is_none() {
            let msg = "skipped: no Gateway API data plane in the test env (tests/env/up starts \
                       Traefik and the pods' network namespace only as root)";
            if is_ci() {
                panic!("CI=true but {msg}");
            }
            say(msg);
        }
        self.gateway.clone()
    }
}

async fn client_for(kubeconfig: &Path) -> Client {
    // reqwest is built without a rustls crypto provider: ring, as in the controller.
    sluice::install_crypto_provider();
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("reading the test kubeconfig {}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading the test kubeconfig {}: {e}", kubeconfig.display()));
    Client::try_from(config).expect("a kube client for the test cluster")
}

/// A namespace created for one test. Dropping it deletes it (best effort, without waiting).
pub struct TestNamespace {
    pub name: String,
    kubectl: Command,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("SLUICE_KEEP_NAMESPACES").is_ok_and(|v| v == "1") {
            say(&format!(
                "keeping test namespace {} (SLUICE_KEEP_NAMESPACES=1)",
                self.name
            ));
            return;
        }
        // Synchronous on purpose: Drop cannot await, and this also runs while a test unwinds.
        let _ = self
            .kubectl
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// A name no other test (or run) uses: `<prefix>-<pid>-<time>-<counter>`, at most 63 characters.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!(
        "-{:x}-{:x}-{n}",
        std::process::id(),
        (nanos / 1000) & 0xff_ffff_ffff
    );
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63 - suffix.len())
        .collect();
    format!("{}{suffix}", prefix.trim_matches('-'))
}

impl TestEnv {
    /// Creates a uniquely named namespace, deleted again when the returned value drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &ns,
            )
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        // Pods are refused until the controller-manager has made the namespace's default
        // ServiceAccount, as in any real cluster.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        eventually(
            Duration::from_secs(30),
            &format!("ServiceAccount {name}/default"),
            || async { accounts.get_opt("default").await.ok().flatten().map(|_| ()) },
        )
        .await;
        TestNamespace {
            name,
            kubectl: self.kubectl(),
        }
    }

    /// `kubectl --kubeconfig <test cluster>`, ready for more arguments (its discovery cache
    /// stays in target/testenv, never in ~/.kube).
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"));
        cmd
    }

    /// Creates any namespaced manifest (`apiVersion`, `kind`, ...) in `ns`; panics on failure.
    pub async fn create(&self, ns: &str, manifest: serde_json::Value) {
        let obj: DynamicObject = serde_json::from_value(manifest.clone()).expect("an object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let (ar, _) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .expect("a served kind");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating {manifest}: {e}"));
    }

    /// Server-side dry-run create of any manifest (`apiVersion`, `kind`, ...). Namespaced objects
    /// go to `namespace`, whatever their manifest says. Returns the object as the apiserver
    /// would have stored it (defaults applied, unknown fields pruned), or the apiserver's error.
    pub async fn dry_run_create(
        &self,
        namespace: &str,
        manifest: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let api_version = manifest["apiVersion"]
            .as_str()
            .ok_or("manifest has no apiVersion")?;
        let kind = manifest["kind"].as_str().ok_or("manifest has no kind")?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| format!("the cluster serves no {kind} in {api_version}: {e}"))?;
        let mut obj: DynamicObject = serde_json::from_value(manifest.clone())
            .map_err(|e| format!("not a Kubernetes object: {e}"))?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            obj.metadata.namespace = Some(namespace.to_string());
            Api::namespaced_with(self.client.clone(), namespace, &resource)
        } else {
            obj.metadata.namespace = None;
            Api::all_with(self.client.clone(), &resource)
        };
        let pp = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        let created = api.create(&pp, &obj).await.map_err(|e| match e {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })?;
        serde_json::to_value(created).map_err(|e| e.to_string())
    }
}

/// Paths under `sent` whose value is missing or different in `stored`: what the apiserver pruned
/// or changed. Fields present only in `stored` (server-side defaults) are fine; `null` in `sent`
/// means "unset" and may be absent.
pub fn pruned_paths(sent: &serde_json::Value, stored: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    fn walk(path: String, sent: &Value, stored: &Value, out: &mut Vec<String>) {
        match (sent, stored) {
            (Value::Null, _) => {}
            (Value::Object(a), Value::Object(b)) => {
                for (k, va) in a {
                    match b.get(k) {
                        Some(vb) => walk(format!("{path}.{k}"), va, vb, out),
                        None if va.is_null() => {}
                        None => out.push(format!("{path}.{k} (dropped)")),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                    walk(format!("{path}[{i}]"), va, vb, out);
                }
            }
            (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
            (a, b) if a == b => {}
            (a, b) => out.push(format!("{path}: sent {a}, stored {b}")),
        }
    }
    let mut out = Vec::new();
    walk(String::new(), sent, stored, &mut out);
    out
}

/// Every YAML document in a file (multi-document streams; empty documents skipped).
pub fn yaml_documents(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_json::Value::deserialize(de)
            .map_err(|e| format!("{} document {}: {e}", path.display(), i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
