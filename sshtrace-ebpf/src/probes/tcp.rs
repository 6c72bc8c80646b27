//! TCP resets and socket state changes on tracked local ports. These often run in softirq (or,
//! on loopback, in the sending task): the header's pid is not the socket's owner, and
//! userspace attributes them by `skaddr` and 4-tuple instead.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};
use sshtrace_common::{
    addr_style, first_fin_by, AddrLayout, Endpoints, ReceiveResetEvent, SendResetEvent,
    SockHistory, SockStateEvent, TcpStateNumbers, ABSENT, REASON_UNKNOWN, RESET_BURST_INTERVAL_NS,
    SEG_FLAGS_UNKNOWN,
};

use super::{field, member};
use crate::{
    maps::{claim_on_accept, netns_tracked, port_tracked, sk_netns, skb_netns, tcp_states},
    record::submit_batched,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
/// Offset of the flags byte in `struct tcphdr`.
const TCPHDR_FLAGS: usize = 13;

/// Where bursts of resets without a socket are counted: by tracked endpoint and client address.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct BurstKey {
    netns: u32,
    local_port: u16,
    kind: u16,
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
}

impl BurstKey {
    pub(super) fn client(ep: &Endpoints, kind: u16) -> Self {
        Self {
            netns: ep.netns,
            local_port: ep.local_port,
            kind,
            local_addr: ep.local_addr,
            remote_addr: ep.remote_addr,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Burst {
    window_start_ns: u64,
    sent_in_window: u32,
    suppressed: u32,
}

/// Records sent per key and interval before the rest are only counted: sporadic refusals each
/// get their own verdict, a storm costs at most this many records per client per interval.
const RECORDS_PER_INTERVAL: u32 = 8;

#[map]
static RESET_BURSTS: LruHashMap<BurstKey, Burst> = LruHashMap::with_max_entries(8192, 0);

/// `Some(count of resets held back before this one)` when a record should be sent now, `None`
/// when this one is only counted.
pub(super) fn burst(key: BurstKey) -> Option<u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(b) = RESET_BURSTS.get_ptr_mut(key) else {
        let fresh = Burst {
            window_start_ns: now,
            sent_in_window: 1,
            suppressed: 0,
        };
        let _ = RESET_BURSTS.insert(key, fresh, 0);
        return Some(0);
    };
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b.window_start_ns) >= RESET_BURST_INTERVAL_NS {
        b.window_start_ns = now;
        b.sent_in_window = 0;
    }
    if b.sent_in_window >= RECORDS_PER_INTERVAL {
        b.suppressed += 1;
        return None;
    }
    b.sent_in_window += 1;
    let held = b.suppressed;
    b.suppressed = 0;
    Some(held)
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_send_reset(&ctx);
    0
}

fn try_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(send_reset);
    let mut endpoints = read_endpoints(ctx, &l.addr)?;
    if !port_tracked(endpoints.local_port) {
        return Ok(());
    }
    let skaddr: u64 = field(ctx, l.skaddr)?;
    endpoints.netns = if skaddr != 0 {
        sk_netns(skaddr)
    } else {
        field::<u64>(ctx, l.skbaddr).map(skb_netns).unwrap_or(0)
    };
    if !netns_tracked(endpoints.netns) {
        return Ok(());
    }
    // Resets without a socket come in storms (scans, floods): one record per client per
    // interval, the rest counted.
    let suppressed = if skaddr == 0 {
        match burst(BurstKey::client(&endpoints, 0)) {
            Some(n) => n,
            None => return Ok(()),
        }
    } else {
        claim(skaddr);
        0
    };
    let state: i32 = field(ctx, l.state).unwrap_or(-1);
    let reason: u32 = field(ctx, l.reason).unwrap_or(REASON_UNKNOWN);
    let seg_flags = if skaddr == 0 {
        field::<u64>(ctx, l.skbaddr)
            .and_then(segment_flags)
            .unwrap_or(SEG_FLAGS_UNKNOWN)
    } else {
        SEG_FLAGS_UNKNOWN
    };
    submit_batched(|e: &mut SendResetEvent| {
        e.skaddr = skaddr;
        e.state = state;
        e.reason = reason;
        e.seg_flags = seg_flags;
        e.suppressed = suppressed;
        e.endpoints = endpoints;
    });
    Ok(())
}

