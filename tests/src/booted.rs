//! A Debian container booted with systemd as its process 1, for what only a real systemd can
//! check: a package's maintainer scripts and its unit, sandbox included. The images are the
//! tests' sshd images (a clean debootstrap of Debian 12 or 13, with OpenSSH's server) with
//! Debian's systemd added by apt on the host's network, committed once and kept in Podman's
//! storage.
//!
//! Not `--privileged`: a privileged container's systemd would apply its sysctl.d settings to
//! the host's kernel and see the host's devices (its consoles among them). The container gets
//! the capabilities sshtrace's unit bounds itself to instead; /proc/sys and /sys stay
//! read-only and /dev is the container's own.

use std::{path::Path, process::Output, sync::OnceLock, time::Duration};

use crate::{
    podman::{podman, Image, BOOKWORM, TRIXIE},
    run, wait_for,
};

/// What the container may hold: the capabilities of deploy/sshtrace.service's bounding set.
const CAPABILITIES: &str =
    "BPF,PERFMON,SYS_ADMIN,SYS_PTRACE,DAC_READ_SEARCH,AUDIT_READ,AUDIT_CONTROL,SETPCAP";

/// A test image with systemd.
pub struct BootableImage {
    pub name: &'static str,
    suite: &'static str,
    base: &'static Image,
    built: OnceLock<()>,
}

/// Debian 12 (systemd 252).
pub static BOOKWORM_SYSTEMD: BootableImage = BootableImage {
    name: "localhost/sshtrace-systemd-bookworm:latest",
    suite: "bookworm",
    base: &BOOKWORM,
    built: OnceLock::new(),
};

/// Debian 13 (systemd 257).
pub static TRIXIE_SYSTEMD: BootableImage = BootableImage {
    name: "localhost/sshtrace-systemd-trixie:latest",
    suite: "trixie",
    base: &TRIXIE,
    built: OnceLock::new(),
};

impl BootableImage {
    /// Builds the image once per test process when Podman does not have it.
    fn ensure(&self) {
        self.built.get_or_init(|| {
            if run(podman().args(["image", "exists", self.name]))
                .status
                .success()
            {
                return;
            }
            self.base.ensure();
            let builder = format!("sshtrace-systemd-{}-{}", self.suite, std::process::id());
            let _ = run(podman().args(["rm", "-f", &builder]));
            let out = run(podman()
                .args(["run", "--name", &builder, "--network", "host"])
                .args([
                    self.base.name,
                    "sh",
                    "-c",
                    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq --no-install-recommends systemd",
                ]));
            let committed = out
                .status
                .success()
                .then(|| run(podman().args(["commit", "-q", &builder, self.name])));
            let _ = run(podman().args(["rm", "-f", &builder]));
            assert!(
                committed.is_some_and(|c| c.status.success()),
                "adding systemd to {}: {}{}",
                self.base.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        });
    }
}

/// A running container with systemd booted, removed on drop.
pub struct Booted {
    pub name: String,
}

impl Booted {
    /// Boots `image` with no network but its own loopback, `volumes` mounted read-only
    /// (host path, container path), and waits until systemd has finished starting up.
    pub fn start(image: &BootableImage, name: &str, volumes: &[(&Path, &str)]) -> Self {
        image.ensure();
        let name = format!("sshtrace-{name}-{}", std::process::id());
        let _ = run(podman().args(["rm", "-f", "-t", "0", &name]));
        let mut args = vec![
            "run".to_owned(),
            "-d".into(),
            format!("--name={name}"),
            "--systemd=always".into(),
            "--network=none".into(),
            format!("--cap-add={CAPABILITIES}"),
        ];
        for (host, container) in volumes {
            args.push(format!("--volume={}:{container}:ro", host.display()));
        }
        args.extend([image.name.to_owned(), "/lib/systemd/systemd".into()]);
        let out = run(podman().args(&args));
        assert!(
            out.status.success(),
            "podman run {}: {}",
            image.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let booted = Self { name };
        // `degraded`: Debian 13's systemd-modules-load fails in a container (no kmod context).
        wait_for("systemd to boot", Duration::from_secs(60), || {
            let state = booted.exec(&["systemctl", "is-system-running"]);
            matches!(
                String::from_utf8_lossy(&state.stdout).trim(),
                "running" | "degraded"
            )
            .then_some(())
        });
        booted
    }

    /// `podman exec` of `command` in the container.
    pub fn exec(&self, command: &[&str]) -> Output {
        run(podman().args(["exec", &self.name]).args(command))
    }

    /// Like [`Self::exec`], failing the test on a non-zero exit; returns standard output.
    pub fn exec_ok(&self, command: &[&str]) -> String {
        let out = self.exec(command);
        assert!(
            out.status.success(),
            "{command:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = run(podman().args(["rm", "-f", "-t", "0", &self.name]));
    }
}
