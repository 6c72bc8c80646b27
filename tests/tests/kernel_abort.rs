//! `kernel_abort`: the TCP stack gives up on its own. sshd and its client sit in two network
//! namespaces the test makes, joined by a veth pair; with keepalive sysctls of seconds in
//! sshd's namespace, the link is cut (no firewall involved) and the server's keepalive probes
//! go unanswered: the kernel resets the session (TCP_KEEPALIVE_TIMEOUT).

use sshtrace_tests::{
    kernel::{self, Evidence},
    privileged, Endpoint, Link, Sshd, SshdOptions, Tracer,
};

const N: u8 = 120;

#[test]
fn keepalive_timeout() {
    if !privileged("keepalive_timeout") {
        return;
    }
    let link = Link::new("keepalive", N);
    for (sysctl, value) in [
        ("tcp_keepalive_time", "1"),
        ("tcp_keepalive_intvl", "1"),
        ("tcp_keepalive_probes", "2"),
    ] {
        link.a
            .exec(&["sysctl", "-q", &format!("net.ipv4.{sysctl}={value}")]);
    }
    let ep = Endpoint::at(N, "10.254.120.1");
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "keepalive",
        ep,
        SshdOptions {
            netns: Some(link.a.name.clone()),
            client_netns: Some(link.b.name.clone()),
            ..Default::default()
        },
    );
    let mut client = sshd.ssh_command("sleep 60").spawn().unwrap();
    sshd.wait_for_session();
    link.cut(N);

    if kernel::expect(
        "keepalive_timeout",
        Evidence::ResetReasons,
        "unknown: a reset this host sent, with the reset as raw evidence",
    ) {
        let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "kernel_abort");
        assert_eq!(v["details"]["reason"], "TCP_KEEPALIVE_TIMEOUT");
        assert_eq!(v["outcome"], "reset_sent");
    } else {
        let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "unknown");
        assert_eq!(v["outcome"], "reset_sent");
        let reset = sshtrace_tests::evidence(&v, "tcp_send_reset");
        assert_eq!(reset["reason"], "unknown");
        assert_eq!(reset["state"], "TCP_ESTABLISHED");
    }
    let _ = client.kill();
    let _ = client.wait();
}
