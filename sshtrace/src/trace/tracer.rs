//! The event loop: ring buffer → decode → state → causes → outputs, with periodic sshd
//! discovery and loss accounting.

use std::{collections::HashMap, io::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use sshtrace_common::{KernelLayout, Settings};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, Instant, MissedTickBehavior},
};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    causes::{self, Background},
    cli::Network,
    cli::TraceArgs,
    clock::Clock,
    enrich::audit::{self, AuditDenial},
    enrich::discovery::{Discovery, Scope, Snapshot},
    enrich::names::name_container,
    enrich::netns::NetnsNames,
    enrich::runtime::{ContainerNames, Sockets},
    escape,
    kernel::detach::{Attached, Stopped},
    kernel::lsm::ActiveLsms,
    kernel::plan::Plan,
    kernel::probes::{KernelFilters, LossCounters, Probes, SkippedRuns},
    kernel::{btf::KernelBtf, hooks::HookId, layout, names::KernelNames},
    metrics::{Metrics, Totals},
    output::summary::Summary,
    output::{KernelLoss, NotKept, Outputs, Record, SinkSpec},
    trace::events::{self, Event, Kind},
    trace::state::{Connection, Earlier, Process, State, FIREWALL_SETTLE_NS, SETTLE_NS},
};

const TICK: Duration = Duration::from_millis(100);
/// Records read from the ring at a time before the loop turns to what else is due.
const DRAIN_BUDGET: usize = 4096;
const DISCOVERY_EVERY_TICKS: u64 = 5;
/// What the listener refused or the network dropped is no penalty's cause.
fn penalizable(cause: crate::verdict::Cause) -> bool {
    use crate::verdict::Cause;
    !matches!(
        cause,
        Cause::SshdDropped | Cause::NotListening | Cause::Firewall
    )
}

/// Settled connections judged per batch (see `emit_settled`).
const SETTLED_BATCH: usize = 512;
const LOSS_CHECK_EVERY_TICKS: u64 = 10;
/// Every second: a storm's connections, decoded events and verdicts leave freed heap behind.
const TRIM_EVERY_TICKS: u64 = 10;
const STALL_REPORT_INTERVAL_NS: u64 = 10_000_000_000;
/// How long outputs may take to deliver what is queued when sshtrace stops.
/// (Short enough that SIGTERM ends sshtrace within 2 s even when an output is stuck.)
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

