//! The human view: one line per verdict; `-v` adds the hint and the evidence chain.

use std::fmt::Write;

use bytes::BytesMut;

use crate::{escape, verdict::Verdict};

pub fn render(v: &Verdict, verbose: bool) -> BytesMut {
    let mut line = String::with_capacity(256);
    let time = v.ts.get(11..23).unwrap_or(&v.ts);
    let _ = write!(
        line,
        "{time} {}:{} -> {}:{} {} {}: {}",
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
    BytesMut::from(line.as_bytes())
}
