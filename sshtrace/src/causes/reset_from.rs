//! Who sent a received reset: the peer's host or a box on the path. A box that resets a flow
//! (a REJECT rule, a stateful firewall or NAT that forgot it, a load balancer, an IPS) sends
//! from its own place in the network, with its own IP stack: its reset's TTL tells a
//! different hop distance than the peer's segments, and its IPv4 ID does not continue the
//! peer's. Only what the figures show is claimed: a box that rewrites TTLs makes the hop
//! distance useless, and then only the IP ID can tell (Weaver, Sommer, Paxson, "Detecting
//! Forged TCP Reset Packets", NDSS 2009).

use crate::trace::reset_fingerprint::ResetFingerprint;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetFrom {
    PeerHost,
    /// A box this many hops closer than the peer.
    Path {
        hops_closer: u8,
    },
    Undetermined,
}

impl ResetFrom {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PeerHost => "peer_host",
            Self::Path { .. } => "path",
            Self::Undetermined => "undetermined",
        }
    }
}

/// Which end of the connection this host is: the peer is the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    pub const fn peer(self) -> &'static str {
        match self {
            Self::Server => "client",
            Self::Client => "server",
        }
    }

    pub const fn me(self) -> &'static str {
        match self {
            Self::Server => "this server",
            Self::Client => "this client",
        }
    }

    /// The keepalive setting of this side first.
    pub const fn keepalive(self) -> &'static str {
        match self {
            Self::Server => "ClientAliveInterval (server) or ServerAliveInterval (client)",
            Self::Client => "ServerAliveInterval (client) or ClientAliveInterval (server)",
        }
    }

    pub const fn peer_host_hint(self) -> &'static str {
        match self {
            Self::Server => {
                "look at the client: its ssh was killed or aborted, or its kernel or firewall \
                 answered for a connection it no longer had (reboot, REJECT); `sshtrace client` \
                 there names the process"
            }
            Self::Client => {
                "look at the server: its sshd was killed or aborted the session, or its kernel \
                 or firewall answered for a connection it no longer had (reboot, REJECT); \
                 `sshtrace` there says which"
            }
        }
    }
}

/// The conclusion and the figures that make it, in a phrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub from: ResetFrom,
    pub why: String,
}

/// How far an IPv4 ID may run ahead of the peer's last one seen and still continue it: the
/// peer's stack numbers a connection's packets in order, and a few may have gone unseen.
const IP_ID_STEP_MAX: u16 = 16;

/// The TTLs stacks start from: a TTL is taken to have started at the least of these not below it.
const INITIAL_TTLS: [u8; 4] = [32, 64, 128, 255];

fn initial_ttl(ttl: u8) -> u8 {
    INITIAL_TTLS
        .into_iter()
        .find(|&initial| ttl <= initial)
        .unwrap_or(255)
}

/// Routers passed: 0 when a packet arrives with the TTL it started with.
fn hops(ttl: u8) -> u8 {
    initial_ttl(ttl) - ttl
}

pub fn attribute(fp: &ResetFingerprint) -> Attribution {
    let ttl = fp.ttl;
    let Some(peer) = fp.peer else {
        return undetermined(format!(
            "no segment of the peer's was seen before the reset (TTL {ttl}) to compare it with"
        ));
    };
    let id_continues = match (fp.ip_id, peer.ip_id_last) {
        (Some(id), Some(last)) if id != 0 && last != 0 => {
            (1..=IP_ID_STEP_MAX).contains(&id.wrapping_sub(last))
        }
        _ => false,
    };
    let theirs = if peer.ttl_min == peer.ttl_max {
        format!("{}", peer.ttl_min)
    } else {
        format!("{}–{}", peer.ttl_min, peer.ttl_max)
    };
    let same_distance = (peer.ttl_min..=peer.ttl_max).contains(&ttl);
    if same_distance && id_continues {
        return Attribution {
            from: ResetFrom::PeerHost,
            why: format!(
                "its TTL {ttl} is the peer's segments' and its IP ID {} continues theirs ({})",
                fp.ip_id.unwrap_or(0),
                peer.ip_id_last.unwrap_or(0)
            ),
        };
    }
    if same_distance && hops(peer.ttl_last) == 0 {
        return undetermined(format!(
            "its TTL {ttl} is the peer's segments', but those arrive with the TTL they started \
             with (the peer is on this link, or a box on the path rewrites TTLs) and the \
             reset's IP ID does not continue theirs: a box could have sent it"
        ));
    }
    if same_distance {
        return Attribution {
            from: ResetFrom::PeerHost,
            why: format!(
                "its TTL {ttl} is the peer's segments' ({} hop(s) away)",
                hops(peer.ttl_last)
            ),
        };
    }
    if ttl > peer.ttl_max && initial_ttl(ttl) == initial_ttl(peer.ttl_max) {
        let hops_closer = ttl - peer.ttl_max;
        return Attribution {
            from: ResetFrom::Path { hops_closer },
            why: format!(
                "its TTL {ttl} against the peer's segments' {theirs}, from the same starting \
                 TTL ({})",
                initial_ttl(ttl)
            ),
        };
    }
    undetermined(format!(
        "its TTL {ttl} against the peer's segments' {theirs}: another starting TTL, or a \
         changed route; the hop counts cannot be compared"
    ))
}

