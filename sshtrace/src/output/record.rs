//! What outputs carry: verdicts, and in-band reports of what was lost.

use serde::Serialize;

use crate::verdict::{Verdict, SCHEMA};

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    // Records are built once and shared by every output through an Arc: size does not matter.
    Verdict(Box<Verdict>),
    Loss(LossRecord),
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
