//! Loading the eBPF object with this kernel's layout, attaching every hook, and the handles
//! userspace keeps: the kernel-side filters, the event ring and the loss counters.

use std::{collections::BTreeSet, os::fd::AsFd};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, KProbe, Program, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use sshtrace_common::{
    burst_kind, counter, pid_flags, Burst, BurstKey, KernelLayout, Settings, SockHistory,
};

use crate::{
    kernel::detach::Attached,
    kernel::hooks::{self, Attach, Hook, HookId, OutputWay, PathWay, SockStateWay},
};

/// The object built by `build.rs` from `sshtrace-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sshtrace"));

pub struct Probes {
    /// Keeps programs and links alive (the maps taken out of it below stay readable).
    pub programs: Attached,
    /// The hooks attached, with how they are named (`tracepoint tcp:tcp_send_reset`, …).
    pub attached: Vec<(HookId, String)>,
    /// Optional hooks this kernel lacks, with the reason.
    pub skipped: Vec<String>,
    pub events: RingBuf<MapData>,
    pub filters: KernelFilters,
    pub counters: LossCounters,
    pub skipped_runs: SkippedRuns,
    pub unclaimed: UnclaimedConnections,
    pub bursts: ResetBursts,
}

impl Probes {
    /// Whether the refusal kprobes attached (the IPv4 one at least).
    pub fn refusal_kprobes_attached(&self) -> bool {
        self.attached
            .iter()
            .any(|(id, _)| *id == HookId::RefusalKprobe)
    }

    pub fn attached_hook(&self, hook: HookId) -> bool {
        self.attached.iter().any(|(id, _)| *id == hook)
    }

    /// How socket state changes are seen: the way that attached.
    pub fn socket_states_way(&self) -> Option<SockStateWay> {
        self.attached.iter().find_map(|(id, _)| match id {
            HookId::SocketStates(way) => Some(*way),
            _ => None,
        })
    }

    /// How sshd's output is seen: the way that attached.
    pub fn sshd_output_way(&self) -> Option<OutputWay> {
        self.attached.iter().find_map(|(id, _)| match id {
            HookId::SshdOutput(way) => Some(*way),
            _ => None,
        })
    }

    /// How a failed call's path is read: the way that attached.
    pub fn path_way(&self) -> Option<PathWay> {
        self.attached.iter().find_map(|(id, _)| match id {
            HookId::FailedSyscall(way) => Some(*way),
            _ => None,
        })
    }

    /// The attached hooks' names, for start-up and `--probe-report`.
    pub fn attached_labels(&self) -> Vec<String> {
        self.attached
            .iter()
            .map(|(_, label)| label.clone())
            .collect()
    }

    /// `ring_size`: bytes of the ring buffer; `refusal_kprobes`: also try the kprobes that see
    /// refusals where no tracepoint does.
    pub fn load(
        btf: BtfParses,
        layout: KernelLayout,
        settings: Settings,
        ring_size: u32,
        refusal_kprobes: bool,
    ) -> Result<Self> {
        let (mut loader, kernel_btf) = btf.join()?;
        let mut ebpf = loader
            .map_max_entries("EVENTS", ring_size)
            .override_global("LAYOUT", &layout, true)
            .override_global("SETTINGS", &settings, true)
            .load(OBJECT)
            .context("cannot load the eBPF programs")?;
        let client = settings.client_mode != 0;
        let (attached, skipped) =
            attach_all(&mut ebpf, &kernel_btf, &layout, refusal_kprobes, client)?;
        let stderr_writes = prepare_stderr_writes(&mut ebpf, &kernel_btf, &attached);
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name}"))
        };
        let events = RingBuf::try_from(take("EVENTS")?)?;
        let filters = KernelFilters {
            ports: Array::try_from(take("TRACKED_PORTS")?)?,
            port_set: BTreeSet::new(),
            pids: HashMap::try_from(take("TRACKED_PIDS")?)?,
            netns: HashMap::try_from(take("TRACKED_NETNS")?)?,
            untracked: BTreeSet::new(),
            netns_filtered: settings.filter_netns != 0,
            untracked_netns: BTreeSet::new(),
        };
        let counters = LossCounters(PerCpuArray::try_from(take("COUNTERS")?)?);
        let unclaimed = UnclaimedConnections(HashMap::try_from(take("SOCK_HISTORY")?)?);
        let bursts = ResetBursts(PerCpuHashMap::try_from(take("RESET_BURSTS")?)?);
        let skipped_runs = SkippedRuns(
            ebpf.programs()
                .filter_map(|(_, p)| p.fd().ok()?.try_clone().ok())
                .collect(),
        );
        Ok(Self {
            programs: Attached::new(ebpf, stderr_writes)?,
            skipped_runs,
            attached,
            skipped,
            events,
            filters,
            unclaimed,
            bursts,
            counters,
        })
    }
}

