//! `sluice controller` as a real process for end-to-end tests: the binary cargo built for this
//! test run, pointed at the test cluster and limited to one namespace, so tests running at the
//! same time never manage each other's objects. Its log goes to `target/testenv/logs/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestEnv, eventually};

/// A running controller; killed (SIGKILL) on drop.
pub struct ControllerProcess {
    child: Child,
    /// Base URL of its `/metrics`, `/healthz` and `/readyz`.
    pub http_url: String,
    /// Its log file.
    pub log: PathBuf,
}

/// The `sluice` binary: the one cargo built for this test run, else (in the examples, which
/// cargo gives no `CARGO_BIN_EXE_*`) `target/debug/sluice` from `cargo build --bin sluice`.
pub fn sluice_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_sluice") {
        Some(p) => PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/sluice"),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl ControllerProcess {
    /// Starts `sluice controller --namespace <namespace>` and waits until it reports ready.
    pub async fn start(env: &TestEnv, namespace: &str) -> ControllerProcess {
        Self::start_with(env, namespace, &[]).await
    }

    /// Like [`start`](Self::start), with extra command-line arguments.
    pub async fn start_with(env: &TestEnv, namespace: &str, extra: &[&str]) -> ControllerProcess {
        Self::start_through(env, namespace, extra, &env.kubeconfig).await
    }

    /// Like [`start_with`](Self::start_with), reaching the cluster through `kubeconfig` (e.g. a
    /// [`FreezableProxy`](super::proxy::FreezableProxy)'s copy).
    pub async fn start_through(
        env: &TestEnv,
        namespace: &str,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> ControllerProcess {
        let port = free_port();
        // A profiler to run the controller under (benchmarks): `SLUICE_CONTROLLER_WRAPPER="heaptrack -o /tmp/h"`.
        let wrapper = std::env::var("SLUICE_CONTROLLER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(sluice_bin());
                c
            }
            None => Command::new(sluice_bin()),
        };
        command
            .arg("controller")
            .args(["--namespace", namespace])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--prometheus-address", &env.prometheus_url])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,sluice=debug")
            // As the Helm chart runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
            // Canary tests run analysis intervals of 1s (the production minimum is 10s).
            .env("SLUICE_CANARY_MIN_INTERVAL", "1s");
        let http_url = format!("http://127.0.0.1:{port}");
        let ready = format!("{http_url}/readyz");
        Self::spawn(
            env,
            command,
            &format!("{namespace}-{port}"),
            http_url,
            &ready,
        )
        .await
    }

    /// Starts `command` (any controller: benchmarks also run upstream's), logging to
    /// `target/testenv/logs/controller-<name>.log`, and waits until `ready_url` answers 2xx.
    /// `http_url` is the base of its `/metrics`.
    pub async fn spawn(
        env: &TestEnv,
        mut command: Command,
        name: &str,
        http_url: String,
        ready_url: &str,
    ) -> ControllerProcess {
        let logs = env.dir.join("logs");
        std::fs::create_dir_all(&logs).expect("creating the log directory");
        let log = logs.join(format!("controller-{name}.log"));
        let file = std::fs::File::create(&log).expect("creating the controller log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let process = ControllerProcess {
            child,
            http_url,
            log,
        };
        let log_path = process.log.display().to_string();
        eventually(
            Duration::from_secs(60),
            &format!("the controller to be ready (log: {log_path})"),
            || async move {
                let r = reqwest::get(ready_url).await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        process
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last few thousand characters of its log, for a failure message.
    pub fn log_end(&self) -> String {
        let log = self.log_text();
        let mut start = log.len().saturating_sub(6000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
