//! A healthy login must give no verdict.

use std::net::TcpStream;

use sshtrace_tests::{privileged, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn healthy_login_gives_no_verdict() {
    if !privileged("healthy_login_gives_no_verdict") {
        return;
    }
    let ep = Endpoint::new(10);
    // sshd already running when sshtrace starts: the start-up scan's path.
    let sshd = Sshd::start("healthy", ep, SshdOptions::default());
    let closed = Endpoint::new(11);
    let tracer = Tracer::start(&[
        "--port",
        &ep.port().to_string(),
        "--port",
        &closed.port().to_string(),
    ]);

    let out = sshd.ssh("echo hello");
    assert!(
        out.status.success(),
        "login failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    // A refusal afterwards proves the tracer was live; the login's own connection, which
    // ended before it, must not have produced a verdict by then.
    assert!(TcpStream::connect((ep.addr().as_str(), closed.port())).is_err());
    tracer.verdict_for(closed.port(), |v| v["cause"] == "not_listening");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(tracer.verdicts(ep.port()), Vec::<serde_json::Value>::new());
}
