//! `closed_preauth`: an orderly close before authentication completed (LoginGraceTime,
//! MaxAuthTries, a client that gave up); the evidence says who closed first.

use serde_json::{json, Map};

use super::{
    authenticated, exit_evidence, signal_evidence, unexplained_deaths, Background, Ended, Finding,
};
use crate::{
    trace::state::Closer,
    verdict::{Cause, Outcome},
};

const SIGALRM: i32 = 14;

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    if e.outcome != Outcome::Closed
        || e.conn.established_ts.is_none()
        || e.conn.session_pid.is_none()
        || authenticated(e.tree, e.conn.session_pid)
        || !unexplained_deaths(e, ctx).is_empty()
    {
        return None;
    }
    let closer = match e.conn.closed_first_by {
        Some(Closer::Sshd) => "sshd",
        Some(Closer::Peer) => "client",
        None => "unknown",
    };
    // LoginGraceTime: sshd arms an alarm; the kernel raises SIGALRM when it expires.
    let grace = e.tree.iter().find_map(|p| {
        p.signals
            .iter()
            .find(|s| s.sig == SIGALRM && !s.sent_by_a_process())
            .map(|s| (p, s))
    });
    let mut details = Map::new();
    details.insert("closed_by".into(), json!(closer));
    details.insert("login_grace_time_expired".into(), json!(grace.is_some()));
    let mut evidence: Vec<_> = grace
        .iter()
        .map(|(p, s)| signal_evidence(p, s, ctx))
        .collect();
    evidence.extend(
        e.tree
            .iter()
            .filter(|p| p.runs_sshd())
            .filter_map(|p| exit_evidence(p, ctx)),
    );
    let who = match closer {
        "sshd" => "sshd closed it first",
        "client" => "the client closed it first",
        _ => "it is not known which side closed first",
    };
    let why = if grace.is_some() {
        "; sshd's LoginGraceTime alarm fired"
    } else {
        ""
    };
    Some(Finding {
        cause: Cause::ClosedPreauth,
        pid: e.conn.session_pid,
        details,
        evidence,
        summary: format!("the connection closed before authentication completed: {who}{why}"),
        hint: "see sshd's log for this client: 'Timeout before authentication' (LoginGraceTime), \
               'Too many authentication failures' (MaxAuthTries), or 'Connection closed by \
               authenticating user' (the client gave up: check its keys with ssh -v)"
            .into(),
    })
}
