//! Decoding ring-buffer records into typed events. Records are read in place (unaligned
//! reads of the shared `#[repr(C)]` types); nothing is trusted beyond its declared size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sshtrace_common as wire;

use crate::{
    enrich::dac::{DacFacts, KernelCreds},
    enrich::limits::{LimitFacts, TaskRlimits},
    kernel::syscalls::syscall_name,
    trace::reset_fingerprint::ResetFingerprint,
    trace::sshd_output::{OutputChannel, SshdOutput},
};

/// What an LSM said about a denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsmDenial {
    /// `selinux_audited` (tracepoint) or `audit` (netlink record).
    pub source: &'static str,
    pub lsm: &'static str,
    pub operation: Option<String>,
    pub path: Option<String>,
    pub facts: std::collections::BTreeMap<String, String>,
}
use wire::{EventHeader, EventKind};

/// A connection seen from this host: `local` is the sshd side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Network namespace inode (0: unknown). Containers reuse addresses; this tells them apart.
    pub netns: u32,
}

impl ConnTuple {
    /// Whether this is a connect seen before its local port was chosen, and `bound` the same
    /// connection with it.
    pub fn bound_as(&self, bound: ConnTuple) -> bool {
        self.local.port() == 0
            && self.local.ip() == bound.local.ip()
            && self.remote == bound.remote
            && self.netns == bound.netns
    }
}

/// The task that was current when a probe ran. Meaningful in process context only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    SendReset {
        skaddr: u64,
        state: i32,
        /// `None` on kernels without reasons.
        reason: Option<u32>,
        /// Flags of the segment a no-socket reset answered, when readable.
        seg_flags: Option<u8>,
        /// Resets to the same client the kernel counted, not sent, before this one.
        repeated: u32,
        conn: ConnTuple,
    },
    ReceiveReset {
        skaddr: u64,
        /// The receiver is a client of a tracked port on this host; `conn` is its own view.
        client_side: bool,
        conn: ConnTuple,
    },
    /// A reset arrived on an established connection of a tracked port, with its fingerprint.
    ResetFingerprint {
        skaddr: u64,
        conn: ConnTuple,
        fingerprint: ResetFingerprint,
    },
    /// `sshtrace client`: what a followed ssh that connects is, read by the kernel.
    ClientConnect {
        skaddr: u64,
        parent_tgid: u32,
        /// Its executable's owner uid and mode, when the kernel could read them.
        executable: Option<(u32, u16)>,
        /// Its arguments joined by spaces, as far as copied; whether more were not.
        args: String,
        args_truncated: bool,
    },
    /// Netfilter dropped a segment; `conn.local` is the tracked (sshd) side.
    FirewallDrop {
        conn: ConnTuple,
        tcp_flags: u8,
        inbound: bool,
        /// Drops of the same client the kernel counted since its previous record.
        suppressed: u32,
    },
    SockState {
        skaddr: u64,
        old_state: i32,
        new_state: i32,
        conn: ConnTuple,
        /// Earlier transitions the kernel noted instead of sending.
        history: SockHistory,
    },
    Accept {
        ret: i64,
        listen_fd: i32,
        peer: Option<SocketAddr>,
        /// The accepted socket with the history the kernel kept of it: the connection's first
        /// report when the kernel reports connections only once claimed.
        claimed: Option<AcceptedSocket>,
        /// Not an accept: the connection the process was started with on its standard input
        /// (inetd mode), found by the kernel at its exec.
        inherited: bool,
    },
    Fork {
        child: u32,
    },
    Exec {
        filename: String,
        /// This exec of a root-owned sshd program made the kernel follow the process.
        began_tracking: bool,
        /// The executable's owner and mode, read by the kernel at the exec.
        executable: Option<Executable>,
    },
    Exit {
        exit_code: i32,
        /// The exiting task's memory cgroup (limit, usage) in pages, read by the kernel.
        memcg_pages: Option<(u64, u64)>,
    },
    Signal {
        target: u32,
        target_comm: String,
        sig: i32,
        code: i32,
        result: i32,
    },
    SyscallError {
        syscall: String,
        errno: i32,
        /// Identical failures the kernel counted since the previous record.
        suppressed: u32,
        /// The path of a failed open.
        path: Option<String>,
        /// The failing task's rlimits, read by the kernel at the failure.
        rlimits: Option<TaskRlimits>,
        /// The failing task's credentials and root, read by the kernel at an EACCES.
        creds: Option<KernelCreds>,
        /// The limit behind a resource failure (see `limits`), filled in when the event arrived.
        limit: Option<LimitFacts>,
        /// For EACCES on a path: whether the mode bits would have allowed it.
        dac: Option<DacFacts>,
    },
    /// An LSM reported a denial for the task: `avc:selinux_audited`, or an audit record.
    LsmDenial(LsmDenial),
    /// A followed sshd process wrote a log message, or the listener wrote to a client.
    SshdOutput(SshdOutput),
    OomVictim {
        pid: u32,
        uid: Option<u32>,
        /// kB: total_vm, anon_rss, file_rss, shmem_rss, pgtables (None where not reported).
        memory_kb: [Option<u64>; 5],
        oom_score_adj: i16,
    },
}

