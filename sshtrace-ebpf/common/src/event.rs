//! Ring-buffer records. Each starts with an [`EventHeader`] whose `kind` says which one it is.

pub const COMM_LEN: usize = 16;
pub const PATH_LEN: usize = 128;
/// `struct sockaddr_in6` is the largest address an accept can return for TCP.
pub const SOCKADDR_LEN: usize = 28;

/// `seg_flags` when the flags of the segment that caused a reset could not be read.
pub const SEG_FLAGS_UNKNOWN: u16 = u16::MAX;
/// `reason` when the running kernel's `tcp_send_reset` has no reason field (before 6.10).
pub const REASON_UNKNOWN: u32 = u32::MAX;
/// `reason` of a reset seen as the refused segment's drop with `SKB_DROP_REASON_NO_SOCKET`
/// (kernels before 6.10, whose `tcp_send_reset` does not fire without a socket). Userspace
/// names it `NO_SOCKET`, as 6.10+ kernels name theirs.
pub const REASON_NO_SOCKET_DROP: u32 = u32::MAX - 1;

/// Every record kind, listed once with its number and its wire type: this defines
/// [`EventKind`], its decoding from a header, and the [`WireRecord`] each wire type is.
macro_rules! event_kinds {
    ($($kind:ident = $number:literal => $wire:ident,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum EventKind {
            $($kind = $number,)*
        }

        impl EventKind {
            pub fn from_u32(kind: u32) -> Option<Self> {
                match kind {
                    $($number => Some(Self::$kind),)*
                    _ => None,
                }
            }
        }

        $(impl WireRecord for $wire {
            const KIND: EventKind = EventKind::$kind;
            fn header(&mut self) -> &mut EventHeader {
                &mut self.header
            }
        })*
    };
}

event_kinds! {
    SendReset = 1 => SendResetEvent,
    ReceiveReset = 2 => ReceiveResetEvent,
    SockState = 3 => SockStateEvent,
    Accept = 4 => AcceptEvent,
    Fork = 5 => ForkEvent,
    Exec = 6 => ExecEvent,
    Exit = 7 => ExitEvent,
    Signal = 8 => SignalEvent,
    SyscallError = 9 => SyscallErrorEvent,
    OomVictim = 10 => OomVictimEvent,
    FirewallDrop = 11 => FirewallDropEvent,
    SelinuxAudited = 12 => SelinuxAuditedEvent,
    SshdOutput = 13 => SshdOutputEvent,
    ResetFingerprint = 14 => ResetFingerprintEvent,
    ClientConnect = 15 => ClientConnectEvent,
}

/// A record type of the ring: it begins with an [`EventHeader`] of its [`EventKind`].
pub trait WireRecord: Copy + 'static {
    const KIND: EventKind;
    fn header(&mut self) -> &mut EventHeader;
}

/// Common to every record. `pid`/`tid`/`comm` describe the task that was current when the
/// probe ran: meaningful in process context only (resets raised in softirq name a random task).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct EventHeader {
    pub kind: u32,
    pub tid: u32,
    pub pid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// A TCP 4-tuple seen from this host: `local` is this host's side (the sshd side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct Endpoints {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    /// Network namespace inode (0 when it could not be read): containers reuse addresses.
    pub netns: u32,
    pub _pad2: u32,
    /// IPv4 addresses use the first four bytes.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// `tcp:tcp_send_reset`: this host's TCP stack sent a RST.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SendResetEvent {
    pub header: EventHeader,
    /// 0 when no socket matched the segment (e.g. nothing listening).
    pub skaddr: u64,
    pub state: i32,
    /// `enum sk_rst_reason`, or [`REASON_UNKNOWN`].
    pub reason: u32,
    /// TCP flags of the segment answered by a no-socket reset, or [`SEG_FLAGS_UNKNOWN`].
    pub seg_flags: u16,
    pub _pad: u16,
    /// No-socket resets to the same client counted in the kernel since the previous record
    /// (in a storm, a few records per client every [`RESET_BURST_INTERVAL_NS`]; the rest counted).
    pub suppressed: u32,
    pub endpoints: Endpoints,
}

pub const RESET_BURST_INTERVAL_NS: u64 = 100_000_000;

