//! Who sent the reset a server received: the client's host, or a box on the path. sshd runs in
//! the `server` namespace of a routed path (`client` — `r1` [— `r2`] — `server`,
//! tests/src/path.rs), the real ssh client in `client`, sshtrace on the host (it follows sshd
//! in every namespace). Each reset is provoked as in the field: a router's REJECT changed
//! mid-session, a conntrack table that forgot an idle flow, a client aborting, a NAT that
//! rewrites TTLs, the server's own firewall. Before its verdict each test checks that the
//! reset it provoked was really sent (iptables' counters, the client's own error).

use std::{io::Read, net::TcpStream, process::Stdio, time::Duration};

use sshtrace_tests::{
    path::{assert_idle_flow_reset, connections, rejected, wait_until_reset, RoutedPath, Toward},
    patient, privileged, wait_for, KillOnDrop, NetNs, SessionOnDrop, Sshd, Tracer,
};

/// sshd sends a keepalive after a second of silence: the server has something to send.
const SERVER_SENDS: &str = "ClientAliveInterval 1";

/// A logged-in session (`sleep`) from the client namespace, idle.
fn session(sshd: &Sshd) -> (KillOnDrop, SessionOnDrop) {
    let client = KillOnDrop(sshd.ssh_command("sleep 60").spawn().unwrap());
    (client, SessionOnDrop::wait(sshd.pid()))
}

/// Waits until the REJECT rules of `ns` answered a segment.
fn wait_until_rejected(ns: &NetNs) {
    wait_for("the REJECT rule to answer", Duration::from_secs(15), || {
        (rejected(ns) > 0).then_some(())
    });
}

/// The session's verdict, as the server saw it.
fn server_verdict(tracer: &Tracer, port: u16) -> serde_json::Value {
    let v = tracer.verdict_for(port, |_| true);
    assert_eq!(v["side"], "server", "{v:#}");
    v
}

/// A mid-session REJECT on router `r` of the path's segments toward the client: the server's
/// keepalive is answered with the router's reset, `hops_closer` hops nearer than the client.
fn router_reject_mid_session(name: &str, n: u8, routers: usize, r: usize, hops_closer: u64) {
    let path = RoutedPath::new(name, n, routers);
    let ep = path.server_endpoint();
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(name, ep, path.sshd_options(&[SERVER_SENDS]));
    let _session = session(&sshd);
    path.router_rejects(r, ep.port(), Toward::Client);
    wait_until_rejected(&path.routers[r]);

    let v = server_verdict(&tracer, ep.port());
    assert_eq!(v["cause"], "peer_reset", "{v:#}");
    assert_eq!(v["outcome"], "reset_received", "{v:#}");
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
    assert_eq!(v["details"]["hops_closer"], hops_closer, "{v:#}");
}

#[test]
fn router_reject_mid_session_is_from_the_path() {
    if !privileged("router_reject_mid_session_is_from_the_path") {
        return;
    }
    router_reject_mid_session("rst-router", 212, 1, 0, 1);
}

#[test]
fn reject_by_the_router_next_to_the_server_is_two_hops_closer() {
    if !privileged("reject_by_the_router_next_to_the_server_is_two_hops_closer") {
        return;
    }
    router_reject_mid_session("rst-router2", 213, 2, 1, 2);
}

/// r1's conntrack forgets the idle session; sshd's keepalive after the timeout is INVALID
/// there and answered with r1's reset.
#[test]
fn conntrack_forgetting_an_idle_session_is_from_the_path() {
    if !privileged("conntrack_forgetting_an_idle_session_is_from_the_path") {
        return;
    }
    let path = RoutedPath::new("rst-conntrack", 214, 1);
    // Stretched with the other deadlines under emulation, where a login's segments can be
    // seconds apart.
    let forget_after = patient(Duration::from_secs(2)).as_secs();
    path.router_forgets_idle_flows(0, forget_after);
    let ep = path.server_endpoint();
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let keepalive = format!("ClientAliveInterval {}", 2 * forget_after);
    let sshd = Sshd::start("rst-conntrack", ep, path.sshd_options(&[&keepalive]));
    let _session = session(&sshd);
    wait_until_rejected(&path.routers[0]);

    let v = server_verdict(&tracer, ep.port());
    assert_eq!(v["cause"], "peer_reset", "{v:#}");
    assert_eq!(v["outcome"], "reset_received", "{v:#}");
    assert_idle_flow_reset(&v, forget_after, "ClientAliveInterval");
}

