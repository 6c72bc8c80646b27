//! Dropped and refused TCP segments to or from tracked ports. `skb:kfree_skb`, by the kernel's
//! drop reason: NETFILTER_DROP (a firewall rule), and, on kernels whose `tcp:tcp_send_reset`
//! does not report resets sent without a socket (before 6.10), NO_SOCKET: the segment nothing
//! listened for, which the stack answers with a RST. Kernels without drop reasons (before
//! 5.17) show that refusal only in `tcp_v4_send_reset`/`tcp_v6_send_reset` called without a
//! socket: kprobes, attached only there. The 4-tuple is read from the packet's own IP and TCP
//! headers.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{kprobe, tracepoint},
    programs::{ProbeContext, TracePointContext},
};
use sshtrace_common::{
    burst_kind, Endpoints, FirewallDropEvent, SendResetEvent, ABSENT, REASON_NO_SOCKET_DROP,
};

use super::{
    field,
    tcp::{burst, client_key},
};
use crate::{
    maps::{netns_tracked, port_tracked, skb_netns},
    record::{submit, submit_batched},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_RST: u8 = 0x04;

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

/// `tcp_v4_send_reset(const struct sock *sk, struct sk_buff *skb)`: with no socket, the reset
/// answers a segment nothing listened for.
#[kprobe]
pub fn tcp_v4_send_reset(ctx: ProbeContext) -> u32 {
    let _ = try_send_reset_without_socket(&ctx, ETH_P_IP);
    0
}

#[kprobe]
pub fn tcp_v6_send_reset(ctx: ProbeContext) -> u32 {
    let _ = try_send_reset_without_socket(&ctx, ETH_P_IPV6);
    0
}

fn try_send_reset_without_socket(ctx: &ProbeContext, protocol: u16) -> Result<(), i32> {
    let sk: u64 = ctx.arg(0).ok_or(-1)?;
    if sk != 0 {
        // Resets of a socket are `tcp:tcp_send_reset`'s.
        return Ok(());
    }
    let skb: u64 = ctx.arg(1).ok_or(-1)?;
    match tracked_segment(skb, protocol)? {
        Some(segment) => refused(segment),
        None => Ok(()),
    }
}

/// A TCP segment's addresses as seen from this host's tracked port.
struct Segment {
    endpoints: Endpoints,
    flags: u8,
    /// The segment was addressed to the tracked port (not sent from it).
    inbound: bool,
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(kfree_skb);
    let reason: u32 = field(ctx, l.reason)?;
    // The cheap test first: every freed packet on the host passes here.
    let no_socket = reason == setting!(no_socket_drop);
    if reason != setting!(netfilter_drop) && !no_socket {
        return Ok(());
    }
    let protocol: u16 = field(ctx, l.protocol)?;
    let skb: u64 = field(ctx, l.skbaddr)?;
    let Some(segment) = tracked_segment(skb, protocol)? else {
        return Ok(());
    };
    if no_socket {
        return refused(segment);
    }
    // A flood against a DROP rule: a few records per client and interval, the rest counted.
    let Some(suppressed) = burst(client_key(&segment.endpoints, burst_kind::FIREWALL_DROP)) else {
        return Ok(());
    };
    submit(|e: &mut FirewallDropEvent| {
        e.tcp_flags = segment.flags as u16;
        e.inbound = segment.inbound as u16;
        e.suppressed = suppressed;
        e.endpoints = segment.endpoints;
    });
    Ok(())
}

/// A segment to a tracked port that found no socket: the kernel answers it with a RST (unless
/// it is itself one), reported as the reset `tcp:tcp_send_reset` shows on newer kernels.
#[inline(always)]
fn refused(segment: Segment) -> Result<(), i32> {
    if !segment.inbound || segment.flags & TCP_RST != 0 {
        return Ok(());
    }
    let endpoints = segment.endpoints;
    let Some(suppressed) = burst(client_key(&endpoints, burst_kind::REFUSAL)) else {
        return Ok(());
    };
    submit_batched(|e: &mut SendResetEvent| {
        e.skaddr = 0;
        e.state = 0;
        e.reason = REASON_NO_SOCKET_DROP;
        e.seg_flags = segment.flags as u16;
        e.suppressed = suppressed;
        e.endpoints = endpoints;
    });
    Ok(())
}

/// The TCP segment in `skb` when it is to or from a tracked port in a tracked namespace.
#[inline(always)]
fn tracked_segment(skb: u64, protocol: u16) -> Result<Option<Segment>, i32> {
    let s = layout!(structs);
    if s.skb_head == ABSENT || s.skb_network_header == ABSENT || s.skb_transport_header == ABSENT {
        return Err(-1);
    }
    let skb_ptr = skb as *const u8;
    let (head, network, transport) = unsafe {
        let head: u64 = bpf_probe_read_kernel(skb_ptr.add(s.skb_head as usize).cast())?;
        let network: u16 =
            bpf_probe_read_kernel(skb_ptr.add(s.skb_network_header as usize).cast())?;
        let transport: u16 =
            bpf_probe_read_kernel(skb_ptr.add(s.skb_transport_header as usize).cast())?;
        (head as *const u8, network as usize, transport as usize)
    };
    let ip = unsafe { head.add(network) };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let family = match protocol {
        ETH_P_IP => {
            let proto: u8 = unsafe { bpf_probe_read_kernel(ip.add(9))? };
            if proto != IPPROTO_TCP {
                return Ok(None);
            }
            src[..4]
                .copy_from_slice(&unsafe { bpf_probe_read_kernel::<[u8; 4]>(ip.add(12).cast())? });
            dst[..4]
                .copy_from_slice(&unsafe { bpf_probe_read_kernel::<[u8; 4]>(ip.add(16).cast())? });
            AF_INET
        }
        ETH_P_IPV6 => {
            // Extension headers are not followed: TCP must be the next header.
            let next: u8 = unsafe { bpf_probe_read_kernel(ip.add(6))? };
            if next != IPPROTO_TCP {
                return Ok(None);
            }
            src = unsafe { bpf_probe_read_kernel(ip.add(8).cast())? };
            dst = unsafe { bpf_probe_read_kernel(ip.add(24).cast())? };
            AF_INET6
        }
        _ => return Ok(None),
    };
    let tcp = unsafe { head.add(transport) };
    let sport = u16::from_be(unsafe { bpf_probe_read_kernel(tcp.cast())? });
    let dport = u16::from_be(unsafe { bpf_probe_read_kernel(tcp.add(2).cast())? });
    let flags: u8 = unsafe { bpf_probe_read_kernel(tcp.add(13))? };
    let inbound = port_tracked(dport);
    if !inbound && !port_tracked(sport) {
        return Ok(None);
    }
    let netns = skb_netns(skb);
    if !netns_tracked(netns) {
        return Ok(None);
    }
    let (local_port, remote_port, local_addr, remote_addr) = if inbound {
        (dport, sport, dst, src)
    } else {
        (sport, dport, src, dst)
    };
    Ok(Some(Segment {
        endpoints: Endpoints {
            family,
            local_port,
            remote_port,
            _pad: 0,
            netns,
            _pad2: 0,
            local_addr,
            remote_addr,
        },
        flags,
        inbound,
    }))
}
