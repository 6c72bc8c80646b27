//! Hostile hosts, floods: what a tenant can send in bulk — packets at a firewall, signals to
//! its own session, connections and refusals from 100,000 addresses — must not stop, bloat or
//! blind sshtrace. Each attack asserts that a genuine crash is still judged, that peak memory
//! stays bounded, that SIGTERM ends sshtrace promptly with its summary, and that what was not
//! kept is counted. Also: after attaching, sshtrace holds only the capabilities it needs.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sshtrace_tests::{
    hostile::{
        assert_peak_rss_bounded, crash_is_still_judged, crash_is_still_judged_in_file,
        stop_with_sigterm,
    },
    privileged,
    segment::{RawSender, SYN},
    wait_for, Endpoint, NetNs, Sshd, SshdOptions, Tracer, User,
};

/// CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_BPF: what sshtrace keeps.
const KEPT_CAPABILITIES: u64 = (1 << 2) | (1 << 19) | (1 << 21) | (1 << 39);

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

#[test]
fn capabilities_are_dropped_once_attached() {
    if !privileged("capabilities_are_dropped_once_attached") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let mut tracer = Tracer::start(&["--port", "22240"]);
    // Capabilities are per thread: every thread of the process, not only the main one.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", tracer.pid())).unwrap();
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
            line.trim().to_owned()
        };
        for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
            let caps = u64::from_str_radix(&field(set), 16).unwrap();
            assert_eq!(
                caps & !KEPT_CAPABILITIES,
                0,
                "{} {set} {caps:x}",
                field("Name:")
            );
        }
        assert_eq!(field("NoNewPrivs:"), "1", "{}", field("Name:"));
    }
    stop_with_sigterm(&mut tracer);
}

/// Sends SYNs from ever new source ports to `to` for `seconds`, from inside `ns`; returns how
/// many were sent.
fn syn_flood(ns: &str, to: SocketAddrV4, seconds: u64) -> u64 {
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    thread::spawn(move || {
        // SAFETY: setns on a namespace file we opened; it changes only this thread.
        let entered = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0);
        let sender = RawSender::new(Ipv4Addr::LOCALHOST);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            let port = 1024 + (sent % 60_000) as u16;
            sender.send(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), to, SYN, b"");
            sent += 1;
        }
        sent
    })
    .join()
    .unwrap()
}

/// A 30 s SYN flood at a DROP rule on a tracked port: bounded records, every drop counted.
#[test]
fn syn_flood_at_a_drop_rule() {
    if !privileged("syn_flood_at_a_drop_rule") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let (flooded, crashing) = (Endpoint::new(241), Endpoint::new(242));
    let ns = NetNs::new("synflood");
    let port = flooded.port().to_string();
    let mut tracer = Tracer::start(&["--port", &port, "--port", &crashing.port().to_string()]);
    ns.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &port, "--syn", "-j", "DROP",
    ]);
    let target = SocketAddrV4::new(Ipv4Addr::new(127, 0, 241, 1), flooded.port());
    let flood = {
        let ns_name = ns.name.clone();
        thread::spawn(move || syn_flood(&ns_name, target, 30))
    };
    thread::sleep(Duration::from_secs(2));
    crash_is_still_judged(&tracer, "synflood-crash", crashing);
    let sent = flood.join().unwrap();
    // The last records settle (a dropped SYN waits for its retransmission).
    thread::sleep(Duration::from_secs(2));
    assert_peak_rss_bounded(&tracer);
    let summary = stop_with_sigterm(&mut tracer);
    let judged: u64 = tracer
        .verdicts(flooded.port())
        .iter()
        .filter(|v| v["cause"] == "firewall")
        .map(|v| v["details"]["dropped_segments"].as_u64().unwrap())
        .sum();
    let held_back = summary["not_kept"]["firewall_drops_held_back"]
        .as_u64()
        .unwrap();
    assert_eq!(summary["lost_kernel_events"], 0, "{summary}");
    assert_eq!(
        judged + held_back,
        sent,
        "every dropped SYN is counted: {summary}"
    );
}

