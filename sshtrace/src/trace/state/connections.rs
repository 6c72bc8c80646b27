//! Connections on tracked ports, keyed by their kernel socket address while it lives.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
};

use crate::{
    trace::events::{ConnTuple, Task, TCP_ACK, TCP_SYN},
    trace::reset_fingerprint::ResetFingerprint,
    trace::sshd_output::{DropNote, OutputChannel},
};

pub type ConnId = u64;

/// A segment of the connection netfilter dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedSegment {
    pub ts_ns: u64,
    pub tcp_flags: u8,
    /// On its way to sshd (else from it).
    pub inbound: bool,
}

/// A segment of the connection dropped by netfilter in another network namespace of this
/// host than the connection's own: a box on its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathDrop {
    pub netns: u32,
    pub segment: DroppedSegment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    /// This host's side (sshd) closed first: ESTABLISHED → FIN_WAIT1.
    Sshd,
    /// The client closed first: ESTABLISHED → CLOSE_WAIT.
    Peer,
}

/// A reset this host's TCP stack sent for the connection.
#[derive(Clone, Debug, PartialEq)]
pub struct ResetSent {
    pub ts_ns: u64,
    pub reason: Option<u32>,
    pub state: i32,
    pub seg_flags: Option<u8>,
    /// Identical no-socket resets the kernel counted before this one (a storm).
    pub repeated: u32,
    /// The task that was current: the closer for resets sent from process context.
    pub current: Task,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub id: ConnId,
    pub tuple: ConnTuple,
    /// 0 for resets answered without a socket.
    pub skaddr: u64,
    pub first_ts: u64,
    pub established_ts: Option<u64>,
    pub accept_ts: Option<u64>,
    /// The sshd that accepted it (process context: accept returned in this process).
    pub listener_pid: Option<u32>,
    /// The process the listener forked for it.
    pub session_pid: Option<u32>,
    pub resets_sent: Vec<ResetSent>,
    pub closed_ts: Option<u64>,
    /// Which side sent the first FIN of an orderly close.
    pub closed_first_by: Option<Closer>,
    /// It closed from FIN_WAIT1: the peer never acknowledged this host's FIN (the socket gave
    /// up retransmitting it, orphaned).
    pub fin_unacknowledged: bool,
    /// Waited on top of `SETTLE_NS` before judging.
    pub extra_settle_ns: u64,
    /// Judged as soon as it has ended: a refused connection attempt, which no later event
    /// explains further (and a storm of them must not pile up while they wait).
    pub settle_at_once: bool,
    /// When it first ended (reset or close); verdicts are judged after the settle time.
    pub end_ts: Option<u64>,
    /// Evidence most connections never have, allocated with the first piece: in a storm
    /// thousands of connections wait out their settle time, each as small as it can be.
    extras: Option<Box<Extras>>,
}

/// The rarer evidence of a connection.
#[derive(Clone, Debug, Default, PartialEq)]
struct Extras {
    resets_received: Vec<u64>,
    /// Fingerprints of the resets received (the kernel sends a few per connection).
    reset_fingerprints: Vec<ResetFingerprint>,
    /// Segments netfilter dropped: the first [`KEPT_DROPS`].
    drops: Vec<DroppedSegment>,
    /// Every segment netfilter dropped, those not kept and those the kernel only counted
    /// included.
    drops_total: u64,
    /// Segments netfilter dropped in another network namespace of this host that the
    /// connection crosses (a router's or a CNI's): the first [`KEPT_DROPS`].
    path_drops: Vec<PathDrop>,
    /// Resets a client on this host received for this connection.
    client_resets: Vec<u64>,
    /// The latest log messages its sshd processes wrote (at most [`KEPT_LOG_LINES`]).
    sshd_log: VecDeque<LogLine>,
    /// Log messages older than those kept.
    sshd_log_not_kept: u64,
    /// What the listener wrote on it before closing it, as the kernel copied it.
    listener_note: Option<ListenerNote>,
    /// `sshtrace client`: the process that connected (boxed: a server's storm of connections
    /// with evidence never has one).
    client_process: Option<Box<ClientProcess>>,
}

/// The local process behind a connect (`sshtrace client`): the kernel's pid and name, and
/// what /proc showed of it when the connect was read (`None` once it had exited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientProcess {
    pub pid: u32,
    pub comm: String,
    pub executable: Option<String>,
    /// Its executable is a root-owned regular file named `ssh`: the name alone is not trusted.
    pub verified: Option<bool>,
    pub cmdline: Option<String>,
    /// The process that ran it (`scp`, `rsync`, a shell): pid, and command line when read.
    pub parent: Option<(u32, Option<String>)>,
}

