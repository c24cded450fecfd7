//! Benchmark: many Healthy Rollouts managed by `sluice controller` (the release binary) on the
//! test environment's cluster, then a template change on all of them. Reports controller RSS idle
//! and during the change, its CPU, and the reaction time from each change (the patch acknowledged
//! by the apiserver) to the canary ReplicaSet appearing on a ReplicaSet watch this benchmark holds
//! (timestamped here: `creationTimestamp` only has seconds).
//!
//! ```text
//! tests/env/up
//! cargo bench --bench rollouts                              # 1,000 Rollouts
//! SLUICE_BENCH_ROLLOUTS=10000 cargo bench --bench rollouts
//! cargo bench --bench rollouts -- --vs argo                 # Sluice, then Argo's controller
//! ```
//! `--vs argo` (or `SLUICE_BENCH_VS=argo`) runs the identical workload under Argo Rollouts' own
//! controller after Sluice's (built from its Go module and cached by `benches/upstream`) and prints
//! both side by side with the ratios; `SLUICE_BENCH_CONTROLLER=argo` runs Argo's alone.
//! `SLUICE_BENCH_REPLICAS` sets the pods per Rollout (default 1). `SLUICE_BENCH_RATE=N` sends the
//! template changes paced at N per second (as a GitOps sync applies them) instead of all at once
//! (32 in flight), to measure the reaction of a controller that is not queueing behind a burst.
//! Not part of the test suite:
//! machines here are noisy, so figures are reported, not asserted.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use sluice::api::argo::rollout::{Rollout, RolloutPhase};
use support::{
    Contender, Report, api_requests, cpu_seconds, delete_namespace, env_or, histogram,
    print_side_by_side, quantile, rss_mib, sample_quantile, sample_rss, sum_by_kind_verb,
    sum_series,
};

const PARALLEL: usize = 32;

fn rollout(i: usize, replicas: i32, image: &str) -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": format!("bench-{i}")},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": format!("bench-{i}")}},
            "template": {
                "metadata": {"labels": {"app": format!("bench-{i}")}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
        },
    }))
    .expect("bench Rollout")
}

