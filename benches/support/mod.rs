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

/// The cumulative buckets of a histogram in Prometheus text format: upper bound -> count.
pub fn histogram(metrics: &str, name: &str) -> BTreeMap<u64, f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            // Keyed by microseconds so the map orders the bounds.
            let key = if le.is_infinite() {
                u64::MAX
            } else {
                (le * 1e6) as u64
            };
            Some((key, count.trim().parse().ok()?))
        })
        .collect()
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
