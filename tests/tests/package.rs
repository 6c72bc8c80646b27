//! The Debian package `cargo xtask dist` makes (`SSHTRACE_DEB`, which `cargo xtask test` sets
//! after running dist; else the newest in target/dist/): its binary is static (it runs in a
//! root file system that holds nothing else), its unit passes `systemd-analyze verify` (the
//! man page it names included) and keeps its exposure low, and on Debian 12 and 13, booted
//! with systemd in Podman, it installs, their systemd reads its unit without a warning, it
//! runs (`--version`, `--probe-report`), and its service starts inside the unit's sandbox,
//! sends a real verdict to the journal, stops cleanly, and is purged.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sshtrace_tests::{
    booted::{BootableImage, Booted, BOOKWORM_SYSTEMD, TRIXIE_SYSTEMD},
    loud, privileged, run, sshtrace_bin, wait_for,
};

/// What the package installs, besides its maintainer scripts.
const FILES: &[&str] = &[
    "/usr/sbin/sshtrace",
    "/usr/share/man/man8/sshtrace.8.gz",
    "/usr/share/bash-completion/completions/sshtrace",
    "/usr/share/zsh/vendor-completions/_sshtrace",
    "/usr/share/fish/vendor_completions.d/sshtrace.fish",
    "/usr/lib/systemd/system/sshtrace.service",
];

/// The package under test.
fn deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("SSHTRACE_DEB") {
        return PathBuf::from(deb);
    }
    // target/release/sshtrace → target/dist/
    let dist = sshtrace_bin()
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/")
        .join("dist");
    let newest = fs::read_dir(&dist).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    });
    let deb = newest.unwrap_or_else(|| {
        panic!(
            "no .deb in {}: run `cargo xtask dist` first (`cargo xtask test` does)",
            dist.display()
        )
    });
    loud(&format!(
        "package test: {} (SSHTRACE_DEB unset)",
        deb.display()
    ));
    deb
}

/// A temporary directory holding the package's files (`dpkg-deb -x`), removed on drop.
struct Unpacked(PathBuf);

impl Unpacked {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sshtrace-package-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let out = run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&dir));
        assert!(
            out.status.success(),
            "dpkg-deb -x: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }
}

impl Unpacked {
    /// Every file, as an absolute path once installed.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut dirs = vec![self.0.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(dir).unwrap().map(Result::unwrap) {
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(entry.path());
                } else {
                    files.push(Path::new("/").join(entry.path().strip_prefix(&self.0).unwrap()));
                }
            }
        }
        files
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn binary_runs_in_a_root_with_no_library_at_all() {
    if !privileged("binary_runs_in_a_root_with_no_library_at_all") {
        return;
    }
    let root = Unpacked::new("static");
    let mut files = root.files();
    files.sort();
    let mut expected: Vec<PathBuf> = FILES.iter().map(PathBuf::from).collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "the package holds these files and no other"
    );
    // No loader, no libc: only the kernel starts it.
    let out = run(Command::new("chroot")
        .arg(&root.0)
        .args(["/usr/sbin/sshtrace", "--version"]));
    assert!(
        out.status.success(),
        "chroot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sshtrace "));
}

#[test]
fn unit_passes_systemd_analyze_verify_and_security() {
    if !privileged("unit_passes_systemd_analyze_verify_and_security") {
        return;
    }
    let root = Unpacked::new("unit");
    // The units it depends on (sysinit.target, …) from the host's systemd, under the same root.
    let units = root.0.join("usr/lib/systemd/system");
    let out = run(Command::new("cp")
        .args(["-a", "-n", "/lib/systemd/system/."])
        .arg(&units));
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // verify runs `man` for Documentation=, on the host: MANPATH points it at the package's.
    let out = run(systemd_analyze()
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .arg("sshtrace.service")
        .env("MANPATH", root.0.join("usr/share/man")));
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The unit's sandbox, scored offline: a regression above 4.0 (of 10) fails.
    let out = run(systemd_analyze()
        .args(["security", "--offline=yes", "--threshold=40", "--no-pager"])
        .arg(format!("--root={}", root.0.display()))
        .arg("sshtrace.service"));
    let report = String::from_utf8_lossy(&out.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "systemd-analyze security: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    loud(&format!("sshtrace.service: {}", overall.trim()));
}

/// `systemd-analyze`, in a mount namespace with a tmpfs on /run/systemd: it marks there that
/// units were loaded (`systemd-units-load`), --root or not, and the host's must stay as it is.
fn systemd_analyze() -> Command {
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /run/systemd && exec systemd-analyze \"$@\"",
        "sh",
    ]);
    command
}

