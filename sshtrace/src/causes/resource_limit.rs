//! `resource_limit`: sshd could not get a file descriptor, a process or memory for the
//! connection: EMFILE (RLIMIT_NOFILE), ENFILE (fs.file-max), EAGAIN from fork (pids cgroup or
//! RLIMIT_NPROC), ENOMEM. The failing syscall, its errno and the limit read at that moment are
//! the evidence. Also a listener that cannot accept at all, before any connection ends.

use serde_json::{json, Map};

use super::{consequence, syscall_evidence, Background, Ended, Finding};
use crate::{
    kernel::syscalls::errno_name,
    trace::state::{Connection, Process, SyscallError, SETTLE_NS},
    verdict::Cause,
};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    let until = e.end_ts() + SETTLE_NS;
    let in_tree = e.tree.iter().flat_map(|p| {
        p.syscall_errors
            .iter()
            .filter(move |x| x.limit.is_some() && x.ts_ns <= until)
            .map(move |x| (p, x))
    });
    // The listener fails on the connection's behalf between accepting it and forking for it.
    let listener = e
        .conn
        .listener_pid
        .filter(|_| e.conn.session_pid.is_none())
        .and_then(|pid| ctx.procs.get(pid));
    let accepted = e.conn.accept_ts.unwrap_or(e.conn.first_ts);
    let by_listener = listener.into_iter().flat_map(|p| {
        p.syscall_errors
            .iter()
            .filter(move |x| x.limit.is_some() && x.ts_ns >= accepted && x.ts_ns <= until)
            .map(move |x| (p, x))
    });
    let (p, error) = in_tree.chain(by_listener).min_by_key(|(_, x)| x.ts_ns)?;
    Some(finding(p, error, ctx, consequence(e.outcome)))
}

fn finding(p: &Process, error: &SyscallError, ctx: &Background, then: &str) -> Finding {
    let limit = error.limit.clone().expect("filtered on limit");
    let mut details = Map::new();
    details.insert("limit".into(), json!(limit.limit));
    details.insert("limit_value".into(), json!(limit.value));
    details.insert("limit_current".into(), json!(limit.current));
    details.insert("limit_source".into(), json!(limit.source));
    details.insert("syscall".into(), json!(error.syscall));
    details.insert("errno".into(), json!(errno_name(error.errno)));
    details.insert("failed_pid".into(), json!(p.pid));
    let value = limit.value.clone().unwrap_or_else(|| "unknown".into());
    let in_use = limit
        .current
        .as_ref()
        .map(|c| format!(", {c} in use"))
        .unwrap_or_default();
    let hint = match limit.limit {
        "nofile" => format!(
            "sshd's RLIMIT_NOFILE is {value} ({}): raise it (LimitNOFILE= in ssh.service, or \
             `prlimit --nofile=N:N --pid {}`) and look for descriptor leaks",
            limit.source, p.pid
        ),
        "file_max" => format!(
            "the system-wide file table is full ({}): find what holds files \
             (`ls /proc/*/fd | wc -l`) or raise fs.file-max",
            limit.source
        ),
        "pids" => format!(
            "the pids cgroup is at pids.max {value} ({}): raise TasksMax= / pids.max or find \
             what fills it",
            limit.source
        ),
        "nproc" => format!(
            "RLIMIT_NPROC is {value} ({}): raise it for the user (/etc/security/limits.conf)",
            limit.source
        ),
        _ => format!(
            "memory limit {value} ({}) reached: raise MemoryMax= / memory.max or find what uses \
             the memory",
            limit.source
        ),
    };
    Finding {
        cause: Cause::ResourceLimit,
        pid: Some(p.pid),
        details,
        evidence: vec![syscall_evidence(p, error, ctx)],
        summary: format!(
            "{}[{}] hit its {} limit: {} failed with {} (limit {value}{in_use}); {then}",
            crate::escape::text(&p.comm),
            p.pid,
            limit.limit,
            error.syscall,
            errno_name(error.errno),
        ),
        hint,
    }
}

/// How long accept failures count as "now" for a stalled listener.
pub const STALL_WINDOW_NS: u64 = 2_000_000_000;

/// A listener whose `accept` keeps failing on a limit while connections wait for it: the
/// clients see no reset, only a time-out, so this is reported before anything ends.
/// Whether `listener`'s accept failed on a limit within the stall window.
pub fn accept_failing(listener: &Process, now_ns: u64) -> bool {
    listener.syscall_errors.iter().any(|x| {
        x.limit.is_some() && x.syscall.starts_with("accept") && x.ts_ns + STALL_WINDOW_NS >= now_ns
    })
}

pub fn stalled(
    listener: &Process,
    waiting: &Connection,
    waiting_count: usize,
    now_ns: u64,
    ctx: &Background,
) -> Option<Finding> {
    let recent: Vec<&SyscallError> = listener
        .syscall_errors
        .iter()
        .filter(|x| {
            x.limit.is_some()
                && x.syscall.starts_with("accept")
                && x.ts_ns + STALL_WINDOW_NS >= now_ns
        })
        .collect();
    let last = *recent.last()?;
    let failures: u64 = recent.iter().map(|x| x.suppressed as u64 + 1).sum();
    let per_second = failures as f64 / (STALL_WINDOW_NS as f64 / 1e9);
    let mut f = finding(
        listener,
        last,
        ctx,
        &format!(
            "it cannot accept: {failures} failures in the last {} s ({per_second:.0}/s) while \
             {waiting_count} connection(s) wait, the oldest from {} — clients time out, no reset \
             is sent",
            STALL_WINDOW_NS / 1_000_000_000,
            waiting.tuple.remote
        ),
    );
    f.details
        .insert("failures_per_second".into(), json!(per_second));
    f.details
        .insert("waiting_connections".into(), json!(waiting_count));
    Some(f)
}
