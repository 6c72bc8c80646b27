//! A real container runtime: rootful Podman with the settings this machine needs
//! (shared/CONTAINERS.md), an sshd image built locally (debootstrap + podman import, the tarball
//! cached), containers that are removed on drop, and the Docker-compatible API socket sshtrace
//! asks for names.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::{listens, run, wait_for};

pub const IMAGE: &str = "localhost/sshtrace-sshbox:latest";

/// The containers.conf tests use: runc, cgroupfs, ulimits root may set here.
pub fn conf() -> PathBuf {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("sshtrace-containers-{}.conf", std::process::id()));
        fs::write(
            &path,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
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

/// Imports the sshd image once per test process, building (and caching) its root file system
/// with debootstrap when no cached tarball exists.
pub fn ensure_image() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if run(podman().args(["image", "exists", IMAGE]))
            .status
            .success()
        {
            return;
        }
        let cache = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/sshtrace-tools");
        fs::create_dir_all(&cache).unwrap();
        let tarball = cache.join("sshbox-bookworm.tar");
        if !tarball.exists() {
            let rootfs =
                std::env::temp_dir().join(format!("sshtrace-rootfs-{}", std::process::id()));
            let out = run(Command::new("debootstrap")
                .args(["--variant=minbase", "--include=openssh-server", "bookworm"])
                .arg(&rootfs));
            assert!(
                out.status.success(),
                "debootstrap: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            fs::create_dir_all(rootfs.join("run/sshd")).unwrap();
            fs::create_dir_all(rootfs.join("root/.ssh")).unwrap();
            let partial = tarball.with_extension("partial");
            let out = run(Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&partial)
                .arg("."));
            assert!(
                out.status.success(),
                "tar: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            fs::rename(&partial, &tarball).unwrap();
            let _ = fs::remove_dir_all(&rootfs);
        }
        podman_ok(&["import", tarball.to_str().unwrap(), IMAGE]);
    });
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
        wait_for(
            "sshd in the container to listen",
            Duration::from_secs(30),
            || listens(c.pid, port.parse().unwrap()).then_some(()),
        );
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
        let link = fs::read_link(format!("/proc/{}/ns/net", self.pid)).unwrap();
        link.to_str()
            .unwrap()
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
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
