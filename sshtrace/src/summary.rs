//! The report printed when tracing stops: verdicts grouped by cause with counts, first and
//! last seen, top clients and sshd pids, and the hint — what a user pastes into the incident
//! channel.

use std::{collections::BTreeMap, fmt::Write};

use serde::Serialize;
use serde_json::json;

use crate::{escape, output::KernelLoss, verdict::Verdict};

#[derive(Default, Serialize)]
struct CauseStats {
    count: u64,
    first: String,
    last: String,
    clients: BTreeMap<String, u64>,
    sshd_pids: BTreeMap<u32, u64>,
    hint: String,
}

#[derive(Default)]
pub struct Summary {
    causes: BTreeMap<String, CauseStats>,
}

/// How many clients and pids the report names per cause.
const TOP: usize = 3;

fn top<K: Clone + Ord>(counts: &BTreeMap<K, u64>) -> Vec<(K, u64)> {
    let mut all: Vec<(K, u64)> = counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(TOP);
    all
}

impl Summary {
    pub fn add(&mut self, v: &Verdict) {
        let s = self.causes.entry(v.cause.as_str().to_owned()).or_default();
        // Refusals the kernel aggregated count as the connections they were.
        let repeated = v
            .details
            .get("repeated")
            .and_then(|r| r.as_u64())
            .unwrap_or(0);
        s.count += 1 + repeated;
        if s.first.is_empty() {
            s.first = v.ts.clone();
        }
        s.last = v.ts.clone();
        *s.clients.entry(v.conn.remote_addr.clone()).or_default() += 1;
        if let Some(sshd) = &v.sshd {
            *s.sshd_pids.entry(sshd.pid).or_default() += 1;
        }
        s.hint = v.hint.clone();
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
        if self.causes.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "{:<18} {:>6}  {:<12} {:<12}  top clients / sshd pids",
            "cause", "count", "first", "last"
        );
        for (cause, s) in self.ordered() {
            let clients: Vec<String> = top(&s.clients)
                .iter()
                .map(|(c, n)| format!("{c} ({n})"))
                .collect();
            let pids: Vec<String> = top(&s.sshd_pids)
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
                    "top_clients": top(&s.clients).into_iter().map(|(c, n)| json!({"addr": c, "count": n})).collect::<Vec<_>>(),
                    "top_sshd_pids": top(&s.sshd_pids).into_iter().map(|(p, n)| json!({"pid": p, "count": n})).collect::<Vec<_>>(),
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
            "causes": causes,
        })
        .to_string()
    }
}
