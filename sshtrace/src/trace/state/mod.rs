//! What sshtrace knows between events: the connections on tracked ports and the tracked sshd
//! process tree. Events update it in order; causes read it when a connection has ended.

pub mod connections;
pub mod processes;
pub mod recent;
mod transitions;

use crate::{
    kernel::names::KernelNames,
    trace::events::{Event, Kind, SockHistory},
};
pub use connections::{
    ClientProcess, Closer, ConnId, Connection, ConnectionTable, DroppedSegment, ListenerNote,
    LogLine, PathDrop, ResetSent, StrayReset,
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
        syn_sent: value("TCP_SYN_SENT", known.syn_sent),
        fin_wait2: value("TCP_FIN_WAIT2", known.fin_wait2),
        closing: value("TCP_CLOSING", known.closing),
        last_ack: value("TCP_LAST_ACK", known.last_ack),
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
    pub states: TcpStates,
}

/// What a tenant could grow without bound, counted instead of kept: signals to a process and
/// LSM denials beyond the latest few, dropped segments of one connection beyond the first few.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotKept {
    pub signals: u64,
    pub lsm_denials: u64,
    pub drops: u64,
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

    /// Updates what is known with one event, in the order they happened.
    pub fn apply(&mut self, event: &Event) {
        match &event.kind {
            Kind::SockState { .. } => self.on_sock_state(event),
            Kind::SendReset { .. } => self.on_reset_sent(event),
            Kind::ReceiveReset {
                client_side: false, ..
            } => self.on_reset_received(event),
            Kind::ReceiveReset {
                client_side: true, ..
            } => self.on_client_received_reset(event),
            Kind::FirewallDrop { .. } => self.on_firewall_drop(event),
            Kind::Accept {
                claimed: Some(_),
                inherited: true,
                ..
            } => self.on_inherited_connection(event),
            Kind::Accept { .. } => self.on_accept(event),
            Kind::Fork { .. } => self.on_fork(event),
            Kind::Exec { .. } => self.on_exec(event),
            Kind::Exit { .. } => self.on_exit(event),
            Kind::Signal { .. } => self.on_signal(event),
            Kind::SyscallError { .. } => self.on_syscall_error(event),
            Kind::LsmDenial(_) => self.on_lsm_denial(event),
            Kind::SshdOutput(output) => self.on_sshd_output(event, output),
            Kind::OomVictim { .. } => self.on_oom_victim(event),
            Kind::ResetFingerprint { .. } => self.on_reset_fingerprint(event),
            Kind::ClientConnect { .. } => self.on_client_connect(event),
        }
    }

    /// Connections whose settle time has passed at `now_ns`, removed from the table together
    /// with the exited processes that belonged only to them.
    pub fn take_settled(&mut self, now_ns: u64, limit: usize) -> Vec<(Connection, Vec<Process>)> {
        self.refusals_waiting = false;
        self.conns
            .take_ended_before(now_ns.saturating_sub(SETTLE_NS), limit)
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