/// Attaches every hook: socket states the first way that loads, then the others; an optional
/// hook that fails is noted in the second list with why.
fn attach_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    layout: &KernelLayout,
    refusal_kprobes: bool,
    client: bool,
) -> Result<(Vec<(HookId, String)>, Skipped)> {
    let debug_skip = DebugSkip::from_env();
    // The raw tracepoint for socket states, the hottest hook, where tp_btf does not load:
    // cheaper, no record is assembled before the program runs. The classic one where BTF
    // does not locate the fields, or with SSHTRACE_RAW_TRACEPOINTS=0.
    let raw = std::env::var_os("SSHTRACE_RAW_TRACEPOINTS").is_none_or(|v| v != "0");
    let hooks = hooks::all(hooks::Wanted {
        refusal_kprobes,
        client,
        accept_entries: !layout.structs.accepted_socket_known(),
    });
    let sock_state_ways = sock_state_ways(raw && layout.structs.sock_tuple_known());
    let output_ways = output_ways(layout);
    let path_ways = path_ways(layout);
    let first_choices: Vec<Hook> = hooks
        .iter()
        .chain(&sock_state_ways[..1])
        .chain(&output_ways[0])
        .chain(&path_ways[0])
        .filter(|h| !debug_skip.names(h))
        .copied()
        .collect();
    verify_in_parallel(ebpf, btf, &first_choices);
    let mut skipped = Vec::new();
    let mut attached = vec![attach_first(ebpf, btf, &sock_state_ways, &mut skipped)?];
    for hook in hooks {
        if debug_skip.leaves_out(&hook, &mut skipped) {
            continue;
        }
        match attach(ebpf, btf, &hook) {
            Ok(label) => attached.push((hook.id, label)),
            Err(err) if !hook.required => skipped.push(format!("{} ({err:#})", hook.program)),
            Err(err) => return Err(err),
        }
    }
    for ways in [&output_ways, &path_ways] {
        let way = attach_first_way(ebpf, btf, ways, &debug_skip, &mut skipped);
        attached.extend(way);
    }
    Ok((attached, skipped))
}

/// The ways to read a failed call's path this kernel may have, best first: the saved
/// registers where their layout is known, else the entries.
fn path_ways(layout: &KernelLayout) -> Vec<Vec<Hook>> {
    let s = &layout.syscall;
    let registers_known = s
        .path_arg
        .iter()
        .zip(s.path_regs)
        .all(|(&arg, regs)| arg == sshtrace_common::ABSENT || regs != sshtrace_common::ABSENT);
    [PathWay::SavedRegisters, PathWay::Entries]
        .into_iter()
        .filter(|way| registers_known || *way == PathWay::Entries)
        .map(PathWay::hooks)
        .collect()
}

