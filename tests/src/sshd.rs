//! A real OpenSSH sshd, started directly (not through systemd) with its own host key, client
//! key, `authorized_keys` and configuration in a temporary directory.

use std::{
    fs,
    io::Read,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::{kill, process_tree, run, wait_for, Endpoint};

const SSHD: &str = "/usr/sbin/sshd";
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
}

pub struct Sshd {
    pub endpoint: Endpoint,
    pub dir: PathBuf,
    child: Child,
    client_netns: Option<String>,
}

impl Sshd {
    pub fn start(name: &str, endpoint: Endpoint, options: SshdOptions) -> Self {
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
        let log = fs::File::create(dir.join("sshd.log")).expect("sshd.log");
        let mut command = in_netns(options.netns.as_deref(), SSHD);
        command
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &options.env {
            command.env(k, v);
        }
        if let Some(fixture) = options.preload {
            command.env("LD_PRELOAD", build_fixture(fixture, &dir));
        }
        let child = command.spawn().expect("start sshd");
        let client_netns = options.client_netns.or(options.netns);
        let sshd = Self {
            endpoint,
            dir,
            child,
            client_netns,
        };
        // Its own log line, not a test connection: a connection would be a verdict of its own.
        wait_for("sshd to listen", Duration::from_secs(10), || {
            sshd.log().contains("Server listening on").then_some(())
        });
        sshd
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// A real `ssh` client logging in with the test key and running `command`.
    pub fn ssh_command(&self, command: &str) -> Command {
        self.ssh_command_with(self.endpoint.port(), &self.dir.join("client_key"), command)
    }

    /// Like [`Self::ssh_command`], to another port of the same address.
    pub fn ssh_command_to(&self, port: u16, command: &str) -> Command {
        self.ssh_command_with(port, &self.dir.join("client_key"), command)
    }

    /// An `ssh` client to `port` offering only the key `identity`.
    pub fn ssh_command_with(&self, port: u16, identity: &Path, command: &str) -> Command {
        self.ssh_command_as("root", port, identity, command)
    }

    /// An `ssh` client logging in as `user`.
    pub fn ssh_command_as(&self, user: &str, port: u16, identity: &Path, command: &str) -> Command {
        let mut ssh = in_netns(self.client_netns.as_deref(), "ssh");
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
            .arg(format!("{user}@{}", self.endpoint.addr()))
            .arg(command)
            .stdin(Stdio::null());
        ssh
    }

    pub fn ssh(&self, command: &str) -> Output {
        run(&mut self.ssh_command(command))
    }

    /// Waits until a login running `sleep` has its session: returns the per-connection sshd
    /// (the listener's child).
    pub fn wait_for_session(&self) -> u32 {
        // Generous: a session under emulation (cargo xtask vm-test) takes seconds to start.
        wait_for("the session's shell", Duration::from_secs(30), || {
            let session = *crate::children(self.pid()).first()?;
            crate::process_tree(session)
                .iter()
                .any(|&p| {
                    fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
                })
                .then_some(session)
        })
    }

    /// Stops the listener and everything it started.
    pub fn stop(&mut self) {
        for pid in process_tree(self.pid()) {
            kill(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// The config/keys directory, for tests that break a file on purpose.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(keys_dir_of(&self.dir));
    }
}

fn keys_dir_of(dir: &Path) -> PathBuf {
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