pub async fn run(
    cli: TraceArgs,
    outputs: Vec<SinkSpec>,
    tracefs: PathBuf,
    lsms: ActiveLsms,
    metrics: Option<Metrics>,
) -> Result<()> {
    map_large_allocations();
    // aya's own parses of the kernel's BTF start once this one is dropped: each holds the
    // file and its types (12 to 15 MB), and at once they were start-up's peak memory.
    let (layout, names, mut plan) = kernel_facts(&tracefs)?;
    release_freed_memory();
    let aya_btf = crate::kernel::probes::BtfParses::start();
    let container_names = ContainerNames::start(runtime_sockets(&cli));
    let containers = resolve_containers(&cli.containers, &container_names)?;
    let filter_netns = !containers.is_empty() || cli.host_only;
    let discovery = Discovery::new(Scope {
        containers,
        host_only: cli.host_only,
        ports: cli.ports.iter().copied().collect(),
        pids: cli.pids.iter().copied().collect(),
    })?;
    let settings = kernel_settings(&cli, &layout, &names, &plan, filter_netns);
    let refusal_kprobes = plan.wants_refusal_kprobes();
    let probes = Probes::load(aya_btf, layout, settings, cli.ring_size, refusal_kprobes)?;
    if probes.refusal_kprobes_attached() {
        plan.refusals_by_kprobe();
    }
    if let Some(way) = probes.socket_states_way() {
        plan.socket_states_through(way);
    }
    if let Some(way) = probes.sshd_output_way() {
        plan.sshd_output_through(way);
    }
    if let Some(way) = probes.path_way() {
        plan.failed_call_paths_through(way);
    }
    if probes.attached_hook(HookId::SegmentsReceived) {
        plan.reset_fingerprints_through(probes.attached_hook(HookId::PacketsReceived));
    }
    if cli.probe_report {
        print_probe_report(&plan, &probes);
        return Ok(());
    }
    let attached = probes.attached_labels();
    let skipped = probes.skipped.join(", ");
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let ring = unsafe { AsyncFd::register_with_interest(probes.events, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the ring buffer")?;
    let parts = Parts {
        probes: ProbeHandles {
            filters: probes.filters,
            unclaimed: probes.unclaimed,
            bursts: probes.bursts,
            programs: probes.programs,
            counters: probes.counters,
            skipped_runs: probes.skipped_runs,
        },
        names,
        discovery,
        container_names,
        lsms,
    };
    let mut tracer = Tracer::new(parts, outputs, metrics, &cli);
    // Tracking starts before the start-up lines: whoever waits for it may connect at once.
    tracer.rediscover()?;
    release_freed_memory();
    let (audit_tx, mut audit_rx) = tokio::sync::mpsc::unbounded_channel();
    let audit = audit::start(audit_tx).unwrap_or_else(|e| format!("unavailable ({e:#})"));
    // Attached, and every socket it reads is open: what is left of root goes.
    if let Err(e) = crate::privileges::keep_only(crate::privileges::TRACING) {
        eprintln!("sshtrace: warning: keeps every capability: {e:#}");
    }
    announce(&attached, &skipped, &plan, &tracer.lsms, &audit);
    tracer.event_loop(ring, &mut audit_rx, &cli).await?;
    tracer.finish().await;
    Ok(())
}

/// This kernel's tracepoint layouts, its names for states and reasons, and the plan they
/// give; the parsed BTF is dropped once they are extracted (it is large).
fn kernel_facts(tracefs: &std::path::Path) -> Result<(KernelLayout, KernelNames, Plan)> {
    let btf = KernelBtf::load()?;
    let layout = layout::discover(tracefs, &btf)?;
    let names = KernelNames::from_btf(&btf);
    let plan = Plan::new(&layout, &names, btf.has_type("landlock_request"));
    Ok((layout, names, plan))
}

/// Where to ask for container names: `--runtime-socket` and `--containerd-socket`, each
/// else the usual.
fn runtime_sockets(cli: &TraceArgs) -> Sockets {
    let mut sockets = Sockets::default();
    if !cli.runtime_sockets.is_empty() {
        sockets.docker_api.clone_from(&cli.runtime_sockets);
    }
    if !cli.containerd_sockets.is_empty() {
        sockets.containerd.clone_from(&cli.containerd_sockets);
    }
    sockets
}

/// What the programs are told before load.
fn kernel_settings(
    cli: &TraceArgs,
    layout: &KernelLayout,
    names: &KernelNames,
    plan: &Plan,
    filter_netns: bool,
) -> Settings {
    Settings {
        all_ports: cli.all_tcp as u32,
        filter_netns: filter_netns as u32,
        netfilter_drop: names
            .drop_reason_value("NETFILTER_DROP")
            .unwrap_or(u32::MAX),
        no_socket_drop: plan.no_socket_resets.drop_reason().unwrap_or(u32::MAX),
        tcp_states: crate::trace::state::tcp_states(names),
        claim_on_accept: layout.structs.accepted_socket_known() as u32,
        wakeup_backlog: cli.ring_size / 4,
        // `--pid` names the sshd to trace: no other is followed.
        follow_sshd_execs: (!cli.client && cli.pids.is_empty() && layout.structs.executable_known())
            as u32,
        client_mode: cli.client as u32,
    }
}

/// `--probe-report`: the plan, with the hooks that attached and those this kernel lacks.
fn print_probe_report(plan: &Plan, probes: &Probes) {
    // A closed standard output is not worth a panic.
    let _ = write!(
        std::io::stdout(),
        "{}",
        plan.probe_report(
            &kernel_release(),
            &crate::kernel::probes::program_types(),
            &probes.attached_labels(),
            &probes.skipped
        )
    );
}

/// The start-up lines: what is attached, the LSMs and audit, and what this kernel cannot show.
fn announce(attached: &[String], skipped: &str, plan: &Plan, lsms: &ActiveLsms, audit: &str) {
    eprintln!(
        "sshtrace: attached {} hooks: {}",
        attached.len(),
        attached.join(", ")
    );
    eprintln!("sshtrace: {}; audit records: {audit}", describe_lsms(lsms));
    if !skipped.is_empty() {
        eprintln!("sshtrace: skipped hooks this kernel lacks: {skipped}");
    }
    for missing in plan.missing() {
        eprintln!(
            "sshtrace: this kernel cannot show {}: {} (see --probe-report)",
            missing.evidence, missing.without
        );
    }
}

/// What the loaded programs leave userspace: the kernel-side filters and counters.
struct ProbeHandles {
    filters: KernelFilters,
    unclaimed: crate::kernel::probes::UnclaimedConnections,
    bursts: crate::kernel::probes::ResetBursts,
    programs: Attached,
    counters: LossCounters,
    skipped_runs: SkippedRuns,
}

/// What start-up gathered for the tracer.
struct Parts {
    probes: ProbeHandles,
    names: KernelNames,
    discovery: Discovery,
    container_names: ContainerNames,
    lsms: ActiveLsms,
}

impl Tracer {
    fn new(
        parts: Parts,
        outputs: Vec<SinkSpec>,
        metrics: Option<Metrics>,
        cli: &TraceArgs,
    ) -> Self {
        let Parts {
            probes,
            names,
            discovery,
            container_names,
            lsms,
        } = parts;
        let clock = Clock::new();
        let host = hostname();
        let stdout_is_output = outputs
            .iter()
            .any(|o| o.transport == crate::output::url::Transport::Stdout);
        Tracer {
            container_names,
            last_scan: std::time::Instant::now(),
            scan_due: false,
            netns_names: NetnsNames::default(),
            client: cli.client,
            state: State::new(crate::trace::state::tcp_states(&names)),
            names,
            discovery,
            filters: probes.filters,
            unclaimed: probes.unclaimed,
            bursts: probes.bursts,
            programs: Some(probes.programs),
            stopped: None,
            counters: probes.counters,
            skipped_runs: probes.skipped_runs,
            publisher: Publisher {
                outputs: Outputs::start(outputs, host.clone(), clock),
                summary: Summary::default(),
                metrics,
                verdicts: 0,
                view: View {
                    json: cli.json,
                    summary_only: cli.summary_only,
                    stdout_is_output,
                    clients: cli.clients.clone(),
                    causes: cli.causes.clone(),
                    client_ports: if cli.client {
                        cli.ports.clone()
                    } else {
                        Vec::new()
                    },
                    client_pids: if cli.client {
                        cli.pids.clone()
                    } else {
                        Vec::new()
                    },
                },
            },
            clock,
            host,
            stats: Stats::default(),
            dump_events: cli.dump_events,
            stalls_reported: HashMap::new(),
            lsms,
        }
    }
}

struct Tracer {
    state: State,
    names: KernelNames,
    discovery: Discovery,
    filters: KernelFilters,
    counters: LossCounters,
    skipped_runs: SkippedRuns,
    unclaimed: crate::kernel::probes::UnclaimedConnections,
    bursts: crate::kernel::probes::ResetBursts,
    /// The attached programs, stopped before the last read of the ring.
    programs: Option<Attached>,
    /// Once stopped: detached after sshtrace's exit.
    stopped: Option<Stopped>,
    publisher: Publisher,
    clock: Clock,
    host: String,
    stats: Stats,
    dump_events: bool,
    /// When each listener's last stall verdict was made.
    stalls_reported: HashMap<u32, u64>,
    lsms: ActiveLsms,
    container_names: ContainerNames,
    last_scan: std::time::Instant,
    /// A new sshd began to be followed by the kernel: scan /proc at the next tick for its
    /// addresses and container, rather than at the periodic scan.
    scan_due: bool,
    /// Network namespaces by name, read again before judging a dropped segment.
    netns_names: NetnsNames,
    /// `sshtrace client`: the connections are this host's ssh clients'.
    client: bool,
}

/// Where verdicts go: the outputs, the summary and the metrics, as the user asked to see them.
struct Publisher {
    outputs: Outputs,
    summary: Summary,
    /// `--metrics`.
    metrics: Option<Metrics>,
    view: View,
    /// Verdicts published.
    verdicts: u64,
}

impl Publisher {
    /// Publishes a verdict that passes `--client` and `--cause`.
    fn emit(&mut self, verdict: crate::verdict::Verdict) {
        let client_ok = self.view.clients.is_empty()
            || verdict
                .conn
                .remote_addr
                .parse()
                .is_ok_and(|ip| self.view.clients.iter().any(|n| n.contains(ip)));
        let cause_ok = self.view.causes.is_empty()
            || self.view.causes.iter().any(|c| c == verdict.cause.as_str());
        if !(client_ok && cause_ok && self.view.client_side_wanted(&verdict)) {
            return;
        }
        self.verdicts += 1;
        self.summary.add(&verdict);
        if let Some(metrics) = &mut self.metrics {
            metrics.count_verdict(&verdict);
        }
        self.outputs.publish(Record::Verdict(Box::new(verdict)));
    }
}

/// What the user asked to see.
struct View {
    json: bool,
    summary_only: bool,
    stdout_is_output: bool,
    clients: Vec<Network>,
    causes: Vec<String>,
    /// `sshtrace client`: `--port` and `--pid` name the servers' ports and the ssh processes
    /// (or what ran them) to report; on the server side they choose what the kernel tracks.
    client_ports: Vec<u16>,
    client_pids: Vec<u32>,
}

impl View {
    fn client_side_wanted(&self, v: &crate::verdict::Verdict) -> bool {
        let port_ok =
            self.client_ports.is_empty() || self.client_ports.contains(&v.conn.remote_port);
        let pid_ok = self.client_pids.is_empty()
            || v.process.as_ref().is_some_and(|p| {
                self.client_pids.contains(&p.pid)
                    || p.parent
                        .as_ref()
                        .is_some_and(|q| self.client_pids.contains(&q.pid))
            });
        port_ok && pid_ok
    }
}

#[derive(Default)]
struct Stats {
    undecodable: u64,
    /// Kernel losses reported so far.
    loss_reported: KernelLoss,
    produced_at_last_status: u64,
    /// Records read from the ring buffer.
    read: u64,
}

impl Tracer {
    async fn event_loop(
        &mut self,
        mut ring: AsyncFd<RingBuf<MapData>>,
        audit: &mut UnboundedReceiver<AuditDenial>,
        cli: &TraceArgs,
    ) -> Result<()> {
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // SIGHUP reopens the file outputs (logrotate's convention) and does nothing else.
        let mut sighup = signal(SignalKind::hangup())?;
        let mut stdout_closed = self.publisher.outputs.stdout_closed();
        let deadline = cli.duration.map(|d| Instant::now() + d);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    // Left ready when the budget ran out: the loop comes back at once, after
                    // whatever else is due.
                    if self.drain(guard.get_inner_mut(), DRAIN_BUDGET) {
                        guard.clear_ready();
                    }
                    // A storm's refusals are judged batch by batch, not piled up to the tick.
                    if self.state.refusals_waiting {
                        self.emit_settled(Clock::monotonic_now_ns())?;
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    // Records submitted without a wake-up are read here.
                    self.drain(ring.get_mut(), DRAIN_BUDGET);
                    self.emit_settled(Clock::monotonic_now_ns())?;
                    if self.scan_due || ticks.is_multiple_of(DISCOVERY_EVERY_TICKS) {
                        self.rediscover()?;
                    }
                    if ticks.is_multiple_of(LOSS_CHECK_EVERY_TICKS) {
                        self.redraw_status();
                        self.judge_stalled_listeners();
                        self.warn_of_losses();
                        self.mirror_metrics();
                        self.state.prune(Clock::monotonic_now_ns());
                    }
                    if ticks.is_multiple_of(TRIM_EVERY_TICKS) {
                        release_freed_memory();
                    }
                }
                Some(denial) = audit.recv() => self.apply_audit(denial),
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => self.publisher.outputs.reopen(),
                // Its reader is gone (`sshtrace | head -1`): stop, as a Unix filter does.
                _ = stdout_closed.wait_for(|&closed| closed) => break,
            }
            let counted_out = cli.count.is_some_and(|n| self.publisher.verdicts >= n);
            if counted_out || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        // Stopped first, so that nothing is produced after the last read: then whatever is
        // still in the ring, then every connection that has ended, without waiting.
        self.stopped = self.programs.take().map(Attached::stop_recording);
        self.drain(ring.get_mut(), usize::MAX);
        self.emit_settled(Clock::monotonic_now_ns() + SETTLE_NS + FIREWALL_SETTLE_NS)
    }

    /// Reads at most `budget` records; returns whether the ring is empty. A budget keeps a
    /// storm from starving settling, the outputs and the signals.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, budget: usize) -> bool {
        for _ in 0..budget {
            let Some(item) = ring.next() else {
                return true;
            };
            self.stats.read += 1;
            match events::decode(&item) {
                Some(mut event) => {
                    crate::enrich::facts_while_alive(&mut event);
                    self.note_tracking(&event);
                    if self.dump_events {
                        eprintln!("sshtrace: event: {}", escape::text(&format!("{event:?}")));
                    }
                    self.state.apply(&event);
                    if self.client {
                        self.read_client_process(&event);
                    }
                }
                None => self.stats.undecodable += 1,
            }
        }
        false
    }

    /// What the kernel began to follow on its own: a new sshd (its addresses and container
    /// come from the next scan), and the ports sshd accepted on.
    fn note_tracking(&mut self, event: &events::Event) {
        match &event.kind {
            Kind::Exec {
                began_tracking: true,
                ..
            } => {
                self.scan_due = true;
                self.watch_standard_error(event.task.pid);
            }
            Kind::Accept {
                claimed: Some(a), ..
            } => self.discovery.learn_port(a.conn.local.port()),
            _ => {}
        }
    }

    /// The first followed sshd that logs to a pipe or a file gets the hook that reads its
    /// standard error (until then write(2) costs the host nothing; see `OutputWay`).
    fn watch_standard_error(&mut self, pid: u32) {
        let Some(programs) = self.programs.as_mut().filter(|p| p.holds_a_later_hook()) else {
            return;
        };
        if !crate::enrich::discovery::logs_to_a_pipe_or_file(pid) {
            return;
        }
        match programs.attach_later_hook() {
            Ok(label) => eprintln!(
                "sshtrace: sshd (pid {pid}) logs to a pipe or a file: its standard error is read \
                 through {label} from now on"
            ),
            Err(err) => eprintln!(
                "sshtrace: warning: cannot attach the hook for sshd's standard error: {err:#}; \
                 sshd_log leaves out what pid {pid} writes there"
            ),
        }
    }

    fn apply_audit(&mut self, d: AuditDenial) {
        let event = events::Event {
            ts_ns: self.clock.monotonic_from_unix_ns(d.unix_ns),
            task: events::Task {
                pid: d.pid,
                tid: d.pid,
                comm: d.comm,
            },
            kind: Kind::LsmDenial(events::LsmDenial {
                source: "audit",
                lsm: d.lsm,
                operation: d.operation,
                path: d.path,
                facts: d.facts,
            }),
        };
        if self.dump_events {
            eprintln!("sshtrace: event: {}", escape::text(&format!("{event:?}")));
        }
        self.state.apply(&event);
    }

    /// Judges the connections settled by `now_ns`, a bounded batch at a time: in a storm
    /// tens of thousands settle between two ticks, and taking them all at once held them
    /// twice (30 MB at 56,000 aborted connections a second).
    fn emit_settled(&mut self, now_ns: u64) -> Result<()> {
        loop {
            let settled = self.state.take_settled(now_ns, SETTLED_BATCH);
            if settled.is_empty() {
                return Ok(());
            }
            self.emit_batch(&settled)?;
        }
    }

    fn emit_batch(&mut self, settled: &[(Connection, Vec<Process>)]) -> Result<()> {
        // Refusals say where sshd listens now, and a listener the kernel followed before any
        // scan saw it gets its addresses and container, not the last periodic scan's (at most
        // every 250 ms: a storm must not turn into a storm of scans).
        let known = |pid: &u32| {
            let sshd = self.discovery.current();
            sshd.listeners.contains_key(pid) || sshd.gone.iter().any(|l| l.pid == *pid)
        };
        let stale = settled
            .iter()
            .any(|(c, _)| c.skaddr == 0 || c.listener_pid.is_some_and(|p| !known(&p)));
        if stale && self.last_scan.elapsed() >= Duration::from_millis(250) {
            self.rediscover()?;
        }
        // Names and containers of the namespaces a firewall dropped in: read only when one did.
        let dropped_in: Vec<u32> = settled
            .iter()
            .flat_map(|(c, _)| {
                let own = (!c.drops().is_empty()).then_some(c.tuple.netns);
                own.into_iter()
                    .chain(c.path_drops().iter().map(|d| d.netns))
            })
            .collect();
        if !dropped_in.is_empty() {
            self.netns_names.refresh();
            self.netns_names.find_containers(dropped_in);
        }
        // One verdict at a time, from judgement to the outputs: a storm's settled connections
        // never become a batch of verdicts held at once. Each verdict is noted for its source
        // before the next connection is judged: a penalty's drop settles in the same batch as
        // the crash that caused it, and must find it.
        for (conn, tree) in settled {
            let judged = if self.client {
                causes::judge_client(conn, &self.context())
            } else {
                causes::judge(conn, tree, &self.context())
            };
            let Some(mut verdict) = judged else {
                continue;
            };
            if penalizable(verdict.cause) {
                let ts_ns = conn.end_ts.unwrap_or_default();
                let earlier = Earlier {
                    ts_ns,
                    cause: verdict.cause,
                };
                self.state.recent.note(conn.tuple.remote.ip(), earlier);
            }
            name_container(&mut verdict, &self.container_names);
            self.publisher.emit(verdict);
        }
        Ok(())
    }

    /// What the cause rules read.
    fn context(&self) -> Background<'_> {
        Background {
            names: &self.names,
            lsms: &self.lsms,
            conns: &self.state.conns,
            sshd: self.discovery.current(),
            procs: &self.state.procs,
            recent: &self.state.recent,
            clock: &self.clock,
            host: &self.host,
            netns: &self.netns_names,
        }
    }

    /// Listeners failing to accept while connections wait: at most one verdict per listener
    /// every [`STALL_REPORT_INTERVAL_NS`].
    fn judge_stalled_listeners(&mut self) {
        let now = Clock::monotonic_now_ns();
        let ctx = self.context();
        let mut verdicts = Vec::new();
        for listener in ctx.sshd.listeners.values() {
            if self
                .stalls_reported
                .get(&listener.pid)
                .is_some_and(|&t| t + STALL_REPORT_INTERVAL_NS > now)
            {
                continue;
            }
            let ports: Vec<u16> = listener
                .addrs
                .iter()
                .map(std::net::SocketAddr::port)
                .collect();
            // The queue lives in the kernel's socket history (unclaimed connections are not
            // reported): read it only for a listener that fails to accept.
            let failing = ctx
                .procs
                .get(listener.pid)
                .is_some_and(|p| causes::resource_limit::accept_failing(p, now));
            if !failing {
                continue;
            }
            let queued: Vec<Connection> = self
                .unclaimed
                .queued(&ports)
                .into_iter()
                .filter_map(|(skaddr, h)| {
                    let tuple = events::tuple(&h.endpoints)?;
                    Some(Connection::queued(skaddr, tuple, h.established_ns))
                })
                .collect();
            if let Some(v) = causes::judge_stalled(listener.pid, &ports, &queued, now, &ctx) {
                verdicts.push((listener.pid, v));
            }
        }
        for (pid, mut verdict) in verdicts {
            self.stalls_reported.insert(pid, now);
            name_container(&mut verdict, &self.container_names);
            self.publisher.emit(verdict);
        }
    }

    /// Kernel events per second, verdicts and losses, redrawn in place on a terminal.
    fn redraw_status(&mut self) {
        let (produced, _) = self.counters.read();
        let rate = produced.saturating_sub(self.stats.produced_at_last_status);
        self.stats.produced_at_last_status = produced;
        let loss = self.kernel_loss();
        let skipped = match loss.skipped_runs {
            0 => String::new(),
            n => format!(" · {n} program runs skipped"),
        };
        self.publisher.outputs.status(format!(
            "[{rate} kernel events/s · {} verdicts · {} events lost{skipped} · {} connections followed]",
            self.publisher.verdicts,
            loss.lost,
            self.state.conns.len()
        ));
    }

    /// Everything past its bound, counted instead of kept.
    fn not_kept(&self, held_back_drops: u64) -> NotKept {
        let n = self.state.not_kept;
        NotKept {
            connections_evicted: self.state.conns.evicted,
            untracked_processes: self.counters.untracked_processes()
                + self.filters.untracked.len() as u64,
            untracked_network_namespaces: self.filters.untracked_netns.len() as u64,
            storm_counters_evicted: self.bursts.evicted(self.counters.burst_keys_added()),
            signals: n.signals,
            lsm_denials: n.lsm_denials,
            firewall_drops: n.drops,
            firewall_drops_held_back: held_back_drops,
            audit_records_lost: audit::records_lost(),
            untracked_client_sockets: self.counters.untracked_client_sockets(),
        }
    }

    fn kernel_loss(&self) -> KernelLoss {
        KernelLoss {
            not_kept: self.not_kept(0),
            lost: self.counters.read().1,
            skipped_runs: self.skipped_runs.read(),
        }
    }

    /// The totals kept here, as they stand, for the metrics (when served).
    fn mirror_metrics(&self) {
        let Some(metrics) = &self.publisher.metrics else {
            return;
        };
        metrics.mirror(&Totals {
            kernel_events_read: self.stats.read,
            kernel_events_undecodable: self.stats.undecodable,
            loss: self.kernel_loss(),
            listeners: self.discovery.current().listeners.len(),
            connections_followed: self.state.conns.len(),
            outputs: self.publisher.outputs.counts(),
        });
    }

    /// A connect of a followed `ssh`: its executable and command line, while it lives.
    fn read_client_process(&mut self, event: &Event) {
        let Kind::ClientConnect { skaddr, .. } = &event.kind else {
            return;
        };
        if let Some(p) = self
            .state
            .conns
            .live_by_skaddr(*skaddr)
            .and_then(|c| c.client_process_mut())
        {
            crate::enrich::client_process::read(p);
        }
    }

    fn rediscover(&mut self) -> Result<()> {
        self.last_scan = std::time::Instant::now();
        self.scan_due = false;
        // `sshtrace client` follows ssh, not sshd.
        if self.client {
            return Ok(());
        }
        let Some(snapshot) = self.discovery.scan() else {
            return Ok(());
        };
        apply_discovery(&mut self.filters, snapshot)?;
        print_tracking(snapshot);
        let listeners: Vec<u32> = snapshot.listeners.keys().copied().collect();
        for pid in listeners {
            self.watch_standard_error(pid);
        }
        let snapshot = self.discovery.current();
        // Ask the runtimes now, so that names are known before a verdict needs them.
        for c in snapshot
            .listeners
            .values()
            .filter_map(|l| l.container.as_ref())
        {
            let _ = self.container_names.get(c);
        }
        Ok(())
    }

    /// Lost records and skipped program runs are never silent: each increase is reported once.
    fn warn_of_losses(&mut self) {
        let now = self.kernel_loss();
        let before = self.stats.loss_reported;
        if now.lost > before.lost {
            eprintln!(
                "sshtrace: warning: {} kernel events lost (ring buffer full), {} in total",
                now.lost - before.lost,
                now.lost
            );
        }
        if now.skipped_runs > before.skipped_runs {
            eprintln!(
                "sshtrace: warning: the kernel skipped {} runs of sshtrace's programs (already running on that CPU; what they would have seen is unknown), {} in total",
                now.skipped_runs - before.skipped_runs,
                now.skipped_runs
            );
        }
        if now.not_kept != before.not_kept {
            eprintln!(
                "sshtrace: warning: past sshtrace's bounds, counted instead of kept: {}",
                now.not_kept
            );
        }
        if now != before {
            self.stats.loss_reported = now;
            self.publisher.outputs.kernel_lost(now);
        }
    }

    async fn finish(mut self) {
        self.warn_of_losses();
        // The programs are stopped: these counts stand still.
        self.publisher
            .summary
            .set_held_back_refusals(self.bursts.held_back_refusals());
        self.publisher
            .summary
            .set_late_resets(self.state.late_resets_after_verdict);
        let not_kept = self.not_kept(self.bursts.held_back_drops());
        self.publisher.summary.set_not_kept(not_kept);
        let (produced, _) = self.counters.read();
        let loss = self.kernel_loss();
        self.publisher.outputs.status(String::new());
        let stdout_closed = self.publisher.outputs.is_stdout_closed();
        for line in self.publisher.outputs.finish(OUTPUT_GRACE).await {
            eprintln!("sshtrace: {line}");
        }
        // After the outputs: the summary is the last thing printed, on standard error when
        // standard output's reader is gone.
        let v = &self.publisher.view;
        let on_stdout = (v.summary_only || v.stdout_is_output) && !stdout_closed && {
            let summary = if v.json {
                format!("{}\n", self.publisher.summary.render_json(&self.host, loss))
            } else {
                self.publisher.summary.render_text(loss)
            };
            let mut out = std::io::stdout().lock();
            out.write_all(summary.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        };
        if !on_stdout {
            eprint!("{}", self.publisher.summary.render_text(loss));
        }
        // Nothing lost silently: every record the programs produced was read here or counted
        // as lost by them (produced = read + lost), and the program runs the kernel skipped
        // are counted by the kernel.
        eprintln!(
            "sshtrace: {} verdicts; {produced} kernel events, {} read, {} lost, {} undecodable, {} program runs skipped",
            self.publisher.verdicts, self.stats.read, loss.lost, self.stats.undecodable, loss.skipped_runs
        );
        eprintln!("sshtrace: not kept (counted): {not_kept}");
        if let Some(stopped) = self.stopped.take() {
            stopped.detach_after_exit();
        }
    }
}

