//! systemd-journald's native protocol: `KEY=value` lines in one datagram. Values hold no
//! newline, so the simple form suffices: the text fields go through `escape::text`, and the
//! whole record rides along in `SSHTRACE_JSON` as JSON from `escape::json`, which holds no
//! control character either (and stays valid JSON: it is not text-escaped a second time).
//! The fields are those of syslog's structured data, so that `journalctl SSHTRACE_CAUSE=…`
//! or `SSHTRACE_SIGNAL=SIGSEGV` finds verdicts; PRIORITY is the cause's severity.

use bytes::BytesMut;
use serde_json::Value;

use super::{severity, Record};
use crate::escape;

pub fn render(record: &Record) -> BytesMut {
    let mut fields = Fields(vec![
        ("SYSLOG_IDENTIFIER".into(), "sshtrace".into()),
        ("PRIORITY".into(), severity::of(record).to_string()),
    ]);
    let json = match record {
        Record::Verdict(v) => {
            fields.add("MESSAGE", v.summary.clone());
            fields.add("SSHTRACE_CAUSE", v.cause.as_str().into());
            fields.add("SSHTRACE_SIDE", v.side.into());
            fields.add("SSHTRACE_OUTCOME", v.outcome.as_str().into());
            fields.add(
                "SSHTRACE_LOCAL",
                format!("{}:{}", v.conn.local_addr, v.conn.local_port),
            );
            fields.add(
                "SSHTRACE_REMOTE",
                format!("{}:{}", v.conn.remote_addr, v.conn.remote_port),
            );
            if let Some(s) = &v.sshd {
                fields.add("SSHTRACE_SSHD_PID", s.pid.to_string());
                fields.add("SSHTRACE_SSHD_COMM", s.comm.clone());
                if let Some(l) = s.listener_pid {
                    fields.add("SSHTRACE_LISTENER_PID", l.to_string());
                }
            }
            // The cause's own facts, where they are single values.
            for (key, value) in &v.details {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                fields.add(&detail_field(key), value);
            }
            escape::json(v)
        }
        Record::Loss(l) => {
            fields.add("MESSAGE", l.summary());
            escape::json(l)
        }
    };
    let mut out = BytesMut::new();
    for (key, value) in &fields.0 {
        push_field(&mut out, key, &escape::text(value));
    }
    push_field(&mut out, "SSHTRACE_JSON", &json);
    out
}

/// Fields in order, each name once: a detail named like a key field does not repeat it.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn add(&mut self, key: &str, value: String) {
        if !self.0.iter().any(|(k, _)| k == key) {
            self.0.push((key.to_owned(), value));
        }
    }
}

/// `SSHTRACE_` and the detail's name in journald's alphabet for field names (upper-case
/// letters, digits, `_`; at most 64 characters).
fn detail_field(key: &str) -> String {
    let mut name = String::from("SSHTRACE_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name.truncate(64);
    name
}

fn push_field(out: &mut BytesMut, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"=");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::LossRecord;
    use crate::verdict::{Cause, ConnInfo, Outcome, Role, SshdInfo, Verdict};

    fn killed_by(sender: &str) -> Verdict {
        let mut details = serde_json::Map::new();
        details.insert("sender_comm".into(), sender.into());
        details.insert("sender_pid".into(), 77.into());
        details.insert("signal".into(), "SIGKILL".into());
        details.insert("listener_pid".into(), 10.into());
        details.insert("evidence_list".into(), serde_json::json!([1, 2]));
        Verdict {
            schema: "sshtrace/2",
            record_type: "verdict",
            ts: "2026-11-25T03:15:39.576498000Z".into(),
            host: "h".into(),
            side: "server",
            process: None,
            outcome: Outcome::ResetSent,
            cause: Cause::SshdKilled,
            conn: ConnInfo {
                local_addr: "10.0.0.2".into(),
                local_port: 22,
                remote_addr: "203.0.113.5".into(),
                remote_port: 53036,
                netns: None,
            },
            sshd: Some(SshdInfo {
                pid: 12,
                comm: "sshd".into(),
                role: Role::Session,
                listener_pid: Some(10),
            }),
            container: None,
            details,
            evidence: Vec::new(),
            sshd_log: Vec::new(),
            summary: format!("sshd[12] was killed by {sender}[77] with SIGKILL"),
            hint: String::new(),
        }
    }

    fn fields(record: &Record) -> Vec<(String, String)> {
        let text = String::from_utf8(render(record).to_vec()).unwrap();
        text.lines()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn a_verdict_carries_its_facts_as_fields_and_its_cause_as_priority() {
        let hostile = "k\n\x1b[2J\u{fffd}";
        let record = Record::Verdict(Box::new(killed_by(hostile)));
        let fields = fields(&record);
        let get = |key: &str| {
            let values: Vec<&str> = fields
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(values.len(), 1, "{key} in {fields:?}");
            values[0].to_owned()
        };
        assert_eq!(get("PRIORITY"), "4");
        assert_eq!(get("SSHTRACE_CAUSE"), "sshd_killed");
        assert_eq!(get("SSHTRACE_REMOTE"), "203.0.113.5:53036");
        assert_eq!(get("SSHTRACE_SSHD_COMM"), "sshd");
        assert_eq!(get("SSHTRACE_LISTENER_PID"), "10");
        assert_eq!(get("SSHTRACE_SIGNAL"), "SIGKILL");
        assert_eq!(get("SSHTRACE_SENDER_PID"), "77");
        assert_eq!(get("SSHTRACE_SENDER_COMM"), "k\\n\\x1b[2J\u{fffd}");
        assert!(get("MESSAGE").contains("k\\n\\x1b[2J"));
        assert!(!fields.iter().any(|(k, _)| k == "SSHTRACE_EVIDENCE_LIST"));
        let json: serde_json::Value = serde_json::from_str(&get("SSHTRACE_JSON")).unwrap();
        assert_eq!(json["details"]["sender_comm"], hostile);
    }

    #[test]
    fn detail_names_become_journald_field_names() {
        assert_eq!(detail_field("sender_comm"), "SSHTRACE_SENDER_COMM");
        assert_eq!(detail_field("a-b.c"), "SSHTRACE_A_B_C");
        assert_eq!(detail_field(&"x".repeat(100)).len(), 64);
    }

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
