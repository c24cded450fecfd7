//! A second, private kube-apiserver for tests that must install CRDs the shared test cluster
//! cannot carry (CRDs are cluster-wide, and other tests run against the shared ones at the same
//! time). It is the test cluster's own kube-apiserver binary with the test cluster's flags,
//! certificates and etcd, but its own `--etcd-prefix` and port: a real apiserver with an empty
//! store and no controller-manager (nothing runs pods or deletes namespaces there).
//!
//! [`PrivateApiserver::stop`] kills it and deletes its keys from etcd.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ObjectMeta;
use kube::{Client, Config};

use super::{TestEnv, eventually, unique_name, yaml_documents};

/// A running private apiserver; killed on drop (its etcd keys stay unless [`stop`](Self::stop)
/// ran).
pub struct PrivateApiserver {
    child: Child,
    /// The test environment, pointed at this apiserver (client, kubeconfig); the rest shared.
    pub env: TestEnv,
    etcd: String,
    prefix: String,
}

/// The shared cluster's kube-apiserver component from kwokctl's configuration.
fn shared_apiserver(env: &TestEnv) -> (PathBuf, Vec<String>) {
    let config = env.kubeconfig.with_file_name("kwok.yaml");
    let docs = yaml_documents(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let component = docs[0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "kube-apiserver")
        .unwrap_or_else(|| panic!("{} names no kube-apiserver", config.display()));
    let binary = PathBuf::from(component["binary"].as_str().expect("its binary"));
    let args = component["args"]
        .as_array()
        .expect("its args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    (binary, args)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PrivateApiserver {
    /// Starts one and waits until it serves.
    pub async fn start(env: &TestEnv, prefix: &str) -> PrivateApiserver {
        let (binary, shared_args) = shared_apiserver(env);
        let name = unique_name(prefix);
        let port = free_port();
        let etcd_prefix = format!("/sluice-e2e/{name}");
        let mut etcd = String::new();
        let args: Vec<String> = shared_args
            .into_iter()
            .map(|a| {
                if let Some(servers) = a.strip_prefix("--etcd-servers=") {
                    etcd = servers.split(',').next().unwrap_or_default().to_owned();
                }
                if a.starts_with("--etcd-prefix=") {
                    format!("--etcd-prefix={etcd_prefix}")
                } else if a.starts_with("--secure-port=") {
                    format!("--secure-port={port}")
                } else {
                    a
                }
            })
            .collect();
        let logs = env.dir.join("logs");
        std::fs::create_dir_all(&logs).expect("creating the log directory");
        let log = std::fs::File::create(logs.join(format!("apiserver-{name}.log"))).expect("log");
        let child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));

        let mut kubeconfig = Kubeconfig::read_from(&env.kubeconfig).expect("the test kubeconfig");
        for cluster in &mut kubeconfig.clusters {
            if let Some(c) = cluster.cluster.as_mut() {
                c.server = Some(format!("https://127.0.0.1:{port}"));
            }
        }
        let path = logs.join(format!("kubeconfig-{name}.yaml"));
        std::fs::write(
            &path,
            serde_yaml::to_string(&kubeconfig).expect("kubeconfig YAML"),
        )
        .expect("writing the private kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client config");
        let client = Client::try_from(config).expect("a client");
        let private = PrivateApiserver {
            child,
            env: TestEnv {
                client: client.clone(),
                prometheus_url: env.prometheus_url.clone(),
                prom_targets_dir: env.prom_targets_dir.clone(),
                kubeconfig: path,
                kubectl: env.kubectl.clone(),
                dir: env.dir.clone(),
                gateway: None,
                helm: env.helm.clone(),
                gitops: None,
            },
            etcd,
            prefix: etcd_prefix,
        };
        // The apiserver makes the `default` namespace once its bootstrap controllers run.
        let namespaces: Api<Namespace> = Api::all(client);
        eventually(
            Duration::from_secs(90),
            "the private kube-apiserver to serve",
            || async {
                namespaces
                    .get_opt("default")
                    .await
                    .ok()
                    .flatten()
                    .map(|_| ())
            },
        )
        .await;
        private
    }

    /// Installs these CRDs and waits until each is Established.
    pub async fn install_crds(&self, crds: Vec<CustomResourceDefinition>) {
        let api: Api<CustomResourceDefinition> = Api::all(self.env.client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().expect("a CRD name");
            api.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("creating CRD {name}: {e}"));
            eventually(
                Duration::from_secs(60),
                &format!("CRD {name} established"),
                || async {
                    let crd = api.get(&name).await.ok()?;
                    let conditions = crd.status?.conditions?;
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                },
            )
            .await;
        }
    }

    /// Creates a namespace (never deleted: this apiserver has no namespace controller).
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.env.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// Kills it and deletes everything it stored from etcd (the v3 JSON gateway's deleterange).
    pub async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = serde_json::json!({
            "key": b64(&format!("{}/", self.prefix)),
            "range_end": b64(&format!("{}0", self.prefix)),
        });
        let url = format!("{}/v3/kv/deleterange", self.etcd);
        if let Err(e) = reqwest::Client::new().post(&url).json(&body).send().await {
            eprintln!("deleting {} from etcd: {e}", self.prefix);
        }
    }
}

impl Drop for PrivateApiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