impl ClientProcess {
    pub fn seen(task: &Task) -> Self {
        Self {
            pid: task.pid,
            comm: task.comm.clone(),
            ..Self::default()
        }
    }
}

/// How many of a connection's sshd log messages are kept: the last ones say why it ended.
pub const KEPT_LOG_LINES: usize = 4;

/// A message an sshd process of the connection logged, as it wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub ts_ns: u64,
    pub pid: u32,
    pub channel: OutputChannel,
    pub message: String,
}

/// The listener's words to a client it dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerNote {
    pub ts_ns: u64,
    pub pid: u32,
    pub text: String,
    pub note: Option<DropNote>,
}

impl Connection {
    fn new(id: ConnId, skaddr: u64, tuple: ConnTuple, ts: u64) -> Self {
        Self {
            id,
            tuple,
            skaddr,
            first_ts: ts,
            established_ts: None,
            accept_ts: None,
            listener_pid: None,
            session_pid: None,
            resets_sent: Vec::new(),
            closed_ts: None,
            closed_first_by: None,
            fin_unacknowledged: false,
            extra_settle_ns: 0,
            settle_at_once: false,
            end_ts: None,
            extras: None,
        }
    }

    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Resets received for the connection, when.
    pub fn resets_received(&self) -> &[u64] {
        self.extras.as_ref().map_or(&[], |x| &x.resets_received)
    }

    /// Segments netfilter dropped: the first [`KEPT_DROPS`].
    pub fn drops(&self) -> &[DroppedSegment] {
        self.extras.as_ref().map_or(&[], |x| &x.drops)
    }

    /// Every segment netfilter dropped, those not kept included.
    pub fn drops_total(&self) -> u64 {
        self.extras.as_ref().map_or(0, |x| x.drops_total)
    }

    /// Resets a client on this host received for this connection, when.
    pub fn client_resets(&self) -> &[u64] {
        self.extras.as_ref().map_or(&[], |x| &x.client_resets)
    }

    /// The latest log messages its sshd processes wrote, oldest first.
    pub fn sshd_log(&self) -> impl DoubleEndedIterator<Item = &LogLine> {
        self.extras.iter().flat_map(|x| x.sshd_log.iter())
    }

    /// Log messages older than those kept.
    pub fn sshd_log_not_kept(&self) -> u64 {
        self.extras.as_ref().map_or(0, |x| x.sshd_log_not_kept)
    }

    /// What the listener wrote on it before closing it.
    pub fn listener_note(&self) -> Option<&ListenerNote> {
        self.extras.as_ref()?.listener_note.as_ref()
    }

    pub fn add_received_reset(&mut self, ts: u64) {
        self.extras_mut().resets_received.push(ts);
    }

    pub fn client_process(&self) -> Option<&ClientProcess> {
        self.extras.as_ref()?.client_process.as_deref()
    }

    pub fn client_process_mut(&mut self) -> Option<&mut ClientProcess> {
        self.extras.as_mut()?.client_process.as_deref_mut()
    }

    pub fn set_client_process(&mut self, process: ClientProcess) {
        self.extras_mut().client_process = Some(Box::new(process));
    }

    /// The fingerprints of the resets it received, oldest first.
    pub fn reset_fingerprints(&self) -> &[ResetFingerprint] {
        self.extras.as_ref().map_or(&[], |x| &x.reset_fingerprints)
    }

    pub fn add_reset_fingerprint(&mut self, fingerprint: ResetFingerprint) {
        self.extras_mut().reset_fingerprints.push(fingerprint);
    }

    pub fn add_client_reset(&mut self, ts: u64) {
        self.extras_mut().client_resets.push(ts);
    }

    /// Keeps the first note the listener wrote on the connection.
    pub fn note_listener(&mut self, note: impl FnOnce() -> ListenerNote) {
        self.extras_mut().listener_note.get_or_insert_with(note);
    }

    /// Keeps the latest [`KEPT_LOG_LINES`] messages, counting the older ones let go.
    pub fn add_log_line(&mut self, line: LogLine) {
        let x = self.extras_mut();
        x.sshd_log.push_back(line);
        if x.sshd_log.len() > KEPT_LOG_LINES {
            x.sshd_log.pop_front();
            x.sshd_log_not_kept += 1;
        }
    }

