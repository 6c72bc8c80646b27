//! Idempotent installation of everything the build and the tests need on a fresh machine:
//! the nightly's `rust-src`, a `bpf-linker` linked against the nightly's own libLLVM, and the
//! Debian packages the integration tests drive. Each step checks before it acts. The tests'
//! container images are built in the background (see [`test_images`]).

use std::{fs, os::unix::process::CommandExt, path::PathBuf, process::Command};

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
    // Socket activation the way systemd does it (tests/tests/no_blind_window.rs); a real
    // journald (journald.rs); `systemd-analyze verify` of the unit (package.rs), which runs
    // `man` for its Documentation=.
    ("systemd", "/usr/bin/systemd-socket-activate"),
    ("man-db", "/usr/bin/man"),
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
    // A real Prometheus scraping --metrics, and promtool for the alerting rules
    // (tests/tests/metrics.rs).
    ("prometheus", "/usr/bin/prometheus"),
    // The other runtimes the container tests drive, each on data of its own in a temporary
    // directory (tests/src/docker.rs, tests/src/containerd.rs); the manifest test's YAML parser.
    ("docker.io", "/usr/sbin/dockerd"),
    ("containerd", "/usr/bin/containerd"),
    (
        "python3-yaml",
        "/usr/lib/python3/dist-packages/yaml/__init__.py",
    ),
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
    test_images().context("setup step 'test images'")?;
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
        .filter_map(std::result::Result::ok)
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
    // Packages of daemons (docker.io, containerd, prometheus) start them where systemd runs
    // the machine: dockerd would set FORWARD to DROP and add its chains, Prometheus take
    // :9090. The tests run their own instances; Debian's policy-rc.d stops the packages'.
    let _no_daemons = NoDaemonStarts::install();
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// `/usr/sbin/policy-rc.d` answering 101 (action forbidden) while packages install, unless the
/// machine has one of its own; removed on drop.
struct NoDaemonStarts(Option<&'static str>);

impl NoDaemonStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn install() -> Self {
        use std::os::unix::fs::PermissionsExt;
        if std::path::Path::new(Self::PATH).exists() {
            return Self(None);
        }
        let written = fs::write(Self::PATH, "#!/bin/sh\nexit 101\n")
            .and_then(|()| fs::set_permissions(Self::PATH, fs::Permissions::from_mode(0o755)));
        Self(written.is_ok().then_some(Self::PATH))
    }
}

impl Drop for NoDaemonStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Debian suites of the tests' sshd images (tests/src/podman.rs): 13 for OpenSSH 10.0 first,
/// the slower build, then 12 for 9.2.
const IMAGE_SUITES: &[&str] = &["trixie", "bookworm"];

/// The root file system tarballs of the tests' sshd images, when missing, built with the tests'
/// own recipe (`tests/images/sshbox-rootfs.sh`, needing debootstrap from the step before) in
/// a background process: debootstrap takes 30 s to 3 min a suite, which a fresh machine then
/// spends beside the static checks and the build rather than inside a test. The recipe holds
/// a lock while it builds, so a test that needs an image meanwhile waits for that build
/// instead of starting its own. The build outlives `cargo xtask setup` (its own process
/// group, so an interrupted test run does not stop it either); a thread reports its failure
/// while xtask runs, and its output is in `sshbox-rootfs.log` beside the tarballs.
fn test_images() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // debootstrap needs root, and so do the tests that use the images.
        return Ok(());
    }
    let dir = tools_dir();
    let missing: Vec<&str> = IMAGE_SUITES
        .iter()
        .copied()
        .filter(|suite| !dir.join(format!("sshbox-{suite}.tar")).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("sshbox-rootfs.log");
    let log = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/sshbox-rootfs.sh");
    eprintln!(
        "xtask setup: building the test images' root file systems ({}) in the background (log: {})",
        missing.join(", "),
        log_path.display()
    );
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#"script=$1 dir=$2; shift 2; for suite; do sh "$script" "$suite" "$dir/sshbox-$suite.tar" || exit; done"#,
            "sh",
        ])
        .arg(&script)
        .arg(&dir)
        .args(&missing)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log's descriptor")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", script.display()))?;
    std::thread::spawn(move || {
        match child.wait() {
        Ok(status) if status.success() => {}
        result => eprintln!(
            "xtask setup: building the test images failed ({result:?}); the container tests will build them again (see {})",
            log_path.display()
        ),
    }
    });
    Ok(())
}
