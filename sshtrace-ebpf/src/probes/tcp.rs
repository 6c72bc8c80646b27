//! TCP resets on tracked local ports. These often run in softirq (or, on loopback, in the
//! sending task): the header's pid is not the socket's owner, and userspace attributes them by
//! `skaddr` and 4-tuple instead.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::LruPerCpuHashMap,
    programs::TracePointContext,
};
use sshtrace_common::{
    addr_style, burst_kind, counter, AddrLayout, Burst, BurstKey, Endpoints, ReceiveResetEvent,
    SendResetEvent, ABSENT, REASON_UNKNOWN, RESET_BURST_INTERVAL_NS, RESET_BURST_KEYS,
    SEG_FLAGS_UNKNOWN,
};

use super::{
    client::{client_mode, client_socket},
    field,
    sock_state::claim,
    socket::{AF_INET, AF_INET6},
};
use crate::{
    maps::{count, netns_tracked, port_tracked, sk_netns, skb_netns, stopped, tcp_states},
    record::submit_batched,
};

/// Offset of the flags byte in `struct tcphdr`.
const TCPHDR_FLAGS: usize = 13;

/// The burst key of a reset on `ep`: by tracked endpoint and client address.
pub(super) fn client_key(ep: &Endpoints, kind: u16) -> BurstKey {
    BurstKey {
        netns: ep.netns,
        local_port: ep.local_port,
        kind,
        local_addr: ep.local_addr,
        remote_addr: ep.remote_addr,
    }
}

/// Records sent per key, interval and CPU before the rest are only counted: sporadic refusals
/// each get their own verdict, a storm costs at most this many records per client per interval
/// on each CPU.
const RECORDS_PER_INTERVAL: u32 = 8;

/// Per CPU: a shared count would race (two CPUs sending records at once both carried the same
/// held-back count, and the summary counted thousands of refusals twice).
#[map]
static RESET_BURSTS: LruPerCpuHashMap<BurstKey, Burst> =
    LruPerCpuHashMap::with_max_entries(RESET_BURST_KEYS, 0);

