//! `sshtrace client`: the outgoing connections of `ssh` processes on this host (`scp`, `sftp`
//! and `rsync` run one). A socket is followed from its connect (CLOSE → SYN_SENT, in the
//! connecting task's context) when that task is called `ssh` — userspace checks the
//! executable behind the name before judging. A reset that refuses the connect comes before
//! any `tcp_probe` run, so the packet itself is read as the device hands it over
//! (`net:netif_receive_skb`, attached in client mode only), compared with what earlier
//! connections to the same server received.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap},
    programs::RawTracePointContext,
};
use sshtrace_common::{
    counter, ClientConnectEvent, Endpoints, PeerSegments, ResetFingerprintEvent, ServerKey,
    SockHistory, ABSENT,
};

use super::{
    member,
    process::executable,
    socket::{AF_INET, AF_INET6},
    sshd_output::copy_user,
};
use crate::{
    maps::{count, netns_tracked, skb_netns, SETTINGS},
    record::{submit, submit_batched},
};

/// The sockets of followed `ssh` processes, by address: [`LIVE`], or [`CLOSED`] — kept after
/// the close, whose reset (data unread) the kernel sends after moving the socket to CLOSE,
/// until the address serves another socket. An LRU: closed entries nobody reuses go first.
#[map]
static CLIENT_SOCKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(8192, 0);

const LIVE: u8 = 1;
const CLOSED: u8 = 2;

/// Server ports the followed clients connected to: a received packet's source port decides
/// first in the per-packet hook.
#[map]
static SERVER_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// The IP headers a server's segments arrived with, from earlier connections: what a reset
/// refusing a new connect is compared with.
#[map]
static SERVER_BASELINES: LruHashMap<ServerKey, PeerSegments> =
    LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
pub fn client_mode() -> bool {
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.client_mode) != 0 }
}

/// Whether the socket at `skaddr` is a followed client's (live, or just closed).
#[inline(always)]
pub fn client_socket(skaddr: u64) -> bool {
    client_mode() && unsafe { CLIENT_SOCKS.get(skaddr) }.is_some()
}

/// A state change other than a connect: whether it is a followed client socket's. A closed
/// one's address serving a new socket is forgotten.
#[inline(always)]
pub fn live_client_socket(skaddr: u64) -> bool {
    match unsafe { CLIENT_SOCKS.get(skaddr) } {
        Some(&LIVE) => true,
        Some(_) => {
            let _ = CLIENT_SOCKS.remove(skaddr);
            false
        }
        None => false,
    }
}

/// At a connect: follows the socket when the connecting task is `ssh`.
#[inline(always)]
pub fn follow_connect(skaddr: u64, remote_port: u16) -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    if comm[..4] != *b"ssh\0" {
        // Another program's connect on a closed client socket's address.
        let _ = CLIENT_SOCKS.remove(skaddr);
        return false;
    }
    if CLIENT_SOCKS.insert(skaddr, LIVE, 0).is_err() {
        count(counter::CLIENT_SOCKETS_NOT_FOLLOWED);
        return false;
    }
    if let Some(slot) = SERVER_PORTS.get_ptr_mut(remote_port as u32) {
        unsafe { *slot = 1 };
    }
    true
}

/// What the connecting process is: its executable's owner and mode, its parent, and its
/// command line (the arguments only: the environment after them is never copied).
#[inline(always)]
pub fn report_connect(skaddr: u64) {
    let s = layout!(structs);
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let exe = executable();
    let parent_tgid = member::<*const u8>(task, s.task_real_parent)
        .and_then(|parent| member::<u32>(parent, s.task_tgid))
        .unwrap_or(0);
    let mm = member::<*const u8>(task, s.task_mm).unwrap_or(core::ptr::null());
    let start: u64 = member(mm, s.mm_arg_start).unwrap_or(0);
    let end: u64 = member(mm, s.mm_arg_end).unwrap_or(0);
    let len = if start != 0 && end > start {
        end - start
    } else {
        0
    };
    submit(|e: &mut ClientConnectEvent| {
        e.skaddr = skaddr;
        e.parent_tgid = parent_tgid;
        e.exe_known = exe.known as u8;
        e.exe_uid = exe.uid;
        e.exe_mode = exe.mode;
        e.args_len = len;
        e.args_copied = copy_user(start, len, &mut e.args);
    });
}

