//! `cargo xtask`: the one entry point for setting up, building, running and testing sshtrace.

mod bench;
mod cmd;
mod dist;
mod selection;
mod setup;
mod vm;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::OnceLock,
};

use anyhow::{anyhow, bail, Context, Result};
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
    /// Build the static binary and the Debian package (with the systemd unit) in target/dist/.
    Dist,
    /// Measure sshtrace against no tracing, bpftrace and tcpdump (not part of the tests).
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Seconds of each of the four storms of the memory measurement.
        #[arg(long, default_value_t = 4)]
        storm_seconds: u64,
        /// Rounds of each side-by-side comparison (each measures every tracer once).
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Only the memory measurement (four storms back to back).
        #[arg(long)]
        memory_only: bool,
        /// Only the costs: the kernel's accounting of the tracked and untracked storms, and
        /// the rest of the host's slowdowns (for iterating on the programs; writes no file).
        #[arg(long, conflicts_with = "memory_only")]
        costs_only: bool,
    },
    /// Set up, check formatting and lints, build and run every test: unit tests and the
    /// real-sshd integration suite on this kernel, then the kernel-dependent integration tests
    /// again on Debian 12's 6.1 kernel in a VM (the pre-6.10 tracepoint layout; the selection
    /// is in xtask/src/selection.rs and printed before the VM boots).
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
        /// Run only the kernel-dependent tests, as `cargo xtask test` does (default: every
        /// integration test binary).
        #[arg(long)]
        kernel_dependent_only: bool,
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
            kernel_dependent_only,
            args,
        } => vm_test(&kernel, accel, memory, kernel_dependent_only, args),
        Task::Setup => setup::run(),
        Task::Dist => {
            setup::run()?;
            dist::run().map(drop)
        }
        Task::Run { release, args } => {
            setup::run()?;
            let binary = build(release)?;
            cmd::exec(&binary, &args)
        }
        Task::Bench {
            seconds,
            storm_seconds,
            rounds,
            memory_only,
            costs_only,
        } => {
            setup::run()?;
            let binary = build(true)?;
            let options = bench::Options {
                seconds,
                storm_seconds,
                rounds: rounds.max(1),
                memory_only,
                costs_only,
            };
            bench::run(&binary, &options)
        }
        Task::Test { no_vm, args } => test(no_vm, args),
    }
}

/// `cargo xtask vm-test`: the suite (or its kernel-dependent selection) on another kernel.
fn vm_test(
    kernel: &str,
    accel: vm::Accel,
    memory: u32,
    kernel_dependent_only: bool,
    args: Vec<String>,
) -> Result<()> {
    vm::check_series(kernel)?;
    setup::run()?;
    // The package test finds the package beside the binary (target/dist/).
    let binary = dist::run()?.binary;
    let tests = build_integration_tests()?;
    let fetched = vm::fetch_kernel(kernel)?;
    let options = vm::Options {
        accel,
        memory_mib: memory,
        kernel_dependent_only,
        test_args: args,
    };
    vm::run(&binary, &workspace_root(), fetched, &tests, &options)
}

