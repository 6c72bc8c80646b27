//! Cause rules: small pure functions over a finished connection and its process tree. Each
//! returns a [`Finding`] when its evidence is there; [`judge`] asks them from the most to the
//! least specific and assembles the verdict. No evidence, no cause: the fallback is `unknown`
//! with the raw facts.

mod client_side;
mod closed_preauth;
mod firewall;
mod kernel_abort;
mod lsm_denied;
mod not_listening;
mod oom_killed;
mod peer_reset;
pub mod reset_from;
pub mod resource_limit;
mod roles;
mod socket_killed;
mod sshd_crashed;
mod sshd_dropped;
mod sshd_exited;
mod sshd_killed;

use serde_json::{Map, Value};

use crate::{
    clock::Clock,
    enrich::{discovery::Snapshot, netns::NetnsNames},
    escape,
    kernel::syscalls::errno_name,
    kernel::{lsm::ActiveLsms, names::KernelNames},
    trace::events::TCP_SYN,
    trace::state::{
        Connection, ConnectionTable, Process, ProcessTable, RecentVerdicts, SyscallError,
    },
    verdict::{
        signal_name, Cause, ConnInfo, Evidence, Outcome, ParentInfo, ProcessInfo, SshdInfo,
        SshdLogEntry, Verdict, SCHEMA,
    },
};

/// What the rules may look at besides the connection: its background.
pub struct Background<'a> {
    pub names: &'a KernelNames,
    /// Which LSMs could have denied an access here.
    pub lsms: &'a ActiveLsms,
    /// The other connections still followed (e.g. a listener's pending ones).
    pub conns: &'a ConnectionTable,
    pub sshd: &'a Snapshot,
    /// Every tracked process still remembered (e.g. listeners that exited recently).
    pub procs: &'a ProcessTable,
    /// The latest verdict per client address (what a penalty followed).
    pub recent: &'a RecentVerdicts,
    pub clock: &'a Clock,
    pub host: &'a str,
    /// Where a dropping firewall's network namespace is, by name.
    pub netns: &'a NetnsNames,
}

/// A rule's conclusion.
pub struct Finding {
    pub cause: Cause,
    /// The sshd process the cause is about, when there is one.
    pub pid: Option<u32>,
    pub details: Map<String, Value>,
    pub evidence: Vec<Evidence>,
    pub summary: String,
    pub hint: String,
}

/// A connection and everything known about its end.
pub struct Ended<'a> {
    pub conn: &'a Connection,
    /// The processes that served it, oldest first.
    pub tree: &'a [Process],
    pub outcome: Outcome,
}

impl Ended<'_> {
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.tree.iter().find(|p| p.pid == pid)
    }

    pub fn in_tree(&self, pid: u32) -> bool {
        self.process(pid).is_some()
    }

    /// When the connection ended, or began if it has not.
    pub fn end_ts(&self) -> u64 {
        self.conn.end_ts.unwrap_or(self.conn.first_ts)
    }

    /// "sshd[812]" with the comm escaped, for summaries.
    pub fn name(&self, pid: u32) -> String {
        let comm = self.process(pid).map(|p| p.comm.as_str()).unwrap_or("?");
        format!("{}[{pid}]", escape::text(comm))
    }
}

type Rule = fn(&Ended, &Background) -> Option<Finding>;

/// From the most specific to the least: what killed or starved sshd comes before what sshd
/// then did about it, and the network-level explanations come last.
const RULES: &[Rule] = &[
    not_listening::judge,
    firewall::judge,
    oom_killed::judge,
    sshd_killed::judge,
    sshd_crashed::judge,
    resource_limit::judge,
    lsm_denied::judge,
    lsm_denied::judge_permission,
    socket_killed::judge,
    sshd_dropped::judge,
    sshd_exited::judge,
    peer_reset::judge,
    kernel_abort::judge,
    closed_preauth::judge,
];

/// The verdict for a finished connection, or `None` for a healthy one (an orderly close with
/// nothing abnormal in its process tree).
pub fn judge(conn: &Connection, tree: &[Process], ctx: &Background) -> Option<Verdict> {
    let ended = Ended {
        conn,
        tree,
        outcome: outcome(conn),
    };
    let finding = RULES
        .iter()
        .find_map(|rule| rule(&ended, ctx))
        .or_else(|| {
            let deaths = unexplained_deaths(&ended, ctx);
            (ended.outcome != Outcome::Closed || !deaths.is_empty())
                .then(|| unexplained(&ended, deaths))
        })?;
    Some(assemble(&ended, finding, ctx))
}

