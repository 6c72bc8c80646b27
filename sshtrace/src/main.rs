use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use sshtrace::{
    cli::Cli,
    kernel::{lsm::ActiveLsms, tracefs},
    output::SinkSpec,
    preflight, tracer,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sshtrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let outputs = if cli.outputs.is_empty() {
        vec![SinkSpec::parse("-", cli.json, cli.verbose)?]
    } else {
        cli.outputs
            .iter()
            .map(|o| SinkSpec::parse(o, cli.json, cli.verbose))
            .collect::<Result<Vec<_>>>()?
    };
    preflight::check()?;
    // Before any thread exists: mounting tracefs may need a private mount namespace.
    let tracefs = tracefs::ensure_mounted()?;
    let lsms = ActiveLsms::discover();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tracer::run(cli, outputs, tracefs, lsms))
}
