//! A real Docker Engine (Debian's `dockerd`, driven by Debian's `docker` client) whose data,
//! state, pid file, configuration and API socket are in a temporary directory of the test's
//! own, on a containerd of its own ([`Containerd`]): the cgroupfs driver (systemd is not
//! process 1 here), so containers are in `/docker/<id>`; no bridge, no iptables rules and no
//! forwarding, so nothing on the host's network changes (containers get a network namespace
//! of their own, `--network none`, which the test names with `ip netns attach`). Everything
//! goes when the guards drop, also when the test fails: containers, the daemon, the temporary
//! directory, and the directories dockerd makes at fixed places (`/run/docker`, the `/docker`
//! cgroup) when it made them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    containerd::Containerd,
    host_dirs::{cgroups_named, places, unmount_beneath, HostDirs, Places},
    kill, run, wait_for,
};

/// Debian's client, which speaks dockerd's API version (another on the PATH may not).
const DOCKER: &str = "/usr/bin/docker";

/// Where dockerd makes directories whatever it is told.
static FIXED_PLACES: Places = places();

pub struct DockerEngine {
    /// The Engine API socket sshtrace asks.
    pub socket: PathBuf,
    dir: PathBuf,
    child: Child,
    _host_dirs: HostDirs,
    _containerd: Containerd,
}

impl DockerEngine {
    /// Starts dockerd in `$TMPDIR/sshtrace-docker-NAME-PID` and waits for its API.
    pub fn start(name: &str) -> Self {
        let containerd = Containerd::start(&format!("docker-{name}"));
        let dir =
            std::env::temp_dir().join(format!("sshtrace-docker-{name}-{}", std::process::id()));
        unmount_beneath(&dir);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Not /etc/docker/daemon.json: the host's settings are not the test's. The key it
        // would write to /etc/docker/key.json goes to the test's directory (a setting with no
        // command-line flag).
        let key = serde_json::json!({"deprecated-key-path": dir.join("key.json")});
        fs::write(dir.join("daemon.json"), key.to_string()).unwrap();
        let socket = dir.join("docker.sock");
        let host_dirs = HostDirs::absent(&FIXED_PLACES, || {
            let mut dirs = vec![PathBuf::from("/run/docker"), "/run/docker/plugins".into()];
            dirs.extend(cgroups_named("docker"));
            dirs
        });
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let at = |sub: &str| dir.join(sub).into_os_string();
        let child = Command::new("dockerd")
            .arg("--containerd")
            .arg(&containerd.socket)
            .arg("--config-file")
            .arg(at("daemon.json"))
            .arg("--data-root")
            .arg(at("data"))
            .arg("--exec-root")
            .arg(at("exec"))
            .arg("--pidfile")
            .arg(at("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .args(["--storage-driver", "overlay2"])
            .args(["--bridge=none", "--iptables=false", "--ip-forward=false"])
            .args(["--ip-masq=false", "--userland-proxy=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian's docker.io package)");
        let mut engine = Self {
            socket,
            dir,
            child,
            _host_dirs: host_dirs,
            _containerd: containerd,
        };
        let mut version = client(&engine.socket);
        version.arg("version");
        wait_for("dockerd's API", Duration::from_secs(60), || {
            if let Ok(Some(status)) = engine.child.try_wait() {
                let log = fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default();
                panic!("dockerd exited ({status}): {log}");
            }
            run(&mut version).status.success().then_some(())
        });
        engine
    }

    /// Debian's `docker` client on this engine.
    pub fn docker(&self) -> Command {
        client(&self.socket)
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = run(self.docker().args(args));
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Loads an image archive (`docker save`'s format).
    pub fn load(&self, archive: &Path) {
        self.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        let ids = run(self.docker().args(["ps", "-aq"]));
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = run(self.docker().args(["rm", "-f", id]));
        }
        kill(self.child.id(), libc::SIGTERM);
        let stopped = (0..150).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        unmount_beneath(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn client(socket: &Path) -> Command {
    let mut c = Command::new(DOCKER);
    c.arg("-H").arg(format!("unix://{}", socket.display()));
    c
}

/// The iptables chains whose name starts with `DOCKER`, in the filter and nat tables.
pub fn docker_chains() -> Vec<String> {
    ["filter", "nat"]
        .iter()
        .flat_map(|table| {
            let out = run(Command::new("iptables").args(["-t", table, "-S"]));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .filter(|chain| chain.starts_with("DOCKER"))
                .map(|chain| format!("{table}/{chain}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// sshd in a Docker container with a network namespace of its own, removed on drop.
pub struct DockerContainer<'a> {
    engine: &'a DockerEngine,
    pub name: String,
    pub id: String,
    /// The host pid of its sshd (its process 1).
    pub pid: u32,
}

impl<'a> DockerContainer<'a> {
    /// Runs `/usr/sbin/sshd -D -e -p PORT` from `image`, accepting the keys in
    /// `authorized_keys`; waits until sshd listens.
    pub fn run(
        engine: &'a DockerEngine,
        name: &str,
        image: &str,
        authorized_keys: &Path,
        port: u16,
    ) -> Self {
        let name = format!("sshtrace-{name}-{}", std::process::id());
        let keys = format!(
            "{}:/root/.ssh/authorized_keys:ro",
            authorized_keys.display()
        );
        let port = port.to_string();
        let id = engine.docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            // A kernel with AppArmor but no profile loader here must not refuse the container.
            "--security-opt",
            "apparmor=unconfined",
            "-v",
            &keys,
            image,
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-p",
            &port,
        ]);
        let c = Self {
            engine,
            pid: engine
                .docker_ok(&["inspect", "-f", "{{.State.Pid}}", &name])
                .parse()
                .unwrap(),
            name,
            id,
        };
        crate::wait_until_listening(c.pid, port.parse().unwrap());
        c
    }
}

impl Drop for DockerContainer<'_> {
    fn drop(&mut self) {
        let _ = run(self.engine.docker().args(["rm", "-f", &self.name]));
    }
}
