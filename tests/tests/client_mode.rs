//! `sshtrace client`: who reset this host's own `ssh` client. The real ssh runs in the `client`
//! namespace of a routed path (`client` — `r1` — `server`, tests/src/path.rs) to a real sshd
//! in `server`; sshtrace runs on the host in client mode. Refusals by the router and by the
//! server host, a router's reset mid-session, and the client killed with data unread. A
//! refusal is told apart by comparing it with what the path looked like on an earlier
//! successful connection to the same address (the baseline); without one nothing decides.

use std::{io::Read, process::Stdio, time::Duration};

use sshtrace_tests::{
    kill,
    path::{connections, rejected, unread, RoutedPath, Toward},
    privileged, wait_for, KillOnDrop, SessionOnDrop, Sshd, Tracer,
};

/// The path, sshtrace in client mode, then sshd in the server namespace.
fn client_side(name: &str, n: u8) -> (RoutedPath, Tracer, Sshd) {
    let path = RoutedPath::new(name, n, 1);
    let tracer = Tracer::start_client(&[]);
    let sshd = Sshd::start(name, path.server_endpoint(), path.sshd_options(&[]));
    (path, tracer, sshd)
}

/// One login that succeeds.
fn baseline(sshd: &Sshd) {
    let out = sshd.ssh("true");
    assert!(out.status.success(), "baseline login: {out:?}");
}

/// An ssh client whose connection is refused; its pid.
fn refused_client(sshd: &Sshd) -> u32 {
    let client = sshd
        .ssh_command("true")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = client.id();
    let out = client.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{out:?}"
    );
    pid
}

/// The verdict about the ssh client `pid`.
fn client_verdict(tracer: &Tracer, pid: u32) -> serde_json::Value {
    let v = tracer.record_where(&format!("verdict about ssh {pid}"), |v| {
        v["process"]["pid"] == pid
    });
    assert_eq!(v["side"], "client", "{v:#}");
    assert_eq!(v["process"]["comm"], "ssh", "{v:#}");
    v
}

fn router_refusal(name: &str, n: u8, with_baseline: bool) -> serde_json::Value {
    let (path, tracer, sshd) = client_side(name, n);
    if with_baseline {
        baseline(&sshd);
    }
    path.router_rejects_syn(0, sshd.endpoint.port());
    let pid = refused_client(&sshd);
    assert!(rejected(&path.routers[0]) > 0);

    let v = client_verdict(&tracer, pid);
    assert_eq!(v["cause"], "connect_refused", "{v:#}");
    v
}

#[test]
fn router_refusal_after_a_baseline_is_from_the_path() {
    if !privileged("router_refusal_after_a_baseline_is_from_the_path") {
        return;
    }
    let v = router_refusal("cl-router", 203, true);
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
}

#[test]
fn router_refusal_without_a_baseline_is_undetermined() {
    if !privileged("router_refusal_without_a_baseline_is_undetermined") {
        return;
    }
    let v = router_refusal("cl-nobase", 204, false);
    assert_eq!(v["details"]["reset_from"], "undetermined", "{v:#}");
}

#[test]
fn server_host_refusal_after_a_baseline_is_from_the_peer_host() {
    if !privileged("server_host_refusal_after_a_baseline_is_from_the_peer_host") {
        return;
    }
    let (path, tracer, sshd) = client_side("cl-serverfw", 205);
    baseline(&sshd);
    path.server_rejects(sshd.endpoint.port(), true);
    let pid = refused_client(&sshd);
    assert!(rejected(&path.server) > 0);

    let v = client_verdict(&tracer, pid);
    assert_eq!(v["cause"], "connect_refused", "{v:#}");
    assert_eq!(v["details"]["reset_from"], "peer_host", "{v:#}");
}

/// r1 starts rejecting the client's segments mid-session: the client's keepalive is answered
/// with r1's reset, one hop nearer than the server.
#[test]
fn router_reset_mid_session_is_from_the_path() {
    if !privileged("router_reset_mid_session_is_from_the_path") {
        return;
    }
    let (path, tracer, sshd) = client_side("cl-midsession", 206);
    let mut client = KillOnDrop(
        sshd.ssh_command_with_options(&["ServerAliveInterval=1"], "sleep 60")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _session = SessionOnDrop::wait(sshd.pid());
    path.router_rejects(0, sshd.endpoint.port(), Toward::Server);
    let status = wait_for("the client to end", Duration::from_secs(15), || {
        client.0.try_wait().unwrap()
    });
    let mut stderr = String::new();
    client
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("reset by peer") || stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert!(rejected(&path.routers[0]) > 0);

    let v = client_verdict(&tracer, client.pid());
    assert_eq!(v["cause"], "peer_reset", "{v:#}");
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
    assert_eq!(v["details"]["hops_closer"], 1, "{v:#}");
}

/// ssh killed (SIGKILL) with data it has not read: its own kernel resets the connection.
#[test]
fn client_killed_with_unread_data_aborted() {
    if !privileged("client_killed_with_unread_data_aborted") {
        return;
    }
    let (path, tracer, sshd) = client_side("cl-killed", 207);
    let port = sshd.endpoint.port();
    // ssh's standard output is a pipe nobody reads: once it is full, ssh stops reading and
    // the server's output waits in the socket.
    let client = KillOnDrop(
        sshd.ssh_command("cat /dev/zero")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for("data unread by ssh", Duration::from_secs(15), || {
        (unread(&path.client, port) > 0).then_some(())
    });
    kill(client.pid(), libc::SIGKILL);
    // The client's reset reached the server: sshd's connection is gone.
    wait_for(
        "the server's connection to end",
        Duration::from_secs(15),
        || (connections(&path.server, port) == 0).then_some(()),
    );

    let v = client_verdict(&tracer, client.pid());
    assert_eq!(v["cause"], "client_aborted", "{v:#}");
}

/// The server side's filters mean the other end in client mode: `--port` the server's port,
/// `--pid` the ssh process (or what ran it). A refused ssh on loopback, seen by one sshtrace
/// without filters, one filtering it in and one filtering it out.
#[test]
fn filters_name_the_server_port_and_the_ssh_process() {
    if !privileged("filters_name_the_server_port_and_the_ssh_process") {
        return;
    }
    // Nothing listens on 127.0.0.219:22219 (no other test uses 219).
    let (addr, port) = ("127.0.0.219", 22219u16);
    let all = Tracer::start_client(&[]);
    let same_port = Tracer::start_client(&["--port", &port.to_string()]);
    let mut other_port = Tracer::start_client(&["--port", "2"]);
    let out = std::process::Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-p", &port.to_string(), addr, "true"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{out:?}"
    );
    let refused =
        |v: &serde_json::Value| v["cause"] == "connect_refused" && v["conn"]["remote_port"] == port;
    let v = all.record_where("the refusal, unfiltered", refused);
    assert_eq!(v["side"], "client", "{v:#}");
    same_port.record_where("the refusal, --port of the server", refused);
    // Both saw it: the one filtering it out has judged it too, and shows nothing of it.
    other_port.stop();
    assert!(
        !other_port.records().iter().any(refused),
        "{:?}",
        other_port.records()
    );
}
