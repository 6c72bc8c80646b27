//! `cargo xtask vm-test`: the privileged integration suite on another kernel. Debian's kernel
//! package is fetched through apt (with the project's own sources list, so the host's apt setup
//! is left alone), booted with QEMU over this machine's own root filesystem (shared read-only
//! through 9p, made writable in the guest by an overlay on tmpfs), and the test binaries built
//! here run inside against a real sshd. Nothing the guest writes reaches the host but the exit
//! status.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    cmd,
    selection::{self, Plan},
    setup::tools_dir,
    target_dir,
};

/// The kernels `vm-test` knows, with the Debian suites that ship each: only those suites'
/// package lists are fetched (no translations), a fraction of all five.
const KERNELS: &[(&str, &str)] = &[
    (
        "5.10",
        "deb http://deb.debian.org/debian bullseye main\n\
         deb http://deb.debian.org/debian-security bullseye-security main\n",
    ),
    (
        "6.1",
        "deb http://deb.debian.org/debian bookworm main\n\
         deb http://deb.debian.org/debian-security bookworm-security main\n",
    ),
    (
        "6.12",
        "deb http://deb.debian.org/debian bookworm-backports main\n",
    ),
];

/// Modules the initramfs loads to reach the host's filesystem, in dependency order once
/// resolved; names as in modules.dep.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

pub const DEFAULT_MEMORY_MIB: u32 = 6144;

/// How much longer the tests wait for things in a guest under TCG (SSHTRACE_TEST_PATIENCE).
const TCG_PATIENCE: u32 = 4;

/// How long the whole guest run may take before it is stopped: the whole suite takes 12–16
/// min under TCG here, and a CI machine once took 24 (CI allows 90 for everything).
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// The same for the kernel-dependent selection, about half of the suite's time.
const GUEST_TIMEOUT_KERNEL_DEPENDENT: Duration = Duration::from_secs(25 * 60);

pub struct Options {
    pub accel: Accel,
    pub memory_mib: u32,
    /// Only the kernel-dependent selection (xtask/src/selection.rs), not every test binary.
    pub kernel_dependent_only: bool,
    /// Passed to every test binary (e.g. a test name filter).
    pub test_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when this machine's /dev/kvm can run a stock kernel, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// The Debian package lines of a kernel series `vm-test` knows.
fn sources(series: &str) -> Result<&'static str> {
    match KERNELS.iter().find(|(k, _)| *k == series) {
        Some((_, sources)) => Ok(sources),
        None => {
            let known: Vec<&str> = KERNELS.iter().map(|(k, _)| *k).collect();
            bail!(
                "unknown kernel {series:?}: vm-test knows {}",
                known.join(", ")
            )
        }
    }
}

pub fn check_series(series: &str) -> Result<()> {
    sources(series).map(|_| ())
}

/// Boots `kernel` and runs the integration test binaries `tests` (all, or the kernel-dependent
/// selection) inside.
pub fn run(
    sshtrace: &Path,
    workspace: &Path,
    kernel: Kernel,
    tests: &[PathBuf],
    options: &Options,
) -> Result<()> {
    let started = Instant::now();
    let Plan { run, report } = selection::plan(tests, options.kernel_dependent_only);
    for line in &report {
        eprintln!("{line}");
    }
    let dir = target_dir()?.join("vm").join(&kernel.series);
    let share = dir.join("share");
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(&share).with_context(|| format!("cannot create {}", share.display()))?;
    let initrd = dir.join("initrd.gz");
    build_initramfs(&kernel, &dir.join("initramfs"), &initrd)?;
    let accel = match options.accel {
        Accel::Auto => detect_accel(),
        other => other,
    };
    // Emulation runs the guest several times slower: the tests' deadlines (never their
    // assertions) stretch to match.
    let patience = if accel == Accel::Kvm { 1 } else { TCG_PATIENCE };
    fs::write(
        share.join("guest.sh"),
        guest_script(
            sshtrace,
            workspace,
            &kernel,
            &run,
            &options.test_args,
            patience,
        ),
    )?;
    eprintln!(
        "xtask vm-test: booting Debian's {} ({}) with {} ({} of {} test binaries)",
        kernel.release,
        kernel.package,
        if accel == Accel::Kvm { "KVM" } else { "TCG" },
        run.len(),
        tests.len()
    );
    let timeout = if options.kernel_dependent_only {
        GUEST_TIMEOUT_KERNEL_DEPENDENT
    } else {
        GUEST_TIMEOUT
    };
    boot(&kernel, &initrd, &share, accel, options.memory_mib, timeout)?;
    let status = fs::read_to_string(share.join("status"))
        .context("the guest stopped before it reported a result (see its console above)")?;
    let elapsed = started.elapsed().as_secs();
    let failed: u32 = status.trim().parse().context("unreadable guest status")?;
    eprintln!(
        "xtask vm-test: kernel {}: {} in {elapsed} s",
        kernel.release,
        if failed == 0 {
            "every test binary passed".to_owned()
        } else {
            format!("{failed} test binaries failed")
        }
    );
    if failed != 0 {
        bail!("the suite failed on kernel {}", kernel.release);
    }
    Ok(())
}

