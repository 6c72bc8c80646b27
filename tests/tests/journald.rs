//! The journald output end to end: a real systemd-journald (without systemd as PID 1, in a
//! mount namespace of the test's own: `sshtrace_tests::journald`), sshtrace sending to it from
//! inside that namespace, and verdicts provoked for real against a real sshd — a refusal, a
//! refused key, a crash, and a kill by a process whose name holds a newline, an escape
//! sequence, a quote, a backslash and a byte that is not UTF-8. Read back with
//! `journalctl -o json`: every field against the verdict sshtrace printed, the escaping, and
//! each cause's priority. And journald restarted under a running sshtrace: nothing lost.

use std::{ffi::OsStr, net::TcpStream, os::unix::ffi::OsStrExt, process::Command, time::Duration};

use serde_json::Value;
use sshtrace_tests::{
    journald::Journald, privileged, sshd::build_program, wait_for, Endpoint, Sshd, SshdOptions,
    Tracer,
};

/// A process name (comm: 15 bytes at most) with a newline, ESC [2J (clear the screen), 0xff
/// (not UTF-8), a quote and a backslash.
const HOSTILE_NAME: &[u8] = b"k\n\x1b[2J\xff\"\\";
/// What the kernel's bytes decode to in JSON: the byte that is not UTF-8 replaced.
const HOSTILE_DECODED: &str = "k\n\x1b[2J\u{fffd}\"\\";
/// What a text field of the journal holds: control characters written as `\n`, `\x1b`.
const HOSTILE_ESCAPED: &str = "k\\n\\x1b[2J\u{fffd}\"\\";

#[test]
fn verdicts_reach_a_real_journald_escaped_with_their_cause_s_priority() {
    if !privileged("verdicts_reach_a_real_journald_escaped_with_their_cause_s_priority") {
        return;
    }
    // sshtrace follows every sshd it finds: one test's sshd would add to the other's journal.
    let _alone = sshtrace_tests::alone();
    let journald = Journald::start();
    let (ep, crash, closed) = (Endpoint::new(252), Endpoint::new(253), Endpoint::new(254));
    let ports = [ep, crash, closed].map(|e| e.port().to_string());
    let tracer = Tracer::start_in_mount_namespace(
        &journald.mount_namespace(),
        &[
            "--port", &ports[0], "--port", &ports[1], "--port", &ports[2], "-o", "-", "-o",
            "journald",
        ],
    );

    assert!(TcpStream::connect((closed.addr().as_str(), closed.port())).is_err());
    let sshd = Sshd::start("journald", ep, SshdOptions::default());
    // A key sshd does not accept (its own host key): the client gives up.
    let refused = sshd
        .ssh_command_with(ep.port(), &sshd.path("host_key"), "true")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let mut client = sshd.ssh_command("sleep 60").spawn().unwrap();
    let session = sshd.wait_for_session();
    let killer = build_program("named_kill.c", &sshd.files.dir);
    let killed = Command::new(&killer)
        .arg(OsStr::from_bytes(HOSTILE_NAME))
        .arg(session.to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = client.wait();
    let crashing = Sshd::start(
        "journald-crash",
        crash,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "preauth".into())],
            preload: Some("crash_preload.c"),
            ..Default::default()
        },
    );
    assert!(
        !crashing.ssh("true").status.success(),
        "the crash fixture did not fire"
    );

    let expected = [
        (closed, "not_listening", "4"),
        (ep, "closed_preauth", "5"),
        (ep, "sshd_killed", "4"),
        (crash, "sshd_crashed", "3"),
    ];
    let verdicts =
        expected.map(|(e, cause, _)| tracer.verdict_for(e.port(), |v| v["cause"] == cause));
    let entries = wait_for("4 verdicts in the journal", Duration::from_secs(10), || {
        let entries = journald.entries("sshtrace");
        (entries.len() >= expected.len()).then_some(entries)
    });
    assert_eq!(entries.len(), expected.len(), "{entries:#?}");
    for (verdict, (_, cause, priority)) in verdicts.iter().zip(expected) {
        let entry = entry_of(&entries, verdict);
        assert_eq!(entry["PRIORITY"], priority, "{cause}: {entry:#}");
        assert_fields_match(entry, verdict, tracer.pid());
    }

    let killed = entry_of(&entries, &verdicts[2]);
    assert_eq!(verdicts[2]["details"]["sender_comm"], HOSTILE_DECODED);
    assert_eq!(
        killed["SSHTRACE_SENDER_COMM"], HOSTILE_ESCAPED,
        "{killed:#}"
    );
    assert_eq!(killed["SSHTRACE_SIGNAL"], "SIGKILL");
    assert_eq!(
        killed["SSHTRACE_SENDER_PID"],
        verdicts[2]["details"]["sender_pid"].to_string()
    );
    let message = killed["MESSAGE"].as_str().unwrap();
    assert!(message.contains(HOSTILE_ESCAPED), "{message:?}");
}

