//! Smoke tests proving the test environment is real: a real kube-apiserver, controller-manager
//! and scheduler with kwok's fake nodes, Sluice's CRDs with their schemas and CEL rules, and a
//! Prometheus that scrapes what a test serves. Needs `tests/env/up` (run by `tests/run`);
//! without it every test here prints "skipped" and passes, except under `CI=true`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, pruned_paths, test_env, yaml_documents};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn pod_condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn pod_manifest(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/sluice/app:1"}]},
    }))
    .unwrap()
}

/// The real controller-manager makes a ReplicaSet, the real scheduler binds the pods, kwok runs them.
#[tokio::test]
async fn deployment_becomes_available() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("smoke-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/sluice/web:1"}]},
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    eventually(
        Duration::from_secs(90),
        "Deployment web to have 3 available replicas",
        || async {
            let d = deployments.get("web").await.ok()?;
            let status = d.status?;
            let available = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && status.available_replicas == Some(3)).then_some(())
        },
    )
    .await;

    let rs_list = Api::<ReplicaSet>::namespaced(env.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        rs_list.items.len(),
        1,
        "one ReplicaSet from the deployment controller"
    );
    let rs = &rs_list.items[0];
    let owner = &rs
        .metadata
        .owner_references
        .as_ref()
        .expect("ReplicaSet has an owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );

    let pods = Api::<Pod>::namespaced(env.client.clone(), &ns.name)
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 3);
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert!(
            node.is_some_and(|n| n.starts_with("kwok-node-")),
            "{name} bound by the scheduler: {node:?}"
        );
        assert_eq!(
            pod_condition(pod, "Ready").as_deref(),
            Some("True"),
            "{name} marked Ready by kwok"
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(
            status
                .pod_ip
                .as_deref()
                .is_some_and(|ip| ip.starts_with("10.244.")),
            "{name} podIP {:?}",
            status.pod_ip
        );
    }
}

