//! A routed path: `client` — `r1` [— `r2`] — `server`, network namespaces of the test's own
//! joined by veth pairs, the routers forwarding. What a client across a network looks like to
//! sshd, with the middleboxes that reset SSH sessions on the way: a router's REJECT, a
//! conntrack table that forgot an idle flow, a NAT that rewrites the TTL. Rules and sysctls
//! belong to their namespace and go with it on drop.
//!
//! Addresses: link k (0 joins the client to r1) is 10.254.N.4k/30, its end nearer the client
//! .4k+1, the other .4k+2. In every namespace the veth toward the server is `to-server`, the
//! one toward the client `to-client`.

use crate::{Endpoint, NetNs, SshdOptions};

pub struct RoutedPath {
    pub client: NetNs,
    /// `routers[0]` is next to the client.
    pub routers: Vec<NetNs>,
    pub server: NetNs,
    n: u8,
}

/// Which way the segments a rule matches travel.
#[derive(Clone, Copy, Debug)]
pub enum Toward {
    Server,
    Client,
}

impl RoutedPath {
    /// A path through `routers` routers (1 or 2) on 10.254.N.0/24.
    pub fn new(name: &str, n: u8, routers: usize) -> Self {
        assert!((1..=2).contains(&routers), "1 or 2 routers");
        let client = NetNs::new(&format!("{name}-client"));
        let routers: Vec<NetNs> = (1..=routers)
            .map(|r| NetNs::new(&format!("{name}-r{r}")))
            .collect();
        let server = NetNs::new(&format!("{name}-server"));
        let path = Self {
            client,
            routers,
            server,
            n,
        };
        let hops: Vec<&NetNs> = std::iter::once(&path.client)
            .chain(&path.routers)
            .chain(std::iter::once(&path.server))
            .collect();
        for (k, pair) in hops.windows(2).enumerate() {
            path.join(k, pair[0], pair[1]);
        }
        path.route();
        path
    }

    /// Link `k`: a veth pair from `near` (the client's side) to `far`.
    fn join(&self, k: usize, near: &NetNs, far: &NetNs) {
        let (near_addr, far_addr, far_ns) = (self.addr(k, 1), self.addr(k, 2), &far.name);
        exec_line(
            near,
            &format!("ip link add to-server type veth peer name to-client netns {far_ns}"),
        );
        exec_line(near, &format!("ip addr add {near_addr}/30 dev to-server"));
        exec_line(far, &format!("ip addr add {far_addr}/30 dev to-client"));
        exec_line(near, "ip link set to-server up");
        exec_line(far, "ip link set to-client up");
    }

    /// The ends route through their routers; each router forwards, and routes to the subnets
    /// beyond its neighbours.
    fn route(&self) {
        let last = self.routers.len();
        exec_line(
            &self.client,
            &format!("ip route add default via {}", self.addr(0, 2)),
        );
        exec_line(
            &self.server,
            &format!("ip route add default via {}", self.addr(last, 1)),
        );
        for (i, router) in self.routers.iter().enumerate() {
            exec_line(router, "sysctl -qw net.ipv4.ip_forward=1");
            if i > 0 {
                let (subnet, via) = (self.addr(0, 0), self.addr(i, 1));
                exec_line(router, &format!("ip route add {subnet}/30 via {via}"));
            }
            if i + 1 < last {
                let (subnet, via) = (self.addr(last, 0), self.addr(i + 1, 2));
                exec_line(router, &format!("ip route add {subnet}/30 via {via}"));
            }
        }
    }

    /// Address `end` (0: the subnet, 1: near the client, 2: far) of link `k`.
    fn addr(&self, k: usize, end: usize) -> String {
        format!("10.254.{}.{}", self.n, 4 * k + end)
    }

    pub fn server_addr(&self) -> String {
        self.addr(self.routers.len(), 2)
    }

    /// The server's address and port 22000+N, for its sshd.
    pub fn server_endpoint(&self) -> Endpoint {
        // Endpoint keeps a &'static str: a few bytes per test, leaked.
        Endpoint::at(self.n, self.server_addr().leak())
    }

    /// sshd in the server namespace, its clients in the client namespace, with `config`.
    pub fn sshd_options(&self, config: &[&str]) -> SshdOptions {
        SshdOptions {
            config: config.iter().map(ToString::to_string).collect(),
            netns: Some(self.server.name.clone()),
            client_netns: Some(self.client.name.clone()),
            ..Default::default()
        }
    }

    /// Router `r` answers SYNs to `port` with a reset (REJECT in FORWARD): the path refuses
    /// the connection.
    pub fn router_rejects_syn(&self, r: usize, port: u16) {
        exec_line(
            &self.routers[r],
            &format!("iptables -I FORWARD -p tcp --dport {port} --syn {REJECT_WITH_RESET}"),
        );
    }

