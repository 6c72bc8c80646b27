//! A real systemd-journald without systemd as PID 1 (shared/CONTAINERS.md): started in a mount
//! namespace of its own with tmpfs on `/run/systemd` and `/run/log` and volatile storage, so
//! its socket, its configuration and its journal live there alone. Nothing reaches the host's
//! journal, its disk or its kernel log, and everything goes with the namespace when journald
//! stops. Processes join it through `/proc/PID/ns/mnt` (see
//! [`crate::Tracer::start_in_mount_namespace`]).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{kill, run, wait_for};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Volatile storage (the host's /var/log/journal exists and must stay untouched), no kernel
/// log read or written, nothing forwarded, no rate limit on the test's records. The shell
/// then stays as the namespace's holder, so that journald can stop and start again in it.
const SETUP: &str = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
printf '%s\n' '[Journal]' Storage=volatile ReadKMsg=no ForwardToSyslog=no ForwardToKMsg=no \
    ForwardToConsole=no ForwardToWall=no RateLimitIntervalSec=0 \
    > /run/systemd/journald.conf.d/99-sshtrace-test.conf
touch /run/systemd/journal/.ready
exec sleep infinity"#;

pub struct Journald {
    /// The process that holds the namespace.
    holder: Child,
    journald: Option<Child>,
}

impl Journald {
    /// Makes the namespace, starts journald in it and waits until its socket exists.
    pub fn start() -> Self {
        assert!(
            Path::new(JOURNALD).exists(),
            "{JOURNALD} is missing: install the systemd package (cargo xtask setup does)"
        );
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", SETUP])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare");
        let mut journald = Self {
            holder,
            journald: None,
        };
        let ready = journald.path("/run/systemd/journal/.ready");
        wait_for("the namespace", Duration::from_secs(10), || {
            if let Ok(Some(status)) = journald.holder.try_wait() {
                panic!("the namespace's set-up failed: {status}");
            }
            ready.exists().then_some(())
        });
        journald.start_journald();
        journald
    }

    /// A path inside the namespace, as the host reaches it.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }

    fn start_journald(&mut self) {
        // A stopped journald leaves its socket behind: wait for the new one.
        let socket = self.path("/run/systemd/journal/socket");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("nsenter")
            .arg(format!("--mount={}", self.mount_namespace().display()))
            .args(["--", JOURNALD])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("nsenter journald");
        // Held before waiting: a journald that never gets ready is still stopped on drop.
        let child = self.journald.insert(child);
        wait_for("journald's socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("journald exited: {status}");
            }
            socket.exists().then_some(())
        });
    }

    /// Stops journald (SIGTERM, as systemd does) and waits for it to exit; killed if it has
    /// not within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.journald.take() {
            kill(child.id(), libc::SIGTERM);
            if !wait_for_exit(&mut child, Duration::from_secs(10)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts journald again in the same namespace after [`Self::stop`], as an upgrade does.
    pub fn start_again(&mut self) {
        assert!(self.journald.is_none(), "journald is running");
        self.start_journald();
    }

    /// Its mount namespace, for `nsenter --mount=`.
    pub fn mount_namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.id()))
    }

    /// Every entry `SYSLOG_IDENTIFIER=identifier` sent, as `journalctl -o json` gives them
    /// (a field that is not valid UTF-8 comes as an array of bytes).
    pub fn entries(&self, identifier: &str) -> Vec<Value> {
        let out = run(Command::new("nsenter")
            .arg(format!("--mount={}", self.mount_namespace().display()))
            .args(["--", "journalctl", "--directory=/run/log/journal"])
            .args(["--output=json", "--no-pager", "--quiet"])
            .arg(format!("SYSLOG_IDENTIFIER={identifier}")));
        assert!(
            out.status.success(),
            "journalctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl ({e}): {l}")))
            .collect()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        self.stop();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Whether `child` exited within `timeout`.
fn wait_for_exit(child: &mut std::process::Child, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
