//! `cargo xtask bench`: what sshtrace costs, measured side by side in one run against
//! bpftrace (tracepoints only) and tcpdump, printed as a table of ratios and written to
//! target/bench/results.md. Targets that are missed say so; nothing is tuned to pass.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Loopback addresses and ports of the bench's own (never any other address).
const SERVER: &str = "127.0.0.77:22777";
const CLOSED: &str = "127.0.0.77:22778";

pub struct Options {
    pub seconds: u64,
    pub storm_seconds: u64,
}

pub fn run(binary: &Path, opts: &Options) -> Result<()> {
    let _tracefs = MountedTracefs(tools()?);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# sshtrace benchmark\n\nOne run on this machine ({} CPUs); each measurement {} s; connection rates are the median of three interleaved rounds of orderly accept/close (the server closes first; clients read its FIN, so no TIME_WAIT piles up on their ports).\n",
        num_cpus(),
        opts.seconds
    );

    // 1. Connection storm on a tracked port: accept/close loop, rates side by side.
    let d = Duration::from_secs(opts.seconds);
    eprintln!("xtask bench: connection storm");
    // Interleaved rounds, the median of each: drift of the machine hits all alike.
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut cpus: [Vec<f64>; 4] = Default::default();
    for _ in 0..3 {
        let runs = [
            connection_rate(d, None)?,
            connection_rate(
                d,
                Some(sshtrace(binary, &["--port", "22777", "--summary-only"])?),
            )?,
            connection_rate(d, Some(bpftrace()?))?,
            connection_rate(d, Some(tcpdump()?))?,
        ];
        for (i, (rate, cpu)) in runs.into_iter().enumerate() {
            rates[i].push(rate);
            cpus[i].push(cpu);
        }
    }
    let [baseline, with_sshtrace, with_bpftrace, with_tcpdump] = rates.map(median_f64);
    let cpus = cpus.map(median_f64);
    let slow = |r: f64| (1.0 - r / baseline) * 100.0;
    let _ = writeln!(
        report,
        "## 1. Connection storm (loopback accept/close on a tracked port)\n"
    );
    let _ = writeln!(
        report,
        "| tracer | connections/s | ratio to none | slowdown | tracer process CPU |\n|---|---|---|---|---|"
    );
    for ((name, rate), cpu) in [
        ("none", baseline),
        ("sshtrace", with_sshtrace),
        ("bpftrace (tracepoints)", with_bpftrace),
        ("tcpdump (RSTs)", with_tcpdump),
    ]
    .into_iter()
    .zip(cpus)
    {
        let _ = writeln!(
            report,
            "| {name} | {rate:.0} | {:.3} | {:.1} % | {cpu:.1} % |",
            rate / baseline,
            slow(rate)
        );
    }
    let _ = writeln!(
        report,
        "\nThe tracer process's own CPU (of one CPU) is its userspace reading records; its BPF \
         programs run in the storm's threads and show only as the slowdown."
    );

    // 2. Reset storm: refused connections to a closed tracked port, from every CPU.
    eprintln!("xtask bench: reset storm");
    let storm = reset_storm(binary, d)?;
    let _ = writeln!(
        report,
        "\n## 2. Reset storm (parallel connects to a closed tracked port)\n"
    );
    let _ = writeln!(report, "| refused connections/s | kernel records/s read | records lost | refusals in the summary | sshtrace CPU | sshtrace RSS |\n|---|---|---|---|---|---|");
    let _ = writeln!(
        report,
        "| {:.0} | {:.0} | {} | {} of {} | {:.1} % | {} KiB |",
        storm.attempts as f64 / d.as_secs_f64(),
        storm.read as f64 / d.as_secs_f64(),
        storm.lost,
        storm.counted,
        storm.attempts,
        storm.cpu_percent,
        storm.rss_kib
    );

    // 3. Start-up: process start to attached.
    eprintln!("xtask bench: start-up");
    let ours = median(
        (0..3)
            .map(|_| startup(binary))
            .collect::<Result<Vec<_>>>()?,
    );
    let theirs = median(
        (0..3)
            .map(|_| startup_bpftrace())
            .collect::<Result<Vec<_>>>()?,
    );
    let _ = writeln!(
        report,
        "\n## 3. Start-up (process start to attached, median of 3)\n"
    );
    let _ = writeln!(
        report,
        "| sshtrace | bpftrace | ratio |\n|---|---|---|\n| {} ms | {} ms | {:.2} |",
        ours.as_millis(),
        theirs.as_millis(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );

    // 4. Memory: idle, and after a long storm.
    eprintln!("xtask bench: memory");
    let (idle, after) = memory(binary, Duration::from_secs(opts.storm_seconds))?;
    let _ = writeln!(report, "\n## 4. Memory (RSS)\n\n| idle | after a {} s reset storm |\n|---|---|\n| {idle} KiB | {after} KiB |", opts.storm_seconds);

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(
        report,
        "\n## Targets\n\n| target | measured | |\n|---|---|---|"
    );
    let _ = writeln!(
        report,
        "| < 2 % slowdown of the connection storm | {:.1} % | {} |",
        slow(with_sshtrace),
        verdict(slow(with_sshtrace) < 2.0)
    );
    let _ = writeln!(
        report,
        "| no lost records in the reset storm | {} lost | {} |",
        storm.lost,
        verdict(storm.lost == 0)
    );
    let _ = writeln!(
        report,
        "| attached in < 300 ms | {} ms | {} |",
        ours.as_millis(),
        verdict(ours < Duration::from_millis(300))
    );
    let _ = writeln!(
        report,
        "| RSS < 25 MiB | {} KiB | {} |",
        after.max(idle),
        verdict(after.max(idle) < 25 * 1024)
    );

    print!("{report}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.md"), &report)?;
    eprintln!(
        "xtask bench: written to {}",
        dir.join("results.md").display()
    );
    Ok(())
}

