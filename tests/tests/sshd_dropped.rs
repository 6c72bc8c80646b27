//! `sshd_dropped`: with MaxStartups 1 and one unauthenticated connection open, the listener
//! accepts the next one and closes it at once.

use std::net::TcpStream;

use sshtrace_tests::{privileged, wait_for, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn past_max_startups() {
    if !privileged("past_max_startups") {
        return;
    }
    let ep = Endpoint::new(80);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "dropped",
        ep,
        SshdOptions {
            config: vec!["MaxStartups 1".into()],
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
    assert_eq!(v["details"]["listener_pid"], sshd.pid());
    assert_eq!(v["details"]["max_startups"], "1");
    assert_eq!(v["details"]["unauthenticated_connections"], 1);
    assert_eq!(v["sshd"]["role"], "listener");
    assert!(sshd.log().contains("past MaxStartups"), "{}", sshd.log());
}
