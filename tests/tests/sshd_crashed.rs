//! `sshd_crashed`: a process serving the connection dies of a real SIGSEGV (a fixture
//! preloaded into the real sshd writes through NULL). Both symptoms: a reset when the
//! client's data was unread, an orderly close when nothing was. And a fault right after a
//! signal another process sent (and sshd handled) is still a crash, not a kill. Each on OpenSSH
//! 9.2 and 10.0, where the pre-authentication process is `sshd-auth` and the per-connection
//! one `sshd-session`: the same verdict, naming the process that crashed.

use std::{fs, net::TcpStream, time::Duration};

use serde_json::Value;
use sshtrace_tests::{
    evidence,
    kernel::{self, Evidence},
    kill, privileged,
    sshd::read_until_closed,
    wait_for, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer,
};

fn crashing_sshd(openssh: OpenSsh, name: &str, ep: Endpoint, mode: &str) -> Sshd {
    Sshd::start(
        &openssh.name(name),
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), mode.into())],
            preload: Some("crash_preload.c"),
            openssh,
            ..Default::default()
        },
    )
}

fn exit_of(v: &Value, pid: &Value) -> Value {
    v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "exit" && &e["pid"] == pid)
        .cloned()
        .unwrap_or_else(|| panic!("no exit evidence for {pid}: {v}"))
}

/// The pre-authentication process (9.2's `sshd: USER [net]` child, 10.0's `sshd-auth`)
/// crashes right after it chroots, the client's key exchange unread.
fn preauth_child_segfault(test: &str, openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = crashing_sshd(openssh, "crash-preauth", ep, "preauth");

    let out = sshd.ssh("true");
    assert!(!out.status.success());
    eprintln!("client: {}", String::from_utf8_lossy(&out.stderr));

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_crashed");
    assert_eq!(v["outcome"], "reset_sent", "{v}");
    assert_eq!(v["details"]["signal"], "SIGSEGV");
    assert_eq!(v["details"]["signal_origin"], "fault");
    let sshd_info = &v["sshd"];
    assert_eq!(sshd_info["listener_pid"], sshd.pid());
    assert_eq!(sshd_info["pid"], v["details"]["crashed_pid"]);
    assert_ne!(sshd_info["pid"], sshd.pid());
    assert_eq!(sshd_info["role"], "preauth", "{v}");
    assert_eq!(sshd_info["comm"], openssh.preauth_comm(), "{v}");
    assert_eq!(exit_of(&v, &sshd_info["pid"])["signal"], "SIGSEGV");
    let reason = if kernel::expect(
        test,
        Evidence::ResetReasons,
        "sshd_crashed, its reset without a reason",
    ) {
        "TCP_ABORT_ON_CLOSE"
    } else {
        "unknown"
    };
    assert_eq!(evidence(&v, "tcp_send_reset")["reason"], reason);
}

#[test]
fn preauth_child_segfault_resets_the_client_openssh_9_2() {
    const TEST: &str = "preauth_child_segfault_resets_the_client_openssh_9_2";
    if privileged(TEST) {
        preauth_child_segfault(TEST, OpenSsh::V9_2Host, Endpoint::new(30));
    }
}

#[test]
fn preauth_child_segfault_resets_the_client_openssh_10() {
    const TEST: &str = "preauth_child_segfault_resets_the_client_openssh_10";
    if privileged(TEST) {
        preauth_child_segfault(TEST, OpenSsh::V10Container, Endpoint::new(34));
    }
}

/// The per-connection process (9.2's `sshd -R`, 10.0's `sshd-session`) crashes as it starts.
fn session_segfault_with_nothing_unread(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = crashing_sshd(openssh, "crash-session", ep, "session");

    // A client that sends nothing (a health check, a port scanner): nothing is left unread.
    let mut stream = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let local = stream.local_addr().unwrap();
    assert!(
        read_until_closed(&mut stream).is_ok(),
        "expected an orderly close"
    );

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == local.port());
    assert_eq!(v["cause"], "sshd_crashed", "{v}");
    assert_eq!(v["outcome"], "closed");
    assert_eq!(v["details"]["signal"], "SIGSEGV");
    let sshd_info = &v["sshd"];
    assert_eq!(sshd_info["role"], "session");
    assert_eq!(sshd_info["comm"], openssh.session_comm(), "{v}");
    assert_eq!(sshd_info["listener_pid"], sshd.pid());
    assert_eq!(exit_of(&v, &sshd_info["pid"])["signal"], "SIGSEGV");
}

#[test]
fn session_segfault_with_nothing_unread_closes_the_client_openssh_9_2() {
    if privileged("session_segfault_with_nothing_unread_closes_the_client_openssh_9_2") {
        session_segfault_with_nothing_unread(OpenSsh::V9_2Host, Endpoint::new(31));
    }
}

#[test]
fn session_segfault_with_nothing_unread_closes_the_client_openssh_10() {
    if privileged("session_segfault_with_nothing_unread_closes_the_client_openssh_10") {
        session_segfault_with_nothing_unread(OpenSsh::V10Container, Endpoint::new(35));
    }
}

/// Whether `pid` has a handler installed for `signal` (SigCgt in /proc/PID/status).
fn catches(pid: u32, signal: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

fn fault_after_a_handled_signal(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = crashing_sshd(openssh, "crash-handled", ep, "handled_then_fault");

    let mut stream = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let local = stream.local_addr().unwrap();
    // The per-connection sshd once the fixture's handler is in: before that, SIGUSR2 would
    // kill it (the default action), which is not the case under test.
    let session = wait_for(
        "the session's SIGUSR2 handler",
        Duration::from_secs(10),
        || {
            sshtrace_tests::children(sshd.pid())
                .into_iter()
                .find(|&p| catches(p, libc::SIGUSR2))
        },
    );
    kill(session, libc::SIGUSR2);
    let _ = read_until_closed(&mut stream);

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == local.port());
    assert_eq!(v["cause"], "sshd_crashed", "{v}");
    assert_eq!(v["details"]["signal"], "SIGILL");
    assert_eq!(v["details"]["signal_origin"], "fault");
    assert_eq!(v["details"]["crashed_pid"], session);
    assert_eq!(exit_of(&v, &Value::from(session))["signal"], "SIGILL");
    let killed: Vec<Value> = tracer
        .verdicts(ep.port())
        .into_iter()
        .filter(|v| v["cause"] == "sshd_killed")
        .collect();
    assert!(
        killed.is_empty(),
        "the test's SIGUSR2 taken for a kill: {killed:#?}"
    );
}

#[test]
fn fault_after_a_handled_signal_is_a_crash_not_a_kill_openssh_9_2() {
    if privileged("fault_after_a_handled_signal_is_a_crash_not_a_kill_openssh_9_2") {
        fault_after_a_handled_signal(OpenSsh::V9_2Host, Endpoint::new(32));
    }
}

#[test]
fn fault_after_a_handled_signal_is_a_crash_not_a_kill_openssh_10() {
    if privileged("fault_after_a_handled_signal_is_a_crash_not_a_kill_openssh_10") {
        fault_after_a_handled_signal(OpenSsh::V10Container, Endpoint::new(36));
    }
}