/// The TCP flags of the segment in `skb` (which segment a no-socket reset answered: a SYN
/// means a connection attempt was refused).
fn segment_flags(skb: u64) -> Result<u16, i32> {
    let s = layout!(structs);
    if s.skb_head == ABSENT || s.skb_transport_header == ABSENT {
        return Err(-1);
    }
    let skb = skb as *const u8;
    unsafe {
        let head: u64 = bpf_probe_read_kernel(skb.add(s.skb_head as usize).cast())?;
        let th: u16 = bpf_probe_read_kernel(skb.add(s.skb_transport_header as usize).cast())?;
        if th == u16::MAX {
            return Err(-1);
        }
        let flags: u8 = bpf_probe_read_kernel((head as *const u8).add(th as usize + TCPHDR_FLAGS))?;
        Ok(flags as u16)
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_receive_reset(&ctx);
    0
}

fn try_receive_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(receive_reset);
    let endpoints = read_endpoints(ctx, &l.addr)?;
    // A client of a tracked port on this host (its peer's port is tracked) is reported too:
    // the reset a firewall sends reaches the client, not sshd.
    let client_side = if port_tracked(endpoints.local_port) {
        0
    } else if port_tracked(endpoints.remote_port) {
        1
    } else {
        return Ok(());
    };
    let skaddr: u64 = field(ctx, l.skaddr)?;
    let mut endpoints = endpoints;
    endpoints.netns = sk_netns(skaddr);
    if !netns_tracked(endpoints.netns) {
        return Ok(());
    }
    // A client-side reset is evidence only (a REJECT's answer): one per server address and
    // interval is enough, and storms of refused clients stay cheap.
    let suppressed = if client_side != 0 {
        let mut server = endpoints;
        core::mem::swap(&mut server.local_addr, &mut server.remote_addr);
        core::mem::swap(&mut server.local_port, &mut server.remote_port);
        match burst(BurstKey::client(&server, 1)) {
            Some(n) => n,
            None => return Ok(()),
        }
    } else {
        claim(skaddr);
        0
    };
    submit_batched(|e: &mut ReceiveResetEvent| {
        e.skaddr = skaddr;
        e.client_side = client_side;
        e.suppressed = suppressed;
        e.endpoints = endpoints;
    });
    Ok(())
}

/// The raw tracepoint (`const struct sock *sk, int oldstate, int newstate`): every socket
/// state change on the host passes here, and the raw form skips the record the classic one
/// assembles before any program runs. Fields are read from the socket through BTF offsets.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn raw_inet_sock_set_state(ctx: RawTracePointContext) -> u32 {
    let _ = try_raw_sock_state(&ctx);
    0
}

fn try_raw_sock_state(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sk: *const u8 = ctx.arg(0);
    let local_port: u16 = read_sock(sk, layout!(structs.inet_sport))?;
    let local_port = u16::from_be(local_port);
    if !port_tracked(local_port) {
        return Ok(());
    }
    let skaddr = sk as u64;
    let (old_state, new_state): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    match step(skaddr, old_state, new_state)? {
        Step::Done => Ok(()),
        Step::Create(fresh) => {
            raw_endpoints(sk, local_port, &mut fresh.endpoints)?;
            created(skaddr, fresh);
            Ok(())
        }
        Step::Send(history) => {
            let mut ep = Endpoints::default();
            raw_endpoints(sk, local_port, &mut ep)?;
            send_state(skaddr, old_state, new_state, &mut ep, history);
            Ok(())
        }
        Step::Established(history, send) => {
            let mut ep = Endpoints::default();
            raw_endpoints(sk, local_port, &mut ep)?;
            refresh(history, &ep);
            if send {
                send_state(skaddr, old_state, new_state, &mut ep, Some(history));
            }
            Ok(())
        }
    }
}

/// A member of the socket, for `?` in the probes' `Result`s.
#[inline(always)]
fn read_sock<T>(sk: *const u8, offset: u16) -> Result<T, i32> {
    member(sk, offset).ok_or(-1)
}