/// The ways to see sshd's output this kernel may have, best first: socket sends where the
/// saved registers' layout is known, else the syscalls.
fn output_ways(layout: &KernelLayout) -> Vec<Vec<Hook>> {
    let s = &layout.syscall;
    let registers_known = [s.regs_nr, s.write_nr, s.sendto_nr]
        .into_iter()
        .chain(s.regs_args)
        .all(|at| at != sshtrace_common::ABSENT);
    [OutputWay::SocketSends, OutputWay::Syscalls]
        .into_iter()
        .filter(|way| registers_known || *way == OutputWay::Syscalls)
        .map(OutputWay::hooks)
        .collect()
}

/// Attaches the first of `ways` (to see sshd's output, to read paths) of which any hook
/// attaches (the ones before it noted in `skipped`); none at all leaves that evidence out,
/// reported.
fn attach_first_way(
    ebpf: &mut Ebpf,
    btf: &Btf,
    ways: &[Vec<Hook>],
    debug_skip: &DebugSkip,
    skipped: &mut Vec<String>,
) -> Vec<(HookId, String)> {
    for way in ways {
        let mut attached = Vec::new();
        // A program the verifier refused is not loaded again for each of its tracepoints (the
        // failed-syscall program has 40): one note says why.
        let mut refused: Vec<&str> = Vec::new();
        for hook in way {
            if refused.contains(&hook.program) || debug_skip.leaves_out(hook, skipped) {
                continue;
            }
            match attach(ebpf, btf, hook) {
                Ok(label) => attached.push((hook.id, label)),
                Err(err) => {
                    if ebpf.program(hook.program).is_some_and(|p| p.fd().is_err()) {
                        refused.push(hook.program);
                    }
                    skipped.push(format!("{} ({err:#})", hook.program));
                }
            }
        }
        if !attached.is_empty() {
            return attached;
        }
    }
    Vec::new()
}

/// Optional hooks that did not attach, each with why.
type Skipped = Vec<String>;

/// The programs `SSHTRACE_DEBUG_SKIP` names: left out, for measuring what each hook costs
/// (`cargo xtask bench`).
struct DebugSkip(Vec<String>);

impl DebugSkip {
    fn from_env() -> Self {
        let names = std::env::var("SSHTRACE_DEBUG_SKIP").unwrap_or_default();
        Self(names.split(',').map(str::to_owned).collect())
    }

    fn names(&self, hook: &Hook) -> bool {
        self.0.iter().any(|p| p == hook.program)
    }

    /// Whether `hook` is left out; one that is, is noted in `skipped`.
    fn leaves_out(&self, hook: &Hook, skipped: &mut Skipped) -> bool {
        let named = self.names(hook);
        if named {
            skipped.push(format!("{} (SSHTRACE_DEBUG_SKIP)", hook.label()));
        }
        named
    }
}

/// Socket states, the hottest hook (every state change on the host): tp_btf, whose socket
/// reads are plain loads, else the raw tracepoint (a helper call per read), both where BTF
/// locates the socket's fields; else the classic one.
fn sock_state_ways(fields_known: bool) -> Vec<Hook> {
    SockStateWay::ALL
        .into_iter()
        .filter(|way| fields_known || *way == SockStateWay::Classic)
        .map(SockStateWay::hook)
        .collect()
}

/// Attaches the first of `ways` (best first) that this kernel loads; the ones that failed
/// before it are noted in `skipped`, with why.
fn attach_first(
    ebpf: &mut Ebpf,
    btf: &Btf,
    ways: &[Hook],
    skipped: &mut Vec<String>,
) -> Result<(HookId, String)> {
    let mut failures = Vec::new();
    for hook in ways {
        match attach(ebpf, btf, hook) {
            Ok(label) => {
                skipped.extend(failures);
                return Ok((hook.id, label));
            }
            Err(err) => failures.push(format!("{} ({err:#}; a slower way is used)", hook.program)),
        }
    }
    anyhow::bail!(
        "no way to attach {}: {}",
        ways[0].program,
        failures.join("; ")
    )
}