/// At the close: kept as [`CLOSED`] for the reset that may follow it.
#[inline(always)]
pub fn closed(skaddr: u64) {
    let _ = CLIENT_SOCKS.insert(skaddr, CLOSED, 0);
}

/// Notes the server's segments as the baseline of its next connections (the first of each
/// 64, so that a long session keeps it fresh at little cost).
#[inline(always)]
pub fn note_server(history: &SockHistory) {
    if history.peer.count & 63 != 1 {
        return;
    }
    let key = ServerKey {
        netns: history.endpoints.netns,
        _pad: 0,
        addr: history.endpoints.remote_addr,
    };
    let _ = SERVER_BASELINES.insert(key, history.peer, 0);
}

const IPPROTO_TCP: u8 = 6;
const TCP_RST: u8 = 0x04;

/// raw tracepoint `netif_receive_skb(struct sk_buff *skb)`: every packet a device hands over.
#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: RawTracePointContext) -> u32 {
    let _ = packet_received(ctx.arg::<*const u8>(0));
    0
}

#[inline(always)]
fn packet_received(skb: *const u8) -> Option<()> {
    let offset = layout!(structs.skb_data);
    if offset == ABSENT {
        return None;
    }
    let data: *const u8 = member(skb, offset)?;
    let first: u8 = unsafe { bpf_probe_read_kernel(data) }.ok()?;
    let mut ep = Endpoints::default();
    let (tcp, ttl, ip_id) = match first >> 4 {
        4 => {
            let ip: [u8; 20] = unsafe { bpf_probe_read_kernel(data.cast()) }.ok()?;
            if ip[9] != IPPROTO_TCP {
                return None;
            }
            ep.family = AF_INET;
            ep.remote_addr[..4].copy_from_slice(&ip[12..16]);
            ep.local_addr[..4].copy_from_slice(&ip[16..20]);
            let header_len = ((ip[0] & 0x0f) as usize) * 4;
            (
                data.wrapping_add(header_len),
                ip[8],
                u16::from_be_bytes([ip[4], ip[5]]),
            )
        }
        6 => {
            let ip: [u8; 8] = unsafe { bpf_probe_read_kernel(data.cast()) }.ok()?;
            if ip[6] != IPPROTO_TCP {
                return None;
            }
            ep.family = AF_INET6;
            ep.remote_addr = unsafe { bpf_probe_read_kernel(data.wrapping_add(8).cast()) }.ok()?;
            ep.local_addr = unsafe { bpf_probe_read_kernel(data.wrapping_add(24).cast()) }.ok()?;
            (data.wrapping_add(40), ip[7], 0)
        }
        _ => return None,
    };
    let th: [u8; 16] = unsafe { bpf_probe_read_kernel(tcp.cast()) }.ok()?;
    ep.remote_port = u16::from_be_bytes([th[0], th[1]]);
    let server_port = SERVER_PORTS
        .get(ep.remote_port as u32)
        .is_some_and(|&p| p != 0);
    if th[13] & TCP_RST == 0 || !server_port {
        return None;
    }
    ep.local_port = u16::from_be_bytes([th[2], th[3]]);
    ep.netns = skb_netns(skb as u64);
    if !netns_tracked(ep.netns) {
        return None;
    }
    let key = ServerKey {
        netns: ep.netns,
        _pad: 0,
        addr: ep.remote_addr,
    };
    let peer = unsafe { SERVER_BASELINES.get(key) }
        .copied()
        .unwrap_or_default();
    submit_batched(|e: &mut ResetFingerprintEvent| {
        e.skaddr = 0;
        e.endpoints = ep;
        e.peer = peer;
        e.seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
        e.ack = u32::from_be_bytes([th[8], th[9], th[10], th[11]]);
        e.window = u16::from_be_bytes([th[14], th[15]]);
        e.tcp_flags = th[13];
        e.ttl = ttl;
        e.ip_id = ip_id;
        e.ip_version = first >> 4;
        e.socket_unread = 1;
    });
    Some(())
}