/// An unpacked Debian kernel package.
pub struct Kernel {
    /// The series asked for: `6.1`.
    series: String,
    package: String,
    /// `uname -r` of the kernel, the directory name under lib/modules.
    release: String,
    root: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// apt with the project's own sources, lists and cache: the host's configuration is untouched.
fn apt(tool: &str, base: &Path) -> Command {
    let mut c = Command::new(tool);
    for (key, value) in [
        ("Dir::Etc::SourceList", base.join("sources.list")),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State::Lists", base.join("lists")),
        ("Dir::Cache", base.join("cache")),
        ("Dir::State::status", PathBuf::from("/dev/null")),
    ] {
        c.arg("-o").arg(format!("{key}={}", value.display()));
    }
    // The package lists only: no translated descriptions.
    c.args(["-o", "Acquire::Languages=none"]);
    c
}

/// Downloads and unpacks the newest Debian kernel of `series` (once; kept in the tools cache).
pub fn fetch_kernel(series: &str) -> Result<Kernel> {
    let sources = sources(series)?;
    let kernels = tools_dir().join("kernels");
    // Each series its own lists: a fresh machine fetches only the suites it needs.
    let base = kernels.join(format!("apt-{series}"));
    for dir in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(base.join(dir))?;
    }
    fs::write(base.join("sources.list"), sources)?;
    let fresh_lists = fs::metadata(base.join("lists"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(24 * 3600));
    let has_lists = fs::read_dir(base.join("lists"))?.count() > 2;
    if !(has_lists && fresh_lists) {
        eprintln!("xtask vm-test: updating the package lists for the {series} kernel");
        cmd::run(
            apt("apt-get", &base).args(["update", "-qq"]),
            "apt-get update (test kernels)",
        )?;
    }
    let show = cmd::output(apt("apt-cache", &base).args(["show", "linux-image-amd64"]))
        .context("apt-cache show linux-image-amd64 failed")?;
    let package = newest_image(&show, series)
        .with_context(|| format!("no Debian kernel package of the {series} series"))?;
    let root = kernels.join(&package);
    let unpacked = root.join(".unpacked");
    if !unpacked.exists() {
        eprintln!("xtask vm-test: downloading {package}");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        cmd::run(
            apt("apt-get", &base)
                .args(["download", &package])
                .current_dir(&kernels),
            "apt-get download (test kernel)",
        )?;
        let deb = fs::read_dir(&kernels)?
            .filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .context("apt-get download left no package")?;
        cmd::run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "unpack the kernel package",
        )?;
        let _ = fs::remove_file(&deb);
        let release = only_dir(&root.join("lib/modules"))?;
        // Debian generates modules.dep at install time; the guest's modprobe needs it.
        cmd::run(
            Command::new("depmod").arg("-b").arg(&root).arg(&release),
            "depmod for the test kernel",
        )?;
        fs::write(&unpacked, "")?;
    }
    let release = only_dir(&root.join("lib/modules"))?;
    Ok(Kernel {
        series: series.to_owned(),
        package,
        release,
        root,
    })
}

/// The versioned image package the newest `linux-image-amd64` of `series` depends on.
fn newest_image(apt_show: &str, series: &str) -> Option<String> {
    let prefix = format!("{series}.");
    apt_show
        .split("\n\n")
        .filter(|stanza| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix("Version: "))
                .is_some_and(|v| v.starts_with(&prefix))
        })
        // apt-cache lists versions newest first.
        .find_map(|stanza| {
            let depends = stanza.lines().find_map(|l| l.strip_prefix("Depends: "))?;
            let name = depends.split([' ', ',']).next()?;
            name.starts_with("linux-image-").then(|| name.to_owned())
        })
}

fn only_dir(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel release in {}, found {names:?}",
            dir.display()
        ),
    }
}

