//! What sshtrace knows between events: the connections on tracked ports and the tracked sshd
//! process tree. Events update it in order; causes read it when a connection has ended.

pub mod connections;
pub mod processes;
pub mod recent;

use crate::{
    events::{ConnTuple, Event, Kind, SockHistory, TCP_SYN},
    kernel::names::KernelNames,
    sshd_output::{OutputChannel, SshdOutput},
};
pub use connections::{
    Closer, ConnId, Connection, ConnectionTable, Drop, ListenerNote, LogLine, ResetSent, StrayReset,
};
pub use processes::{ExitInfo, OomKill, Process, ProcessTable, SignalInfo, SyscallError};
pub use recent::{Earlier, RecentVerdicts};

/// How long after a connection ends its verdict waits for late evidence (the exit of the
/// process that closed it, a signal's sender, a privsep child's status). Documented in
/// docs/events.md.
pub const SETTLE_NS: u64 = 300_000_000;

/// Extra wait for connections seen only through firewall drops: the first SYN retransmission
/// (1 s) tells a DROP from a REJECT.
pub const FIREWALL_SETTLE_NS: u64 = 1_200_000_000;

/// TCP states used to follow a connection's life, by their numbers on this kernel (the
/// kernel-side socket history uses the same).
pub use sshtrace_common::TcpStateNumbers as TcpStates;

/// This kernel's TCP state numbers. The values have been the same since TCP states were
/// numbered; BTF decides anyway.
pub fn tcp_states(names: &KernelNames) -> TcpStates {
    let known = TcpStates::LINUX;
    let value = |name: &str, default: i32| names.tcp_state_value(name).unwrap_or(default);
    TcpStates {
        established: value("TCP_ESTABLISHED", known.established),
        syn_recv: value("TCP_SYN_RECV", known.syn_recv),
        fin_wait1: value("TCP_FIN_WAIT1", known.fin_wait1),
        close: value("TCP_CLOSE", known.close),
        close_wait: value("TCP_CLOSE_WAIT", known.close_wait),
        listen: value("TCP_LISTEN", known.listen),
    }
}

/// What the kernel noted of a connection between its records.
fn apply_history(c: &mut Connection, history: &SockHistory) {
    if let Some(established) = history.established_ns {
        c.first_ts = c.first_ts.min(established);
        c.established_ts.get_or_insert(established);
    }
    if let (Some(local), None) = (history.first_fin_local, c.closed_first_by) {
        c.closed_first_by = Some(if local { Closer::Sshd } else { Closer::Peer });
    }
}

pub struct State {
    pub conns: ConnectionTable,
    pub procs: ProcessTable,
    /// Resets answering late segments of connections already judged (a crashed session's
    /// client retransmitting): part of those verdicts' incidents, counted, not judged again.
    pub late_resets_after_verdict: u64,
    /// Items past their bounds, counted instead of kept.
    pub not_kept: NotKept,
    /// Refused attempts to judge at once are waiting (see `Connection::settle_at_once`).
    pub refusals_waiting: bool,
    /// The latest verdict per client address.
    pub recent: RecentVerdicts,
    states: TcpStates,
}

/// What a tenant could grow without bound, counted instead of kept: signals to a process and
/// LSM denials beyond the latest few, dropped segments of one connection beyond the first few.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotKept {
    pub signals: u64,
    pub lsm_denials: u64,
    pub drops: u64,
    /// sshd log messages of a connection beyond the latest few.
    pub log_lines: u64,
}

impl State {
    pub fn new(states: TcpStates) -> Self {
        Self {
            conns: ConnectionTable::default(),
            procs: ProcessTable::default(),
            late_resets_after_verdict: 0,
            not_kept: NotKept::default(),
            refusals_waiting: false,
            recent: RecentVerdicts::default(),
            states,
        }
    }

