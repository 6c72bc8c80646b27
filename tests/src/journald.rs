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
/// log read or written, nothing forwarded, no rate limit on the test's records.
const SETUP: &str = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
cat > /run/systemd/journald.conf.d/99-sshtrace-test.conf <<EOF
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
EOF
exec "$0""#;

pub struct Journald {
    child: Child,
}

impl Journald {
    /// Starts journald and waits until its native socket exists.
    pub fn start() -> Self {
        assert!(
            Path::new(JOURNALD).exists(),
            "{JOURNALD} is missing: install the systemd package (cargo xtask setup does)"
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", SETUP])
            .arg(JOURNALD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare");
        let socket = PathBuf::from(format!(
            "/proc/{}/root/run/systemd/journal/socket",
            child.id()
        ));
        wait_for("journald's socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("journald (or its namespace's set-up) exited: {status}");
            }
            socket.exists().then_some(())
        });
        Self { child }
    }

    /// Its mount namespace, for `nsenter --mount=`.
    pub fn mount_namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.child.id()))
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
        kill(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}
