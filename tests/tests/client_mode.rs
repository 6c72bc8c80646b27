//! `sshtrace client`: who reset this host's own `ssh` client. The real ssh runs in the `client`
//! namespace of a routed path (`client` — `r1` [— `r2`] — `server`, tests/src/path.rs) to a
//! real sshd in `server`; sshtrace runs on the host in client mode. The cases of reset_from.rs
//! seen from the other end: refusals by a router and by the server host, resets mid-session by
//! a router's REJECT, by a conntrack table that forgot the idle session, by the server host's
//! own firewall, behind a NAT that rewrites TTLs; and the client killed with data unread. A
//! refusal is told apart by comparing it with what the path looked like on an earlier
//! successful connection to the same address (the baseline); without one nothing decides.

use std::{process::Stdio, time::Duration};

use sshtrace_tests::{
    kernel::{self, Evidence},
    kill,
    path::{
        assert_idle_flow_reset, connections, rejected, unread, wait_until_reset, RoutedPath, Toward,
    },
    patient, privileged, wait_for, KillOnDrop, SessionOnDrop, Sshd, Tracer,
};

/// The path through one router, sshtrace in client mode, then sshd in the server namespace.
fn client_side(name: &str, n: u8) -> (RoutedPath, Tracer, Sshd) {
    client_side_of(RoutedPath::new(name, n, 1), name)
}

