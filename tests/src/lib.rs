//! The integration-test harness: a real OpenSSH sshd started directly or by socket activation
//! — the host's 9.2, or 10.0 in a container for the scenarios run on both ([`openssh`]) —
//! (own keys and config in a temporary directory, on a 127.0.0.0/8 address unique per test), a
//! real `ssh` client, and the real sshtrace binary with its eBPF programs. Everything a test starts is stopped and
//! removed when its guard drops, also when the test fails.

pub mod booted;
pub mod collectors;
pub mod containerd;
pub mod docker;
pub mod host_dirs;
pub mod hostile;
pub mod journald;
pub mod kernel;
pub mod openssh;
pub mod path;
pub mod podman;
pub mod prometheus;
pub mod sandbox;
pub mod segment;
pub mod socket_activation;
pub mod sshd;
pub mod tracer;

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

pub use openssh::OpenSsh;
pub use path::{RoutedPath, Toward};
pub use sandbox::{AuditOn, Cgroup, Link, NetNs, User};
pub use socket_activation::{Activation, SocketActivated};
pub use sshd::{Sshd, SshdFiles, SshdOptions};
pub use tracer::Tracer;

/// The address and port a test uses: 127.0.N.1 (or an address of a namespace the test made)
/// and 22000+N, so tests never share either.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub n: u8,
    addr: Option<&'static str>,
}

impl Endpoint {
    pub const fn new(n: u8) -> Self {
        Self { n, addr: None }
    }

    /// Port 22000+N on an address of a network namespace the test made.
    pub const fn at(n: u8, addr: &'static str) -> Self {
        Self {
            n,
            addr: Some(addr),
        }
    }

    pub fn addr(&self) -> String {
        match self.addr {
            Some(addr) => addr.to_owned(),
            None => format!("127.0.{}.1", self.n),
        }
    }

    pub fn port(&self) -> u16 {
        22000 + self.n as u16
    }
}

/// Directories a per-connection sshd reads from, all but /tmp where tests keep their files:
/// a Landlock ruleset allowing reads beneath these refuses the tests' own key files.
pub const SYSTEM_DIRS: &str = "/etc:/usr:/lib:/lib64:/proc:/dev:/run:/var:/sys:/bin:/sbin:/root";

/// True when the test may run. Privileged tests need root; outside CI a non-root run skips
/// them loudly, in CI a missing privilege is a failure (nothing may be skipped there).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI must run every privileged test");
    }
    loud(&format!(
        "SKIPPED {test}: needs root to load eBPF programs and start sshd (run `sudo cargo xtask test`)"
    ));
    false
}

/// Holds the other tests of this test binary that take it too. For tests that count every
/// verdict or summary line: sshtrace follows every sshd on the host, so a test running beside
/// them with an sshd of its own adds verdicts to their counts.
pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes a line to the real standard error: the test harness captures `eprintln!`, and a
/// skipped or degraded test must be seen even when it passes.
pub fn loud(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The sshtrace binary: `SSHTRACE_BIN` (set by `cargo xtask test`), else the one built next to
/// this test binary.
pub fn sshtrace_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SSHTRACE_BIN") {
        // Tests run in their package directory: resolve a relative path from the workspace.
        return Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(bin);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("sshtrace");
    assert!(
        bin.exists(),
        "{} not built: run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// `timeout` stretched by `SSHTRACE_TEST_PATIENCE` (a whole factor, 1 when unset): vm-test sets
/// it for guests under emulation, where everything runs several times slower. Deadlines only:
/// no test asserts how fast anything is.
pub fn patient(timeout: Duration) -> Duration {
    let factor = std::env::var("SSHTRACE_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    timeout * factor
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`
/// (made [`patient`]).
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let timeout = patient(timeout);
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion, panicking with its output when it cannot start.
pub fn run(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Child processes of `pid`, from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether a TCP socket listens on `port` in the network namespace of `pid` (its /proc/PID/net):
/// a listening socket seen without connecting to it.
pub fn listens(pid: u32, port: u16) -> bool {
    const TCP_LISTEN: &str = "0A";
    let local_port = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(&local_port) && fields[3] == TCP_LISTEN
            })
    })
}

/// Waits until a process in `pid`'s network namespace listens on `port` (an sshd just started
/// in a container), for at most 30 s.
pub fn wait_until_listening(pid: u32, port: u16) {
    wait_for(
        "sshd in the container to listen",
        Duration::from_secs(30),
        || listens(pid, port).then_some(()),
    );
}

/// The inode of `pid`'s network namespace, as verdicts give it (`conn.netns`).
pub fn netns_of(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    link.to_str()
        .unwrap()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

/// Waits until a login running `sleep` has its session under the sshd `listener`: returns the
/// per-connection sshd (the listener's child).
pub fn wait_for_session(listener: u32) -> u32 {
    // Generous: a session under emulation (cargo xtask vm-test) takes seconds to start.
    wait_for("the session's shell", Duration::from_secs(30), || {
        let session = *children(listener).first()?;
        process_tree(session)
            .iter()
            .any(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .then_some(session)
    })
}

/// `pid` and all its descendants, deepest first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for child in children(pid) {
        out.extend(process_tree(child));
    }
    out.push(pid);
    out
}

/// The first piece of evidence of kind `event` in a verdict; panics with the verdict when
/// there is none.
pub fn evidence<'a>(verdict: &'a serde_json::Value, event: &str) -> &'a serde_json::Value {
    verdict["evidence"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["event"] == event))
        .unwrap_or_else(|| panic!("no {event} evidence in {verdict:#}"))
}

/// A child process (an `ssh` client) killed and reaped when the test ends, also on failure.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A login's session processes (the per-connection sshd and the command it runs), killed when
/// the test ends: a reset ends the sshd, and leaves its command running, orphaned.
pub struct SessionOnDrop(Vec<u32>);

impl SessionOnDrop {
    /// Waits until the login running `sleep` under the sshd `listener` has its session.
    pub fn wait(listener: u32) -> Self {
        Self(process_tree(wait_for_session(listener)))
    }
}

impl Drop for SessionOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            kill(pid, libc::SIGKILL);
        }
    }
}

pub fn kill(pid: u32, signal: i32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}
