//! Maps and globals shared by the probes, and the filters built on them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use sshtrace_common::{counter, pid_flags, KernelLayout, Settings, TcpStateNumbers};

/// Every record for userspace, in one ring so that their order is the order they happened.
/// Its size is set at load (`--ring-size`).
/// One setting, read alone: a copy of the whole struct costs BPF stack in every program.
#[macro_export]
macro_rules! setting {
    ($name:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::SETTINGS.$name) }
    };
}

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Local TCP ports whose connections are reported (sshd ports and `--port`): non-zero at the
/// port's index. An array, not a hash: every socket state change on the host looks here.
#[map]
pub static TRACKED_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// Processes (tgid) whose forks, execs, exits, signals and accepts are reported. Userspace adds
/// the sshd listeners; the fork probe adds their descendants at once, so no child is missed.
#[map]
pub static TRACKED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// `accept` arguments kept from syscall entry to exit, by pid_tgid.
#[map]
pub static ACCEPT_ARGS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

/// Index 0 is set by userspace when it stops: from then on nothing is recorded or counted,
/// so its last read of the ring is complete without the detach, which takes most of a second.
#[map]
pub static STOP: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn stopped() -> bool {
    STOP.get(0).is_some_and(|flag| *flag != 0)
}

/// Produced and lost record counts, per CPU (see `sshtrace_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[unsafe(no_mangle)]
pub(crate) static LAYOUT: KernelLayout = KernelLayout::ABSENT;

/// One section or member of the kernel layout userspace wrote before load, read alone: the
/// whole layout is hundreds of bytes, too much to copy on every socket state change.
#[macro_export]
macro_rules! layout {
    ($($path:ident).+) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::LAYOUT.$($path).+) }
    };
}

#[unsafe(no_mangle)]
pub(crate) static SETTINGS: Settings = Settings {
    all_ports: 0,
    netfilter_drop: u32::MAX,
    filter_netns: 0,
    no_socket_drop: u32::MAX,
    tcp_states: TcpStateNumbers::LINUX,
    claim_on_accept: 0,
    wakeup_backlog: 256 * 1024,
    follow_sshd_execs: 0,
    client_mode: 0,
};

/// Network namespaces (inode) to report TCP events in, with `--container`/`--host-only`.
#[map]
pub static TRACKED_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Whether TCP events of network namespace `netns` are reported.
#[inline(always)]
pub fn netns_tracked(netns: u32) -> bool {
    setting!(filter_netns) == 0 || unsafe { TRACKED_NETNS.get(netns) }.is_some()
}

/// The inode of the network namespace a `struct net *` is.
#[inline(always)]
pub fn net_inum(net: u64) -> u32 {
    let s = layout!(structs);
    if net == 0 || s.net_inum == sshtrace_common::ABSENT {
        return 0;
    }
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel((net as *const u8).add(s.net_inum as usize).cast())
    }
    .unwrap_or(0)
}

/// The network namespace of a socket.
#[inline(always)]
pub fn sk_netns(sk: u64) -> u32 {
    let s = layout!(structs);
    if sk == 0 || s.sk_net == sshtrace_common::ABSENT {
        return 0;
    }
    let net: u64 = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel((sk as *const u8).add(s.sk_net as usize).cast())
    }
    .unwrap_or(0);
    net_inum(net)
}

/// The network namespace of a packet, through its device.
#[inline(always)]
pub fn skb_netns(skb: u64) -> u32 {
    let s = layout!(structs);
    if skb == 0 || s.skb_dev == sshtrace_common::ABSENT || s.dev_net == sshtrace_common::ABSENT {
        return 0;
    }
    let dev: u64 = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel((skb as *const u8).add(s.skb_dev as usize).cast())
    }
    .unwrap_or(0);
    if dev == 0 {
        return 0;
    }
    let net: u64 = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel((dev as *const u8).add(s.dev_net as usize).cast())
    }
    .unwrap_or(0);
    net_inum(net)
}

#[inline(always)]
pub fn tcp_states() -> TcpStateNumbers {
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.tcp_states) }
}

#[inline(always)]
pub fn claim_on_accept() -> bool {
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.claim_on_accept) != 0 }
}

#[inline(always)]
pub fn port_tracked(port: u16) -> bool {
    let all_ports = unsafe { core::ptr::read_volatile(&raw const SETTINGS.all_ports) };
    all_ports != 0 || TRACKED_PORTS.get(port as u32).is_some_and(|&t| t != 0)
}

#[inline(always)]
pub fn pid_tracked(tgid: u32) -> bool {
    unsafe { TRACKED_PIDS.get(tgid) }.is_some()
}

#[inline(always)]
pub fn follow_sshd_execs() -> bool {
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.follow_sshd_execs) != 0 }
}

/// The `pid_flags` of a followed process, `None` for any other.
#[inline(always)]
pub fn tracked_flags(tgid: u32) -> Option<u8> {
    unsafe { TRACKED_PIDS.get(tgid) }.copied()
}

/// Whether process `tgid` owns sshd's listening sockets (see `pid_flags::OWNS_LISTENERS`).
#[inline(always)]
pub fn owns_listeners(tgid: u32) -> bool {
    unsafe { TRACKED_PIDS.get(tgid) }.is_some_and(|&f| f & pid_flags::OWNS_LISTENERS != 0)
}

/// Value of a port in `TRACKED_PORTS` that the kernel itself tracked (an sshd listened or
/// accepted there); userspace writes 1.
pub const PORT_LEARNED: u8 = 2;

/// Tracks `port` from now on: an sshd listens or accepts there. Done in the kernel, so the
/// first connection of a new sshd is followed before userspace hears of it.
#[inline(always)]
pub fn track_port(port: u16) {
    if let Some(slot) = TRACKED_PORTS.get_ptr_mut(port as u32) {
        unsafe {
            if *slot == 0 {
                *slot = PORT_LEARNED;
            }
        }
    }
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        unsafe { *value += 1 };
    }
}
