//! `closed_preauth`: orderly closes before authentication: a client whose key is refused
//! gives up (the client closes first), and LoginGraceTime expires (sshd closes first).

use std::{io::Write, net::TcpStream};

use sshtrace_tests::{privileged, sshd::read_until_closed, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn refused_key_client_gives_up() {
    if !privileged("refused_key_client_gives_up") {
        return;
    }
    let ep = Endpoint::new(110);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("badkey", ep, SshdOptions::default());
    // A key sshd does not accept: its own host key.
    let out = sshd
        .ssh_command_with(ep.port(), &sshd.path("host_key"), "true")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "closed_preauth");
    assert_eq!(v["outcome"], "closed");
    assert_eq!(v["details"]["closed_by"], "client");
    assert_eq!(v["details"]["login_grace_time_expired"], false);
}

#[test]
fn login_grace_time_expires() {
    if !privileged("login_grace_time_expires") {
        return;
    }
    let ep = Endpoint::new(111);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let _sshd = Sshd::start(
        "grace",
        ep,
        SshdOptions {
            config: vec!["LoginGraceTime 1".into()],
            ..Default::default()
        },
    );
    let mut client = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    client.write_all(b"SSH-2.0-sshtrace-test\r\n").unwrap();
    let port = client.local_addr().unwrap().port();
    let _ = read_until_closed(&mut client);

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == port);
    assert_eq!(v["cause"], "closed_preauth", "{v}");
    assert_eq!(v["details"]["closed_by"], "sshd");
    assert_eq!(v["details"]["login_grace_time_expired"], true);
}