#[test]
fn installs_and_runs_as_a_service_on_debian_12() {
    if privileged("installs_and_runs_as_a_service_on_debian_12") {
        installs_and_runs_as_a_service(&BOOKWORM_SYSTEMD, "package-12");
    }
}

#[test]
fn installs_and_runs_as_a_service_on_debian_13() {
    if privileged("installs_and_runs_as_a_service_on_debian_13") {
        installs_and_runs_as_a_service(&TRIXIE_SYSTEMD, "package-13");
    }
}

fn installs_and_runs_as_a_service(image: &BootableImage, name: &str) {
    let host = Booted::start(image, name, &[(&deb(), "/mnt/sshtrace.deb")]);
    installs(&host);
    assert!(host
        .exec_ok(&["sshtrace", "--version"])
        .starts_with("sshtrace "));
    let report = host.exec_ok(&["sshtrace", "--probe-report"]);
    assert!(report.contains("hooks attached ("), "{report}");
    service_judges_a_refusal(&host);
    // Purged: its files gone, and the enablement upgrade_restarts_it made forgotten.
    host.exec_ok(&["dpkg", "--purge", "sshtrace"]);
    for gone in [
        "/usr/sbin/sshtrace",
        "/etc/systemd/system/multi-user.target.wants/sshtrace.service",
    ] {
        let test = format!("test -e {gone} || test -L {gone}");
        assert!(!host.exec(&["sh", "-c", &test]).status.success(), "{gone}");
    }
}

/// `dpkg --install`: every file in place, the man page and the bash completion readable, the
/// unit read by this Debian's systemd as by the host's (which checks the man page), and the
/// service installed but not started: the administrator enables it.
fn installs(host: &Booted) {
    host.exec_ok(&["dpkg", "--install", "/mnt/sshtrace.deb"]);
    let listed = host.exec_ok(&["dpkg", "--listfiles", "sshtrace"]);
    for file in FILES {
        assert!(
            listed.lines().any(|l| l == *file),
            "{file} not installed: {listed}"
        );
    }
    let page = host.exec_ok(&["sh", "-c", "zcat /usr/share/man/man8/sshtrace.8.gz"]);
    assert!(page.contains(".TH sshtrace 8"), "{page}");
    let completion = host.exec_ok(&[
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/sshtrace && complete -p sshtrace",
    ]);
    assert!(completion.contains("sshtrace"), "{completion}");
    let verify = host.exec(&["systemd-analyze", "verify", "--man=no", "sshtrace.service"]);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let state = |what: &str| {
        String::from_utf8_lossy(&host.exec(&["systemctl", what, "sshtrace.service"]).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(
        (state("is-enabled"), state("is-active")),
        ("disabled".into(), "inactive".into())
    );
}

/// The service as the unit runs it: sshd listens, sshtrace starts (sandboxed) and finds it;
/// sshd stops and a client is refused; the verdict is in the journal; sshtrace stops cleanly
/// with everything delivered.
fn service_judges_a_refusal(host: &Booted) {
    host.exec_ok(&["systemctl", "start", "ssh.service"]);
    // A second sshd in a network namespace of its own, which the sandbox must not hide:
    // sshtrace lists its listener from inside that namespace (setns, which the unit's
    // RestrictNamespaces= allows), or else from its /proc/PID/net/tcp.
    host.exec_ok(&[
        "systemd-run",
        "--unit=sshd-netns",
        "--property=PrivateNetwork=yes",
        "--property=Type=notify",
        "/usr/sbin/sshd",
        "-D",
        "-p",
        "2222",
    ]);
    host.exec_ok(&["systemctl", "start", "sshtrace.service"]);
    wait_for(
        "sshtrace.service to attach",
        Duration::from_secs(30),
        || unit_log(host).contains("sshtrace: attached").then_some(()),
    );
    let log = unit_log(host);
    assert!(
        log.lines()
            .any(|l| l.starts_with("sshtrace: tracking ports [22, 2222]")),
        "{log}"
    );
    assert_sandboxed(host);
    host.exec_ok(&["systemctl", "stop", "ssh.service"]);
    let netns = netns_of(host);
    let refused = host.exec(&["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22"]);
    assert!(!refused.status.success(), "port 22 still accepts");
    // The kernel follows port 22 in every network namespace, the other Debian's container's
    // too: this container's refusal is the one in its own.
    let entry = wait_for(
        "the verdict in the journal",
        Duration::from_secs(15),
        || {
            let out = host.exec_ok(&[
                "journalctl",
                "--output=json",
                "--no-pager",
                "SSHTRACE_CAUSE=not_listening",
            ]);
            out.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| {
                    let verdict = e["SSHTRACE_JSON"]
                        .as_str()
                        .and_then(|j| serde_json::from_str::<Value>(j).ok());
                    e["SSHTRACE_LOCAL"] == "127.0.0.1:22"
                        && verdict.is_some_and(|v| v["conn"]["netns"] == netns)
                })
        },
    );
    assert_eq!(entry["_SYSTEMD_UNIT"], "sshtrace.service", "{entry:#}");
    assert_eq!(entry["PRIORITY"], "4");

    upgrade_restarts_it(host);
    host.exec_ok(&["systemctl", "stop", "sshtrace.service"]);
    assert_eq!(show(host, "Result"), "success");
    // Each run's exit line: everything it produced reached the journal.
    let log = unit_log(host);
    let runs: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("sshtrace: output journald: "))
        .collect();
    assert_eq!(runs.len(), 2, "{log}");
    for delivery in runs {
        let counts: Vec<u64> = delivery
            .split(", ")
            .map(|part| part.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts[0], counts[1], "not all delivered: {delivery}");
    }
}

