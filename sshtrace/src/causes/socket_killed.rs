//! `socket_killed`: a process outside sshd destroyed the socket (sock_diag destroy, as `ss -K`
//! does). Resets with reason TCP_STATE come from tcp_abort() and tcp_disconnect(), which run in
//! the context of the process that asked for them, so the current task is the actor.
//!
//! tcp_abort() — a destroy of the connection itself — resets the socket in its state;
//! tcp_disconnect() first moves it to TCP_CLOSE: for a connection no process accepted, that
//! is its listener's queue flushed as the listening socket closed. Whoever closed it is the
//! actor: on a port sshd listens on, sshd itself (`sshd_dropped`) or a process that destroyed
//! sshd's listener (a kill); on another program's port, most likely that program closing its
//! own listener — not a kill, and not decided here.

use serde_json::{json, Map};

use super::{Background, Ended, Finding};
use crate::{escape, verdict::Cause};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    let reset = e.conn.resets_sent.first()?;
    let reason = reset.reason.map(|r| ctx.names.rst_reason(r))?;
    let actor = &reset.current;
    if reason != "TCP_STATE" || e.in_tree(actor.pid) || is_sshd(actor.pid, e, ctx) {
        return None;
    }
    let closed = crate::trace::state::tcp_states(ctx.names).close;
    let flushed_from_queue = reset.state == closed && e.conn.listener_pid.is_none();
    if flushed_from_queue && !sshd_port(e.conn.tuple.local.port(), ctx) {
        return None;
    }
    let mut details = Map::new();
    details.insert("actor_pid".into(), json!(actor.pid));
    details.insert("actor_comm".into(), json!(actor.comm));
    Some(Finding {
        cause: Cause::SocketKilled,
        pid: None,
        details,
        evidence: Vec::new(),
        summary: format!(
            "{}[{}] destroyed the socket (sock_diag destroy, as `ss -K` does): the kernel \
             aborted the connection with a reset",
            escape::text(&actor.comm),
            actor.pid
        ),
        hint: format!(
            "an administrator or an agent killed the socket: who runs pid {} \
             (ps -o pid,ppid,args -p {}); check scripts and security agents that call `ss -K`",
            actor.pid, actor.pid
        ),
    })
}

/// Whether an sshd listens, or listened, on `port`.
fn sshd_port(port: u16, ctx: &Background) -> bool {
    ctx.sshd
        .listeners
        .values()
        .chain(&ctx.sshd.gone)
        .any(|l| l.addrs.iter().any(|a| a.port() == port))
}

/// sshd itself aborting sockets (a listener closing with connections queued) is not a kill.
pub(super) fn is_sshd(pid: u32, e: &Ended, ctx: &Background) -> bool {
    Some(pid) == e.conn.listener_pid
        || ctx.sshd.listeners.contains_key(&pid)
        || ctx.sshd.gone.iter().any(|l| l.pid == pid)
        || ctx
            .procs
            .get(pid)
            .is_some_and(crate::trace::state::processes::Process::runs_sshd)
}
