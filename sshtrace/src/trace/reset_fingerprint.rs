//! A received reset's fingerprint as the kernel took it (`tcp:tcp_probe`): the reset's own
//! headers, what the socket expected, and the peer's earlier segments to compare them with.

use sshtrace_common as wire;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetFingerprint {
    pub ts_ns: u64,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4 identification; `None` for IPv6.
    pub ip_id: Option<u16>,
    pub window: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The socket's sequence state when it arrived; `None` where it could not be read.
    pub expected: Option<Expected>,
    /// The peer's own segments before it; `None` when none was seen (a connection older
    /// than sshtrace, or its history evicted).
    pub peer: Option<PeerBaseline>,
    /// Resets this connection received so far, this one included.
    pub resets: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub rcv_nxt: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerBaseline {
    pub ttl_last: u8,
    pub ttl_min: u8,
    pub ttl_max: u8,
    /// `None` for IPv6.
    pub ip_id_last: Option<u16>,
    pub segments: u32,
    pub last_ns: u64,
}

impl ResetFingerprint {
    pub fn from_wire(e: &wire::ResetFingerprintEvent, ts_ns: u64) -> Self {
        let ipv4 = e.ip_version == 4;
        let p = &e.peer;
        Self {
            ts_ns,
            ttl: e.ttl,
            ip_id: ipv4.then_some(e.ip_id),
            window: e.window,
            tcp_flags: e.tcp_flags,
            seq: e.seq,
            ack: e.ack,
            expected: (e.socket_unread == 0).then_some(Expected {
                rcv_nxt: e.rcv_nxt,
                snd_una: e.snd_una,
                snd_nxt: e.snd_nxt,
            }),
            peer: (p.count > 0).then_some(PeerBaseline {
                ttl_last: p.ttl_last,
                ttl_min: p.ttl_min,
                ttl_max: p.ttl_max,
                ip_id_last: ipv4.then_some(p.ip_id_last),
                segments: p.count,
                last_ns: p.last_ns,
            }),
            resets: p.resets.max(1),
        }
    }

    /// How far the reset's sequence number is from the next one the socket expects: 0 is the
    /// only value that resets a connection (RFC 5961); elsewhere in the window the socket
    /// answers with a challenge ACK, outside it ignores the reset.
    pub fn seq_offset(&self) -> Option<i32> {
        self.expected
            .map(|x| self.seq.wrapping_sub(x.rcv_nxt) as i32)
    }

    /// Nanoseconds from the peer's previous segment to the reset.
    pub fn idle_ns(&self) -> Option<u64> {
        self.peer.map(|p| self.ts_ns.saturating_sub(p.last_ns))
    }
}
