//! Idempotent installation of everything the build and the tests need on a fresh machine:
//! the nightly's `rust-src`, a `bpf-linker` linked against the nightly's own libLLVM, and the
//! Debian packages the integration tests drive. Each step checks before it acts.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::cmd;

const EBPF_TOOLCHAIN: &str = "nightly";
/// Pinned so that a fresh machine builds the same linker every time.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the integration tests use, by the command each provides.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("openssh-server", "/usr/sbin/sshd"),
    ("openssh-client", "/usr/bin/ssh"),
    ("iproute2", "/usr/sbin/ip"),
    ("iptables", "/usr/sbin/iptables"),
    ("procps", "/usr/bin/pkill"),
    ("util-linux", "/usr/bin/prlimit"),
    ("gcc", "/usr/bin/gcc"),
    ("rsyslog", "/usr/sbin/rsyslogd"),
    // Socket activation the way systemd does it (tests/tests/no_blind_window.rs).
    ("systemd", "/usr/bin/systemd-socket-activate"),
    // A real container runtime for the container tests (shared/CONTAINERS.md).
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("slirp4netns", "/usr/bin/slirp4netns"),
    ("uidmap", "/usr/bin/newuidmap"),
    ("fuse-overlayfs", "/usr/bin/fuse-overlayfs"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("netavark", "/usr/lib/podman/netavark"),
    ("aardvark-dns", "/usr/lib/podman/aardvark-dns"),
    // Other kernels for `vm-test`: QEMU, a static busybox for the initramfs, depmod.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    ("kmod", "/usr/sbin/depmod"),
    ("xz-utils", "/usr/bin/xz"),
    ("zstd", "/usr/bin/zstd"),
];

pub fn run() -> Result<()> {
    lint_tools().context("setup step 'rustfmt and clippy'")?;
    nightly_rust_src().context("setup step 'rust-src for the nightly toolchain'")?;
    bpf_linker().context("setup step 'bpf-linker'")?;
    debian_packages().context("setup step 'Debian packages'")?;
    Ok(())
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// rustfmt and clippy for the workspace's toolchain: `cargo xtask test` checks with both.
fn lint_tools() -> Result<()> {
    let present = |tool: &str| cmd::output(cmd::cargo().args([tool, "--version"])).is_some();
    if present("fmt") && present("clippy") {
        return Ok(());
    }
    eprintln!("xtask setup: installing rustfmt and clippy");
    cmd::run(
        rustup().args(["component", "add", "rustfmt", "clippy"]),
        "rustup component add rustfmt clippy",
    )
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = cmd::output(rustup().args(["toolchain", "list"]))
        .context("rustup is required: see shared/TOOLCHAIN.md")?;
    if !toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        bail!("no '{EBPF_TOOLCHAIN}' toolchain is installed; the eBPF crate needs it");
    }
    let installed = cmd::output(rustup().args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask setup: installing rust-src for {EBPF_TOOLCHAIN}");
    cmd::run(
        rustup().args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]),
        "rustup component add rust-src",
    )
}

/// Where the project keeps tools it fetches: bpf-linker's libLLVM links, test kernels, images.
pub fn tools_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("sshtrace-tools")
}

/// bpf-linker must use an LLVM of the same major version as the nightly's rustc. It is linked
/// against the nightly's own libLLVM, so no system LLVM is needed.
fn bpf_linker() -> Result<()> {
    let verbose = cmd::output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "-vV"]))
        .context("cannot run the nightly rustc")?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("the nightly rustc does not report its LLVM version")?
        .to_owned();
    let sysroot = cmd::output(Command::new("rustc").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "--print",
        "sysroot",
    ]))
    .context("cannot find the nightly's sysroot")?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so") || n.starts_with("libLLVM-"))
        .with_context(|| format!("no libLLVM in {}", sysroot_lib.display()))?;

    let prefix = tools_dir().join("llvm");
    let stamp = tools_dir().join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major} {libllvm}\n");
    let linker_runs = cmd::output(Command::new("bpf-linker").arg("--version")).is_some();
    if linker_runs && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }

    eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major}");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&libllvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
        "cargo install bpf-linker",
    )?;
    fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, path)| !std::path::Path::new(path).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    cmd::run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}
