//! The command line: parse, dispatch to tracing, doctor or the generated helps.

use std::{io::IsTerminal, process::ExitCode};

use crate::{
    cli::{Cli, Color, Command, TraceArgs},
    doctor,
    kernel::{lsm::ActiveLsms, tracefs},
    metrics::{self, Metrics},
    output::{SinkSpec, StdoutView},
    preflight,
    trace::tracer,
    verdict::Cause,
};
use anyhow::{bail, Result};
use clap::{CommandFactory, Parser};

/// The command line's entry point.
pub fn main() -> ExitCode {
    log_library_warnings();
    let cli = Cli::parse();
    let result = match cli.command {
        None => trace(cli.trace).map(|()| ExitCode::SUCCESS),
        Some(Command::Client(mut args)) => {
            args.client = true;
            trace(args).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Doctor(args)) => doctor::run(&args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sshtrace",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        // Section 8: an administrator's command (it runs as root; the package puts it in
        // /usr/sbin).
        Some(Command::Man) => clap_mangen::Man::new(Cli::command())
            .section("8")
            .render(&mut std::io::stdout())
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    result.unwrap_or_else(|err| {
        eprintln!("sshtrace: error: {err:#}");
        ExitCode::FAILURE
    })
}

fn trace(args: TraceArgs) -> Result<()> {
    for cause in &args.causes {
        if Cause::from_name(cause).is_none() {
            bail!("--cause {cause}: unknown cause (see docs/events.md for the list)");
        }
    }
    let metrics_address = args
        .metrics
        .as_deref()
        .map(metrics::parse_address)
        .transpose()?;
    let terminal = std::io::stdout().is_terminal();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let view = StdoutView {
        json: args.json,
        verbose: args.verbose,
        color: match args.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => terminal && !no_color,
        },
        terminal,
    };
    let outputs = if args.outputs.is_empty() {
        // With --summary-only, stdout is for the summary alone.
        if args.summary_only {
            Vec::new()
        } else {
            vec![SinkSpec::parse("-", view)?]
        }
    } else {
        args.outputs
            .iter()
            .map(|o| SinkSpec::parse(o, view))
            .collect::<Result<Vec<_>>>()?
    };
    preflight::check()?;
    let metrics_listener = metrics_address.map(metrics::bind).transpose()?;
    // Before any thread exists: mounting tracefs or securityfs may need a private namespace.
    let tracefs = tracefs::ensure_mounted()?;
    let lsms = ActiveLsms::discover();
    let metrics = metrics_listener.map(Metrics::start).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(tracer::run(args, outputs, tracefs, lsms, metrics));
    // Not waiting for the blocking threads: a write to a stalled disk or to a reader that
    // stopped reading must not hold up the exit (what it held is counted undelivered).
    runtime.shutdown_background();
    result
}

/// aya (loading, BTF, maps) reports through the `log` facade: its warnings and errors go to
/// standard error like sshtrace's own lines, escaped, instead of being dropped for want of a
/// logger. sshtrace's own lines stay `eprintln!`: they are its interface, without levels.
fn log_library_warnings() {
    use std::io::Write as _;
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .format(|out, record| {
            let message = crate::escape::text(&record.args().to_string());
            writeln!(out, "sshtrace: {}: {message}", record.target())
        })
        .try_init();
}
