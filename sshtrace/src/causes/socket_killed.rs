//! `socket_killed`: a process outside sshd destroyed the socket (sock_diag destroy, as `ss -K`
//! does). Resets with reason TCP_STATE come from tcp_abort() and tcp_disconnect(), which run in
//! the context of the process that asked for them, so the current task is the actor.

use serde_json::{json, Map};

use super::{Context, Ended, Finding};
use crate::{escape, verdict::Cause};

pub fn judge(e: &Ended, ctx: &Context) -> Option<Finding> {
    let reset = e.conn.resets_sent.first()?;
    let reason = reset.reason.map(|r| ctx.names.rst_reason(r))?;
    let actor = &reset.current;
    if reason != "TCP_STATE" || e.in_tree(actor.pid) || is_sshd(actor.pid, e, ctx) {
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

/// sshd itself aborting sockets (a listener closing with connections queued) is not a kill.
pub(super) fn is_sshd(pid: u32, e: &Ended, ctx: &Context) -> bool {
    Some(pid) == e.conn.listener_pid
        || ctx.sshd.listeners.contains_key(&pid)
        || ctx.sshd.gone.iter().any(|l| l.pid == pid)
        || ctx.procs.get(pid).is_some_and(|p| p.runs_sshd())
}
