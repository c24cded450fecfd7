//! The `sluice` binary: one entry point, subcommands for the controller, CRD generation and CLI verbs.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Progressive delivery for Kubernetes (Argo Rollouts and Flagger APIs)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition Sluice serves, as one multi-document YAML stream.
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", sluice::api::crds_yaml()?),
    }
    Ok(())
}
