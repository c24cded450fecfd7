//! Benchmark: many Flagger Canaries managed by `sluice controller` (the release binary) on the
//! test environment's cluster, most idle and some progressing. Reports the controller's RSS and
//! CPU, the API requests it sends per idle Canary per analysis interval (from its own
//! `controller_clientset_k8s_request_total`; target 0: reads come from watch caches), and the
//! step-timing error of the progressing Canaries: |time between two consecutive iterations −
//! interval|, timestamped here on a Canary watch this benchmark holds (target p99 ≤ 1 s).
//!
//! ```text
//! tests/env/up
//! cargo bench --bench canaries                              # 1,000 Canaries, 100 progressing
//! SLUICE_BENCH_CANARIES=200 SLUICE_BENCH_PROGRESSING=20 cargo bench --bench canaries
//! cargo bench --bench canaries -- --vs flagger             # Sluice, then Flagger's controller
//! ```
//! `--vs flagger` (or `SLUICE_BENCH_VS=flagger`) runs the identical workload under Flagger's own
//! controller after Sluice's (built from its Go module and cached by `benches/upstream`; mesh
//! provider `kubernetes`) and prints both side by side; `SLUICE_BENCH_CONTROLLER=flagger` runs it
//! alone. Flagger exports no client request counter, so its API requests show as n/a.
//! `SLUICE_BENCH_CANARIES` (default 1000) Canaries, `SLUICE_BENCH_PROGRESSING` (default 100) of
//! them given a new image, `SLUICE_BENCH_INTERVAL` (default `10s`) their `analysis.interval`.
//! Provider `kubernetes` (Blue/Green by the apex Service), `iterations: 5`, `threshold: 5`, no
//! metrics or webhooks: the cheapest Canary that still steps on its interval.
//!
//! Sizing to the test cluster: the progressing targets run 1 pod each, the idle ones
//! `SLUICE_BENCH_IDLE_REPLICAS` (default 0: kwok's two fake nodes hand pod IPs out of two /24s).
//! Each Canary gets three ClusterIP Services while the cluster's Service range is a /24, so the
//! benchmark adds a ServiceCIDR (`sluice-bench-canaries`, 10.96.0.0/19) for the run and deletes
//! it afterwards. Not part of the test suite: machines here are noisy, so figures are reported,
//! not asserted.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use sluice::api::flagger::canary::{Canary, CanaryPhase};
use support::{
    Contender, Report, api_requests, cpu_seconds, delete_namespace, env_or, print_side_by_side,
    rss_mib, sample_quantile, sample_rss, sum_by_kind_verb,
};

const PARALLEL: usize = 32;
const ITERATIONS: i32 = 5;
const SERVICE_CIDR: &str = "sluice-bench-canaries";

fn deployment(i: usize, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("bench-{i}")},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": format!("bench-{i}")}},
            "template": {
                "metadata": {"labels": {"app": format!("bench-{i}")}},
                "spec": {"containers": [{"name": "app", "image": image,
                    "ports": [{"containerPort": 9898, "name": "http"}]}]},
            },
        },
    }))
    .expect("bench Deployment")
}

fn canary(i: usize, interval: &str) -> Canary {
    serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": format!("bench-{i}")},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("bench-{i}")},
            "progressDeadlineSeconds": 600,
            "service": {"port": 80, "targetPort": 9898},
            "analysis": {"interval": interval, "threshold": 5, "iterations": ITERATIONS},
        },
    }))
    .expect("bench Canary")
}

fn phase(c: &Canary) -> Option<CanaryPhase> {
    c.status.as_ref().and_then(|s| s.phase)
}

/// How many Canaries are in `phase`.
async fn in_phase(api: &Api<Canary>, want: CanaryPhase) -> usize {
    let mut n = 0;
    let mut params = ListParams::default().limit(500);
    loop {
        let Ok(page) = api.list(&params).await else {
            return n;
        };
        n += page.items.iter().filter(|c| phase(c) == Some(want)).count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return n,
        }
    }
}