/// 100,000 signals from a user to their own session process: the latest are kept, the rest
/// counted, and the session's end still gets its verdict.
#[test]
fn signal_flood_to_a_users_own_session() {
    if !privileged("signal_flood_to_a_users_own_session") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(243);
    let user = User::new("sigflood");
    let mut tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("sigflood", ep, SshdOptions::default());
    let mut client = sshd
        .ssh_command_as(&user.name, ep.port(), &sshd.path("client_key"), "sleep 60")
        .spawn()
        .unwrap();
    let session = users_session_process(&sshd, &user);
    // bash's own kill: 100,000 signals in a fraction of a second, from the user's uid.
    let flood = Command::new("setpriv")
        .args([
            "--reuid",
            &user.name,
            "--regid",
            &user.name,
            "--clear-groups",
        ])
        .args(["/bin/bash", "-c"])
        .arg(format!(
            "for ((i=0;i<100000;i++)); do kill -PIPE {session}; done"
        ))
        .status()
        .unwrap();
    assert!(flood.success(), "the user's signal loop failed");
    crash_is_still_judged(&tracer, "sigflood-crash", Endpoint::new(244));
    sshtrace_tests::kill(session, libc::SIGKILL);
    let _ = client.wait();
    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_killed");
    assert_eq!(v["details"]["signal"], "SIGKILL", "{v}");
    // The process the user may signal is the one that serves them, after authentication.
    assert_eq!(v["sshd"]["role"], "user", "{v}");
    assert_peak_rss_bounded(&tracer);
    let summary = stop_with_sigterm(&mut tracer);
    let lost = summary["lost_kernel_events"].as_u64().unwrap();
    let not_kept = summary["not_kept"]["signals"].as_u64().unwrap();
    assert!(
        not_kept + lost >= 100_000 - 32,
        "the signals not kept are counted: {summary}"
    );
    // And in-band, as they happened: a loss record carries the count.
    assert!(
        tracer
            .records()
            .iter()
            .any(|r| r["type"] == "loss" && r["not_kept"]["signals"].as_u64() > Some(0)),
        "no loss record counts the signals not kept"
    );
}

