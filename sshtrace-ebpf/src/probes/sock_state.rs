//! Socket state changes on tracked local ports, and the history the kernel keeps of each
//! connection until it matters. Every state change on the host passes here (about ten per
//! connection, client and server side): the port decides first, and a connection no tracked
//! process accepted costs a few map operations and no record.
//!
//! Three ways to the same tracepoint, best first: tp_btf (socket fields are plain loads), the
//! raw tracepoint (a helper call per field), the classic one (its record assembled for every
//! state change before the program runs).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use sshtrace_common::{first_fin_by, Endpoints, SockHistory, SockStateEvent};

use super::{
    client::{client_mode, closed, follow_connect, live_client_socket, report_connect},
    field,
    socket::{sock_endpoints, ProbedSock, SockFields, TypedSock},
    tcp::{local_port, read_endpoints},
};
use crate::{
    maps::{
        claim_on_accept, netns_tracked, owns_listeners, port_tracked, sk_netns, tcp_states,
        track_port, SETTINGS,
    },
    record::submit_with,
};

const IPPROTO_TCP: u16 = 6;

/// tp_btf (`const struct sock *sk, int oldstate, int newstate`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tp_btf_inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let _ = socket_state_change(&TypedSock(ctx.arg(0)), ctx.arg(1), ctx.arg(2));
    0
}

/// The raw tracepoint, where tp_btf does not load.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn raw_inet_sock_set_state(ctx: RawTracePointContext) -> u32 {
    let _ = socket_state_change(&ProbedSock(ctx.arg(0)), ctx.arg(1), ctx.arg(2));
    0
}

/// The classic tracepoint, where BTF does not locate the socket's fields.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_sock_state(&ctx);
    0
}

fn try_sock_state(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(sock_state);
    let skaddr: u64 = field(ctx, l.skaddr)?;
    let (old_state, new_state): (i32, i32) = (field(ctx, l.oldstate)?, field(ctx, l.newstate)?);
    let endpoints = RecordEndpoints { ctx, skaddr };
    sock_state(
        skaddr,
        local_port(ctx, &l.addr)?,
        old_state,
        new_state,
        &endpoints,
    )
}

/// The programs that read the socket itself.
#[inline(always)]
fn socket_state_change<S: SockFields>(sk: &S, old_state: i32, new_state: i32) -> Result<(), i32> {
    let local_port = sk.local_port(new_state == tcp_states().close)?;
    let endpoints = SocketEndpoints { sk, local_port };
    sock_state(sk.addr(), local_port, old_state, new_state, &endpoints)
}

/// Where a connection's 4-tuple and network namespace are read from, only when needed.
/// (A trait, not a closure: the verifier needs it inlined.)
trait EndpointSource {
    fn read_into(&self, ep: &mut Endpoints) -> Result<(), i32>;
}

struct SocketEndpoints<'a, S> {
    sk: &'a S,
    local_port: u16,
}

impl<S: SockFields> EndpointSource for SocketEndpoints<'_, S> {
    #[inline(always)]
    fn read_into(&self, ep: &mut Endpoints) -> Result<(), i32> {
        sock_endpoints(self.sk, self.local_port, ep)
    }
}

/// The classic tracepoint's record, and the socket's network namespace.
struct RecordEndpoints<'a> {
    ctx: &'a TracePointContext,
    skaddr: u64,
}

impl EndpointSource for RecordEndpoints<'_> {
    #[inline(always)]
    fn read_into(&self, ep: &mut Endpoints) -> Result<(), i32> {
        let l = layout!(sock_state);
        if field::<u16>(self.ctx, l.protocol) != Ok(IPPROTO_TCP) {
            return Err(0);
        }
        *ep = read_endpoints(self.ctx, &l.addr)?;
        ep.netns = sk_netns(self.skaddr);
        Ok(())
    }
}

/// The history of tracked sockets between the records sent for them, by socket address.
/// A socket evicted from a full map (the least recently changed) loses only what was noted.
#[map]
pub(super) static SOCK_HISTORY: LruHashMap<u64, SockHistory> =
    LruHashMap::with_max_entries(32768, 0);

/// A new socket's history is built here: the BPF stack is too small for it.
#[map]
static NEW_HISTORY: PerCpuArray<SockHistory> = PerCpuArray::with_max_entries(1, 0);

