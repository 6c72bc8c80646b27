//! `cargo xtask`: the one entry point for setting up, building, running and testing sshtrace.

mod bench;
mod cmd;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set up, build, run and test sshtrace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// Set up, build and run sshtrace with the given arguments (as root).
    Run {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Arguments passed to sshtrace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure sshtrace against no tracing, bpftrace and tcpdump (not part of the tests).
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Seconds of the long reset storm for the memory measurement.
        #[arg(long, default_value_t = 60)]
        storm_seconds: u64,
        /// Rounds of the connection storm (each measures every tracer once).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Set up, build and run every test: unit tests and the real-sshd integration suite on this
    /// kernel, then the integration suite again on Debian 12's 6.1 kernel in a VM (the
    /// pre-6.10 tracepoint layout).
    Test {
        /// Skip the 6.1 VM run (for quick local iterations; CI never passes it).
        #[arg(long)]
        no_vm: bool,
        /// Arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the privileged integration suite on another kernel, booted with QEMU.
    VmTest {
        /// Debian kernel series: 5.10 (bullseye), 6.1 (bookworm), 6.12 (bookworm-backports).
        #[arg(long)]
        kernel: String,
        #[arg(long, value_enum, default_value_t = vm::Accel::Auto)]
        accel: vm::Accel,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = vm::DEFAULT_MEMORY_MIB)]
        memory: u32,
        /// Arguments passed to every test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The kernel `cargo xtask test` runs the suite on besides the host's: Debian 12's, before
/// `tcp:tcp_send_reset` changed shape in 6.10.
const CI_VM_KERNEL: &str = "6.1";

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::VmTest {
            kernel,
            accel,
            memory,
            args,
        } => {
            setup::run()?;
            let binary = build(false)?;
            vm_test(&binary, kernel, accel, memory, args)
        }
        Task::Setup => setup::run(),
        Task::Run { release, args } => {
            setup::run()?;
            let binary = build(release)?;
            cmd::exec(&binary, &args)
        }
        Task::Bench {
            seconds,
            storm_seconds,
            rounds,
        } => {
            setup::run()?;
            let binary = build(true)?;
            bench::run(
                &binary,
                &bench::Options {
                    seconds,
                    storm_seconds,
                    rounds: rounds.max(1),
                },
            )
        }
        Task::Test { no_vm, args } => {
            setup::run()?;
            let binary = build(false)?;
            let host = cmd::run(
                cmd::cargo()
                    // The eBPF crate builds for the BPF target only (through sshtrace's build.rs).
                    .args([
                        "test",
                        "--workspace",
                        "--exclude",
                        "sshtrace-ebpf",
                        "--no-fail-fast",
                        "--",
                    ])
                    .args(&args)
                    .env("SSHTRACE_BIN", &binary),
                "run the test suite",
            );
            if no_vm {
                eprintln!("xtask test: --no-vm: the 6.1 kernel run is skipped");
                return host;
            }
            // Run the VM suite even when the host's failed: both results matter.
            let vm = vm_test(
                &binary,
                CI_VM_KERNEL.into(),
                vm::Accel::Auto,
                vm::DEFAULT_MEMORY_MIB,
                args,
            );
            host.and(vm)
        }
    }
}

fn vm_test(
    binary: &Path,
    kernel: String,
    accel: vm::Accel,
    memory_mib: u32,
    test_args: Vec<String>,
) -> Result<()> {
    vm::run(
        binary,
        &workspace_root(),
        &vm::Options {
            kernel,
            accel,
            memory_mib,
            test_args,
        },
    )
}

/// Builds the sshtrace binary (its build script builds the eBPF object) and returns its path.
fn build(release: bool) -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    cargo.args(["build", "--package", "sshtrace"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo, "build sshtrace")?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("sshtrace"))
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