/// The package installed again over a running, enabled sshtrace (an upgrade): the service
/// runs on the new binary.
fn upgrade_restarts_it(host: &Booted) {
    host.exec_ok(&["systemctl", "enable", "sshtrace.service"]);
    let before = show(host, "MainPID");
    host.exec_ok(&["dpkg", "--install", "/mnt/sshtrace.deb"]);
    let after = show(host, "MainPID");
    assert!(
        after != before && after != "0",
        "MainPID {before} → {after}"
    );
    assert_eq!(show(host, "ActiveState"), "active");
    // Type=exec: active once started, not once attached. A stop before the programs are
    // attached ends it before it has anything to say; this test wants each run's exit line.
    wait_for(
        "the upgraded sshtrace.service to attach",
        Duration::from_secs(30),
        || {
            let attached = unit_log(host).matches("sshtrace: attached").count();
            (attached >= 2).then_some(())
        },
    );
}

/// A property of sshtrace.service.
fn show(host: &Booted, property: &str) -> String {
    host.exec_ok(&[
        "systemctl",
        "show",
        &format!("--property={property}"),
        "--value",
        "sshtrace.service",
    ])
    .trim()
    .to_owned()
}

/// The running service has no new privileges, a system call filter, and once attached keeps
/// CAP_BPF, CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH alone (which it can only
/// do with the unit's CAP_SETPCAP).
fn assert_sandboxed(host: &Booted) {
    let pid = show(host, "MainPID");
    let status = host.exec_ok(&["cat", &format!("/proc/{pid}/status")]);
    let kept = [39, 21, 19, 2]
        .iter()
        .fold(0u64, |mask, cap| mask | 1 << cap);
    let effective = format!("CapEff:\t{kept:016x}");
    for sandboxed in ["NoNewPrivs:\t1", "Seccomp:\t2", &effective] {
        assert!(status.contains(sandboxed), "{sandboxed}: {status}");
    }
}

/// What the unit logged: systemd's lines and sshtrace's standard output and error.
fn unit_log(host: &Booted) -> String {
    host.exec_ok(&[
        "journalctl",
        "--unit=sshtrace",
        "--output=cat",
        "--no-pager",
    ])
}

/// The inode of the container's network namespace, as verdicts give it (`conn.netns`).
fn netns_of(host: &Booted) -> u64 {
    let link = host.exec_ok(&["readlink", "/proc/self/ns/net"]);
    link.trim()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|_| panic!("network namespace: {link}"))
}