/// `tcp:tcp_receive_reset`: a RST arrived for one of this host's sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct ReceiveResetEvent {
    pub header: EventHeader,
    pub skaddr: u64,
    /// Non-zero: the receiving socket is a client of a tracked port (its remote port is
    /// tracked), e.g. an `ssh` client on this host getting a firewall's reset.
    pub client_side: u32,
    /// Client-side resets for the same server address counted since the previous record.
    pub suppressed: u32,
    pub endpoints: Endpoints,
}

/// A reset arrived on a connection of a tracked port that `tcp_probe` sees (established, on
/// this host's socket): the reset's own headers, what the socket expected, and the peer's
/// earlier segments.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct ResetFingerprintEvent {
    pub header: EventHeader,
    pub skaddr: u64,
    pub endpoints: Endpoints,
    pub peer: PeerSegments,
    /// The reset's sequence and acknowledgement numbers, and the socket's `rcv_nxt`,
    /// `snd_una` and `snd_nxt` when it arrived.
    pub seq: u32,
    pub ack: u32,
    pub rcv_nxt: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub window: u16,
    /// The reset's IPv4 identification (0 for IPv6).
    pub ip_id: u16,
    pub ttl: u8,
    pub tcp_flags: u8,
    /// Non-zero: `rcv_nxt`/`snd_*` could not be read (no `tcp_sock` layout).
    pub socket_unread: u8,
    /// 4 or 6: the reset's IP version (an IPv6 socket receives IPv4 segments too).
    pub ip_version: u8,
    pub _pad: u32,
}

/// `sshtrace client`: a followed `ssh` connects (the socket's CLOSE → SYN_SENT, in its own
/// context): what it is, read by the kernel at once.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct ClientConnectEvent {
    pub header: EventHeader,
    pub skaddr: u64,
    pub parent_tgid: u32,
    /// Its executable's owner (global uid) and mode, when `exe_known` is non-zero.
    pub exe_uid: u32,
    pub exe_mode: u16,
    pub exe_known: u8,
    pub _pad: u8,
    /// Bytes of its command line (NUL-separated arguments) copied into `args`, and how long
    /// it is.
    pub args_copied: u32,
    pub args_len: u64,
    pub args: [u8; CLIENT_ARGS_LEN],
}

/// As much of a command line as a record carries: as much as of sshd's output.
pub const CLIENT_ARGS_LEN: usize = OUTPUT_LEN;

/// Reset fingerprints sent per connection (a flood of forged resets gets no more); every
/// reset is counted in [`PeerSegments::resets`].
pub const FINGERPRINTS_PER_CONNECTION: u32 = 4;

/// `sock:inet_sock_set_state` for TCP.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SockStateEvent {
    pub header: EventHeader,
    pub skaddr: u64,
    pub old_state: i32,
    pub new_state: i32,
    pub endpoints: Endpoints,
    /// The transitions the kernel kept instead of sending (see [`SockHistory`]).
    pub history: SockHistory,
}

/// What the kernel remembers of a tracked socket between the records it sends: its
/// transitions are noted here, and a record is sent when a claimed connection is closed (or,
/// without claims, also when it is established).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SockHistory {
    /// SYN_RECV → ESTABLISHED (`bpf_ktime_get_ns`): the handshake's last ACK, which also
    /// created the full socket; 0 when not seen (e.g. before sshtrace started).
    pub established_ns: u64,
    /// Who sent the first FIN of an orderly close ([`first_fin_by`]): set at the close, from
    /// the state the socket closes from.
    pub first_fin_by: u32,
    /// Non-zero once the connection matters to a verdict (see `Settings::claim_on_accept`).
    pub claimed: u32,
    /// The connection, as seen when it was created (zero when it was not seen created).
    pub endpoints: Endpoints,
    /// What the peer's own segments looked like, the baseline a reset is compared with.
    pub peer: PeerSegments,
}

/// The IP headers of the segments a tracked connection received from its peer, as `tcp_probe`
/// saw them (resets excluded): a box on the path that forges a reset rarely gets these right.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct PeerSegments {
    /// When the latest arrived (`bpf_ktime_get_ns`); 0: none seen.
    pub last_ns: u64,
    pub count: u32,
    /// TTL (IPv4) or hop limit (IPv6) of the latest, and the least and most seen.
    pub ttl_last: u8,
    pub ttl_min: u8,
    pub ttl_max: u8,
    pub _pad: u8,
    /// IPv4 identification of the latest (0 for IPv6).
    pub ip_id_last: u16,
    pub _pad2: u16,
    /// Resets that arrived so far (they are not in the figures above).
    pub resets: u32,
}

