//! A real container runtime: rootful Podman with the settings this machine needs
//! (shared/CONTAINERS.md), sshd images built locally (debootstrap + podman import, the tarball
//! cached: Debian 12's OpenSSH 9.2 and Debian 13's 10.0) and saved for the other runtimes
//! (`podman save`: Docker Engine and containerd load that archive), containers that are
//! removed on drop, and the Docker-compatible API socket sshtrace asks for names.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::{run, wait_for};

pub const IMAGE: &str = "localhost/sshtrace-sshbox:latest";

/// The containers.conf tests use: runc, cgroupfs, ulimits root may set here. One file for
/// every test process (the same content, replaced whole), not one left behind per process.
pub fn conf() -> PathBuf {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let path = std::env::temp_dir().join("sshtrace-containers.conf");
        let partial = path.with_extension(format!("conf.{}", std::process::id()));
        fs::write(
            &partial,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        fs::rename(&partial, &path).unwrap();
        path
    })
    .clone()
}

pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", conf());
    c
}

fn podman_ok(args: &[&str]) -> String {
    let out = run(podman().args(args));
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A test image: a Debian suite's root file system with OpenSSH's server, built locally (no
/// registry is reachable here) and imported into Podman.
pub struct Image {
    /// The image's name in Podman.
    pub name: &'static str,
    /// The Debian suite debootstrap installs.
    suite: &'static str,
    imported: OnceLock<()>,
    archived: OnceLock<PathBuf>,
}

/// Debian 12 (bookworm): OpenSSH 9.2, the host's own version.
pub static BOOKWORM: Image = Image {
    name: IMAGE,
    suite: "bookworm",
    imported: OnceLock::new(),
    archived: OnceLock::new(),
};

/// Debian 13 (trixie): OpenSSH 10.0 — `sshd`, `sshd-session` and `sshd-auth`.
pub static TRIXIE: Image = Image {
    name: "localhost/sshtrace-sshbox-trixie:latest",
    suite: "trixie",
    imported: OnceLock::new(),
    archived: OnceLock::new(),
};

impl Image {
    /// Imports the image once per test process. Its root file system tarball is built when
    /// missing (debootstrap: 30 s here, about 3 min on a cold mirror), or waited for while
    /// another process builds it — `cargo xtask setup` starts that build in the background on
    /// a fresh machine — and cached in [`cache_dir`] as `sshbox-SUITE.tar`.
    pub fn ensure(&self) {
        self.imported.get_or_init(|| {
            if run(podman().args(["image", "exists", self.name]))
                .status
                .success()
            {
                return;
            }
            let tarball = cache_dir().join(format!("sshbox-{}.tar", self.suite));
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("images")
                .join("sshbox-rootfs.sh");
            let out = run(Command::new("sh")
                .arg(&script)
                .arg(self.suite)
                .arg(&tarball));
            assert!(
                out.status.success(),
                "{} {}: {}",
                script.display(),
                self.suite,
                String::from_utf8_lossy(&out.stderr)
            );
            podman_ok(&["import", tarball.to_str().unwrap(), self.name]);
        });
    }
}

impl Image {
    /// The image as an archive in `docker save`'s format (from `podman save`), for Docker
    /// Engine's `docker load` and containerd's `ctr images import`: no registry is reachable.
    /// Saved once per test process, cached in [`cache_dir`] as `sshbox-SUITE.docker-archive.tar`
    /// (renamed into place whole; saved again when the root file system tarball is newer).
    pub fn archive(&self) -> PathBuf {
        self.archived
            .get_or_init(|| {
                self.ensure();
                let dir = cache_dir();
                let archive = dir.join(format!("sshbox-{}.docker-archive.tar", self.suite));
                let modified =
                    |p: &std::path::Path| fs::metadata(p).and_then(|m| m.modified()).ok();
                let rootfs = dir.join(format!("sshbox-{}.tar", self.suite));
                if modified(&archive).is_some() && modified(&archive) >= modified(&rootfs) {
                    return archive;
                }
                let partial = archive.with_extension(format!("partial.{}", std::process::id()));
                let _ = fs::remove_file(&partial);
                podman_ok(&[
                    "save",
                    "--format",
                    "docker-archive",
                    "-o",
                    partial.to_str().unwrap(),
                    self.name,
                ]);
                fs::rename(&partial, &archive).unwrap();
                archive
            })
            .clone()
    }
}

/// Where the image tarballs are cached: the tools directory of `cargo xtask setup`
/// (`$XDG_CACHE_HOME/sshtrace-tools`, else `~/.cache/sshtrace-tools`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("sshtrace-tools")
}

/// Imports the Debian 12 sshd image ([`IMAGE`]) once per test process.
pub fn ensure_image() {
    BOOKWORM.ensure();
}

/// A running container with sshd on `port`, accepting the key in `authorized_keys`.
pub struct Container {
    pub name: String,
    pub id: String,
    pub pid: u32,
}

impl Container {
    pub fn run(name: &str, network: &[&str], authorized_keys: &std::path::Path, port: u16) -> Self {
        ensure_image();
        let name = format!("sshtrace-{name}-{}", std::process::id());
        let _ = run(podman().args(["rm", "-f", &name]));
        let keys = format!(
            "{}:/root/.ssh/authorized_keys:ro",
            authorized_keys.display()
        );
        let port = port.to_string();
        let mut args = vec!["run", "-d", "--name", &name, "-v", &keys];
        args.extend_from_slice(network);
        args.extend([IMAGE, "/usr/sbin/sshd", "-D", "-e", "-p", &port]);
        let id = podman_ok(&args);
        let c = Self {
            pid: podman_ok(&["inspect", "-f", "{{.State.Pid}}", &name])
                .parse()
                .unwrap(),
            name,
            id,
        };
        // Read from the container's own /proc, not `podman logs`: a podman process per poll
        // costs seconds of CPU under emulation (vm-test) and starves the container.
        crate::wait_until_listening(c.pid, port.parse().unwrap());
        c
    }

    /// Its address on podman's default bridge.
    pub fn ip(&self) -> String {
        podman_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}",
            &self.name,
        ])
    }

    pub fn netns(&self) -> u64 {
        crate::netns_of(self.pid)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(podman().args(["rm", "-f", "-t", "0", &self.name]));
    }
}

/// `podman system service` answering the Docker-compatible API on a socket of the test's own.
pub struct ApiService {
    pub socket: PathBuf,
    child: Child,
}

impl ApiService {
    pub fn start(name: &str) -> Self {
        let socket = std::env::temp_dir().join(format!(
            "sshtrace-podman-{name}-{}.sock",
            std::process::id()
        ));
        let _ = fs::remove_file(&socket);
        let child = podman()
            .args([
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", socket.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        wait_for("the API socket", Duration::from_secs(10), || {
            socket.exists().then_some(())
        });
        Self { socket, child }
    }
}

impl Drop for ApiService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}