/// `sshtrace client`: the verdict for a connection of this host's `ssh`, or `None` when it
/// ended in order.
pub fn judge_client(conn: &Connection, ctx: &Background) -> Option<Verdict> {
    let ended = Ended {
        conn,
        tree: &[],
        outcome: outcome(conn),
    };
    let finding = client_side::judge(&ended, ctx)?;
    let mut verdict = assemble(&ended, finding, ctx);
    verdict.side = "client";
    verdict.outcome = if conn.established_ts.is_none() && ended.outcome != Outcome::ResetSent {
        Outcome::Refused
    } else {
        ended.outcome
    };
    verdict.process = conn.client_process().map(|p| ProcessInfo {
        pid: p.pid,
        comm: p.comm.clone(),
        executable: p.executable.clone(),
        verified: p.verified,
        cmdline: p.cmdline.clone(),
        parent: p
            .parent
            .clone()
            .map(|(pid, cmdline)| ParentInfo { pid, cmdline }),
    });
    Some(verdict)
}

/// A verdict for a listener that cannot accept the connections waiting for it (no
/// connection has ended: the clients are timing out).
/// `queued`: connections waiting that only the kernel knows (not reported until accepted).
pub fn judge_stalled(
    listener: u32,
    ports: &[u16],
    queued: &[Connection],
    now_ns: u64,
    ctx: &Background,
) -> Option<Verdict> {
    let process = ctx.procs.get(listener)?;
    let mut waiting: Vec<&Connection> = ctx
        .conns
        .waiting()
        .filter(|c| ports.contains(&c.tuple.local.port()))
        .collect();
    let known: std::collections::HashSet<u64> = waiting.iter().map(|c| c.skaddr).collect();
    waiting.extend(queued.iter().filter(|q| !known.contains(&q.skaddr)));
    let oldest = *waiting.iter().min_by_key(|c| c.first_ts)?;
    let finding = resource_limit::stalled(process, oldest, waiting.len(), now_ns, ctx)?;
    let ended = Ended {
        conn: oldest,
        tree: &[],
        outcome: Outcome::Stalled,
    };
    let mut verdict = assemble(&ended, finding, ctx);
    verdict.ts = ctx.clock.rfc3339(now_ns);
    Some(verdict)
}

fn outcome(conn: &Connection) -> Outcome {
    let sent = conn.resets_sent.first().map(|r| r.ts_ns);
    let received = conn.resets_received().first().copied();
    match (sent, received) {
        (Some(s), r) if r.is_none_or(|r| s <= r) => {
            if conn.skaddr == 0 {
                Outcome::Refused
            } else {
                Outcome::ResetSent
            }
        }
        (_, Some(_)) => Outcome::ResetReceived,
        // Only a firewall saw it: it never reached a socket.
        _ if conn.skaddr == 0 && !conn.drops().is_empty() => {
            if conn.client_resets().is_empty() {
                Outcome::Dropped
            } else {
                Outcome::Refused
            }
        }
        _ => Outcome::Closed,
    }
}

/// Processes of the connection killed by a signal that did not come from the connection's own
/// sshd tree (sshd's monitor kills its children with SIGKILL as routine cleanup).
pub(crate) fn unexplained_deaths(e: &Ended, ctx: &Background) -> Vec<Evidence> {
    let mut out = Vec::new();
    for p in e.tree {
        let Some(sig) = p.exit.and_then(|x| x.signal()) else {
            continue;
        };
        let from_tree = p.signals.iter().any(|s| {
            s.sig == sig
                && s.sent_by_a_process()
                && e.in_tree(s.sender.pid)
                && s.sender.pid != p.pid
        });
        if from_tree {
            continue;
        }
        out.extend(
            p.signals
                .iter()
                .filter(|s| s.sig == sig)
                .map(|s| signal_evidence(p, s, ctx)),
        );
        out.extend(exit_evidence(p, ctx));
    }
    out
}

/// How many signals a process survived the evidence shows (a tenant can signal its own
/// session process in a loop).
const SHOWN_SURVIVED_SIGNALS: usize = 4;

/// Signals from outside the connection's sshd tree that a process survived (handled, ignored
/// or blocked): evidence, never a cause.
fn survived_signals(e: &Ended, ctx: &Background) -> Vec<Evidence> {
    e.tree
        .iter()
        .flat_map(|p| {
            let fatal = p.fatal_signal().map(|s| s as *const _);
            p.signals
                .iter()
                .filter(move |s| Some(*s as *const _) != fatal)
                .filter(|s| s.sent_by_a_process() && !e.in_tree(s.sender.pid))
                .take(SHOWN_SURVIVED_SIGNALS)
                .map(move |s| signal_evidence(p, s, ctx))
        })
        .collect()
}