/// `Some(count of resets held back before this one)` when a record should be sent now, `None`
/// when this one is only counted (or, once userspace stopped, not even that).
pub(super) fn burst(key: BurstKey) -> Option<u32> {
    if stopped() {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(b) = RESET_BURSTS.get_ptr_mut(key) else {
        let fresh = Burst {
            window_start_ns: now,
            sent_in_window: 1,
            suppressed: 0,
        };
        if RESET_BURSTS.insert(key, fresh, 0).is_ok() {
            count(counter::BURST_KEYS_ADDED);
        }
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
    // The port alone first: this runs for every reset on the host.
    let tracked = port_tracked(local_port(ctx, &l.addr)?)
        || (client_mode() && client_socket(field(ctx, l.skaddr)?));
    if !tracked {
        return Ok(());
    }
    let mut endpoints = read_endpoints(ctx, &l.addr)?;
    let skaddr: u64 = field(ctx, l.skaddr)?;
    let state: i32 = field(ctx, l.state).unwrap_or(-1);
    let mut seg_flags = SEG_FLAGS_UNKNOWN;
    // A listener answering a segment no connection took (a dead connection's retransmission,
    // a stray ACK): the record holds the listener's addresses, the segment the client's.
    let by_listener = skaddr != 0 && state == tcp_states().listen;
    if by_listener {
        seg_flags = client_of_answered_segment(ctx, &mut endpoints).unwrap_or(SEG_FLAGS_UNKNOWN);
    }
    endpoints.netns = if skaddr != 0 {
        sk_netns(skaddr)
    } else {
        field::<u64>(ctx, l.skbaddr).map(skb_netns).unwrap_or(0)
    };
    if !netns_tracked(endpoints.netns) {
        return Ok(());
    }
    // Resets without a connection socket come in storms (scans, floods): one record per
    // client per interval, the rest counted.
    let suppressed = if skaddr == 0 || by_listener {
        match burst(client_key(&endpoints, burst_kind::REFUSAL)) {
            Some(n) => n,
            None => return Ok(()),
        }
    } else {
        claim(skaddr);
        0
    };
    let reason: u32 = field(ctx, l.reason).unwrap_or(REASON_UNKNOWN);
    if skaddr == 0 {
        seg_flags = field::<u64>(ctx, l.skbaddr)
            .and_then(segment_flags)
            .unwrap_or(SEG_FLAGS_UNKNOWN);
    }
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

/// The client's address and port from the inbound segment a listener's reset answers (the
/// record's addresses are the listener's), written over the remote half of `ep`; the
/// segment's TCP flags.
#[inline(always)]
fn client_of_answered_segment(ctx: &TracePointContext, ep: &mut Endpoints) -> Option<u16> {
    let s = layout!(structs);
    if s.skb_head == ABSENT || s.skb_network_header == ABSENT || s.skb_transport_header == ABSENT {
        return None;
    }
    let skb = field::<u64>(ctx, layout!(send_reset.skbaddr)).ok()? as *const u8;
    unsafe {
        let head: u64 = bpf_probe_read_kernel(skb.add(s.skb_head as usize).cast()).ok()?;
        let network: u16 =
            bpf_probe_read_kernel(skb.add(s.skb_network_header as usize).cast()).ok()?;
        let transport: u16 =
            bpf_probe_read_kernel(skb.add(s.skb_transport_header as usize).cast()).ok()?;
        let ip = (head as *const u8).add(network as usize);
        let tcp = (head as *const u8).add(transport as usize);
        // The source address: at 12 in an IPv4 header, at 8 in an IPv6 one.
        match ep.family {
            AF_INET => ep.remote_addr[..4]
                .copy_from_slice(&bpf_probe_read_kernel::<[u8; 4]>(ip.add(12).cast()).ok()?),
            AF_INET6 => ep.remote_addr = bpf_probe_read_kernel(ip.add(8).cast()).ok()?,
            _ => return None,
        }
        ep.remote_port = u16::from_be(bpf_probe_read_kernel(tcp.cast()).ok()?);
        let flags: u8 = bpf_probe_read_kernel(tcp.add(TCPHDR_FLAGS)).ok()?;
        Some(flags as u16)
    }
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
    // A client of a tracked port on this host (its peer's port is tracked) is reported too:
    // the reset a firewall sends reaches the client, not sshd. The ports alone first: this
    // runs for every reset on the host.
    let client_side = if port_tracked(local_port(ctx, &l.addr)?)
        || (client_mode() && client_socket(field(ctx, l.skaddr)?))
    {
        0
    } else if port_tracked(remote_port(ctx, &l.addr)?) {
        1
    } else {
        return Ok(());
    };
    let mut endpoints = read_endpoints(ctx, &l.addr)?;
    let skaddr: u64 = field(ctx, l.skaddr)?;
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
        match burst(client_key(&server, burst_kind::CLIENT_SIDE)) {
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

/// The local port alone, in whichever style this kernel's record uses.
#[inline(always)]
pub(super) fn local_port(ctx: &TracePointContext, l: &AddrLayout) -> Result<u16, i32> {
    match l.style {
        // sockaddr_in{,6}: the big-endian port follows the 2-byte family in both.
        addr_style::SOCKADDR => Ok(u16::from_be(field(ctx, l.saddr + 2)?)),
        addr_style::SPLIT => field(ctx, l.sport),
        _ => Err(-1),
    }
}

/// The remote port alone, in whichever style this kernel's record uses.
#[inline(always)]
fn remote_port(ctx: &TracePointContext, l: &AddrLayout) -> Result<u16, i32> {
    match l.style {
        addr_style::SOCKADDR => Ok(u16::from_be(field(ctx, l.daddr + 2)?)),
        addr_style::SPLIT => field(ctx, l.dport),
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
