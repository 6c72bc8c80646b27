use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use sshtrace::{
    cli::Cli,
    kernel::{lsm::ActiveLsms, tracefs},
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
    preflight::check()?;
    // Before any thread exists: mounting tracefs may need a private mount namespace.
    let tracefs = tracefs::ensure_mounted()?;
    let lsms = ActiveLsms::discover();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tracer::run(cli, tracefs, lsms))
}
