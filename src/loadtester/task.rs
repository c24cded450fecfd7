//! Running a webhook's command: a program with its combined output, bounded by the load
//! tester's `--timeout` ([`run_program`]), and Flagger's background runner for `type: cmd`
//! ([`Runner`]): a task is started at once unless the same command for the same Canary is still
//! running (Flagger's dedup of long load tests re-posted every interval). `hey` lines run on the
//! built-in generator ([`super::load`]) instead of a program.

use std::collections::HashSet;
use std::io::Read as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::hey::Hey;

/// Output kept from a command (the rest is read and dropped, so the command never blocks on it).
const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// How long to wait for the output pipe to close after the command ended: a command that left a
/// background process holding it would otherwise hold the webhook.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Why a command failed; the message is what the webhook answers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("command {command} failed: {output}: {reason}")]
    Failed {
        command: String,
        output: String,
        reason: String,
    },
    #[error("command {command} could not start: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
}

/// A background task (`type: cmd`).
pub enum Task {
    /// `sh -c <command>`.
    Shell(String),
    /// A `hey` line, run by the built-in generator.
    Hey { command: String, hey: Box<Hey> },
}

impl Task {
    fn command(&self) -> &str {
        match self {
            Task::Shell(command) | Task::Hey { command, .. } => command,
        }
    }
}

/// Runs `program args...`, with stdout and stderr in one stream as Go's `CombinedOutput`, killed
/// after `timeout`. Ok with the output when it exits 0.
pub async fn run_program(
    program: &str,
    args: &[&str],
    command: &str,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let start = |source| Error::Start {
        command: command.to_string(),
        source,
    };
    let (mut reader, writer) = std::io::pipe().map_err(start)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(start)?)
        .stderr(writer)
        // Its own process group, so a timeout ends what it started too (`sh -c 'a | b'`).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(start)?;
    let output = tokio::task::spawn_blocking(move || {
        let mut kept = Vec::new();
        let _ = (&mut reader).take(MAX_OUTPUT_BYTES).read_to_end(&mut kept);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        kept
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            kill_group(&child);
            let _ = child.kill().await;
            Err(format!(
                "killed after the load tester's timeout of {timeout:?}"
            ))
        }
    };
    let output = tokio::time::timeout(OUTPUT_GRACE, output)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let reason = match status {
        Ok(status) if status.success() => return Ok(output),
        Ok(status) => status.to_string(),
        Err(reason) => reason,
    };
    Err(Error::Failed {
        command: command.to_string(),
        output: String::from_utf8_lossy(&output).into_owned(),
        reason,
    })
}

/// SIGKILL to the child's process group, with the `kill` program (no unsafe code here); the
/// child itself is killed anyway.
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Background tasks, one at a time per Canary and command.
pub struct Runner {
    timeout: Duration,
    running: Mutex<HashSet<String>>,
    started: AtomicU64,
}

impl Runner {
    pub fn new(timeout: Duration) -> Arc<Runner> {
        Arc::new(Runner {
            timeout,
            running: Mutex::new(HashSet::new()),
            started: AtomicU64::new(0),
        })
    }

    /// The task timeout (`--timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Tasks started since the process began.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Starts `task` for `canary` (`name.namespace`) in the background, unless the same command
    /// is still running for it. `log_output`: log what it printed (Flagger's `logCmdOutput`).
    pub fn add(self: &Arc<Self>, canary: String, task: Task, log_output: bool) {
        let key = format!("{canary}\u{0}{}", task.command());
        if !self.lock().insert(key.clone()) {
            tracing::info!(%canary, command = task.command(), "command skipped: it is already running");
            return;
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        let runner = self.clone();
        tokio::spawn(async move {
            tracing::info!(%canary, command = task.command(), "task starting");
            let outcome = runner.execute(&task).await;
            match outcome {
                Ok(output) => {
                    if log_output {
                        tracing::info!(%canary, output = %String::from_utf8_lossy(&output));
                    }
                    tracing::info!(%canary, command = task.command(), "command finished");
                }
                Err(message) => tracing::error!(%canary, %message, "command failed"),
            }
            runner.lock().remove(&key);
        });
    }

    async fn execute(&self, task: &Task) -> Result<Vec<u8>, String> {
        match task {
            Task::Shell(command) => run_program("sh", &["-c", command], command, self.timeout)
                .await
                .map_err(|e| e.to_string()),
            Task::Hey { hey, .. } => super::load::run(hey, self.timeout)
                .await
                .map(|report| report.summary().into_bytes())
                .map_err(|e| e.to_string()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_combined_and_failures_say_why() {
        let out = run_program(
            "sh",
            &["-c", "echo out; echo err >&2"],
            "x",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "out\nerr\n");
        let e = run_program(
            "sh",
            &["-c", "echo nope; exit 3"],
            "the cmd",
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("command the cmd failed: nope\n: exit status: 3"),
            "{e}"
        );
        // What the shell started goes too: the answer does not wait for `sleep`.
        let started = std::time::Instant::now();
        let e = run_program(
            "sh",
            &["-c", "sleep 30 | cat"],
            "slow",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("killed after the load tester's timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_same_command_for_the_same_canary_runs_once_at_a_time() {
        let dir = std::env::temp_dir().join(format!("sluice-lt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("runs");
        let command = format!("echo x >> {}; sleep 1", file.display());
        let runner = Runner::new(Duration::from_secs(10));
        for _ in 0..3 {
            runner.add("a.ns".into(), Task::Shell(command.clone()), false);
        }
        runner.add("b.ns".into(), Task::Shell(command.clone()), false);
        assert_eq!(runner.started(), 2);
        for _ in 0..100 {
            if runner.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x\nx\n");
        // Finished: it may run again.
        runner.add("a.ns".into(), Task::Shell(command), false);
        assert_eq!(runner.started(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
