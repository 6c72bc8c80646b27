//! systemd-journald's native protocol: `KEY=value` lines in one datagram. Values hold no
//! newline, so the simple form suffices: the text fields go through `escape::text`, and the
//! whole record rides along in `SSHTRACE_JSON` as JSON from `escape::json`, which holds no
//! control character either (and stays valid JSON: it is not text-escaped a second time).

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
            fields.push(("SSHTRACE_JSON", escape::json(v)));
        }
        Record::Loss(l) => {
            fields.push(("MESSAGE", l.summary()));
            fields.push(("PRIORITY", "5".into()));
            fields.push(("SSHTRACE_JSON", escape::json(l)));
        }
    }
    let mut out = BytesMut::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"=");
        if key == "SSHTRACE_JSON" {
            out.extend_from_slice(value.as_bytes());
        } else {
            out.extend_from_slice(escape::text(&value).as_bytes());
        }
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

    #[test]
    fn the_json_field_stays_valid_json_with_hostile_strings() {
        let hostile = "x\ny\u{9b}2J\u{202e}\x7f\"\\";
        let loss = LossRecord::new(
            "t".into(),
            "h".into(),
            Some(hostile.into()),
            1,
            1,
            Default::default(),
        );
        let text = String::from_utf8(render(&Record::Loss(loss)).to_vec()).unwrap();
        assert!(text.lines().all(|l| l.contains('=')), "{text}");
        assert!(
            !text.chars().any(|c| c != '\n' && escape::is_unsafe(c)),
            "{text:?}"
        );
        let json = text
            .lines()
            .find_map(|l| l.strip_prefix("SSHTRACE_JSON="))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(parsed["sink"], hostile);
    }
}
