//! The report printed when tracing stops: verdicts grouped by cause with counts, first and
//! last seen, top clients and sshd pids, and the hint — what a user pastes into the incident
//! channel.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
    hash::Hash,
};

use serde_json::json;

use crate::{
    escape,
    output::{KernelLoss, NotKept},
    verdict::Verdict,
};

#[derive(Default)]
struct CauseStats {
    count: u64,
    first: String,
    last: String,
    clients: HeavyHitters<String>,
    sshd_pids: HeavyHitters<u32>,
    hint: String,
}

/// Counts per key for at most [`HeavyHitters::CAPACITY`] keys, so that a storm from a million
/// addresses costs no more memory than one from three (the Space-Saving algorithm): past
/// capacity, a new key takes the place of the least counted one and inherits its count. Every
/// key counted more than total/CAPACITY times is kept, and its count is at most that much too
/// high; exact while there are fewer keys than places.
struct HeavyHitters<K> {
    counts: HashMap<K, u64>,
}

impl<K> Default for HeavyHitters<K> {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> HeavyHitters<K> {
    const CAPACITY: usize = 64;

    fn add(&mut self, key: K) {
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
            return;
        }
        let mut inherited = 0;
        if self.counts.len() >= Self::CAPACITY {
            let (least, n) = self
                .counts
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(k, n)| (k.clone(), *n))
                .expect("full");
            self.counts.remove(&least);
            inherited = n;
        }
        self.counts.insert(key, inherited + 1);
    }

    /// The most counted keys, most first.
    fn top(&self) -> Vec<(K, u64)> {
        let mut all: Vec<(K, u64)> = self.counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(TOP);
        all
    }
}

#[derive(Default)]
pub struct Summary {
    causes: BTreeMap<String, CauseStats>,
    /// Refusals the kernel counted after the last record for their client: never judged.
    held_back_refusals: u64,
    /// Resets answering late segments of connections already judged: part of those verdicts.
    late_resets: u64,
    not_kept: NotKept,
}

/// How many clients and pids the report names per cause.
const TOP: usize = 3;

impl Summary {
    pub fn add(&mut self, v: &Verdict) {
        let s = self.causes.entry(v.cause.as_str().to_owned()).or_default();
        // Refusals the kernel aggregated count as the connections they were.
        s.count += v.connections();
        if s.first.is_empty() {
            s.first = v.ts.clone();
        }
        s.last = v.ts.clone();
        s.clients.add(v.conn.remote_addr.clone());
        if let Some(sshd) = &v.sshd {
            s.sshd_pids.add(sshd.pid);
        }
        s.hint = v.hint.clone();
    }

    pub fn set_held_back_refusals(&mut self, count: u64) {
        self.held_back_refusals = count;
    }

    pub fn set_late_resets(&mut self, count: u64) {
        self.late_resets = count;
    }

    pub fn set_not_kept(&mut self, not_kept: NotKept) {
        self.not_kept = not_kept;
    }

    pub fn total(&self) -> u64 {
        self.causes.values().map(|s| s.count).sum()
    }

    /// Most frequent cause first.
    fn ordered(&self) -> Vec<(&String, &CauseStats)> {
        let mut all: Vec<_> = self.causes.iter().collect();
        all.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        all
    }

    pub fn render_text(&self, kernel: KernelLoss) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nsshtrace summary: {} verdict(s), {} kernel event(s) lost, {} program run(s) skipped by the kernel",
            self.total(),
            kernel.lost,
            kernel.skipped_runs
        );
        if self.held_back_refusals > 0 {
            let _ = writeln!(
                out,
                "{} reset(s) without a socket counted in the kernel after their client's last record (not judged)",
                self.held_back_refusals
            );
        }
        if self.late_resets > 0 {
            let _ = writeln!(
                out,
                "{} reset(s) answered late segments of connections already judged (part of those verdicts)",
                self.late_resets
            );
        }
        if self.causes.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "{:<18} {:>6}  {:<12} {:<12}  top clients / sshd pids",
            "cause", "count", "first", "last"
        );
        for (cause, s) in self.ordered() {
            let clients: Vec<String> = s
                .clients
                .top()
                .iter()
                .map(|(c, n)| format!("{c} ({n})"))
                .collect();
            let pids: Vec<String> = s
                .sshd_pids
                .top()
                .iter()
                .map(|(p, n)| format!("{p} ({n})"))
                .collect();
            let _ = writeln!(
                out,
                "{cause:<18} {:>6}  {:<12} {:<12}  {}{}",
                s.count,
                s.first.get(11..23).unwrap_or(&s.first),
                s.last.get(11..23).unwrap_or(&s.last),
                clients.join(", "),
                if pids.is_empty() {
                    String::new()
                } else {
                    format!(" / sshd {}", pids.join(", "))
                }
            );
            let _ = writeln!(out, "{:<18} hint: {}", "", escape::text(&s.hint));
        }
        out
    }

    pub fn render_json(&self, host: &str, kernel: KernelLoss) -> String {
        let causes: Vec<_> = self
            .ordered()
            .into_iter()
            .map(|(cause, s)| {
                json!({
                    "cause": cause,
                    "count": s.count,
                    "first": s.first,
                    "last": s.last,
                    "top_clients": s.clients.top().into_iter().map(|(c, n)| json!({"addr": c, "count": n})).collect::<Vec<_>>(),
                    "top_sshd_pids": s.sshd_pids.top().into_iter().map(|(p, n)| json!({"pid": p, "count": n})).collect::<Vec<_>>(),
                    "hint": s.hint,
                })
            })
            .collect();
        json!({
            "schema": crate::verdict::SCHEMA,
            "type": "summary",
            "host": host,
            "verdicts": self.total(),
            "lost_kernel_events": kernel.lost,
            "skipped_program_runs": kernel.skipped_runs,
            "held_back_refusals": self.held_back_refusals,
            "late_resets_after_verdict": self.late_resets,
            "not_kept": self.not_kept,
            "causes": causes,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_are_exact_below_capacity() {
        let mut h = HeavyHitters::default();
        for key in ["b", "a", "b", "c", "b", "a"] {
            h.add(key.to_owned());
        }
        assert_eq!(h.top(), [("b".into(), 3), ("a".into(), 2), ("c".into(), 1)]);
    }

    #[test]
    fn a_storm_of_distinct_clients_stays_bounded_and_keeps_the_heavy_one() {
        let mut h = HeavyHitters::default();
        for i in 0..100_000u32 {
            h.add(format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255));
            if i % 10 == 0 {
                h.add("203.0.113.5".to_owned());
            }
        }
        assert!(h.counts.len() <= HeavyHitters::<String>::CAPACITY);
        let (first, n) = h.top()[0].clone();
        assert_eq!(first, "203.0.113.5");
        // 10 000 true hits, over-counted by at most total / capacity.
        assert!((10_000..=10_000 + 110_000 / 64).contains(&n), "{n}");
    }

    #[test]
    fn refusals_held_back_in_the_kernel_are_shown_not_judged() {
        let mut summary = Summary::default();
        summary.set_held_back_refusals(42);
        let loss = KernelLoss::default();
        assert_eq!(summary.total(), 0);
        assert!(summary.render_text(loss).contains(
            "42 reset(s) without a socket counted in the kernel after their client's last record"
        ));
        let json: serde_json::Value =
            serde_json::from_str(&summary.render_json("h", loss)).unwrap();
        assert_eq!(json["held_back_refusals"], 42);
        assert_eq!(json["verdicts"], 0);
    }
}