/// sshtrace in client mode, then sshd in `path`'s server namespace (the path made and its
/// middleboxes set up before either starts).
fn client_side_of(path: RoutedPath, name: &str) -> (RoutedPath, Tracer, Sshd) {
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

/// Router `r` of a path through `routers` routers refuses the SYN; the client's verdict.
fn router_refusal(
    name: &str,
    n: u8,
    (routers, r): (usize, usize),
    with_baseline: bool,
) -> serde_json::Value {
    let (path, tracer, sshd) = client_side_of(RoutedPath::new(name, n, routers), name);
    if with_baseline {
        baseline(&sshd);
    }
    path.router_rejects_syn(r, sshd.endpoint.port());
    let pid = refused_client(&sshd);
    assert!(rejected(&path.routers[r]) > 0);

    let v = client_verdict(&tracer, pid);
    assert_eq!(v["cause"], "connect_refused", "{v:#}");
    v
}

/// The server's segments arrive one hop down (63), r1's reset with the TTL it started with.
#[test]
fn router_refusal_after_a_baseline_is_from_the_path() {
    if !privileged("router_refusal_after_a_baseline_is_from_the_path") {
        return;
    }
    let v = router_refusal("cl-router", 203, (1, 0), true);
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
    assert_eq!(v["details"]["hops_closer"], 1, "{v:#}");
}

/// r2, next to the server, refuses: the server's segments pass r2 and r1 (TTL 62), r2's reset
/// r1 only (63): one hop closer than the server.
#[test]
fn refusal_by_the_router_next_to_the_server_is_one_hop_closer() {
    if !privileged("refusal_by_the_router_next_to_the_server_is_one_hop_closer") {
        return;
    }
    let v = router_refusal("cl-router2", 208, (2, 1), true);
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
    assert_eq!(v["details"]["hops_closer"], 1, "{v:#}");
}

#[test]
fn router_refusal_without_a_baseline_is_undetermined() {
    if !privileged("router_refusal_without_a_baseline_is_undetermined") {
        return;
    }
    let v = router_refusal("cl-nobase", 204, (1, 0), false);
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

/// A logged-in ssh (`sleep`) with the client options `options`, its standard error piped; and
/// its session's processes on the server.
fn session(sshd: &Sshd, options: &[&str]) -> (KillOnDrop, SessionOnDrop) {
    let client = KillOnDrop(
        sshd.ssh_command_with_options(options, "sleep 60")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    (client, SessionOnDrop::wait(sshd.pid()))
}

/// The verdict about a session's ssh a reset ended.
fn reset_verdict(tracer: &Tracer, client: &KillOnDrop) -> serde_json::Value {
    let v = client_verdict(tracer, client.pid());
    assert_eq!(v["cause"], "peer_reset", "{v:#}");
    v
}

/// r1 starts rejecting the client's segments mid-session: the client's keepalive is answered
/// with r1's reset, one hop nearer than the server.
#[test]
fn router_reset_mid_session_is_from_the_path() {
    if !privileged("router_reset_mid_session_is_from_the_path") {
        return;
    }
    let (path, tracer, sshd) = client_side("cl-midsession", 206);
    let (mut client, _session) = session(&sshd, &["ServerAliveInterval=1"]);
    path.router_rejects(0, sshd.endpoint.port(), Toward::Server);
    wait_until_reset(&mut client);
    assert!(rejected(&path.routers[0]) > 0);

    let v = reset_verdict(&tracer, &client);
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
    assert_eq!(v["details"]["hops_closer"], 1, "{v:#}");
}

/// r1's conntrack forgets the idle session; the client's keepalive after the timeout is
/// INVALID there and answered with r1's reset. The server stays silent (no ClientAlive).
#[test]
fn conntrack_forgetting_an_idle_session_is_from_the_path() {
    if !privileged("conntrack_forgetting_an_idle_session_is_from_the_path") {
        return;
    }
    let path = RoutedPath::new("cl-conntrack", 209, 1);
    // Stretched with the other deadlines under emulation, where a login's segments can be
    // seconds apart.
    let forget_after = patient(Duration::from_secs(2)).as_secs();
    path.router_forgets_idle_flows(0, forget_after);
    let (path, tracer, sshd) = client_side_of(path, "cl-conntrack");
    let keepalive = format!("ServerAliveInterval={}", 2 * forget_after);
    let (mut client, _session) = session(&sshd, &[&keepalive]);
    wait_until_reset(&mut client);
    assert!(rejected(&path.routers[0]) > 0);

    let v = reset_verdict(&tracer, &client);
    assert_idle_flow_reset(&v, forget_after, "ServerAliveInterval");
}

/// Behind r1's NAT, which sets the TTL of everything it forwards and sends to 64, r1's reset
/// mid-session looks like the server's own segments: nothing decides who sent it.
#[test]
fn reset_behind_ttl_rewriting_nat_is_undetermined() {
    if !privileged("reset_behind_ttl_rewriting_nat_is_undetermined") {
        return;
    }
    let path = RoutedPath::new("cl-nat", 248, 1);
    path.router_rewrites_ttl_behind_nat(0);
    let (path, tracer, sshd) = client_side_of(path, "cl-nat");
    let (mut client, _session) = session(&sshd, &["ServerAliveInterval=1"]);
    path.router_rejects(0, sshd.endpoint.port(), Toward::Server);
    wait_until_reset(&mut client);
    assert!(rejected(&path.routers[0]) > 0);

    let v = reset_verdict(&tracer, &client);
    // What the client saw: the server's segments and r1's reset alike, TTL 64.
    assert_eq!(v["details"]["peer"]["ttl"], 64, "{v:#}");
    assert_eq!(v["details"]["rst"]["ttl"], 64, "{v:#}");
    assert_eq!(v["details"]["reset_from"], "undetermined", "{v:#}");
}

/// The server host's own INPUT REJECT mid-session: the client's keepalive is answered by the
/// server's kernel, from the server's distance.
#[test]
fn server_host_reset_mid_session_is_from_the_peer_host() {
    if !privileged("server_host_reset_mid_session_is_from_the_peer_host") {
        return;
    }
    let (path, tracer, sshd) = client_side("cl-serverrst", 249);
    let (mut client, _session) = session(&sshd, &["ServerAliveInterval=1"]);
    path.server_rejects(sshd.endpoint.port(), false);
    wait_until_reset(&mut client);
    assert!(rejected(&path.server) > 0);

    let v = reset_verdict(&tracer, &client);
    assert_eq!(v["details"]["reset_from"], "peer_host", "{v:#}");
}

/// ssh killed (SIGKILL) with data it has not read: its own kernel resets the connection.
/// A running ssh reads all the server may send before its channel window is spent (2 MiB)
/// into its own buffers, leaving the socket empty; a stopped one (SIGSTOP, a suspended ssh)
/// reads nothing, so the server starts streaming only once ssh is stopped.
#[test]
fn client_killed_with_unread_data_aborted() {
    if !privileged("client_killed_with_unread_data_aborted") {
        return;
    }
    let (path, tracer, sshd) = client_side("cl-killed", 207);
    let port = sshd.endpoint.port();
    let go = sshd.path("go");
    let stream_on_go = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; cat /dev/zero",
        go.display()
    );
    let client = KillOnDrop(
        sshd.ssh_command(&stream_on_go)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _session = SessionOnDrop::wait(sshd.pid());
    kill(client.pid(), libc::SIGSTOP);
    std::fs::write(&go, "").unwrap();
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
    let reason = if kernel::expect(
        "client_killed_with_unread_data_aborted",
        Evidence::ResetReasons,
        "client_aborted with reason unknown",
    ) {
        "TCP_ABORT_ON_CLOSE"
    } else {
        "unknown"
    };
    assert_eq!(v["details"]["reason"], reason, "{v:#}");
}

/// The server side's filters mean the other end in client mode: `--port` the server's port,
/// `--pid` the ssh process (or what ran it). A refused ssh on loopback, seen by one sshtrace
/// without filters, one filtering it in and one filtering it out; then a refused scp, whose
/// ssh is followed and named with its parent.
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
    // scp runs ssh: the verdict names the ssh and, as its parent, the scp.
    let out = std::process::Command::new("scp")
        .args(["-o", "BatchMode=yes", "-P", &port.to_string()])
        .arg(format!("{addr}:/nothing"))
        .arg("/dev/null")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let v = all.record_where("scp's refusal", |v| {
        refused(v)
            && v["process"]["parent"]["cmdline"]
                .as_str()
                .is_some_and(|c| c.starts_with("scp "))
    });
    assert_eq!(v["process"]["comm"], "ssh", "{v:#}");
    // Both saw it: the one filtering it out has judged it too, and shows nothing of it.
    other_port.stop();
    assert!(
        !other_port.records().iter().any(refused),
        "{:?}",
        other_port.records()
    );
}
