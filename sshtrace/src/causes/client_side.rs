//! `sshtrace client`: verdicts for the connections of this host's `ssh` processes. A connect
//! answered with a reset (`connect_refused`: by the server's host, or by a box on the path
//! that claims to be it), a session reset from the network (`peer_reset`, from the server's
//! side of the path), or aborted by this host (`client_aborted`).

use serde_json::json;

use super::{
    peer_reset::{self, attributed, Attributed},
    reset_from::{ResetFrom, Side},
    Background, Ended, Finding,
};
use crate::verdict::{Cause, Outcome};

/// The rules for a client's connection, most specific first.
pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    connect_refused(e)
        .or_else(|| peer_reset::judge_on(e, ctx, Side::Client))
        .or_else(|| client_aborted(e, ctx))
}

fn connect_refused(e: &Ended) -> Option<Finding> {
    if e.conn.established_ts.is_some() || e.conn.resets_received().is_empty() {
        return None;
    }
    let server = e.conn.tuple.remote;
    let Attributed {
        from, why, details, ..
    } = attributed(e);
    let (summary, hint) = match from {
        ResetFrom::PeerHost => (
            format!(
                "the server's host {} refused the connection: nothing listens on port {} there, \
                 or its own firewall REJECTs it; the reset's fingerprint: {why}",
                server.ip(),
                server.port()
            ),
            format!(
                "on the server: `ss -tlnp 'sport = :{}'` (is sshd listening there?) and its \
                 firewall rules; `sshtrace` there names the cause",
                server.port()
            ),
        ),
        ResetFrom::Path { hops_closer } => (
            format!(
                "a box on the path, {hops_closer} hop(s) closer than the server {server}, \
                 refused the connection in the server's name (a REJECT rule, a load balancer \
                 with no backend): the server itself never answered; the reset's \
                 fingerprint: {why}"
            ),
            format!(
                "find the box: `traceroute -T -p {} {}` and look for REJECT (tcp-reset) rules \
                 or a load balancer there",
                server.port(),
                server.ip()
            ),
        ),
        ResetFrom::Undetermined => (
            format!(
                "the connection to {server} was refused with a reset, by the server's host or \
                 a box on the path: the reset's fingerprint does not tell which: {why}"
            ),
            format!(
                "connect once successfully to {} from here (its packets become the baseline \
                 the next refusal is compared with), or run `sshtrace` on the server",
                server.ip()
            ),
        ),
    };
    Some(Finding {
        cause: Cause::ConnectRefused,
        pid: None,
        details,
        evidence: Vec::new(),
        summary,
        hint,
    })
}

fn client_aborted(e: &Ended, ctx: &Background) -> Option<Finding> {
    if e.outcome != Outcome::ResetSent {
        return None;
    }
    let reset = e.conn.resets_sent.first()?;
    let reason = reset.reason.map(|r| ctx.names.rst_reason(r));
    let mut details = serde_json::Map::new();
    details.insert(
        "reason".into(),
        json!(reason.as_deref().unwrap_or("unknown")),
    );
    details.insert("state".into(), json!(ctx.names.tcp_state(reset.state)));
    let why = match reason.as_deref() {
        Some("TCP_ABORT_ON_CLOSE") => {
            "it closed the socket with data unread (killed, or it exited)"
        }
        Some("TCP_ABORT_ON_DATA") => "data arrived after it had closed the socket",
        Some("TCP_ABORT_ON_LINGER" | "TCP_ABORT_ON_MEMORY" | "TCP_KEEPALIVE_TIMEOUT") => {
            "its kernel aborted the connection"
        }
        _ => "its TCP sent a reset",
    };
    Some(Finding {
        cause: Cause::ClientAborted,
        pid: None,
        details,
        evidence: Vec::new(),
        summary: format!(
            "this host's ssh aborted the connection to {}: {why}; the server saw a reset from \
             its client",
            e.conn.tuple.remote
        ),
        hint: "see how the ssh process ended (killed by a signal, a ServerAliveCountMax \
               timeout, a ProxyCommand that died); the process is named in the verdict"
            .into(),
    })
}
