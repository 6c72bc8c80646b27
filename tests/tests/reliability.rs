//! Reliability: a stop leaves the kernel as sshtrace found it (SIGINT, SIGTERM, even
//! `kill -9`), an sshd restarted while tracing is traced again, two instances work side by
//! side, and storms keep memory bounded with every kernel record accounted for — read, or
//! counted as lost by the programs themselves.

use std::{
    collections::BTreeSet,
    io::Read,
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use sshtrace_tests::{kill, privileged, wait_for, Endpoint, Sshd, SshdOptions, Tracer};

/// The kinds of BPF object, with their `…_GET_NEXT_ID` command and their fdinfo key.
const OBJECT_KINDS: [(&str, u32); 3] = [
    ("prog_id", 11), // BPF_PROG_GET_NEXT_ID
    ("map_id", 12),  // BPF_MAP_GET_NEXT_ID
    ("link_id", 31), // BPF_LINK_GET_NEXT_ID
];

/// Every BPF object on the host, enumerated through the bpf syscall.
fn loaded_objects() -> BTreeSet<(&'static str, u32)> {
    let mut all = BTreeSet::new();
    for (kind, next_id_cmd) in OBJECT_KINDS {
        let mut id = 0u32;
        loop {
            // union bpf_attr for …_GET_NEXT_ID: start_id, next_id, open_flags.
            let mut attr: [u32; 3] = [id, 0, 0];
            // SAFETY: a bpf(2) call with an attribute buffer of the size passed.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    next_id_cmd,
                    attr.as_mut_ptr(),
                    std::mem::size_of_val(&attr),
                )
            };
            if ret != 0 {
                break; // ENOENT: no object after `id`.
            }
            id = attr[1];
            all.insert((kind, id));
        }
    }
    all
}

/// BPF objects a process holds through its descriptors (fdinfo `prog_id`, `map_id`, `link_id`).
fn objects_held_by(pid: u32) -> BTreeSet<(&'static str, u32)> {
    let mut held = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(":\t") else {
                continue;
            };
            if let Some((kind, _)) = OBJECT_KINDS.iter().find(|(k, _)| *k == key) {
                held.insert((*kind, value.trim().parse().unwrap()));
            }
        }
    }
    held
}

fn mount_points() -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_to_string("/proc/1/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap_or("").to_owned())
        .collect();
    all.sort();
    all
}

/// Objects pinned in the BPF filesystem, if one is mounted.
fn pinned() -> Vec<String> {
    walkdir("/sys/fs/bpf")
}

fn walkdir(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path().display().to_string();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walkdir(&path));
        }
        out.push(path);
    }
    out
}

fn stopped_cleanly(signal: i32) {
    let (mounts_before, pinned_before) = (mount_points(), pinned());
    let before = loaded_objects();
    let tracer = Tracer::start(&["--port", "22199"]);
    let ours = objects_held_by(tracer.pid());
    let kinds: BTreeSet<&str> = ours.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds.len(), 3, "programs, maps and links held: {ours:?}");
    let listed = loaded_objects();
    assert!(
        ours.is_subset(&listed) && ours.is_disjoint(&before),
        "the bpf syscall lists sshtrace's objects, new since it started"
    );
    kill(tracer.pid(), signal);
    wait_for("sshtrace to exit", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/stat", tracer.pid()))
            .map_or(true, |s| s.contains(") Z "))
            .then_some(())
    });
    drop(tracer);
    // The kernel frees programs and then their maps asynchronously (RCU): give it a moment.
    let left = wait_for(
        "sshtrace's BPF objects to be freed",
        Duration::from_secs(5),
        || {
            let left: Vec<_> = ours.intersection(&loaded_objects()).copied().collect();
            left.is_empty().then_some(left)
        },
    );
    assert!(
        left.is_empty(),
        "BPF objects left after signal {signal}: {left:?}"
    );
    assert_eq!(mount_points(), mounts_before, "a mount was left behind");
    assert_eq!(pinned(), pinned_before, "an object was pinned");
}

#[test]
fn sigint_sigterm_and_kill_9_leave_nothing_behind() {
    if !privileged("sigint_sigterm_and_kill_9_leave_nothing_behind") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        stopped_cleanly(signal);
    }
}

/// A login with a key sshd refuses, to its end: the connection's sshd has exited too.
fn refused_login(sshd: &Sshd) {
    let out = sshd
        .ssh_command_with(sshd.endpoint.port(), &sshd.path("host_key"), "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    wait_for(
        "the connection's sshd to exit",
        Duration::from_secs(10),
        || {
            sshtrace_tests::children(sshd.pid())
                .is_empty()
                .then_some(())
        },
    );
}

/// Each sshd is logged into the moment it listens, with nothing awaited from sshtrace.
#[test]
fn sshd_restarted_while_tracing_is_traced_again() {
    if !privileged("sshd_restarted_while_tracing_is_traced_again") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(195);
    let tracer = Tracer::start(&[]);
    let mut sshd = Sshd::start("restart", ep, SshdOptions::default());
    let first = sshd.pid();
    refused_login(&sshd);
    sshd.restart();
    refused_login(&sshd);

    for listener in [first, sshd.pid()] {
        let v = tracer.verdict_for(ep.port(), |v| v["sshd"]["listener_pid"] == listener);
        assert_eq!(v["cause"], "closed_preauth", "{v}");
    }
}

