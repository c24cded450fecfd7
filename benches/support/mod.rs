//! Helpers shared by the benchmarks: settings from the environment, a process's CPU time and
//! resident memory from `/proc`, and quantiles of Prometheus histograms and of raw samples.
//! Linux only (the test environment is).
#![allow(dead_code)] // each benchmark uses its own subset

use std::collections::BTreeMap;

/// `key` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The cumulative buckets of a histogram in Prometheus text format, summed over its other labels
/// (Argo labels its histograms per Rollout): upper bound (µs, so the map orders them) -> count.
pub fn histogram(metrics: &str, name: &str) -> BTreeMap<u64, f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for rest in metrics.lines().filter_map(|l| l.strip_prefix(&prefix)) {
        let Some((labels, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'));
        let key = match le {
            Some("+Inf") => u64::MAX,
            Some(le) => match le.parse::<f64>() {
                Ok(le) => (le * 1e6) as u64,
                Err(_) => continue,
            },
            None => continue,
        };
        if let Ok(count) = count.trim().parse::<f64>() {
            *buckets.entry(key).or_default() += count;
        }
    }
    buckets
}

/// The q-quantile (seconds) of the observations between two snapshots of a histogram, linearly
/// interpolated within its bucket.
pub fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let counts: Vec<(u64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0u64, 0.0);
    for (le, n) in counts {
        if n >= rank {
            if le == u64::MAX {
                return Some(lower.0 as f64 / 1e6);
            }
            let span = (n - lower.1).max(1e-9);
            let frac = (rank - lower.1) / span;
            return Some((lower.0 as f64 + frac * (le - lower.0) as f64) / 1e6);
        }
        lower = (le, n);
    }
    None
}

/// The q-quantile of raw samples (nearest rank), or `None` without samples.
pub fn sample_quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// Samples a process's RSS every 250 ms until `stop` is set; returns (average, max) in MiB.
pub fn sample_rss(
    pid: u32,
    stop: std::sync::Arc<std::sync::Mutex<bool>>,
) -> tokio::task::JoinHandle<(f64, f64)> {
    tokio::spawn(async move {
        let (mut sum, mut n, mut max) = (0.0, 0.0, 0.0f64);
        while !*stop.lock().expect("stop flag") {
            let rss = rss_mib(pid);
            sum += rss;
            n += 1.0;
            max = max.max(rss);
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        (sum / f64::max(n, 1.0), max)
    })
}

/// The samples of `controller_clientset_k8s_request_total` in a scrape: (kind, verb, status
/// code) -> count.
pub fn api_requests(metrics: &str) -> BTreeMap<(String, String, String), f64> {
    let prefix = "controller_clientset_k8s_request_total{";
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string)
            };
            Some((
                (label("kind")?, label("verb")?, label("status_code")?),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// The requests counted between two [`api_requests`] snapshots, summed over status codes:
/// (kind, verb) -> count; pairs with none left out.
pub fn sum_by_kind_verb(
    before: &BTreeMap<(String, String, String), f64>,
    after: &BTreeMap<(String, String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    let mut out: BTreeMap<(String, String), f64> = BTreeMap::new();
    for ((kind, verb, code), n) in after {
        let delta = n - before
            .get(&(kind.clone(), verb.clone(), code.clone()))
            .copied()
            .unwrap_or(0.0);
        if delta > 0.0 {
            *out.entry((kind.clone(), verb.clone())).or_default() += delta;
        }
    }
    out
}

/// Sum of every sample of `name` (any labels) in a scrape: Argo labels its histograms per
/// Rollout, Sluice does not.
pub fn sum_series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// The controller a benchmark measures: Sluice, or upstream's own on the identical workload
/// (built and cached by `benches/upstream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    Sluice,
    Argo,
    Flagger,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Sluice => "sluice",
            Contender::Argo => "argo",
            Contender::Flagger => "flagger",
        }
    }

    fn parse(value: &str) -> Option<Contender> {
        [Contender::Sluice, Contender::Argo, Contender::Flagger]
            .into_iter()
            .find(|c| c.name() == value)
    }

    /// The controllers this run measures, one after the other: `SLUICE_BENCH_CONTROLLER`
    /// (default sluice) alone, or with `SLUICE_BENCH_VS=<upstream>` (or `-- --vs <upstream>`)
    /// Sluice and then that one, for a side-by-side table. `allowed` is the upstream this
    /// benchmark's workload speaks to (a Rollout is Argo's, a Canary Flagger's).
    pub fn from_env(allowed: Contender) -> Vec<Contender> {
        let arg_vs = std::env::args().skip_while(|a| a != "--vs").nth(1);
        let vs = std::env::var("SLUICE_BENCH_VS").ok().or(arg_vs);
        let one = std::env::var("SLUICE_BENCH_CONTROLLER").ok();
        let chosen = match (vs, one) {
            (Some(vs), _) => vec![Contender::Sluice, Self::must(&vs)],
            (None, Some(one)) => vec![Self::must(&one)],
            (None, None) => vec![Contender::Sluice],
        };
        if let Some(other) = chosen
            .iter()
            .find(|c| **c != Contender::Sluice && **c != allowed)
        {
            eprintln!(
                "this benchmark's workload is {}'s: {} cannot run it",
                allowed.name(),
                other.name()
            );
            std::process::exit(2);
        }
        chosen
    }

    fn must(value: &str) -> Contender {
        Self::parse(value).unwrap_or_else(|| {
            eprintln!("unknown controller {value:?}: sluice, argo or flagger");
            std::process::exit(2);
        })
    }

    /// Starts this controller limited to `namespace` and waits until it is ready.
    pub async fn start(
        self,
        env: &crate::common::TestEnv,
        namespace: &str,
    ) -> crate::common::controller::ControllerProcess {
        use crate::common::controller::{ControllerProcess, free_port};
        let kubeconfig = env.kubeconfig.display().to_string();
        let (port, health) = (free_port(), free_port());
        let (command, http_url, ready) = match self {
            Contender::Sluice => {
                return ControllerProcess::start_with(env, namespace, &["--leader-elect=false"])
                    .await;
            }
            Contender::Argo => {
                let mut command = std::process::Command::new(upstream_bin(self));
                command
                    .args(["--kubeconfig", &kubeconfig, "--namespaced"])
                    .args(["--namespace", namespace, "--leader-elect=false"])
                    .args(["--metricsport", &port.to_string()])
                    .args(["--healthzPort", &health.to_string()]);
                let ready = format!("http://127.0.0.1:{health}/healthz");
                (command, format!("http://127.0.0.1:{port}"), ready)
            }
            Contender::Flagger => {
                let mut command = std::process::Command::new(upstream_bin(self));
                command
                    .args(["-kubeconfig", &kubeconfig, "-namespace", namespace])
                    .args(["-port", &port.to_string(), "-log-level", "info"])
                    .args(["-metrics-server", &env.prometheus_url])
                    .args([
                        "-mesh-provider",
                        "kubernetes",
                        "-enable-leader-election=false",
                    ]);
                let url = format!("http://127.0.0.1:{port}");
                let ready = format!("{url}/healthz");
                (command, url, ready)
            }
        };
        let name = format!("{}-{namespace}-{port}", self.name());
        ControllerProcess::spawn(env, command, &name, http_url, &ready).await
    }
}

