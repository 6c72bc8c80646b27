//! `closed_preauth`: orderly closes before authentication: a client whose key is refused
//! gives up (the client closes first), LoginGraceTime expires and MaxAuthTries is exceeded (sshd
//! closes first). On OpenSSH 9.2 and 10.0 (where `sshd-session` takes the LoginGraceTime alarm
//! and `sshd-auth` counts the failures).

use std::{io::Write, net::TcpStream};

use sshtrace_tests::{
    privileged, sshd::read_until_closed, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer,
};

fn options(openssh: OpenSsh, config: &[&str]) -> SshdOptions {
    SshdOptions {
        config: config.iter().map(|line| (*line).to_owned()).collect(),
        openssh,
        ..Default::default()
    }
}

fn refused_key_client_gives_up(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(&openssh.name("badkey"), ep, options(openssh, &[]));
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
fn refused_key_client_gives_up_openssh_9_2() {
    if privileged("refused_key_client_gives_up_openssh_9_2") {
        refused_key_client_gives_up(OpenSsh::V9_2Host, Endpoint::new(110));
    }
}

#[test]
fn refused_key_client_gives_up_openssh_10() {
    if privileged("refused_key_client_gives_up_openssh_10") {
        refused_key_client_gives_up(OpenSsh::V10Container, Endpoint::new(112));
    }
}

fn login_grace_time_expires(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let _sshd = Sshd::start(
        &openssh.name("grace"),
        ep,
        options(openssh, &["LoginGraceTime 1"]),
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

#[test]
fn login_grace_time_expires_openssh_9_2() {
    if privileged("login_grace_time_expires_openssh_9_2") {
        login_grace_time_expires(OpenSsh::V9_2Host, Endpoint::new(111));
    }
}

#[test]
fn login_grace_time_expires_openssh_10() {
    if privileged("login_grace_time_expires_openssh_10") {
        login_grace_time_expires(OpenSsh::V10Container, Endpoint::new(113));
    }
}

/// MaxAuthTries 1 and a refused key: sshd disconnects the client ("Too many authentication
/// failures"), which then closes; sshd's processes exit 255 (10.0's `sshd-session`, 5).
fn max_auth_tries_exceeded(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        &openssh.name("maxauth"),
        ep,
        options(openssh, &["MaxAuthTries 1"]),
    );
    let out = sshd
        .ssh_command_with(ep.port(), &sshd.path("host_key"), "true")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Too many authentication failures"),
        "{out:?}"
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] != "not_listening");
    assert_eq!(v["cause"], "closed_preauth", "{v}");
    assert_eq!(v["outcome"], "closed", "{v}");
    assert_eq!(v["details"]["login_grace_time_expired"], false, "{v}");
    // Who sent the first FIN races (the client closes as the disconnect arrives): sshd's own
    // words say who ended it.
    let said = |l: &serde_json::Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum authentication attempts exceeded"))
    };
    assert!(
        v["sshd_log"].as_array().into_iter().flatten().any(said),
        "{v}"
    );
}

#[test]
fn max_auth_tries_exceeded_openssh_9_2() {
    if privileged("max_auth_tries_exceeded_openssh_9_2") {
        max_auth_tries_exceeded(OpenSsh::V9_2Host, Endpoint::new(114));
    }
}

#[test]
fn max_auth_tries_exceeded_openssh_10() {
    if privileged("max_auth_tries_exceeded_openssh_10") {
        max_auth_tries_exceeded(OpenSsh::V10Container, Endpoint::new(115));
    }
}
