//! `cargo xtask bench`: what sshtrace costs, measured side by side in one run against
//! bpftrace (tracepoints only) and tcpdump, printed as a table of ratios and written to
//! target/bench/results.md. Targets that are missed say so; nothing is tuned to pass.

mod compare;
mod load;
mod tracers;
mod usage;

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use compare::{counting_overhead, Comparison};
use load::{num_cpus, port, Workload};
use tracers::{Kind, Tools};

pub struct Options {
    pub seconds: u64,
    pub storm_seconds: u64,
    pub rounds: usize,
    /// Only the memory section (for iterating on memory; prints, writes no results file).
    pub memory_only: bool,
    /// Only the programs' costs and the rest of the host's slowdowns (prints, writes no file).
    pub costs_only: bool,
}

pub fn run(binary: &Path, opts: &Options) -> Result<()> {
    let _tools = Tools::install()?;
    let d = Duration::from_secs(opts.seconds);
    let mut report = String::new();
    if opts.memory_only {
        memory_section(binary, opts, &mut report)?;
        print!("{report}");
        return Ok(());
    }
    if opts.costs_only {
        costs_section(binary, d, opts.rounds, &mut report)?;
        print!("{report}");
        return Ok(());
    }
    write_header(&mut report, opts);
    eprintln!("xtask bench: connection storm, {} rounds", opts.rounds);
    let storm = Comparison::measure(binary, Workload::TrackedStorm, &Kind::ALL, d, opts.rounds)?;
    write_storm(&mut report, &storm, opts.rounds);
    eprintln!(
        "xtask bench: what the rest of the host pays, {} rounds",
        opts.rounds
    );
    let rest = RestOfHost::measure(binary, d, opts.rounds)?;
    rest.write(&mut report, opts.rounds);
    let (refused, aborted) = reset_storms(binary, d, &mut report)?;
    let ours = start_up(binary, &mut report)?;
    let rss = memory_section(binary, opts, &mut report)?;
    let measured = Measured {
        storm,
        rest,
        lost: refused.lost + aborted.lost,
        start_up: ours,
        rss,
    };
    write_targets(&mut report, opts, &measured);
    print!("{report}");
    let dir = crate::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.md"), &report)?;
    eprintln!(
        "xtask bench: written to {}",
        dir.join("results.md").display()
    );
    Ok(())
}

/// The kernel's accounting of sshtrace's programs in the tracked storm, then section 2.
fn costs_section(binary: &Path, d: Duration, rounds: usize, report: &mut String) -> Result<()> {
    eprintln!("xtask bench: programs' cost in the tracked storm");
    let tracked = Comparison::measure(
        binary,
        Workload::TrackedStorm,
        &[Kind::None, Kind::Sshtrace],
        d,
        rounds,
    )?;
    if let Some(cost) = tracked.cost(Kind::Sshtrace) {
        let s = tracked.slowdown(Kind::Sshtrace);
        let _ = writeln!(
            report,
            "tracked-port storm: {:.0} ns per connection, counted ({:.2} runs); slowdown {:.1} % \
             [{:.1}, {:.1}] over {rounds} rounds",
            cost.ns_per_unit, cost.runs_per_unit, s.median, s.min, s.max
        );
        write_by_program(report, cost, "tracked connection");
    }
    eprintln!("xtask bench: what the rest of the host pays, {rounds} rounds");
    RestOfHost::measure(binary, d, rounds)?.write(report, rounds);
    Ok(())
}

/// What the targets are checked against.
struct Measured {
    storm: Comparison,
    rest: RestOfHost,
    lost: u64,
    start_up: Duration,
    rss: Rss,
}