/// With sshd's output seen through socket sends, the hook for a standard error that is a pipe
/// or a file is loaded now (verified while start-up has time) and attached only once a
/// followed sshd logs there: until then write(2) costs the host nothing.
fn prepare_stderr_writes(
    ebpf: &mut Ebpf,
    btf: &Btf,
    attached: &[(HookId, String)],
) -> Option<Hook> {
    let by_sockets = attached
        .iter()
        .any(|(id, _)| *id == HookId::SshdOutput(OutputWay::SocketSends));
    let hook = hooks::STDERR_WRITES;
    let program = ebpf.program_mut(hook.program)?;
    (by_sockets && load(program, btf, hook.attach).is_ok()).then_some(hook)
}

/// Loads (where the parallel verification did not) and attaches one hook; returns its label.
fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &Hook) -> Result<String> {
    let name = hook.program;
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    if program.fd().is_err() {
        load(program, btf, hook.attach).with_context(|| format!("cannot load {name}"))?;
    }
    attach_loaded(program, hook)
}

/// Attaches a loaded program where `hook` says; returns its label.
pub(super) fn attach_loaded(program: &mut Program, hook: &Hook) -> Result<String> {
    match hook.attach {
        Attach::TracePoint(category, tp) => {
            let p: &mut TracePoint = program.try_into()?;
            p.attach(category, tp).map(drop)
        }
        Attach::RawTracePoint(tp) => {
            let p: &mut RawTracePoint = program.try_into()?;
            p.attach(tp).map(drop)
        }
        Attach::BtfTracePoint(_) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            p.attach().map(drop)
        }
        Attach::KProbe(function) => {
            let p: &mut KProbe = program.try_into()?;
            p.attach(function, 0).map(drop)
        }
    }
    .with_context(|| format!("cannot attach {}", hook.label()))?;
    Ok(hook.label())
}

/// Loads a program: the kernel verifies it.
fn load(program: &mut Program, btf: &Btf, how: Attach) -> Result<()> {
    match how {
        Attach::TracePoint(..) => <&mut TracePoint>::try_from(program)?.load()?,
        Attach::RawTracePoint(_) => <&mut RawTracePoint>::try_from(program)?.load()?,
        Attach::BtfTracePoint(tp) => <&mut BtfTracePoint>::try_from(program)?.load(tp, btf)?,
        Attach::KProbe(_) => <&mut KProbe>::try_from(program)?.load()?,
    }
    Ok(())
}

/// Loads the programs of `hooks` on two threads: the verifier is most of start-up, and each
/// program is verified on its own. A program that fails here is loaded again by `attach`,
/// which reports why.
fn verify_in_parallel(ebpf: &mut Ebpf, btf: &Btf, hooks: &[Hook]) {
    let mut mine: Vec<(&mut Program, Attach)> = ebpf
        .programs_mut()
        .filter_map(|(name, p)| Some((p, hooks.iter().find(|h| h.program == name)?.attach)))
        .collect();
    let theirs = mine.split_off(mine.len() / 2);
    let verify = |programs: Vec<(&mut Program, Attach)>| {
        for (program, how) in programs {
            let _ = load(program, btf, how);
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| verify(theirs));
        verify(mine);
    });
}

