//! Prometheus metrics, opt-in (`--metrics ADDR:PORT`, docs/metrics.md). Verdicts are counted
//! by cause, port and container as they are published ([`verdicts`], bounded); everything
//! else is a number the tracer already keeps — kernel events read, lost and undecodable,
//! program runs skipped, what went past a bound, each output's records, what it follows —
//! mirrored here once a second from where it is kept, never counted a second time. A thread
//! of its own serves the page ([`server`]): no scrape, and no client that connects and
//! stalls, takes the event loop's time.

mod server;
mod verdicts;

use std::sync::atomic::Ordering::Relaxed;

use anyhow::Result;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

pub use server::{bind, parse_address};
use verdicts::VerdictSeries;

use crate::{
    output::{KernelLoss, OutputCounts},
    verdict::Verdict,
};

/// What the tracer keeps, as it stands now.
pub struct Totals {
    pub kernel_events_read: u64,
    pub kernel_events_undecodable: u64,
    pub loss: KernelLoss,
    pub listeners: usize,
    pub connections_followed: usize,
    pub outputs: Vec<OutputCounts>,
}

/// The tracer's side of the metrics: verdicts counted, totals mirrored.
pub struct Metrics {
    verdicts: VerdictSeries,
    kernel_events_read: Counter,
    kernel_events_lost: Counter,
    kernel_events_undecodable: Counter,
    program_runs_skipped: Counter,
    not_kept: Family<ItemLabel, Counter>,
    output_records_produced: Family<OutputLabel, Counter>,
    output_records_delivered: Family<OutputLabel, Counter>,
    output_records_dropped: Family<OutputLabel, Counter>,
    listeners: Gauge,
    connections_followed: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabel {
    item: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabel {
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// What the server thread measures itself.
struct ServerMetrics {
    resident_memory: Gauge,
    connections_dropped: Family<server::DropReason, Counter>,
}

impl Metrics {
    /// Serves the metrics on `listener` (bound at start-up, see [`bind`]) from a thread of
    /// their own.
    pub fn start(listener: std::net::TcpListener) -> Result<Self> {
        let (registry, metrics, server) = registry();
        server::spawn(listener, registry, server)?;
        Ok(metrics)
    }

    /// A verdict just published.
    pub fn count_verdict(&mut self, v: &Verdict) {
        self.verdicts.count(
            v.cause,
            v.conn.local_port,
            v.container.as_ref(),
            v.connections(),
        );
    }

    pub fn mirror(&self, t: &Totals) {
        mirror(&self.kernel_events_read, t.kernel_events_read);
        mirror(&self.kernel_events_lost, t.loss.lost);
        mirror(&self.kernel_events_undecodable, t.kernel_events_undecodable);
        mirror(&self.program_runs_skipped, t.loss.skipped_runs);
        if let Ok(serde_json::Value::Object(items)) = serde_json::to_value(t.loss.not_kept) {
            for (item, count) in items {
                let count = count.as_u64().unwrap_or(0);
                mirror(&self.not_kept.get_or_create(&ItemLabel { item }), count);
            }
        }
        for o in &t.outputs {
            let label = OutputLabel {
                output: crate::escape::text(&o.name),
            };
            mirror(
                &self.output_records_produced.get_or_create(&label),
                o.produced,
            );
            mirror(
                &self.output_records_delivered.get_or_create(&label),
                o.delivered,
            );
            mirror(
                &self.output_records_dropped.get_or_create(&label),
                o.dropped,
            );
        }
        self.listeners.set(gauge_value(t.listeners));
        self.connections_followed
            .set(gauge_value(t.connections_followed));
    }
}

/// A total kept elsewhere, as it stands: the metric holds its value, it does not count.
fn mirror(counter: &Counter, total: u64) {
    counter.inner().store(total, Relaxed);
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every metric, registered once (their list and meaning: docs/metrics.md).
fn registry() -> (Registry, Metrics, ServerMetrics) {
    let mut r = Registry::with_prefix("sshtrace");
    let verdicts = Family::default();
    let capped = Counter::default();
    r.register(
        "verdicts",
        "Connections judged, by cause, local port and container (empty on the host)",
        verdicts.clone(),
    );
    r.register(
        "metrics_series_capped",
        format!(
            "Verdicts counted in their cause's overflow series (port and container {}): past \
             {} distinct (cause, port, container)",
            verdicts::OTHER,
            verdicts::MAX_SERIES
        ),
        capped.clone(),
    );
    let metrics = Metrics {
        verdicts: VerdictSeries::new(verdicts, capped),
        kernel_events_read: counter(
            &mut r,
            "kernel_events_read",
            "Records read from the ring buffer",
        ),
        kernel_events_lost: counter(
            &mut r,
            "kernel_events_lost",
            "Records the ring buffer had no room for, as the kernel counts them",
        ),
        kernel_events_undecodable: counter(
            &mut r,
            "kernel_events_undecodable",
            "Records read that could not be decoded",
        ),
        program_runs_skipped: counter(
            &mut r,
            "program_runs_skipped",
            "Runs of sshtrace's programs the kernel skipped (already running on that CPU: \
             recursion misses)",
        ),
        not_kept: family(
            &mut r,
            "not_kept",
            "Items past sshtrace's bounds, counted instead of kept (the summary's not_kept)",
        ),
        output_records_produced: family(
            &mut r,
            "output_records_produced",
            "Records offered to each output",
        ),
        output_records_delivered: family(
            &mut r,
            "output_records_delivered",
            "Records each output wrote to its destination",
        ),
        output_records_dropped: family(
            &mut r,
            "output_records_dropped",
            "Records each output dropped (queue full, or too large for a datagram)",
        ),
        listeners: gauge(&mut r, "listeners", "sshd listeners tracked"),
        connections_followed: gauge(
            &mut r,
            "connections_followed",
            "Connections followed and not judged yet",
        ),
    };
    let server = ServerMetrics {
        resident_memory: gauge(
            &mut r,
            "resident_memory_bytes",
            "sshtrace's resident memory (RSS), read at each scrape",
        ),
        connections_dropped: family(
            &mut r,
            "metrics_connections_dropped",
            "Connections to this endpoint closed unanswered: too many at once (busy), or too \
             slow (timeout)",
        ),
    };
    for reason in server::DropReason::ALL {
        drop(server.connections_dropped.get_or_create(reason));
    }
    r.register(
        "build",
        "sshtrace's version",
        Info::new(VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        }),
    );
    (r, metrics, server)
}

fn counter(r: &mut Registry, name: &str, help: &str) -> Counter {
    let metric = Counter::default();
    r.register(name, help, metric.clone());
    metric
}

fn gauge(r: &mut Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::default();
    r.register(name, help, metric.clone());
    metric
}

fn family<L>(r: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let metric = Family::default();
    r.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_text;

    use super::*;
    use crate::output::NotKept;

    #[test]
    fn totals_are_mirrored_as_they_stand_and_every_metric_is_on_the_page() {
        let (registry, metrics, _) = registry();
        let totals = |read| Totals {
            kernel_events_read: read,
            kernel_events_undecodable: 1,
            loss: KernelLoss {
                lost: 7,
                skipped_runs: 2,
                not_kept: NotKept {
                    connections_evicted: 5,
                    ..NotKept::default()
                },
            },
            listeners: 3,
            connections_followed: 4,
            outputs: vec![OutputCounts {
                name: "tcp://127.0.0.1:9000".into(),
                produced: 10,
                delivered: 8,
                dropped: 2,
            }],
        };
        metrics.mirror(&totals(100));
        metrics.mirror(&totals(150));
        let mut page = String::new();
        prometheus_text::encode(&mut page, &registry).unwrap();
        for line in [
            "sshtrace_kernel_events_read_total 150",
            "sshtrace_kernel_events_lost_total 7",
            "sshtrace_kernel_events_undecodable_total 1",
            "sshtrace_program_runs_skipped_total 2",
            r#"sshtrace_not_kept_total{item="connections_evicted"} 5"#,
            r#"sshtrace_not_kept_total{item="signals"} 0"#,
            r#"sshtrace_output_records_produced_total{output="tcp://127.0.0.1:9000"} 10"#,
            r#"sshtrace_output_records_delivered_total{output="tcp://127.0.0.1:9000"} 8"#,
            r#"sshtrace_output_records_dropped_total{output="tcp://127.0.0.1:9000"} 2"#,
            "sshtrace_listeners 3",
            "sshtrace_connections_followed 4",
            "sshtrace_metrics_series_capped_total 0",
            "# TYPE sshtrace_resident_memory_bytes gauge",
            r#"sshtrace_metrics_connections_dropped_total{reason="busy"} 0"#,
            r#"sshtrace_metrics_connections_dropped_total{reason="timeout"} 0"#,
            &format!(
                r#"sshtrace_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in\n{page}");
        }
    }
}
