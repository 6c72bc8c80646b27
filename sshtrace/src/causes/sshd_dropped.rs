//! `sshd_dropped`: the listening sshd accepted the connection and closed it without starting
//! a per-connection process (MaxStartups, PerSourcePenalties, …), or closed its listening
//! socket while the connection waited in its accept queue (sshd stopped or restarted).

use serde_json::{json, Map};

use super::{authenticated, consequence, Background, Ended, Finding};
use crate::{
    trace::sshd_output::DropNote,
    trace::state::Closer,
    verdict::{Cause, Outcome},
};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
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
    let reason = drop_reason(e);
    let mut details = Map::new();
    details.insert("listener_pid".into(), json!(listener));
    details.insert("drop_reason".into(), json!(reason.as_str()));
    let (summary, hint) = match reason {
        DropReason::Penalty => penalty(e, ctx, listener, &mut details),
        _ => max_startups_drop(e, ctx, listener, reason, &mut details),
    };
    Some(Finding {
        cause: Cause::SshdDropped,
        pid: Some(listener),
        details,
        evidence: Vec::new(),
        summary: format!("{summary}; {}", consequence(e.outcome)),
        hint,
    })
}

/// Why the listener dropped it, from what it wrote on the connection (copied by the kernel)
/// and, for the two MaxStartups limits that write the same words, from its log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropReason {
    MaxStartups,
    PerSourceMaxStartups,
    Penalty,
    /// Nothing written was seen: the listener wrote nothing, or this kernel lacks the hook.
    Unknown,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::MaxStartups => "max_startups",
            Self::PerSourceMaxStartups => "per_source_max_startups",
            Self::Penalty => "penalty",
            Self::Unknown => "unknown",
        }
    }
}

fn drop_reason(e: &Ended) -> DropReason {
    let Some(note) = e.conn.listener_note().as_ref().and_then(|n| n.note) else {
        return DropReason::Unknown;
    };
    if let Some(logged) = logged_reason(e) {
        return logged;
    }
    match note {
        // Before 9.8 only the MaxStartups limits write this.
        DropNote::ExceededMaxStartups => DropReason::MaxStartups,
        // 9.8+ writes it for every drop, penalties and MaxStartups alike: its log line decides.
        DropNote::NotAllowedAtThisTime => DropReason::Unknown,
    }
}

/// The listener's own log line of the drop, `drop connection #N from [A]:P on [L]:P <why>`,
/// when the kernel saw it written (9.8+ rate-limits the penalty ones).
fn logged_reason(e: &Ended) -> Option<DropReason> {
    let line = e
        .conn
        .sshd_log()
        .rev()
        .find(|l| l.message.starts_with("drop connection #"))?;
    let why = line.message.to_ascii_lowercase();
    if why.contains("persourcemaxstartups") {
        Some(DropReason::PerSourceMaxStartups)
    } else if why.contains("penalty") {
        Some(DropReason::Penalty)
    } else if why.contains("maxstartups") {
        Some(DropReason::MaxStartups)
    } else {
        None
    }
}

/// A penalized source: never a MaxStartups matter. Names the latest verdict from the same
/// address, what such a penalty follows.
fn penalty(
    e: &Ended,
    ctx: &Background,
    listener: u32,
    details: &mut Map<String, serde_json::Value>,
) -> (String, String) {
    let source = e.conn.tuple.remote.ip();
    let earlier = ctx.recent.latest(source).map(|r| {
        let ts = ctx.clock.rfc3339(r.ts_ns);
        details.insert(
            "earlier_verdict".into(),
            json!({ "cause": r.cause.as_str(), "ts": ts }),
        );
        format!(
            "; the previous verdict from {source} was {} at {ts}",
            r.cause.as_str()
        )
    });
    let summary = format!(
        "the listening sshd[{listener}] accepted the connection, wrote 'Not allowed at this \
         time' and closed it: {source} is penalized by PerSourcePenalties{}",
        earlier.unwrap_or_default()
    );
    let hint = "OpenSSH 9.8+ penalizes a source address block (PerSourceNetBlockSize) for a \
                while after a crash, a failed or missing authentication or LoginGraceTime: \
                fix what the earlier connections from it hit, wait for the penalty to expire, \
                or exempt trusted sources with PerSourcePenaltyExemptList (PerSourcePenalties \
                sets the durations; `sshd -T | grep -i persource`)"
        .to_owned();
    (summary, hint)
}

fn max_startups_drop(
    e: &Ended,
    ctx: &Background,
    listener: u32,
    reason: DropReason,
    details: &mut Map<String, serde_json::Value>,
) -> (String, String) {
    let at = e.end_ts();
    let unauthenticated = ctx
        .conns
        .open_of_listener(listener, at)
        .filter(|c| c.id != e.conn.id)
        .filter(|c| !authenticated(ctx.procs.of_connection(c.id), c.session_pid))
        .count();
    let max_startups = max_startups(listener, ctx);
    details.insert("unauthenticated_connections".into(), json!(unauthenticated));
    details.insert("max_startups".into(), json!(max_startups));
    let said = match &e.conn.listener_note() {
        Some(n) => format!("wrote '{}' and closed it", crate::escape::text(&n.text)),
        None => "closed it without starting a session".to_owned(),
    };
    let limit = match reason {
        DropReason::PerSourceMaxStartups => "PerSourceMaxStartups",
        _ => "MaxStartups",
    };
    let summary = format!(
        "the listening sshd[{listener}] accepted the connection and {said}, with \
         {unauthenticated} other unauthenticated connection(s) open (MaxStartups {max_startups})"
    );
    let port = e.conn.tuple.local.port();
    let hint = match reason {
        DropReason::Unknown => format!(
            "sshd drops new connections past MaxStartups or PerSourceMaxStartups, or from a \
             source penalized by PerSourcePenalties (9.8+, which writes 'Not allowed at this \
             time' for all three); its log line 'drop connection #N …' says which, and was not \
             seen here. Find who holds unauthenticated connections: \
             `ss -tn state established '( sport = :{port} )'`"
        ),
        _ => format!(
            "sshd dropped it past {limit}: find who holds unauthenticated connections \
             (`ss -tn state established '( sport = :{port} )'`), then raise {limit} in \
             sshd_config if they are legitimate"
        ),
    };
    (summary, hint)
}

/// MaxStartups as discovery read it from the listener's `-o` or configuration file: sshd's
/// default when neither sets it, "unknown" when the file could not be read.
fn max_startups(listener: u32, ctx: &Background) -> String {
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
fn dropped_from_queue(e: &Ended, ctx: &Background) -> Option<Finding> {
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
        enrich::discovery::{Snapshot, SshdConfig},
        kernel::{lsm::ActiveLsms, names::KernelNames},
        trace::state::{ConnectionTable, ProcessTable},
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
        let ctx = Background {
            names: &names,
            lsms: &lsms,
            conns: &conns,
            sshd: &sshd,
            procs: &procs,
            recent: &crate::trace::state::RecentVerdicts::default(),
            clock: &Clock::epoch(),
            host: "h",
            netns: &crate::enrich::netns::NetnsNames::default(),
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