    pub fn apply(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let s = self.states;
        match &event.kind {
            Kind::SockState {
                skaddr,
                old_state,
                new_state,
                conn,
                history,
            } => {
                if *new_state == s.listen {
                    // In process context: the task is the one that listens. Only a tracked
                    // sshd's listening is remembered (to say how a listener that is gone ended).
                    if let Some(p) = self.procs.get_mut(event.task.pid) {
                        p.note_listening(conn.local);
                    }
                    return;
                }
                if *old_state == s.listen && *new_state != s.syn_recv {
                    return; // the listening socket itself
                }
                // A connection's first record: its creation, or (the kernel noting creation
                // only) its establishment.
                let id = if *new_state == s.syn_recv
                    || (*old_state == s.syn_recv && *new_state == s.established)
                {
                    self.conns.open(*skaddr, *conn, ts)
                } else {
                    self.conns.by_skaddr_or_open(*skaddr, *conn, ts)
                };
                let c = self.conns.get_mut(id).expect("just looked up");
                apply_history(c, history);
                if *new_state == s.established {
                    c.established_ts.get_or_insert(ts);
                }
                if *old_state == s.established && c.closed_first_by.is_none() {
                    if *new_state == s.fin_wait1 {
                        c.closed_first_by = Some(Closer::Sshd);
                    } else if *new_state == s.close_wait {
                        c.closed_first_by = Some(Closer::Peer);
                    }
                }
                if *new_state == s.close {
                    c.closed_ts.get_or_insert(ts);
                    c.end(ts);
                }
            }
            Kind::SendReset {
                skaddr,
                state,
                reason,
                repeated,
                seg_flags,
                conn,
            } => {
                let reset = ResetSent {
                    ts_ns: ts,
                    reason: *reason,
                    state: *state,
                    seg_flags: *seg_flags,
                    repeated: *repeated,
                    current: event.task.clone(),
                };
                let id = if *skaddr == 0 || *state == s.listen {
                    // No connection socket: answered by the stack or by the listener.
                    match self.conns.stray_reset(*conn, *seg_flags, ts) {
                        StrayReset::Joins(id) => id,
                        StrayReset::AfterVerdict => {
                            self.late_resets_after_verdict += 1 + u64::from(*repeated);
                            return;
                        }
                        StrayReset::New => {
                            let id = self.conns.orphan(*conn, ts);
                            let attempt = seg_flags.is_some_and(|f| f & TCP_SYN != 0);
                            if let (Some(c), true) = (self.conns.get_mut(id), attempt) {
                                c.settle_at_once = true;
                                self.refusals_waiting = true;
                            }
                            id
                        }
                    }
                } else {
                    self.conns.by_skaddr_or_open(*skaddr, *conn, ts)
                };
                let c = self.conns.get_mut(id).expect("just looked up");
                c.add_reset(reset);
                c.end(ts);
            }
            Kind::ReceiveReset {
                skaddr,
                client_side: false,
                conn,
            } => {
                let id = self.conns.by_skaddr_or_open(*skaddr, *conn, ts);
                let c = self.conns.get_mut(id).expect("just looked up");
                c.resets_received.push(ts);
                c.end(ts);
            }
            Kind::ReceiveReset {
                client_side: true,
                conn,
                ..
            } => {
                // A client on this host got a reset: evidence for the server-side connection
                // it belongs to (e.g. a firewall's REJECT), never a connection of its own.
                // The client may sit in another network namespace than sshd: match addresses.
                let server_view = ConnTuple {
                    local: conn.remote,
                    remote: conn.local,
                    netns: 0,
                };
                if let Some(c) = self.conns.by_tuple_mut(server_view) {
                    c.client_resets.push(ts);
                }
            }
            Kind::FirewallDrop {
                conn,
                tcp_flags,
                inbound,
                suppressed,
            } => {
                let c = self.conns.by_tuple_or_orphan(*conn, ts);
                let drop = Drop {
                    ts_ns: ts,
                    tcp_flags: *tcp_flags,
                    inbound: *inbound,
                };
                self.not_kept.drops += c.add_drop(drop, *suppressed);
                if c.skaddr == 0 {
                    // No socket will ever close it: a verdict once the client had time to
                    // retransmit (DROP) or get the reset (REJECT).
                    c.extra_settle_ns = FIREWALL_SETTLE_NS;
                    c.end(ts);
                }
            }
            Kind::Accept {
                claimed: Some(a),
                inherited: true,
                ..
            } => {
                // inetd mode: the process serves the connection it was started with.
                let pid = event.task.pid;
                let id = self.conns.live_or_open(a.skaddr, a.conn, ts);
                let c = self.conns.get_mut(id).expect("just looked up");
                apply_history(c, &a.history);
                c.accept_ts = Some(ts);
                c.session_pid.get_or_insert(pid);
                self.procs.touch(pid, &event.task.comm, ts).conn = Some(id);
            }
            Kind::Accept {
                ret, peer, claimed, ..
            } => {
                let pid = event.task.pid;
                self.procs.touch(pid, &event.task.comm, ts);
                if *ret < 0 {
                    return;
                }
                // Reported at its accept (claimed), or earlier: then found by its peer.
                let accepted = match claimed {
                    Some(a) => {
                        let id = self.conns.live_or_open(a.skaddr, a.conn, ts);
                        let c = self.conns.get_mut(id).expect("just looked up");
                        apply_history(c, &a.history);
                        Some(id)
                    }
                    None => peer.and_then(|p| self.conns.unaccepted_from(p)),
                };
                if let Some(id) = accepted {
                    let c = self.conns.get_mut(id).expect("just looked up");
                    c.listener_pid = Some(pid);
                    c.accept_ts = Some(ts);
                    self.procs.touch(pid, &event.task.comm, ts).pending_accept = Some(id);
                }
            }
            Kind::Fork { child } => {
                let parent = self.procs.touch(event.task.pid, &event.task.comm, ts);
                // sshd forks the per-connection process right after accepting.
                let conn = parent.pending_accept.take().or(parent.conn);
                let new = self
                    .procs
                    .fork(event.task.pid, *child, &event.task.comm, ts);
                new.conn = conn;
                if let Some(c) = conn.and_then(|id| self.conns.get_mut(id)) {
                    c.session_pid.get_or_insert(*child);
                }
            }
            Kind::Exec { filename, .. } => {
                let p = self.procs.touch(event.task.pid, &event.task.comm, ts);
                p.comm = event.task.comm.clone();
                p.exe = Some(filename.clone());
            }
            Kind::Exit {
                exit_code,
                memcg_pages,
            } => {
                let p = self.procs.touch(event.task.pid, &event.task.comm, ts);
                p.exit = Some(ExitInfo {
                    ts_ns: ts,
                    code: *exit_code,
                });
                // The OOM victim's memory cgroup, read from the victim as it exits.
                if let (Some(oom), Some((max, usage))) = (p.oom.as_mut(), memcg_pages) {
                    oom.memcg = Some(crate::limits::memory_cgroup_read_in_kernel(*max, *usage));
                }
            }
            Kind::Signal {
                target,
                target_comm,
                sig,
                code,
                result,
            } => {
                let p = self.procs.touch(*target, target_comm, ts);
                self.not_kept.signals += p.record_signal(SignalInfo {
                    ts_ns: ts,
                    sig: *sig,
                    code: *code,
                    result: *result,
                    sender: event.task.clone(),
                });
            }
            Kind::SyscallError {
                syscall,
                errno,
                suppressed,
                path,
                limit,
                dac,
                ..
            } => {
                let p = self.procs.touch(event.task.pid, &event.task.comm, ts);
                p.record_error(SyscallError {
                    ts_ns: ts,
                    syscall: syscall.clone(),
                    errno: *errno,
                    suppressed: *suppressed,
                    path: path.clone(),
                    limit: limit.clone(),
                    dac: dac.clone(),
                });
            }
            Kind::LsmDenial(denial) => {
                // Audit records cover every process on the host: keep only tracked ones.
                if let Some(p) = self.procs.get_mut(event.task.pid) {
                    self.not_kept.lsm_denials += p.record_lsm_denial(ts, denial.clone());
                }
            }
            Kind::SshdOutput(output) => self.apply_sshd_output(event, output),
            Kind::OomVictim {
                pid,
                uid,
                memory_kb,
                oom_score_adj,
            } => {
                let p = self.procs.touch(*pid, "", ts);
                p.oom = Some(OomKill {
                    ts_ns: ts,
                    uid: *uid,
                    memory_kb: *memory_kb,
                    oom_score_adj: *oom_score_adj,
                    memcg: None,
                    trigger: event.task.clone(),
                });
            }
        }
    }

