//! One workload measured under several tracers, side by side: rotated rounds for the rates,
//! and the kernel's own accounting (BPF_ENABLE_STATS) of the tracers' programs.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{
    load::Workload,
    tracers::{self, Kind},
    usage::{self, ProgramStats, ProgramTime},
};
use std::time::Duration;

/// Rates per tracer and round, and each tracer's in-kernel cost.
pub struct Comparison {
    /// The tracers, the first being `Kind::None`.
    pub tracers: Vec<Kind>,
    /// `rates[tracer][round]`, units per second.
    pub rates: Vec<Vec<f64>>,
    /// The tracer process's own CPU, % of one CPU, per round.
    pub tracer_cpu: Vec<Vec<f64>>,
    /// Program time per unit, for the tracers whose programs the kernel can count.
    pub kernel_cost: Vec<Option<KernelCost>>,
}

pub struct KernelCost {
    pub ns_per_unit: f64,
    pub runs_per_unit: f64,
    pub share_of_cpu: f64,
    /// Program name, runs per unit, ns per run; most time first.
    pub by_program: Vec<(String, f64, f64)>,
}

impl KernelCost {
    /// The time per unit less what counting itself adds to each run.
    pub fn net_ns_per_unit(&self, counting_ns_per_run: f64) -> f64 {
        (self.ns_per_unit - self.runs_per_unit * counting_ns_per_run).max(0.0)
    }
}

pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Comparison {
    /// `rounds` rounds, each measuring every tracer once in a rotated order, so that the
    /// machine's drift between rounds cancels; then the kernel's accounting in a run of each
    /// tracer whose programs it counts.
    pub fn measure(
        binary: &Path,
        workload: Workload,
        tracers: &[Kind],
        d: Duration,
        rounds: usize,
    ) -> Result<Self> {
        let n = tracers.len();
        let mut c = Self {
            tracers: tracers.to_vec(),
            rates: vec![Vec::new(); n],
            tracer_cpu: vec![Vec::new(); n],
            kernel_cost: Vec::new(),
        };
        for round in 0..rounds {
            for k in 0..n {
                let i = (round + k) % n;
                let (rate, cpu) = rate_under(binary, tracers[i], workload, d)?;
                c.rates[i].push(rate);
                c.tracer_cpu[i].push(cpu);
            }
        }
        for &tracer in tracers {
            c.kernel_cost.push(match tracer {
                Kind::Sshtrace | Kind::Bpftrace => Some(kernel_cost(binary, tracer, workload, d)?),
                _ => None,
            });
        }
        Ok(c)
    }

    fn index(&self, tracer: Kind) -> usize {
        self.tracers
            .iter()
            .position(|k| *k == tracer)
            .expect("a measured tracer")
    }

    /// Slowdown against the same round's untraced rate, in %, over the rounds.
    pub fn slowdown(&self, tracer: Kind) -> Spread {
        let per_round: Vec<f64> = self.rates[self.index(tracer)]
            .iter()
            .zip(&self.rates[0])
            .map(|(traced, none)| (1.0 - traced / none) * 100.0)
            .collect();
        spread(per_round)
    }

    pub fn rate(&self, tracer: Kind) -> f64 {
        spread(self.rates[self.index(tracer)].clone()).median
    }

    pub fn cpu(&self, tracer: Kind) -> f64 {
        spread(self.tracer_cpu[self.index(tracer)].clone()).median
    }

    pub fn cost(&self, tracer: Kind) -> Option<&KernelCost> {
        self.kernel_cost[self.index(tracer)].as_ref()
    }
}

/// The workload's rate with `tracer` running, and the tracer's CPU (% of one CPU).
fn rate_under(binary: &Path, tracer: Kind, workload: Workload, d: Duration) -> Result<(f64, f64)> {
    let running = tracer.start(binary)?;
    let cpu_before = running
        .as_ref()
        .map(|t| usage::process_cpu_seconds(t.pid()));
    let units = workload.run(d)?;
    let cpu = match (&running, cpu_before) {
        (Some(t), Some(before)) => usage::process_cpu_seconds(t.pid()) - before,
        _ => 0.0,
    };
    if let Some(t) = running {
        t.stop()?;
    }
    let secs = d.as_secs_f64();
    Ok((units as f64 / secs, cpu / secs * 100.0))
}

/// The tracer's BPF programs' run time during the workload, per unit and as a share of the
/// machine's busy CPU time.
fn kernel_cost(binary: &Path, tracer: Kind, workload: Workload, d: Duration) -> Result<KernelCost> {
    let running = tracer.start(binary)?.context("a tracer")?;
    let programs = usage::programs_of(running.pid());
    if programs.is_empty() {
        bail!("{} holds no BPF programs", tracer.name());
    }
    let (by_program, units, busy) = counted(&programs, || workload.run(d))?;
    running.stop()?;
    let units = units.max(1) as f64;
    let spent: ProgramTime = by_program.iter().map(|(_, t)| *t).sum();
    Ok(KernelCost {
        ns_per_unit: spent.run_ns as f64 / units,
        runs_per_unit: spent.runs as f64 / units,
        share_of_cpu: spent.run_ns as f64 / 1e9 / busy.max(f64::EPSILON) * 100.0,
        by_program: by_program
            .into_iter()
            .map(|(name, t)| (name, t.runs as f64 / units, t.run_ns as f64 / t.runs as f64))
            .collect(),
    })
}

/// Each program's time by name, most first.
type ByProgram = Vec<(String, ProgramTime)>;

/// Runs `work` with program statistics on: each of `programs`' time, the units `work` did and
/// the machine's busy CPU seconds meanwhile.
fn counted(
    programs: &std::collections::BTreeSet<u32>,
    work: impl FnOnce() -> Result<u64>,
) -> Result<(ByProgram, u64, f64)> {
    let stats = ProgramStats::enable()?;
    let (before, busy_before) = (usage::program_time(programs), usage::busy_cpu_seconds());
    let units = work()?;
    let after = usage::program_time(programs);
    let busy = usage::busy_cpu_seconds() - busy_before;
    drop(stats);
    let mut by_program: ByProgram = after
        .into_iter()
        .map(|(name, t)| {
            let earlier = before.get(&name).copied().unwrap_or_default();
            (name, t - earlier)
        })
        .filter(|(_, t)| t.runs > 0)
        .collect();
    by_program.sort_by_key(|(_, t)| std::cmp::Reverse(t.run_ns));
    Ok((by_program, units, busy))
}

/// What counting adds to each program run: the run time of an empty bpftrace program on
/// socket state changes during the untracked storm (two clock reads and the program's entry).
pub fn counting_overhead(d: Duration) -> Result<f64> {
    let (running, _) = tracers::bpftrace_with("tracepoint:sock:inet_sock_set_state { }")?;
    let programs = usage::programs_of(running.pid());
    let (by_program, _, _) = counted(&programs, || Workload::UntrackedStorm.run(d))?;
    running.stop()?;
    let t: ProgramTime = by_program.iter().map(|(_, t)| *t).sum();
    if t.runs == 0 {
        bail!("the empty bpftrace program never ran");
    }
    Ok(t.run_ns as f64 / t.runs as f64)
}

pub fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}
