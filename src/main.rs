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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