/// The path of upstream's controller binary, built (once, cached) by `benches/upstream`.
fn upstream_bin(which: Contender) -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/upstream");
    let out = std::process::Command::new(&script)
        .arg(which.name())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {} failed",
        script.display(),
        which.name()
    );
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// One run's figures, in the order they were taken: (what, value, unit).
#[derive(Default)]
pub struct Report(pub Vec<(String, Option<f64>, &'static str)>);

impl Report {
    pub fn add(
        &mut self,
        what: impl Into<String>,
        value: impl Into<Option<f64>>,
        unit: &'static str,
    ) {
        self.0.push((what.into(), value.into(), unit));
    }
}

/// Prints the runs side by side, row by row as the first run took them: one column per
/// controller and, with two, the second's figure over the first's.
pub fn print_side_by_side(title: &str, runs: &[(Contender, Report)]) {
    println!("\n=== {title} ===");
    let mut header = format!("{:<60}", "");
    for (who, _) in runs {
        header += &format!(" {:>12}", who.name());
    }
    if let [(first, _), (second, _)] = runs {
        header += &format!(" {:>14}", format!("{}/{}", second.name(), first.name()));
    }
    println!("{header}");
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for (_, report) in runs {
        for (what, _, unit) in &report.0 {
            if !rows.iter().any(|(w, _)| w == what) {
                rows.push((what, unit));
            }
        }
    }
    for (what, unit) in rows {
        let mut line = format!("{:<60}", format!("{what} ({unit})"));
        let values: Vec<Option<f64>> = runs
            .iter()
            .map(|(_, r)| r.0.iter().find(|row| row.0 == what).and_then(|row| row.1))
            .collect();
        for v in &values {
            line += &format!(" {:>12}", v.map_or("n/a".into(), |v| format!("{v:.1}")));
        }
        if let [Some(a), Some(b)] = values[..]
            && a > 0.0
        {
            line += &format!(" {:>13.2}x", b / a);
        }
        println!("{line}");
    }
}

/// Deletes a benchmark's namespace and waits (up to 5 min) until it is gone, so the next
/// controller's run does not share the apiserver with its clean-up.
pub async fn delete_namespace(env: &crate::common::TestEnv, ns: crate::common::TestNamespace) {
    let name = ns.name.clone();
    drop(ns);
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(env.client.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::time::Instant::now() < deadline {
        if matches!(api.get_opt(&name).await, Ok(None)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    eprintln!("namespace {name} still terminating after 5 min; going on");
}
