//! The human view: one line per verdict; `-v` adds the hint and the evidence chain. Every
//! string is passed through `escape::text`: no control characters, so no forged lines and no
//! terminal escape sequences.

use std::fmt::Write;

use bytes::BytesMut;

use super::Record;
use crate::{escape, verdict::Verdict};

pub fn render(record: &Record, verbose: bool) -> BytesMut {
    let line = match record {
        Record::Verdict(v) => verdict(v, verbose),
        Record::Loss(l) => format!("{} loss: {}\n", time(&l.ts), escape::text(&l.summary())),
    };
    BytesMut::from(line.as_bytes())
}

fn time(ts: &str) -> &str {
    ts.get(11..23).unwrap_or(ts)
}

fn verdict(v: &Verdict, verbose: bool) -> String {
    let mut line = String::with_capacity(256);
    let _ = write!(
        line,
        "{} {}:{} -> {}:{} {} {}: {}",
        time(&v.ts),
        v.conn.remote_addr,
        v.conn.remote_port,
        v.conn.local_addr,
        v.conn.local_port,
        v.outcome.as_str(),
        v.cause.as_str(),
        escape::text(&v.summary)
    );
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
            let json = serde_json::to_string(e).unwrap_or_default();
            let _ = writeln!(line, "    evidence: {}", escape::text(&json));
        }
    }
    line
}