    /// A connection waiting in a listener's queue that only the kernel's history holds.
    pub fn queued(skaddr: u64, tuple: ConnTuple, established_ts: u64) -> Self {
        Self {
            established_ts: Some(established_ts),
            ..Self::new(0, skaddr, tuple, established_ts)
        }
    }

    pub fn end(&mut self, ts: u64) {
        self.end_ts.get_or_insert(ts);
    }

    /// A dropped segment, standing for `1 + suppressed` drops; past [`KEPT_DROPS`] only
    /// counted. Returns how many drops were not kept.
    pub fn add_drop(&mut self, drop: DroppedSegment, suppressed: u32) -> u64 {
        let x = self.extras_mut();
        x.drops_total += 1 + u64::from(suppressed);
        if x.drops.len() < KEPT_DROPS {
            x.drops.push(drop);
            u64::from(suppressed)
        } else {
            1 + u64::from(suppressed)
        }
    }

    /// Dropped on its path, in another network namespace; past [`KEPT_DROPS`] only counted
    /// (the count of those not kept is returned).
    pub fn add_path_drop(&mut self, drop: PathDrop, suppressed: u32) -> u64 {
        let x = self.extras_mut();
        if x.path_drops.len() < KEPT_DROPS {
            x.path_drops.push(drop);
            u64::from(suppressed)
        } else {
            1 + u64::from(suppressed)
        }
    }

    /// Segments dropped on its path (kept ones), oldest first.
    pub fn path_drops(&self) -> &[PathDrop] {
        self.extras.as_ref().map_or(&[], |x| &x.path_drops)
    }

    /// A reset sent for the connection; one like the last (the same reason and state, the
    /// answer to a retransmission) is counted on it, not listed again.
    pub fn add_reset(&mut self, reset: ResetSent) {
        match self.resets_sent.last_mut() {
            Some(last)
                if self.end_ts.is_some()
                    && last.reason == reset.reason
                    && last.state == reset.state =>
            {
                last.repeated += 1 + reset.repeated;
            }
            _ => {
                // Most connections see one reset: room for one, not the four a first push
                // makes (in a storm of aborted connections, every one waits its settle time).
                if self.resets_sent.capacity() == 0 {
                    self.resets_sent.reserve_exact(1);
                }
                self.resets_sent.push(reset);
            }
        }
    }
}

/// Bound on connections kept at once; the oldest are dropped past it, and counted.
const MAX_CONNECTIONS: usize = 65_536;

/// Dropped segments kept per connection: a SYN flood against a DROP rule is one connection
/// attempt per source port, but a flood of segments of one connection must not grow it.
pub const KEPT_DROPS: usize = 32;

/// How long after its verdict a connection's address pair is remembered: a client retransmits
/// to a dead connection for about two minutes (RTO backoff) before it gives up.
const LATE_SEGMENT_WINDOW_NS: u64 = 120_000_000_000;
/// Bound on address pairs remembered after their verdict; the oldest are forgotten first.
const MAX_JUDGED_REMEMBERED: usize = 4096;

/// Where a reset sent without a connection socket belongs.
#[derive(Debug, PartialEq, Eq)]
pub enum StrayReset {
    /// To the connection still followed that the segment belonged to.
    Joins(ConnId),
    /// To a connection already judged: counted, never a verdict of its own.
    AfterVerdict,
    /// To nothing known: a refused connection attempt of its own.
    New,
}

#[derive(Default)]
pub struct ConnectionTable {
    /// Boxed: ids only grow, so the tree's nodes split at their end and stay half full; half
    /// full of pointers, not of connections.
    conns: BTreeMap<ConnId, Box<Connection>>,
    by_skaddr: HashMap<u64, ConnId>,
    /// The newest connection of each address pair (network namespaces aside): resets and
    /// drops without a socket find theirs in constant time, even in a storm.
    by_addrs: HashMap<(SocketAddr, SocketAddr), ConnId>,
    /// Address pairs of connections judged recently, with when they were taken for judging
    /// (oldest first): the resets their late segments draw belong to that verdict.
    judged: HashMap<(SocketAddr, SocketAddr), u64>,
    judged_order: VecDeque<((SocketAddr, SocketAddr), u64)>,
    next_id: ConnId,
    /// Connections dropped unjudged because the table was full.
    pub evicted: u64,
}

