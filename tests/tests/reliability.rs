//! Reliability: a stop leaves the kernel as sshtrace found it (SIGINT, SIGTERM, even
//! `kill -9`), an sshd restarted while tracing is found again, two instances work side by
//! side, and a reset storm keeps memory bounded with every kernel event accounted for.

use std::{
    collections::BTreeSet,
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use sshtrace_tests::{kill, privileged, wait_for, Endpoint, Sshd, SshdOptions, Tracer};

/// BPF objects (`prog_id`, `map_id`, `link_id`) held by a process's descriptors.
fn bpf_objects(pid: u32) -> BTreeSet<(String, u32)> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(":\t") {
                if matches!(key, "prog_id" | "map_id" | "link_id") {
                    found.insert((key.to_owned(), value.trim().parse().unwrap()));
                }
            }
        }
    }
    found
}

/// Whether a BPF object still exists, asked through the bpf syscall (…_GET_FD_BY_ID).
fn bpf_object_exists(kind: &str, id: u32) -> bool {
    let cmd = match kind {
        "prog_id" => 13,
        "map_id" => 14,
        _ => 30,
    };
    let attr: [u32; 4] = [id, 0, 0, 0];
    // SAFETY: a bpf(2) call with an attribute buffer of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
        return true;
    }
    false
}

fn tracefs_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" tracefs "))
        .count()
}

fn stopped_cleanly(signal: i32) {
    let mounts_before = tracefs_mounts();
    let tracer = Tracer::start(&["--port", "22199"]);
    let objects = bpf_objects(tracer.pid());
    let kinds: BTreeSet<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        kinds.contains("prog_id") && kinds.contains("map_id") && kinds.contains("link_id"),
        "{objects:?}"
    );
    kill(tracer.pid(), signal);
    wait_for("sshtrace to exit", Duration::from_secs(10), || {
        (!std::path::Path::new(&format!("/proc/{}/fdinfo", tracer.pid())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", tracer.pid()))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    });
    drop(tracer);
    // The kernel frees programs and then their maps asynchronously (RCU): give it a moment.
    let settled = (0..100).any(|_| {
        let gone = objects.iter().all(|(k, id)| !bpf_object_exists(k, *id));
        if !gone {
            std::thread::sleep(Duration::from_millis(50));
        }
        gone
    });
    let left: Vec<&(String, u32)> = objects
        .iter()
        .filter(|(k, id)| bpf_object_exists(k, *id))
        .collect();
    assert!(
        settled && left.is_empty(),
        "BPF objects left after signal {signal}: {left:?}"
    );
    assert_eq!(
        tracefs_mounts(),
        mounts_before,
        "a tracefs mount was left behind"
    );
}

#[test]
fn sigint_sigterm_and_kill_9_leave_nothing_behind() {
    if !privileged("sigint_sigterm_and_kill_9_leave_nothing_behind") {
        return;
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        stopped_cleanly(signal);
    }
}

#[test]
fn sshd_restarted_while_tracing_is_traced_again() {
    if !privileged("sshd_restarted_while_tracing_is_traced_again") {
        return;
    }
    let ep = Endpoint::new(195);
    let tracer = Tracer::start(&[]);
    let first = Sshd::start("restart", ep, SshdOptions::default());
    let first_pid = first.pid();
    tracer.wait_stderr("the first sshd", |l| {
        l.contains(&format!("{first_pid} on {}", ep.addr()))
    });
    drop(first);
    let second = Sshd::start("restart", ep, SshdOptions::default());
    tracer.wait_stderr("the restarted sshd", |l| {
        l.contains(&format!("{} on {}", second.pid(), ep.addr()))
    });
    let out = second
        .ssh_command_with(ep.port(), &second.path("host_key"), "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "closed_preauth");
    assert_eq!(v["sshd"]["listener_pid"], second.pid());
}

#[test]
fn two_instances_work_independently() {
    if !privileged("two_instances_work_independently") {
        return;
    }
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

/// `… verdicts; P kernel events, R read, L lost, U undecodable` → (P, R, L).
fn event_totals(tracer: &Tracer) -> (u64, u64, u64) {
    let line = tracer
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains(" kernel events, "))
        .expect("exit totals");
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    // verdicts, produced, read, lost, undecodable
    (numbers[1], numbers[2], numbers[3])
}

/// Twenty seconds of refused connections from two threads: memory stays bounded, every event
/// the kernel produced was read (produced == read, losses counted in the kernel), and the
/// refusals the kernel aggregated are all accounted for in the summary.
#[test]
fn reset_storm_keeps_memory_bounded_and_counts_everything() {
    if !privileged("reset_storm_keeps_memory_bounded_and_counts_everything") {
        return;
    }
    let ep = Endpoint::new(197);
    let mut tracer = Tracer::start_text(&["--port", &ep.port().to_string(), "--summary-only"]);
    let stop = Arc::new(AtomicBool::new(false));
    let storm: Vec<_> = (0..2)
        .map(|_| {
            let (stop, addr) = (stop.clone(), ep.addr());
            std::thread::spawn(move || {
                let mut attempts = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = TcpStream::connect((addr.as_str(), ep.port()));
                    attempts += 1;
                }
                attempts
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let early = rss_kib(tracer.pid());
    std::thread::sleep(Duration::from_secs(15));
    let late = rss_kib(tracer.pid());
    stop.store(true, Ordering::Relaxed);
    let attempts: u64 = storm.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(tracer.stop().success());
    let (produced, read, lost) = event_totals(&tracer);
    let row = tracer
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("not_listening"))
        .expect("summary row");
    let counted: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    eprintln!("storm: {attempts} refused connections, {counted} in the summary, {produced} events produced, {read} read, {lost} lost, RSS {early} → {late} KiB");
    assert_eq!(produced, read, "every event the kernel produced was read");
    // Each client's last 100 ms of refusals are still being counted in the kernel at the stop.
    assert!(
        counted <= attempts && counted * 100 >= attempts * 95,
        "{counted} of {attempts} refusals accounted for"
    );
    assert!(late < 64 * 1024, "RSS {late} KiB");
    assert!(
        late < early * 2 + 4096,
        "RSS grew from {early} to {late} KiB"
    );
}
