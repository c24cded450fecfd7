//! `sluice loadtester` as a real process for end-to-end tests, on a free loopback port, started
//! with Flagger's single-dash flags as its chart passes them. Its log goes to
//! `target/testenv/logs/`; killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::controller::{free_port, sluice_bin};
use super::{TestEnv, eventually};

/// A running load tester.
pub struct LoadTesterProcess {
    child: Child,
    /// Its base URL, e.g. `http://127.0.0.1:41234` (webhook URLs are this plus Flagger's paths).
    pub url: String,
    pub log: std::path::PathBuf,
}

impl LoadTesterProcess {
    /// Starts `sluice loadtester -port=<free> -timeout=5m` and waits for `/healthz`.
    pub async fn start(env: &TestEnv, name: &str) -> LoadTesterProcess {
        let port = free_port();
        let logs = env.dir.join("logs");
        std::fs::create_dir_all(&logs).expect("creating the log directory");
        let log = logs.join(format!("loadtester-{name}-{port}.log"));
        let file = std::fs::File::create(&log).expect("creating the load tester log");
        let child = Command::new(sluice_bin())
            .args(["loadtester", &format!("-port={port}"), "-timeout=5m"])
            .args(["-log-level", "debug", "-zap-encoding", "console"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("starting sluice loadtester");
        let process = LoadTesterProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let healthz = format!("{}/healthz", process.url);
        eventually(
            Duration::from_secs(30),
            "sluice loadtester to answer /healthz",
            || {
                let url = healthz.clone();
                async move {
                    let r = reqwest::get(&url).await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await;
        process
    }

    /// POSTs Flagger's webhook payload for Canary `name.namespace` to `path`; (status, body).
    pub async fn post(&self, path: &str, name: &str, namespace: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(&serde_json::json!({"name": name, "namespace": namespace}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} to the load tester: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Its log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoadTesterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
