//! `firewall`: an iptables rule in a network namespace the test makes rejects or drops the
//! client's SYN to sshd. sshd and the client share that namespace's loopback, so the REJECT's
//! reset is seen where the client receives it.

use std::process::Output;

use sshtrace_tests::{privileged, Endpoint, NetNs, Sshd, SshdOptions, Tracer};

fn blocked(name: &str, ep: Endpoint, target: &[&str]) -> (NetNs, Sshd, Tracer, Output) {
    let ns = NetNs::new(name);
    let sshd = Sshd::start(
        name,
        ep,
        SshdOptions {
            netns: Some(ns.name.clone()),
            ..Default::default()
        },
    );
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let port = ep.port().to_string();
    let mut rule = vec![
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &port, "--syn", "-j",
    ];
    rule.extend_from_slice(target);
    ns.exec(&rule);
    let out = sshd.ssh_command("true").output().unwrap();
    (ns, sshd, tracer, out)
}

#[test]
fn reject_with_tcp_reset() {
    if !privileged("reject_with_tcp_reset") {
        return;
    }
    let ep = Endpoint::new(130);
    let (_ns, _sshd, tracer, out) =
        blocked("reject", ep, &["REJECT", "--reject-with", "tcp-reset"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "firewall");
    assert_eq!(v["details"]["action"], "REJECT");
    assert_eq!(v["outcome"], "refused");
    assert_eq!(v["details"]["first_dropped_flags"], "SYN");
    assert_eq!(v["details"]["direction"], "inbound");
    assert_eq!(v["sshd"], serde_json::Value::Null);
}

#[test]
fn drop_without_answer() {
    if !privileged("drop_without_answer") {
        return;
    }
    let ep = Endpoint::new(131);
    let (_ns, _sshd, tracer, out) = blocked("drop", ep, &["DROP"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "firewall");
    assert_eq!(v["details"]["action"], "DROP");
    assert_eq!(v["outcome"], "dropped");
    assert!(
        v["details"]["dropped_segments"].as_u64().unwrap() >= 2,
        "{v}"
    );
}