/// The kernel's BTF as aya reads it, parsed on a thread of its own while the rest of start-up
/// runs (tens of milliseconds): for attaching tp_btf programs. The loader parses its own copy
/// when it is made, for CO-RE relocations this object has none of (its offsets come from
/// `LAYOUT`): that copy is dropped before the other is parsed, so that start-up holds one
/// parse of aya's at a time (three at once made most of its peak memory).
pub struct BtfParses(std::thread::JoinHandle<(EbpfLoader<'static>, Result<Btf, aya::BtfError>)>);

impl BtfParses {
    pub fn start() -> Self {
        Self(std::thread::spawn(|| {
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            (loader, Btf::from_sys_fs())
        }))
    }

    fn join(self) -> Result<(EbpfLoader<'static>, Btf)> {
        let (loader, btf) = self.0.join().expect("the BTF parse panicked");
        Ok((loader, btf.context("cannot read the kernel's BTF")?))
    }
}

/// Which program types this kernel's verifier knows, by aya's feature probe (a minimal program
/// of each type). Loading a real program may still be refused (lockdown refuses fentry and
/// kprobes on some kernels): the hooks list says what did attach.
pub fn program_types() -> Vec<(&'static str, String)> {
    use aya::programs::ProgramType;
    [
        ("tracepoint", ProgramType::TracePoint),
        ("raw_tracepoint", ProgramType::RawTracePoint),
        ("tracing (tp_btf, fentry/fexit)", ProgramType::Tracing),
        ("kprobe", ProgramType::KProbe),
    ]
    .into_iter()
    .map(|(name, ty)| {
        let answer = match aya::sys::is_program_supported(ty) {
            Ok(true) => "known".to_owned(),
            Ok(false) => "not known".to_owned(),
            Err(err) => format!("probe failed ({err})"),
        };
        (name, answer)
    })
    .collect()
}

/// The kernel's history of sockets on tracked ports, where connections not claimed by a
/// tracked process wait unreported.
pub struct UnclaimedConnections(HashMap<MapData, u64, SockHistory>);

impl UnclaimedConnections {
    /// Established connections on `ports` that no tracked process has accepted: a listener's
    /// queue (a client that gave up waiting has its connection there still, half closed).
    /// Read only when a listener fails to accept.
    pub fn queued(&self, ports: &[u16]) -> Vec<(u64, SockHistory)> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, h)| {
                h.claimed == 0 && h.established_ns != 0 && ports.contains(&h.endpoints.local_port)
            })
            .collect()
    }
}

/// The kernel's per-CPU counts of resets in storms (`RESET_BURSTS`): each record carries the
/// resets held back before it, and what was held back after a client's last record is still
/// here when sshtrace stops.
pub struct ResetBursts(PerCpuHashMap<MapData, BurstKey, Burst>);

impl ResetBursts {
    /// Resets without a socket (refusals) counted after the last record for their client, on
    /// every CPU. Read once the programs are detached, so that the counts stand still.
    pub fn held_back_refusals(&self) -> u64 {
        self.held_back(burst_kind::REFUSAL)
    }

    /// Firewall drops counted after the last record for their client, likewise.
    pub fn held_back_drops(&self) -> u64 {
        self.held_back(burst_kind::FIREWALL_DROP)
    }

    /// Keys the LRU map evicted (each perhaps with counts no record carried yet), from how
    /// many the kernel added: only a storm from more clients than it holds evicts any, so the
    /// map is walked only then.
    pub fn evicted(&self, added: u64) -> u64 {
        if added <= u64::from(sshtrace_common::RESET_BURST_KEYS) {
            return 0;
        }
        added.saturating_sub(self.0.keys().filter_map(Result::ok).count() as u64)
    }

    fn held_back(&self, kind: u16) -> u64 {
        self.0
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, _)| key.kind == kind)
            .map(|(_, per_cpu)| per_cpu.iter().map(|b| u64::from(b.suppressed)).sum::<u64>())
            .sum()
    }
}

/// The kernel's view of what to report: tracked local ports and tracked processes.
pub struct KernelFilters {
    /// Indexed by port: 1 for a tracked one.
    ports: Array<MapData, u8>,
    port_set: BTreeSet<u16>,
    pids: HashMap<MapData, u32, u8>,
    netns: HashMap<MapData, u32, u8>,
    /// Processes discovery found that the full tracked-process map could not take.
    pub untracked: BTreeSet<u32>,
    /// Whether TCP events are filtered by network namespace (`--container`, `--host-only`).
    netns_filtered: bool,
    /// Network namespaces to report that the full map could not take.
    pub untracked_netns: BTreeSet<u32>,
}

