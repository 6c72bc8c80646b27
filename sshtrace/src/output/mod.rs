//! Where verdicts go: stdout, files, collectors (TCP/UDP/unix JSON Lines, RFC 5424 syslog,
//! journald). The event path hands each record to every output's queue and never waits; one
//! task per output writes it out. Each format escapes kernel strings its own way.

pub mod file;
pub mod journald;
pub mod json;
pub mod record;
pub mod severity;
pub mod sink;
pub mod summary;
pub mod syslog;
pub mod text;
pub mod url;

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

pub use record::{KernelLoss, LossRecord, NotKept, Record};
use sink::{LossContext, Shared};
use tokio::{sync::watch, task::JoinHandle};
pub use url::{SinkSpec, StdoutView};

use crate::clock::Clock;

/// What one output was offered, delivered and dropped so far (its sink's own counters).
pub struct OutputCounts {
    pub name: String,
    pub produced: u64,
    pub delivered: u64,
    pub dropped: u64,
}

pub struct Outputs {
    sinks: Vec<Arc<Shared>>,
    tasks: Vec<JoinHandle<()>>,
    loss: Arc<LossContext>,
    stop: watch::Sender<bool>,
    /// Turns true when standard output's reader is gone.
    stdout_closed: Arc<watch::Sender<bool>>,
}

impl Outputs {
    /// Starts one writer task per output (inside the tokio runtime).
    pub fn start(specs: Vec<SinkSpec>, host: String, clock: Clock) -> Self {
        let loss = Arc::new(LossContext {
            host,
            clock,
            kernel_lost: Default::default(),
            kernel_skipped_runs: Default::default(),
            not_kept: Default::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let stdout_closed = Arc::new(watch::Sender::new(false));
        let sinks: Vec<Arc<Shared>> = specs
            .into_iter()
            .map(|s| Arc::new(Shared::new(s)))
            .collect();
        let tasks = sinks
            .iter()
            .map(|s| {
                tokio::spawn(sink::run(
                    s.clone(),
                    loss.clone(),
                    stopped.clone(),
                    stdout_closed.clone(),
                ))
            })
            .collect();
        Self {
            sinks,
            tasks,
            loss,
            stop,
            stdout_closed,
        }
    }

    /// SIGHUP: file outputs close their file and open their path again, as after logrotate
    /// renamed it away (the next records go to the new file). Nothing else changes.
    pub fn reopen(&self) {
        for sink in &self.sinks {
            sink.reopen();
        }
    }

    /// Turns true when standard output is an output and its reader went away (`sshtrace |
    /// head -1`): then sshtrace stops, as a Unix filter does.
    pub fn stdout_closed(&self) -> watch::Receiver<bool> {
        self.stdout_closed.subscribe()
    }

    pub fn is_stdout_closed(&self) -> bool {
        *self.stdout_closed.borrow()
    }

    pub fn publish(&self, record: Record) {
        for sink in &self.sinks {
            sink.push(&record);
        }
    }

    /// Each output's counts as they stand.
    pub fn counts(&self) -> Vec<OutputCounts> {
        self.sinks
            .iter()
            .map(|s| OutputCounts {
                name: s.spec.name.clone(),
                produced: s.counters.produced.load(Relaxed),
                delivered: s.counters.delivered.load(Relaxed),
                dropped: s.counters.dropped.load(Relaxed),
            })
            .collect()
    }

    /// The status line of terminal outputs.
    pub fn status(&self, text: String) {
        for sink in &self.sinks {
            sink.set_status(text.clone());
        }
    }

    /// Kernel events lost and program runs skipped so far; an increase is also published as a
    /// loss record.
    pub fn kernel_lost(&self, total: KernelLoss) {
        let lost_before = self.loss.kernel_lost.swap(total.lost, Relaxed);
        let skipped_before = self
            .loss
            .kernel_skipped_runs
            .swap(total.skipped_runs, Relaxed);
        let not_kept_before = std::mem::replace(
            &mut *self.loss.not_kept.lock().expect("not poisoned"),
            total.not_kept,
        );
        if total.lost > lost_before
            || total.skipped_runs > skipped_before
            || total.not_kept != not_kept_before
        {
            let ts = self.loss.clock.rfc3339(Clock::monotonic_now_ns());
            self.publish(Record::Loss(LossRecord::new(
                ts,
                self.loss.host.clone(),
                None,
                0,
                0,
                total,
            )));
        }
    }

    /// Lets the outputs drain for up to `grace`, then reports what each delivered and dropped.
    /// An output failing at that point is not retried: what it holds is undelivered.
    pub async fn finish(self, grace: Duration) -> Vec<String> {
        let _ = self.stop.send(true);
        let all = futures_join(self.tasks);
        let _ = tokio::time::timeout(grace, all).await;
        self.sinks
            .iter()
            .map(|s| {
                let c = &s.counters;
                format!(
                    "output {}: {} produced, {} delivered, {} dropped, {} undelivered at exit",
                    s.spec.name,
                    c.produced.load(Relaxed),
                    c.delivered.load(Relaxed),
                    c.dropped.load(Relaxed),
                    s.pending()
                )
            })
            .collect()
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}
