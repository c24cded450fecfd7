//! `sluice dashboard` as a real process for end-to-end tests, on a free loopback port and limited
//! to the test's namespace; killed on drop. Its log goes to `target/testenv/logs/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::controller::{free_port, sluice_bin};
use super::{TestEnv, eventually};

pub struct DashboardProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub log: PathBuf,
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DashboardProcess {
    /// Starts `sluice dashboard -n <namespace> <extra>` with the test kubeconfig and waits until
    /// it answers `/healthz`.
    pub async fn start(env: &TestEnv, namespace: &str, extra: &[&str]) -> DashboardProcess {
        Self::start_as(env, namespace, extra, &env.kubeconfig).await
    }

    /// Like [`start`](Self::start), with the credentials of `kubeconfig`.
    pub async fn start_as(
        env: &TestEnv,
        namespace: &str,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> DashboardProcess {
        let port = free_port();
        let logs = env.dir.join("logs");
        std::fs::create_dir_all(&logs).expect("creating the log directory");
        let log = logs.join(format!("dashboard-{namespace}-{port}.log"));
        let file = std::fs::File::create(&log).expect("creating the dashboard log");
        let child = Command::new(sluice_bin())
            .args(["dashboard", "--port", &port.to_string(), "-n", namespace])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::from(file.try_clone().expect("the log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting sluice dashboard");
        let dashboard = DashboardProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let healthz = format!("{}/healthz", dashboard.url);
        eventually(
            Duration::from_secs(30),
            "the dashboard answers /healthz",
            || {
                let healthz = healthz.clone();
                async move {
                    reqwest::get(&healthz)
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
        dashboard
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `csrf-token` meta tag of a page.
pub fn csrf_of(html: &str) -> String {
    let marker = "<meta name=\"csrf-token\" content=\"";
    let start = html.find(marker).expect("a csrf-token meta tag") + marker.len();
    let end = html[start..].find('"').expect("the end of the csrf token");
    html[start..start + end].to_string()
}

/// A Server-Sent Events stream: the `main` events' data, one at a time.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    pub async fn open(client: &reqwest::Client, url: &str) -> Events {
        let response = client
            .get(url)
            .send()
            .await
            .expect("opening the event stream");
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The data of the next `main` event (keep-alive comments skipped); `None` at the end.
    pub async fn next_main(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let mut name = "";
                let mut data = Vec::new();
                for line in event.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if name == "main" {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits (at most `timeout`) for a `main` event for which `check` holds; its data.
    pub async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.next_main()).await {
                Ok(Some(data)) if check(&data) => return data,
                Ok(Some(data)) => last = data,
                Ok(None) => {
                    panic!("the event stream ended while waiting for {what}; last:\n{last}")
                }
                Err(_) => panic!("no event with {what} within {timeout:?}; last:\n{last}"),
            }
        }
    }
}