/// kwok's `pod-never-ready` stage (tests/env/kwok.yaml): scheduled and Running, never Ready.
#[tokio::test]
async fn never_ready_pod_stays_unready() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("smoke-never-ready").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod_manifest("stuck", json!({"sim/never-ready": "true"})),
    )
    .await
    .unwrap();
    // A normal pod beside it, to prove the stage selectors really tell them apart.
    pods.create(
        &PostParams::default(),
        &pod_manifest("fine", json!({"app": "fine"})),
    )
    .await
    .unwrap();

    let stuck = eventually(
        Duration::from_secs(60),
        "pod stuck to be scheduled and Running",
        || async {
            let pod = pods.get("stuck").await.ok()?;
            (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
        },
    )
    .await;
    assert!(
        stuck.spec.as_ref().unwrap().node_name.is_some(),
        "scheduled"
    );
    let status = stuck.status.as_ref().unwrap();
    assert!(status.pod_ip.is_some(), "has a pod IP");
    let cs = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    assert!(!cs.ready, "container not ready");
    assert!(
        cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
        "container running"
    );

    eventually(
        Duration::from_secs(60),
        "pod fine to become Ready",
        || async {
            let pod = pods.get("fine").await.ok()?;
            (pod_condition(&pod, "Ready").as_deref() == Some("True")).then_some(())
        },
    )
    .await;

    for _ in 0..20 {
        let pod = pods.get("stuck").await.unwrap();
        assert_eq!(
            pod_condition(&pod, "Ready").as_deref(),
            Some("False"),
            "stuck must never become Ready"
        );
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Running")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every CRD Sluice generates is installed (tests/env/up applies crds/) and Established.
#[tokio::test]
async fn sluice_crds_are_established() {
    let Some(env) = test_env().await else { return };
    // tests/env/up keeps going when the apiserver rejects one of crds/ and records why here.
    if let Ok(errors) = std::fs::read_to_string(env.dir.join("sluice-crd-errors.txt")) {
        panic!("the apiserver rejected Sluice CRDs when tests/env/up applied crds/:\n{errors}");
    }
    let api: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let expected = sluice::api::crds();
    assert!(!expected.is_empty());
    for crd in expected {
        let name = crd.metadata.name.clone().unwrap();
        let installed = api
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} is not installed ({e}): rerun tests/env/up"));
        let established = installed
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
        let served: BTreeSet<_> = installed
            .spec
            .versions
            .iter()
            .map(|v| v.name.clone())
            .collect();
        let generated: BTreeSet<_> = crd.spec.versions.iter().map(|v| v.name.clone()).collect();
        assert_eq!(
            served, generated,
            "CRD {name} serves other versions than generated: rerun tests/env/up"
        );
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// (group, kind) of every Sluice CRD.
fn sluice_kinds() -> BTreeSet<(String, String)> {
    sluice::api::crds()
        .into_iter()
        .map(|c| (c.spec.group, c.spec.names.kind))
        .collect()
}

/// Every manifest under examples/ is accepted by the apiserver (server-side dry run), and for
/// Sluice's kinds the stored spec keeps every field that was sent (nothing pruned or changed).
#[tokio::test]
async fn examples_pass_server_side_dry_run() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("smoke-examples").await;
    let ours = sluice_kinds();
    let files = yaml_files(&repo_path("examples"));
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display()
            .to_string();
        let docs = match yaml_documents(file) {
            Ok(docs) => docs,
            Err(e) => {
                failures.push(format!("{rel}: not YAML: {e}"));
                continue;
            }
        };
        for (i, doc) in docs.iter().enumerate() {
            let what = format!(
                "{rel} #{} {} {}",
                i + 1,
                doc["kind"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
            checked += 1;
            match env.dry_run_create(&ns.name, doc).await {
                Err(e) => failures.push(format!("{what}: rejected: {e}")),
                Ok(stored) => {
                    let group = doc["apiVersion"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit_once('/')
                        .map_or("", |(g, _)| g);
                    let kind = doc["kind"].as_str().unwrap_or("");
                    if ours.contains(&(group.to_string(), kind.to_string())) {
                        let pruned = pruned_paths(&doc["spec"], &stored["spec"]);
                        if !pruned.is_empty() {
                            failures.push(format!(
                                "{what}: the apiserver pruned or changed spec{}",
                                pruned.join(", spec")
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "dry-run checked {checked} documents in {} files under examples/",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} example documents failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// tests/invalid/*.yaml: each manifest starts with `# expect: <substring>` and must be rejected
/// by the apiserver (schema, CEL rules) with an error containing that substring.
#[tokio::test]
async fn invalid_manifests_are_rejected() {
    let Some(env) = test_env().await else { return };
    let ns = env.namespace("smoke-invalid").await;
    let files = yaml_files(&repo_path("tests/invalid"));
    assert!(
        files.len() >= 15,
        "the invalid-manifest catalogue has only {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let Some(expect) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
        else {
            failures.push(format!(
                "{name}: first line must be `# expect: <substring>`"
            ));
            continue;
        };
        let docs = yaml_documents(file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(docs.len(), 1, "{name}: one manifest per file");
        match env.dry_run_create(&ns.name, &docs[0]).await {
            Ok(_) => failures.push(format!(
                "{name}: accepted, expected an error containing {expect:?}"
            )),
            Err(e) if e.contains(expect) => {}
            Err(e) => failures.push(format!("{name}: error lacks {expect:?}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests misbehaved:\n  {}",
        failures.len(),
        files.len(),
        failures.join("\n  ")
    );
}

/// Serves `body` as `/metrics` on 127.0.0.1 (any path, in fact) until the task is dropped.
async fn serve_metrics(body: String) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                // Read the request head; the scrape has no body.
                while read < buf.len() {
                    match sock.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Removes a file_sd target file when dropped.
struct TargetFile(PathBuf);
impl Drop for TargetFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A test's own exporter, registered through the file_sd directory, is scraped and queryable.
#[tokio::test]
async fn prometheus_scrapes_a_test_exporter() {
    let Some(env) = test_env().await else { return };
    let run = common::unique_name("prom");
    let value = 4000 + u64::from(std::process::id() % 1000);
    let body = format!(
        "# HELP sluice_e2e_probe A value served by the e2e smoke test.\n# TYPE sluice_e2e_probe gauge\nsluice_e2e_probe{{run=\"{run}\"}} {value}\n"
    );
    let (addr, server) = serve_metrics(body).await;

    std::fs::create_dir_all(&env.prom_targets_dir).unwrap();
    let target = TargetFile(env.prom_targets_dir.join(format!("{run}.json")));
    let tmp = env.prom_targets_dir.join(format!(".{run}.json.tmp"));
    let sd = json!([{"targets": [addr.to_string()], "labels": {"test": "prometheus_scrapes_a_test_exporter"}}]);
    std::fs::write(&tmp, serde_json::to_vec(&sd).unwrap()).unwrap();
    std::fs::rename(&tmp, &target.0).unwrap();

    let prom = prometheus_http_query::Client::try_from(env.prometheus_url.as_str()).unwrap();
    let query = format!("sluice_e2e_probe{{run=\"{run}\"}}");
    let seen = eventually(
        Duration::from_secs(60),
        &format!("Prometheus to return {query}"),
        || async {
            let result = prom.query(query.as_str()).get().await.ok()?;
            let sample = result.data().as_vector()?.first()?.sample().value();
            Some(sample)
        },
    )
    .await;
    assert_eq!(seen, value as f64);
    server.abort();
}