/// How many Rollouts are Healthy on their first revision.
async fn healthy(api: &Api<Rollout>) -> usize {
    let mut n = 0;
    let mut params = ListParams::default().limit(500);
    loop {
        let Ok(page) = api.list(&params).await else {
            return n;
        };
        n += page
            .items
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.phase == Some(RolloutPhase::Healthy) && s.stable_rs == s.current_pod_hash
                })
            })
            .count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return n,
        }
    }
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` also runs bench targets (without `--bench`): only `cargo bench`
    // runs the benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("rollouts: a benchmark; run it with `cargo bench --bench rollouts`");
        return;
    }
    let count: usize = env_or("SLUICE_BENCH_ROLLOUTS", 1000);
    let replicas: i32 = env_or("SLUICE_BENCH_REPLICAS", 1);
    let rate: f64 = env_or("SLUICE_BENCH_RATE", 0.0);
    let Some(env) = common::test_env().await else {
        eprintln!("no test environment: run tests/env/up first");
        std::process::exit(2);
    };
    let mut runs = Vec::new();
    for who in Contender::from_env(Contender::Argo) {
        runs.push((who, measure(&env, who, count, replicas, rate).await));
    }
    let how = if rate > 0.0 {
        format!("paced at {rate} per second")
    } else {
        format!("burst, {PARALLEL} in parallel")
    };
    print_side_by_side(
        &format!("rollouts: {count} Rollouts x {replicas} pod(s), template change on all ({how})"),
        &runs,
    );
    println!("(reaction: patch acknowledged -> canary ReplicaSet on this benchmark's watch)");
    println!("(reconcile duration: Argo's buckets 10, 150, 250, 500, 1000 ms; controller's share:");
    println!(" sluice_rollout_reaction_seconds, change seen on the watch -> ReplicaSet created)");
    println!(
        "rollout workers: {}",
        std::env::var("SLUICE_ROLLOUT_WORKERS").unwrap_or_else(|_| "default".into())
    );
}

/// One controller's run: Rollouts created, Healthy, idle, then the template change on all.
async fn measure(
    env: &common::TestEnv,
    who: Contender,
    count: usize,
    replicas: i32,
    rate: f64,
) -> Report {
    let mut report = Report::default();
    let ns = env.namespace("bench-rollouts").await;
    let ctl = who.start(env, &ns.name).await;
    let pid = ctl.pid();
    let empty_rss = rss_mib(pid);
    let api: Api<Rollout> = Api::namespaced(env.client.clone(), &ns.name);

    println!(
        "{}: creating {count} Rollouts ({replicas} pod(s) each) in {}",
        who.name(),
        ns.name
    );
    let created = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let ro = rollout(i, replicas, "registry.invalid/app:1");
                api.create(&PostParams::default(), &ro)
                    .await
                    .unwrap_or_else(|e| panic!("creating Rollout bench-{i}: {e}"));
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    println!("created in {:.1}s", created.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(60 + count as u64 / 5);
    loop {
        let n = healthy(&api).await;
        if n == count {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "only {n} of {count} Rollouts became Healthy; log: {}",
                ctl.log.display()
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let all_healthy = created.elapsed().as_secs_f64();
    println!("all Healthy after {all_healthy:.1}s");

    // Idle: nothing changes for 15 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_idle_before = cpu_seconds(pid);
    let stop = Arc::new(Mutex::new(false));
    let idle = sample_rss(pid, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    *stop.lock().expect("stop flag") = true;
    let (idle_rss, idle_rss_max) = idle.await.expect("idle sampler");
    let idle_cpu = (cpu_seconds(pid) - cpu_idle_before) / 10.0;

    // Watch ReplicaSets and timestamp every new one as it arrives.
    let sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &ns.name);
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut known: std::collections::HashSet<String> = Default::default();
            let mut events = watcher(sets, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(Ok(event)) = events.next().await {
                match event {
                    watcher::Event::InitApply(rs) => {
                        known.insert(rs.metadata.name.unwrap_or_default());
                    }
                    watcher::Event::InitDone => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    watcher::Event::Apply(rs) => {
                        let at = Instant::now();
                        let name = rs.metadata.name.clone().unwrap_or_default();
                        let owner = rs
                            .metadata
                            .owner_references
                            .unwrap_or_default()
                            .into_iter()
                            .find(|o| o.kind == "Rollout")
                            .map(|o| o.name);
                        if let Some(owner) = owner
                            && !known.contains(&name)
                        {
                            known.insert(name);
                            seen.lock().expect("seen").entry(owner).or_insert(at);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let _ = synced_rx.await;

    let apiserver_before = apiserver_metrics(&env.client).await;
    let metrics_before = ctl.metrics().await;
    let cpu_before = cpu_seconds(pid);
    let stop = Arc::new(Mutex::new(false));
    let during = sample_rss(pid, stop.clone());
    let changed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let window = Instant::now();
    let change = |i: usize| {
        let api = api.clone();
        let changed = changed.clone();
        async move {
            let name = format!("bench-{i}");
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:2"}]}}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("patching Rollout {name}: {e}"));
            changed
                .lock()
                .expect("changed")
                .insert(name, Instant::now());
        }
    };
    if rate > 0.0 {
        // Paced: one change every 1/rate s, as a GitOps sync applies them, each on its own task.
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            tick.tick().await;
            tasks.push(tokio::spawn(change(i)));
        }
        for task in tasks {
            task.await.expect("patch task");
        }
    } else {
        futures::stream::iter(0..count)
            .map(change)
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await;
    }
    let patched_in = window.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120 + count as u64 / 10);
    while seen.lock().expect("seen").len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_created = window.elapsed().as_secs_f64();
    // Let the resulting status writes and scale-ups finish inside the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let elapsed = window.elapsed().as_secs_f64();
    *stop.lock().expect("stop flag") = true;
    let cpu = cpu_seconds(pid) - cpu_before;
    let (rss_avg, rss_max) = during.await.expect("sampler");
    let metrics_after = ctl.metrics().await;
    let apiserver_after = apiserver_metrics(&env.client).await;
    watch.abort();

    let changed = changed.lock().expect("changed").clone();
    let seen = seen.lock().expect("seen").clone();
    // A ReplicaSet seen before its patch was acknowledged reacted faster than we can tell: 0.
    let reactions: Vec<f64> = changed
        .iter()
        .filter_map(|(name, at)| {
            seen.get(name)
                .map(|rs| rs.saturating_duration_since(*at).as_secs_f64())
        })
        .collect();
    let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
    report.add("RSS before any Rollout", empty_rss, "MiB");
    report.add("all Healthy after creation", all_healthy, "s");
    report.add("RSS idle, average", idle_rss, "MiB");
    report.add("RSS idle, max", idle_rss_max, "MiB");
    report.add("CPU idle", 100.0 * idle_cpu, "% of a core");
    report.add("RSS during the change, average", rss_avg, "MiB");
    report.add("RSS during the change, max", rss_max, "MiB");
    report.add(
        "CPU during the change",
        100.0 * cpu / elapsed,
        "% of a core",
    );
    report.add(
        "Rollout reconciles during the change",
        sum_series(&metrics_after, "rollout_reconcile_count")
            - sum_series(&metrics_before, "rollout_reconcile_count"),
        "count",
    );
    report.add("patches sent in", patched_in, "s");
    report.add(
        "canary ReplicaSets created",
        reactions.len() as f64,
        "count",
    );
    report.add("last of them after the first patch", all_created, "s");
    report.add("reaction p50", ms(sample_quantile(&reactions, 0.5)), "ms");
    report.add("reaction p99", ms(sample_quantile(&reactions, 0.99)), "ms");
    report.add("reaction max", ms(sample_quantile(&reactions, 1.0)), "ms");
    let (hb, ha) = (
        histogram(&metrics_before, "rollout_reconcile"),
        histogram(&metrics_after, "rollout_reconcile"),
    );
    report.add("reconcile duration p50", ms(quantile(&hb, &ha, 0.5)), "ms");
    report.add("reconcile duration p99", ms(quantile(&hb, &ha, 0.99)), "ms");
    let (rb, ra) = (
        histogram(&metrics_before, "sluice_rollout_reaction_seconds"),
        histogram(&metrics_after, "sluice_rollout_reaction_seconds"),
    );
    report.add("controller's share p50", ms(quantile(&rb, &ra, 0.5)), "ms");
    report.add("controller's share p99", ms(quantile(&rb, &ra, 0.99)), "ms");
    // Both export client-go's request counter (`controller_clientset_k8s_request_total`).
    let (qb, qa) = (api_requests(&metrics_before), api_requests(&metrics_after));
    println!("{}: API requests during the change, by kind:", who.name());
    for ((kind, verb), n) in sum_by_kind_verb(&qb, &qa) {
        println!("    {verb:<8} {kind:<28} {n:.0}");
    }
    for verb in [
        "Get", "List", "Watch", "Create", "Update", "Patch", "Delete",
    ] {
        let sum = |m: &std::collections::BTreeMap<(String, String, String), f64>| -> f64 {
            m.iter()
                .filter(|((_, v, _), _)| v.eq_ignore_ascii_case(verb))
                .map(|(_, n)| n)
                .sum()
        };
        report.add(
            format!("API requests during the change: {verb}"),
            sum(&qa) - sum(&qb),
            "count",
        );
    }
    for (what, series) in [
        (
            "apiserver mean POST replicasets",
            r#"apiserver_request_duration_seconds_{}{component="apiserver",dry_run="",group="apps",resource="replicasets",scope="resource",subresource="",verb="POST",version="v1"}"#,
        ),
        (
            "apiserver mean PATCH rollouts (the change)",
            r#"apiserver_request_duration_seconds_{}{component="apiserver",dry_run="",group="argoproj.io",resource="rollouts",scope="resource",subresource="",verb="PATCH",version="v1alpha1"}"#,
        ),
        (
            "etcd mean create replicasets",
            r#"etcd_request_duration_seconds_{}{operation="create",type="replicasets.apps"}"#,
        ),
    ] {
        let delta = |suffix: &str| {
            let key = series.replace("{}", suffix);
            let value = |m: &str| {
                m.lines()
                    .find_map(|l| l.strip_prefix(&key))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            value(&apiserver_after) - value(&apiserver_before)
        };
        let (sum, n) = (delta("sum"), delta("count"));
        report.add(what, (n > 0.0).then(|| 1000.0 * sum / n), "ms");
    }
    println!("{} log: {}", who.name(), ctl.log.display());
    // The namespace goes first: a controller stopped before its objects would leave finalizers.
    delete_namespace(env, ns).await;
    drop(ctl);
    report
}

/// The apiserver's own /metrics (empty if it cannot be read).
async fn apiserver_metrics(client: &kube::Client) -> String {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    client.request_text(request).await.unwrap_or_default()
}
