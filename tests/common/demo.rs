//! The demo scenario (`cargo run --example demo`, `./demo`, and `tests/e2e_demo.rs`): a Rollout
//! through Gateway API and real Traefik with a Prometheus success-rate analysis over Traefik's
//! own request metrics. v1 → v2 (healthy) promotes step by step; v2 → v3 (its pods answer 20%
//! HTTP 500s through the echo backend's faults file) fails the analysis and rolls back.
//!
//! Include it next to `common`: `mod common; #[path = "common/demo.rs"] mod demo;`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;
use sluice::api::argo::rollout::Rollout;

use crate::common::controller::ControllerProcess;
use crate::common::{GatewayEnv, TestEnv, eventually};

/// The error rate v3's pods answer with.
pub const V3_ERROR_RATE: f64 = 0.2;
/// The analysis' success condition threshold.
pub const THRESHOLD: f64 = 0.95;

/// What happened, for the summary and the test's assertions.
#[derive(Debug, Default)]
pub struct Outcome {
    pub namespace: String,
    /// v2 became the stable revision after all steps.
    pub v2_promoted: bool,
    /// v3's analysis failed, the Rollout aborted and all traffic is back on v2.
    pub v3_rolled_back: bool,
    /// The success rates measured by the analyses, per version.
    pub success_rates: BTreeMap<String, Vec<f64>>,
    /// Requests sent through the gateway and how many answered an error, per version served.
    pub requests: BTreeMap<String, (usize, usize)>,
    pub elapsed: Duration,
    /// The controller's log.
    pub log: PathBuf,
}

impl Outcome {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Summary ({:.0?}, namespace {}):\n  v1 -> v2: {}\n  v2 -> v3: {}\n",
            self.elapsed,
            self.namespace,
            if self.v2_promoted {
                "promoted step by step (analysis passed)"
            } else {
                "NOT promoted"
            },
            if self.v3_rolled_back {
                "analysis failed -> rolled back automatically to v2"
            } else {
                "NOT rolled back"
            },
        );
        for (v, rates) in &self.success_rates {
            let rates: Vec<String> = rates.iter().map(|r| format!("{r:.3}")).collect();
            s += &format!("  {v} measured success rates: {}\n", rates.join(", "));
        }
        for (v, (n, e)) in &self.requests {
            s += &format!("  {v}: {n} requests served, {e} errors\n");
        }
        s += &format!("  controller log: {}\n", self.log.display());
        s
    }
}

fn say(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{msg}");
}

/// The faults file of the echo backend: `<pod-ip> <error-rate>` lines, shared by everyone using
/// the test environment, so only this demo's lines are touched (written via rename).
struct Faults {
    path: PathBuf,
}