/// Modules in `modules.dep` order: each one's dependencies before it. Those built into the
/// kernel (`modules.builtin`; e.g. virtio_pci in 6.12) need no loading.
fn module_load_order(modules_dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let builtin: Vec<&str> = builtin.lines().map(module_name).collect();
    let deps: Vec<(String, Vec<String>)> = modules_dep
        .lines()
        .filter_map(|l| {
            let (module, rest) = l.split_once(':')?;
            Some((
                module.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let path_of = |name: &str| {
        deps.iter()
            .map(|(m, _)| m)
            .find(|m| module_name(m) == name)
            .cloned()
    };
    let mut order: Vec<String> = Vec::new();
    for name in wanted.iter().filter(|n| !builtin.contains(n)) {
        let module = path_of(name).with_context(|| format!("the kernel has no module {name}"))?;
        let (_, needs) = deps
            .iter()
            .find(|(m, _)| *m == module)
            .expect("found above");
        // modules.dep lists dependencies so that the last must be loaded first.
        for m in needs.iter().rev().chain([&module]) {
            if !order.contains(m) {
                order.push(m.clone());
            }
        }
    }
    Ok(order)
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

/// A busybox initramfs that loads the virtio/9p/overlay modules, mounts the host's root
/// read-only with a tmpfs overlay on top, and switches to the guest script there.
fn build_initramfs(kernel: &Kernel, staging: &Path, out: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(staging);
    for dir in ["bin", "mods", "lower", "upper", "newroot", "proc", "dev"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    fs::copy("/bin/busybox", staging.join("bin/busybox"))
        .context("busybox-static is needed for the test VM's initramfs")?;
    let modules_dep = fs::read_to_string(kernel.modules().join("modules.dep"))?;
    let builtin = fs::read_to_string(kernel.modules().join("modules.builtin")).unwrap_or_default();
    let mut init = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n",
    );
    for module in module_load_order(&modules_dep, &builtin, BOOT_MODULES)? {
        let name = module_name(&module).to_owned();
        let target = staging.join("mods").join(format!("{name}.ko"));
        decompress_module(&kernel.modules().join(&module), &target)?;
        writeln!(init, "/bin/busybox insmod /mods/{name}.ko")?;
    }
    init.push_str(
        "set -e\n\
         /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower\n\
         /bin/busybox mount -t tmpfs -o mode=0755 tmpfs /upper\n\
         /bin/busybox mkdir -p /upper/rw /upper/work\n\
         /bin/busybox mount -t overlay -o lowerdir=/lower,upperdir=/upper/rw,workdir=/upper/work overlay /newroot\n\
         /bin/busybox mkdir -p /newroot/run/vm-share\n\
         /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /newroot/run/vm-share\n\
         exec /bin/busybox switch_root /newroot /bin/bash /run/vm-share/guest.sh\n",
    );
    let init_path = staging.join("init");
    fs::write(&init_path, init)?;
    cmd::run(
        Command::new("chmod").arg("0755").arg(&init_path),
        "chmod init",
    )?;
    let archive = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        staging.display(),
        out.display()
    );
    cmd::run(
        Command::new("sh").args(["-c", &archive]),
        "pack the initramfs",
    )
}

fn decompress_module(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(from, to).with_context(|| format!("cannot copy {name}"))?;
        }
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(from)
                .output()
                .with_context(|| format!("cannot run {tool}"))?;
            if !out.status.success() {
                bail!("{tool} cannot decompress {name}");
            }
            fs::write(to, out.stdout)?;
        }
    }
    Ok(())
}

/// Of the directories the guest needs, those below /tmp, where the guest mounts a tmpfs: each
/// once (not those inside another).
fn below_tmp(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut under: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.to_path_buf())
        .filter(|d| d.starts_with("/tmp") && d.as_path() != Path::new("/tmp"))
        .collect();
    under.sort();
    under.dedup();
    let all = under.clone();
    under.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    under
}

/// What the guest runs as its init, after the switch to the host's (overlaid) root.
fn guest_script(
    sshtrace: &Path,
    workspace: &Path,
    kernel: &Kernel,
    tests: &[(&Path, Vec<String>)],
    test_args: &[String],
    patience: u32,
) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let args: Vec<String> = test_args.iter().map(|a| quote(a)).collect();
    // The workspace, the test binaries and sshtrace (wherever the target directory is), the
    // kernel's modules.
    let target = sshtrace.parent().and_then(Path::parent).unwrap_or(sshtrace);
    let carried: Vec<String> = below_tmp(&[workspace, target, &kernel.root])
        .iter()
        .map(|dir| dir.to_string_lossy().into_owned())
        .collect();
    let path = |p: &Path| quote(&p.to_string_lossy());
    let mut script = format!(
        "RELEASE={release}\nMODULES={modules}\nSSHTRACE={sshtrace}\nWORKSPACE={workspace}\n\
         PATIENCE={patience}\nCARRIED={carried}\n",
        release = quote(&kernel.release),
        modules = path(&kernel.modules()),
        sshtrace = path(sshtrace),
        workspace = path(workspace),
        carried = quote(&carried.join("\n")),
    );
    script.push_str(GUEST_SETUP);
    for (test, narrowed) in tests {
        let name = selection::binary_name(test);
        let narrowed: Vec<String> = narrowed.iter().map(|a| quote(a)).collect();
        let _ = writeln!(
            script,
            "echo \"vm-test: running {name}{how}\"\n\
             {bin} {narrowed} {args} || {{ failed=$((failed + 1)); echo \"vm-test: FAILED {name}\"; }}",
            how = if narrowed.is_empty() {
                String::new()
            } else {
                format!(" ({})", narrowed.join(" ").replace(['\'', '"'], ""))
            },
            bin = quote(&test.to_string_lossy()),
            narrowed = narrowed.join(" "),
            args = args.join(" "),
        );
    }
    script.push_str(GUEST_FINISH);
    script
}