/// `--container` values to container ids: a running sshd's container whose id starts with the
/// value or whose runtime name is the value.
fn resolve_containers(
    wanted: &[String],
    names: &ContainerNames,
) -> Result<std::collections::BTreeSet<String>> {
    let mut ids = std::collections::BTreeSet::new();
    if wanted.is_empty() {
        return Ok(ids);
    }
    let mut all = Discovery::new(Scope::default())?;
    let found: Vec<crate::enrich::container::Container> = all
        .scan()
        .map(|s| {
            s.listeners
                .values()
                .filter_map(|l| l.container.clone())
                .collect()
        })
        .unwrap_or_default();
    for want in wanted {
        let matches: Vec<&crate::enrich::container::Container> = found
            .iter()
            .filter(|c| {
                c.id == *want
                    || (want.len() >= 4 && c.id.starts_with(want.as_str()))
                    || names.resolve_now(c).and_then(|n| n.name).as_deref() == Some(want.as_str())
            })
            .collect();
        match matches.as_slice() {
            [] => anyhow::bail!(
                "--container {}: no sshd runs in a container with that id or name",
                escape::text(want)
            ),
            [one] => {
                ids.insert(one.id.clone());
            }
            _ => {
                anyhow::bail!(
                    "--container {}: matches several containers; give more of the id",
                    escape::text(want)
                )
            }
        }
    }
    Ok(ids)
}

