//! `kernel_abort`: this host's TCP stack reset the connection for a reason of its own
//! (memory pressure, keepalive time-out, an invalid segment, …), not because an sshd process
//! closed it or was killed.

use serde_json::{json, Map};

use super::{Background, Ended, Finding};
use crate::verdict::{Cause, Outcome};

/// Reasons that mean a process's close or request (judged by the sshd and socket_killed rules)
/// or no socket at all. TCP_STATE is always asked for: tcp_abort() (a sock_diag destroy) or
/// tcp_disconnect() (e.g. a listener closing with connections queued).
const NOT_THE_STACKS_OWN: [&str; 4] = [
    "TCP_ABORT_ON_CLOSE",
    "TCP_STATE",
    "NO_SOCKET",
    "NOT_SPECIFIED",
];

fn explain(reason: &str) -> &'static str {
    match reason {
        "TCP_ABORT_ON_MEMORY" => {
            "out of TCP memory for orphaned sockets (net.ipv4.tcp_mem, tcp_max_orphans)"
        }
        "TCP_KEEPALIVE_TIMEOUT" => "keepalive probes went unanswered",
        "TCP_ABORT_ON_LINGER" => "the socket was closed with a zero linger time",
        "TCP_ABORT_ON_DATA" => "data arrived after the socket had been closed",
        "TCP_TIMEWAIT_SOCKET" => "a segment arrived for a connection in TIME_WAIT",
        _ => "the kernel's own decision (see enum sk_rst_reason)",
    }
}

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    if e.outcome != Outcome::ResetSent {
        return None;
    }
    let reset = e.conn.resets_sent.first()?;
    let reason = ctx.names.rst_reason(reset.reason?);
    if NOT_THE_STACKS_OWN.contains(&reason.as_str()) {
        return None;
    }
    let state = ctx.names.tcp_state(reset.state);
    let mut details = Map::new();
    details.insert("reason".into(), json!(reason));
    details.insert("state".into(), json!(state));
    let hint = match reason.as_str() {
        "TCP_ABORT_ON_MEMORY" => "check socket memory: `cat /proc/net/sockstat`, `ss -tm`, sysctl net.ipv4.tcp_mem",
        "TCP_KEEPALIVE_TIMEOUT" => {
            "the client or the path stopped answering (NAT or firewall time-outs, a dead client); \
             ClientAliveInterval makes sshd notice earlier and cleaner"
        }
        _ => "capture the connection's packets to see the segment the kernel rejected: tcpdump -ni any port <port>",
    };
    Some(Finding {
        cause: Cause::KernelAbort,
        pid: None,
        details,
        evidence: Vec::new(),
        summary: format!(
            "this host's TCP stack reset the connection on its own ({reason} in {state}: {}); no \
             sshd process caused it",
            explain(&reason)
        ),
        hint: hint.into(),
    })
}
