//! systemd-journald's native protocol: `KEY=value` lines in one datagram. Values hold no
//! newline (they are escaped), so the simple form suffices; the whole verdict rides along as
//! JSON in `SSHTRACE_JSON`.

use bytes::BytesMut;

use super::Record;
use crate::escape;

pub fn render(record: &Record) -> BytesMut {
    let mut fields: Vec<(&str, String)> = vec![("SYSLOG_IDENTIFIER", "sshtrace".into())];
    match record {
        Record::Verdict(v) => {
            fields.push(("MESSAGE", v.summary.clone()));
            fields.push(("PRIORITY", "4".into()));
            fields.push(("SSHTRACE_CAUSE", v.cause.as_str().into()));
            fields.push(("SSHTRACE_OUTCOME", v.outcome.as_str().into()));
            fields.push((
                "SSHTRACE_LOCAL",
                format!("{}:{}", v.conn.local_addr, v.conn.local_port),
            ));
            fields.push((
                "SSHTRACE_REMOTE",
                format!("{}:{}", v.conn.remote_addr, v.conn.remote_port),
            ));
            if let Some(s) = &v.sshd {
                fields.push(("SSHTRACE_SSHD_PID", s.pid.to_string()));
            }
            fields.push((
                "SSHTRACE_JSON",
                serde_json::to_string(v).unwrap_or_default(),
            ));
        }
        Record::Loss(l) => {
            fields.push(("MESSAGE", l.summary()));
            fields.push(("PRIORITY", "5".into()));
            fields.push((
                "SSHTRACE_JSON",
                serde_json::to_string(l).unwrap_or_default(),
            ));
        }
    }
    let mut out = BytesMut::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"=");
        out.extend_from_slice(escape::text(&value).as_bytes());
        out.extend_from_slice(b"\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::LossRecord;

    #[test]
    fn one_field_per_line_and_no_raw_newlines() {
        let mut loss = LossRecord::new(
            "t".into(),
            "h".into(),
            Some("x\ny".into()),
            1,
            1,
            Default::default(),
        );
        loss.sink = Some("x\ny".into());
        let text = String::from_utf8(render(&Record::Loss(loss)).to_vec()).unwrap();
        assert!(text.lines().all(|l| l.contains('=')), "{text}");
        assert!(text.contains("x\\ny"));
    }
}
