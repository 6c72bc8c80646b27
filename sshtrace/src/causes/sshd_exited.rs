//! `sshd_exited`: a per-connection sshd process exited with an error status (no signal)
//! before the session was established, and the connection was reset as it closed (the
//! client's data unread): e.g. a host key that became unreadable while sshd runs.

use serde_json::{json, Map};

use super::{
    authenticated, consequence, exit_evidence, syscall_evidence, Background, Ended, Finding,
};
use crate::{
    kernel::syscalls::errno_name,
    verdict::{Cause, Outcome},
};

/// How many of the process's last failed system calls the evidence shows.
const SHOWN_FAILURES: usize = 5;

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    if e.outcome != Outcome::ResetSent || authenticated(e.tree, e.conn.session_pid) {
        return None;
    }
    let (p, status) = e
        .tree
        .iter()
        .filter(|p| p.runs_sshd())
        .filter_map(|p| Some((p, p.exit?.status().filter(|&s| s != 0)?)))
        .min_by_key(|(p, _)| p.exit.map(|x| x.ts_ns))?;
    let failures: Vec<_> = p
        .syscall_errors
        .iter()
        .rev()
        .take(SHOWN_FAILURES)
        .rev()
        .collect();
    let telling = failures
        .iter()
        .rev()
        .find(|x| x.path.is_some())
        .or(failures.last());
    let mut details = Map::new();
    details.insert("exited_pid".into(), json!(p.pid));
    details.insert("exit_status".into(), json!(status));
    details.insert(
        "failed_syscalls".into(),
        json!(failures
            .iter()
            .map(|x| json!({"syscall": x.syscall, "errno": errno_name(x.errno), "path": x.path}))
            .collect::<Vec<_>>()),
    );
    let mut evidence: Vec<_> = failures
        .iter()
        .map(|x| syscall_evidence(p, x, ctx))
        .collect();
    evidence.extend(exit_evidence(p, ctx));
    let last = telling
        .map(|x| {
            let path = x
                .path
                .as_deref()
                .map(|p| format!("({})", crate::escape::text(p)))
                .unwrap_or_default();
            format!(
                " after {}{path} failed with {}",
                x.syscall,
                errno_name(x.errno)
            )
        })
        .unwrap_or_default();
    Some(Finding {
        cause: Cause::SshdExited,
        pid: Some(p.pid),
        details,
        evidence,
        summary: format!(
            "{} exited with status {status}{last}, before the session was established; {}",
            e.name(p.pid),
            consequence(e.outcome)
        ),
        hint: "sshd gave up on the connection: its log says why (journalctl -u ssh, \
               /var/log/auth.log); check the host keys (ls -l /etc/ssh/ssh_host_*_key) and `sshd -t`"
            .into(),
    })
}