/// What a state change of a socket on a tracked port needs.
///
/// A connection on a tracked port is reported once claimed: the accept of a tracked process
/// reports it (with its history), later its close is sent; a reset claims it too. Unclaimed
/// connections (another program's, or closed in the queue without a reset) cost no record;
/// a stalled listener's queue is read from the history map by userspace. Without claims (the
/// accepted fd cannot be followed to its socket on this kernel), establishment and close are
/// sent for every connection. Sockets not seen established (older than sshtrace, or evicted
/// from the map) have every transition that matters sent.
enum Step {
    /// Noted in the history (or of no interest): nothing to send.
    Done,
    /// Established by a client's handshake: its history begins, to be completed with its
    /// endpoints.
    Begin(&'static mut SockHistory),
    /// A record to send, with the socket's history if it has one.
    Send(Option<*mut SockHistory>),
}

/// A state change of the socket at `skaddr`: noted, sent or ignored.
#[inline(always)]
fn sock_state(
    skaddr: u64,
    local_port: u16,
    old_state: i32,
    new_state: i32,
    endpoints: &impl EndpointSource,
) -> Result<(), i32> {
    // A listen by sshd on a port not tracked yet tracks it, and is reported like any socket
    // state change on a tracked port (userspace learns where sshd listens from it).
    if !port_tracked(local_port) {
        if client_mode() {
            return client_state_change(skaddr, old_state, new_state, endpoints);
        }
        // Only the listen state is read here: this runs for every socket on the host.
        let listen = unsafe { core::ptr::read_volatile(&raw const SETTINGS.tcp_states.listen) };
        if new_state != listen || !learn_listening_port(local_port) {
            return Ok(());
        }
    }
    match step(skaddr, old_state, new_state)? {
        Step::Done => {}
        Step::Begin(fresh) => {
            endpoints.read_into(&mut fresh.endpoints)?;
            begin(skaddr, old_state, new_state, fresh);
        }
        Step::Send(history) => {
            let mut ep = Endpoints::default();
            endpoints.read_into(&mut ep)?;
            send_state(skaddr, old_state, new_state, &ep, history, false);
        }
    }
    Ok(())
}

#[inline(always)]
fn step(skaddr: u64, old: i32, new: i32) -> Result<Step, i32> {
    let t = tcp_states();
    // Decided before any lookup, as most state changes on a busy port are these: the full
    // socket's first change (LISTEN → SYN_RECV, when the handshake's last ACK creates it; its
    // client address is not yet copied) is followed at once, in the same softirq, by
    // ESTABLISHED, where its history begins; a FIN and what follows it tell nothing the
    // close does not (the state a socket closes from says who sent the first FIN).
    let fin_or_after =
        old == t.fin_wait1 || old == t.close_wait || new == t.fin_wait1 || new == t.close_wait;
    if (old == t.listen && new == t.syn_recv) || (fin_or_after && new != t.close) {
        return Ok(Step::Done);
    }
    if old == t.syn_recv && new == t.established {
        let now = unsafe { bpf_ktime_get_ns() };
        let fresh = unsafe { &mut *NEW_HISTORY.get_ptr_mut(0).ok_or(0)? };
        *fresh = SockHistory {
            established_ns: now,
            claimed: !claim_on_accept() as u32,
            ..SockHistory::default()
        };
        return Ok(Step::Begin(fresh));
    }
    let Some(ptr) = SOCK_HISTORY.get_ptr_mut(skaddr) else {
        return Ok(Step::Send(None));
    };
    if unsafe { (*ptr).claimed } == 0 {
        if new == t.close {
            let _ = SOCK_HISTORY.remove(skaddr);
        }
        return Ok(Step::Done);
    }
    Ok(Step::Send(Some(ptr)))
}

/// Who sent the first FIN of a connection closing from `old` (`first_fin_by`).
#[inline(always)]
fn first_fin_by_closing_from(old: i32) -> u32 {
    let t = tcp_states();
    if old == t.fin_wait1 || old == t.fin_wait2 || old == t.closing {
        first_fin_by::LOCAL
    } else if old == t.close_wait || old == t.last_ack {
        first_fin_by::PEER
    } else {
        first_fin_by::UNKNOWN
    }
}

/// Keeps the history of a connection just established in a tracked network namespace; without
/// claims, its establishment is sent too.
#[inline(always)]
fn begin(skaddr: u64, old_state: i32, new_state: i32, fresh: &mut SockHistory) {
    if !netns_tracked(fresh.endpoints.netns) {
        return;
    }
    // By reference: a copy would not fit on the BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    if SOCK_HISTORY
        .insert(skaddr, &*fresh, BPF_NOEXIST as u64)
        .is_ok()
    {
        if fresh.claimed != 0 {
            let ep = fresh.endpoints;
            send_state(skaddr, old_state, new_state, &ep, Some(fresh), false);
        }
        return;
    }
    // Accepted before it was established (TCP Fast Open: the SYN carried data, and the
    // socket was created then): the accept began its history and claimed it.
    if let Some(h) = SOCK_HISTORY.get_ptr_mut(skaddr) {
        unsafe {
            (*h).established_ns = fresh.established_ns;
            (*h).endpoints = fresh.endpoints;
        }
        send_state(
            skaddr,
            old_state,
            new_state,
            &fresh.endpoints,
            Some(h),
            false,
        );
    }
}

/// Sends a state change, when the socket's network namespace is tracked, with its history;
/// a closed socket's history is dropped once sent.
#[inline(always)]
fn send_state(
    skaddr: u64,
    old_state: i32,
    new_state: i32,
    ep: &Endpoints,
    history: Option<*mut SockHistory>,
    wake_now: bool,
) {
    if netns_tracked(ep.netns) {
        submit_with(wake_now, |e: &mut SockStateEvent| {
            e.skaddr = skaddr;
            e.old_state = old_state;
            e.new_state = new_state;
            e.endpoints = *ep;
            match history {
                // Copied in place: the history does not fit on the BPF stack twice.
                Some(h) => unsafe { core::ptr::copy_nonoverlapping(h, &mut e.history, 1) },
                None => e.history.claimed = 1,
            }
            if new_state == tcp_states().close {
                e.history.first_fin_by = first_fin_by_closing_from(old_state);
            }
        });
    }
    if history.is_some() && new_state == tcp_states().close {
        let _ = SOCK_HISTORY.remove(skaddr);
    }
}

/// `sshtrace client`: every state change of a followed `ssh` socket is sent (a client has a
/// few connections, not a server's storm), its history kept from the connect to the close.
#[inline(always)]
fn client_state_change(
    skaddr: u64,
    old_state: i32,
    new_state: i32,
    endpoints: &impl EndpointSource,
) -> Result<(), i32> {
    let t = tcp_states();
    let connecting = old_state == t.close && new_state == t.syn_sent;
    if !connecting && !live_client_socket(skaddr) {
        return Ok(());
    }
    let mut ep = Endpoints::default();
    endpoints.read_into(&mut ep)?;
    if connecting {
        if !follow_connect(skaddr, ep.remote_port) {
            return Ok(());
        }
        let fresh = unsafe { &mut *NEW_HISTORY.get_ptr_mut(0).ok_or(0)? };
        *fresh = SockHistory {
            claimed: 1,
            endpoints: ep,
            ..SockHistory::default()
        };
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = SOCK_HISTORY.insert(skaddr, &*fresh, 0);
    }
    if new_state == t.close {
        closed(skaddr);
    }
    send_state(
        skaddr,
        old_state,
        new_state,
        &ep,
        SOCK_HISTORY.get_ptr_mut(skaddr),
        // Userspace reads the connecting process from /proc: a refused ssh soon exits.
        connecting,
    );
    if connecting {
        report_connect(skaddr);
    }
    Ok(())
}

/// A socket moved to LISTEN by a process that owns sshd's listeners (in process context:
/// `listen()`): its port is tracked before the first client arrives.
#[inline(always)]
fn learn_listening_port(local_port: u16) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !owns_listeners(tgid) {
        return false;
    }
    track_port(local_port);
    true
}

