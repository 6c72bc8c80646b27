//! No blind window: sshtrace, started first and given no flags, follows an sshd from its first
//! instant, so the connection that comes the moment sshd exists gets its verdict — from an sshd
//! restarted over and over (quicker than any /proc rescan), from the sshd that socket
//! activation starts for the very first connection (`Accept=no`: handed the listening socket),
//! and from an inetd-style `sshd -i` started per connection (`Accept=yes`). Every connection
//! dies the same deterministic way: the fixture crashes sshd's pre-authentication child.

use std::{thread, time::Duration};

use serde_json::Value;
use sshtrace_tests::{
    children, privileged, wait_for, Activation, Endpoint, SocketActivated, Sshd, SshdOptions,
    Tracer,
};

const ROUNDS: usize = 10;

fn preauth_crash() -> SshdOptions {
    SshdOptions {
        env: vec![("SSHTRACE_TEST_CRASH".into(), "preauth".into())],
        preload: Some("crash_preload.c"),
        ..Default::default()
    }
}

/// One sshd's life in the restart loop: its listener and its one connection's client port.
struct Round {
    listener: u32,
    client_port: u16,
}

#[test]
fn restart_loop_every_connection_gets_its_verdict() {
    if !privileged("restart_loop_every_connection_gets_its_verdict") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let ep = Endpoint::new(200);
    let mut sshd = Sshd::start("restart-loop", ep, preauth_crash());
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            sshd.restart();
        }
        // The instant it listens.
        let out = sshd.ssh("true");
        assert!(!out.status.success(), "round {round}: no crash: {out:?}");
        // Its connection over (the per-connection sshd reaped) before the restart's SIGKILL.
        wait_for(
            "the connection's sshd to exit",
            Duration::from_secs(10),
            || children(sshd.pid()).is_empty().then_some(()),
        );
        let client_port = *sshd.files.client_ports().last().expect("sshd logged it");
        rounds.push(Round {
            listener: sshd.pid(),
            client_port,
        });
    }

    for round in &rounds {
        let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == round.client_port);
        assert_eq!(v["cause"], "sshd_crashed", "{v}");
        assert_eq!(v["sshd"]["listener_pid"], round.listener, "{v}");
    }
    // Time for a second verdict about any of them to arrive, if one would.
    thread::sleep(Duration::from_millis(500));
    let verdicts = tracer.verdicts(ep.port());
    for round in &rounds {
        let about: Vec<&Value> = verdicts
            .iter()
            .filter(|v| v["conn"]["remote_port"] == round.client_port)
            .collect();
        assert_eq!(about.len(), 1, "one verdict per connection: {about:#?}");
    }
    assert_eq!(verdicts.len(), ROUNDS, "{verdicts:#?}");
}

/// `Accept=no`: the first connection makes the activator exec sshd, which accepts it.
#[test]
fn socket_activated_sshd_first_connection_gets_its_verdict() {
    if !privileged("socket_activated_sshd_first_connection_gets_its_verdict") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let ep = Endpoint::new(201);
    let activated =
        SocketActivated::start("activated", ep, Activation::ListenerPassed, preauth_crash());

    let out = activated.ssh("true");
    assert!(!out.status.success(), "no crash: {out:?}");
    let client_port = *activated
        .files
        .client_ports()
        .first()
        .expect("sshd logged it");
    // The activator became sshd: the listener is the activator's own process.
    let exe = std::fs::read_link(format!("/proc/{}/exe", activated.pid())).unwrap();
    assert_eq!(exe.to_str(), Some("/usr/sbin/sshd"), "{}", activated.log());

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == client_port);
    assert_eq!(v["cause"], "sshd_crashed", "{v}");
    assert_eq!(v["details"]["signal"], "SIGSEGV");
    assert_eq!(v["details"]["signal_origin"], "fault");
    assert_eq!(v["sshd"]["listener_pid"], activated.pid());
}

/// `Accept=yes` (inetd): the connection is `sshd -i`'s standard input from its first instant.
#[test]
fn inetd_style_sshd_per_connection_gets_its_verdict() {
    if !privileged("inetd_style_sshd_per_connection_gets_its_verdict") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let ep = Endpoint::new(202);
    let activated = SocketActivated::start("inetd", ep, Activation::PerConnection, preauth_crash());

    let out = activated.ssh("true");
    assert!(!out.status.success(), "no crash: {out:?}");
    let client_port = *activated
        .files
        .client_ports()
        .first()
        .expect("sshd logged it");

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == client_port);
    assert_eq!(v["cause"], "sshd_crashed", "{v}");
    assert_eq!(v["details"]["signal"], "SIGSEGV");
    assert_eq!(v["details"]["signal_origin"], "fault");
    assert_eq!(v["sshd"]["pid"], v["details"]["crashed_pid"]);
}
