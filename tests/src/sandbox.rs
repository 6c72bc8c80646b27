//! Resources a test makes for itself and removes on drop, even when it fails: cgroups with a
//! limit, network namespaces.

use std::{fs, path::PathBuf, process::Command, thread, time::Duration};

use netlink_packet_audit::{AuditMessage, StatusMessage};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_sys::{protocols::NETLINK_AUDIT, Socket, SocketAddr};

use crate::run;

/// A cgroup v1 (or v2) directory of one controller, e.g. `pids` or `memory`.
pub struct Cgroup {
    pub dir: PathBuf,
    root: PathBuf,
}

impl Cgroup {
    pub fn new(controller: &str, name: &str) -> Self {
        let v1 = PathBuf::from("/sys/fs/cgroup").join(controller);
        let root = if v1.join("cgroup.procs").exists() {
            v1
        } else {
            // cgroup v2: the controller works in a child only once the root hands it down
            // (podman or systemd usually did; a fresh VM guest has not).
            let root = PathBuf::from("/sys/fs/cgroup");
            let _ = fs::write(
                root.join("cgroup.subtree_control"),
                format!("+{controller}"),
            );
            root
        };
        let dir = root.join(format!("sshtrace-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
        Self { dir, root }
    }

    pub fn set(&self, file: &str, value: &str) {
        fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("cannot write {value} to {file}: {e}"));
    }

    pub fn add(&self, pid: u32) {
        self.set("cgroup.procs", &pid.to_string());
    }

    /// Delegates this cgroup to `user` of `group` (its directory and `cgroup.procs` are
    /// theirs), then makes a cgroup beneath it named exactly `name` (any bytes but `/`) with
    /// `mkdir` run as them: what a tenant with a delegated subtree can do. Err: why the kernel
    /// refused.
    pub fn child_made_by(
        &self,
        (user, group): (&str, &str),
        name: &std::ffi::OsStr,
    ) -> Result<Cgroup, String> {
        let out = run(Command::new("chown")
            .arg(format!("{user}:{group}"))
            .arg(&self.dir)
            .arg(self.dir.join("cgroup.procs")));
        assert!(
            out.status.success(),
            "chown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = self.dir.join(name);
        let out = run(Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--clear-groups",
            ])
            .args(["mkdir", "--"])
            .arg(&dir));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Cgroup {
            dir,
            root: self.root.clone(),
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Whatever is left goes back to the root; dying processes may need a moment.
        for _ in 0..50 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

/// A network namespace with its loopback up.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        let name = format!("sshtrace-{name}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Names the network namespace process `pid` is in (a container's), so that `ip netns
    /// exec` can run in it; only the name goes on drop.
    pub fn attach(name: &str, pid: u32) -> Self {
        let name = format!("sshtrace-{name}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        let out = run(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]));
        assert!(
            out.status.success(),
            "ip netns attach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// Runs a command inside the namespace and asserts it succeeded.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `work` on a thread of its own inside the namespace, so that the sockets it opens
    /// are the namespace's, and returns what it returned.
    pub fn run_in<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let ns = fs::File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a namespace file we opened; it changes only this thread.
                    let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns {}", self.name);
                    work()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Two namespaces joined by a veth pair: `a` has 10.254.N.1/30, `b` 10.254.N.2/30.
pub struct Link {
    pub a: NetNs,
    pub b: NetNs,
}

impl Link {
    pub fn new(name: &str, n: u8) -> Self {
        let a = NetNs::new(&format!("{name}-a"));
        let b = NetNs::new(&format!("{name}-b"));
        let (va, vb) = (format!("st{n}a"), format!("st{n}b"));
        a.exec(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &b.name,
        ]);
        a.exec(&["ip", "addr", "add", &format!("10.254.{n}.1/30"), "dev", &va]);
        b.exec(&["ip", "addr", "add", &format!("10.254.{n}.2/30"), "dev", &vb]);
        a.exec(&["ip", "link", "set", &va, "up"]);
        b.exec(&["ip", "link", "set", &vb, "up"]);
        Self { a, b }
    }

    /// Takes `b`'s end down: from then on nothing crosses the link.
    pub fn cut(&self, n: u8) {
        self.b
            .exec(&["ip", "link", "set", &format!("st{n}b"), "down"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A system user for a test's non-root login, removed on drop.
pub struct User {
    pub name: String,
}

impl User {
    pub fn new(name: &str) -> Self {
        // useradd limits names to 32 characters.
        let name = format!("st-{name}-{}", std::process::id());
        let _ = run(Command::new("userdel").arg(&name));
        // Password '*': no password login, yet not a locked account sshd would refuse.
        let out = run(Command::new("useradd").args([
            "--no-create-home",
            "--shell",
            "/bin/sh",
            "--password",
            "*",
            &name,
        ]));
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }
}

impl User {
    /// A user with a home directory holding `.ssh/authorized_keys` (modes as given).
    pub fn with_home(name: &str, ssh_dir_mode: u32, keys_mode: u32) -> (Self, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let user = Self::new(name);
        let home = std::env::temp_dir().join(format!("sshtrace-home-{}", user.name));
        let ssh = home.join(".ssh");
        fs::create_dir_all(&ssh).unwrap();
        fs::write(ssh.join("authorized_keys"), "").unwrap();
        let out = run(Command::new("usermod").args(["--home", home.to_str().unwrap(), &user.name]));
        assert!(
            out.status.success(),
            "usermod: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(Command::new("chown").args(["-R", &user.name, home.to_str().unwrap()]));
        assert!(out.status.success());
        fs::set_permissions(&ssh, fs::Permissions::from_mode(ssh_dir_mode)).unwrap();
        fs::set_permissions(
            ssh.join("authorized_keys"),
            fs::Permissions::from_mode(keys_mode),
        )
        .unwrap();
        (user, home)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = run(Command::new("userdel").arg(&self.name));
        let _ =
            fs::remove_dir_all(std::env::temp_dir().join(format!("sshtrace-home-{}", self.name)));
    }
}

/// Kernel auditing switched on for the test's duration (so that LSMs emit audit records),
/// switched back to what it was on drop.
pub struct AuditOn {
    was_enabled: bool,
}

/// `AUDIT_STATUS_ENABLED`: the `mask` bit that says `enabled` is to be set.
const AUDIT_STATUS_ENABLED: u32 = 1;

/// Sends one audit netlink request (netlink-sys's socket, netlink-packet-audit's message)
/// and returns the first reply.
fn audit_request(flags: u16, message: AuditMessage) -> NetlinkPayload<AuditMessage> {
    let socket = Socket::new(NETLINK_AUDIT).expect("audit netlink socket");
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    if let Err(e) = socket.send_to(&bytes, &SocketAddr::new(0, 0), 0) {
        panic!("audit request: {e}");
    }
    let mut buf = vec![0u8; 1024];
    let n = socket.recv(&mut &mut buf[..], 0).expect("audit reply");
    NetlinkMessage::<AuditMessage>::deserialize(&buf[..n])
        .expect("audit reply decodes")
        .payload
}

fn audit_enabled() -> bool {
    match audit_request(0, AuditMessage::GetStatus(None)) {
        NetlinkPayload::InnerMessage(AuditMessage::GetStatus(Some(status))) => status.enabled != 0,
        other => panic!("no audit status reply: {other:?}"),
    }
}

fn set_audit(enabled: bool) {
    let mut status = StatusMessage::new();
    status.mask = AUDIT_STATUS_ENABLED;
    status.enabled = enabled.into();
    match audit_request(NLM_F_ACK, AuditMessage::SetStatus(status)) {
        NetlinkPayload::Error(ack) => {
            assert_eq!(ack.code, None, "AUDIT_SET enabled={enabled}: {ack}");
        }
        other => panic!("AUDIT_SET enabled={enabled}: no acknowledgement: {other:?}"),
    }
}

impl AuditOn {
    pub fn new() -> Self {
        let was_enabled = audit_enabled();
        set_audit(true);
        Self { was_enabled }
    }
}

impl Default for AuditOn {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AuditOn {
    fn drop(&mut self) {
        if !self.was_enabled {
            set_audit(false);
        }
    }
}
