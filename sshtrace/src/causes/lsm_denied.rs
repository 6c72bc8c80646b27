//! `lsm_denied`: a Linux Security Module refused an access an sshd process of the connection
//! needed (a host key, `authorized_keys`, …), and the connection then died. The LSM is named
//! by its own report (an audit record, SELinux's tracepoint) or, failing that, decided by the
//! active-LSM set when the file mode bits would have allowed the access and exactly one LSM
//! could refuse it. `permission_denied`: the mode bits themselves refused it.

use serde_json::{json, Map, Value};

use super::{authenticated, consequence, syscall_evidence, Background, Ended, Finding};
use crate::{
    escape,
    kernel::syscalls::EACCES,
    trace::events::LsmDenial,
    trace::state::{Process, SyscallError, SETTLE_NS},
    verdict::{Cause, Evidence, Outcome},
};

/// Denials matter only for connections that did not end well.
fn relevant(e: &Ended) -> bool {
    e.outcome != Outcome::Closed || !authenticated(e.tree, e.conn.session_pid)
}

/// The processes whose failures count, with the earliest time each counts from.
fn processes<'a>(e: &'a Ended, ctx: &'a Background) -> impl Iterator<Item = (&'a Process, u64)> {
    let listener = e
        .conn
        .listener_pid
        .filter(|_| e.conn.session_pid.is_none())
        .and_then(|pid| ctx.procs.get(pid))
        .map(|p| (p, e.conn.accept_ts.unwrap_or(e.conn.first_ts)));
    e.tree.iter().map(|p| (p, 0)).chain(listener)
}

fn refused_paths<'a>(
    e: &'a Ended,
    ctx: &'a Background,
) -> impl Iterator<Item = (&'a Process, &'a SyscallError)> {
    let until = e.end_ts() + SETTLE_NS;
    processes(e, ctx).flat_map(move |(p, from)| {
        p.syscall_errors
            .iter()
            .filter(move |x| {
                x.errno == EACCES && x.path.is_some() && x.ts_ns >= from && x.ts_ns <= until
            })
            .map(move |x| (p, x))
    })
}

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    if !relevant(e) {
        return None;
    }
    // The LSM's own report first.
    let denial = reported_denial(e, ctx).or_else(|| inferred_denial(e, ctx))?;
    Some(finding(e, ctx, &denial))
}

/// The earliest denial an LSM reported for the connection's processes.
fn reported_denial<'a>(e: &'a Ended, ctx: &'a Background) -> Option<Denial<'a>> {
    let until = e.end_ts() + SETTLE_NS;
    let (p, ts, d) = processes(e, ctx)
        .flat_map(|(p, from)| {
            p.lsm_denials
                .iter()
                .filter(move |(ts, _)| *ts >= from && *ts <= until)
                .map(move |(ts, d)| (p, *ts, d))
        })
        .min_by_key(|(_, ts, _)| *ts)?;
    // The failed syscall behind it, when seen, joins the evidence.
    let failure = p
        .syscall_errors
        .iter()
        .find(|x| x.errno == EACCES && x.path.is_some() && x.path == d.path);
    Some(Denial {
        process: p,
        ts,
        lsm: d.lsm,
        decided_by: "lsm_report",
        operation: d.operation.clone().or(failure.map(|x| x.syscall.clone())),
        path: d.path.clone(),
        report: Some(d),
        failure,
    })
}

/// Else a refused access the mode bits would have allowed, with one LSM able to refuse it.
fn inferred_denial<'a>(e: &'a Ended, ctx: &'a Background) -> Option<Denial<'a>> {
    let (p, x) = refused_paths(e, ctx)
        .filter(|(_, x)| x.dac.as_ref().is_some_and(|d| d.allows))
        .min_by_key(|(_, x)| x.ts_ns)?;
    if ctx.lsms.access_control.is_empty() {
        return None;
    }
    let lsm = ctx.lsms.sole_access_control().unwrap_or("unknown");
    let decided_by = if lsm == "unknown" {
        "errno, several LSMs active"
    } else {
        "errno and the active-LSM set"
    };
    Some(Denial {
        process: p,
        ts: x.ts_ns,
        lsm,
        decided_by,
        operation: Some(x.syscall.clone()),
        path: x.path.clone(),
        report: None,
        failure: Some(x),
    })
}

/// One refused access: as its LSM reported it, or as the failed syscall showed it.
struct Denial<'a> {
    process: &'a Process,
    ts: u64,
    lsm: &'a str,
    decided_by: &'a str,
    operation: Option<String>,
    path: Option<String>,
    report: Option<&'a LsmDenial>,
    failure: Option<&'a SyscallError>,
}

