//! What outputs carry: verdicts, and in-band reports of what was lost.

use serde::Serialize;

use crate::verdict::{Verdict, SCHEMA};

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    // Records are built once and shared by every output through an Arc: size does not matter.
    Verdict(Box<Verdict>),
    Loss(LossRecord),
}

/// `{"type":"loss", …}`: records this output dropped while its destination was slow or away,
/// or kernel events lost because the ring buffer was full.
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
}

impl LossRecord {
    pub fn new(
        ts: String,
        host: String,
        sink: Option<String>,
        dropped: u64,
        dropped_total: u64,
        lost_kernel_events: u64,
    ) -> Self {
        Self {
            schema: SCHEMA,
            record_type: "loss",
            ts,
            host,
            sink,
            dropped,
            dropped_total,
            lost_kernel_events,
        }
    }

    /// One plain sentence, for text and syslog.
    pub fn summary(&self) -> String {
        match &self.sink {
            Some(sink) => format!(
                "sshtrace dropped {} record(s) for {sink} while it was slow or unreachable ({} in total); {} kernel event(s) lost so far",
                self.dropped, self.dropped_total, self.lost_kernel_events
            ),
            None => format!("sshtrace lost {} kernel event(s): the ring buffer was full", self.lost_kernel_events),
        }
    }
}
