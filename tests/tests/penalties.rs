//! `sshd_dropped` on OpenSSH 10.0, whose listener drops a connection for one of two reasons
//! and writes the same "Not allowed at this time" for both: PerSourcePenalties (on by default
//! since 9.8: after a crash the client's address is penalised for 90 s, and the listener
//! accepts and closes each new connection from it) and MaxStartups. The verdict tells which.
//! 10.0 only: 9.2 has no penalties.

use std::{net::TcpStream, time::Duration};

use sshtrace_tests::{
    privileged, sshd::read_until_closed, wait_for, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer,
};

const NOT_ALLOWED: &[u8] = b"Not allowed at this time\r\n";

#[test]
fn penalised_source_is_dropped_openssh_10() {
    if !privileged("penalised_source_is_dropped_openssh_10") {
        return;
    }
    // Every client here is 127.0.0.1: the previous verdict from it must be this test\'s.
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(250);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "penalty-10.0",
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "session".into())],
            preload: Some("crash_preload.c"),
            openssh: OpenSsh::V10Container,
            ..Default::default()
        },
    );

    // The crash that gets 127.0.0.1 penalised: sshd-session faults as it starts.
    let mut crashed = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let _ = read_until_closed(&mut crashed);
    // The listener penalises the source as it reaps the crashed child, right after it logs the
    // crash, and before it accepts again.
    wait_for(
        "the listener to reap the crash",
        Duration::from_secs(10),
        || sshd.log().contains("killed by signal").then_some(()),
    );

    let mut penalised = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let port = penalised.local_addr().unwrap().port();
    let received = read_until_closed(&mut penalised);
    assert_eq!(received.as_deref(), Ok(NOT_ALLOWED), "{}", sshd.log());

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == port);
    assert_eq!(v["cause"], "sshd_dropped", "{v}");
    assert_eq!(v["details"]["drop_reason"], "penalty", "{v}");
    // What the penalty followed: the crash's own verdict, from the same address.
    assert_eq!(
        v["details"]["earlier_verdict"]["cause"], "sshd_crashed",
        "{v}"
    );
    assert!(
        v["hint"]
            .as_str()
            .unwrap()
            .contains("PerSourcePenaltyExemptList"),
        "{v}"
    );
    assert!(
        !v["hint"].as_str().unwrap().contains("raise MaxStartups"),
        "{v}"
    );
    assert_eq!(v["details"]["listener_pid"], sshd.pid());
    assert_eq!(v["sshd"]["role"], "listener");
    assert!(
        sshd.log().contains("penalty: caused crash"),
        "{}",
        sshd.log()
    );
}

#[test]
fn past_max_startups_is_not_a_penalty_openssh_10() {
    if !privileged("past_max_startups_is_not_a_penalty_openssh_10") {
        return;
    }
    // Every client here is 127.0.0.1: the previous verdict from it must be this test\'s.
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(251);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "startups-10.0",
        ep,
        SshdOptions {
            config: vec!["MaxStartups 1".into()],
            openssh: OpenSsh::V10Container,
            ..Default::default()
        },
    );

    // Connected but silent: counts against MaxStartups until LoginGraceTime.
    let _pending = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    wait_for(
        "the pending connection's sshd-session",
        Duration::from_secs(5),
        || (!sshtrace_tests::children(sshd.pid()).is_empty()).then_some(()),
    );
    let mut dropped = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let port = dropped.local_addr().unwrap().port();
    let received = read_until_closed(&mut dropped);
    assert_eq!(received.as_deref(), Ok(NOT_ALLOWED), "{}", sshd.log());

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == port);
    assert_eq!(v["cause"], "sshd_dropped", "{v}");
    assert_eq!(v["details"]["drop_reason"], "max_startups", "{v}");
    assert_eq!(v["details"]["max_startups"], "1");
    assert_eq!(v["details"]["unauthenticated_connections"], 1);
    assert_eq!(v["details"]["listener_pid"], sshd.pid());
}