impl KernelFilters {
    /// Makes the kernel's port set equal to `ports`.
    pub fn set_ports(&mut self, ports: &BTreeSet<u16>) -> Result<()> {
        for (port, tracked) in self
            .port_set
            .difference(ports)
            .map(|p| (*p, 0))
            .chain(ports.difference(&self.port_set).map(|p| (*p, 1)))
            .collect::<Vec<_>>()
        {
            self.ports
                .set(u32::from(port), tracked, 0)
                .context("cannot update the tracked ports")?;
        }
        self.port_set.clone_from(ports);
        Ok(())
    }

    /// Network namespaces whose TCP events count (used with `--container`/`--host-only`).
    /// Kept only when filtering: a host with more namespaces than the map holds loses
    /// nothing then. One the full map cannot take is counted.
    pub fn set_netns(&mut self, wanted: &BTreeSet<u32>) {
        if !self.netns_filtered {
            return;
        }
        let current: BTreeSet<u32> = self
            .netns
            .keys()
            .filter_map(std::result::Result::ok)
            .collect();
        for stale in current.difference(wanted) {
            let _ = self.netns.remove(stale);
        }
        for ns in wanted.difference(&current) {
            if self.netns.insert(ns, 1, 0).is_err() {
                self.untracked_netns.insert(*ns);
            }
        }
    }

    /// A listener found by discovery; when the tracked-process map is full it is counted as
    /// untracked (the map holds processes the kernel found itself too).
    pub fn track_listener(&mut self, pid: u32) {
        if self.pids.insert(pid, pid_flags::LISTENER, 0).is_err() {
            self.untracked.insert(pid);
        }
    }

    /// A process that already existed at discovery (the fork probe adds new ones itself).
    pub fn track_descendant(&mut self, pid: u32) {
        if self.pids.get(&pid, 0).is_ok() {
            return;
        }
        if self.pids.insert(pid, pid_flags::DESCENDANT, 0).is_err() {
            self.untracked.insert(pid);
        }
    }
}

/// Records produced (read or lost) and lost by the probes, summed over CPUs.
pub struct LossCounters(PerCpuArray<MapData, u64>);

impl LossCounters {
    pub fn read(&self) -> (u64, u64) {
        (self.sum(counter::PRODUCED), self.sum(counter::LOST))
    }

    /// Processes the kernel could not follow (its tracked-process map was full).
    pub fn untracked_processes(&self) -> u64 {
        self.sum(counter::UNTRACKED_PROCESSES)
    }

    pub fn untracked_client_sockets(&self) -> u64 {
        self.sum(counter::CLIENT_SOCKETS_NOT_FOLLOWED)
    }

    /// Keys the kernel added to its map of storm counters.
    pub fn burst_keys_added(&self) -> u64 {
        self.sum(counter::BURST_KEYS_ADDED)
    }

    fn sum(&self, index: u32) -> u64 {
        self.0
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

/// Runs of sshtrace's programs the kernel skipped: a program is not run again on a CPU where it
/// is already running (an interrupt nested in it), so whatever event it would have seen is
/// unknown — perhaps one that mattered. Counted by the kernel per program (5.12+). Holds its
/// own descriptors, so that the count stays readable after the programs are detached.
pub struct SkippedRuns(Vec<aya::programs::ProgramFd>);

impl SkippedRuns {
    pub fn read(&self) -> u64 {
        self.0.iter().map(|fd| recursion_misses(fd.as_fd())).sum()
    }
}

/// `bpf_prog_info.recursion_misses` of a program (0 where the kernel does not count them).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;

    // SAFETY: plain-old-data filled by the kernel (up to the size it knows).
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD with an attribute of the size passed, whose `info`
    // points to a buffer of `info_len` bytes that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as i32,
            &raw mut attr,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if ret < 0 {
        return 0;
    }
    info.recursion_misses
}
