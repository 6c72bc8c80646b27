//! RFC 5424 messages: the one-line summary as MSG, the verdict's key fields as structured
//! data. SD-PARAM values escape `"`, `\` and `]` (RFC 5424 §6.3.3); every string goes
//! through `escape::text` (header fields are printable ASCII), so no field holds a control or
//! invisible format character: no message can be split or forged.

use std::fmt::Write;

use bytes::BytesMut;

use super::{severity, Record};
use crate::escape;

/// RFC 5612's documentation enterprise number: sshtrace has no private one.
const SD_ID: &str = "sshtrace@32473";
/// Facility daemon (3); the severity is the record's (`severity.rs`).
const FACILITY: u8 = 3;

pub fn render(record: &Record, pid: u32, octet_counting: bool) -> BytesMut {
    let pri = FACILITY * 8 + severity::of(record);
    let (ts, host, msgid, params, msg) = match record {
        Record::Verdict(v) => {
            let mut params = vec![
                ("cause", v.cause.as_str().to_owned()),
                ("outcome", v.outcome.as_str().to_owned()),
                ("side", v.side.to_owned()),
                (
                    "local",
                    format!("{}:{}", v.conn.local_addr, v.conn.local_port),
                ),
                (
                    "remote",
                    format!("{}:{}", v.conn.remote_addr, v.conn.remote_port),
                ),
            ];
            if let Some(sshd) = &v.sshd {
                params.push(("sshd_pid", sshd.pid.to_string()));
                params.push(("sshd_comm", sshd.comm.clone()));
                if let Some(l) = sshd.listener_pid {
                    params.push(("listener_pid", l.to_string()));
                }
            }
            // The cause's own facts, where they are single values.
            for (key, value) in &v.details {
                let value = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                params.push((key.as_str(), value));
            }
            (&v.ts, &v.host, v.cause.as_str(), params, v.summary.clone())
        }
        Record::Loss(l) => {
            let mut params = vec![
                ("dropped", l.dropped.to_string()),
                ("dropped_total", l.dropped_total.to_string()),
                ("lost_kernel_events", l.lost_kernel_events.to_string()),
                ("skipped_program_runs", l.skipped_program_runs.to_string()),
            ];
            if let Some(sink) = &l.sink {
                params.push(("sink", sink.clone()));
            }
            (&l.ts, &l.host, "loss", params, l.summary())
        }
    };
    let mut line = String::with_capacity(512);
    let _ = write!(
        line,
        "<{pri}>1 {} {} sshtrace {pid} {msgid} [{SD_ID}",
        timestamp(ts),
        header_field(host)
    );
    for (name, value) in params {
        let _ = write!(line, " {name}=\"{}\"", sd_escape(&escape::text(&value)));
    }
    let _ = write!(line, "] {}", escape::text(&msg));
    let mut out = BytesMut::with_capacity(line.len() + 8);
    if octet_counting {
        out.extend_from_slice(format!("{} ", line.len()).as_bytes());
    }
    out.extend_from_slice(line.as_bytes());
    out
}

/// RFC 5424 allows at most six fractional digits.
fn timestamp(ts: &str) -> String {
    match ts.split_once('.') {
        Some((secs, frac)) => format!(
            "{secs}.{}Z",
            &frac.trim_end_matches('Z')[..6.min(frac.len() - 1)]
        ),
        None => ts.to_owned(),
    }
}

/// Header fields are printable US-ASCII without spaces; `-` when empty.
fn header_field(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(255)
        .collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::LossRecord;

    #[test]
    fn sd_params_escape_quote_backslash_and_bracket() {
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
    }

    #[test]
    fn loss_record_with_octet_counting() {
        let loss = LossRecord::new(
            "2026-11-25T03:01:58.123456789Z".into(),
            "my host".into(),
            Some("tcp://h:1".into()),
            6,
            6,
            Default::default(),
        );
        let out = render(&Record::Loss(loss), 42, true);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<29>1 2026-11-25T03:01:58.123456Z my_host sshtrace 42 loss [sshtrace@32473 dropped=\"6\""), "{msg}");
        assert!(
            msg.contains("sink=\"tcp://h:1\"] sshtrace dropped 6 record(s)"),
            "{msg}"
        );
    }

    #[test]
    fn timestamps_keep_six_fraction_digits() {
        assert_eq!(
            timestamp("2026-11-25T03:01:58.123456789Z"),
            "2026-11-25T03:01:58.123456Z"
        );
    }
}