fn unexplained(e: &Ended, evidence: Vec<Evidence>) -> Finding {
    let what = match e.outcome {
        Outcome::ResetSent => "this host sent a reset",
        Outcome::ResetReceived => "a reset arrived from the network",
        Outcome::Refused => "this host answered a segment with a reset",
        Outcome::Closed => "the connection closed after an sshd process was killed",
        Outcome::Stalled => "the connection is stalled",
        Outcome::Dropped => "its segments were dropped",
    };
    Finding {
        cause: Cause::Unknown,
        pid: None,
        details: Map::new(),
        evidence,
        summary: format!("{what}; the kernel evidence does not decide why"),
        hint: "the evidence lists every kernel event seen for this connection; run with -v and \
               check sshd's log (journalctl -u ssh, /var/log/auth.log) around this time"
            .into(),
    }
}

fn assemble(e: &Ended, finding: Finding, ctx: &Background) -> Verdict {
    let conn = e.conn;
    let ts = conn.end_ts.unwrap_or(conn.first_ts);
    let mut evidence = connection_evidence(e, ctx);
    evidence.extend(finding.evidence);
    evidence.extend(survived_signals(e, ctx));
    // In time order (RFC 3339 strings of one length sort as times), undated facts last.
    evidence.sort_by(|a, b| (a.ts().is_none(), a.ts()).cmp(&(b.ts().is_none(), b.ts())));
    let mut details = finding.details;
    if conn.sshd_log_not_kept() > 0 {
        details.insert("sshd_log_not_kept".into(), conn.sshd_log_not_kept().into());
    }
    let sshd_pid = finding.pid.or(conn.session_pid).or(conn.listener_pid);
    let sshd = sshd_pid.map(|pid| {
        let comm = e
            .process(pid)
            .map(|p| p.comm.clone())
            .unwrap_or_else(|| "sshd".into());
        let role = roles::role_of(pid, e, ctx);
        SshdInfo {
            pid,
            comm,
            role,
            listener_pid: conn.listener_pid,
        }
    });
    Verdict {
        schema: SCHEMA,
        record_type: "verdict",
        ts: ctx.clock.rfc3339(ts),
        host: ctx.host.to_owned(),
        side: "server",
        outcome: e.outcome,
        cause: finding.cause,
        conn: ConnInfo {
            local_addr: conn.tuple.local.ip().to_string(),
            local_port: conn.tuple.local.port(),
            remote_addr: conn.tuple.remote.ip().to_string(),
            remote_port: conn.tuple.remote.port(),
            netns: (conn.tuple.netns != 0).then_some(conn.tuple.netns),
        },
        sshd,
        process: None,
        container: container_of(conn, ctx),
        details,
        evidence,
        sshd_log: sshd_log(conn, ctx),
        summary: finding.summary,
        hint: finding.hint,
    }
}

/// The connection's sshd log messages, for the verdict (escaped by every output format).
fn sshd_log(conn: &Connection, ctx: &Background) -> Vec<SshdLogEntry> {
    conn.sshd_log()
        .map(|l| SshdLogEntry {
            ts: ctx.clock.rfc3339(l.ts_ns),
            pid: l.pid,
            via: l.channel,
            message: l.message.clone(),
        })
        .collect()
}

/// The container the connection's sshd runs in: the accepting listener's, else the one whose
/// network namespace the connection is in. `None` on the host.
fn container_of(
    conn: &Connection,
    ctx: &Background,
) -> Option<crate::enrich::container::Container> {
    let listeners = &ctx.sshd.listeners;
    let listener = conn
        .listener_pid
        .and_then(|pid| listeners.get(&pid))
        .or_else(|| {
            listeners
                .values()
                .find(|l| conn.tuple.netns != 0 && l.netns == Some(conn.tuple.netns as u64))
        })
        .or_else(|| {
            ctx.sshd
                .gone
                .iter()
                .find(|l| conn.tuple.netns != 0 && l.netns == Some(conn.tuple.netns as u64))
        })?;
    // Its name and pod are looked up after judging (`enrich::names`): rules read no host.
    listener.container.clone()
}

