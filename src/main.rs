//! The `sluice` binary: one entry point, subcommands for the controller, CRD generation and CLI verbs.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Progressive delivery for Kubernetes (Argo Rollouts and Flagger APIs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the current kubeconfig (or the in-cluster config).
    Controller {
        /// Manage only this namespace (default: every namespace).
        #[arg(long, env = "SLUICE_NAMESPACE")]
        namespace: Option<String>,
        /// Where to serve /metrics, /healthz and /readyz.
        #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8090")]
        http_addr: std::net::SocketAddr,
        /// Prometheus address for metrics that name none.
        #[arg(long, env = "SLUICE_PROMETHEUS_ADDRESS")]
        prometheus_address: Option<String>,
        /// Elect a leader on a Lease, so only one replica acts (`--leader-elect=false` to act at once).
        #[arg(long, env = "SLUICE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        /// Namespace of the leader Lease (default: --namespace, else $POD_NAMESPACE, else "default").
        #[arg(long, env = "SLUICE_LEADER_ELECTION_NAMESPACE")]
        leader_election_namespace: Option<String>,
        /// Name of the leader Lease.
        #[arg(
            long,
            env = "SLUICE_LEADER_ELECTION_NAME",
            default_value = "sluice-controller"
        )]
        leader_election_name: String,
        /// Log format.
        #[arg(long, value_enum, env = "SLUICE_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Print every CustomResourceDefinition Sluice serves, as one multi-document YAML stream.
    Crds {
        /// Write one file per CRD (`<plural>.<group>.yaml`) into this directory instead of printing.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Preview, offline, how a Rollout's canary steps play out for a new image.
    Simulate {
        /// A file holding the Rollout (other documents are ignored).
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// The new image (default: the current image with `-next` appended).
        #[arg(long)]
        image: Option<String>,
        /// How the simulated AnalysisRuns end.
        #[arg(long, value_enum, default_value = "successful")]
        analysis: sluice::cli::simulate::Verdict,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Controller {
            namespace,
            http_addr,
            prometheus_address,
            leader_elect,
            leader_election_namespace,
            leader_election_name,
            log_format,
        } => {
            init_logging(log_format);
            // kube's TLS uses rustls with ring; reqwest would otherwise pick another provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = sluice::controller::Config {
                leader_election: leader_elect.then(|| {
                    let ns = leader_election_namespace
                        .or_else(|| namespace.clone())
                        .or_else(|| std::env::var("POD_NAMESPACE").ok())
                        .unwrap_or_else(|| "default".to_string());
                    (ns, leader_election_name)
                }),
                identity: std::env::var("POD_NAME").unwrap_or_else(|_| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_else(|_| "sluice".to_string());
                    format!("{host}-{}", std::process::id())
                }),
                namespace,
                http_addr,
                default_prometheus: prometheus_address,
            };
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(sluice::controller::run(config))?;
        }
        Command::Simulate {
            file,
            image,
            analysis,
        } => {
            print!(
                "{}",
                sluice::cli::simulate::run(&file, image.as_deref(), analysis)?
            );
        }
        Command::Crds { dir: None } => print!("{}", sluice::api::crds_yaml()?),
        Command::Crds { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in sluice::api::crds() {
                let path = dir.join(sluice::api::crd_file_name(&crd));
                std::fs::write(&path, sluice::api::crd_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