impl Faults {
    fn update(&self, set: &BTreeMap<String, f64>, remove: &[String]) {
        let old = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut lines: BTreeMap<String, String> = old
            .lines()
            .filter_map(|l| {
                let (ip, rate) = l.split_once(' ')?;
                Some((ip.to_string(), rate.trim().to_string()))
            })
            .collect();
        for ip in remove {
            lines.remove(ip);
        }
        for (ip, rate) in set {
            lines.insert(ip.clone(), rate.to_string());
        }
        let text: String = lines.iter().map(|(ip, r)| format!("{ip} {r}\n")).collect();
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

/// Pod IP → pod-template hash of the Rollout's pods.
async fn pod_hashes(pods: &Api<Pod>) -> BTreeMap<String, String> {
    let Ok(list) = pods
        .list(&kube::api::ListParams::default().labels("rollouts-pod-template-hash"))
        .await
    else {
        return BTreeMap::new();
    };
    list.items
        .into_iter()
        .filter_map(|p| {
            let hash = p
                .metadata
                .labels?
                .get("rollouts-pod-template-hash")?
                .clone();
            Some((p.status?.pod_ip?, hash))
        })
        .collect()
}

/// The newest AnalysisRun's phase and last measured value.
async fn last_measurement(
    runs: &Api<DynamicObject>,
    old: &[String],
) -> Option<(String, String, Option<f64>)> {
    let list = runs.list(&Default::default()).await.ok()?;
    let run = list
        .items
        .into_iter()
        .filter(|r| !old.contains(r.metadata.name.as_ref().unwrap_or(&String::new())))
        .max_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0))?;
    let phase = run.data["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_string();
    let value = run.data["status"]["metricResults"]
        .as_array()
        .and_then(|m| m.first())
        .and_then(|m| m["measurements"].as_array())
        .and_then(|ms| ms.iter().rev().find_map(|m| m["value"].as_str()))
        .and_then(|v| {
            v.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        });
    Some((run.metadata.name.unwrap_or_default(), phase, value))
}

const STEPS: [&str; 6] = [
    "setWeight 20",
    "pause 10s",
    "analysis",
    "setWeight 50",
    "pause 10s",
    "analysis",
];

/// Runs the whole scenario in a fresh namespace of the test environment. Prints progress
/// lines on stdout. Panics when the environment is unusable or something times out.
pub async fn run(env: &TestEnv, gw: GatewayEnv) -> Outcome {
    let started = Instant::now();
    let ns_guard = env.namespace("demo").await;
    let ns = ns_guard.name.clone();
    let host = format!("{ns}.sluice.test");
    say(&format!("namespace {ns}, host {host}"));

    for track in ["stable", "canary"] {
        env.create(
            &ns,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("app-{track}")},
                "spec": {"selector": {"app": "web"},
                         "ports": [{"port": 80, "targetPort": gw.echo_port}]},
            }),
        )
        .await;
    }
    env.create(
        &ns,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": gw.class, "listeners": [
                {"name": "web", "protocol": "HTTP", "port": gw.port, "hostname": host},
            ]},
        }),
    )
    .await;
    env.create(
        &ns,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "app"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": [host],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": "app-stable", "port": 80, "weight": 100},
                        {"name": "app-canary", "port": 80, "weight": 0},
                    ],
                }],
            },
        }),
    )
    .await;
    // Traefik names a Service's backend `<namespace>-<service>-<port>`. A 10s window (the
    // pauses' length) keeps the previous version's last canary traffic out of v3's measurement.
    let canary_svc = format!("{ns}-app-canary-.*");
    let query = format!(
        "sum(rate(traefik_service_requests_total{{service=~\"{canary_svc}\",code!~\"5..\"}}[10s])) / \
         sum(rate(traefik_service_requests_total{{service=~\"{canary_svc}\"}}[10s]))"
    );
    env.create(
        &ns,
        json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "success-rate"},
            "spec": {"metrics": [{
                "name": "success-rate",
                "interval": "5s",
                "count": 2,
                "successCondition": format!("result[0] >= {THRESHOLD}"),
                "failureLimit": 0,
                "provider": {"prometheus": {"address": env.prometheus_url, "query": query}},
            }]},
        }),
    )
    .await;
    say(&format!(
        "analysis: success rate of app-canary through Traefik >= {THRESHOLD}\n  query: {query}"
    ));

    let ctl = ControllerProcess::start_with(env, &ns, &["--leader-elect=false"]).await;
    say(&format!(
        "sluice controller started (log: {})",
        ctl.log.display()
    ));

    let template = |version: &str| {
        json!({"metadata": {"labels": {"app": "web", "version": version}},
               "spec": {"containers": [{"name": "web", "image": format!("registry.invalid/web:{version}"),
                                        "ports": [{"containerPort": gw.echo_port}]}]}})
    };
    let analysis = json!({"analysis": {"templates": [{"templateName": "success-rate"}]}});
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template("v1"),
            "strategy": {"canary": {
                "canaryService": "app-canary", "stableService": "app-stable",
                "scaleDownDelaySeconds": 2,
                "trafficRouting": {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "app"}}},
                "steps": [
                    {"setWeight": 20}, {"pause": {"duration": "10s"}}, analysis,
                    {"setWeight": 50}, {"pause": {"duration": "10s"}}, analysis,
                ],
            }},
        },
    }))
    .expect("the Rollout");
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns);
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("creating the Rollout");
    say("Rollout web v1 created");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let runs: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "AnalysisRun"),
            "analysisruns",
        ),
    );
    let log = ctl.log.display().to_string();
    let v1_hash = eventually(
        Duration::from_secs(60),
        &format!("v1 to be Healthy (log: {log})"),
        || async {
            let s = rollouts.get("web").await.ok()?.status?;
            (!s.stable_rs.is_empty()
                && s.stable_rs == s.current_pod_hash
                && s.available_replicas == 2)
                .then_some(s.stable_rs)
        },
    )
    .await;
    say(&format!("v1 is Healthy (pod-template hash {v1_hash})"));

    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    eventually(
        Duration::from_secs(60),
        "Traefik to serve the route",
        || async {
            let r = probe
                .get(format!("{}/", gw.url))
                .header(reqwest::header::HOST, &host)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    say("Traefik serves the route: sending steady traffic through the gateway");

    // Steady traffic through the gateway, counted per version served.
    let versions: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default(); // hash → version
    versions.lock().unwrap().insert(v1_hash, "v1".into());
    let ips: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default(); // IP → hash
    let v1_ips = pod_hashes(&pods).await;
    ips.lock().unwrap().extend(v1_ips);
    let counts: Arc<std::sync::Mutex<BTreeMap<String, (usize, usize)>>> = Arc::default();
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let traffic = {
        let (ips, versions, counts) = (ips.clone(), versions.clone(), counts.clone());
        let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
        let (url, host) = (gw.url.clone(), host.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let resp = http
                    .get(format!("{url}/"))
                    .header(reqwest::header::HOST, &host)
                    .send()
                    .await;
                sent.fetch_add(1, Relaxed);
                let (ok, ip) = match resp {
                    Ok(r) => (
                        r.status().is_success(),
                        r.text().await.unwrap_or_default().trim().to_string(),
                    ),
                    Err(_) => (false, String::new()),
                };
                if !ok {
                    failed.fetch_add(1, Relaxed);
                }
                {
                    let hash = ips.lock().unwrap().get(&ip).cloned();
                    let version = hash
                        .and_then(|h| versions.lock().unwrap().get(&h).cloned())
                        .unwrap_or_else(|| "unknown".into());
                    let mut c = counts.lock().unwrap();
                    let e = c.entry(version).or_default();
                    e.0 += 1;
                    e.1 += usize::from(!ok);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let faults = Faults {
        path: std::env::var_os("SLUICE_ECHO_FAULTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| env.dir.join("echo-faults")),
    };
    let mut outcome = Outcome {
        namespace: ns.clone(),
        log: ctl.log.clone(),
        ..Default::default()
    };
    let mut faulty_ips: Vec<String> = Vec::new();

    for (version, error_rate) in [("v2", 0.0), ("v3", V3_ERROR_RATE)] {
        let before = rollouts.get("web").await.expect("the Rollout");
        let old_stable = before.status.clone().unwrap_or_default().stable_rs;
        let old_runs: Vec<String> = runs
            .list(&Default::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|r| r.metadata.name)
                    .collect()
            })
            .unwrap_or_default();
        say(&format!(
            "\n=== update to {version} ({}) ===",
            if error_rate > 0.0 {
                format!("its pods answer {:.0}% HTTP 500", error_rate * 100.0)
            } else {
                "healthy".into()
            }
        ));
        let patch = json!({"spec": {"template": template(version)}});
        rollouts
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("a new revision");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last_line = String::new();
        let mut rates_seen: Vec<(String, f64)> = Vec::new();
        let result = loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if Instant::now() > deadline {
                break "timed out";
            }
            let Ok(r) = rollouts.get("web").await else {
                continue;
            };
            let s = r.status.clone().unwrap_or_default();
            if s.current_pod_hash.is_empty() || s.current_pod_hash == old_stable {
                continue;
            }
            versions
                .lock()
                .unwrap()
                .entry(s.current_pod_hash.clone())
                .or_insert_with(|| version.to_string());
            // Map the new pods' IPs (and their error rate) as they appear.
            let hashes = pod_hashes(&pods).await;
            let new_faulty: BTreeMap<String, f64> = hashes
                .iter()
                .filter(|(ip, h)| **h == s.current_pod_hash && !faulty_ips.contains(ip))
                .filter(|_| error_rate > 0.0)
                .map(|(ip, _)| (ip.clone(), error_rate))
                .collect();
            if !new_faulty.is_empty() {
                faults.update(&new_faulty, &[]);
                faulty_ips.extend(new_faulty.keys().cloned());
            }
            ips.lock().unwrap().extend(hashes);

            let (cw, sw, verified) = s.canary.weights.as_ref().map_or((0, 100, false), |w| {
                (w.canary.weight, w.stable.weight, w.verified == Some(true))
            });
            let step = s.current_step_index.unwrap_or(0) as usize;
            let step_name = if s.abort {
                "aborted"
            } else {
                STEPS.get(step).copied().unwrap_or("done")
            };
            let mut analysis = String::from("-");
            if let Some((name, phase, value)) = last_measurement(&runs, &old_runs).await {
                if let Some(v) = value
                    && rates_seen.last() != Some(&(name.clone(), v))
                {
                    rates_seen.push((name.clone(), v));
                }
                analysis = format!(
                    "{phase}, success rate {}",
                    value.map_or("n/a".into(), |v| format!("{v:.3}"))
                );
            }
            let line = format!(
                "{version} | step {}/{} {step_name:<12} | weights stable {sw:>3} / canary {cw:>3}{} | analysis {analysis} | {}",
                step.min(STEPS.len()),
                STEPS.len(),
                if verified { " (verified)" } else { "" },
                s.phase.as_ref().map_or("-".into(), |p| format!("{p:?}")),
            );
            if line != last_line {
                say(&format!(
                    "[{:>5.1}s] {line} | {} req, {} errors",
                    started.elapsed().as_secs_f64(),
                    sent.load(Relaxed),
                    failed.load(Relaxed)
                ));
                last_line = line;
            }
            if s.abort {
                break if cw == 0 && s.stable_rs == old_stable {
                    "rolled back"
                } else {
                    continue;
                };
            }
            if s.stable_rs == s.current_pod_hash && cw == 0 && s.available_replicas == 2 {
                break "promoted";
            }
        };
        outcome.success_rates.insert(
            version.to_string(),
            rates_seen.iter().map(|(_, v)| *v).collect(),
        );
        say(&format!("=== {version}: {result} ==="));
        match version {
            "v2" => outcome.v2_promoted = result == "promoted",
            _ => outcome.v3_rolled_back = result == "rolled back",
        }
        if result == "timed out" {
            break;
        }
    }

    // A little more traffic on the restored stable version, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let _ = traffic.await;
    faults.update(&BTreeMap::new(), &faulty_ips);
    outcome.requests = counts.lock().unwrap().clone();
    outcome.elapsed = started.elapsed();
    drop(ctl);
    drop(ns_guard);
    outcome
}
