//! `sshd_dropped`: the listening sshd accepted the connection and closed it without starting
//! a per-connection process (MaxStartups, PerSourcePenalties, …), or closed its listening
//! socket while the connection waited in its accept queue (sshd stopped or restarted).

use serde_json::{json, Map};

use super::{authenticated, consequence, Context, Ended, Finding};
use crate::{
    state::Closer,
    verdict::{Cause, Outcome},
};

pub fn judge(e: &Ended, ctx: &Context) -> Option<Finding> {
    if e.conn.listener_pid.is_none() {
        return dropped_from_queue(e, ctx);
    }
    let listener = e.conn.listener_pid?;
    if e.conn.session_pid.is_some() || e.outcome == Outcome::Refused {
        return None;
    }
    // The listener itself closed it: the reset was sent while it ran, or it sent the FIN.
    let closed_by_listener = e.conn.resets_sent.iter().any(|r| r.current.pid == listener)
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
    let max_startups = max_startups(listener, ctx);
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

/// MaxStartups as discovery read it from the listener's `-o` or configuration file: sshd's
/// default when neither sets it, "unknown" when the file could not be read.
fn max_startups(listener: u32, ctx: &Context) -> String {
    match ctx.sshd.config_of(listener) {
        Some(c) => match (&c.max_startups, &c.unreadable) {
            (Some(value), _) => value.clone(),
            (None, Some(why)) => format!("unknown (its configuration is unreadable: {why})"),
            (None, None) => DEFAULT_MAX_STARTUPS.into(),
        },
        None => DEFAULT_MAX_STARTUPS.into(),
    }
}

const DEFAULT_MAX_STARTUPS: &str = "10:30:100 (default)";

/// A connection never accepted, reset (TCP_STATE, from tcp_disconnect of the queued child) by
/// the sshd that closed its listening socket.
fn dropped_from_queue(e: &Ended, ctx: &Context) -> Option<Finding> {
    let reset = e.conn.resets_sent.first()?;
    let closer = reset.current.pid;
    if reset.reason.map(|r| ctx.names.rst_reason(r)).as_deref() != Some("TCP_STATE")
        || !super::socket_killed::is_sshd(closer, e, ctx)
    {
        return None;
    }
    let mut details = Map::new();
    details.insert("listener_pid".into(), json!(closer));
    details.insert("queued".into(), json!(true));
    Some(Finding {
        cause: Cause::SshdDropped,
        pid: Some(closer),
        details,
        evidence: Vec::new(),
        summary: format!(
            "sshd[{closer}] closed its listening socket while the connection waited in the accept \
             queue (sshd stopped or restarted); the kernel reset it"
        ),
        hint: "sshd was stopped or restarted: clients connecting at that moment are reset; \
               restart sshd with `systemctl reload ssh` (SIGHUP keeps the listener) where possible"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        discovery::{Snapshot, SshdConfig},
        kernel::{lsm::ActiveLsms, names::KernelNames},
        runtime::ContainerNames,
        state::{ConnectionTable, ProcessTable},
    };

    /// The rule reads MaxStartups from what discovery gathered, never from a file.
    #[test]
    fn max_startups_comes_from_the_snapshot() {
        let mut sshd = Snapshot::default();
        let config = |max: Option<&str>, unreadable: Option<&str>| SshdConfig {
            max_startups: max.map(Into::into),
            unreadable: unreadable.map(Into::into),
            ..SshdConfig::default()
        };
        sshd.configs.insert(7, config(Some("3:50:10"), None));
        sshd.configs
            .insert(8, config(None, Some("not a regular file (a FIFO)")));
        sshd.configs.insert(9, config(None, None));
        let (names, lsms) = (
            KernelNames::from_tables(&[], &[]),
            ActiveLsms::from_list("", &|_| false),
        );
        let (conns, procs) = (ConnectionTable::default(), ProcessTable::default());
        let ctx = Context {
            names: &names,
            lsms: &lsms,
            container_names: &ContainerNames::start(Vec::new()),
            conns: &conns,
            sshd: &sshd,
            procs: &procs,
            clock: &Clock::epoch(),
            host: "h",
        };
        assert_eq!(max_startups(7, &ctx), "3:50:10");
        assert_eq!(
            max_startups(8, &ctx),
            "unknown (its configuration is unreadable: not a regular file (a FIFO))"
        );
        assert_eq!(max_startups(9, &ctx), DEFAULT_MAX_STARTUPS);
        assert_eq!(
            max_startups(10, &ctx),
            DEFAULT_MAX_STARTUPS,
            "never scanned"
        );
    }
}