/// Creates `cidr` and waits until it is Ready. One left Terminating by an earlier run (its
/// Services are still being deleted) allocates nothing: wait for it to go first.
async fn ensure_service_cidr(cidrs: &Api<ServiceCIDR>, cidr: &ServiceCIDR) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match cidrs.get_opt(SERVICE_CIDR).await {
            Ok(Some(existing)) if existing.metadata.deletion_timestamp.is_none() => {
                let ready = existing
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => match cidrs.create(&PostParams::default(), cidr).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => panic!("creating ServiceCIDR {SERVICE_CIDR}: {e}"),
            },
            Err(e) => panic!("reading ServiceCIDR {SERVICE_CIDR}: {e}"),
        }
        if Instant::now() > deadline {
            panic!(
                "ServiceCIDR {SERVICE_CIDR} not Ready after 300s (an earlier run's may still be \
                 terminating: kubectl get servicecidr {SERVICE_CIDR})"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One status change of a progressing Canary, timestamped on arrival.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    phase: Option<CanaryPhase>,
    iterations: i32,
}

/// Per (kind, verb): total delta and its share per canary per interval. Returns the shares of
/// (all but watches, watches).
fn print_requests(title: &str, delta: &BTreeMap<(String, String), f64>, per: f64) -> (f64, f64) {
    println!("{title}");
    let (watches, others): (Vec<_>, Vec<_>) = delta.iter().partition(|((_, v), _)| v == "watch");
    // `+ 0.0`: an empty f64 sum is -0.0.
    let total = |v: &[(&(String, String), &f64)]| v.iter().map(|(_, n)| **n).sum::<f64>() + 0.0;
    println!(
        "  all but watches                    {:.0} requests = {:.4} per canary per interval",
        total(&others),
        total(&others) / per
    );
    for ((kind, verb), n) in &others {
        println!("    {verb:<8} {kind:<28} {n:.0}");
    }
    println!(
        "  watches (re-)established          {:.0} = {:.4} per canary per interval",
        total(&watches),
        total(&watches) / per
    );
    for ((kind, verb), n) in &watches {
        println!("    {verb:<8} {kind:<28} {n:.0}");
    }
    (total(&others) / per, total(&watches) / per)
}

/// The workload, from the environment.
struct Workload {
    count: usize,
    progressing: usize,
    interval_text: String,
    interval: Duration,
    idle_replicas: i32,
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` also runs bench targets (without `--bench`): only `cargo bench`
    // runs the benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("canaries: a benchmark; run it with `cargo bench --bench canaries`");
        return;
    }
    let count: usize = env_or("SLUICE_BENCH_CANARIES", 1000);
    let interval_text: String = env_or("SLUICE_BENCH_INTERVAL", "10s".to_string());
    let work = Workload {
        count,
        progressing: env_or::<usize>("SLUICE_BENCH_PROGRESSING", 100).min(count),
        interval: sluice::api::flagger::canary::parse_go_duration(&interval_text)
            .unwrap_or_else(|| panic!("SLUICE_BENCH_INTERVAL={interval_text} is not a duration")),
        interval_text,
        idle_replicas: env_or("SLUICE_BENCH_IDLE_REPLICAS", 0),
    };
    let Some(env) = common::test_env().await else {
        eprintln!("no test environment: run tests/env/up first");
        std::process::exit(2);
    };
    let mut runs = Vec::new();
    for who in Contender::from_env(Contender::Flagger) {
        runs.push((who, measure(&env, who, &work).await));
    }
    print_side_by_side(
        &format!(
            "canaries: {} Canaries at {}, {} progressing ({ITERATIONS} iterations, provider kubernetes)",
            work.count, work.interval_text, work.progressing
        ),
        &runs,
    );
    println!(
        "(step-timing error: |time between consecutive iterations on this benchmark's watch - interval|)"
    );
}

/// One controller's run: Canaries created and Initialized, idle, then some progressing.
async fn measure(env: &common::TestEnv, who: Contender, work: &Workload) -> Report {
    let Workload {
        count,
        progressing,
        ref interval_text,
        interval,
        idle_replicas,
    } = *work;
    let mut report = Report::default();
    // Room for three ClusterIPs per Canary.
    let cidrs: Api<ServiceCIDR> = Api::all(env.client.clone());
    let cidr: ServiceCIDR = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": SERVICE_CIDR},
        "spec": {"cidrs": ["10.96.0.0/19"]},
    }))
    .expect("ServiceCIDR");
    ensure_service_cidr(&cidrs, &cidr).await;

    let ns = env.namespace("bench-canaries").await;
    let ctl = who.start(env, &ns.name).await;
    let pid = ctl.pid();
    let empty_rss = rss_mib(pid);
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), &ns.name);

    println!(
        "{}: creating {count} Deployments + Canaries (interval {interval_text}; {progressing} with 1 pod, the rest with {idle_replicas}) in {}",
        who.name(),
        ns.name
    );
    let created = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let (deployments, canaries) = (deployments.clone(), canaries.clone());
            let interval_text = interval_text.clone();
            async move {
                let replicas = if i < progressing { 1 } else { idle_replicas };
                deployments
                    .create(
                        &PostParams::default(),
                        &deployment(i, replicas, "registry.invalid/app:1"),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("creating Deployment bench-{i}: {e}"));
                canaries
                    .create(&PostParams::default(), &canary(i, &interval_text))
                    .await
                    .unwrap_or_else(|e| panic!("creating Canary bench-{i}: {e}"));
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    println!("created in {:.1}s", created.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(120 + count as u64 / 2);
    loop {
        let n = in_phase(&canaries, CanaryPhase::Initialized).await;
        if n == count {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "only {n} of {count} Canaries became Initialized; log: {}",
                ctl.log.display()
            );
            drop(ctl);
            drop(ns);
            let _ = cidrs.delete(SERVICE_CIDR, &DeleteParams::default()).await;
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let initialized_after = created.elapsed().as_secs_f64();
    println!("all Initialized after {initialized_after:.1}s");

    // Idle: six intervals with no change at all.
    let intervals = 6.0;
    let idle_window = interval.mul_f64(intervals);
    tokio::time::sleep(interval).await;
    let idle_before = ctl.metrics().await;
    let cpu_idle_before = cpu_seconds(pid);
    let stop = Arc::new(Mutex::new(false));
    let idle = sample_rss(pid, stop.clone());
    let idle_started = Instant::now();
    tokio::time::sleep(idle_window).await;
    *stop.lock().expect("stop flag") = true;
    let idle_elapsed = idle_started.elapsed().as_secs_f64();
    let idle_cpu = (cpu_seconds(pid) - cpu_idle_before) / idle_elapsed;
    let idle_after = ctl.metrics().await;
    let (idle_rss, idle_rss_max) = idle.await.expect("idle sampler");
    let idle_requests = sum_by_kind_verb(&api_requests(&idle_before), &api_requests(&idle_after));

    // Watch the Canaries and timestamp every status change of a progressing one.
    let seen: Arc<Mutex<HashMap<String, Vec<Seen>>>> = Arc::default();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let watch = {
        let seen = seen.clone();
        let canaries = canaries.clone();
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut events = watcher(canaries, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(Ok(event)) = events.next().await {
                match event {
                    watcher::Event::InitDone => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    watcher::Event::Apply(c) => {
                        let at = Instant::now();
                        let name = c.metadata.name.clone().unwrap_or_default();
                        let status = c.status.clone().unwrap_or_default();
                        let entry = Seen {
                            at,
                            phase: status.phase,
                            iterations: status.iterations.unwrap_or(0),
                        };
                        let mut seen = seen.lock().expect("seen");
                        let history = seen.entry(name).or_default();
                        let changed = history.last().is_none_or(|last| {
                            last.phase != entry.phase || last.iterations != entry.iterations
                        });
                        if changed {
                            history.push(entry);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let _ = synced_rx.await;

    // Progress: a new image on `progressing` targets.
    let progress_before = ctl.metrics().await;
    let cpu_before = cpu_seconds(pid);
    let stop = Arc::new(Mutex::new(false));
    let during = sample_rss(pid, stop.clone());
    let window = Instant::now();
    let changed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    futures::stream::iter(0..progressing)
        .map(|i| {
            let deployments = deployments.clone();
            let changed = changed.clone();
            async move {
                let name = format!("bench-{i}");
                let patch = json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "image": "registry.invalid/app:2"}]}}}});
                deployments
                    .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                    .unwrap_or_else(|e| panic!("patching Deployment {name}: {e}"));
                changed
                    .lock()
                    .expect("changed")
                    .insert(name, Instant::now());
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    let patched_in = window.elapsed().as_secs_f64();
    // Iterations + Promoting, Finalising, Succeeded each take an interval; primaries roll too.
    let budget = interval.mul_f64(f64::from(ITERATIONS) + 10.0) + Duration::from_secs(120);
    let deadline = Instant::now() + budget;
    let succeeded = |seen: &HashMap<String, Vec<Seen>>| {
        (0..progressing)
            .filter(|i| {
                seen.get(&format!("bench-{i}"))
                    .and_then(|h| h.last())
                    .is_some_and(|s| s.phase == Some(CanaryPhase::Succeeded))
            })
            .count()
    };
    while succeeded(&seen.lock().expect("seen")) < progressing && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = window.elapsed().as_secs_f64();
    *stop.lock().expect("stop flag") = true;
    let cpu = cpu_seconds(pid) - cpu_before;
    let (rss_avg, rss_max) = during.await.expect("sampler");
    let progress_after = ctl.metrics().await;
    watch.abort();
    let progress_requests = sum_by_kind_verb(
        &api_requests(&progress_before),
        &api_requests(&progress_after),
    );

    // Step timing: consecutive iteration increments of a Progressing Canary, one interval apart.
    let seen = seen.lock().expect("seen").clone();
    let changed = changed.lock().expect("changed").clone();
    let mut errors = Vec::new();
    let mut gaps = Vec::new();
    let mut to_succeeded = Vec::new();
    let mut done = 0;
    for i in 0..progressing {
        let name = format!("bench-{i}");
        let Some(history) = seen.get(&name) else {
            continue;
        };
        let steps: Vec<&Seen> = history
            .iter()
            .filter(|s| s.phase == Some(CanaryPhase::Progressing) && s.iterations > 0)
            .collect();
        for pair in steps.windows(2) {
            if pair[1].iterations == pair[0].iterations + 1 {
                let gap = pair[1].at.duration_since(pair[0].at).as_secs_f64();
                gaps.push(gap);
                errors.push((gap - interval.as_secs_f64()).abs());
            }
        }
        if let (Some(start), Some(end)) = (
            changed.get(&name),
            history
                .iter()
                .find(|s| s.phase == Some(CanaryPhase::Succeeded)),
        ) {
            done += 1;
            to_succeeded.push(end.at.saturating_duration_since(*start).as_secs_f64());
        }
    }
    let per_idle = count as f64 * idle_elapsed / interval.as_secs_f64();
    report.add("all Initialized after creation", initialized_after, "s");
    report.add("RSS before any Canary", empty_rss, "MiB");
    report.add("RSS idle, average", idle_rss, "MiB");
    report.add("RSS idle, max", idle_rss_max, "MiB");
    report.add("CPU idle", 100.0 * idle_cpu, "% of a core");
    // Flagger exports no request counter: its figures would read 0, so they are left out.
    let counted = who != Contender::Flagger;
    let (idle_others, idle_watches) = print_requests(
        &format!(
            "{}: API requests, idle window of {idle_elapsed:.0} s ({:.1} intervals x {count} Canaries):",
            who.name(),
            idle_elapsed / interval.as_secs_f64()
        ),
        &idle_requests,
        per_idle,
    );
    report.add(
        "API requests per idle Canary per interval",
        counted.then_some(idle_others),
        "count",
    );
    report.add(
        "watches re-established per idle Canary per interval",
        counted.then_some(idle_watches),
        "count",
    );
    report.add("RSS progressing, average", rss_avg, "MiB");
    report.add("RSS progressing, max", rss_max, "MiB");
    report.add("CPU progressing", 100.0 * cpu / elapsed, "% of a core");
    report.add("patches sent in", patched_in, "s");
    report.add("Succeeded", done as f64, "count");
    report.add(
        "time to Succeeded p50",
        sample_quantile(&to_succeeded, 0.5),
        "s",
    );
    report.add(
        "time to Succeeded max",
        sample_quantile(&to_succeeded, 1.0),
        "s",
    );
    report.add("iteration gaps", gaps.len() as f64, "count");
    let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
    report.add(
        "step-timing error p50",
        ms(sample_quantile(&errors, 0.5)),
        "ms",
    );
    report.add(
        "step-timing error p99",
        ms(sample_quantile(&errors, 0.99)),
        "ms",
    );
    report.add(
        "step-timing error max",
        ms(sample_quantile(&errors, 1.0)),
        "ms",
    );
    let (busy, _) = print_requests(
        &format!(
            "{}: API requests while progressing ({elapsed:.0} s, all {count} Canaries):",
            who.name()
        ),
        &progress_requests,
        progressing as f64 * elapsed / interval.as_secs_f64(),
    );
    report.add(
        "API requests per progressing Canary per interval",
        counted.then_some(busy),
        "count",
    );
    println!("{} log: {}", who.name(), ctl.log.display());
    // The namespace goes first: a controller stopped before its objects would leave finalizers.
    delete_namespace(env, ns).await;
    drop(ctl);
    // Deleted once the namespace's Services have given their addresses back.
    let _ = cidrs.delete(SERVICE_CIDR, &DeleteParams::default()).await;
    report
}
