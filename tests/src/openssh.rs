//! The OpenSSH versions the per-cause scenarios run against, one scenario asserting the same
//! verdict on each: Debian 12's 9.2 (the host's own `/usr/sbin/sshd`) and Debian 13's 10.0 (in
//! a Podman container of [`crate::podman::TRIXIE`]). 10.0 splits what 9.2's re-executed `sshd`
//! did: the listener forks and executes `sshd-session` for every connection, which executes
//! `sshd-auth` for pre-authentication; and it penalises sources (PerSourcePenalties, on by
//! default).
//!
//! The container shares the host's network (`--network host`: the same 127.0.N.1 endpoint and
//! the host's ssh client) and the test's files at the same path (`-v DIR:DIR`: the same
//! `sshd_config`, keys and preloaded fixtures, so paths in verdicts are the same). sshd runs as
//! the container's process 1 with `-D -e`; its standard error reaches `sshd.log` through the
//! attached `podman run`, so the log, "Server listening on" included, reads the same. The
//! host's `/etc/passwd`, `group` and `shadow` are mounted read-only: a test's own user logs in
//! as on the host.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use crate::{
    podman::{podman, TRIXIE},
    run,
    sshd::{keys_dir_of, SshdFiles},
    wait_for,
};

/// Debian 13's per-connection program, which the listener executes per connection.
pub const SSHD_SESSION: &str = "/usr/lib/openssh/sshd-session";
/// Debian 13's pre-authentication program, which `sshd-session` executes per connection.
pub const SSHD_AUTH: &str = "/usr/lib/openssh/sshd-auth";

/// The sshd under test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpenSsh {
    /// OpenSSH 9.2 (Debian 12), the host's `/usr/sbin/sshd`.
    #[default]
    V9_2Host,
    /// OpenSSH 10.0 (Debian 13) in a Podman container on the host's network.
    V10Container,
}

impl OpenSsh {
    pub fn version(self) -> &'static str {
        match self {
            Self::V9_2Host => "9.2",
            Self::V10Container => "10.0",
        }
    }

    /// A name for a scenario's files, cgroups and container on this version: the two run side
    /// by side in one test process.
    pub fn name(self, scenario: &str) -> String {
        format!("{scenario}-{}", self.version())
    }

    /// The `comm` of the per-connection process the listener starts.
    pub fn session_comm(self) -> &'static str {
        match self {
            Self::V9_2Host => "sshd",
            Self::V10Container => "sshd-session",
        }
    }

    /// The `comm` of the unprivileged pre-authentication process.
    pub fn preauth_comm(self) -> &'static str {
        match self {
            Self::V9_2Host => "sshd",
            Self::V10Container => "sshd-auth",
        }
    }
}

/// sshd in a container of the Debian 13 image: the attached `podman run` (its standard error
/// is sshd's) and the container's name, unique per test process (the files' directory name).
pub(crate) struct SshdContainer {
    pub name: String,
    pidfile: PathBuf,
}

impl SshdContainer {
    /// `podman run … /usr/sbin/sshd -D -e -f CONFIG` with the files' directories mounted at
    /// their own paths and the files' environment, logging to a fresh `sshd.log`.
    pub fn spawn(files: &SshdFiles) -> (Child, Self) {
        TRIXIE.ensure();
        let name = files
            .dir
            .file_name()
            .expect("a test directory")
            .to_string_lossy()
            .into_owned();
        let pidfile = files.path("container.pid");
        let _ = fs::remove_file(&pidfile);
        let _ = run(podman().args(["rm", "-f", "-t", "0", &name]));
        let mut command = podman();
        // conmon, which podman starts, inherits the directory: it writes a file `oom` there
        // when the container's memory cgroup kills, which the test directory takes away.
        command
            .current_dir(&files.dir)
            .args(["run", "--name", &name, "--network", "host", "--pidfile"])
            .arg(&pidfile);
        for dir in [files.dir.clone(), keys_dir_of(&files.dir)] {
            if dir.exists() {
                command.arg("-v").arg(format!("{0}:{0}", dir.display()));
            }
        }
        // The host's users, so that a test's own user can log in as on the host.
        for file in ["/etc/passwd", "/etc/group", "/etc/shadow"] {
            command.arg("-v").arg(format!("{file}:{file}:ro"));
        }
        for (key, value) in &files.env {
            command.arg("-e").arg(format!("{key}={value}"));
        }
        let child = command
            .args([TRIXIE.name, crate::sshd::SSHD, "-D", "-e", "-f"])
            .arg(files.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(files.new_log())
            .spawn()
            .expect("podman run");
        (child, Self { name, pidfile })
    }

    /// The host pid of the container's sshd (its process 1), once Podman wrote it.
    pub fn listener_pid(&self) -> u32 {
        wait_for("the container's sshd pid", Duration::from_secs(30), || {
            fs::read_to_string(&self.pidfile)
                .ok()?
                .trim()
                .parse()
                .ok()
                .filter(|&pid| pid > 0)
        })
    }

    /// Removes the container: its sshd and everything it started are killed at once.
    pub fn remove(&self) {
        let _ = run(podman().args(["rm", "-f", "-t", "0", &self.name]));
    }
}

/// The directory of the `controller` cgroup process `pid` runs in (cgroup v1, else v2).
pub(crate) fn cgroup_of(pid: u32, controller: &str) -> PathBuf {
    let table = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    let line = |wanted: &dyn Fn(&str) -> bool| {
        table.lines().find_map(|l| {
            let mut fields = l.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            wanted(controllers).then(|| path.to_owned())
        })
    };
    let root = PathBuf::from("/sys/fs/cgroup");
    if let Some(path) = line(&|c| c.split(',').any(|c| c == controller)) {
        return root.join(controller).join(path.trim_start_matches('/'));
    }
    let path = line(&|c| c.is_empty()).expect("a cgroup v2 line");
    root.join(path.trim_start_matches('/'))
}