fn apply_discovery(filters: &mut KernelFilters, snapshot: &Snapshot) -> Result<()> {
    filters.set_ports(&snapshot.ports)?;
    filters.set_netns(
        &snapshot
            .listeners
            .values()
            .filter_map(|l| l.netns.map(|n| n as u32))
            .collect(),
    );
    for &pid in snapshot.listeners.keys() {
        filters.track_listener(pid);
    }
    for &pid in &snapshot.descendants {
        filters.track_descendant(pid);
    }
    Ok(())
}

fn print_tracking(snapshot: &Snapshot) {
    eprintln!("{}", tracking_line(snapshot));
}

/// `sshtrace: tracking ports [...]; sshd listeners: ...`, escaped: one line whatever a
/// container's id holds.
fn tracking_line(snapshot: &Snapshot) -> String {
    let ports: Vec<String> = snapshot.ports.iter().map(u16::to_string).collect();
    let listeners: Vec<String> = snapshot
        .listeners
        .values()
        .map(|l| {
            let addrs: Vec<String> = l
                .addrs
                .iter()
                .map(std::string::ToString::to_string)
                .collect();
            match &l.container {
                // The first 12 characters, not bytes: an id is no promise of ASCII.
                Some(c) => format!(
                    "{} on {} (container {} {})",
                    l.pid,
                    addrs.join(" "),
                    c.runtime,
                    c.id.chars().take(12).collect::<String>()
                ),
                None => format!("{} on {}", l.pid, addrs.join(" ")),
            }
        })
        .collect();
    let listeners = if listeners.is_empty() {
        "none".to_owned()
    } else {
        escape::text(&listeners.join("; "))
    };
    format!(
        "sshtrace: tracking ports [{}]; sshd listeners: {listeners}",
        ports.join(", ")
    )
}

