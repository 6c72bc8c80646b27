//! The wire types shared by the eBPF programs (`sshtrace-ebpf`) and userspace (`sshtrace`).
//!
//! Everything here is `#[repr(C)]` and exists exactly once: the kernel side writes these
//! records into the ring buffer and reads [`KernelLayout`] from a global; userspace decodes
//! the records and fills the layout from tracefs `format` files and BTF at start-up.
#![no_std]

pub mod event;
pub mod layout;

pub use event::*;
pub use layout::*;

/// Keys of the kernel's `TRACKED_PIDS` map values (bit flags).
pub mod pid_flags {
    /// A listening sshd found by discovery or named with `--pid`.
    pub const LISTENER: u8 = 1;
    /// A descendant of a tracked process, added by the fork probe itself.
    pub const DESCENDANT: u8 = 2;
    /// Followed since it executed a root-owned sshd program (found by the kernel at once).
    pub const SSHD_EXEC: u8 = 4;
    /// What a process that owns sshd's listening sockets has: its listens and accepts make
    /// their ports tracked. A descendant (a session's port forwarding) does not.
    pub const OWNS_LISTENERS: u8 = LISTENER | SSHD_EXEC;
}

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Records the programs produced: written to the ring buffer, or lost.
    pub const PRODUCED: u32 = 0;
    /// Records lost because the ring buffer was full.
    pub const LOST: u32 = 1;
    /// Processes that could not be followed: the tracked-process map was full.
    pub const UNTRACKED_PROCESSES: u32 = 2;
    /// Keys added to `RESET_BURSTS` (an LRU map): more than it holds means some were evicted,
    /// perhaps with counts no record carried yet.
    pub const BURST_KEYS_ADDED: u32 = 3;
    /// `ssh` sockets `sshtrace client` could not follow: its socket map was full.
    pub const CLIENT_SOCKETS_NOT_FOLLOWED: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// What a `RESET_BURSTS` entry counts.
pub mod burst_kind {
    /// Resets sent without a socket: refused connection attempts (and stray segments).
    pub const REFUSAL: u16 = 0;
    /// Resets a client-side socket received (a REJECT's answer): evidence only.
    pub const CLIENT_SIDE: u16 = 1;
    /// Segments netfilter dropped (a flood against a DROP rule).
    pub const FIREWALL_DROP: u16 = 2;
}

/// How many clients' storms the kernel's `RESET_BURSTS` map counts at once.
pub const RESET_BURST_KEYS: u32 = 8192;

/// Key of the kernel's per-CPU `RESET_BURSTS` map: a storm of resets is counted per tracked
/// endpoint and client, one record sent per interval and the rest held back.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BurstKey {
    pub netns: u32,
    pub local_port: u16,
    /// A [`burst_kind`].
    pub kind: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A server of `sshtrace client`'s connections: the key of the baseline its segments left.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerKey {
    pub netns: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// Value of `RESET_BURSTS`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Burst {
    pub window_start_ns: u64,
    pub sent_in_window: u32,
    /// Resets counted since the last record sent for the key; the next record carries them.
    pub suppressed: u32,
}

/// Run-time switches userspace sets through the `SETTINGS` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Non-zero: report TCP resets on every port, not only the tracked ones.
    pub all_ports: u32,
    /// This kernel's `SKB_DROP_REASON_NETFILTER_DROP`, or `u32::MAX` when it has none.
    pub netfilter_drop: u32,
    /// Non-zero: report TCP events only in the network namespaces of `TRACKED_NETNS`.
    pub filter_netns: u32,
    /// This kernel's `SKB_DROP_REASON_NO_SOCKET` when its `tcp:tcp_send_reset` does not report
    /// resets sent without a socket (before 6.10): refusals are then seen as the refused
    /// segment's drop. `u32::MAX` otherwise.
    pub no_socket_drop: u32,
    /// This kernel's TCP state numbers, for the socket history kept in the kernel.
    pub tcp_states: TcpStateNumbers,
    /// Non-zero: connections created on a tracked port are reported only once claimed —
    /// accepted by a tracked process, or reset — so that healthy traffic on the port costs no
    /// records. Needs the accepted fd to be followed to its socket (see `StructLayout`).
    pub claim_on_accept: u32,
    /// Bytes waiting in the ring buffer that make a high-volume record wake userspace at once
    /// (it drains on a 100 ms tick otherwise): a quarter of the ring.
    pub wakeup_backlog: u32,
    /// Non-zero: a process that executes a root-owned sshd program is followed from that exec,
    /// and the ports its listens and accepts use become tracked (off with `--pid`).
    pub follow_sshd_execs: u32,
    /// Non-zero: `sshtrace client`: the outgoing connections of `ssh` processes are followed
    /// instead of sshd's.
    pub client_mode: u32,
}

/// The TCP states the kernel-side socket history follows (`enum` values from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpStateNumbers {
    pub established: i32,
    pub syn_recv: i32,
    pub fin_wait1: i32,
    pub close: i32,
    pub close_wait: i32,
    pub listen: i32,
    pub syn_sent: i32,
    pub fin_wait2: i32,
    pub closing: i32,
    pub last_ack: i32,
}

impl TcpStateNumbers {
    /// The numbers every Linux kernel has used (include/net/tcp_states.h).
    pub const LINUX: Self = Self {
        established: 1,
        syn_recv: 3,
        fin_wait1: 4,
        close: 7,
        close_wait: 8,
        listen: 10,
        syn_sent: 2,
        fin_wait2: 5,
        closing: 11,
        last_ack: 9,
    };
}

impl Default for TcpStateNumbers {
    fn default() -> Self {
        Self::LINUX
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integer fields only, no padding (each below too).
    unsafe impl aya::Pod for super::KernelLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockHistory {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BurstKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Burst {}
}