#[test]
fn two_instances_work_independently() {
    if !privileged("two_instances_work_independently") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(196);
    let port = ep.port().to_string();
    let mut one = Tracer::start(&["--port", &port]);
    let two = Tracer::start(&["--port", &port]);
    assert!(TcpStream::connect((ep.addr().as_str(), ep.port())).is_err());
    one.verdict_for(ep.port(), |v| v["cause"] == "not_listening");
    two.verdict_for(ep.port(), |v| v["cause"] == "not_listening");
    assert!(one.stop().success());
    assert!(TcpStream::connect((ep.addr().as_str(), ep.port())).is_err());
    wait_for(
        "the second verdict of the remaining instance",
        Duration::from_secs(10),
        || (two.verdicts(ep.port()).len() == 2).then_some(()),
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The exit totals, `V verdicts; P kernel events, R read, L lost, U undecodable, S program
/// runs skipped`.
struct Totals {
    produced: u64,
    read: u64,
    lost: u64,
}

fn totals(tracer: &Tracer) -> Totals {
    let line = tracer
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains(" kernel events, "))
        .expect("exit totals");
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    Totals {
        produced: n[1],
        read: n[2],
        lost: n[3],
    }
}

/// `threads` threads calling `attempt` until `stop`; how many calls returned true.
fn storm(
    threads: usize,
    stop: &Arc<AtomicBool>,
    attempt: impl Fn() -> bool + Send + Clone + 'static,
) -> Vec<thread::JoinHandle<u64>> {
    (0..threads)
        .map(|_| {
            let (stop, attempt) = (stop.clone(), attempt.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += u64::from(attempt());
                }
                n
            })
        })
        .collect()
}

/// Twenty seconds of refused connections from two threads: memory stays bounded, every record
/// the programs produced was read (produced = read + lost, with nothing lost at the default
/// ring size), and every refusal is in the summary: judged, or held back in the kernel.
#[test]
fn reset_storm_keeps_memory_bounded_and_counts_everything() {
    if !privileged("reset_storm_keeps_memory_bounded_and_counts_everything") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(197);
    let mut tracer = Tracer::start_text(&["--port", &ep.port().to_string(), "--summary-only"]);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = ep.addr();
    // Counted: the attempts the kernel refused (a SYN answered with a RST).
    let threads = storm(2, &stop, move || {
        TcpStream::connect((addr.as_str(), ep.port()))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    thread::sleep(Duration::from_secs(5));
    let early = rss_kib(tracer.pid());
    thread::sleep(Duration::from_secs(15));
    let late = rss_kib(tracer.pid());
    stop.store(true, Ordering::Relaxed);
    let attempts: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(tracer.stop().success());
    let t = totals(&tracer);
    let row = tracer
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("not_listening"))
        .expect("summary row");
    let counted: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    // What the kernel counted after the client's last record, read out at the stop.
    let held_back: u64 = tracer
        .stdout_lines()
        .iter()
        .find(|l| l.contains("counted in the kernel after their client's last record"))
        .map_or(0, |l| l.split_whitespace().next().unwrap().parse().unwrap());
    eprintln!(
        "storm: {attempts} refused connections, {counted} in the summary + {held_back} held back, {} records produced, {} read, {} lost, RSS {early} → {late} KiB",
        t.produced, t.read, t.lost
    );
    assert_eq!(
        t.produced,
        t.read + t.lost,
        "every record read or counted lost"
    );
    assert_eq!(t.lost, 0, "the refusals are aggregated in the kernel");
    assert_eq!(
        counted + held_back,
        attempts,
        "every refusal judged, or counted in the kernel after the client's last record"
    );
    assert!(late < 64 * 1024, "RSS {late} KiB");
    assert!(
        late < early * 2 + 4096,
        "RSS grew from {early} to {late} KiB"
    );
}

/// A ring buffer far too small for a storm of connections reset on accepted sockets (each a
/// verdict of its own): records are lost, and every one is counted in the kernel and reported —
/// a warning, in-band loss records with the running total, the summary and the exit totals —
/// while produced = read + lost holds exactly.
#[test]
fn records_the_ring_has_no_room_for_are_counted_and_reported() {
    if !privileged("records_the_ring_has_no_room_for_are_counted_and_reported") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(198);
    // No verdict passes the cause filter: the JSON stream holds only loss records and the
    // summary.
    let mut tracer = Tracer::start(&[
        "--port",
        &ep.port().to_string(),
        "--ring-size",
        "4K",
        "--cause",
        "firewall",
    ]);
    let listener = TcpListener::bind((ep.addr().as_str(), ep.port())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if server_stop.load(Ordering::Relaxed) {
                break;
            }
            abort_on_close(&stream);
        }
    });
    let addr = ep.addr();
    let clients = storm(4, &stop, move || {
        if let Ok(mut s) = TcpStream::connect((addr.as_str(), ep.port())) {
            let _ = s.read(&mut [0u8; 1]);
        }
        true
    });
    thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let _ = TcpStream::connect((ep.addr().as_str(), ep.port()));
    server.join().unwrap();
    assert!(tracer.stop().success());

    let t = totals(&tracer);
    eprintln!(
        "4K ring: {} records produced, {} read, {} lost",
        t.produced, t.read, t.lost
    );
    assert!(t.lost > 0, "a 4K ring cannot hold this storm");
    assert_eq!(
        t.produced,
        t.read + t.lost,
        "every record read or counted lost"
    );
    assert!(tracer
        .stderr_lines()
        .iter()
        .any(|l| l.contains("kernel events lost (ring buffer full)")));
    let records = tracer.records();
    let losses: Vec<&Value> = records.iter().filter(|r| r["type"] == "loss").collect();
    let last = losses.last().expect("an in-band loss record");
    assert_eq!(last["lost_kernel_events"], t.lost, "{last}");
    assert!(last["sink"].is_null());
    let summary = records.last().expect("the summary");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["lost_kernel_events"], t.lost);
}

fn abort_on_close(stream: &TcpStream) {
    // SO_LINGER 0: close sends a reset instead of a FIN.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