/// Marks a socket's connection as one userspace must hear the end of (it was reset).
#[inline(always)]
pub(super) fn claim(skaddr: u64) {
    if let Some(h) = SOCK_HISTORY.get_ptr_mut(skaddr) {
        unsafe { (*h).claimed = 1 };
    }
}

/// The socket a tracked process accepted, claimed: its history (begun here if the kernel has
/// none — the connection was queued before sshtrace started, or accepted before it was
/// established), or `None` when it cannot be kept.
#[inline(always)]
pub(super) fn claim_accepted(skaddr: u64) -> Option<*mut SockHistory> {
    if let Some(h) = SOCK_HISTORY.get_ptr_mut(skaddr) {
        unsafe { (*h).claimed = 1 };
        return Some(h);
    }
    let sk = ProbedSock(skaddr as *const u8);
    let fresh = unsafe { &mut *NEW_HISTORY.get_ptr_mut(0)? };
    *fresh = SockHistory {
        claimed: 1,
        ..SockHistory::default()
    };
    sock_endpoints(&sk, sk.local_port(false).ok()?, &mut fresh.endpoints).ok()?;
    #[allow(clippy::needless_borrows_for_generic_args)]
    SOCK_HISTORY.insert(skaddr, &*fresh, 0).ok()?;
    SOCK_HISTORY.get_ptr_mut(skaddr)
}
