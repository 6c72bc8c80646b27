//! What a measurement cost, as the kernel counts it: a process's CPU time and memory, the
//! machine's busy CPU time, and the run time of a process's BPF programs (BPF_ENABLE_STATS).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
};

use anyhow::{Context, Result};
use aya::{
    programs::loaded_programs,
    sys::{enable_stats, Stats},
};

/// Clock ticks per second of /proc times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's user + system CPU time, in seconds.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th.
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum::<u64>() as f64 / TICKS_PER_SECOND
}

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The highest RSS the process ever had (the kernel's own high-water mark).
pub fn rss_high_water_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The machine's busy CPU time so far (user, nice, system, irq, softirq of every CPU; not
/// idle, iowait or steal), in seconds.
pub fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(all) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let t: Vec<u64> = all
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| t.get(i)).sum();
    busy as f64 / TICKS_PER_SECOND
}

/// The BPF programs a process holds, by id (from its descriptors).
pub fn programs_of(pid: u32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids
}

/// Run time and run count summed over `programs`.
#[derive(Clone, Copy, Default)]
pub struct ProgramTime {
    pub run_ns: u64,
    pub runs: u64,
}

impl std::ops::Sub for ProgramTime {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// Run time and run count of each of `programs`, by program name.
pub fn program_time(programs: &BTreeSet<u32>) -> BTreeMap<String, ProgramTime> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| programs.contains(&p.id()))
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_owned();
            let time = ProgramTime {
                run_ns: p.run_time().as_nanos() as u64,
                runs: p.run_count(),
            };
            (name, time)
        })
        .fold(BTreeMap::new(), |mut all, (name, time)| {
            let sum = all.entry(name).or_insert_with(ProgramTime::default);
            *sum = *sum + time;
            all
        })
}

impl std::ops::Add for ProgramTime {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            run_ns: self.run_ns + other.run_ns,
            runs: self.runs + other.runs,
        }
    }
}

impl std::iter::Sum for ProgramTime {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

/// Program run-time statistics, counted while this is held (and only then: counting costs
/// two clock reads per program run).
pub struct ProgramStats(#[allow(dead_code, reason = "held for its effect")] OwnedFd);

impl ProgramStats {
    pub fn enable() -> Result<Self> {
        Ok(Self(
            enable_stats(Stats::RunTime).context("cannot enable BPF run-time statistics")?,
        ))
    }
}