fn undetermined(why: String) -> Attribution {
    Attribution {
        from: ResetFrom::Undetermined,
        why,
    }
}

/// The reset that ended the connection: the one at the expected sequence number, else the
/// latest.
pub fn decisive(fingerprints: &[ResetFingerprint]) -> Option<&ResetFingerprint> {
    fingerprints
        .iter()
        .find(|fp| fp.seq_offset() == Some(0))
        .or(fingerprints.last())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::reset_fingerprint::{Expected, PeerBaseline};

    fn fingerprint(ttl: u8, ip_id: u16, peer_ttl: u8, peer_id: u16) -> ResetFingerprint {
        ResetFingerprint {
            ts_ns: 10_000_000_000,
            ttl,
            ip_id: Some(ip_id),
            window: 0,
            tcp_flags: 0x14,
            seq: 1000,
            ack: 0,
            expected: Some(Expected {
                rcv_nxt: 1000,
                snd_una: 5,
                snd_nxt: 5,
            }),
            peer: Some(PeerBaseline {
                ttl_last: peer_ttl,
                ttl_min: peer_ttl,
                ttl_max: peer_ttl,
                ip_id_last: Some(peer_id),
                segments: 12,
                last_ns: 4_000_000_000,
            }),
            resets: 1,
        }
    }

    #[test]
    fn the_peers_own_stack_continues_its_ip_ids() {
        let a = attribute(&fingerprint(63, 0x1235, 63, 0x1234));
        assert_eq!(a.from, ResetFrom::PeerHost, "{}", a.why);
        // On this link too (TTL as sent): the IP ID decides.
        let a = attribute(&fingerprint(64, 0x1236, 64, 0x1234));
        assert_eq!(a.from, ResetFrom::PeerHost, "{}", a.why);
    }

    #[test]
    fn a_routed_peer_at_the_same_distance_is_the_peer() {
        // The peer's kernel answering without its socket: IP ID 0, same hop count.
        let a = attribute(&fingerprint(52, 0, 52, 0x4000));
        assert_eq!(a.from, ResetFrom::PeerHost, "{}", a.why);
    }

    #[test]
    fn a_box_closer_than_the_peer_is_the_path() {
        let a = attribute(&fingerprint(64, 0, 63, 0x1234));
        assert_eq!(a.from, ResetFrom::Path { hops_closer: 1 }, "{}", a.why);
        let a = attribute(&fingerprint(62, 0, 60, 0x1234));
        assert_eq!(a.from, ResetFrom::Path { hops_closer: 2 }, "{}", a.why);
    }

    /// A NAT that sets every TTL to 64: the box's own reset looks as near as the peer.
    #[test]
    fn rewritten_ttls_leave_it_undetermined() {
        let a = attribute(&fingerprint(64, 0, 64, 0x1234));
        assert_eq!(a.from, ResetFrom::Undetermined, "{}", a.why);
    }

    #[test]
    fn no_baseline_or_another_stack_is_undetermined() {
        let mut fp = fingerprint(64, 0, 63, 1);
        fp.peer = None;
        assert_eq!(attribute(&fp).from, ResetFrom::Undetermined);
        // A Windows-like peer (128) and a Linux box (64): TTLs from different starts.
        assert_eq!(
            attribute(&fingerprint(63, 0, 120, 1)).from,
            ResetFrom::Undetermined
        );
        // Farther than the peer: a changed route, not a box on the path.
        assert_eq!(
            attribute(&fingerprint(60, 0, 62, 1)).from,
            ResetFrom::Undetermined
        );
    }

    #[test]
    fn the_reset_at_the_expected_sequence_decides() {
        let mut blind = fingerprint(64, 0, 63, 1);
        blind.seq = 999_999;
        let real = fingerprint(63, 2, 63, 1);
        let both = [blind.clone(), real.clone()];
        assert_eq!(decisive(&both), Some(&real));
        assert_eq!(decisive(&[blind.clone()]), Some(&blind));
    }
}