/// An executed program's file, as the kernel saw it at the exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executable {
    pub uid: u32,
    pub mode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedSocket {
    pub skaddr: u64,
    pub conn: ConnTuple,
    pub history: SockHistory,
}

/// A socket's transitions the kernel noted between records (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockHistory {
    pub established_ns: Option<u64>,
    /// Whether this host (true) or the peer sent the first FIN of an orderly close.
    pub first_fin_local: Option<bool>,
}

impl SockHistory {
    pub fn from_wire(h: &wire::SockHistory) -> Self {
        let seen = |ns: u64| (ns != 0).then_some(ns);
        Self {
            established_ns: seen(h.established_ns),
            first_fin_local: match h.first_fin_by {
                wire::first_fin_by::LOCAL => Some(true),
                wire::first_fin_by::PEER => Some(false),
                _ => None,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub task: Task,
    pub kind: Kind,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Decodes one record; `None` for a record of unknown kind or short length.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    let header: EventHeader = read(bytes)?;
    let kind = match EventKind::from_u32(header.kind)? {
        EventKind::SendReset => decode_send_reset(bytes)?,
        EventKind::ReceiveReset => decode_receive_reset(bytes)?,
        EventKind::SshdOutput => decode_sshd_output(bytes)?,
        EventKind::SelinuxAudited => decode_selinux_audited(bytes)?,
        EventKind::FirewallDrop => decode_firewall_drop(bytes)?,
        EventKind::SockState => decode_sock_state(bytes)?,
        EventKind::Accept => decode_accept(bytes)?,
        EventKind::Fork => decode_fork(bytes)?,
        EventKind::Exec => decode_exec(bytes)?,
        EventKind::Exit => decode_exit(bytes)?,
        EventKind::Signal => decode_signal(bytes)?,
        EventKind::SyscallError => decode_syscall_error(bytes)?,
        EventKind::OomVictim => decode_oom_victim(bytes)?,
        EventKind::ResetFingerprint => decode_reset_fingerprint(bytes, header.ts_ns)?,
        EventKind::ClientConnect => decode_client_connect(bytes)?,
    };
    Some(Event {
        ts_ns: header.ts_ns,
        task: Task {
            pid: header.pid,
            tid: header.tid,
            comm: c_string(&header.comm),
        },
        kind,
    })
}

/// A reset the kernel sent.
fn decode_send_reset(bytes: &[u8]) -> Option<Kind> {
    let e: wire::SendResetEvent = read(bytes)?;
    Some(Kind::SendReset {
        skaddr: e.skaddr,
        state: e.state,
        reason: (e.reason != wire::REASON_UNKNOWN).then_some(e.reason),
        seg_flags: (e.seg_flags != wire::SEG_FLAGS_UNKNOWN).then_some(e.seg_flags as u8),
        repeated: e.suppressed,
        conn: tuple(&e.endpoints)?,
    })
}

/// A reset the kernel received.
fn decode_receive_reset(bytes: &[u8]) -> Option<Kind> {
    let e: wire::ReceiveResetEvent = read(bytes)?;
    Some(Kind::ReceiveReset {
        skaddr: e.skaddr,
        client_side: e.client_side != 0,
        conn: tuple(&e.endpoints)?,
    })
}

/// A received reset's headers beside the peer's earlier segments.
fn decode_reset_fingerprint(bytes: &[u8], ts_ns: u64) -> Option<Kind> {
    let e: wire::ResetFingerprintEvent = read(bytes)?;
    Some(Kind::ResetFingerprint {
        skaddr: e.skaddr,
        conn: tuple(&e.endpoints)?,
        fingerprint: ResetFingerprint::from_wire(&e, ts_ns),
    })
}

/// A followed ssh's connect: its executable, parent and command line.
fn decode_client_connect(bytes: &[u8]) -> Option<Kind> {
    let e: wire::ClientConnectEvent = read(bytes)?;
    let copied = (e.args_copied as usize).min(e.args.len());
    let args = e.args[..copied]
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    Some(Kind::ClientConnect {
        skaddr: e.skaddr,
        parent_tgid: e.parent_tgid,
        executable: (e.exe_known != 0).then_some((e.exe_uid, e.exe_mode)),
        args,
        args_truncated: e.args_len > copied as u64,
    })
}

/// Bytes a tracked sshd wrote, as far as the probe copied them.
fn decode_sshd_output(bytes: &[u8]) -> Option<Kind> {
    let e: wire::SshdOutputEvent = read(bytes)?;
    let copied = (e.copied as usize).min(e.data.len());
    Some(Kind::SshdOutput(SshdOutput {
        channel: OutputChannel::from_wire(e.channel)?,
        fd: e.fd,
        skaddr: e.skaddr,
        bytes: e.data[..copied].to_vec(),
        truncated: e.len > copied as u64,
    }))
}

/// An `avc:selinux_audited` record, its facts kept as text.
fn decode_selinux_audited(bytes: &[u8]) -> Option<Kind> {
    let e: wire::SelinuxAuditedEvent = read(bytes)?;
    let mut facts = std::collections::BTreeMap::new();
    facts.insert("scontext".into(), c_string(&e.scontext));
    facts.insert("tcontext".into(), c_string(&e.tcontext));
    facts.insert("tclass".into(), c_string(&e.tclass));
    facts.insert("denied".into(), format!("{:#x}", e.denied));
    facts.insert("requested".into(), format!("{:#x}", e.requested));
    Some(Kind::LsmDenial(LsmDenial {
        source: "selinux_audited",
        lsm: "selinux",
        operation: None,
        path: None,
        facts,
    }))
}

/// A segment netfilter dropped.
fn decode_firewall_drop(bytes: &[u8]) -> Option<Kind> {
    let e: wire::FirewallDropEvent = read(bytes)?;
    Some(Kind::FirewallDrop {
        conn: tuple(&e.endpoints)?,
        tcp_flags: e.tcp_flags as u8,
        inbound: e.inbound != 0,
        suppressed: e.suppressed,
    })
}

/// A TCP state change, with the history the kernel kept of the connection.
fn decode_sock_state(bytes: &[u8]) -> Option<Kind> {
    let e: wire::SockStateEvent = read(bytes)?;
    Some(Kind::SockState {
        skaddr: e.skaddr,
        old_state: e.old_state,
        new_state: e.new_state,
        conn: tuple(&e.endpoints)?,
        history: SockHistory::from_wire(&e.history),
    })
}

/// An accept(2) return, with the socket it claimed if the kernel kept its history.
fn decode_accept(bytes: &[u8]) -> Option<Kind> {
    let e: wire::AcceptEvent = read(bytes)?;
    let peer = (e.peer_len > 0).then(|| sockaddr(&e.peer)).flatten();
    let claimed = (e.skaddr != 0 && e.history_found != 0)
        .then(|| {
            Some(AcceptedSocket {
                skaddr: e.skaddr,
                conn: tuple(&e.history.endpoints)?,
                history: SockHistory::from_wire(&e.history),
            })
        })
        .flatten();
    Some(Kind::Accept {
        ret: e.ret,
        listen_fd: e.listen_fd,
        peer,
        claimed,
        inherited: e.inherited != 0,
    })
}

/// A fork of a tracked process.
fn decode_fork(bytes: &[u8]) -> Option<Kind> {
    let e: wire::ForkEvent = read(bytes)?;
    Some(Kind::Fork { child: e.child_pid })
}

/// An exec, with its executable's owner and mode where the kernel read them.
fn decode_exec(bytes: &[u8]) -> Option<Kind> {
    let e: wire::ExecEvent = read(bytes)?;
    Some(Kind::Exec {
        filename: c_string(&e.filename),
        began_tracking: e.began_tracking != 0,
        executable: (e.exe_known != 0).then_some(Executable {
            uid: e.exe_uid,
            mode: e.exe_mode,
        }),
    })
}

/// A process exit, with its memory cgroup's pages where the kernel read them.
fn decode_exit(bytes: &[u8]) -> Option<Kind> {
    let e: wire::ExitEvent = read(bytes)?;
    Some(Kind::Exit {
        exit_code: e.exit_code,
        memcg_pages: (e.memcg_read != 0).then_some((e.memcg_max_pages, e.memcg_usage_pages)),
    })
}

/// A terminating signal aimed at a tracked process, from its sender.
fn decode_signal(bytes: &[u8]) -> Option<Kind> {
    let e: wire::SignalEvent = read(bytes)?;
    Some(Kind::Signal {
        target: e.target_pid,
        target_comm: c_string(&e.target_comm),
        sig: e.sig,
        code: e.code,
        result: e.result,
    })
}

/// A failed syscall, with the limits and credentials behind it where read.
fn decode_syscall_error(bytes: &[u8]) -> Option<Kind> {
    let e: wire::SyscallErrorEvent = read(bytes)?;
    let path = c_string(&e.path);
    Some(Kind::SyscallError {
        syscall: syscall_name(e.nr),
        errno: -e.ret,
        suppressed: e.suppressed,
        path: (!path.is_empty()).then_some(path),
        rlimits: (e.rlimits_read != 0).then_some(TaskRlimits {
            nofile: e.rlimits[0],
            nproc: e.rlimits[1],
            address_space: e.rlimits[2],
        }),
        creds: (e.creds_read != 0).then(|| kernel_creds(&e.creds)),
        limit: None,
        dac: None,
    })
}

/// An OOM kill; unknown numbers are `None`.
fn decode_oom_victim(bytes: &[u8]) -> Option<Kind> {
    let e: wire::OomVictimEvent = read(bytes)?;
    let known = |v: u64| (v != wire::UNKNOWN_U64).then_some(v);
    Some(Kind::OomVictim {
        pid: e.pid,
        uid: (e.uid != u32::MAX).then_some(e.uid),
        memory_kb: [e.total_vm, e.anon_rss, e.file_rss, e.shmem_rss, e.pgtables].map(known),
        oom_score_adj: e.oom_score_adj,
    })
}

fn kernel_creds(c: &wire::TaskCreds) -> KernelCreds {
    let reported = (c.ngroups as usize).min(wire::GROUPS_REPORTED);
    KernelCreds {
        fsuid: c.fsuid,
        fsgid: c.fsgid,
        cap_effective: c.cap_effective,
        groups: c.groups[..reported].to_vec(),
        all_groups: c.ngroups as usize <= wire::GROUPS_REPORTED,
        parent_pid: c.parent_tgid,
        root: (c.root_ino != 0).then(|| (KernelCreds::user_dev(c.root_dev), c.root_ino)),
    }
}

/// A wire record from the start of `bytes`: any bit pattern is a valid value of the wire types
/// (bytemuck's derive checks it), so only the length can be wrong.
fn read<T: bytemuck::AnyBitPattern>(bytes: &[u8]) -> Option<T> {
    let record = bytes.get(..size_of::<T>())?;
    Some(bytemuck::pod_read_unaligned(record))
}

/// Bytes up to the first NUL, lossily decoded; escaping is the outputs' job.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn ip(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Some(unmap(IpAddr::V6(Ipv6Addr::from(*bytes)))),
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) are shown and matched as IPv4.
pub fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

pub fn tuple(e: &wire::Endpoints) -> Option<ConnTuple> {
    Some(ConnTuple {
        local: SocketAddr::new(ip(e.family, &e.local_addr)?, e.local_port),
        remote: SocketAddr::new(ip(e.family, &e.remote_addr)?, e.remote_port),
        netns: e.netns,
    })
}

/// A `struct sockaddr_in`/`sockaddr_in6` as a process received it.
fn sockaddr(raw: &[u8; wire::SOCKADDR_LEN]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let addr = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7])),
        AF_INET6 => unmap(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&raw[8..24]).ok()?,
        ))),
        _ => return None,
    };
    Some(SocketAddr::new(addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"sshd");
        EventHeader {
            kind: kind as u32,
            tid: 41,
            pid: 40,
            _pad: 0,
            ts_ns: 7,
            comm,
        }
    }

    #[test]
    fn decodes_a_reset_with_mapped_ipv6_addresses() {
        let mut local = [0u8; 16];
        local[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 2]);
        let e = wire::SendResetEvent {
            header: header(EventKind::SendReset),
            skaddr: 0,
            state: 0,
            reason: 2,
            seg_flags: TCP_SYN as u16,
            _pad: 0,
            suppressed: 0,
            endpoints: wire::Endpoints {
                family: AF_INET6,
                local_port: 2222,
                remote_port: 5555,
                _pad: 0,
                netns: 0,
                _pad2: 0,
                local_addr: local,
                remote_addr: local,
            },
        };
        let event = decode(&bytes_of(&e)).unwrap();
        assert_eq!(
            event.task,
            Task {
                pid: 40,
                tid: 41,
                comm: "sshd".into(),
            }
        );
        let Kind::SendReset {
            reason,
            seg_flags,
            conn,
            ..
        } = event.kind
        else {
            panic!()
        };
        assert_eq!((reason, seg_flags), (Some(2), Some(TCP_SYN)));
        assert_eq!(conn.local, "127.0.0.2:2222".parse().unwrap());
    }

    #[test]
    fn unknown_reason_and_flags_are_none() {
        let e = wire::SendResetEvent {
            header: header(EventKind::SendReset),
            skaddr: 1,
            state: 1,
            reason: wire::REASON_UNKNOWN,
            seg_flags: wire::SEG_FLAGS_UNKNOWN,
            _pad: 0,
            suppressed: 0,
            endpoints: wire::Endpoints {
                family: AF_INET,
                ..Default::default()
            },
        };
        let Kind::SendReset {
            reason, seg_flags, ..
        } = decode(&bytes_of(&e)).unwrap().kind
        else {
            panic!()
        };
        assert_eq!((reason, seg_flags), (None, None));
    }

    #[test]
    fn accept_peer_is_parsed_from_the_callers_sockaddr() {
        let mut peer = [0u8; wire::SOCKADDR_LEN];
        peer[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        peer[2..4].copy_from_slice(&40000u16.to_be_bytes());
        peer[4..8].copy_from_slice(&[127, 0, 0, 9]);
        let e = wire::AcceptEvent {
            header: header(EventKind::Accept),
            ret: 5,
            listen_fd: 3,
            peer_len: wire::SOCKADDR_LEN as u32,
            peer,
            inherited: 0,
            skaddr: 0,
            history_found: 0,
            _pad2: 0,
            history: wire::SockHistory::default(),
        };
        let Kind::Accept {
            ret, peer, claimed, ..
        } = decode(&bytes_of(&e)).unwrap().kind
        else {
            panic!()
        };
        assert_eq!((ret, peer), (5, Some("127.0.0.9:40000".parse().unwrap())));
        assert_eq!(claimed, None, "the socket was reported before");
    }

    #[test]
    fn an_accept_claiming_its_socket_reports_the_connection() {
        let mut history = wire::SockHistory {
            established_ns: 20,
            ..Default::default()
        };
        history.endpoints.family = AF_INET;
        history.endpoints.local_port = 22;
        history.endpoints.remote_port = 40000;
        history.endpoints.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        history.endpoints.remote_addr[..4].copy_from_slice(&[127, 0, 0, 9]);
        let e = wire::AcceptEvent {
            header: header(EventKind::Accept),
            ret: 5,
            listen_fd: 3,
            peer_len: 0,
            peer: [0; wire::SOCKADDR_LEN],
            inherited: 0,
            skaddr: 0xffff_0000_1234,
            history_found: 1,
            _pad2: 0,
            history,
        };
        let Kind::Accept { claimed, .. } = decode(&bytes_of(&e)).unwrap().kind else {
            panic!()
        };
        let claimed = claimed.unwrap();
        assert_eq!(claimed.skaddr, 0xffff_0000_1234);
        assert_eq!(claimed.conn.remote, "127.0.0.9:40000".parse().unwrap());
        assert_eq!(claimed.history.established_ns, Some(20));
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        let e = header(EventKind::Exit);
        assert!(decode(&bytes_of(&e)).is_none());
        let mut unknown = header(EventKind::Exit);
        unknown.kind = 99;
        assert!(decode(&bytes_of(&unknown)).is_none());
    }

    #[test]
    fn c_strings_stop_at_nul_and_keep_raw_bytes() {
        assert_eq!(c_string(b"a\nb\0junk"), "a\nb");
        assert_eq!(c_string(b"\xff"), "\u{fffd}");
    }
}

