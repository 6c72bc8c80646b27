//! `sshd_dropped`: the listening sshd accepted the connection and closed it without starting
//! a per-connection process (MaxStartups, PerSourcePenalties, …).

use serde_json::{json, Map};

use super::{authenticated, consequence, Context, Ended, Finding};
use crate::{
    discovery::sshd_config_value,
    state::Closer,
    verdict::{Cause, Outcome},
};

pub fn judge(e: &Ended, ctx: &Context) -> Option<Finding> {
    let listener = e.conn.listener_pid?;
    if e.conn.session_pid.is_some() || e.outcome == Outcome::Refused {
        return None;
    }
    // The listener itself closed it: the reset was sent while it ran, or it sent the FIN.
    let closed_by_listener = e
        .conn
        .resets_sent
        .iter()
        .any(|r| r.current.pid == listener && !r.current.in_interrupt)
        || e.conn.closed_first_by == Some(Closer::Sshd);
    if !closed_by_listener {
        return None;
    }
    let at = e.end_ts();
    let unauthenticated = ctx
        .conns
        .open_of_listener(listener, at)
        .filter(|c| c.id != e.conn.id)
        .filter(|c| !authenticated(ctx.procs.of_connection(c.id), c.session_pid))
        .count();
    let max_startups =
        sshd_config_value(listener, "MaxStartups").unwrap_or_else(|| "10:30:100 (default)".into());
    let mut details = Map::new();
    details.insert("listener_pid".into(), json!(listener));
    details.insert("unauthenticated_connections".into(), json!(unauthenticated));
    details.insert("max_startups".into(), json!(max_startups));
    Some(Finding {
        cause: Cause::SshdDropped,
        pid: Some(listener),
        details,
        evidence: Vec::new(),
        summary: format!(
            "the listening sshd[{listener}] accepted the connection and closed it without starting \
             a session, with {unauthenticated} other unauthenticated connection(s) open \
             (MaxStartups {max_startups}); {}",
            consequence(e.outcome)
        ),
        hint: format!(
            "sshd drops new connections past MaxStartups (log: 'drop connection #N … past \
             MaxStartups') or by PerSourcePenalties: raise MaxStartups in sshd_config, or find \
             who holds unauthenticated connections (`ss -tn state established '( sport = :{} )'`)",
            e.conn.tuple.local.port()
        ),
    })
}
