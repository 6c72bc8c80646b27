//! Where the fields the probes read live on the running kernel. Userspace fills this from
//! tracefs `format` files and BTF at start-up and passes it as the `LAYOUT` global; nothing
//! here hard-codes one kernel's layout.

/// An offset the running kernel does not have.
pub const ABSENT: u16 = u16::MAX;

/// `syscalls:sys_enter_*` tracepoints whose `filename` argument is kept, so that a failure of
/// the call names the path. Not every architecture or kernel has all of them.
pub const PATH_SYSCALLS: [&str; 11] = [
    "sys_enter_open",
    "sys_enter_openat",
    "sys_enter_openat2",
    "sys_enter_newstat",
    "sys_enter_newlstat",
    "sys_enter_newfstatat",
    "sys_enter_statx",
    "sys_enter_access",
    "sys_enter_faccessat",
    "sys_enter_faccessat2",
    "sys_enter_execve",
];

/// `syscalls:sys_exit_*` tracepoints whose failures (in a followed process) are reported: the
/// calls sshd's failures involve — descriptors, processes, credentials, paths, sockets and
/// memory. One exit per call, not `raw_syscalls:sys_exit`: a program on every syscall of the
/// host costs every process tens of nanoseconds a call, while an exit tracepoint that is not
/// attached costs a call nothing once syscall tracing is on. Reads and writes are left out:
/// their failures on a connection (EPIPE, ECONNRESET) are what the TCP hooks already explain.
/// Not every architecture has all of them. accept and accept4 are not here: their own exit
/// programs report their failures.
pub const FAILURE_SYSCALLS: [&str; 40] = [
    "sys_exit_clone",
    "sys_exit_clone3",
    "sys_exit_fork",
    "sys_exit_vfork",
    "sys_exit_execve",
    "sys_exit_execveat",
    "sys_exit_open",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_newstat",
    "sys_exit_newlstat",
    "sys_exit_newfstatat",
    "sys_exit_statx",
    "sys_exit_access",
    "sys_exit_faccessat",
    "sys_exit_faccessat2",
    "sys_exit_socket",
    "sys_exit_socketpair",
    "sys_exit_pipe",
    "sys_exit_pipe2",
    "sys_exit_dup",
    "sys_exit_dup2",
    "sys_exit_dup3",
    "sys_exit_bind",
    "sys_exit_listen",
    "sys_exit_connect",
    "sys_exit_setuid",
    "sys_exit_setgid",
    "sys_exit_setreuid",
    "sys_exit_setregid",
    "sys_exit_setresuid",
    "sys_exit_setresgid",
    "sys_exit_setgroups",
    "sys_exit_setsid",
    "sys_exit_chroot",
    "sys_exit_chdir",
    "sys_exit_mmap",
    "sys_exit_brk",
    "sys_exit_setrlimit",
    "sys_exit_prlimit64",
];

/// How a tracepoint records a connection's addresses.
pub mod addr_style {
    /// Not recorded.
    pub const NONE: u16 = 0;
    /// `__u8 saddr[28]`, `daddr[28]` holding `struct sockaddr_in`/`sockaddr_in6` (6.10+ resets).
    pub const SOCKADDR: u16 = 1;
    /// `family`, host-order `sport`/`dport`, `saddr[4]`/`daddr[4]` and `saddr_v6`/`daddr_v6`.
    pub const SPLIT: u16 = 2;
}

