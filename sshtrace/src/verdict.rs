//! The verdict record: one per SSH connection that died, as documented in docs/events.md
//! (schema `sshtrace/2`). Later versions only add fields.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{enrich::container::Container, enrich::dac::DacFacts, enrich::limits::LimitFacts};

pub const SCHEMA: &str = "sshtrace/2";

/// How the connection ended, as the network saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// This host sent a RST on the connection.
    ResetSent,
    /// A RST arrived for the connection.
    ResetReceived,
    /// An orderly close (FIN).
    Closed,
    /// A connection attempt was answered with a RST (no socket).
    Refused,
    /// Nothing ended yet, but sshd cannot take the connection (e.g. accept failing).
    Stalled,
    /// The connection's segments were dropped (by a firewall) and nothing answered them.
    Dropped,
}

/// Defines [`Cause`] from one list: each variant with its name in the schema, which
/// serialisation, `--cause` and the summary all use.
macro_rules! causes {
    ($($variant:ident => $name:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Cause {
            $($variant,)*
        }

        impl Cause {
            pub const ALL: &[Cause] = &[$(Cause::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

causes! {
    NotListening => "not_listening",
    SshdCrashed => "sshd_crashed",
    SshdKilled => "sshd_killed",
    OomKilled => "oom_killed",
    Firewall => "firewall",
    LsmDenied => "lsm_denied",
    PermissionDenied => "permission_denied",
    ResourceLimit => "resource_limit",
    SshdDropped => "sshd_dropped",
    SshdExited => "sshd_exited",
    SocketKilled => "socket_killed",
    PeerReset => "peer_reset",
    KernelAbort => "kernel_abort",
    ClosedPreauth => "closed_preauth",
    ConnectRefused => "connect_refused",
    ClientAborted => "client_aborted",
    Unknown => "unknown",
}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Cause {
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::Closed => "closed",
            Self::Refused => "refused",
            Self::Stalled => "stalled",
            Self::Dropped => "dropped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnInfo {
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    /// Network namespace inode: addresses are as seen there (a container's own view).
    pub netns: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Listener,
    Session,
    Preauth,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Session => "session",
            Self::Preauth => "preauth",
            Self::User => "user",
        }
    }
}

/// `sshtrace client`: the local process that connected.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// Null once it had exited when sshtrace read it.
    pub executable: Option<String>,
    /// Whether the executable is a root-owned regular file named `ssh` (null: not read).
    pub verified: Option<bool>,
    pub cmdline: Option<String>,
    /// The process that ran it: `{pid, cmdline}`.
    pub parent: Option<ParentInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParentInfo {
    pub pid: u32,
    pub cmdline: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SshdInfo {
    pub pid: u32,
    pub comm: String,
    pub role: Role,
    pub listener_pid: Option<u32>,
}

/// One kernel event behind a verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Evidence {
    /// `tcp:tcp_send_reset`; `current_*` is the task that was running (the closer when the
    /// reset came from a close in process context).
    /// What the listener wrote on the connection before closing it, as the kernel copied it
    /// from the write (e.g. `Not allowed at this time`).
    ListenerWrote {
        ts: String,
        pid: u32,
        text: String,
    },
    TcpSendReset {
        ts: String,
        reason: String,
        state: String,
        current_pid: u32,
        current_comm: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        segment_flags: Option<String>,
        /// More resets like this one (answers to the client's retransmissions), counted.
        #[serde(skip_serializing_if = "is_zero")]
        repeated: u32,
    },
    TcpReceiveReset {
        ts: String,
    },
    /// `sock:inet_sock_set_state` into TCP_CLOSE.
    TcpClose {
        ts: String,
    },
    /// `accept` returned the connection in this process.
    Accept {
        ts: String,
        pid: u32,
    },
    /// `sched_process_exit`.
    Exit {
        ts: String,
        pid: u32,
        comm: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_status: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        core_dumped: bool,
    },
    /// `signal:signal_generate`.
    Signal {
        ts: String,
        pid: u32,
        comm: String,
        signal: String,
        si_code: i32,
        /// `kernel` (a fault or the kernel's own) or `process` (kill, tgkill, sigqueue).
        origin: &'static str,
        sender_pid: u32,
        sender_comm: String,
    },
    /// Where sshd listened when the verdict was made (from /proc).
    Listening {
        sshd_pids: Vec<u32>,
        addresses: Vec<String>,
    },
    /// A `sys_exit_*` of `FAILURE_SYSCALLS` with an error, for a tracked process.
    SyscallError {
        ts: String,
        pid: u32,
        comm: String,
        syscall: String,
        errno: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Identical failures before this one that the kernel counted without sending.
        repeated: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<LimitFacts>,
        /// For EACCES on a path: what the mode bits would have decided.
        #[serde(skip_serializing_if = "Option::is_none")]
        dac: Option<DacFacts>,
    },
    /// An LSM's own report of a denial: `avc:selinux_audited`, or an audit record.
    LsmDenial {
        ts: String,
        pid: u32,
        comm: String,
        source: &'static str,
        lsm: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        operation: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        facts: std::collections::BTreeMap<String, String>,
    },
    /// `skb:kfree_skb` with reason NETFILTER_DROP.
    FirewallDrop {
        ts: String,
        /// `inbound` (to sshd) or `outbound`.
        direction: &'static str,
        tcp_flags: String,
    },
    /// `tcp:tcp_receive_reset` on a client socket of this host for this connection.
    ClientReceivedReset {
        ts: String,
    },
    /// `oom:mark_victim`.
    OomKill {
        ts: String,
        pid: u32,
        comm: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        total_vm_kb: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        anon_rss_kb: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        file_rss_kb: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        shmem_rss_kb: Option<u64>,
        oom_score_adj: i16,
        trigger_pid: u32,
        trigger_comm: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        memcg: Option<LimitFacts>,
    },
}

impl Evidence {
    /// When it happened; `None` for facts read at verdict time.
    pub fn ts(&self) -> Option<&str> {
        match self {
            Self::ListenerWrote { ts, .. }
            | Self::TcpSendReset { ts, .. }
            | Self::TcpReceiveReset { ts }
            | Self::TcpClose { ts }
            | Self::Accept { ts, .. }
            | Self::Exit { ts, .. }
            | Self::Signal { ts, .. }
            | Self::SyscallError { ts, .. }
            | Self::FirewallDrop { ts, .. }
            | Self::LsmDenial { ts, .. }
            | Self::ClientReceivedReset { ts }
            | Self::OomKill { ts, .. } => Some(ts),
            Self::Listening { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub schema: &'static str,
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub ts: String,
    pub host: String,
    /// `server`: the connection's sshd side is on this host; `client`: its `ssh` is
    /// (`sshtrace client`).
    pub side: &'static str,
    pub outcome: Outcome,
    pub cause: Cause,
    pub conn: ConnInfo,
    pub sshd: Option<SshdInfo>,
    /// `sshtrace client`: the process that connected (absent on the server side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// The container sshd runs in; null on the host.
    pub container: Option<Container>,
    /// Cause-specific fields (docs/events.md lists them per cause).
    pub details: Map<String, Value>,
    pub evidence: Vec<Evidence>,
    /// The last messages the connection's sshd processes logged, taken by the kernel where
    /// sshd wrote them (oldest first). Context, never the evidence of a cause.
    pub sshd_log: Vec<SshdLogEntry>,
    pub summary: String,
    pub hint: String,
}

impl Verdict {
    /// The connections this verdict stands for: a refusal the kernel aggregated counts as
    /// the attempts it was (`details.repeated` more), in the summary and in the metrics alike.
    pub fn connections(&self) -> u64 {
        let repeated = self
            .details
            .get("repeated")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        1 + repeated
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SshdLogEntry {
    pub ts: String,
    pub pid: u32,
    /// `stderr` or `syslog`.
    pub via: crate::trace::sshd_output::OutputChannel,
    pub message: String,
}

/// Signal names for numbers; real-time signals as `SIGRTMIN+n`.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match sig {
        1..=31 => NAMES[sig as usize].to_owned(),
        32..=64 => format!("SIGRTMIN+{}", sig - 32),
        _ => format!("signal {sig}"),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(34), "SIGRTMIN+2");
        assert_eq!(signal_name(0), "signal 0");
    }
}