/// Unmounts, when dropped, the tracefs the bench mounted (also when a measurement fails).
struct MountedTracefs(bool);

impl Drop for MountedTracefs {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

fn num_cpus() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Installs bpftrace and tcpdump; true when tracefs had to be mounted for bpftrace (the bench
/// unmounts it at the end, leaving the host as it found it).
fn tools() -> Result<bool> {
    for (package, path) in [
        ("bpftrace", "/usr/bin/bpftrace"),
        ("tcpdump", "/usr/bin/tcpdump"),
    ] {
        if !Path::new(path).exists() {
            cmd::run(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", package])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "bench: apt-get install",
            )?;
        }
    }
    // bpftrace finds tracepoints through tracefs (sshtrace mounts it privately for itself).
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(false);
    }
    cmd::run(
        Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]),
        "bench: mount tracefs for bpftrace",
    )?;
    Ok(true)
}

/// A tracer running in the background, stopped (SIGINT) when dropped.
struct Tracer(Child);

impl Drop for Tracer {
    /// SIGINT, as Ctrl-C; a tracer that does not stop within 10 s is killed.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program and waits for a line on its standard error (or output) saying it is ready.
fn start_ready(mut command: Command, ready: &'static str) -> Result<(Child, Duration)> {
    let t0 = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {command:?}"))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains(ready) => {
                let elapsed = t0.elapsed();
                // Keep draining, so that the program never blocks on a full pipe.
                thread::spawn(move || for _ in rx {});
                return Ok((child, elapsed));
            }
            _ => {}
        }
    }
    let _ = child.kill();
    bail!("{command:?} did not become ready")
}

fn sshtrace(binary: &Path, args: &[&str]) -> Result<Tracer> {
    let mut c = Command::new(binary);
    c.args(args);
    Ok(Tracer(start_ready(c, "sshtrace: attached")?.0))
}

const BPFTRACE_SCRIPT: &str = "tracepoint:tcp:tcp_send_reset { @resets[args->reason] = count(); } \
     tracepoint:sock:inet_sock_set_state /args->sport == 22777 || args->dport == 22777/ { @states[args->newstate] = count(); } \
     tracepoint:sched:sched_process_exit { @exits = count(); }";

/// bpftrace prints "Attaching N probes..." before it attaches: ready is a moment later.
fn bpftrace() -> Result<Tracer> {
    let mut c = Command::new("bpftrace");
    c.args(["-e", BPFTRACE_SCRIPT]);
    let tracer = Tracer(start_ready(c, "Attaching")?.0);
    thread::sleep(Duration::from_millis(500));
    Ok(tracer)
}

fn tcpdump() -> Result<Tracer> {
    let mut c = Command::new("tcpdump");
    c.args([
        "-i",
        "lo",
        "-w",
        "/dev/null",
        "tcp port 22777 and tcp[tcpflags] & tcp-rst != 0",
    ]);
    Ok(Tracer(start_ready(c, "listening on")?.0))
}

