//! Benchmark: many concurrent AnalysisRuns, each measuring one Prometheus metric on an interval,
//! run by `sluice controller` (the release binary) against the test environment's cluster and
//! Prometheus. Reports controller CPU and RSS, Prometheus queries per second, and the scheduling
//! error of measurements (start minus planned time, from the controller's own histogram).
//!
//! ```text
//! tests/env/up
//! cargo bench --bench analysis_runs                      # 1,000 runs, 10 s interval, 5 minutes
//! SLUICE_BENCH_RUNS=100 SLUICE_BENCH_SECONDS=60 cargo bench --bench analysis_runs
//! ```
//! Not part of the test suite: machines here are noisy, so figures are reported, not asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::controller::ControllerProcess;
use common::exporter::Exporter;
use futures::StreamExt;
use kube::api::{Api, PostParams};
use sluice::api::argo::analysis::AnalysisRun;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
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
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The cumulative buckets of a histogram in Prometheus text format: upper bound -> count.
fn histogram(metrics: &str, name: &str) -> BTreeMap<u64, f64> {
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
fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
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

async fn prometheus_queries(env: &common::TestEnv) -> f64 {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query", env.prometheus_url))
        .query(&[(
            "query",
            "sum(prometheus_http_requests_total{handler=\"/api/v1/query\"})",
        )])
        .send()
        .await
        .expect("querying Prometheus")
        .json()
        .await
        .expect("Prometheus answer");
    body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` also runs bench targets (without `--bench`): a benchmark is not
    // a test, so it only runs from `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("analysis_runs: a benchmark; run it with `cargo bench --bench analysis_runs`");
        return;
    }
    let runs: usize = env_or("SLUICE_BENCH_RUNS", 1000);
    let seconds: u64 = env_or("SLUICE_BENCH_SECONDS", 300);
    let interval: String = env_or("SLUICE_BENCH_INTERVAL", "10s".to_string());
    let Some(env) = common::test_env().await else {
        eprintln!("no test environment: run tests/env/up first");
        std::process::exit(2);
    };
    let ns = env.namespace("bench-analysis").await;
    let exporter = Exporter::start(&env, "bench").await;
    exporter.set("rate", 0.99);
    exporter.wait_scraped("rate", 0.99).await;
    let ctl = ControllerProcess::start(&env, &ns.name).await;
    let pid = ctl.pid();
    let idle_rss = rss_mib(pid);

    println!(
        "creating {runs} AnalysisRuns (one Prometheus metric every {interval}) in {}",
        ns.name
    );
    let api: Api<AnalysisRun> = Api::namespaced(env.client.clone(), &ns.name);
    let query = exporter.selector("rate");
    let created = Instant::now();
    futures::stream::iter(0..runs)
        .map(|i| {
            let api = api.clone();
            let yaml = format!(
                "metadata: {{name: bench-{i}}}\nspec:\n  metrics:\n  - name: rate\n    interval: {interval}\n    successCondition: result[0] >= 0.95\n    provider:\n      prometheus:\n        query: '{query}'\n"
            );
            async move {
                let mut run: AnalysisRun = serde_yaml::from_str(&yaml).expect("bench run");
                run.metadata.namespace = None;
                api.create(&PostParams::default(), &run).await.expect("creating a run");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("created in {:.1}s", created.elapsed().as_secs_f64());

    // Let every run take its first measurement before the window opens.
    let warmup = Duration::from_secs(20);
    tokio::time::sleep(warmup).await;
    let metrics_before = ctl.metrics().await;
    let queries_before = prometheus_queries(&env).await;
    let cpu_before = cpu_seconds(pid);
    let window = Instant::now();
    let mut rss_max: f64 = 0.0;
    let mut rss_samples = Vec::new();
    while window.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = rss_mib(pid);
        rss_max = rss_max.max(rss);
        rss_samples.push(rss);
    }
    let elapsed = window.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    // Prometheus scrapes its own counter every second; wait for the last scrape.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queries = prometheus_queries(&env).await - queries_before;
    let metrics_after = ctl.metrics().await;
    let name = "sluice_analysis_measurement_delay_seconds";
    let (hb, ha) = (
        histogram(&metrics_before, name),
        histogram(&metrics_after, name),
    );
    let measured =
        ha.get(&u64::MAX).copied().unwrap_or(0.0) - hb.get(&u64::MAX).copied().unwrap_or(0.0);
    let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |s| format!("{:.1} ms", s * 1000.0));
    let rss_avg = rss_samples.iter().sum::<f64>() / rss_samples.len().max(1) as f64;

    println!("\n=== analysis_runs: {runs} runs, interval {interval}, window {elapsed:.0}s ===");
    println!("controller RSS idle (before runs)  {idle_rss:.1} MiB");
    println!("controller RSS during (avg / max)  {rss_avg:.1} / {rss_max:.1} MiB");
    println!(
        "controller CPU                     {:.1}% of one core ({cpu:.1} s)",
        100.0 * cpu / elapsed
    );
    println!(
        "measurements taken                 {measured:.0} ({:.1}/s)",
        measured / elapsed
    );
    println!(
        "Prometheus queries                 {queries:.0} ({:.1}/s)",
        queries / elapsed
    );
    println!(
        "scheduling error p50 / p99 / max*  {} / {} / {}",
        ms(quantile(&hb, &ha, 0.5)),
        ms(quantile(&hb, &ha, 0.99)),
        ms(quantile(&hb, &ha, 1.0))
    );
    println!("(* upper bound of the largest bucket used; buckets double from 1 ms)");
}
