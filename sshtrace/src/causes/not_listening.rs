//! `not_listening`: a connection attempt (SYN) to a tracked port was answered with a RST
//! because no socket listens there. The evidence says where sshd does listen, and, when an
//! sshd that listened there has gone, how it ended.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use super::{exit_evidence, signal_evidence, Background, Ended, Finding};
use crate::{
    enrich::discovery::Listener,
    escape,
    trace::events::TCP_SYN,
    trace::state::ResetSent,
    verdict::{signal_name, Cause, Evidence, Outcome},
};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    let reset = refusal_for_no_socket(e, ctx)?;
    let target = e.conn.tuple.local;
    let (live, dead) = live_and_exited_listeners(ctx);
    let listening = listening_addresses(&live);
    let pids: Vec<u32> = live.iter().map(|l| l.pid).collect();
    let mut details = Map::new();
    details.insert("sshd_running".into(), json!(!pids.is_empty()));
    // A storm of refusals from this client: the kernel sent one record per 100 ms.
    details.insert("repeated".into(), json!(reset.repeated));
    details.insert("listening".into(), json!(listening));
    let mut evidence = vec![Evidence::Listening {
        sshd_pids: pids.clone(),
        addresses: listening.clone(),
    }];

    let mut summary = running_summary(target, &pids, &listening);
    let previous = previous_listener(&dead, target, &pids, ctx);
    if let Some(gone) = previous {
        let (how, info) = listener_end(gone, ctx, &mut evidence);
        summary.push_str(&format!("; sshd[{gone}], which listened there, {how}"));
        details.insert("previous_listener".into(), info);
    }
    Some(Finding {
        cause: Cause::NotListening,
        pid: None,
        details,
        evidence,
        summary,
        hint: hint(target, pids.is_empty(), previous),
    })
}

/// The first reset of a refused connection, when it answered a SYN for want of a socket.
fn refusal_for_no_socket<'a>(e: &'a Ended, ctx: &Background) -> Option<&'a ResetSent> {
    if e.outcome != Outcome::Refused {
        return None;
    }
    let reset = e.conn.resets_sent.first()?;
    // Only a SYN proves a connection attempt; a stray segment could be anything.
    if reset.seg_flags? & TCP_SYN == 0 {
        return None;
    }
    if let (Some(reason), Some(no_socket)) = (reset.reason, ctx.names.rst_reason_value("NO_SOCKET"))
    {
        if reason != no_socket {
            return None;
        }
    }
    Some(reset)
}

/// The listeners still running, and those the kernel saw exit.
fn live_and_exited_listeners<'a>(ctx: &'a Background) -> (Vec<&'a Listener>, Vec<&'a Listener>) {
    // A listener the kernel saw exit is gone, whatever the last scan said (a refusal is
    // judged at once, and the scan may be from the instant before the exit).
    let exited = |pid: u32| ctx.procs.get(pid).is_some_and(|p| p.exit.is_some());
    ctx.sshd.listeners.values().partition(|l| !exited(l.pid))
}

/// Where the running listeners listen, sorted and without repeats.
fn listening_addresses(live: &[&Listener]) -> Vec<String> {
    let mut addrs: Vec<SocketAddr> = live.iter().flat_map(|l| l.addrs.iter().copied()).collect();
    addrs.sort();
    addrs.dedup();
    addrs.iter().map(ToString::to_string).collect()
}

/// The summary up to what runs: whether sshd runs, and where it listens.
fn running_summary(target: SocketAddr, pids: &[u32], listening: &[String]) -> String {
    let mut summary =
        format!("nothing listens on {target}: the kernel refused the connection with a RST; ");
    if pids.is_empty() {
        summary.push_str("no sshd is running");
    } else {
        summary.push_str(&format!(
            "sshd is running (pid {}) and listens on {}",
            join(pids),
            listening.join(", ")
        ));
    }
    summary
}

/// The sshd that listened on `target` and is gone (or no longer listens), if any.
fn previous_listener(
    dead: &[&Listener],
    target: SocketAddr,
    pids: &[u32],
    ctx: &Background,
) -> Option<u32> {
    // A scan saw it listen, or (gone before any scan) the kernel saw its listen().
    dead.iter()
        .copied()
        .chain(ctx.sshd.gone.iter().rev())
        .find(|l| l.addrs.iter().any(|a| serves(a, target)))
        .map(|l| l.pid)
        .or_else(|| {
            let p = ctx.procs.exited_listener(|a| serves(a, target))?;
            (!pids.contains(&p.pid)).then_some(p.pid)
        })
}

/// What to do: restart the listener that went away, start sshd, or fix the address.
fn hint(target: SocketAddr, no_sshd: bool, previous: Option<u32>) -> String {
    match (no_sshd, previous) {
        (_, Some(gone)) => format!(
            "sshd {gone} stopped listening on {target}: find out why (journalctl -u ssh; sshd -t) \
             and start it again"
        ),
        (true, None) => {
            "start sshd (systemctl start ssh) and check why it is not running: sshd -t; \
                         journalctl -u ssh"
                .into()
        }
        (false, None) => format!(
            "sshd does not listen on {target}: compare the client's address and port with \
             `sshd -T | grep -Ei '^(port|listenaddress)'` and restart sshd after fixing"
        ),
    }
}

/// Whether a socket listening on `addr` accepts connections for `target` (same port, same or
/// wildcard address).
fn serves(addr: &SocketAddr, target: SocketAddr) -> bool {
    addr.port() == target.port() && (addr.ip() == target.ip() || addr.ip().is_unspecified())
}

/// How a listener that is gone ended, from its exit and the signals it got.
fn listener_end(gone: u32, ctx: &Background, evidence: &mut Vec<Evidence>) -> (String, Value) {
    let mut info = Map::new();
    info.insert("pid".into(), json!(gone));
    let Some(p) = ctx.procs.get(gone) else {
        return ("no longer listens".into(), Value::Object(info));
    };
    let Some(exit) = p.exit else {
        return (
            "closed its listening socket (still running)".into(),
            Value::Object(info),
        );
    };
    evidence.extend(exit_evidence(p, ctx));
    let how = match exit.signal() {
        Some(sig) => {
            info.insert("signal".into(), json!(signal_name(sig)));
            let sender = p.signals.iter().rev().find(|s| s.sig == sig);
            if let Some(s) = sender {
                evidence.push(signal_evidence(p, s, ctx));
                info.insert("sender_pid".into(), json!(s.sender.pid));
                info.insert("sender_comm".into(), json!(s.sender.comm));
            }
            match sender.filter(|s| s.sent_by_a_process() && s.sender.pid != p.pid) {
                Some(s) => format!(
                    "died of {} sent by {}[{}]",
                    signal_name(sig),
                    escape::text(&s.sender.comm),
                    s.sender.pid
                ),
                None => format!("died of {}", signal_name(sig)),
            }
        }
        None => {
            let status = exit.status().unwrap_or(-1);
            info.insert("exit_status".into(), json!(status));
            format!("exited with status {status}")
        }
    };
    (how, Value::Object(info))
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
