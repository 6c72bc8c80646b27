//! `firewall`: an iptables rule in a network namespace the test makes rejects or drops the
//! client's SYN to sshd. sshd and the client share that namespace's loopback, so the REJECT's
//! reset is seen where the client receives it.

use std::{process::Output, thread, time::Duration};

use sshtrace_tests::{
    kernel::{self, Evidence},
    privileged, Endpoint, NetNs, Sshd, SshdOptions, Tracer,
};

/// Before drop reasons (5.17) a dropped or rejected SYN leaves no kernel evidence on the
/// server: no verdict at all, which the test asserts after the firewall verdict's own wait.
fn no_verdict_without_drop_reasons(test: &str, tracer: &Tracer, port: u16) -> bool {
    if kernel::expect(
        test,
        Evidence::FirewallDrops,
        "no verdict: nothing shows the drop",
    ) {
        return false;
    }
    thread::sleep(Duration::from_secs(3));
    assert_eq!(tracer.verdicts(port), Vec::<serde_json::Value>::new());
    true
}

fn blocked(name: &str, ep: Endpoint, target: &[&str]) -> (NetNs, Sshd, Tracer, Output) {
    let ns = NetNs::new(name);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        name,
        ep,
        SshdOptions {
            netns: Some(ns.name.clone()),
            ..Default::default()
        },
    );
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
    if no_verdict_without_drop_reasons("reject_with_tcp_reset", &tracer, ep.port()) {
        return;
    }

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
    if no_verdict_without_drop_reasons("drop_without_answer", &tracer, ep.port()) {
        return;
    }

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "firewall");
    assert_eq!(v["details"]["action"], "DROP");
    assert_eq!(v["outcome"], "dropped");
    assert!(
        v["details"]["dropped_segments"].as_u64().unwrap() >= 2,
        "{v}"
    );
}