/// Connections per second a client/server pair on loopback achieves in `d`, and the tracer
/// process's CPU % in the meantime.
fn connection_rate(d: Duration, tracer: Option<Tracer>) -> Result<(f64, f64)> {
    let tracer_pid = tracer.as_ref().map(|t| t.0.id());
    let ticks_before = tracer_pid.map(cpu_ticks).unwrap_or(0);
    let listener = TcpListener::bind(SERVER)?;
    listener.set_nonblocking(false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = thread::spawn(move || {
        for conn in listener.incoming() {
            if server_stop.load(Ordering::Relaxed) {
                break;
            }
            drop(conn);
        }
    });
    let addr: SocketAddr = SERVER.parse()?;
    let count = Arc::new(AtomicU64::new(0));
    // Many clients per CPU keep the CPUs busy: idle CPUs in a VM wake slowly, which would
    // measure wake-up latency instead of the cost of tracing.
    let clients: Vec<_> = (0..num_cpus() * 8)
        .map(|_| {
            let (stop, count) = (stop.clone(), count.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // The server closes first; reading its FIN before closing leaves no
                    // TIME_WAIT on the client's ports, so every round starts equal.
                    if let Ok(mut stream) = TcpStream::connect(addr) {
                        let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    let ticks = tracer_pid.map(cpu_ticks).unwrap_or(0) - ticks_before;
    for c in clients {
        let _ = c.join();
    }
    let _ = TcpStream::connect(addr);
    let _ = server.join();
    drop(tracer);
    // Clock ticks are 1/100 s on Linux.
    let cpu_percent = ticks as f64 / d.as_secs_f64();
    Ok((
        count.load(Ordering::Relaxed) as f64 / d.as_secs_f64(),
        cpu_percent,
    ))
}

struct Storm {
    attempts: u64,
    read: u64,
    lost: u64,
    counted: u64,
    cpu_percent: f64,
    rss_kib: u64,
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the comm.
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Refused connections from every CPU for `d`, with sshtrace tracing the port.
fn storm(d: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let addr: SocketAddr = CLOSED.parse().expect("address");
    let threads: Vec<_> = (0..num_cpus())
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = TcpStream::connect(addr);
                    n += 1;
                }
                n
            })
        })
        .collect();
    thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
}

/// sshtrace traces a closed port while every CPU refuses connections to it; its exit totals
/// and summary are read from files (so that nothing it prints is lost).
fn reset_storm(binary: &Path, d: Duration) -> Result<Storm> {
    let log = std::env::temp_dir().join("sshtrace-bench.stderr");
    let summary = std::env::temp_dir().join("sshtrace-bench.stdout");
    let mut child = Command::new(binary)
        .args(["--port", "22778", "--summary-only"])
        .stdout(std::fs::File::create(&summary)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let started = Instant::now();
    while !std::fs::read_to_string(&log)?.contains("sshtrace: attached") {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!("sshtrace did not attach");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let ticks_before = cpu_ticks(pid);
    let attempts = storm(d);
    // Clock ticks are 1/100 s on Linux.
    let cpu_percent = (cpu_ticks(pid) - ticks_before) as f64 / 100.0 / d.as_secs_f64() * 100.0;
    let rss = rss_kib(pid);
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    child.wait()?;
    let text = std::fs::read_to_string(&log)?;
    let line = text
        .lines()
        .find(|l| l.contains(" kernel events, "))
        .context("no exit totals")?;
    // "V verdicts; P kernel events, R read, L lost, U undecodable"
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    let report = std::fs::read_to_string(&summary)?;
    let counted = report
        .lines()
        .find(|l| l.starts_with("not_listening"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    Ok(Storm {
        attempts,
        read: n.get(2).copied().unwrap_or(0),
        lost: n.get(3).copied().unwrap_or(0),
        counted,
        cpu_percent,
        rss_kib: rss,
    })
}

fn startup(binary: &Path) -> Result<Duration> {
    let mut c = Command::new(binary);
    c.args(["--port", "22779"]);
    let (child, took) = start_ready(c, "sshtrace: attached")?;
    drop(Tracer(child));
    Ok(took)
}

fn startup_bpftrace() -> Result<Duration> {
    let mut c = Command::new("bpftrace");
    c.args(["-e", BPFTRACE_SCRIPT]);
    let (child, took) = start_ready(c, "Attaching")?;
    drop(Tracer(child));
    Ok(took)
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn memory(binary: &Path, storm_for: Duration) -> Result<(u64, u64)> {
    let mut c = Command::new(binary);
    c.args(["--port", "22778", "--summary-only"]);
    let (child, _) = start_ready(c, "sshtrace: attached")?;
    let pid = child.id();
    thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(pid);
    storm(storm_for);
    let after = rss_kib(pid);
    drop(Tracer(child));
    Ok((idle, after))
}
