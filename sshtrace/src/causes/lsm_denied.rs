//! `lsm_denied`: a Linux Security Module refused an access an sshd process of the connection
//! needed (a host key, `authorized_keys`, …), and the connection then died. The LSM is named
//! by its own report (an audit record, SELinux's tracepoint) or, failing that, decided by the
//! active-LSM set when the file mode bits would have allowed the access and exactly one LSM
//! could refuse it. `permission_denied`: the mode bits themselves refused it.

use serde_json::{json, Map, Value};

use super::{authenticated, consequence, syscall_evidence, Context, Ended, Finding};
use crate::{
    escape,
    events::LsmDenial,
    kernel::syscalls::EACCES,
    state::{Process, SyscallError, SETTLE_NS},
    verdict::{Cause, Evidence, Outcome},
};

/// Denials matter only for connections that did not end well.
fn relevant(e: &Ended) -> bool {
    e.outcome != Outcome::Closed || !authenticated(e.tree, e.conn.session_pid)
}

/// The processes whose failures count, with the earliest time each counts from.
fn processes<'a>(e: &'a Ended, ctx: &'a Context) -> impl Iterator<Item = (&'a Process, u64)> {
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
    ctx: &'a Context,
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

pub fn judge(e: &Ended, ctx: &Context) -> Option<Finding> {
    if !relevant(e) {
        return None;
    }
    let until = e.end_ts() + SETTLE_NS;
    // The LSM's own report first.
    let reported = processes(e, ctx)
        .flat_map(|(p, from)| {
            p.lsm_denials
                .iter()
                .filter(move |(ts, _)| *ts >= from && *ts <= until)
                .map(move |(ts, d)| (p, *ts, d))
        })
        .min_by_key(|(_, ts, _)| *ts);
    if let Some((p, ts, d)) = reported {
        // The failed syscall behind it, when seen, joins the evidence.
        let failure = p
            .syscall_errors
            .iter()
            .find(|x| x.errno == EACCES && x.path.is_some() && x.path == d.path);
        return Some(finding(
            e,
            ctx,
            p,
            ts,
            d.lsm,
            "lsm_report",
            d.operation.clone().or(failure.map(|x| x.syscall.clone())),
            d.path.clone(),
            Some(d),
            failure,
        ));
    }
    // Else a refused access the mode bits would have allowed, with one LSM able to refuse it.
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
    Some(finding(
        e,
        ctx,
        p,
        x.ts_ns,
        lsm,
        decided_by,
        Some(x.syscall.clone()),
        x.path.clone(),
        None,
        Some(x),
    ))
}

#[allow(clippy::too_many_arguments)] // one assembly point for both kinds of evidence
fn finding(
    e: &Ended,
    ctx: &Context,
    p: &Process,
    ts: u64,
    lsm: &str,
    decided_by: &str,
    operation: Option<String>,
    path: Option<String>,
    report: Option<&LsmDenial>,
    failure: Option<&SyscallError>,
) -> Finding {
    let mut details = Map::new();
    details.insert("lsm".into(), json!(lsm));
    details.insert("decided_by".into(), json!(decided_by));
    details.insert("operation".into(), json!(operation));
    details.insert("path".into(), json!(path));
    details.insert("denied_pid".into(), json!(p.pid));
    if let Some(d) = report {
        for (k, v) in &d.facts {
            details.insert(k.clone(), Value::String(v.clone()));
        }
        details.insert("source".into(), json!(d.source));
    }
    let mut evidence = Vec::new();
    if let Some(d) = report {
        evidence.push(Evidence::LsmDenial {
            ts: ctx.clock.rfc3339(ts),
            pid: p.pid,
            comm: p.comm.clone(),
            source: d.source,
            lsm: d.lsm,
            operation: d.operation.clone(),
            path: d.path.clone(),
            facts: d.facts.clone(),
        });
    }
    evidence.extend(failure.map(|x| syscall_evidence(p, x, ctx)));
    let after_ms = e.end_ts().saturating_sub(ts) / 1_000_000;
    let what = match (&operation, &path) {
        (Some(op), Some(path)) => format!("{op} of {}", escape::text(path)),
        (None, Some(path)) => escape::text(path),
        (Some(op), None) => op.clone(),
        (None, None) => "an access".into(),
    };
    let by = if lsm == "unknown" {
        "an LSM".to_owned()
    } else {
        lsm.to_owned()
    };
    let context = match (
        report.and_then(|d| d.facts.get("scontext")),
        report.and_then(|d| d.facts.get("tcontext")),
    ) {
        (Some(s), Some(t)) => format!(
            " (scontext {} tcontext {})",
            escape::text(s),
            escape::text(t)
        ),
        _ => String::new(),
    };
    let hint = match lsm {
        "selinux" => "see `ausearch -m avc -ts recent`; fix the file's context (`restorecon -v PATH`) or the policy (`audit2allow`)".to_owned(),
        "apparmor" => "see `journalctl -k | grep apparmor=\"DENIED\"`; adjust sshd's profile (`aa-logprof`) or set it to complain mode".to_owned(),
        "landlock" => "a Landlock ruleset applied to sshd (by sshd's parent, a service manager or a wrapper) does not allow this path: find who restricts it (systemd's RestrictFileSystems/Landlock options, a sandboxing wrapper)".to_owned(),
        _ => format!("an LSM refused it: active LSMs are {}; check their logs", ctx.lsms.all.join(",")),
    };
    Finding {
        cause: Cause::LsmDenied,
        pid: Some(p.pid),
        details,
        evidence,
        summary: format!(
            "{}[{}] was denied {what} by {by}{context}; the connection ended {after_ms} ms later: {}",
            escape::text(&p.comm),
            p.pid,
            consequence(e.outcome)
        ),
        hint,
    }
}

/// `permission_denied`: EACCES on a path that the file mode bits themselves refuse.
pub fn judge_permission(e: &Ended, ctx: &Context) -> Option<Finding> {
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
