//! `sshd_crashed`: a process serving the connection dies of a real SIGSEGV (a fixture
//! preloaded into the real sshd writes through NULL). Both symptoms: a reset when the
//! client's data was unread, an orderly close when nothing was.

use std::net::TcpStream;

use serde_json::Value;
use sshtrace_tests::{
    evidence,
    kernel::{self, Evidence},
    privileged,
    sshd::read_until_closed,
    Endpoint, Sshd, SshdOptions, Tracer,
};

fn crashing_sshd(name: &str, ep: Endpoint, mode: &str) -> Sshd {
    Sshd::start(
        name,
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), mode.into())],
            preload: Some("crash_preload.c"),
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

#[test]
fn preauth_child_segfault_resets_the_client() {
    if !privileged("preauth_child_segfault_resets_the_client") {
        return;
    }
    let ep = Endpoint::new(30);
    let sshd = crashing_sshd("crash-preauth", ep, "preauth");
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);

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
    assert_eq!(exit_of(&v, &sshd_info["pid"])["signal"], "SIGSEGV");
    let reason = if kernel::expect(
        "preauth_child_segfault_resets_the_client",
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
fn session_segfault_with_nothing_unread_closes_the_client() {
    if !privileged("session_segfault_with_nothing_unread_closes_the_client") {
        return;
    }
    let ep = Endpoint::new(31);
    let sshd = crashing_sshd("crash-session", ep, "session");
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);

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
    assert_eq!(sshd_info["listener_pid"], sshd.pid());
    assert_eq!(exit_of(&v, &sshd_info["pid"])["signal"], "SIGSEGV");
}