impl ConnectionTable {
    /// A new connection on `skaddr`, replacing one whose socket was freed and reused.
    pub fn open(&mut self, skaddr: u64, tuple: ConnTuple, ts: u64) -> ConnId {
        if let Some(old) = self.by_skaddr.remove(&skaddr) {
            // The kernel reused the socket: the old connection has ended.
            if let Some(c) = self.conns.get_mut(&old) {
                c.end(ts);
            }
        }
        let id = self.insert(skaddr, tuple, ts);
        self.by_skaddr.insert(skaddr, id);
        id
    }

    /// The live (not ended) connection of `skaddr` with this tuple, else a new one.
    pub fn live_or_open(&mut self, skaddr: u64, tuple: ConnTuple, ts: u64) -> ConnId {
        match self.by_skaddr.get(&skaddr) {
            Some(&id)
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.tuple == tuple && c.end_ts.is_none()) =>
            {
                id
            }
            _ => self.open(skaddr, tuple, ts),
        }
    }

    /// The connection of `skaddr`, opened now when it was established before sshtrace started.
    pub fn by_skaddr_or_open(&mut self, skaddr: u64, tuple: ConnTuple, ts: u64) -> ConnId {
        match self.by_skaddr.get(&skaddr) {
            Some(&id) if self.conns.get(&id).is_some_and(|c| c.tuple == tuple) => id,
            Some(&id) if self.conns.get(&id).is_some_and(|c| c.tuple.bound_as(tuple)) => {
                self.rebind(id, tuple);
                id
            }
            _ => self.open(skaddr, tuple, ts),
        }
    }

    /// A connect's local port, chosen after its first record (CLOSE → SYN_SENT), is known.
    fn rebind(&mut self, id: ConnId, tuple: ConnTuple) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let before = (c.tuple.local, c.tuple.remote);
        c.tuple = tuple;
        if self.by_addrs.get(&before) == Some(&id) {
            self.by_addrs.remove(&before);
        }
        self.by_addrs.insert((tuple.local, tuple.remote), id);
    }

    /// The connect not yet established that a packet addressed to `tuple` answers, its local
    /// port perhaps not yet known.
    pub fn connecting_mut(&mut self, tuple: ConnTuple) -> Option<&mut Connection> {
        let unbound = SocketAddr::new(tuple.local.ip(), 0);
        let id = self
            .by_addrs
            .get(&(tuple.local, tuple.remote))
            .or_else(|| self.by_addrs.get(&(unbound, tuple.remote)))?;
        self.conns
            .get_mut(id)
            .map(Box::as_mut)
            .filter(|c| c.established_ts.is_none() && c.tuple.netns == tuple.netns)
    }

    /// A reset sent with no connection socket (by the stack, or by the listener), answering a
    /// segment with `seg_flags` (when known): a late segment of a connection still followed
    /// joins it, one of a connection already judged is only counted; a connection attempt
    /// (a SYN) or a segment of nothing known is a connection of its own.
    pub fn stray_reset(&mut self, tuple: ConnTuple, seg_flags: Option<u8>, ts: u64) -> StrayReset {
        if let Some(c) = self
            .newest(tuple)
            .filter(|c| c.tuple == tuple && c.skaddr != 0)
        {
            return StrayReset::Joins(c.id);
        }
        let attempt = seg_flags.is_some_and(|f| f & TCP_SYN != 0 && f & TCP_ACK == 0);
        let addrs = (tuple.local, tuple.remote);
        let judged = self
            .judged
            .get(&addrs)
            .is_some_and(|&t| t + LATE_SEGMENT_WINDOW_NS >= ts);
        if judged && !attempt {
            return StrayReset::AfterVerdict;
        }
        StrayReset::New
    }

    /// A connection of its own for a reset sent without a socket (e.g. a refused SYN).
    pub fn orphan(&mut self, tuple: ConnTuple, ts: u64) -> ConnId {
        self.insert(0, tuple, ts)
    }

    fn newest(&self, tuple: ConnTuple) -> Option<&Connection> {
        let id = self.by_addrs.get(&(tuple.local, tuple.remote))?;
        self.conns.get(id).map(Box::as_ref)
    }

    /// The newest connection with these addresses, in whichever network namespace.
    pub fn by_tuple_mut(&mut self, tuple: ConnTuple) -> Option<&mut Connection> {
        let id = *self.by_addrs.get(&(tuple.local, tuple.remote))?;
        self.conns.get_mut(&id).map(Box::as_mut)
    }

    /// The newest connection with this 4-tuple that has not been judged, else a new one
    /// without a socket (e.g. a SYN that never reached TCP).
    pub fn by_tuple_or_orphan(&mut self, tuple: ConnTuple, ts: u64) -> &mut Connection {
        let id = match self.newest(tuple).filter(|c| c.tuple == tuple) {
            Some(c) => c.id,
            None => self.insert(0, tuple, ts),
        };
        self.conns.get_mut(&id).expect("present")
    }

    /// The newest connection from `peer` no process has accepted yet.
    pub fn unaccepted_from(&self, peer: SocketAddr) -> Option<ConnId> {
        self.conns
            .values()
            .rev()
            .find(|c| c.tuple.remote == peer && c.listener_pid.is_none() && c.skaddr != 0)
            .map(|c| c.id)
    }

    /// Connections that are established and waiting in a listener's queue (never accepted).
    pub fn waiting(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values().map(Box::as_ref).filter(|c| {
            c.established_ts.is_some() && c.listener_pid.is_none() && c.end_ts.is_none()
        })
    }

    /// Open connections `listener` accepted at or before `at_ns` and that had not ended then.
    pub fn open_of_listener(&self, listener: u32, at_ns: u64) -> impl Iterator<Item = &Connection> {
        self.conns.values().map(Box::as_ref).filter(move |c| {
            c.listener_pid == Some(listener)
                && c.accept_ts.is_some_and(|t| t <= at_ns)
                && c.end_ts.is_none_or(|t| t > at_ns)
        })
    }

    /// The connection of `skaddr` that has not ended yet.
    pub fn live_by_skaddr(&mut self, skaddr: u64) -> Option<&mut Connection> {
        let id = *self.by_skaddr.get(&skaddr)?;
        self.conns
            .get_mut(&id)
            .map(Box::as_mut)
            .filter(|c| c.end_ts.is_none())
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.conns.get_mut(&id).map(Box::as_mut)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Removes and returns the connections that ended at or before `cutoff_ns`.
    pub fn take_ended_before(&mut self, cutoff_ns: u64, limit: usize) -> Vec<Connection> {
        let ids: Vec<ConnId> = self
            .conns
            .values()
            .filter(|c| {
                c.end_ts
                    .is_some_and(|t| c.settle_at_once || t + c.extra_settle_ns <= cutoff_ns)
            })
            .map(|c| c.id)
            .take(limit)
            .collect();
        let taken: Vec<Connection> = ids.into_iter().filter_map(|id| self.remove(id)).collect();
        for c in taken.iter().filter(|c| c.skaddr != 0) {
            self.remember_judged((c.tuple.local, c.tuple.remote), cutoff_ns);
        }
        taken
    }

    fn remember_judged(&mut self, addrs: (SocketAddr, SocketAddr), ts: u64) {
        while let Some(&(old, at)) = self.judged_order.front() {
            if self.judged_order.len() < MAX_JUDGED_REMEMBERED && at + LATE_SEGMENT_WINDOW_NS >= ts
            {
                break;
            }
            self.judged_order.pop_front();
            if self.judged.get(&old) == Some(&at) {
                self.judged.remove(&old);
            }
        }
        self.judged.insert(addrs, ts);
        self.judged_order.push_back((addrs, ts));
    }

    fn insert(&mut self, skaddr: u64, tuple: ConnTuple, ts: u64) -> ConnId {
        self.next_id += 1;
        let id = self.next_id;
        self.conns
            .insert(id, Box::new(Connection::new(id, skaddr, tuple, ts)));
        self.by_addrs.insert((tuple.local, tuple.remote), id);
        while self.conns.len() > MAX_CONNECTIONS {
            let oldest = *self.conns.keys().next().expect("not empty");
            self.remove(oldest);
            self.evicted += 1;
        }
        id
    }

    fn remove(&mut self, id: ConnId) -> Option<Connection> {
        let c = self.conns.remove(&id)?;
        if self.by_skaddr.get(&c.skaddr) == Some(&id) {
            self.by_skaddr.remove(&c.skaddr);
        }
        let addrs = (c.tuple.local, c.tuple.remote);
        if self.by_addrs.get(&addrs) == Some(&id) {
            self.by_addrs.remove(&addrs);
        }
        Some(*c)
    }
}
