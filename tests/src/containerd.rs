//! A real containerd (Debian's), with a socket, root, state and plugin directory of the test's
//! own in a temporary directory and its CRI plugin off, and sshd containers run in it with
//! `ctr`, carrying the labels Kubernetes' CRI plugin sets. Everything goes when the guards
//! drop, also when the test fails: tasks, containers and their snapshots, the daemon and its
//! shims, the temporary directory, and the directories containerd makes at fixed places on
//! the host (`/run/containerd/s` for its shims' sockets, a namespace's parent cgroup) when it
//! made them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    host_dirs::{cgroups_named, places, unmount_beneath, HostDirs, Places},
    kill, run, wait_for,
};

/// containerd's namespace for Kubernetes (the CRI plugin's).
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Where containerd makes directories whatever its configuration says.
static FIXED_PLACES: Places = places();

pub struct Containerd {
    pub socket: PathBuf,
    dir: PathBuf,
    child: Child,
    _host_dirs: HostDirs,
}

impl Containerd {
    /// Starts containerd in `$TMPDIR/sshtrace-containerd-NAME-PID` and waits for its API.
    pub fn start(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sshtrace-containerd-{name}-{}", std::process::id()));
        unmount_beneath(&dir);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        // The opt plugin's directory is /opt/containerd unless told; shims' sockets and a
        // namespace's cgroup have fixed places.
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
            dir.display(),
            socket.display()
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let host_dirs = HostDirs::absent(&FIXED_PLACES, || {
            let mut dirs = vec![PathBuf::from("/run/containerd"), "/run/containerd/s".into()];
            dirs.extend(cgroups_named(K8S_NAMESPACE));
            dirs
        });
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian's containerd package)");
        let mut containerd = Self {
            socket,
            dir,
            child,
            _host_dirs: host_dirs,
        };
        let mut version = Command::new("ctr");
        version.arg("-a").arg(&containerd.socket).arg("version");
        wait_for("containerd's API", Duration::from_secs(30), || {
            if let Ok(Some(status)) = containerd.child.try_wait() {
                let log = fs::read_to_string(containerd.dir.join("containerd.log"));
                panic!("containerd exited ({status}): {}", log.unwrap_or_default());
            }
            run(&mut version).status.success().then_some(())
        });
        containerd
    }

    /// `ctr` on this containerd, in `namespace`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket).args(["-n", namespace]);
        c
    }

    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = run(self.ctr(namespace).args(args));
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports an image archive (`docker save`'s format) into `namespace`.
    pub fn import(&self, namespace: &str, archive: &Path) {
        self.ctr_ok(namespace, &["images", "import", archive.to_str().unwrap()]);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        kill(self.child.id(), libc::SIGTERM);
        let stopped = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Shims outlive containerd by design: those serving this one go too.
        for pid in shims_of(&self.socket) {
            kill(pid, libc::SIGKILL);
        }
        unmount_beneath(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The shim processes started for the containerd on `socket` (their `-address` argument).
fn shims_of(socket: &Path) -> Vec<u32> {
    let socket = socket.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|&b| b == 0);
            args.next()
                .is_some_and(|exe| exe.ends_with(b"containerd-shim-runc-v2"))
                && args.any(|a| a == socket)
        })
        .collect()
}

/// A 64-hex-digit container id, as Kubernetes' runtimes make them.
fn random_id() -> String {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sshd in a container `ctr run` made, removed (task, container, snapshot) on drop.
pub struct CtrContainer<'a> {
    containerd: &'a Containerd,
    namespace: String,
    pub id: String,
    /// The host pid of its sshd (its process 1).
    pub pid: u32,
}

impl<'a> CtrContainer<'a> {
    /// Runs `/usr/sbin/sshd -D -e -p PORT` from `image` in `namespace` with `labels`, joined to
    /// the network namespace `/run/netns/NETNS`, accepting the keys in `authorized_keys`; waits
    /// until sshd listens.
    pub fn run(
        containerd: &'a Containerd,
        namespace: &str,
        image: &str,
        labels: &[(&str, &str)],
        netns: &str,
        authorized_keys: &Path,
        port: u16,
    ) -> Self {
        let id = random_id();
        let dir = containerd.dir();
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--null-io".into()];
        // ctr's FIFOs and runc's state go to the test's directory, not /run/containerd.
        args.push(format!("--fifo-dir={}/fifo", dir.display()));
        args.push(format!("--runc-root={}/runc", dir.display()));
        for (key, value) in labels {
            args.push("--label".into());
            args.push(format!("{key}={value}"));
        }
        args.push(format!("--with-ns=network:/run/netns/{netns}"));
        args.push("--mount".into());
        args.push(format!(
            "type=bind,src={},dst=/root/.ssh/authorized_keys,options=rbind:ro",
            authorized_keys.display()
        ));
        // containerd's default spec mounts a tmpfs on /run, hiding the image's /run/sshd.
        args.push("--mount".into());
        args.push("type=tmpfs,src=tmpfs,dst=/run/sshd,options=mode=755".into());
        args.extend([image, &id, "/usr/sbin/sshd", "-D", "-e", "-p"].map(String::from));
        args.push(port.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        containerd.ctr_ok(namespace, &args);
        let mut container = Self {
            containerd,
            namespace: namespace.to_owned(),
            id,
            pid: 0,
        };
        container.pid = wait_for("the container's task", Duration::from_secs(30), || {
            container.task_pid()
        });
        crate::wait_until_listening(container.pid, port);
        container
    }

    /// The pid of its running task, from `ctr task ls` (TASK PID STATUS).
    fn task_pid(&self) -> Option<u32> {
        let tasks = self.containerd.ctr_ok(&self.namespace, &["task", "ls"]);
        tasks.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [id, pid, "RUNNING"] if *id == self.id => pid.parse().ok().filter(|&p| p > 0),
                _ => None,
            }
        })
    }
}

impl Drop for CtrContainer<'_> {
    fn drop(&mut self) {
        let ctr = |args: &[&str]| run(self.containerd.ctr(&self.namespace).args(args));
        let _ = ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        for _ in 0..100 {
            if ctr(&["task", "rm", &self.id]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = ctr(&["task", "rm", "-f", &self.id]);
        // Removes its snapshot with it.
        let _ = ctr(&["containers", "rm", &self.id]);
    }
}
