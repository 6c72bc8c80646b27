//! A real OpenSSH sshd, started directly (not through systemd) with its own host key, client
//! key, `authorized_keys` and configuration in a temporary directory: the host's (9.2), or
//! 10.0 in a container with the same files (see [`crate::openssh`]).

use std::{
    fs,
    io::Read,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::{
    kill,
    openssh::{cgroup_of, OpenSsh, SshdContainer},
    process_tree, run, wait_for, Cgroup, Endpoint,
};

pub(crate) const SSHD: &str = "/usr/sbin/sshd";
/// Where sshd's unprivileged child chroots; Debian's package creates it at boot only.
const PRIVSEP_DIR: &str = "/run/sshd";

#[derive(Default)]
pub struct SshdOptions {
    /// Extra sshd_config lines.
    pub config: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// A C fixture from tests/fixtures to build and preload into sshd (it lives in sshd's
    /// directory, so every re-executed sshd process can load it).
    pub preload: Option<&'static str>,
    /// A network namespace (made by the test) to run sshd and its clients in.
    pub netns: Option<String>,
    /// Where the clients run instead, when not beside sshd.
    pub client_netns: Option<String>,
    /// Keep `authorized_keys` in a directory of its own (`<dir>-keys`), apart from the host key.
    pub keys_apart: bool,
    /// The sshd under test: the host's (the default), or 10.0 in a container (not with
    /// `netns`: the container is on the host's network).
    pub openssh: OpenSsh,
}

/// An sshd's own files, in a temporary directory of the test's, removed on drop: host key,
/// client key, `authorized_keys`, `sshd_config`, the built fixture and sshd's log. Written once,
/// used by every sshd the test starts with them (see [`Sshd::restart`] and
/// [`crate::socket_activation`]).
pub struct SshdFiles {
    pub dir: PathBuf,
    /// The environment sshd runs with: the test's, and LD_PRELOAD of the built fixture.
    pub env: Vec<(String, String)>,
}

impl SshdFiles {
    pub fn write(name: &str, endpoint: Endpoint, options: &SshdOptions) -> Self {
        let dir = std::env::temp_dir().join(format!("sshtrace-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        fs::create_dir_all(PRIVSEP_DIR).expect("create /run/sshd");
        for key in ["host_key", "client_key"] {
            let out = run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)));
            assert!(
                out.status.success(),
                "ssh-keygen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let keys_dir = if options.keys_apart {
            keys_dir_of(&dir)
        } else {
            dir.clone()
        };
        fs::create_dir_all(&keys_dir).expect("create keys dir");
        fs::copy(dir.join("client_key.pub"), keys_dir.join("authorized_keys"))
            .expect("authorized_keys");
        let mut config = format!(
            "Port {port}\nListenAddress {addr}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {k}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
            port = endpoint.port(),
            addr = endpoint.addr(),
            d = dir.display(),
            k = keys_dir.display()
        );
        for line in &options.config {
            config.push_str(line);
            config.push('\n');
        }
        fs::write(dir.join("sshd_config"), config).expect("write sshd_config");
        let mut env = options.env.clone();
        if let Some(fixture) = options.preload {
            let library = build_fixture(fixture, &dir);
            env.push(("LD_PRELOAD".into(), library.display().to_string()));
        }
        Self { dir, env }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn config(&self) -> PathBuf {
        self.path("sshd_config")
    }

    /// An empty `sshd.log` for the next sshd to write to (`-e`: its standard error).
    pub fn new_log(&self) -> fs::File {
        fs::File::create(self.path("sshd.log")).expect("sshd.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// The client ports of the connections sshd logged (`Connection from ADDR port P on …`),
    /// oldest first: which connection is which, from sshd's side.
    pub fn client_ports(&self) -> Vec<u16> {
        self.log()
            .lines()
            .filter_map(|line| {
                let (_, from) = line.split_once("Connection from ")?;
                let mut words = from.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(_addr), Some("port"), Some(port)) => port.parse().ok(),
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for SshdFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(keys_dir_of(&self.dir));
    }
}

pub struct Sshd {
    pub endpoint: Endpoint,
    pub files: SshdFiles,
    pub openssh: OpenSsh,
    /// sshd itself, or the attached `podman run` of its container.
    child: Child,
    container: Option<SshdContainer>,
    /// The listener's pid on the host.
    pid: u32,
    name: String,
    netns: Option<String>,
    client_netns: Option<String>,
    /// Cgroups of the test's own the listener was moved into (see [`Self::cgroup`]).
    cgroups: Vec<Cgroup>,
}

impl Sshd {
    pub fn start(name: &str, endpoint: Endpoint, options: SshdOptions) -> Self {
        assert!(
            options.openssh == OpenSsh::V9_2Host || options.netns.is_none(),
            "sshd in a container runs on the host's network"
        );
        let files = SshdFiles::write(name, endpoint, &options);
        let client_netns = options.client_netns.or(options.netns.clone());
        let (child, container) = launch(&files, options.netns.as_deref(), options.openssh);
        let mut sshd = Self {
            endpoint,
            files,
            openssh: options.openssh,
            pid: child.id(),
            child,
            container,
            name: name.to_owned(),
            netns: options.netns,
            client_netns,
            cgroups: Vec::new(),
        };
        sshd.wait_until_listening();
        sshd
    }

    /// Stops the listener and everything it started, and starts sshd again with the same
    /// files (no new keys): as quick as sshd's own start. [`Self::pid`] is the new listener.
    pub fn restart(&mut self) {
        self.stop();
        (self.child, self.container) = launch(&self.files, self.netns.as_deref(), self.openssh);
        self.pid = self.child.id();
        self.wait_until_listening();
    }

    /// Waits until sshd logs that it listens; then [`Self::pid`] is a container's sshd.
    fn wait_until_listening(&mut self) {
        // Its own log line, not a test connection: a connection would be a verdict of its own.
        // A container's start takes a second or two, more on a busy machine.
        let timeout = match self.openssh {
            OpenSsh::V9_2Host => Duration::from_secs(10),
            OpenSsh::V10Container => Duration::from_secs(30),
        };
        wait_for("sshd to listen", timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sshd exited ({status}) before it listened: {}",
                    self.files.log()
                );
            }
            self.files
                .log()
                .contains("Server listening on")
                .then_some(())
        });
        if let Some(container) = &self.container {
            self.pid = container.listener_pid();
        }
    }

    /// The listener's pid (on the host, also for sshd in a container).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory of the `controller` cgroup sshd and everything it starts run in, for the
    /// test to set a limit in: the container's own cgroup (what `podman update` sets), or on
    /// the host a cgroup of the test's own (`sshtrace-test-NAME-PID`) the listener is moved
    /// into now, removed after sshd stops.
    pub fn cgroup(&mut self, controller: &str) -> PathBuf {
        if self.container.is_some() {
            return cgroup_of(self.pid(), controller);
        }
        let cgroup = Cgroup::new(controller, &self.name);
        cgroup.add(self.pid());
        let dir = cgroup.dir.clone();
        self.cgroups.push(cgroup);
        dir
    }

    pub fn log(&self) -> String {
        self.files.log()
    }

    /// A real `ssh` client logging in with the test key and running `command`.
    pub fn ssh_command(&self, command: &str) -> Command {
        self.ssh_command_with(self.endpoint.port(), &self.path("client_key"), command)
    }

    /// Like [`Self::ssh_command`], to another port of the same address.
    pub fn ssh_command_to(&self, port: u16, command: &str) -> Command {
        self.ssh_command_with(port, &self.path("client_key"), command)
    }

    /// An `ssh` client to `port` offering only the key `identity`.
    pub fn ssh_command_with(&self, port: u16, identity: &Path, command: &str) -> Command {
        self.ssh_command_as("root", port, identity, command)
    }

    /// An `ssh` client logging in as `user`.
    pub fn ssh_command_as(&self, user: &str, port: u16, identity: &Path, command: &str) -> Command {
        let (netns, addr) = (self.client_netns.as_deref(), self.endpoint.addr());
        ssh_client(netns, user, &addr, port, identity, command)
    }

    /// Like [`Self::ssh_command`], with extra `-o` options for the client (`ServerAliveInterval=1`).
    pub fn ssh_command_with_options(&self, options: &[&str], command: &str) -> Command {
        let (netns, addr) = (self.client_netns.as_deref(), self.endpoint.addr());
        let (port, identity) = (self.endpoint.port(), self.path("client_key"));
        let mut ssh = ssh_client_options(netns, "root", &addr, port, &identity, options);
        ssh.arg(command);
        ssh
    }

    pub fn ssh(&self, command: &str) -> Output {
        run(&mut self.ssh_command(command))
    }

    /// Waits until a login running `sleep` has its session: returns the per-connection sshd
    /// (the listener's child).
    pub fn wait_for_session(&self) -> u32 {
        crate::wait_for_session(self.pid())
    }

    /// Stops the listener and everything it started (nothing when it is already stopped: its
    /// pid may belong to another process by now). A container is removed.
    pub fn stop(&mut self) {
        if let Some(container) = self.container.take() {
            container.remove();
            let _ = self.child.wait();
            return;
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        for pid in process_tree(self.pid()) {
            kill(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// The config/keys directory, for tests that break a file on purpose.
    pub fn path(&self, file: &str) -> PathBuf {
        self.files.path(file)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The files go after (a field drops after its owner): nothing is left running in them.
        self.stop();
    }
}

/// sshd with the files: the host's (in `netns` when given), or in a container.
fn launch(
    files: &SshdFiles,
    netns: Option<&str>,
    openssh: OpenSsh,
) -> (Child, Option<SshdContainer>) {
    match openssh {
        OpenSsh::V9_2Host => (spawn(files, netns), None),
        OpenSsh::V10Container => {
            let (child, container) = SshdContainer::spawn(files);
            (child, Some(container))
        }
    }
}

/// `sshd -D -e -f CONFIG` with the files' environment, logging to a fresh `sshd.log`.
fn spawn(files: &SshdFiles, netns: Option<&str>) -> Child {
    in_netns(netns, SSHD)
        .args(["-D", "-e", "-f"])
        .arg(files.config())
        .envs(files.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(files.new_log())
        .spawn()
        .expect("start sshd")
}

pub(crate) fn keys_dir_of(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}-keys", dir.display()))
}

/// `program`, inside network namespace `netns` when there is one (`ip netns exec` execs it, so
/// the child's pid is the program's).
pub fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// A real `ssh` client (in `netns` when given) logging in as `user` to ADDR:PORT, offering
/// only the key `identity`, and running `command`.
pub fn ssh_client(
    netns: Option<&str>,
    user: &str,
    addr: &str,
    port: u16,
    identity: &Path,
    command: &str,
) -> Command {
    let mut ssh = ssh_client_options(netns, user, addr, port, identity, &[]);
    ssh.arg(command);
    ssh
}

/// [`ssh_client`] up to its command, with `-o OPTION` for each of `options`.
fn ssh_client_options(
    netns: Option<&str>,
    user: &str,
    addr: &str,
    port: u16,
    identity: &Path,
    options: &[&str],
) -> Command {
    let mut ssh = in_netns(netns, "ssh");
    for option in options {
        ssh.args(["-o", option]);
    }
    ssh.args(["-F", "/dev/null", "-i"])
        .arg(identity)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-p",
        ])
        .arg(port.to_string())
        .arg(format!("{user}@{addr}"))
        .stdin(Stdio::null());
    ssh
}

/// Reads what a raw TCP peer receives until EOF or error; Err carries the error kind.
pub fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut data = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    match stream.read_to_end(&mut data) {
        Ok(_) => Ok(data),
        Err(e) => Err(e.kind()),
    }
}

/// Compiles a C fixture from tests/fixtures into `dir` as a shared object.
pub fn build_fixture(source: &str, dir: &Path) -> PathBuf {
    let out = dir.join(source.replace(".c", ".so"));
    compile(source, &out, &["-shared", "-fPIC"]);
    out
}

/// Compiles a C fixture from tests/fixtures into `dir` as a program.
pub fn build_program(source: &str, dir: &Path) -> PathBuf {
    let out = dir.join(source.trim_end_matches(".c"));
    compile(source, &out, &[]);
    out
}

fn compile(source: &str, out: &Path, flags: &[&str]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(source);
    let result = run(Command::new("gcc")
        .args(flags)
        .args(["-O2", "-o"])
        .arg(out)
        .arg(&src)
        .arg("-ldl"));
    assert!(
        result.status.success(),
        "gcc {source}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}