fn describe_lsms(lsms: &ActiveLsms) -> String {
    match &lsms.unknown_because {
        Some(why) => format!("active LSMs unknown ({why})"),
        None => format!(
            "active LSMs: {} (can deny file access: {})",
            lsms.all.join(","),
            if lsms.access_control.is_empty() {
                "none".to_owned()
            } else {
                lsms.access_control.join(",")
            }
        ),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "(unknown release)".into())
}

/// Allocations of 256 KiB and more get pages of their own, given back when freed. glibc's
/// default raises that threshold to the largest block freed so far: after the BTF parses (a
/// 5 MB file, vectors of megabytes) everything came from the heap, and 10 MB stayed resident
/// for the whole run, fragmented under live allocations.
fn map_large_allocations() {
    // SAFETY: mallopt only sets an allocator parameter; it has no preconditions.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
}

/// Gives the pages of freed heap memory back to the kernel. Start-up parses the kernel's BTF
/// (megabytes, freed once the layout is known), and storms leave freed memory behind; glibc
/// keeps freed memory below live allocations mapped, and it would stay resident for the
/// whole run. (Measured: 0.1–9 ms for a heap of tens of megabytes, once a second.)
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
mod tracking_line_tests {
    use super::*;

    /// An id of multi-byte characters and control bytes neither panics nor breaks the line.
    #[test]
    fn a_container_id_of_any_characters_stays_on_one_safe_line() {
        let mut snapshot = Snapshot::default();
        snapshot.ports.insert(22);
        let container = crate::enrich::container::Container {
            // The 12th byte falls inside a character.
            id: format!("a{}\n\x1b[31m", "\u{e9}".repeat(10)),
            runtime: "lxc",
            ..Default::default()
        };
        snapshot.listeners.insert(
            5,
            crate::enrich::discovery::Listener {
                pid: 5,
                exe: "/usr/sbin/sshd".into(),
                addrs: vec!["127.0.0.1:22".parse().unwrap()],
                netns: None,
                container: Some(container),
            },
        );
        let line = tracking_line(&snapshot);
        assert_eq!(
            line,
            format!(
                "sshtrace: tracking ports [22]; sshd listeners: 5 on 127.0.0.1:22 (container lxc a{}\\n)",
                "\u{e9}".repeat(10)
            )
        );
    }
}
