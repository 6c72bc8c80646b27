//! What a tracked connection receives. `tcp:tcp_probe` (tp_btf: the socket and the segment)
//! runs for every segment an established socket on the host receives, before TCP checks it.
//! The local port decides first, as for socket states; a tracked connection's history keeps
//! the IP headers of the peer's segments, and a reset gets a record with its own headers
//! beside them: a box on the path that sends a reset rarely matches the peer's TTL and IP ID.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skc_to_tcp_sock},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sshtrace_common::{
    Endpoints, PeerSegments, ResetFingerprintEvent, SockHistory, ABSENT,
    FINGERPRINTS_PER_CONNECTION,
};

use super::{
    client::{client_socket, note_server},
    member,
    sock_state::SOCK_HISTORY,
    socket::{sock_endpoints, SockFields, TypedSock},
};
use crate::{
    maps::{netns_tracked, port_tracked},
    record::submit_batched,
};

const TCP_RST: u8 = 0x04;

/// tp_btf (`const struct sock *sk, const struct sk_buff *skb`).
#[btf_tracepoint(function = "tcp_probe")]
pub fn tp_btf_tcp_probe(ctx: BtfTracePointContext) -> u32 {
    let _ = segment_received(&TypedSock(ctx.arg(0)), ctx.arg(1));
    0
}

/// The header fields of a received segment a fingerprint compares.
struct Headers {
    version: u8,
    ttl: u8,
    ip_id: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
}

#[inline(always)]
fn segment_received(sk: &TypedSock, skb: *const u8) -> Result<(), i32> {
    // The port alone first: this runs for every segment an established socket receives.
    let local_port: u16 = sk.read(layout!(structs.skc_num))?;
    let on_tracked_port = port_tracked(local_port);
    let client = !on_tracked_port && client_socket(sk.addr());
    if !on_tracked_port && !client {
        return Ok(());
    }
    let headers = read_headers(skb).ok_or(0)?;
    let history = SOCK_HISTORY.get_ptr_mut(sk.addr());
    if headers.flags & TCP_RST == 0 {
        if let Some(h) = history {
            let h = unsafe { &mut *h };
            note_peer(&mut h.peer, &headers);
            if client {
                note_server(h);
            }
        }
        return Ok(());
    }
    fingerprint(sk, local_port, history, &headers)
}

/// The IP and TCP headers of `skb` (IPv4 or IPv6 by the version nibble: an IPv6 socket
/// receives IPv4 segments too).
#[inline(always)]
fn read_headers(skb: *const u8) -> Option<Headers> {
    let s = layout!(structs);
    if s.skb_head == ABSENT {
        return None;
    }
    let head: *const u8 = member(skb, s.skb_head)?;
    let network: u16 = member(skb, s.skb_network_header)?;
    let transport: u16 = member(skb, s.skb_transport_header)?;
    let ip: [u8; 12] =
        unsafe { bpf_probe_read_kernel(head.wrapping_add(network as usize).cast()) }.ok()?;
    let tcp: [u8; 16] =
        unsafe { bpf_probe_read_kernel(head.wrapping_add(transport as usize).cast()) }.ok()?;
    let (ttl, ip_id) = match ip[0] >> 4 {
        4 => (ip[8], u16::from_be_bytes([ip[4], ip[5]])),
        6 => (ip[7], 0),
        _ => return None,
    };
    Some(Headers {
        version: ip[0] >> 4,
        ttl,
        ip_id,
        flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
    })
}

#[inline(always)]
fn note_peer(p: &mut PeerSegments, h: &Headers) {
    if p.count == 0 || h.ttl < p.ttl_min {
        p.ttl_min = h.ttl;
    }
    if p.count == 0 || h.ttl > p.ttl_max {
        p.ttl_max = h.ttl;
    }
    p.ttl_last = h.ttl;
    p.ip_id_last = h.ip_id;
    p.count = p.count.wrapping_add(1);
    p.last_ns = unsafe { bpf_ktime_get_ns() };
}

/// A reset: its headers, the socket's sequence state and the peer's baseline, sent for the
/// first few resets of a connection (the rest only counted).
#[inline(always)]
fn fingerprint(
    sk: &TypedSock,
    local_port: u16,
    history: Option<*mut SockHistory>,
    h: &Headers,
) -> Result<(), i32> {
    let mut peer = PeerSegments::default();
    if let Some(ptr) = history {
        let kept = unsafe { &mut *ptr };
        kept.claimed = 1;
        kept.peer.resets = kept.peer.resets.wrapping_add(1);
        peer = kept.peer;
    } else {
        peer.resets = 1;
    }
    if peer.resets > FINGERPRINTS_PER_CONNECTION {
        return Ok(());
    }
    let mut endpoints = Endpoints::default();
    sock_endpoints(sk, local_port, &mut endpoints)?;
    if !netns_tracked(endpoints.netns) {
        return Ok(());
    }
    let tcp = TypedSock(unsafe { bpf_skc_to_tcp_sock(sk.addr() as *mut _) } as *const u8);
    let s = layout!(structs);
    let rcv_nxt: Result<u32, i32> = tcp.read(s.tcp_rcv_nxt);
    let snd_una: Result<u32, i32> = tcp.read(s.tcp_snd_una);
    let snd_nxt: Result<u32, i32> = tcp.read(s.tcp_snd_nxt);
    let socket_unread = (rcv_nxt.is_err() || snd_una.is_err() || snd_nxt.is_err()) as u8;
    submit_batched(|e: &mut ResetFingerprintEvent| {
        e.skaddr = sk.addr();
        e.endpoints = endpoints;
        e.peer = peer;
        e.seq = h.seq;
        e.ack = h.ack;
        e.window = h.window;
        e.ip_id = h.ip_id;
        e.ttl = h.ttl;
        e.tcp_flags = h.flags;
        e.rcv_nxt = rcv_nxt.unwrap_or(0);
        e.snd_una = snd_una.unwrap_or(0);
        e.snd_nxt = snd_nxt.unwrap_or(0);
        e.socket_unread = socket_unread;
        e.ip_version = h.version;
    });
    Ok(())
}
