//! The human view: one line per verdict; `-v` adds the hint and the evidence chain. Every
//! string is passed through `escape::text` (the evidence through `escape::json`): no control
//! character, so no forged lines and no terminal escape sequences, and no bidi or other
//! invisible format character, so nothing displayed out of order or hidden.

use std::fmt::Write;

use bytes::BytesMut;

use super::Record;
use crate::{
    escape,
    verdict::{Cause, Verdict},
};

pub fn render(record: &Record, verbose: bool, color: bool) -> BytesMut {
    let line = match record {
        Record::Verdict(v) => verdict(v, verbose, color),
        Record::Loss(l) => format!("{} loss: {}\n", time(&l.ts), escape::text(&l.summary())),
    };
    BytesMut::from(line.as_bytes())
}

fn time(ts: &str) -> &str {
    ts.get(11..23).unwrap_or(ts)
}

/// ANSI colours by what the cause means for the operator: red, sshd or its processes died;
/// yellow, a limit, rule or policy refused; cyan, the network or an actor outside sshd.
fn paint(cause: Cause, color: bool) -> String {
    let code = match cause {
        Cause::SshdCrashed | Cause::SshdKilled | Cause::OomKilled | Cause::SshdExited => "31",
        Cause::ResourceLimit
        | Cause::Firewall
        | Cause::LsmDenied
        | Cause::PermissionDenied
        | Cause::SshdDropped
        | Cause::NotListening
        | Cause::ConnectRefused => "33",
        Cause::PeerReset | Cause::SocketKilled | Cause::KernelAbort | Cause::ClientAborted => "36",
        Cause::ClosedPreauth | Cause::Unknown => "1",
    };
    if color {
        format!("\x1b[{code}m{}\x1b[0m", cause.as_str())
    } else {
        cause.as_str().to_owned()
    }
}

fn verdict(v: &Verdict, verbose: bool, color: bool) -> String {
    let mut line = String::with_capacity(256);
    // Always client -> server: on the client side, this host's end is the client.
    let (local, remote) = (
        format!("{}:{}", v.conn.local_addr, v.conn.local_port),
        format!("{}:{}", v.conn.remote_addr, v.conn.remote_port),
    );
    let (client, server) = if v.side == "client" {
        (local, remote)
    } else {
        (remote, local)
    };
    let _ = write!(
        line,
        "{} {client} -> {server} {} {}: {}",
        time(&v.ts),
        v.outcome.as_str(),
        paint(v.cause, color),
        escape::text(&v.summary)
    );
    if let Some(p) = &v.process {
        let _ = write!(line, " [{} pid {}", escape::text(&p.comm), p.pid);
        if let Some(cmdline) = &p.cmdline {
            let _ = write!(line, ": {}", escape::text(cmdline));
        }
        line.push(']');
    }
    if let Some(sshd) = &v.sshd {
        let _ = write!(line, " [sshd pid {}", sshd.pid);
        if let Some(listener) = sshd.listener_pid.filter(|&l| l != sshd.pid) {
            let _ = write!(line, ", listener {listener}");
        }
        line.push(']');
    }
    line.push('\n');
    if verbose {
        let _ = writeln!(line, "    hint: {}", escape::text(&v.hint));
        for e in &v.evidence {
            let _ = writeln!(line, "    evidence: {}", escape::json(e));
        }
        for l in &v.sshd_log {
            let _ = writeln!(
                line,
                "    sshd log: [{}] {}",
                l.pid,
                escape::text(&l.message)
            );
        }
    }
    line
}