/// The guest's fixed parts: shell scripts of their own, not strings in Rust.
const GUEST_SETUP: &str = include_str!("guest_setup.sh");
const GUEST_FINISH: &str = include_str!("guest_finish.sh");

/// KVM only where it can boot a stock kernel: under a PVM host (kvm_pvm), /dev/kvm runs only
/// PVM-enabled guests and a Debian kernel hangs after decompression.
fn detect_accel() -> Accel {
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm && !Path::new("/sys/module/kvm_pvm").exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

fn boot(
    kernel: &Kernel,
    initrd: &Path,
    share: &Path,
    accel: Accel,
    memory_mib: u32,
    timeout: Duration,
) -> Result<()> {
    // Under TCG one vCPU: with one vCPU thread per host core the host starves them in turn
    // (QEMU's own I/O threads need a core too), and a guest whose other vCPU is not running
    // stalls in cross-CPU work such as the code patching of a tracepoint being attached
    // (soft lockups in sshtrace's bpf() calls, RCU kthread starved, ~1 full run in 4).
    let cpus = match accel {
        Accel::Kvm => std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        _ => 1,
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        _ => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    qemu.args(["-m", &memory_mib.to_string(), "-smp", &cpus.to_string()])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
        ])
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none",
            share.display()
        ))
        .stdin(Stdio::null());
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64 (package qemu-system-x86)")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("qemu failed ({status})");
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest ran longer than {} min", timeout.as_secs() / 60);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_image_of_a_series() {
        let show = "Package: linux-image-amd64\nVersion: 6.12.95-1~bpo12+1\nDepends: linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)\n\n\
                    Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\n\
                    Package: linux-image-amd64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)\n";
        assert_eq!(
            newest_image(show, "6.1").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            newest_image(show, "6.12").as_deref(),
            Some("linux-image-6.12.95+deb12-amd64")
        );
        assert_eq!(newest_image(show, "5.10"), None);
    }

    #[test]
    fn guest_script_runs_the_plan() {
        let kernel = Kernel {
            series: "6.1".into(),
            package: "linux-image-6.1.0-1-amd64".into(),
            release: "6.1.0-1-amd64".into(),
            root: PathBuf::from("/root/.cache/sshtrace-tools/kernels/k"),
        };
        let skip = vec!["--skip".to_owned(), "two_instances".to_owned()];
        let script = guest_script(
            Path::new("/tmp/t/debug/sshtrace"),
            Path::new("/work/main"),
            &kernel,
            &[(Path::new("/tmp/t/debug/deps/reliability-0a1b"), skip)],
            &["storm".to_owned()],
            4,
        );
        assert!(script.contains("CARRIED='/tmp/t'\n"), "{script}");
        assert!(script.contains(GUEST_SETUP) && script.ends_with(GUEST_FINISH));
        assert!(script.contains("echo \"vm-test: running reliability (--skip two_instances)\"\n'/tmp/t/debug/deps/reliability-0a1b' '--skip' 'two_instances' 'storm' ||"), "{script}");
    }

    #[test]
    fn carries_over_only_what_is_below_tmp() {
        let carried = below_tmp(&[
            Path::new("/tmp/ws"),
            Path::new("/tmp/ws/target"),
            Path::new("/tmp/t"),
            Path::new("/root/.cache/k"),
            Path::new("/tmpfoo"),
        ]);
        assert_eq!(carried, [PathBuf::from("/tmp/t"), PathBuf::from("/tmp/ws")]);
    }

    #[test]
    fn dependencies_load_first() {
        let dep = "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz\n";
        let order = module_load_order(
            dep,
            "kernel/fs/overlayfs/overlay.ko\n",
            &["virtio_pci", "9p", "overlay"],
        )
        .unwrap();
        let names: Vec<&str> = order.iter().map(|m| module_name(m)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "9pnet",
                "9p"
            ]
        );
    }
}
