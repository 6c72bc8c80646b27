//! A healthy login must give no verdict: on OpenSSH 9.2 (one re-executed `sshd` per
//! connection) and on 10.0 (`sshd-session`, and `sshd-auth` exiting 0 after the login).

use std::net::TcpStream;

use sshtrace_tests::{privileged, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer};

fn healthy_login(openssh: OpenSsh, ep: Endpoint, closed: Endpoint) {
    // sshd already running when sshtrace starts: the start-up scan's path.
    let sshd = Sshd::start(
        &openssh.name("healthy"),
        ep,
        SshdOptions {
            openssh,
            ..Default::default()
        },
    );
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

#[test]
fn healthy_login_gives_no_verdict_openssh_9_2() {
    if !privileged("healthy_login_gives_no_verdict_openssh_9_2") {
        return;
    }
    healthy_login(OpenSsh::V9_2Host, Endpoint::new(10), Endpoint::new(11));
}

#[test]
fn healthy_login_gives_no_verdict_openssh_10() {
    if !privileged("healthy_login_gives_no_verdict_openssh_10") {
        return;
    }
    healthy_login(OpenSsh::V10Container, Endpoint::new(12), Endpoint::new(13));
}
