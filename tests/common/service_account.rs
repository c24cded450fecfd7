//! `sluice controller` as the Helm chart's ServiceAccount: the chart's ServiceAccount, Roles,
//! ClusterRoles and bindings rendered (`helm template`, with `--set` values) and applied for real,
//! a TokenRequest token for the account in a kubeconfig of its own, and the controller started
//! with only that kubeconfig — so a test sees exactly what the chart's RBAC allows.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::Value;

use super::TestEnv;

/// Runs `cmd`, panicking with its output unless it succeeds; its stdout.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cluster-scoped objects a test applied (`kind/name` for kubectl), deleted again on drop, also
/// while the test unwinds; cluster-scoped names are unique per test so parallel runs never clash.
pub struct ClusterScoped {
    kubectl: Command,
    pub objects: Vec<String>,
}

impl ClusterScoped {
    /// Nothing yet: push `kind/name` of each object applied.
    pub fn new(env: &TestEnv) -> ClusterScoped {
        ClusterScoped {
            kubectl: env.kubectl(),
            objects: Vec::new(),
        }
    }
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        if self.objects.is_empty() {
            return;
        }
        let _ = self
            .kubectl
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .args(&self.objects)
            .output();
    }
}

/// The chart's RBAC applied in a test namespace, and a kubeconfig that is its ServiceAccount.
pub struct ChartAccount {
    /// The ServiceAccount's name.
    pub account: String,
    /// A kubeconfig whose every context uses the account's token and nothing else.
    pub kubeconfig: PathBuf,
    /// The ClusterRoles and ClusterRoleBindings applied (deleted on drop).
    pub cluster_scoped: ClusterScoped,
}

impl Drop for ChartAccount {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Renders the chart as release `release` into `namespace` (which is also its
/// `controller.watchNamespace`) with `sets` (`--set` values), applies its ServiceAccount, Roles,
/// ClusterRoles and bindings, and writes a kubeconfig with a TokenRequest token of the account.
/// Cluster-scoped objects must be named after the release.
pub async fn chart_account(
    env: &TestEnv,
    helm: &Path,
    namespace: &str,
    release: &str,
    sets: &[&str],
) -> ChartAccount {
    let mut cmd = Command::new(helm);
    cmd.args(["template", release])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/sluice"))
        .args(["--namespace", namespace])
        .args(["--set", &format!("controller.watchNamespace={namespace}")]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let rendered = run(&mut cmd, "helm template (RBAC)");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|d| !d.is_null())
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap_or_default())
        })
        .collect();
    let account = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart renders a ServiceAccount")
        .to_string();
    let mut cluster_scoped = ClusterScoped {
        kubectl: env.kubectl(),
        objects: Vec::new(),
    };
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        if kind.starts_with("Cluster") {
            assert!(
                name.starts_with(release),
                "cluster-scoped {kind} {name} is not named after the release"
            );
            cluster_scoped
                .objects
                .push(format!("{}/{name}", kind.to_lowercase()));
        }
    }
    let dir = env.dir.join("install-test");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join(format!("{release}-rbac.yaml"));
    let yaml: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    std::fs::write(&manifest, yaml).unwrap();
    run(
        env.kubectl()
            .args([
                "apply",
                "--server-side",
                "--field-manager",
                super::FIELD_MANAGER,
                "-f",
            ])
            .arg(&manifest),
        "applying the chart's RBAC",
    );
    let _ = std::fs::remove_file(&manifest);

    // A real token for the ServiceAccount, and nothing else in the controller's kubeconfig.
    let token = Api::<ServiceAccount>::namespaced(env.client.clone(), namespace)
        .create_token_request(
            &account,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("a TokenRequest for the chart's ServiceAccount")
        .status
        .expect("a token")
        .token;
    let kubeconfig = dir.join(format!("{release}.kubeconfig"));
    token_kubeconfig(env, &token, &kubeconfig);
    // The kubeconfig really is the ServiceAccount: it is who the apiserver sees.
    let whoami = run(
        Command::new(&env.kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ]),
        "kubectl auth whoami as the ServiceAccount",
    );
    assert_eq!(
        whoami,
        format!("system:serviceaccount:{namespace}:{account}")
    );
    ChartAccount {
        account,
        kubeconfig,
        cluster_scoped,
    }
}

impl ChartAccount {
    /// `kubectl auth can-i <args>` as the account: `yes` or `no`.
    pub fn can(&self, env: &TestEnv, args: &[&str]) -> String {
        let out = Command::new(&env.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["auth", "can-i"])
            .args(args)
            .output()
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A copy of the test cluster's kubeconfig whose every context uses `token` and nothing else.
pub fn token_kubeconfig(env: &TestEnv, token: &str, path: &Path) {
    let admin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&env.kubeconfig).expect("reading the test kubeconfig"),
    )
    .expect("the test kubeconfig parses");
    let mut config = admin.clone();
    config["users"] = serde_json::json!([{"name": "sluice-sa", "user": {"token": token}}]);
    for context in config["contexts"].as_array_mut().expect("contexts") {
        context["context"]["user"] = Value::from("sluice-sa");
    }
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).expect("writing the kubeconfig");
}

/// `sluice controller` authenticated as the chart's ServiceAccount (a TokenRequest token in its
/// own kubeconfig, no admin credentials anywhere in its environment); killed on drop.
pub struct SaController {
    child: std::process::Child,
    pub log: PathBuf,
    pub http_url: String,
}

impl SaController {
    /// Starts it limited to `namespace` and waits until `/readyz` says ready (30 s).
    pub async fn start(env: &TestEnv, namespace: &str, kubeconfig: &Path) -> SaController {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let logs = env.dir.join("logs");
        std::fs::create_dir_all(&logs).expect("log directory");
        let log = logs.join(format!("controller-{namespace}-{port}.log"));
        let file = std::fs::File::create(&log).expect("controller log");
        // Leader election stays on: the Lease Role of the chart is part of what is proven.
        let child = Command::new(super::controller::sluice_bin())
            .arg("controller")
            .args(["--namespace", namespace])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--prometheus-address", &env.prometheus_url])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,sluice=debug")
            .env("SLUICE_CANARY_MIN_INTERVAL", "1s")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("starting sluice controller");
        let ctl = SaController {
            child,
            log,
            http_url: format!("http://127.0.0.1:{port}"),
        };
        let url = format!("{}/readyz", ctl.http_url);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sluice controller (as the ServiceAccount) not ready after 30s; log:\n{}",
                ctl.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        ctl
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SaController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test, showing the lines, if the controller's log shows a refused request: every 403
/// of the apiserver says "forbidden" (its reason, and in its message), and one that only
/// delayed something is an RBAC bug too.
pub fn assert_nothing_refused(log: &str) {
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "the controller was refused a request:\n{}",
        refused.join("\n")
    );
}
