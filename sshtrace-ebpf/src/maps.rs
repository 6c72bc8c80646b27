//! Maps and globals shared by the probes, and the filters built on them.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use sshtrace_common::{counter, KernelLayout, Settings};

/// Every record for userspace, in one ring so that their order is the order they happened.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Local TCP ports whose connections are reported (sshd ports and `--port`).
#[map]
pub static TRACKED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

/// Processes (tgid) whose forks, execs, exits, signals and accepts are reported. Userspace adds
/// the sshd listeners; the fork probe adds their descendants at once, so no child is missed.
#[map]
pub static TRACKED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// `accept` arguments kept from syscall entry to exit, by pid_tgid.
#[map]
pub static ACCEPT_ARGS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

/// Produced and lost record counts, per CPU (see `sshtrace_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout::ABSENT;

#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings {
    all_ports: 0,
    netfilter_drop: u32::MAX,
    filter_netns: 0,
    no_socket_drop: u32::MAX,
};

/// Network namespaces (inode) to report TCP events in, with `--container`/`--host-only`.
#[map]
pub static TRACKED_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Whether TCP events of network namespace `netns` are reported.
#[inline(always)]
pub fn netns_tracked(netns: u32) -> bool {
    settings().filter_netns == 0 || unsafe { TRACKED_NETNS.get(netns) }.is_some()
}

/// The inode of the network namespace a `struct net *` is.
#[inline(always)]
pub fn net_inum(net: u64) -> u32 {
    let s = layout().structs;
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
    let s = layout().structs;
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
    let s = layout().structs;
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
pub fn settings() -> Settings {
    unsafe { core::ptr::read_volatile(&raw const SETTINGS) }
}

/// The kernel layout userspace wrote before load. Read through a volatile load so that the
/// compiler cannot fold the placeholder values of the static into the code.
#[inline(always)]
pub fn layout() -> KernelLayout {
    unsafe { core::ptr::read_volatile(&raw const LAYOUT) }
}

#[inline(always)]
pub fn port_tracked(port: u16) -> bool {
    let all_ports = unsafe { core::ptr::read_volatile(&raw const SETTINGS.all_ports) };
    all_ports != 0 || unsafe { TRACKED_PORTS.get(port) }.is_some()
}

#[inline(always)]
pub fn pid_tracked(tgid: u32) -> bool {
    unsafe { TRACKED_PIDS.get(tgid) }.is_some()
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        unsafe { *value += 1 };
    }
}