/// The session's sshd process that runs as `user` (`sshd: USER@notty`): the one the user may
/// signal.
fn users_session_process(sshd: &Sshd, user: &User) -> u32 {
    let uid = String::from_utf8(
        Command::new("id")
            .args(["-u", &user.name])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // Once the session's command runs: until its exec, the forked child is an `sshd` of the
    // user's too, with SIGPIPE back at its default (the flood would kill it).
    wait_for(
        "the user's session process",
        Duration::from_secs(30),
        || {
            let tree = sshtrace_tests::process_tree(sshd.pid());
            let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm"));
            if !tree
                .iter()
                .any(|&p| comm(p).is_ok_and(|c| c.trim() == "sleep"))
            {
                return None;
            }
            tree.into_iter().find(|&p| {
                comm(p).is_ok_and(|c| c.trim() == "sshd")
                    && status_field(p, "Uid:").split_whitespace().next() == Some(uid.trim())
            })
        },
    )
}

/// Connects from `addresses` distinct source addresses in 127.1.0.0/16… to `to`, as fast as
/// the loopback takes them; returns how many were refused.
fn storm_from_many_addresses(to: SocketAddr, addresses: u32, threads: u32) -> u64 {
    let refused = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let refused = refused.clone();
            thread::spawn(move || {
                for i in (w..addresses).step_by(threads as usize) {
                    let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i);
                    let socket =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    socket.bind(&SocketAddrV4::new(source, 0).into()).unwrap();
                    match socket.connect(&to.into()) {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            refused.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    refused.load(Relaxed)
}

/// Refusals and connections from 100,000 distinct addresses: memory stays bounded (the summary
/// names the heaviest clients only), and every refusal is accounted for. The verdicts go to a
/// file: a hundred thousand of them through the test's own parser would starve the storm.
#[test]
fn storms_from_100000_addresses() {
    if !privileged("storms_from_100000_addresses") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let (closed, open, crashing) = (Endpoint::new(245), Endpoint::new(246), Endpoint::new(247));
    let dir = tempfile_dir("storms");
    let file = dir.join("verdicts.jsonl");
    let ports = [closed.port(), open.port(), crashing.port()].map(|p| p.to_string());
    let output = format!("file://{}", file.display());
    let mut tracer = Tracer::start(&[
        "--summary-only",
        "-o",
        &output,
        "--port",
        &ports[0],
        "--port",
        &ports[1],
        "--port",
        &ports[2],
    ]);
    let refused = storm_from_many_addresses(
        SocketAddr::new(closed.addr().parse().unwrap(), closed.port()),
        100_000,
        4,
    );
    connection_storm(open, 100_000);
    crash_is_still_judged_in_file(&file, "storm-crash", crashing);
    assert_peak_rss_bounded(&tracer);
    let summary = stop_with_sigterm(&mut tracer);
    assert_eq!(refused, 100_000);
    // The summary counts every verdict, the file what its queue could take: what it could not
    // is counted in the exit lines and in loss records in the file, and every line parses.
    let judged = cause_count(&summary, "not_listening");
    let held_back = summary["held_back_refusals"].as_u64().unwrap();
    let lost = summary["lost_kernel_events"].as_u64().unwrap();
    if lost == 0 {
        // A few more than the storm's own: when the connection storm's listener closes, a
        // client segment still on its way is answered without a socket, a refusal too.
        assert!(
            (refused..=refused + 8).contains(&(judged + held_back)),
            "every refusal is counted ({refused} made, {judged} judged + {held_back} held back): {summary}"
        );
    } else {
        let said = format!("{lost} lost");
        assert!(tracer.stderr_lines().iter().any(|l| l.contains(&said)));
    }
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line of the file parses"))
        .collect();
    let dropped_in_band: u64 = lines
        .iter()
        .filter(|r| r["type"] == "loss")
        .map(|r| r["dropped"].as_u64().unwrap_or(0))
        .sum();
    let exit_line = tracer
        .stderr_lines()
        .into_iter()
        .find(|l| l.starts_with("sshtrace: output file://"))
        .expect("the file output's exit line");
    assert!(
        exit_line.contains(&format!(" {dropped_in_band} dropped")),
        "{exit_line} vs {dropped_in_band} dropped in the file's loss records"
    );
    for cause in summary["causes"].as_array().unwrap() {
        assert!(
            cause["top_clients"].as_array().unwrap().len() <= 3,
            "{summary}"
        );
    }
}

/// Connections from `addresses` distinct addresses to a plain listener on a tracked port.
fn connection_storm(to: Endpoint, addresses: u32) {
    // A backlog that takes the storm: past it, SYNs are dropped and clients wait a second.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.set_reuse_address(true).unwrap();
    let addr = SocketAddr::new(to.addr().parse().unwrap(), to.port());
    listener.bind(&addr.into()).unwrap();
    listener.listen(4096).unwrap();
    let listener: TcpListener = listener.into();
    let accepting = Arc::new(AtomicBool::new(true));
    let acceptor = {
        let accepting = accepting.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
                if !accepting.load(Relaxed) {
                    break;
                }
            }
        })
    };
    // One client thread: the acceptor keeps up, and no SYN waits for a retransmission.
    storm_from_many_addresses(
        SocketAddr::new(to.addr().parse().unwrap(), to.port()),
        addresses,
        1,
    );
    accepting.store(false, Relaxed);
    let _ = TcpStream::connect((to.addr().as_str(), to.port()));
    acceptor.join().unwrap();
}

/// A directory of the test's own, removed on drop (the storm's file is megabytes).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("sshtrace-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn cause_count(summary: &Value, cause: &str) -> u64 {
    summary["causes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == cause)
        .map(|c| c["count"].as_u64().unwrap())
        .unwrap_or(0)
}
