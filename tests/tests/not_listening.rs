//! `not_listening`: a SYN to a port nothing listens on is answered with a RST by the kernel.

use std::net::TcpStream;

use sshtrace_tests::{privileged, wait_for, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn refused_port_next_to_a_running_sshd() {
    if !privileged("refused_port_next_to_a_running_sshd") {
        return;
    }
    let ep = Endpoint::new(20);
    // sshd already running when sshtrace starts: the start-up scan's path.
    let sshd = Sshd::start("refused", ep, SshdOptions::default());
    let wrong = Endpoint::new(21).port();
    let tracer = Tracer::start(&["--port", &wrong.to_string()]);

    let out = sshd.ssh_command_to(wrong, "true").output().expect("ssh");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );

    let v = tracer.verdict_for(wrong, |v| v["cause"] == "not_listening");
    assert_eq!(v["outcome"], "refused");
    assert_eq!(v["conn"]["local_addr"], ep.addr());
    assert_eq!(v["sshd"], serde_json::Value::Null);
    assert_eq!(v["details"]["sshd_running"], true);
    let listening = v["details"]["listening"].as_array().unwrap();
    assert!(
        listening.contains(&format!("{}:{}", ep.addr(), ep.port()).into()),
        "{v}"
    );
    let reset = sshtrace_tests::evidence(&v, "tcp_send_reset");
    assert_eq!(reset["reason"], "NO_SOCKET");
    assert_eq!(reset["segment_flags"], "SYN");
}

/// Ports sshd listened on stay traced after it stops: that is when users meet "refused". The
/// sshd lives only a moment, started after sshtrace and stopped the instant it listens.
#[test]
fn sshd_that_stopped_no_longer_listens() {
    if !privileged("sshd_that_stopped_no_longer_listens") {
        return;
    }
    let ep = Endpoint::new(22);
    let tracer = Tracer::start(&[]);
    let mut sshd = Sshd::start("stopped", ep, SshdOptions::default());
    sshd.stop();
    wait_for(
        "the port to close",
        std::time::Duration::from_secs(5),
        || {
            TcpStream::connect((ep.addr().as_str(), ep.port()))
                .is_err()
                .then_some(())
        },
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "not_listening");
    let listening = v["details"]["listening"].as_array().unwrap();
    assert!(
        !listening.contains(&format!("{}:{}", ep.addr(), ep.port()).into()),
        "{v}"
    );
    // The harness stops sshd with SIGKILL.
    assert_eq!(v["details"]["previous_listener"]["pid"], sshd.pid());
    assert_eq!(v["details"]["previous_listener"]["signal"], "SIGKILL");
}