pub mod first_fin_by {
    pub const UNKNOWN: u32 = 0;
    /// Closed from FIN_WAIT1, FIN_WAIT2 or CLOSING: this host (sshd) sent the first FIN.
    pub const LOCAL: u32 = 1;
    /// Closed from CLOSE_WAIT or LAST_ACK: the peer sent the first FIN.
    pub const PEER: u32 = 2;
}

/// `accept`/`accept4` returned in a tracked process (process context: the header's pid owns it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct AcceptEvent {
    pub header: EventHeader,
    /// The new fd, or -errno.
    pub ret: i64,
    /// -1 where the entry is not hooked (the accepted socket is followed instead).
    pub listen_fd: i32,
    /// Bytes of `peer` that were read (0 when the caller passed no address buffer).
    pub peer_len: u32,
    /// The caller's `struct sockaddr` as the kernel filled it.
    pub peer: [u8; SOCKADDR_LEN],
    /// Non-zero: not an accept but a connection the process was started with on its standard
    /// input (inetd mode: `sshd -i` under inetd or systemd's `Accept=yes`), found at its exec.
    pub inherited: u32,
    /// The accepted socket (0 when the fd could not be followed to it).
    pub skaddr: u64,
    /// Non-zero when the kernel kept the socket's history: the connection, not reported
    /// before (see `Settings::claim_on_accept`), is reported here.
    pub history_found: u32,
    pub _pad2: u32,
    pub history: SockHistory,
}

/// A tracked process created a new process (threads are not reported). The header is the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// A tracked process executed a new program, or a process began to be followed because it
/// executed an sshd program. The header is the process after exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Non-zero: the process was not followed before; this exec of an sshd program made it so.
    pub began_tracking: u32,
    /// Non-zero when `exe_uid` and `exe_mode` were read.
    pub exe_known: u32,
    /// The executable's owner (global uid) and `i_mode`, read in the kernel at the exec.
    pub exe_uid: u32,
    pub exe_mode: u32,
    pub filename: [u8; PATH_LEN],
}

/// A tracked process exited (its last thread). The header is the exiting process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task_struct.exit_code`: wait(2) status bits (signal in the low 7, 0x80 core, status << 8).
    pub exit_code: i32,
    /// Non-zero when the memory cgroup numbers were read from the exiting task.
    pub memcg_read: u32,
    /// Its memory cgroup's limit and usage, in pages (`page_counter`).
    pub memcg_max_pages: u64,
    pub memcg_usage_pages: u64,
}

/// `signal:signal_generate` for a terminating signal aimed at a tracked process.
/// The header is the sender as the kernel saw it (the task itself for faults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SignalEvent {
    pub header: EventHeader,
    pub target_pid: u32,
    pub sig: i32,
    /// `si_code`: > 0 the kernel (fault), 0 `SI_USER` (kill), -6 `SI_TKILL`, 0x80 `SI_KERNEL`.
    pub code: i32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, …
    pub result: i32,
    pub target_comm: [u8; COMM_LEN],
}

/// A system call of a tracked process failed. Identical failures (same process, syscall and
/// error) within [`SYSCALL_ERROR_INTERVAL_NS`] are counted in the kernel, not sent one by one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SyscallErrorEvent {
    pub header: EventHeader,
    /// The architecture's syscall number.
    pub nr: i32,
    /// -errno.
    pub ret: i32,
    /// Identical failures since the previous record for the same key.
    pub suppressed: u32,
    /// Non-zero when `rlimits` were read from the failing task.
    pub rlimits_read: u32,
    /// The task's soft limits at the failure, in [`RLIMITS_REPORTED`] order.
    pub rlimits: [u64; 3],
    /// Non-zero when `creds` were read from the failing task.
    pub creds_read: u32,
    pub _pad: u32,
    pub creds: TaskCreds,
    /// The path argument of a failed open, else empty.
    pub path: [u8; PATH_LEN],
}

/// Supplementary groups a failed syscall carries; a task with more says so in `ngroups`.
pub const GROUPS_REPORTED: usize = 16;

