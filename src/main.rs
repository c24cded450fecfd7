//! The `sluice` binary: one entry point, subcommands for the controller, CRD generation and CLI verbs.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sluice::cli::rollouts::{Outcome, Session, Target};
use sluice::engine::intent::Intent;

/// `sluice --version`: the crate version and the git commit it was built from (`build.rs`;
/// "unknown" when built outside a git checkout).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SLUICE_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "sluice",
    version = VERSION,
    about = "Progressive delivery for Kubernetes (Argo Rollouts and Flagger APIs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the controller variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Name of the leader Lease (default: `sluice-controller`, `sluice-controller-<id>` with
        /// --instance-id, so each instance elects its own leader).
        #[arg(long, env = "SLUICE_LEADER_ELECTION_NAME")]
        leader_election_name: Option<String>,
        /// Run the Argo Rollouts half: Rollouts, AnalysisRuns, AnalysisTemplates (`--argo=false`: off).
        #[arg(long, env = "SLUICE_ARGO", default_value_t = true, action = clap::ArgAction::Set)]
        argo: bool,
        /// Run the Flagger half: Canaries, MetricTemplates, AlertProviders (`--flagger=false`: off).
        #[arg(long, env = "SLUICE_FLAGGER", default_value_t = true, action = clap::ArgAction::Set)]
        flagger: bool,
        /// `/healthz` fails once requests to the apiserver have had no answer for this long.
        #[arg(long, env = "SLUICE_HEALTHZ_STALL_SECONDS", default_value_t = 60)]
        healthz_stall_seconds: u64,
        /// Log format.
        #[arg(long, value_enum, env = "SLUICE_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
        /// Follow HTTP redirects from metric providers, webhooks and alert providers (a request
        /// carrying headers or credentials only to its own origin; never with a Referer).
        #[arg(long, env = "SLUICE_HTTP_FOLLOW_REDIRECTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        http_follow_redirects: bool,
        /// The namespace whose AlertProviders every Canary may use, besides its own namespace.
        #[arg(long, env = "SLUICE_ALERT_PROVIDER_NAMESPACE")]
        alert_provider_namespace: Option<String>,
        /// The provider of Canaries without `spec.provider` (Flagger's `-mesh-provider`, same
        /// default): istio, gatewayapi:v1, gatewayapi:v1beta1, smi:v1alpha2/3/4, linkerd, traefik,
        /// nginx or kubernetes.
        #[arg(long, env = "SLUICE_MESH_PROVIDER", default_value = sluice::controller::canary::DEFAULT_PROVIDER)]
        mesh_provider: String,
        /// Argo's controller instance: handle only Argo objects labelled
        /// `argo-rollouts.argoproj.io/controller-instance-id=<id>` (without it: only unlabelled ones).
        #[arg(long, env = "SLUICE_INSTANCE_ID")]
        instance_id: Option<String>,
        /// Argo's AWS target-group verification: refused (Sluice calls no AWS API; the ALB router
        /// verifies the weight on the Ingress annotation). `--alb-verify-weight` is its old name.
        #[arg(long, alias = "alb-verify-weight", hide = true, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        aws_verify_target_group: bool,
        /// Copy to each `-primary` Deployment only the target's labels with one of these
        /// comma-separated prefixes (`*`: all but Flux's; Flagger's `-include-label-prefix`).
        /// Not given: every label is copied.
        #[arg(long, env = "SLUICE_INCLUDE_LABEL_PREFIX")]
        include_label_prefix: Option<String>,
        /// Flagger's controller-wide alerting.
        #[command(flatten)]
        alerting: sluice::alert::global::Flags,
    },
    /// Flagger's load tester: gates, webhook tasks (`cmd`, `bash`) and built-in `hey` load tests
    /// for Canary webhooks (Flagger's single-dash flags work too: `-port=8080`).
    Loadtester {
        /// Port to listen on, on every interface.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Bound on every task (a Go duration: 30s, 10m, 1h).
        #[arg(long, default_value = "1h", value_parser = parse_go_duration)]
        timeout: std::time::Duration,
        /// Serve only Canaries whose namespace matches (empty: all).
        #[arg(long, default_value = "")]
        namespace_regexp: String,
        /// Log level (RUST_LOG, when set, wins).
        #[arg(long, alias = "zap-log-level", value_enum, default_value = "info")]
        log_level: LogLevel,
        /// Log encoding (Flagger's names).
        #[arg(long, value_enum, default_value = "json")]
        zap_encoding: ZapEncoding,
    },
    /// Serve the web dashboard (127.0.0.1:3100, the kubeconfig's user, read-only by default).
    Dashboard(sluice::dashboard::Args),
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
    /// Show one Rollout as a tree: revisions → ReplicaSets → pods, steps, weights, analysis.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// List Rollouts.
    List {
        #[command(subcommand)]
        what: ListWhat,
    },
    /// Resume a paused Rollout, or skip the current step (`--full`: skip every step and analysis).
    Promote {
        name: String,
        /// Skip the remaining steps and analysis.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Abort the update: traffic and replicas back to stable.
    Abort {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Start an aborted update again (`retry NAME` or Argo's `retry rollout NAME`).
    Retry {
        #[arg(num_args = 1..=2, value_names = ["rollout", "NAME"])]
        args: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Pause a Rollout (`spec.paused`).
    Pause {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Resume a paused Rollout (Argo CD's resume action).
    Resume {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Roll back to an earlier revision's pod template.
    Undo {
        name: String,
        /// The revision to go back to (default: the previous one).
        #[arg(long)]
        to_revision: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// Restart the Rollout's pods (`spec.restartAt`).
    Restart {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set fields of a Rollout.
    Set {
        #[command(subcommand)]
        what: SetWhat,
    },
    /// Wait until a Rollout is Healthy (exit 0) or Degraded (exit 1); exit 2 on --timeout.
    Status {
        name: String,
        /// Give up after this long (e.g. 90s, 5m; default: wait forever).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        #[command(flatten)]
        target: Target,
    },
    /// Validate manifests offline: the apiserver's schema and CEL rules, the engine's InvalidSpec
    /// checks and the analysis template checks. Exit 1 when any is invalid.
    Lint {
        /// Files to check (`-` for stdin); repeat for several.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
}

#[derive(Subcommand)]
enum GetWhat {
    /// One Rollout.
    #[command(alias = "ro", alias = "rollouts")]
    Rollout {
        name: String,
        /// Redraw every 2 seconds until interrupted.
        #[arg(short = 'w', long)]
        watch: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ListWhat {
    /// Rollouts in the namespace (or every namespace).
    #[command(alias = "rollout", alias = "ro")]
    Rollouts {
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum SetWhat {
    /// Set a container's image: `set image NAME CONTAINER=IMAGE` (`*=IMAGE` for all).
    Image {
        name: String,
        #[arg(value_name = "CONTAINER=IMAGE")]
        image: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `90`, `90s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s or 5m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// A Go duration (`-timeout 1h`).
fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    sluice::api::flagger::canary::parse_go_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 30s, 10m or 1h"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Flagger's `-log-level` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogLevel {
    Debug,
    Info,
    #[value(alias = "warn")]
    Warning,
    Error,
}

/// Flagger's `-zap-encoding` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ZapEncoding {
    Json,
    Console,
}

fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

/// Logging at `level` unless RUST_LOG says otherwise.
fn init_logging_at(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses the command line; as `kubectl-sluice` (the kubectl plugin) help and errors say
/// `kubectl sluice`.
fn parse() -> Cli {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let plugin = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("kubectl-sluice"));
    let mut command = Cli::command();
    if plugin {
        command = command.bin_name("kubectl sluice");
    }
    // Go's single-dash spellings: the load tester's every flag, the controller's Flagger ones.
    let matches = command.get_matches_from(sluice::cli::flagger_flags::double_dashed(
        std::env::args_os(),
    ));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs a cluster verb on a fresh single-threaded runtime.
fn on_cluster<T>(
    target: &Target,
    verb: impl AsyncFnOnce(Session) -> Result<T, sluice::cli::rollouts::Error>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    sluice::install_crypto_provider();
    Ok(runtime.block_on(async {
        let session = target.connect().await?;
        verb(session).await
    })?)
}

fn intent(name: &str, target: &Target, intent: Intent) -> anyhow::Result<()> {
    let message = on_cluster(target, async |s| s.intent(name, intent).await)?;
    println!("{message}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match parse().command {
        Command::Controller {
            namespace,
            http_addr,
            prometheus_address,
            leader_elect,
            leader_election_namespace,
            leader_election_name,
            argo,
            flagger,
            healthz_stall_seconds,
            log_format,
            http_follow_redirects,
            alert_provider_namespace,
            mesh_provider,
            instance_id,
            aws_verify_target_group,
            include_label_prefix,
            alerting,
        } => {
            sluice::controller::canary::check_mesh_provider(&mesh_provider)?;
            let alerting = alerting.resolve(|name| std::env::var(name).ok())?;
            if aws_verify_target_group {
                anyhow::bail!(
                    "--aws-verify-target-group is not supported: Sluice calls no AWS API (its ALB \
                     router verifies the weight written on the Ingress annotation); remove the flag"
                );
            }
            let instance = sluice::controller::instance::Instance::new(instance_id);
            init_logging(log_format);
            // One rustls crypto provider (ring) for kube and reqwest.
            sluice::install_crypto_provider();
            let config = sluice::controller::Config {
                leader_election: leader_elect.then(|| {
                    let ns = leader_election_namespace
                        .or_else(|| namespace.clone())
                        .or_else(|| std::env::var("POD_NAMESPACE").ok())
                        .unwrap_or_else(|| "default".to_string());
                    let name = leader_election_name.unwrap_or_else(|| match instance.id() {
                        Some(id) => format!("sluice-controller-{id}"),
                        None => "sluice-controller".to_string(),
                    });
                    (ns, name)
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
                apis: sluice::controller::Apis { argo, flagger },
                healthz_stall: std::time::Duration::from_secs(healthz_stall_seconds),
                http_follow_redirects,
                alert_provider_namespace: alert_provider_namespace.filter(|n| !n.is_empty()),
                mesh_provider,
                alerting,
                include_label_prefix: include_label_prefix
                    .map(|p| sluice::engine::label_prefix::parse(&p)),
                instance,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let outcome = runtime.block_on(sluice::controller::run(config));
            // On an error (a lost Lease above all) nothing may act any more: background tasks are
            // dropped at once instead of waiting for them.
            if outcome.is_err() {
                runtime.shutdown_background();
            }
            outcome?;
        }
        Command::Loadtester {
            port,
            timeout,
            namespace_regexp,
            log_level,
            zap_encoding,
        } => {
            let format = match zap_encoding {
                ZapEncoding::Json => LogFormat::Json,
                ZapEncoding::Console => LogFormat::Text,
            };
            let level = match log_level {
                LogLevel::Debug => "info,sluice=debug",
                LogLevel::Info => "info",
                LogLevel::Warning => "warn",
                LogLevel::Error => "error",
            };
            init_logging_at(format, level);
            sluice::install_crypto_provider();
            let config = sluice::loadtester::Config {
                addr: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                timeout,
                namespace_regexp,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(sluice::loadtester::run(config))?;
        }
        Command::Dashboard(args) => {
            init_logging(LogFormat::Text);
            sluice::install_crypto_provider();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(sluice::dashboard::run(args.into()))?;
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
        Command::Get {
            what:
                GetWhat::Rollout {
                    name,
                    watch,
                    target,
                },
        } => {
            if watch {
                on_cluster(&target, async |s| {
                    loop {
                        let tree = s.get(&name).await?;
                        // Clear the screen and redraw from the top.
                        print!("\x1b[2J\x1b[H{tree}");
                        use std::io::Write as _;
                        let _ = std::io::stdout().flush();
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                })?;
            } else {
                print!("{}", on_cluster(&target, async |s| s.get(&name).await)?);
            }
        }
        Command::List {
            what:
                ListWhat::Rollouts {
                    all_namespaces,
                    target,
                },
        } => print!(
            "{}",
            on_cluster(&target, async |s| s.list(all_namespaces).await)?
        ),
        Command::Promote { name, full, target } => intent(
            &name,
            &target,
            if full {
                Intent::PromoteFull
            } else {
                Intent::Promote
            },
        )?,
        Command::Abort { name, target } => intent(&name, &target, Intent::Abort)?,
        Command::Retry { args, target } => {
            let name = match args.as_slice() {
                [name] => name,
                [kind, name] if matches!(kind.as_str(), "rollout" | "rollouts" | "ro") => name,
                _ => anyhow::bail!("usage: sluice retry [rollout] NAME"),
            };
            intent(name, &target, Intent::Retry)?;
        }
        Command::Pause { name, target } => intent(&name, &target, Intent::Pause)?,
        Command::Resume { name, target } => intent(&name, &target, Intent::Resume)?,
        Command::Undo {
            name,
            to_revision,
            target,
        } => println!(
            "{}",
            on_cluster(&target, async |s| s.undo(&name, to_revision).await)?
        ),
        Command::Restart { name, target } => {
            println!("{}", on_cluster(&target, async |s| s.restart(&name).await)?)
        }
        Command::Set {
            what:
                SetWhat::Image {
                    name,
                    image,
                    target,
                },
        } => println!(
            "{}",
            on_cluster(&target, async |s| s.set_image(&name, &image).await)?
        ),
        Command::Status {
            name,
            timeout,
            target,
        } => {
            let outcome = on_cluster(&target, async |s| {
                s.status(&name, timeout, |line| println!("{line}")).await
            })?;
            if outcome == Outcome::TimedOut {
                eprintln!("timed out waiting for rollout '{name}' to become Healthy");
            }
            std::process::exit(outcome.code());
        }
        Command::Lint { files } => {
            let mut invalid = false;
            for file in &files {
                let report = sluice::cli::lint::lint_file(file)?;
                for warning in &report.warnings {
                    eprintln!("{file}: warning: {warning}");
                }
                for error in &report.errors {
                    println!("{file}: {error}");
                }
                if report.errors.is_empty() {
                    println!("{file}: ok ({} Sluice object(s) checked)", report.checked);
                } else {
                    invalid = true;
                }
            }
            if invalid {
                std::process::exit(1);
            }
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