fn write_header(report: &mut String, opts: &Options) {
    let _ = writeln!(
        report,
        "# sshtrace benchmark\n\nOne run on this machine ({} CPUs, kernel {}); each measurement {} s. \
         sshtrace tracks port {} (`--port`) in every measurement.\n",
        num_cpus(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        opts.seconds,
        port(load::ORDERLY)
    );
}

/// Section 1: the tracked-port storm, every tracer.
fn write_storm(report: &mut String, storm: &Comparison, rounds: usize) {
    let _ = writeln!(
        report,
        "## 1. Connection storm (loopback accept/close on a tracked port)\n\n\
         Orderly connections from {} client threads: the server closes first and clients \
         read its FIN. {rounds} rounds; each round measures every tracer once, in a rotated \
         order, and its slowdown is against that round's untraced rate, so that the \
         machine's drift between rounds cancels. Program time is counted by the kernel \
         (BPF_ENABLE_STATS) in a separate run of each tracer; the counting itself adds two \
         clock reads per program run (see section 2).\n",
        num_cpus() * 8
    );
    let _ = writeln!(
        report,
        "| tracer | connections/s (median) | slowdown: median [min, max] | BPF program time per connection | share of the storm's CPU | tracer process CPU |\n|---|---|---|---|---|---|"
    );
    for &tracer in &storm.tracers {
        let slowdown = match tracer {
            Kind::None => "—".to_owned(),
            _ => {
                let s = storm.slowdown(tracer);
                format!("{:.1} % [{:.1}, {:.1}]", s.median, s.min, s.max)
            }
        };
        let (per_conn, share) = match storm.cost(tracer) {
            Some(c) => (
                format!("{:.0} ns ({:.1} runs)", c.ns_per_unit, c.runs_per_unit),
                format!("{:.1} %", c.share_of_cpu),
            ),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            report,
            "| {} | {:.0} | {slowdown} | {per_conn} | {share} | {:.1} % |",
            tracer.name(),
            storm.rate(tracer),
            storm.cpu(tracer)
        );
    }
    if let Some(cost) = storm.cost(Kind::Sshtrace) {
        write_by_program(report, cost, "connection");
    }
}

/// Where sshtrace's program time goes.
fn write_by_program(report: &mut String, cost: &compare::KernelCost, unit: &str) {
    let _ = writeln!(
        report,
        "\nWhere sshtrace's program time goes (counting included):\n\n\
         | program | runs per {unit} | ns per run | ns per {unit} |\n|---|---|---|---|"
    );
    for (name, runs, ns) in &cost.by_program {
        let _ = writeln!(
            report,
            "| {name} | {runs:.2} | {ns:.0} | {:.0} |",
            runs * ns
        );
    }
}

/// Section 2: what sshtrace costs the services it does not trace.
struct RestOfHost {
    untracked: Comparison,
    syscalls: Comparison,
    lookups: Comparison,
    stream: Comparison,
    /// ns each program run spends being counted.
    counting_ns: f64,
}

impl RestOfHost {
    fn measure(binary: &Path, d: Duration, rounds: usize) -> Result<Self> {
        let pair = [Kind::None, Kind::Sshtrace];
        Ok(Self {
            untracked: Comparison::measure(binary, Workload::UntrackedStorm, &pair, d, rounds)?,
            syscalls: Comparison::measure(binary, Workload::SmallSyscalls, &pair, d, rounds)?,
            lookups: Comparison::measure(binary, Workload::FileLookups, &pair, d, rounds)?,
            stream: Comparison::measure(binary, Workload::UntrackedStream, &pair, d, rounds)?,
            counting_ns: counting_overhead(d)?,
        })
    }

    fn write(&self, report: &mut String, rounds: usize) {
        let _ = writeln!(
            report,
            "\n## 2. What the rest of the host pays\n\n\
             sshtrace tracks port {} only; the workloads are other services: the same storm on \
             port {}, one-byte writes and reads on a pipe, opens and failed stats, and 1 KiB \
             writes streamed to port {} (one process or connection per CPU each, none of \
             them sshd). {rounds} rounds, none and sshtrace in a rotated order. Counting adds \
             {:.0} ns to each program run (an empty bpftrace program's run time on socket \
             state changes during the untracked storm); \"net\" subtracts it.\n\n\
             | workload | per second, untraced (median) | slowdown: median [min, max] | BPF time per unit, counted | net of counting | program runs per unit |\n|---|---|---|---|---|---|",
            port(load::ORDERLY),
            port(load::UNTRACKED),
            port(load::UNTRACKED_STREAM),
            self.counting_ns
        );
        for (name, c) in [
            ("untracked-port storm (per connection)", &self.untracked),
            ("small writes and reads (per write+read)", &self.syscalls),
            (
                "opens and failed stats (per open+close+stat)",
                &self.lookups,
            ),
            (
                "stream to an untracked port (per 1 KiB write)",
                &self.stream,
            ),
        ] {
            let s = c.slowdown(Kind::Sshtrace);
            let (counted, net, runs) = match c.cost(Kind::Sshtrace) {
                Some(k) => (
                    format!("{:.0} ns", k.ns_per_unit),
                    format!("{:.0} ns", k.net_ns_per_unit(self.counting_ns)),
                    format!("{:.2}", k.runs_per_unit),
                ),
                None => ("—".into(), "—".into(), "—".into()),
            };
            let _ = writeln!(
                report,
                "| {name} | {:.0} | {:.1} % [{:.1}, {:.1}] | {counted} | {net} | {runs} |",
                c.rate(Kind::None),
                s.median,
                s.min,
                s.max
            );
        }
        if let Some(cost) = self.untracked.cost(Kind::Sshtrace) {
            write_by_program(report, cost, "untracked connection");
        }
        if let Some(cost) = self.lookups.cost(Kind::Sshtrace) {
            write_by_program(report, cost, "open+close+stat");
        }
        if let Some(cost) = self.stream.cost(Kind::Sshtrace) {
            write_by_program(report, cost, "1 KiB write");
        }
    }
}

/// Section 3: the refused and the aborted storm, traced.
fn reset_storms(
    binary: &Path,
    d: Duration,
    report: &mut String,
) -> Result<(TracedStorm, TracedStorm)> {
    eprintln!("xtask bench: reset storms");
    let refused = traced_storm(binary, load::CLOSED, d, |d| Ok(load::refused(d)))?;
    let aborted = traced_storm(binary, load::ABORTING, d, load::aborted)?;
    let _ = writeln!(
        report,
        "\n## 3. Reset storms on a tracked port (sshtrace's default filter)\n\n\
         | storm | resets/s | records read/s | records lost | in the summary | sshtrace CPU | sshtrace RSS |\n\
         |---|---|---|---|---|---|---|"
    );
    for (name, s) in [
        (
            "refused: connects to a closed port, one client per CPU",
            &refused,
        ),
        ("aborted: accepted, then closed with SO_LINGER 0", &aborted),
    ] {
        let secs = d.as_secs_f64();
        let _ = writeln!(
            report,
            "| {name} | {:.0} | {:.0} | {} | {} + {} held back, of {} | {:.1} % | {} KiB |",
            s.attempts as f64 / secs,
            s.read as f64 / secs,
            s.lost,
            s.summarised,
            s.held_back,
            s.attempts,
            s.cpu_seconds / secs * 100.0,
            s.rss_kib
        );
    }
    let _ = writeln!(
        report,
        "\nRefusals are counted in the kernel per client and interval (a record carries how \
         many it stands for; what a client's last record did not carry is read out at the stop, \
         \"held back\"); each aborted connection is a verdict of its own. The clients' count \
         closes when they stop: a connection reset after that is in the summary only."
    );
    Ok((refused, aborted))
}

/// Section 4: process start to attached, sshtrace beside bpftrace.
fn start_up(binary: &Path, report: &mut String) -> Result<Duration> {
    eprintln!("xtask bench: start-up");
    let ours = median_duration(
        (0..3)
            .map(|_| Ok(tracers::sshtrace(binary, &["--port", "22779"])?.1))
            .collect::<Result<_>>()?,
    );
    let theirs = median_duration(
        (0..3)
            .map(|_| Ok(tracers::bpftrace()?.1))
            .collect::<Result<_>>()?,
    );
    let _ = writeln!(
        report,
        "\n## 4. Start-up (process start to attached, median of 3)\n\n\
         | sshtrace | bpftrace | ratio |\n|---|---|---|\n| {} ms | {} ms | {:.2} |",
        ours.as_millis(),
        theirs.as_millis(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    Ok(ours)
}

/// Section 5: RSS idle, at the peak of four storms back to back, and after.
fn memory_section(binary: &Path, opts: &Options, report: &mut String) -> Result<Rss> {
    eprintln!(
        "xtask bench: memory, four storms of {} s back to back",
        opts.storm_seconds
    );
    let rss = memory(binary, Duration::from_secs(opts.storm_seconds))?;
    let _ = writeln!(
        report,
        "\n## 5. Memory (RSS)\n\nsshtrace in its default mode (a verdict line each on standard \
         output, read by the bench) through four storms of {} s back to back: tracked \
         connections, aborted connections (a RST and a verdict each), refusals, and connections \
         to an untracked port. The peak is sampled every 100 ms, \"after\" once the last \
         storm's connections have settled (2 s); the high-water mark is the kernel's VmHWM, \
         start-up included.\n\n\
         | idle | peak during the storms | after | high-water mark (VmHWM) |\n\
         |---|---|---|---|\n| {} KiB | {} KiB | {} KiB | {} KiB |",
        opts.storm_seconds, rss.idle, rss.peak, rss.after, rss.high_water
    );
    Ok(rss)
}

fn write_targets(report: &mut String, opts: &Options, m: &Measured) {
    let _ = writeln!(
        report,
        "\n## Targets\n\n| target | measured | |\n|---|---|---|"
    );
    let rows = target_rows(opts, m);
    for (target, measured, met) in rows {
        let verdict = if met { "MET" } else { "MISSED" };
        let _ = writeln!(report, "| {target} | {measured} | {verdict} |");
    }
}

/// Each target: what it asks, what was measured, whether it was met.
fn target_rows(opts: &Options, m: &Measured) -> Vec<(&'static str, String, bool)> {
    let median = |c: &Comparison| c.slowdown(Kind::Sshtrace).median;
    let slowdown =
        |c: &Comparison| format!("{:.1} % (median of {} rounds)", median(c), opts.rounds);
    let counted = |c: &Comparison| {
        c.cost(Kind::Sshtrace)
            .map_or(f64::INFINITY, |k| k.ns_per_unit)
    };
    let net = |c: &Comparison| {
        c.cost(Kind::Sshtrace)
            .map_or(f64::INFINITY, |k| k.net_ns_per_unit(m.rest.counting_ns))
    };
    let (tracked, untracked) = (&m.storm, &m.rest.untracked);
    let (syscalls, lookups) = (&m.rest.syscalls, &m.rest.lookups);
    vec![
        (
            "tracked-port storm: ≤ 1,000 ns of BPF time per connection, counting included",
            format!("{:.0} ns", counted(tracked)),
            counted(tracked) <= 1000.0,
        ),
        (
            "tracked-port storm: < 2 % slowdown",
            slowdown(tracked),
            median(tracked) < 2.0,
        ),
        (
            "untracked-port storm: ≤ 150 ns of BPF time per connection, net of counting",
            format!(
                "{:.0} ns ({:.0} ns counted)",
                net(untracked),
                counted(untracked)
            ),
            net(untracked) <= 150.0,
        ),
        (
            "untracked-port storm: < 1 % slowdown",
            slowdown(untracked),
            median(untracked) < 1.0,
        ),
        (
            "small writes and reads: < 1 % slowdown",
            slowdown(syscalls),
            median(syscalls) < 1.0,
        ),
        (
            "opens and failed stats (hooked exits): < 1 % slowdown",
            slowdown(lookups),
            median(lookups) < 1.0,
        ),
        (
            "no lost records in the reset storms",
            format!("{} lost", m.lost),
            m.lost == 0,
        ),
        (
            "attached in < 300 ms",
            format!("{} ms", m.start_up.as_millis()),
            m.start_up < Duration::from_millis(300),
        ),
        (
            "RSS < 25 MiB idle, at the peak of every storm and after (VmHWM)",
            format!(
                "{} KiB idle, {} KiB peak, {} KiB after, {} KiB VmHWM",
                m.rss.idle, m.rss.peak, m.rss.after, m.rss.high_water
            ),
            m.rss.idle.max(m.rss.high_water) < 25 * 1024,
        ),
    ]
}

/// A reset storm on a port sshtrace tracks, and what sshtrace made of it.
struct TracedStorm {
    attempts: u64,
    read: u64,
    lost: u64,
    /// Refusals or connections the summary accounts for.
    summarised: u64,
    /// Refusals the kernel still held for their client at the stop (summary, not judged).
    held_back: u64,
    cpu_seconds: f64,
    rss_kib: u64,
}

/// sshtrace tracing `addr`'s port while `storm` runs for `d`; its exit totals and summary are
/// read from files, so that nothing it prints is lost.
fn traced_storm(
    binary: &Path,
    addr: &str,
    d: Duration,
    storm: fn(Duration) -> Result<u64>,
) -> Result<TracedStorm> {
    let dir = std::env::temp_dir();
    let (summary, log) = (
        dir.join("sshtrace-bench.stdout"),
        dir.join("sshtrace-bench.stderr"),
    );
    let mut child = Command::new(binary)
        .args(["--port", port(addr), "--summary-only"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&summary)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let started = Instant::now();
    while !std::fs::read_to_string(&log)?.contains("sshtrace: attached") {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!(
                "sshtrace did not attach: {}",
                std::fs::read_to_string(&log)?
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let cpu_before = usage::process_cpu_seconds(pid);
    let attempts = storm(d)?;
    let cpu_seconds = usage::process_cpu_seconds(pid) - cpu_before;
    let rss_kib = usage::rss_kib(pid);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    child.wait()?;
    let text = std::fs::read_to_string(&log)?;
    // "V verdicts; P kernel events, R read, L lost, …"
    let totals: Vec<u64> = text
        .lines()
        .find(|l| l.contains(" kernel events, "))
        .context("no exit totals")?
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    // Summary rows: "cause  count  first …" under a header line, and "N reset(s) without a
    // socket counted in the kernel after their client's last record".
    let summary = std::fs::read_to_string(&summary)?;
    let summarised = summary
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    let held_back = summary
        .lines()
        .find(|l| l.contains("counted in the kernel after"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(TracedStorm {
        attempts,
        read: totals.get(2).copied().unwrap_or(0),
        lost: totals.get(3).copied().unwrap_or(0),
        summarised,
        held_back,
        cpu_seconds,
        rss_kib,
    })
}

struct Rss {
    idle: u64,
    peak: u64,
    after: u64,
    /// VmHWM at the end: catches a peak between two samples, start-up's included.
    high_water: u64,
}

/// RSS of sshtrace tracing the storms' ports: idle, at its highest through the four storms of
/// `storm_for` each, back to back, and after.
fn memory(binary: &Path, storm_for: Duration) -> Result<Rss> {
    let (tracer, _) = tracers::sshtrace(
        binary,
        &[
            "--port",
            port(load::ORDERLY),
            "--port",
            port(load::CLOSED),
            "--port",
            port(load::ABORTING),
        ],
    )?;
    let pid = tracer.pid();
    thread::sleep(Duration::from_secs(1));
    let idle = usage::rss_kib(pid);
    let storms = thread::spawn(move || -> Result<()> {
        load::orderly(load::ORDERLY, storm_for)?;
        load::aborted(storm_for)?;
        load::refused(storm_for);
        load::orderly(load::UNTRACKED, storm_for)?;
        Ok(())
    });
    let mut peak = idle;
    while !storms.is_finished() {
        peak = peak.max(usage::rss_kib(pid));
        thread::sleep(Duration::from_millis(100));
    }
    storms.join().expect("the storms panicked")?;
    thread::sleep(Duration::from_secs(2));
    let after = usage::rss_kib(pid);
    let high_water = usage::rss_high_water_kib(pid);
    tracer.stop()?;
    Ok(Rss {
        idle,
        peak,
        after,
        high_water,
    })
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
