//! `cargo xtask bench`: what sshtrace costs, measured side by side in one run against
//! bpftrace (tracepoints only) and tcpdump, printed as a table of ratios and written to
//! target/bench/results.md. Targets that are missed say so; nothing is tuned to pass.

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

use load::{num_cpus, port};
use tracers::{Kind, Tools};
use usage::{ProgramStats, ProgramTime};

pub struct Options {
    pub seconds: u64,
    pub storm_seconds: u64,
    pub rounds: usize,
}

pub fn run(binary: &Path, opts: &Options) -> Result<()> {
    let _tools = Tools::install()?;
    let d = Duration::from_secs(opts.seconds);
    let mut report = String::new();
    write_header(&mut report, opts);
    eprintln!("xtask bench: connection storm, {} rounds", opts.rounds);
    let storm = connection_storm(binary, d, opts.rounds)?;
    storm.write(&mut report, opts.rounds);
    let (refused, aborted) = reset_storms(binary, d, &mut report)?;
    let ours = start_up(binary, &mut report)?;
    let rss = memory_section(binary, opts, &mut report)?;
    let measured = Measured {
        storm,
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

/// What the targets are checked against.
struct Measured {
    storm: ConnectionStorm,
    lost: u64,
    start_up: Duration,
    rss: Rss,
}

fn write_header(report: &mut String, opts: &Options) {
    let _ = writeln!(
        report,
        "# sshtrace benchmark\n\nOne run on this machine ({} CPUs, kernel {}); each measurement {} s.\n",
        num_cpus(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        opts.seconds
    );
}

/// Section 2: the refused and the aborted storm, traced.
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
        "\n## 2. Reset storms on a tracked port (sshtrace's default filter)\n\n\
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

/// Section 3: process start to attached, sshtrace beside bpftrace.
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
        "\n## 3. Start-up (process start to attached, median of 3)\n\n\
         | sshtrace | bpftrace | ratio |\n|---|---|---|\n| {} ms | {} ms | {:.2} |",
        ours.as_millis(),
        theirs.as_millis(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    Ok(ours)
}

/// Section 4: RSS idle, at the peak of both storms, and after.
fn memory_section(binary: &Path, opts: &Options, report: &mut String) -> Result<Rss> {
    eprintln!(
        "xtask bench: memory, {} s of both reset storms",
        opts.storm_seconds
    );
    let rss = memory(binary, Duration::from_secs(opts.storm_seconds))?;
    let _ = writeln!(
        report,
        "\n## 4. Memory (RSS)\n\nBoth reset storms at once for {} s; the peak is sampled every 250 ms, \
         \"after\" once the storm's last connections have settled (2 s).\n\n\
         | idle | peak during the storm | after |\n|---|---|---|\n| {} KiB | {} KiB | {} KiB |",
        opts.storm_seconds, rss.idle, rss.peak, rss.after
    );
    Ok(rss)
}

fn write_targets(report: &mut String, opts: &Options, m: &Measured) {
    let (storm, lost, ours, rss) = (&m.storm, m.lost, m.start_up, &m.rss);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let slowdown = storm.slowdown(Kind::Sshtrace);
    let _ = writeln!(
        report,
        "\n## Targets\n\n| target | measured | |\n|---|---|---|"
    );
    let _ = writeln!(
        report,
        "| < 2 % slowdown of the connection storm | {:.1} % (median of {} rounds) | {} |",
        slowdown.median,
        opts.rounds,
        verdict(slowdown.median < 2.0)
    );
    let _ = writeln!(
        report,
        "| no lost records in the reset storms | {lost} lost | {} |",
        verdict(lost == 0)
    );
    let _ = writeln!(
        report,
        "| attached in < 300 ms | {} ms | {} |",
        ours.as_millis(),
        verdict(ours < Duration::from_millis(300))
    );
    let _ = writeln!(
        report,
        "| RSS < 25 MiB, idle and after the storm | {} KiB, {} KiB (peak {} KiB) | {} |",
        rss.idle,
        rss.after,
        rss.peak,
        verdict(rss.idle.max(rss.after) < 25 * 1024)
    );
}

/// Connection rates per tracer and round, and each tracer's in-kernel cost.
struct ConnectionStorm {
    /// `rates[tracer][round]`, connections per second; tracers in [`Kind::ALL`]'s order.
    rates: Vec<Vec<f64>>,
    /// The tracer process's own CPU, % of one CPU, per round.
    tracer_cpu: Vec<Vec<f64>>,
    /// Program run time per connection and share of the storm's busy CPU time, for the
    /// tracers whose programs the kernel can count (sshtrace, bpftrace).
    kernel_cost: Vec<Option<KernelCost>>,
}

struct KernelCost {
    ns_per_connection: f64,
    runs_per_connection: f64,
    share_of_cpu: f64,
    /// Program name, runs per connection, ns per run; most time first.
    by_program: Vec<(String, f64, f64)>,
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl ConnectionStorm {
    /// Slowdown against the same round's untraced rate, in %, over the rounds.
    fn slowdown(&self, tracer: Kind) -> Spread {
        let i = index(tracer);
        let per_round: Vec<f64> = self.rates[i]
            .iter()
            .zip(&self.rates[0])
            .map(|(traced, none)| (1.0 - traced / none) * 100.0)
            .collect();
        spread(per_round)
    }

    fn write(&self, report: &mut String, rounds: usize) {
        let _ = writeln!(
            report,
            "## 1. Connection storm (loopback accept/close on a tracked port)\n\n\
             Orderly connections from {} client threads: the server closes first and clients \
             read its FIN. {rounds} rounds; each round measures every tracer once, in a rotated \
             order, and its slowdown is against that round's untraced rate, so that the \
             machine's drift between rounds cancels. Program time is counted by the kernel \
             (BPF_ENABLE_STATS) in a separate run of each tracer; the counting itself adds two \
             clock reads per program run.\n",
            num_cpus() * 8
        );
        let _ = writeln!(
            report,
            "| tracer | connections/s (median) | slowdown: median [min, max] | BPF program time per connection | share of the storm's CPU | tracer process CPU |\n|---|---|---|---|---|---|"
        );
        for tracer in Kind::ALL {
            let i = index(tracer);
            let rate = spread(self.rates[i].clone()).median;
            let slowdown = match tracer {
                Kind::None => "—".to_owned(),
                _ => {
                    let s = self.slowdown(tracer);
                    format!("{:.1} % [{:.1}, {:.1}]", s.median, s.min, s.max)
                }
            };
            let (per_conn, share) = match &self.kernel_cost[i] {
                Some(c) => (
                    format!(
                        "{:.0} ns ({:.1} runs)",
                        c.ns_per_connection, c.runs_per_connection
                    ),
                    format!("{:.1} %", c.share_of_cpu),
                ),
                None => ("—".into(), "—".into()),
            };
            let cpu = spread(self.tracer_cpu[i].clone()).median;
            let _ = writeln!(
                report,
                "| {} | {rate:.0} | {slowdown} | {per_conn} | {share} | {cpu:.1} % |",
                tracer.name()
            );
        }
        if let Some(cost) = &self.kernel_cost[index(Kind::Sshtrace)] {
            let _ = writeln!(
                report,
                "\nWhere sshtrace's program time goes (counting included):\n\n\
                 | program | runs per connection | ns per run | ns per connection |\n|---|---|---|---|"
            );
            for (name, runs, ns) in &cost.by_program {
                let _ = writeln!(
                    report,
                    "| {name} | {runs:.2} | {ns:.0} | {:.0} |",
                    runs * ns
                );
            }
        }
    }
}

fn index(tracer: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == tracer)
        .expect("a known tracer")
}

fn connection_storm(binary: &Path, d: Duration, rounds: usize) -> Result<ConnectionStorm> {
    let n = Kind::ALL.len();
    let mut storm = ConnectionStorm {
        rates: vec![Vec::new(); n],
        tracer_cpu: vec![Vec::new(); n],
        kernel_cost: Vec::new(),
    };
    for round in 0..rounds {
        for k in 0..n {
            let tracer = Kind::ALL[(round + k) % n];
            let running = tracer.start(binary)?;
            let cpu_before = running
                .as_ref()
                .map(|t| usage::process_cpu_seconds(t.pid()));
            let connections = load::orderly(d)?;
            let cpu = match (&running, cpu_before) {
                (Some(t), Some(before)) => usage::process_cpu_seconds(t.pid()) - before,
                _ => 0.0,
            };
            if let Some(t) = running {
                t.stop()?;
            }
            let i = index(tracer);
            storm.rates[i].push(connections as f64 / d.as_secs_f64());
            storm.tracer_cpu[i].push(cpu / d.as_secs_f64() * 100.0);
        }
    }
    for tracer in Kind::ALL {
        storm.kernel_cost.push(match tracer {
            Kind::Sshtrace | Kind::Bpftrace => Some(kernel_cost(binary, tracer, d)?),
            _ => None,
        });
    }
    Ok(storm)
}

/// The tracer's BPF programs' run time during a storm, per connection and as a share of the
/// machine's busy CPU time.
fn kernel_cost(binary: &Path, tracer: Kind, d: Duration) -> Result<KernelCost> {
    let running = tracer.start(binary)?.context("a tracer")?;
    let programs = usage::programs_of(running.pid());
    if programs.is_empty() {
        bail!("{} holds no BPF programs", tracer.name());
    }
    let stats = ProgramStats::enable()?;
    let (before, busy_before) = (usage::program_time(&programs), usage::busy_cpu_seconds());
    let connections = load::orderly(d)?;
    let after = usage::program_time(&programs);
    let busy = usage::busy_cpu_seconds() - busy_before;
    drop(stats);
    running.stop()?;
    let connections = connections.max(1) as f64;
    let mut by_program: Vec<(String, ProgramTime)> = after
        .into_iter()
        .map(|(name, t)| {
            let earlier = before.get(&name).copied().unwrap_or_default();
            (name, t - earlier)
        })
        .filter(|(_, t)| t.runs > 0)
        .collect();
    by_program.sort_by_key(|(_, t)| std::cmp::Reverse(t.run_ns));
    let spent: ProgramTime = by_program.iter().map(|(_, t)| *t).sum();
    Ok(KernelCost {
        ns_per_connection: spent.run_ns as f64 / connections,
        runs_per_connection: spent.runs as f64 / connections,
        share_of_cpu: spent.run_ns as f64 / 1e9 / busy.max(f64::EPSILON) * 100.0,
        by_program: by_program
            .into_iter()
            .map(|(name, t)| {
                (
                    name,
                    t.runs as f64 / connections,
                    t.run_ns as f64 / t.runs as f64,
                )
            })
            .collect(),
    })
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
}

/// RSS of sshtrace tracing both reset storms' ports: idle, at its highest during `storm_for`
/// of both storms at once, and after.
fn memory(binary: &Path, storm_for: Duration) -> Result<Rss> {
    let (tracer, _) = tracers::sshtrace(
        binary,
        &[
            "--port",
            port(load::CLOSED),
            "--port",
            port(load::ABORTING),
            "--summary-only",
        ],
    )?;
    let pid = tracer.pid();
    thread::sleep(Duration::from_secs(1));
    let idle = usage::rss_kib(pid);
    let refusing = thread::spawn(move || load::refused(storm_for));
    let aborting = thread::spawn(move || load::aborted(storm_for));
    let mut peak = idle;
    while !(refusing.is_finished() && aborting.is_finished()) {
        peak = peak.max(usage::rss_kib(pid));
        thread::sleep(Duration::from_millis(250));
    }
    let _ = refusing.join();
    let _ = aborting.join();
    thread::sleep(Duration::from_secs(2));
    let after = usage::rss_kib(pid);
    tracer.stop()?;
    Ok(Rss { idle, peak, after })
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