/// Address fields of one tracepoint record; `s*` is the local side of the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AddrLayout {
    pub style: u16,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SendResetLayout {
    pub skbaddr: u16,
    pub skaddr: u16,
    pub state: u16,
    pub reason: u16,
    pub addr: AddrLayout,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReceiveResetLayout {
    pub skaddr: u16,
    pub _pad: u16,
    pub addr: AddrLayout,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockStateLayout {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    pub addr: AddrLayout,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecLayout {
    /// A `__data_loc char[]` field.
    pub filename: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitLayout {
    /// `bool group_dead` (6.16+), or [`ABSENT`]: then the thread-group leader's exit counts.
    pub group_dead: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalLayout {
    pub sig: u16,
    pub code: u16,
    pub comm: u16,
    pub pid: u16,
    pub result: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallLayout {
    /// `sys_enter_accept*`: the `upeer_sockaddr` argument.
    pub accept_peer: u16,
    /// `sys_enter_accept*`: the listening `fd` argument.
    pub accept_fd: u16,
    /// `sys_exit_*`: the return value.
    pub ret: u16,
    /// `sys_exit_*`: the syscall number.
    pub exit_nr: u16,
    /// The `filename` argument of each of [`PATH_SYSCALLS`], in that order.
    pub path_arg: [u16; PATH_SYSCALLS.len()],
    /// The numbers of those calls on this architecture (not offsets), and where their
    /// argument lies in the task's saved registers (one of `regs_args`), for the exit program
    /// that reads it there.
    pub path_nr: [u16; PATH_SYSCALLS.len()],
    pub path_regs: [u16; PATH_SYSCALLS.len()],
    /// `__syscall_nr` of the `sys_enter_*` records.
    pub enter_nr: u16,
    /// `sys_enter_write`'s `fd`, `buf` and `count`; `sys_enter_sendto`'s `fd`, `buff`, `len`.
    pub write_fd: u16,
    pub write_buf: u16,
    pub write_count: u16,
    pub sendto_fd: u16,
    pub sendto_buf: u16,
    pub sendto_len: u16,
    /// Where the task's saved registers (`struct pt_regs`) keep the syscall number and its
    /// first three arguments: `tp_btf sock_send_length` reads the call it happens in there.
    pub regs_nr: u16,
    pub regs_args: [u16; 3],
    /// The numbers of write(2) and sendto(2) on this architecture (not offsets).
    pub write_nr: u16,
    pub sendto_nr: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomLayout {
    pub pid: u16,
    pub uid: u16,
    pub total_vm: u16,
    pub anon_rss: u16,
    pub file_rss: u16,
    pub shmem_rss: u16,
    pub pgtables: u16,
    pub oom_score_adj: u16,
}

/// Kernel structure members read with `bpf_probe_read_kernel`, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StructLayout {
    pub task_tgid: u16,
    pub task_exit_code: u16,
    pub skb_head: u16,
    pub skb_transport_header: u16,
    pub skb_network_header: u16,
    /// `sock_common.skc_net` (a `possible_net_t` holding the `struct net *`).
    pub sk_net: u16,
    /// `net.ns.inum`.
    pub net_inum: u16,
    /// `sk_buff.dev` and `net_device.nd_net`, for segments without a socket.
    pub skb_dev: u16,
    pub dev_net: u16,
    /// `task_struct.signal` and `signal_struct.rlim`: a failing task's resource limits.
    pub task_signal: u16,
    pub signal_rlim: u16,
    /// `task_struct.cred`/`real_parent`/`fs`, the `struct cred` members a permission check
    /// uses, `group_info.ngroups`/`gid`, and the way from `fs_struct.root` (a `struct path`)
    /// through `dentry.d_inode` to `inode.i_ino` and `inode.i_sb` → `super_block.s_dev`.
    pub task_cred: u16,
    pub task_real_parent: u16,
    pub task_fs: u16,
    pub cred_fsuid: u16,
    pub cred_fsgid: u16,
    pub cred_cap_effective: u16,
    pub cred_group_info: u16,
    pub group_info_ngroups: u16,
    pub group_info_gid: u16,
    pub fs_root: u16,
    pub path_dentry: u16,
    pub dentry_inode: u16,
    pub inode_ino: u16,
    pub inode_sb: u16,
    pub sb_dev: u16,
    /// From an accepted fd to its socket: `task_struct.files`, `files_struct.fdt`,
    /// `fdtable.fd`, `file.private_data` (the `struct socket`), `socket.sk`.
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdtable_fd: u16,
    /// `fdtable.max_fds`: a descriptor number a write was called with is checked against it.
    pub fdtable_max_fds: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    /// `struct sock_common` addresses and ports, `inet_sock.inet_sport`, and `sock.sk_protocol`
    /// (ABSENT where it is a bitfield, before 5.6): the raw and BTF `inet_sock_set_state`
    /// tracepoints pass only the socket. `skc_num` is the local port too, except at the change
    /// to TCP_CLOSE: closing unhashes the socket and zeroes it first; `inet_sport` keeps it.
    pub skc_family: u16,
    pub skc_num: u16,
    pub inet_sport: u16,
    pub skc_dport: u16,
    pub skc_rcv_saddr: u16,
    pub skc_daddr: u16,
    pub skc_v6_rcv_saddr: u16,
    pub skc_v6_daddr: u16,
    pub sk_protocol: u16,
    /// From a task to its executable's inode (`task_struct.mm`, `mm_struct.exe_file`,
    /// `file.f_inode`) and the inode's owner and mode: an sshd is followed from its exec only
    /// when its program is a root-owned regular file. `file.f_inode` and `inode.i_mode` also
    /// tell a socket on an inherited descriptor (inetd mode).
    pub task_mm: u16,
    pub mm_exe_file: u16,
    pub file_inode: u16,
    pub inode_uid: u16,
    pub inode_mode: u16,
    /// From a task to its memory cgroup's limit and usage (`task_struct.cgroups`,
    /// `css_set.subsys[memory_cgrp_id]`, `mem_cgroup.css`/`memory`, `page_counter.max`/`usage`):
    /// read from an exiting process itself, since /proc shows an exiting task's cgroup v1 path
    /// as "/" (the root's limit is not the victim's).
    pub task_cgroups: u16,
    pub css_set_subsys: u16,
    /// `enum cgroup_subsys_id`'s `memory_cgrp_id`: the index in `css_set.subsys`.
    pub memory_cgrp_id: u16,
    pub mem_cgroup_css: u16,
    pub mem_cgroup_memory: u16,
    pub page_counter_max: u16,
    pub page_counter_usage: u16,
    /// `tcp_sock.rcv_nxt`/`snd_una`/`snd_nxt`: where a received reset falls against what the
    /// socket expects.
    pub tcp_rcv_nxt: u16,
    pub tcp_snd_una: u16,
    pub tcp_snd_nxt: u16,
    /// `sk_buff.data`: where a packet's network header is when the device hands it over.
    pub skb_data: u16,
    /// `mm_struct.arg_start`/`arg_end`: a connecting ssh's command line, read by the kernel
    /// (a refused ssh exits before userspace could read /proc).
    pub mm_arg_start: u16,
    pub mm_arg_end: u16,
}

/// `avc:selinux_audited`; the three contexts are `__data_loc char[]` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SelinuxAuditedLayout {
    pub requested: u16,
    pub denied: u16,
    pub audited: u16,
    pub result: u16,
    pub scontext: u16,
    pub tcontext: u16,
    pub tclass: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KfreeSkbLayout {
    pub skbaddr: u16,
    pub protocol: u16,
    pub reason: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    pub send_reset: SendResetLayout,
    pub receive_reset: ReceiveResetLayout,
    pub sock_state: SockStateLayout,
    pub exec: ExecLayout,
    pub exit: ExitLayout,
    pub signal: SignalLayout,
    pub syscall: SyscallLayout,
    pub oom: OomLayout,
    pub kfree_skb: KfreeSkbLayout,
    pub selinux: SelinuxAuditedLayout,
    pub structs: StructLayout,
}

impl StructLayout {
    /// Whether an accepted fd can be followed to its socket.
    pub const fn accepted_socket_known(&self) -> bool {
        self.task_files != ABSENT
            && self.files_fdt != ABSENT
            && self.fdtable_fd != ABSENT
            && self.file_private_data != ABSENT
            && self.socket_sk != ABSENT
    }

    /// Whether an exec'd program's owner and mode can be read.
    pub const fn executable_known(&self) -> bool {
        self.task_mm != ABSENT
            && self.mm_exe_file != ABSENT
            && self.file_inode != ABSENT
            && self.inode_uid != ABSENT
            && self.inode_mode != ABSENT
    }

    /// Whether a socket's 4-tuple can be read from `struct sock` itself.
    pub const fn sock_tuple_known(&self) -> bool {
        self.skc_family != ABSENT
            && self.skc_num != ABSENT
            && self.inet_sport != ABSENT
            && self.skc_dport != ABSENT
            && self.skc_rcv_saddr != ABSENT
            && self.skc_daddr != ABSENT
            && self.skc_v6_rcv_saddr != ABSENT
            && self.skc_v6_daddr != ABSENT
            && self.sk_protocol != ABSENT
    }
}

impl AddrLayout {
    pub const NONE: Self = Self {
        style: addr_style::NONE,
        family: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
    };
}

impl KernelLayout {
    /// Every field absent: what the programs see if userspace never set the global.
    pub const ABSENT: Self = Self {
        send_reset: SendResetLayout {
            skbaddr: ABSENT,
            skaddr: ABSENT,
            state: ABSENT,
            reason: ABSENT,
            addr: AddrLayout::NONE,
        },
        receive_reset: ReceiveResetLayout {
            skaddr: ABSENT,
            _pad: 0,
            addr: AddrLayout::NONE,
        },
        sock_state: SockStateLayout {
            skaddr: ABSENT,
            oldstate: ABSENT,
            newstate: ABSENT,
            protocol: ABSENT,
            addr: AddrLayout::NONE,
        },
        exec: ExecLayout {
            filename: ABSENT,
            _pad: 0,
        },
        exit: ExitLayout {
            group_dead: ABSENT,
            _pad: 0,
        },
        signal: SignalLayout {
            sig: ABSENT,
            code: ABSENT,
            comm: ABSENT,
            pid: ABSENT,
            result: ABSENT,
            _pad: 0,
        },
        syscall: SyscallLayout {
            accept_peer: ABSENT,
            accept_fd: ABSENT,
            ret: ABSENT,
            exit_nr: ABSENT,
            path_arg: [ABSENT; PATH_SYSCALLS.len()],
            path_nr: [ABSENT; PATH_SYSCALLS.len()],
            path_regs: [ABSENT; PATH_SYSCALLS.len()],
            enter_nr: ABSENT,
            write_fd: ABSENT,
            write_buf: ABSENT,
            write_count: ABSENT,
            sendto_fd: ABSENT,
            sendto_buf: ABSENT,
            sendto_len: ABSENT,
            regs_nr: ABSENT,
            regs_args: [ABSENT; 3],
            write_nr: ABSENT,
            sendto_nr: ABSENT,
        },
        oom: OomLayout {
            pid: ABSENT,
            uid: ABSENT,
            total_vm: ABSENT,
            anon_rss: ABSENT,
            file_rss: ABSENT,
            shmem_rss: ABSENT,
            pgtables: ABSENT,
            oom_score_adj: ABSENT,
        },
        kfree_skb: KfreeSkbLayout {
            skbaddr: ABSENT,
            protocol: ABSENT,
            reason: ABSENT,
            _pad: 0,
        },
        selinux: SelinuxAuditedLayout {
            requested: ABSENT,
            denied: ABSENT,
            audited: ABSENT,
            result: ABSENT,
            scontext: ABSENT,
            tcontext: ABSENT,
            tclass: ABSENT,
            _pad: 0,
        },
        structs: StructLayout {
            task_tgid: ABSENT,
            task_exit_code: ABSENT,
            skb_head: ABSENT,
            skb_transport_header: ABSENT,
            skb_network_header: ABSENT,
            sk_net: ABSENT,
            net_inum: ABSENT,
            skb_dev: ABSENT,
            dev_net: ABSENT,
            task_signal: ABSENT,
            signal_rlim: ABSENT,
            task_cred: ABSENT,
            task_real_parent: ABSENT,
            task_fs: ABSENT,
            cred_fsuid: ABSENT,
            cred_fsgid: ABSENT,
            cred_cap_effective: ABSENT,
            cred_group_info: ABSENT,
            group_info_ngroups: ABSENT,
            group_info_gid: ABSENT,
            fs_root: ABSENT,
            path_dentry: ABSENT,
            dentry_inode: ABSENT,
            inode_ino: ABSENT,
            inode_sb: ABSENT,
            sb_dev: ABSENT,
            task_files: ABSENT,
            files_fdt: ABSENT,
            fdtable_fd: ABSENT,
            fdtable_max_fds: ABSENT,
            file_private_data: ABSENT,
            socket_sk: ABSENT,
            skc_family: ABSENT,
            skc_num: ABSENT,
            inet_sport: ABSENT,
            skc_dport: ABSENT,
            skc_rcv_saddr: ABSENT,
            skc_daddr: ABSENT,
            skc_v6_rcv_saddr: ABSENT,
            skc_v6_daddr: ABSENT,
            sk_protocol: ABSENT,
            task_mm: ABSENT,
            mm_exe_file: ABSENT,
            file_inode: ABSENT,
            inode_uid: ABSENT,
            inode_mode: ABSENT,
            task_cgroups: ABSENT,
            css_set_subsys: ABSENT,
            memory_cgrp_id: ABSENT,
            mem_cgroup_css: ABSENT,
            mem_cgroup_memory: ABSENT,
            page_counter_max: ABSENT,
            page_counter_usage: ABSENT,
            tcp_rcv_nxt: ABSENT,
            tcp_snd_una: ABSENT,
            tcp_snd_nxt: ABSENT,
            skb_data: ABSENT,
            mm_arg_start: ABSENT,
            mm_arg_end: ABSENT,
        },
    };
}
