//! `sshd_dropped`: with MaxStartups 1 and one unauthenticated connection open, the listener
//! accepts the next one and closes it at once. On OpenSSH 9.2 and 10.0 (whose listener writes
//! "Not allowed at this time" first; its penalties are in `penalties`).

use std::net::TcpStream;

use sshtrace_tests::{privileged, wait_for, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer};

fn past_max_startups(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        &openssh.name("dropped"),
        ep,
        SshdOptions {
            config: vec!["MaxStartups 1".into()],
            openssh,
            ..Default::default()
        },
    );

    // Connected but silent: counts against MaxStartups until LoginGraceTime.
    let _pending = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    wait_for(
        "the pending connection's sshd",
        std::time::Duration::from_secs(5),
        || (!sshtrace_tests::children(sshd.pid()).is_empty()).then_some(()),
    );
    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_dropped");
    assert_eq!(v["details"]["listener_pid"], sshd.pid(), "{v}");
    assert_eq!(v["details"]["max_startups"], "1", "{v}");
    assert_eq!(v["details"]["unauthenticated_connections"], 1, "{v}");
    assert_eq!(v["sshd"]["role"], "listener", "{v}");
    // 9.2: "drop connection #1 from … past MaxStartups"; 10.0: "… Maxstartups".
    let logged = match openssh {
        OpenSsh::V9_2Host => "past MaxStartups",
        OpenSsh::V10Container => "Maxstartups",
    };
    assert!(sshd.log().contains(logged), "{}", sshd.log());
}

#[test]
fn past_max_startups_openssh_9_2() {
    if privileged("past_max_startups_openssh_9_2") {
        past_max_startups(OpenSsh::V9_2Host, Endpoint::new(80));
    }
}

#[test]
fn past_max_startups_openssh_10() {
    if privileged("past_max_startups_openssh_10") {
        past_max_startups(OpenSsh::V10Container, Endpoint::new(81));
    }
}