/// A TCP socket's 4-tuple, read from `struct sock` (Err for other protocols).
#[inline(always)]
fn raw_endpoints(sk: *const u8, local_port: u16, ep: &mut Endpoints) -> Result<(), i32> {
    let protocol: u16 = read_sock(sk, layout!(structs.sk_protocol))?;
    if protocol != IPPROTO_TCP {
        return Err(0);
    }
    ep.family = read_sock(sk, layout!(structs.skc_family))?;
    ep.local_port = local_port;
    ep.remote_port = u16::from_be(read_sock(sk, layout!(structs.skc_dport))?);
    match ep.family {
        AF_INET => {
            let local: [u8; 4] = read_sock(sk, layout!(structs.skc_rcv_saddr))?;
            let remote: [u8; 4] = read_sock(sk, layout!(structs.skc_daddr))?;
            ep.local_addr[..4].copy_from_slice(&local);
            ep.remote_addr[..4].copy_from_slice(&remote);
        }
        AF_INET6 => {
            ep.local_addr = read_sock(sk, layout!(structs.skc_v6_rcv_saddr))?;
            ep.remote_addr = read_sock(sk, layout!(structs.skc_v6_daddr))?;
        }
        _ => return Err(0),
    }
    Ok(())
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
/// A connection created on a tracked port is reported once claimed: the accept of a tracked
/// process reports it (with its history), later its close is sent. Unclaimed connections
/// (another program's, or closed in the queue without a reset) cost no record; a stalled
/// listener's queue is read from the history map by userspace. Without claims (the accepted
/// fd cannot be followed to its socket on this kernel), establishment and close are sent for
/// every connection. Sockets not seen created (older than sshtrace, or evicted from the map)
/// have every transition sent.
enum Step {
    /// Noted in the history (or of no interest): nothing to send.
    Done,
    /// A socket created for a client's SYN: its history, to be completed with its endpoints.
    Create(&'static mut SockHistory),
    /// A record to send, with the socket's history if it has one.
    Send(Option<*mut SockHistory>),
    /// Established: the client's address and port are complete only now (a socket is cloned
    /// from its listener and traced as SYN_RECV before they are copied), so the history's
    /// endpoints are read again; `send` when a record is due too (without claims).
    Established(*mut SockHistory, bool),
}

#[inline(always)]
fn step(skaddr: u64, old: i32, new: i32) -> Result<Step, i32> {
    let t = tcp_states();
    let now = unsafe { bpf_ktime_get_ns() };
    if old == t.listen && new == t.syn_recv {
        let fresh = unsafe { &mut *NEW_HISTORY.get_ptr_mut(0).ok_or(0)? };
        *fresh = SockHistory {
            syn_recv_ns: now,
            claimed: !claim_on_accept() as u32,
            ..SockHistory::default()
        };
        return Ok(Step::Create(fresh));
    }
    // A socket with a history is a tracked one: most transitions end here, without reading
    // the socket again.
    let Some(ptr) = SOCK_HISTORY.get_ptr_mut(skaddr) else {
        return Ok(Step::Send(None));
    };
    let h = unsafe { &mut *ptr };
    let closing = new == t.close;
    let noted = !closing && note(h, &t, old, new, now);
    if new == t.established {
        return Ok(Step::Established(ptr, h.claimed != 0));
    }
    if noted || h.claimed == 0 {
        if closing {
            let _ = SOCK_HISTORY.remove(skaddr);
        }
        return Ok(Step::Done);
    }
    Ok(Step::Send(Some(ptr)))
}

/// Replaces the history's endpoints (keeping the network namespace read at creation).
#[inline(always)]
fn refresh(h: *mut SockHistory, ep: &Endpoints) {
    let h = unsafe { &mut *h };
    let netns = h.endpoints.netns;
    h.endpoints = *ep;
    h.endpoints.netns = netns;
}

/// Keeps the history of a socket created for a client's SYN in a tracked network namespace.
#[inline(always)]
fn created(skaddr: u64, fresh: &mut SockHistory) {
    fresh.endpoints.netns = sk_netns(skaddr);
    if netns_tracked(fresh.endpoints.netns) {
        // By reference: a copy would not fit on the BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = SOCK_HISTORY.insert(skaddr, &*fresh, 0);
    }
}

/// Sends a state change, when the socket's network namespace is tracked, with its history;
/// a closed socket's history is dropped once sent.
#[inline(always)]
fn send_state(
    skaddr: u64,
    old_state: i32,
    new_state: i32,
    ep: &mut Endpoints,
    history: Option<*mut SockHistory>,
) {
    ep.netns = sk_netns(skaddr);
    if netns_tracked(ep.netns) {
        submit_batched(|e: &mut SockStateEvent| {
            e.skaddr = skaddr;
            e.old_state = old_state;
            e.new_state = new_state;
            e.endpoints = *ep;
            match history {
                // Copied in place: the history does not fit on the BPF stack twice.
                Some(h) => unsafe { core::ptr::copy_nonoverlapping(h, &mut e.history, 1) },
                None => e.history.claimed = 1,
            }
        });
    }
    if history.is_some() && new_state == tcp_states().close {
        let _ = SOCK_HISTORY.remove(skaddr);
    }
}

/// Marks a socket's connection as one userspace must hear the end of (it was reset).
#[inline(always)]
pub(super) fn claim(skaddr: u64) {
    if let Some(h) = SOCK_HISTORY.get_ptr_mut(skaddr) {
        unsafe { (*h).claimed = 1 };
    }
}

/// Records the transition in `h`; true when it needs no record of its own.
#[inline(always)]
fn note(h: &mut SockHistory, t: &TcpStateNumbers, old: i32, new: i32, now: u64) -> bool {
    if new == t.established {
        h.established_ns = now;
        return false;
    }
    if old == t.established && (new == t.fin_wait1 || new == t.close_wait) {
        h.first_fin_ns = now;
        h.first_fin_by = if new == t.fin_wait1 {
            first_fin_by::LOCAL
        } else {
            first_fin_by::PEER
        };
        return true;
    }
    // FIN_WAIT2, CLOSING, LAST_ACK after the first FIN: nothing the verdict needs.
    h.first_fin_by != first_fin_by::UNKNOWN
}

/// The classic tracepoint, where the socket's fields cannot be located through BTF.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_sock_state(&ctx);
    0
}

fn try_sock_state(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(sock_state);
    // Every socket state change on the host passes here (several per connection): one read
    // and one lookup decide for all but the tracked ports.
    if !port_tracked(local_port(ctx, &l.addr)?) {
        return Ok(());
    }
    let skaddr: u64 = field(ctx, l.skaddr)?;
    let (old_state, new_state): (i32, i32) = (field(ctx, l.oldstate)?, field(ctx, l.newstate)?);
    let tcp = || field::<u16>(ctx, l.protocol) == Ok(IPPROTO_TCP);
    match step(skaddr, old_state, new_state)? {
        Step::Done => {}
        Step::Create(fresh) => {
            if tcp() {
                fresh.endpoints = read_endpoints(ctx, &l.addr)?;
                created(skaddr, fresh);
            }
        }
        Step::Send(history) => {
            if tcp() {
                let mut ep = read_endpoints(ctx, &l.addr)?;
                send_state(skaddr, old_state, new_state, &mut ep, history);
            }
        }
        Step::Established(history, send) => {
            let mut ep = read_endpoints(ctx, &l.addr)?;
            refresh(history, &ep);
            if send {
                send_state(skaddr, old_state, new_state, &mut ep, Some(history));
            }
        }
    }
    Ok(())
}

/// The local port alone, in whichever style this kernel's record uses.
#[inline(always)]
fn local_port(ctx: &TracePointContext, l: &AddrLayout) -> Result<u16, i32> {
    match l.style {
        // sockaddr_in{,6}: the big-endian port follows the 2-byte family in both.
        addr_style::SOCKADDR => Ok(u16::from_be(field(ctx, l.saddr + 2)?)),
        addr_style::SPLIT => field(ctx, l.sport),
        _ => Err(-1),
    }
}

/// Reads the 4-tuple in whichever style this kernel's record uses.
#[inline(always)]
pub(super) fn read_endpoints(ctx: &TracePointContext, l: &AddrLayout) -> Result<Endpoints, i32> {
    let mut ep = Endpoints::default();
    match l.style {
        addr_style::SOCKADDR => {
            // struct sockaddr_in{,6}: family, big-endian port, then the address
            // (at 4 for IPv4, at 8 after sin6_flowinfo for IPv6).
            ep.family = field(ctx, l.saddr)?;
            ep.local_port = u16::from_be(field(ctx, l.saddr + 2)?);
            ep.remote_port = u16::from_be(field(ctx, l.daddr + 2)?);
            match ep.family {
                AF_INET => {
                    ep.local_addr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, l.saddr + 4)?);
                    ep.remote_addr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, l.daddr + 4)?);
                }
                AF_INET6 => {
                    ep.local_addr = field(ctx, l.saddr + 8)?;
                    ep.remote_addr = field(ctx, l.daddr + 8)?;
                }
                _ => return Err(-1),
            }
        }
        addr_style::SPLIT => {
            ep.family = match field(ctx, l.family) {
                Ok(family) => family,
                // No family field (before 5.12): the kernel stores an IPv4 connection's
                // addresses v4-mapped in saddr_v6.
                Err(_) if is_v4_mapped(&field::<[u8; 16]>(ctx, l.saddr_v6)?) => AF_INET,
                Err(_) => AF_INET6,
            };
            ep.local_port = field(ctx, l.sport)?;
            ep.remote_port = field(ctx, l.dport)?;
            match ep.family {
                AF_INET => {
                    ep.local_addr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, l.saddr)?);
                    ep.remote_addr[..4].copy_from_slice(&field::<[u8; 4]>(ctx, l.daddr)?);
                }
                AF_INET6 => {
                    ep.local_addr = field(ctx, l.saddr_v6)?;
                    ep.remote_addr = field(ctx, l.daddr_v6)?;
                }
                _ => return Err(-1),
            }
        }
        _ => return Err(-1),
    }
    Ok(ep)
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
