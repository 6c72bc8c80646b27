//! `socket_killed`: a process outside sshd destroyed the socket (sock_diag destroy, as `ss -K`
//! does): the kernel aborted it with reset reason TCP_STATE in that process's context.

use serde_json::{json, Map};

use super::{Context, Ended, Finding};
use crate::{escape, verdict::Cause};

pub fn judge(e: &Ended, ctx: &Context) -> Option<Finding> {
    let reset = e.conn.resets_sent.first()?;
    let reason = reset.reason.map(|r| ctx.names.rst_reason(r))?;
    let actor = &reset.current;
    if reason != "TCP_STATE"
        || actor.in_interrupt
        || e.in_tree(actor.pid)
        || Some(actor.pid) == e.conn.listener_pid
    {
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