/// The entry whose `SSHTRACE_JSON` is the verdict sshtrace printed on standard output.
fn entry_of<'a>(entries: &'a [Value], verdict: &Value) -> &'a Value {
    entries
        .iter()
        .find(|e| {
            e["SSHTRACE_JSON"]
                .as_str()
                .and_then(|j| serde_json::from_str::<Value>(j).ok())
                .as_ref()
                == Some(verdict)
        })
        .unwrap_or_else(|| panic!("no journal entry holds {verdict:#}; entries: {entries:#?}"))
}

/// The native protocol's fields say what the verdict says; every value is text (journalctl
/// gives a value that is not UTF-8 as an array of bytes) without a control character.
fn assert_fields_match(entry: &Value, verdict: &Value, pid: u32) {
    let conn = &verdict["conn"];
    let address = |side: &str| {
        format!(
            "{}:{}",
            conn[format!("{side}_addr")].as_str().unwrap(),
            conn[format!("{side}_port")]
        )
    };
    assert_eq!(entry["_TRANSPORT"], "journal");
    assert_eq!(entry["_PID"], pid.to_string());
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "sshtrace");
    assert_eq!(entry["SSHTRACE_CAUSE"], verdict["cause"]);
    assert_eq!(entry["SSHTRACE_OUTCOME"], verdict["outcome"]);
    assert_eq!(entry["SSHTRACE_LOCAL"], address("local"));
    assert_eq!(entry["SSHTRACE_REMOTE"], address("remote"));
    if let Some(sshd) = verdict["sshd"].as_object() {
        assert_eq!(entry["SSHTRACE_SSHD_PID"], sshd["pid"].to_string());
        assert_eq!(entry["SSHTRACE_SSHD_COMM"], sshd["comm"]);
    }
    let summary = verdict["summary"].as_str().unwrap();
    if !summary.chars().any(char::is_control) {
        assert_eq!(entry["MESSAGE"], summary);
    }
    for (field, value) in entry.as_object().unwrap() {
        let text = value
            .as_str()
            .unwrap_or_else(|| panic!("{field} is not one UTF-8 text: {value}"));
        assert!(!text.chars().any(char::is_control), "{field}: {text:?}");
    }
}

/// journald stopped and started again, as an upgrade of systemd does: the verdict judged
/// while it was away is sent once it is back, and none is lost.
#[test]
fn a_journald_restart_loses_no_verdict() {
    if !privileged("a_journald_restart_loses_no_verdict") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let mut journald = Journald::start();
    let closed = Endpoint::new(255);
    let port = closed.port().to_string();
    let mut tracer = Tracer::start_in_mount_namespace(
        &journald.mount_namespace(),
        &["--port", &port, "-o", "-", "-o", "journald"],
    );
    refuse(&tracer, closed, 1);
    entries_at_least(&journald, 1);
    journald.stop();
    refuse(&tracer, closed, 2);
    journald.start_again();
    refuse(&tracer, closed, 3);
    let entries = entries_at_least(&journald, 3);
    assert_eq!(entries.len(), 3, "{entries:#?}");
    for verdict in tracer.verdicts(closed.port()) {
        entry_of(&entries, &verdict);
    }
    assert!(tracer.stop().success());
    assert!(
        tracer
            .stderr_lines()
            .iter()
            .any(|l| l == "sshtrace: output journald: 3 produced, 3 delivered, 0 dropped, 0 undelivered at exit"),
        "{:#?}",
        tracer.stderr_lines()
    );
}

/// A connection refused on `closed`'s port: the `n`th verdict there, waited for on stdout.
fn refuse(tracer: &Tracer, closed: Endpoint, n: usize) {
    assert!(TcpStream::connect((closed.addr().as_str(), closed.port())).is_err());
    wait_for(
        &format!("verdict {n} on stdout"),
        Duration::from_secs(10),
        || (tracer.verdicts(closed.port()).len() == n).then_some(()),
    );
}

/// The journal's sshtrace entries, once there are `n` at least.
fn entries_at_least(journald: &Journald, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} entries in the journal"),
        Duration::from_secs(15),
        || {
            let entries = journald.entries("sshtrace");
            (entries.len() >= n).then_some(entries)
        },
    )
}