#[cfg(test)]
mod selinux_tests {
    use super::*;
    use crate::kernel::tracefs::Format;

    /// `avc:selinux_audited` exactly as this project's CI kernel (6.18) lays it out.
    const FORMAT_6_18: &str = "\tfield:u32 requested;\toffset:8;\tsize:4;\tsigned:0;
\tfield:u32 denied;\toffset:12;\tsize:4;\tsigned:0;
\tfield:u32 audited;\toffset:16;\tsize:4;\tsigned:0;
\tfield:int result;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] scontext;\toffset:24;\tsize:4;\tsigned:0;
\tfield:__data_loc char[] tcontext;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__data_loc char[] tclass;\toffset:32;\tsize:4;\tsigned:0;";

    /// Lays out a record by the format, reads it the way the probe does (offsets, then the
    /// `__data_loc` strings), and decodes the ring-buffer record the probe would write.
    #[test]
    fn decodes_a_record_laid_out_by_this_kernels_format() {
        let f = Format::parse(FORMAT_6_18);
        let mut record = vec![0u8; 40];
        let strings = [
            "system_u:system_r:sshd_t:s0",
            "unconfined_u:object_r:user_home_t:s0",
            "file",
        ];
        let put = |rec: &mut Vec<u8>, name: &str, v: u32| {
            let off = f.offset(name).unwrap() as usize;
            rec[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        };
        put(&mut record, "requested", 0x4);
        put(&mut record, "denied", 0x4);
        for (name, s) in ["scontext", "tcontext", "tclass"].iter().zip(strings) {
            let loc = ((s.len() as u32 + 1) << 16) | record.len() as u32;
            put(&mut record, name, loc);
            record.extend(s.as_bytes());
            record.push(0);
        }
        let read_loc = |name: &str| -> String {
            let off = f.offset(name).unwrap() as usize;
            let loc = u32::from_ne_bytes(record[off..off + 4].try_into().unwrap());
            let start = (loc & 0xffff) as usize;
            c_string(&record[start..start + (loc >> 16) as usize])
        };
        let mut e = wire::SelinuxAuditedEvent {
            header: wire::EventHeader {
                kind: wire::EventKind::SelinuxAudited as u32,
                tid: 9,
                pid: 9,
                _pad: 0,
                ts_ns: 1,
                comm: [0; 16],
            },
            requested: 4,
            denied: 4,
            audited: 4,
            result: -13,
            scontext: [0; wire::CONTEXT_LEN],
            tcontext: [0; wire::CONTEXT_LEN],
            tclass: [0; wire::TCLASS_LEN],
        };
        for (dst, name) in [
            (&mut e.scontext[..], "scontext"),
            (&mut e.tcontext[..], "tcontext"),
            (&mut e.tclass[..], "tclass"),
        ] {
            let s = read_loc(name);
            dst[..s.len()].copy_from_slice(s.as_bytes());
        }
        // SAFETY: reading the bytes of a plain repr(C) value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const wire::SelinuxAuditedEvent).cast::<u8>(),
                size_of::<wire::SelinuxAuditedEvent>(),
            )
        };
        let Kind::LsmDenial(d) = decode(bytes).unwrap().kind else {
            panic!()
        };
        assert_eq!((d.lsm, d.source), ("selinux", "selinux_audited"));
        assert_eq!(d.facts["scontext"], strings[0]);
        assert_eq!(d.facts["tcontext"], strings[1]);
        assert_eq!(d.facts["tclass"], "file");
        assert_eq!(d.facts["denied"], "0x4");
    }
}