    /// From now on router `r` answers every segment of `port`'s connections that travels
    /// `toward` with a reset to its sender, as a firewall whose rules changed mid-session.
    pub fn router_rejects(&self, r: usize, port: u16, toward: Toward) {
        let side = match toward {
            Toward::Server => "--dport",
            Toward::Client => "--sport",
        };
        exec_line(
            &self.routers[r],
            &format!("iptables -I FORWARD -p tcp {side} {port} {REJECT_WITH_RESET}"),
        );
    }

    /// Router `r` forgets an established flow idle for `seconds`, and rejects with a reset the
    /// segments of flows it does not know (INVALID: loose pick-up of mid-stream segments off),
    /// as a stateful firewall or NAT timing out an idle SSH session. Set before connecting:
    /// the timeout applies to a flow from its next segment.
    pub fn router_forgets_idle_flows(&self, r: usize, seconds: u64) {
        let router = &self.routers[r];
        // The rule first: it loads conntrack where nothing has yet (a fresh VM guest), and
        // with it the namespace's sysctls.
        exec_line(
            router,
            &format!(
                "iptables -A FORWARD -m conntrack --ctstate INVALID -p tcp {REJECT_WITH_RESET}"
            ),
        );
        exec_line(
            router,
            &format!("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established={seconds}"),
        );
        exec_line(router, "sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0");
    }

    /// Router `r` sets the TTL of everything it forwards or sends (its resets too), both ways,
    /// to 64 and masquerades the client toward the server: the server sees every segment, the
    /// client's and the router's own, with the same TTL, from the router's address; the client
    /// sees the server's segments and the router's alike, with TTL 64.
    pub fn router_rewrites_ttl_behind_nat(&self, r: usize) {
        let router = &self.routers[r];
        exec_line(
            router,
            "iptables -t mangle -A POSTROUTING -j TTL --ttl-set 64",
        );
        exec_line(
            router,
            "iptables -t nat -A POSTROUTING -o to-server -j MASQUERADE",
        );
    }

    /// The server host's own firewall answers with a reset the SYNs to `port` (`syn_only`),
    /// or every segment to it (INPUT REJECT).
    pub fn server_rejects(&self, port: u16, syn_only: bool) {
        let syn = if syn_only { "--syn" } else { "" };
        exec_line(
            &self.server,
            &format!("iptables -I INPUT -p tcp --dport {port} {syn} {REJECT_WITH_RESET}"),
        );
    }
}

/// The target of every rule here; REJECT with a reset needs `-p tcp` in the rule (nf_tables'
/// iptables refuses it otherwise).
const REJECT_WITH_RESET: &str = "-j REJECT --reject-with tcp-reset";

/// Runs `command` (words split at spaces, no quoting) in `ns`, asserting it succeeded.
fn exec_line(ns: &NetNs, command: &str) -> String {
    ns.exec(&command.split_whitespace().collect::<Vec<_>>())
}

/// Segments the REJECT rules of `ns`'s filter table answered, from iptables' counters.
pub fn rejected(ns: &NetNs) -> u64 {
    exec_line(ns, "iptables -vnxL")
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [packets, _bytes, "REJECT", ..] => packets.parse::<u64>().ok(),
                _ => None,
            },
        )
        .sum()
}

/// Bytes received and not yet read on `ns`'s established TCP connections to `port` (`ss`).
pub fn unread(ns: &NetNs, port: u16) -> u64 {
    exec_line(ns, &format!("ss -tnH state established dport = :{port}"))
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `ns`'s TCP connections (any state but listening and closed) on local port `port` (`ss`).
pub fn connections(ns: &NetNs, port: u16) -> usize {
    exec_line(ns, &format!("ss -tnH state connected sport = :{port}"))
        .lines()
        .count()
}

/// A reset the path sent after the session was idle: from a box 1 hop closer than the peer, at
/// least `forget_after` seconds after the peer's last segment, and a hint naming `keepalive`.
pub fn assert_idle_flow_reset(v: &serde_json::Value, forget_after: u64, keepalive: &str) {
    assert_eq!(v["details"]["reset_from"], "path", "{v:#}");
    assert_eq!(v["details"]["hops_closer"], 1, "{v:#}");
    let idle = v["details"]["idle_s"].as_f64();
    assert!(idle.is_some_and(|s| s >= forget_after as f64), "{v:#}");
    let hint = v["hint"].as_str().unwrap_or("");
    assert!(hint.contains(keepalive), "{v:#}");
}

/// Waits until the session's ssh ends, and checks that a reset ended it: read first,
/// "Connection reset by peer"; written first, "Broken pipe".
pub fn wait_until_reset(client: &mut crate::KillOnDrop) {
    let status = crate::wait_for(
        "the client to end",
        std::time::Duration::from_secs(15),
        || client.0.try_wait().unwrap(),
    );
    let mut stderr = String::new();
    use std::io::Read as _;
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
}
