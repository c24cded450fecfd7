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
mod support;

use std::time::{Duration, Instant};

use common::controller::ControllerProcess;
use common::exporter::Exporter;
use futures::StreamExt;
use kube::api::{Api, PostParams};
use sluice::api::argo::analysis::AnalysisRun;
use support::{cpu_seconds, env_or, histogram, quantile, rss_mib};

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