/// A client in the client namespace reads the banner and aborts (SO_LINGER 0): the reset
/// comes from the client's host, through the router.
#[test]
fn client_abort_is_from_the_peer_host() {
    if !privileged("client_abort_is_from_the_peer_host") {
        return;
    }
    let path = RoutedPath::new("rst-abort", 215, 1);
    let ep = path.server_endpoint();
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let _sshd = Sshd::start("rst-abort", ep, path.sshd_options(&[]));
    let client_port = path.client.run_in(|| {
        let mut client = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
        let mut banner = [0u8; 64];
        let n = client.read(&mut banner).unwrap();
        assert!(banner[..n].starts_with(b"SSH-2.0-"));
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        client.local_addr().unwrap().port()
    });
    // The client's reset reached the server: sshd's connection is gone.
    wait_for(
        "the server's connection to end",
        Duration::from_secs(15),
        || (connections(&path.server, ep.port()) == 0).then_some(()),
    );

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == client_port);
    assert_eq!(v["cause"], "peer_reset", "{v:#}");
    assert_eq!(v["outcome"], "reset_received", "{v:#}");
    assert_eq!(v["details"]["reset_from"], "peer_host", "{v:#}");
}

/// Behind a NAT that sets every TTL to 64, the router's reset looks like the client's own:
/// nothing decides who sent it.
#[test]
fn reset_behind_ttl_rewriting_nat_is_undetermined() {
    if !privileged("reset_behind_ttl_rewriting_nat_is_undetermined") {
        return;
    }
    let path = RoutedPath::new("rst-nat", 216, 1);
    path.router_rewrites_ttl_behind_nat(0);
    let ep = path.server_endpoint();
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("rst-nat", ep, path.sshd_options(&[SERVER_SENDS]));
    let _session = session(&sshd);
    path.router_rejects(0, ep.port(), Toward::Client);
    wait_until_rejected(&path.routers[0]);

    let v = server_verdict(&tracer, ep.port());
    assert_eq!(v["cause"], "peer_reset", "{v:#}");
    assert_eq!(
        v["conn"]["remote_addr"], "10.254.216.5",
        "masqueraded: {v:#}"
    );
    assert_eq!(v["details"]["reset_from"], "undetermined", "{v:#}");
}

/// The server's own INPUT REJECT of the client's segments mid-session: the server's firewall,
/// named by its namespace. The client's keepalive meets the REJECT and the client is reset;
/// sshd's keepalives go unanswered (the client's resets are rejected too) until sshd gives up
/// and closes, and the kernel gives up on the orphaned socket after one more retransmission
/// (`tcp_orphan_retries=1` in the server's namespace: the default takes minutes).
#[test]
fn server_firewall_mid_session_names_its_namespace() {
    if !privileged("server_firewall_mid_session_names_its_namespace") {
        return;
    }
    let path = RoutedPath::new("rst-serverfw", 217, 1);
    path.server
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_orphan_retries=1"]);
    let ep = path.server_endpoint();
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "rst-serverfw",
        ep,
        path.sshd_options(&[SERVER_SENDS, "ClientAliveCountMax 1"]),
    );
    let mut client = KillOnDrop(
        sshd.ssh_command_with_options(&["ServerAliveInterval=1"], "sleep 60")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _session = SessionOnDrop::wait(sshd.pid());
    path.server_rejects(ep.port(), false);
    // The server host's reset ends the client.
    wait_until_reset(&mut client);
    assert!(rejected(&path.server) > 0);
    wait_for(
        "the server's connection to end",
        Duration::from_secs(30),
        || (connections(&path.server, ep.port()) == 0).then_some(()),
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "firewall");
    assert_eq!(v["side"], "server", "{v:#}");
    assert_eq!(v["details"]["netns"]["name"], path.server.name, "{v:#}");
}

/// r1 refuses the client's SYN: sshtrace on this host sees the drop in r1's namespace, and
/// names it — not "this host's firewall".
#[test]
fn router_firewall_refusal_names_the_router_namespace() {
    if !privileged("router_firewall_refusal_names_the_router_namespace") {
        return;
    }
    let path = RoutedPath::new("rst-routerfw", 218, 1);
    let ep = path.server_endpoint();
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("rst-routerfw", ep, path.sshd_options(&[]));
    path.router_rejects_syn(0, ep.port());
    let out = sshd.ssh("true");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{out:?}"
    );
    assert!(rejected(&path.routers[0]) > 0);

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "firewall");
    assert_eq!(v["details"]["netns"]["name"], path.routers[0].name, "{v:#}");
    let summary = v["summary"].as_str().unwrap_or("");
    assert!(!summary.contains("this host's firewall"), "{v:#}");
}