    /// A log message goes to the connection its process serves; the listener's to the
    /// connection it just accepted when the message names that client's port (its drop
    /// notice), else nowhere. A note written on a connection is the listener's words to it.
    fn apply_sshd_output(&mut self, event: &Event, output: &SshdOutput) {
        let (ts, pid) = (event.ts_ns, event.task.pid);
        if output.channel == OutputChannel::ClientSocket {
            if let Some(c) = self.conns.live_by_skaddr(output.skaddr) {
                c.listener_note.get_or_insert(ListenerNote {
                    ts_ns: ts,
                    pid,
                    text: output.message(),
                    note: output.drop_note(),
                });
            }
            return;
        }
        let Some(p) = self.procs.get_mut(pid) else {
            return;
        };
        let message = output.message();
        let conn = p.conn.or_else(|| {
            let id = p.pending_accept?;
            let port = self.conns.get_mut(id)?.tuple.remote.port();
            names_port(&message, port).then_some(id)
        });
        let Some(c) = conn.and_then(|id| self.conns.get_mut(id)) else {
            return;
        };
        self.not_kept.log_lines += c.add_log_line(LogLine {
            ts_ns: ts,
            pid,
            channel: output.channel,
            message,
        });
    }

    /// Connections whose settle time has passed at `now_ns`, removed from the table together
    /// with the exited processes that belonged only to them.
    pub fn take_settled(&mut self, now_ns: u64) -> Vec<(Connection, Vec<Process>)> {
        self.refusals_waiting = false;
        self.conns
            .take_ended_before(now_ns.saturating_sub(SETTLE_NS))
            .into_iter()
            .map(|c| {
                let tree = self.procs.detach_connection(c.id);
                (c, tree)
            })
            .collect()
    }

    /// Forgets processes that exited long ago and belong to no connection.
    pub fn prune(&mut self, now_ns: u64) {
        self.procs
            .prune_exited_before(now_ns.saturating_sub(60 * 1_000_000_000));
    }
}

/// Whether sshd's message names client port `port`: `[A]:P` (drop notices) or `port P`.
fn names_port(message: &str, port: u16) -> bool {
    [format!("]:{port}"), format!("port {port}")]
        .iter()
        .any(|needle| {
            message.match_indices(needle.as_str()).any(|(at, _)| {
                !message[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
}