/// What a permission check of the failing task used, read in the kernel at the failure: the
/// task may be gone by the time userspace asks whether the mode bits allowed the access.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct TaskCreds {
    /// The subjective credentials' fs ids (`current->cred`).
    pub fsuid: u32,
    pub fsgid: u32,
    pub cap_effective: u64,
    /// All supplementary groups; the first [`GROUPS_REPORTED`] are in `groups`.
    pub ngroups: u32,
    /// The task's parent process: its root directory is a candidate for the failing task's.
    pub parent_tgid: u32,
    pub groups: [u32; GROUPS_REPORTED],
    /// The task's root directory: its superblock's `s_dev` (kernel encoding, major << 20 |
    /// minor) and inode number, 0 when unreadable. Names the directory a path resolved from.
    pub root_dev: u32,
    pub _pad: u32,
    pub root_ino: u64,
}

/// The resource limits a failed syscall carries (`RLIMIT_NOFILE`, `RLIMIT_NPROC`,
/// `RLIMIT_AS`): the ones EMFILE, fork's EAGAIN and ENOMEM run into.
pub const RLIMITS_REPORTED: [u32; 3] = [7, 6, 9];

pub const SYSCALL_ERROR_INTERVAL_NS: u64 = 100_000_000;

/// `oom:mark_victim` for a tracked process. The header is the task that ran into the OOM.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct OomVictimEvent {
    pub header: EventHeader,
    pub pid: u32,
    pub uid: u32,
    /// kB, as the tracepoint reports them; u64::MAX when this kernel does not.
    pub total_vm: u64,
    pub anon_rss: u64,
    pub file_rss: u64,
    pub shmem_rss: u64,
    pub pgtables: u64,
    pub oom_score_adj: i16,
    pub _pad: [u16; 3],
}

/// "Not reported by this kernel" for optional numbers.
pub const UNKNOWN_U64: u64 = u64::MAX;

/// Netfilter dropped a TCP segment to or from a tracked port (`skb:kfree_skb` with reason
/// NETFILTER_DROP; REJECT targets drop the segment too, after answering it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct FirewallDropEvent {
    pub header: EventHeader,
    /// Flags of the dropped segment.
    pub tcp_flags: u16,
    /// Non-zero when the segment was on its way to the tracked port (inbound to sshd).
    pub inbound: u16,
    /// Drops of the same client counted in the kernel since the previous record (a flood
    /// sends at most a few records per client and interval).
    pub suppressed: u32,
    /// `local` is the tracked (sshd) side.
    pub endpoints: Endpoints,
}

pub const CONTEXT_LEN: usize = 128;
pub const TCLASS_LEN: usize = 32;

/// `avc:selinux_audited` with denied permissions, in a tracked process (the subject: SELinux
/// audits in the context of the task whose access was checked).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SelinuxAuditedEvent {
    pub header: EventHeader,
    pub requested: u32,
    pub denied: u32,
    pub audited: u32,
    pub result: i32,
    pub scontext: [u8; CONTEXT_LEN],
    pub tcontext: [u8; CONTEXT_LEN],
    pub tclass: [u8; TCLASS_LEN],
}

/// Bytes of one write an sshd process makes that [`SshdOutputEvent`] keeps: a log message or
/// the listener's note to a client it drops.
pub const OUTPUT_LEN: usize = 256;

/// Where an sshd process wrote: `SshdOutputEvent::channel`.
pub mod output_channel {
    /// Its standard error (`sshd -e`, containers, systemd's stdout stream).
    pub const STDERR: u32 = 1;
    /// A syslog datagram (`<PRI>…` sent to `/dev/log`).
    pub const SYSLOG: u32 = 2;
    /// A TCP socket written by a process that owns sshd's listening sockets: the note the
    /// listener writes to a connection it drops (`Exceeded MaxStartups`, `Not allowed at this
    /// time`).
    pub const CLIENT_SOCKET: u32 = 3;
}

/// What a followed sshd process wrote, taken from the system call's own buffer: sshd's log as
/// it writes it (so it is known when no log file keeps it), and the listener's words to a
/// client it drops.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::AnyBitPattern))]
pub struct SshdOutputEvent {
    pub header: EventHeader,
    /// [`output_channel`].
    pub channel: u32,
    pub fd: i32,
    /// The socket written, for [`output_channel::CLIENT_SOCKET`]; else 0.
    pub skaddr: u64,
    /// Bytes the call asked to write; `copied` of them are in `data`.
    pub len: u64,
    pub copied: u32,
    pub _pad: u32,
    pub data: [u8; OUTPUT_LEN],
}
