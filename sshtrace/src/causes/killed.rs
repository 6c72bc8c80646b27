//! `sshd_killed`: a process serving the connection received a terminating signal from a
//! process outside the connection's own sshd tree, and died.

use serde_json::{json, Map};

use super::{consequence, exit_evidence, signal_evidence, Context, Ended, Finding};
use crate::{
    escape,
    verdict::{signal_name, Cause},
};

pub fn judge(e: &Ended, ctx: &Context) -> Option<Finding> {
    let (victim, signal) = e
        .tree
        .iter()
        .filter_map(|p| {
            let exit = p.exit?;
            let s = p.signals.iter().find(|s| {
                s.from_process()
                    && s.sender.pid != p.pid
                    && !e.in_tree(s.sender.pid)
                    && s.ts_ns <= exit.ts_ns
            })?;
            Some((p, s))
        })
        .min_by_key(|(_, s)| s.ts_ns)?;
    let exit = victim.exit?;
    let sender = format!(
        "{}[{}]",
        escape::text(&signal.sender.comm),
        signal.sender.pid
    );
    let how = match exit.signal() {
        Some(sig) => format!("died of {}", signal_name(sig)),
        None => format!("exited with status {}", exit.status().unwrap_or(-1)),
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
            "{} was sent {} by {sender} and {how}; {}",
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
