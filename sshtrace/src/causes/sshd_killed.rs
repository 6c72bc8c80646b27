//! `sshd_killed`: a process serving the connection received a terminating signal from a
//! process outside the connection's own sshd tree, and died.

use serde_json::{json, Map};

use super::{consequence, exit_evidence, signal_evidence, Background, Ended, Finding};
use crate::{
    escape,
    verdict::{signal_name, Cause},
};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    // Only the signal a process died of is a cause: handled, ignored or blocked ones are not,
    // and a fault it raised itself after them is a crash.
    let (victim, signal) = e
        .tree
        .iter()
        .filter_map(|p| {
            let s = p.fatal_signal()?;
            let from_outside =
                s.sent_by_a_process() && s.sender.pid != p.pid && !e.in_tree(s.sender.pid);
            from_outside.then_some((p, s))
        })
        .min_by_key(|(_, s)| s.ts_ns)?;
    let exit = victim.exit?;
    let sender = format!(
        "{}[{}]",
        escape::text(&signal.sender.comm),
        signal.sender.pid
    );
    let core = if exit.core_dumped() {
        " (core dumped)"
    } else {
        ""
    };
    let mut details = Map::new();
    details.insert("signal".into(), json!(signal_name(signal.sig)));
    details.insert("signal_number".into(), json!(signal.sig));
    details.insert("sender_pid".into(), json!(signal.sender.pid));
    details.insert("sender_comm".into(), json!(signal.sender.comm));
    details.insert("victim_pid".into(), json!(victim.pid));
    let mut evidence = vec![signal_evidence(victim, signal, ctx)];
    evidence.extend(exit_evidence(victim, ctx));
    Some(Finding {
        cause: Cause::SshdKilled,
        pid: Some(victim.pid),
        details,
        evidence,
        summary: format!(
            "{} was killed with {} by {sender}{core}; {}",
            e.name(victim.pid),
            signal_name(signal.sig),
            consequence(e.outcome)
        ),
        hint: format!(
            "find out why {sender} signalled sshd: its parent and command line \
             (ps -o pid,ppid,args -p {}), cron jobs, session cleanup or ban scripts",
            signal.sender.pid
        ),
    })
}