/// One assembly point for both kinds of evidence.
fn finding(e: &Ended, ctx: &Background, d: &Denial) -> Finding {
    let p = d.process;
    let after_ms = e.end_ts().saturating_sub(d.ts) / 1_000_000;
    let by = if d.lsm == "unknown" {
        "an LSM".to_owned()
    } else {
        d.lsm.to_owned()
    };
    Finding {
        cause: Cause::LsmDenied,
        pid: Some(p.pid),
        details: details(d),
        evidence: evidence(ctx, d),
        summary: format!(
            "{}[{}] was denied {} by {by}{}; the connection ended {after_ms} ms later: {}",
            escape::text(&p.comm),
            p.pid,
            denied_access(d),
            security_contexts(d.report),
            consequence(e.outcome)
        ),
        hint: hint(d.lsm, ctx),
    }
}

fn details(d: &Denial) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("lsm".into(), json!(d.lsm));
    details.insert("decided_by".into(), json!(d.decided_by));
    details.insert("operation".into(), json!(d.operation));
    details.insert("path".into(), json!(d.path));
    details.insert("denied_pid".into(), json!(d.process.pid));
    if let Some(r) = d.report {
        for (k, v) in &r.facts {
            details.insert(k.clone(), Value::String(v.clone()));
        }
        details.insert("source".into(), json!(r.source));
    }
    details
}

/// The LSM's report, then the failed syscall, each where there is one.
fn evidence(ctx: &Background, d: &Denial) -> Vec<Evidence> {
    let p = d.process;
    let mut evidence = Vec::new();
    if let Some(r) = d.report {
        evidence.push(Evidence::LsmDenial {
            ts: ctx.clock.rfc3339(d.ts),
            pid: p.pid,
            comm: p.comm.clone(),
            source: r.source,
            lsm: r.lsm,
            operation: r.operation.clone(),
            path: r.path.clone(),
            facts: r.facts.clone(),
        });
    }
    evidence.extend(d.failure.map(|x| syscall_evidence(p, x, ctx)));
    evidence
}

/// What was denied, e.g. "openat of /home/u/.ssh/authorized_keys".
fn denied_access(d: &Denial) -> String {
    match (&d.operation, &d.path) {
        (Some(op), Some(path)) => format!("{op} of {}", escape::text(path)),
        (None, Some(path)) => escape::text(path),
        (Some(op), None) => op.clone(),
        (None, None) => "an access".into(),
    }
}

/// SELinux's source and target contexts, where its report gave both.
fn security_contexts(report: Option<&LsmDenial>) -> String {
    match (
        report.and_then(|d| d.facts.get("scontext")),
        report.and_then(|d| d.facts.get("tcontext")),
    ) {
        (Some(s), Some(t)) => format!(
            " (scontext {} tcontext {})",
            escape::text(s),
            escape::text(t)
        ),
        _ => String::new(),
    }
}

/// Where to look and what to change, for each LSM.
fn hint(lsm: &str, ctx: &Background) -> String {
    match lsm {
        "selinux" => "see `ausearch -m avc -ts recent`; fix the file's context (`restorecon -v PATH`) or the policy (`audit2allow`)".to_owned(),
        "apparmor" => "see `journalctl -k | grep apparmor=\"DENIED\"`; adjust sshd's profile (`aa-logprof`) or set it to complain mode".to_owned(),
        "landlock" => "a Landlock ruleset applied to sshd (by sshd's parent, a service manager or a wrapper) does not allow this path: find who restricts it (systemd's RestrictFileSystems/Landlock options, a sandboxing wrapper)".to_owned(),
        _ => format!("an LSM refused it: active LSMs are {}; check their logs", ctx.lsms.all.join(",")),
    }
}

/// `permission_denied`: EACCES on a path that the file mode bits themselves refuse.
pub fn judge_permission(e: &Ended, ctx: &Background) -> Option<Finding> {
    if !relevant(e) {
        return None;
    }
    let (p, x) = refused_paths(e, ctx)
        .filter(|(_, x)| x.dac.as_ref().is_some_and(|d| !d.allows))
        .min_by_key(|(_, x)| x.ts_ns)?;
    let dac = x.dac.as_ref()?;
    let path = x.path.as_deref().unwrap_or("?");
    let mut details = Map::new();
    details.insert("syscall".into(), json!(x.syscall));
    details.insert("path".into(), json!(path));
    details.insert("file".into(), json!(dac.file));
    details.insert("process".into(), json!(dac.process));
    details.insert("refused".into(), json!(dac.refused));
    Some(Finding {
        cause: Cause::PermissionDenied,
        pid: Some(p.pid),
        details,
        evidence: vec![syscall_evidence(p, x, ctx)],
        summary: format!(
            "{}[{}] could not {} {}: the file mode ({}) refuses {} (uid:gid {}); {}",
            escape::text(&p.comm),
            p.pid,
            x.syscall,
            escape::text(path),
            dac.file,
            dac.refused.as_deref().unwrap_or("it"),
            dac.process,
            consequence(e.outcome)
        ),
        hint: format!(
            "fix ownership and mode: `ls -l {}`; sshd wants keys mode 600 owned by their user",
            escape::text(path)
        ),
    })
}
