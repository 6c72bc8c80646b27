//! `sshd_crashed`: a process serving the connection died of a fatal signal it raised itself
//! (abort) or the kernel raised on a fault (SIGSEGV, SIGBUS, …).

use serde_json::{json, Map};

use super::{consequence, exit_evidence, signal_evidence, Background, Ended, Finding};
use crate::{
    trace::state::{processes::SI_KERNEL, Process, SignalInfo},
    verdict::{signal_name, Cause},
};

/// SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS: what faults and abort() raise.
/// Without a recorded sender, only these mean a crash.
const FAULT_SIGNALS: [i32; 7] = [4, 5, 6, 7, 8, 11, 31];

/// How the fatal signal came about, when it was a crash.
fn crash_origin(p: &Process, sig: i32) -> Option<(&'static str, Option<&SignalInfo>)> {
    match p.fatal_signal() {
        Some(s) if !s.sent_by_a_process() && s.code != SI_KERNEL => Some(("fault", Some(s))),
        Some(s) if s.sent_by_a_process() && s.sender.pid == p.pid => Some(("self", Some(s))),
        // Sent by another process or by the kernel's own decision (e.g. the OOM killer):
        // not a crash.
        Some(_) => None,
        None if FAULT_SIGNALS.contains(&sig) => Some(("not recorded", None)),
        None => None,
    }
}

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    let (p, sig, origin, signal) = e
        .tree
        .iter()
        .filter_map(|p| {
            let sig = p.exit?.signal()?;
            let (origin, signal) = crash_origin(p, sig)?;
            Some((p, sig, origin, signal))
        })
        .min_by_key(|(p, ..)| p.exit.map(|x| x.ts_ns))?;
    let exit = p.exit?;
    let core = if exit.core_dumped() {
        " (core dumped)"
    } else {
        ""
    };
    let mut details = Map::new();
    details.insert("signal".into(), json!(signal_name(sig)));
    details.insert("signal_number".into(), json!(sig));
    details.insert("core_dumped".into(), json!(exit.core_dumped()));
    details.insert("crashed_pid".into(), json!(p.pid));
    details.insert("signal_origin".into(), json!(origin));
    let mut evidence: Vec<_> = signal
        .map(|s| signal_evidence(p, s, ctx))
        .into_iter()
        .collect();
    evidence.extend(exit_evidence(p, ctx));
    let role = super::roles::role_of(p.pid, e, ctx);
    Some(Finding {
        cause: Cause::SshdCrashed,
        pid: Some(p.pid),
        details,
        evidence,
        summary: format!(
            "{} ({} process) crashed with {}{core}; {}",
            e.name(p.pid),
            role.as_str(),
            signal_name(sig),
            consequence(e.outcome)
        ),
        hint: "sshd crashed: check for a core dump (coredumpctl list; /var/crash), sshd -V and \
               the distribution's known bugs, and reproduce with `sshd -ddd -p 2222`"
            .into(),
    })
}
