//! What outputs carry: verdicts, and in-band reports of what was lost.

use serde::Serialize;

use crate::verdict::{Verdict, SCHEMA};

#[derive(Clone, Debug, PartialEq)]
// Records are built once and shared by every output through an Arc: size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    Verdict(Box<Verdict>),
    Loss(LossRecord),
}

/// Items past their bounds, counted instead of kept (see docs/events.md, summary record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NotKept {
    /// Connections dropped unjudged from a full connection table.
    pub connections_evicted: u64,
    /// Processes that could not be followed: the kernel's tracked-process map was full.
    pub untracked_processes: u64,
    /// Network namespaces `--container`/`--host-only` should report that the kernel's map
    /// could not take.
    pub untracked_network_namespaces: u64,
    /// Per-client storm counters the kernel's LRU map evicted (a storm from more clients than
    /// it holds): counts they held that no record carried yet are gone.
    pub storm_counters_evicted: u64,
    /// Signals and LSM denials beyond the latest kept per process.
    pub signals: u64,
    pub lsm_denials: u64,
    /// Dropped segments beyond those kept per connection (counted on its verdict), and those
    /// the kernel counted after the last record for their client when sshtrace stopped.
    pub firewall_drops: u64,
    pub firewall_drops_held_back: u64,
    /// Audit records the kernel could not queue for sshtrace (its buffer full in a storm).
    pub audit_records_lost: u64,
    /// `ssh` sockets `sshtrace client` could not follow: the kernel's socket map was full.
    pub untracked_client_sockets: u64,
}

impl std::fmt::Display for NotKept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections evicted, {} processes and {} network namespaces untracked (map full), {} signals, {} LSM denials, {} firewall drops beyond those kept, {} firewall drops held back, {} storm counters evicted, {} audit records lost, {} client sockets untracked (map full)",
            self.connections_evicted,
            self.untracked_processes,
            self.untracked_network_namespaces,
            self.signals,
            self.lsm_denials,
            self.firewall_drops,
            self.firewall_drops_held_back,
            self.storm_counters_evicted,
            self.audit_records_lost,
            self.untracked_client_sockets
        )
    }
}

/// Kernel events sshtrace never saw, as the kernel counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLoss {
    /// Records the ring buffer had no room for (counted by the programs).
    pub lost: u64,
    /// Runs of sshtrace's programs the kernel skipped, the program being already running on
    /// that CPU (`recursion_misses`): what they would have seen is unknown, perhaps nothing
    /// sshtrace tracks.
    pub skipped_runs: u64,
    /// What went past a bound and was counted instead of kept.
    pub not_kept: NotKept,
}

/// `{"type":"loss", …}`: records this output dropped while its destination was slow or away,
/// or kernel events lost (ring buffer full) or program runs skipped by the kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LossRecord {
    pub schema: &'static str,
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub ts: String,
    pub host: String,
    /// The output that dropped records; null for kernel events lost before any output.
    pub sink: Option<String>,
    /// Dropped since the previous loss record of this output.
    pub dropped: u64,
    /// Dropped by this output since sshtrace started.
    pub dropped_total: u64,
    /// Kernel events lost since sshtrace started (ring buffer full), as counted in the kernel.
    pub lost_kernel_events: u64,
    /// Program runs the kernel skipped since sshtrace started (see [`KernelLoss`]).
    pub skipped_program_runs: u64,
    /// Items past sshtrace's bounds since it started, counted instead of kept.
    pub not_kept: NotKept,
}

impl LossRecord {
    pub fn new(
        ts: String,
        host: String,
        sink: Option<String>,
        dropped: u64,
        dropped_total: u64,
        kernel: KernelLoss,
    ) -> Self {
        Self {
            schema: SCHEMA,
            record_type: "loss",
            ts,
            host,
            sink,
            dropped,
            dropped_total,
            lost_kernel_events: kernel.lost,
            skipped_program_runs: kernel.skipped_runs,
            not_kept: kernel.not_kept,
        }
    }

    /// One plain sentence, for text and syslog.
    pub fn summary(&self) -> String {
        match &self.sink {
            Some(sink) => format!(
                "sshtrace dropped {} record(s) for {sink} while it was slow or unreachable ({} in total); {} kernel event(s) lost and {} program run(s) skipped so far",
                self.dropped, self.dropped_total, self.lost_kernel_events, self.skipped_program_runs
            ),
            None => format!(
                "sshtrace lost {} kernel event(s) (ring buffer full); the kernel skipped {} run(s) of its programs (already running on that CPU)",
                self.lost_kernel_events, self.skipped_program_runs
            ),
        }
    }
}
