//! `peer_reset`: a reset arrived from the network and this host had sent none: the client or
//! something on the path reset the connection, not this server.

use serde_json::Map;

use super::{Background, Ended, Finding};
use crate::verdict::{Cause, Outcome};

pub fn judge(e: &Ended, _ctx: &Background) -> Option<Finding> {
    if e.outcome != Outcome::ResetReceived {
        return None;
    }
    let remote = e.conn.tuple.remote;
    Some(Finding {
        cause: Cause::PeerReset,
        pid: None,
        details: Map::new(),
        evidence: Vec::new(),
        summary: format!(
            "a reset arrived from {remote} and this host had sent none: the client or a \
             middlebox (NAT, firewall, load balancer) reset the connection, not this server"
        ),
        hint: format!(
            "look at the client and the path: idle timeouts of NAT/firewalls (ClientAliveInterval \
             keeps sessions alive); capture with `tcpdump -ni any 'tcp[tcpflags] & tcp-rst != 0 \
             and port {}'`",
            e.conn.tuple.local.port()
        ),
    })
}