/// The connection's own kernel events: accept, resets, close.
fn connection_evidence(e: &Ended, ctx: &Background) -> Vec<Evidence> {
    let conn = e.conn;
    let mut out = Vec::new();
    if let (Some(ts), Some(pid)) = (conn.accept_ts, conn.listener_pid) {
        out.push(Evidence::Accept {
            ts: ctx.clock.rfc3339(ts),
            pid,
        });
    }
    if let Some(n) = &conn.listener_note() {
        out.push(Evidence::ListenerWrote {
            ts: ctx.clock.rfc3339(n.ts_ns),
            pid: n.pid,
            text: n.text.clone(),
        });
    }
    for r in &conn.resets_sent {
        out.push(Evidence::TcpSendReset {
            ts: ctx.clock.rfc3339(r.ts_ns),
            reason: r
                .reason
                .map(|v| ctx.names.rst_reason(v))
                .unwrap_or_else(|| "unknown".into()),
            state: if conn.skaddr == 0 {
                "none".into()
            } else {
                ctx.names.tcp_state(r.state)
            },
            current_pid: r.current.pid,
            current_comm: r.current.comm.clone(),
            segment_flags: r.seg_flags.map(tcp_flags),
            repeated: if conn.skaddr == 0 { 0 } else { r.repeated },
        });
    }
    for &ts in conn.resets_received() {
        out.push(Evidence::TcpReceiveReset {
            ts: ctx.clock.rfc3339(ts),
        });
    }
    if let Some(ts) = conn.closed_ts {
        out.push(Evidence::TcpClose {
            ts: ctx.clock.rfc3339(ts),
        });
    }
    for d in conn.drops() {
        out.push(Evidence::FirewallDrop {
            ts: ctx.clock.rfc3339(d.ts_ns),
            direction: if d.inbound { "inbound" } else { "outbound" },
            tcp_flags: tcp_flags(d.tcp_flags),
        });
    }
    for &ts in conn.client_resets() {
        out.push(Evidence::ClientReceivedReset {
            ts: ctx.clock.rfc3339(ts),
        });
    }
    out
}

/// E.g. `SYN` or `ACK|PSH`.
pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (TCP_SYN, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// Evidence of a process's death.
pub(crate) fn exit_evidence(p: &Process, ctx: &Background) -> Option<Evidence> {
    let exit = p.exit?;
    Some(Evidence::Exit {
        ts: ctx.clock.rfc3339(exit.ts_ns),
        pid: p.pid,
        comm: p.comm.clone(),
        exit_status: exit.status(),
        signal: exit.signal().map(signal_name),
        core_dumped: exit.core_dumped(),
    })
}

pub(crate) fn signal_evidence(
    p: &Process,
    s: &crate::trace::state::SignalInfo,
    ctx: &Background,
) -> Evidence {
    Evidence::Signal {
        ts: ctx.clock.rfc3339(s.ts_ns),
        pid: p.pid,
        comm: p.comm.clone(),
        signal: signal_name(s.sig),
        si_code: s.code,
        origin: if s.sent_by_a_process() {
            "process"
        } else {
            "kernel"
        },
        sender_pid: s.sender.pid,
        sender_comm: s.sender.comm.clone(),
    }
}

/// Evidence of a failed system call.
pub(crate) fn syscall_evidence(p: &Process, e: &SyscallError, ctx: &Background) -> Evidence {
    Evidence::SyscallError {
        ts: ctx.clock.rfc3339(e.ts_ns),
        pid: p.pid,
        comm: p.comm.clone(),
        syscall: e.syscall.clone(),
        errno: errno_name(e.errno),
        path: e.path.clone(),
        repeated: e.suppressed,
        limit: e.limit.clone(),
        dac: e.dac.clone(),
    }
}

/// Whether the connection got past authentication, judged from its process tree: a program
/// other than sshd ran (a shell, a command, a subsystem), or a child of the per-connection
/// sshd — OpenSSH's pre-authentication process (`sshd-auth` since 10.0) — exited with status
/// 0, which it does only after a successful login.
pub fn authenticated<'p>(
    tree: impl IntoIterator<Item = &'p Process>,
    session_pid: Option<u32>,
) -> bool {
    tree.into_iter().any(|p| {
        let ran_program = p.exe.is_some() && !p.runs_sshd();
        let auth_child_succeeded = session_pid.is_some()
            && p.parent == session_pid
            && p.runs_sshd()
            && p.exit.and_then(|x| x.status()) == Some(0);
        ran_program || auth_child_succeeded
    })
}

/// "the connection was reset when it closed" and the like, for summaries.
fn consequence(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::ResetSent => "the kernel reset the connection (unread data) as its sockets closed",
        Outcome::ResetReceived => "a reset then arrived from the peer",
        Outcome::Closed => "the connection was closed (FIN)",
        Outcome::Refused => "the connection attempt was refused",
        Outcome::Stalled => "the connection waits for sshd",
        Outcome::Dropped => "nothing answered the client",
    }
}

#[cfg(test)]
mod tests;