/// `cargo xtask test` (what CI runs): static checks, the host's suite, then the
/// kernel-dependent selection on the CI's VM kernel.
fn test(no_vm: bool, args: Vec<String>) -> Result<()> {
    setup::run()?;
    static_checks()?;
    // The VM's kernel package downloads (network) while everything builds (CPU); it is
    // waited for before the host's tests start, so that they run undisturbed.
    let kernel = (!no_vm).then(|| std::thread::spawn(|| vm::fetch_kernel(CI_VM_KERNEL)));
    // One build serves both: the tests run the static binary the package ships, and the
    // package test (tests/tests/package.rs) installs the package.
    let built = dist::run().and_then(|dist| Ok((dist, build_integration_tests()?)));
    let kernel = kernel.map(|k| {
        k.join()
            .unwrap_or_else(|_| Err(anyhow!("fetching the VM's kernel panicked")))
    });
    let (dist::Dist { binary, deb }, tests) = built?;
    // The same selection as the build above: cargo finds everything up to date.
    let host = cmd::run(
        cmd::cargo()
            .args(host_test_selection())
            .args(["--no-fail-fast", "--"])
            .args(&args)
            .env("SSHTRACE_BIN", &binary)
            .env("SSHTRACE_DEB", &deb),
        "run the test suite",
    );
    let Some(kernel) = kernel else {
        eprintln!("xtask test: --no-vm: the 6.1 kernel run is skipped");
        return host;
    };
    // Run the VM suite even when the host's failed: both results matter.
    let options = vm::Options {
        accel: vm::Accel::Auto,
        memory_mib: vm::DEFAULT_MEMORY_MIB,
        kernel_dependent_only: true,
        test_args: args,
    };
    let vm =
        kernel.and_then(|kernel| vm::run(&binary, &workspace_root(), kernel, &tests, &options));
    if let (Err(_), Err(vm)) = (&host, &vm) {
        eprintln!("xtask test: the {CI_VM_KERNEL} kernel run failed too: {vm:#}");
    }
    host.and(vm)
}

/// `cargo test` over what the host runs. The integration test binaries for the VM are built
/// with the same package selection, so that features unify the same way and nothing is
/// compiled twice (`--package sshtrace-tests` alone would rebuild its dependencies and every
/// test binary with fewer features).
fn host_test_selection() -> [&'static str; 4] {
    // The eBPF crate builds for the BPF target only (through sshtrace's build.rs).
    ["test", "--workspace", "--exclude", "sshtrace-ebpf"]
}

/// `cargo fmt --check` and clippy with warnings denied, before anything is built for the tests.
fn static_checks() -> Result<()> {
    let fmt = cmd::cargo()
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo fmt (rustup component add rustfmt)")?;
    if !fmt.success() {
        bail!("formatting: `cargo fmt --all -- --check` found unformatted code (the diff is above; `cargo fmt --all` fixes it)");
    }
    let clippy = cmd::cargo()
        .args([
            // The eBPF crate too: its clippy check builds for the host (its panic handler is
            // BPF-only), where the tests cannot.
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo clippy (rustup component add clippy)")?;
    if !clippy.success() {
        bail!("lints: `cargo clippy --workspace --all-targets -- -D warnings` failed (see above)");
    }
    Ok(())
}

/// Builds the integration test binaries (tests/tests/*.rs) and returns their paths.
fn build_integration_tests() -> Result<Vec<PathBuf>> {
    let out = cmd::cargo()
        .args(host_test_selection())
        .args(["--test", "*", "--no-run", "--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    let mut binaries = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // The compiler's warnings and errors, which JSON output would otherwise swallow.
        if let Some(rendered) = message["message"]["rendered"].as_str() {
            eprint!("{rendered}");
        }
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        // The sshtrace-tests package's (tests/Cargo.toml), whatever the path's spelling.
        let ours = message["manifest_path"]
            .as_str()
            .is_some_and(|m| Path::new(m).ends_with("tests/Cargo.toml"));
        if let (true, true, Some(path)) = (is_test, ours, message["executable"].as_str()) {
            binaries.insert(PathBuf::from(path));
        }
    }
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    if binaries.is_empty() {
        bail!("cargo built no integration test binaries");
    }
    Ok(binaries.into_iter().collect())
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
    Ok(target_dir()?.join(profile).join("sshtrace"))
}

/// Cargo's target directory as `cargo metadata` reports it: `target/` below the workspace
/// unless CARGO_TARGET_DIR or a cargo config says otherwise.
fn target_dir() -> Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir.clone());
    }
    let out = cmd::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("unreadable cargo metadata")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata gives no target_directory")?;
    Ok(DIR.get_or_init(|| PathBuf::from(dir)).clone())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
