//! Builds the [`KernelLayout`] the probes read their fields with, from the running kernel's
//! tracepoint `format` files and BTF.

use std::path::Path;

use anyhow::{Context, Result};
use sshtrace_common::{
    addr_style, AddrLayout, KernelLayout, KfreeSkbLayout, OomLayout, SelinuxAuditedLayout,
    SockStateLayout, StructLayout, SyscallLayout, ABSENT, PATH_SYSCALLS,
};

use super::{btf::KernelBtf, tracefs::Format};

pub fn discover(tracefs: &Path, btf: &KernelBtf) -> Result<KernelLayout> {
    let mut layout = KernelLayout::ABSENT;
    // Tracepoint fields, then struct members from BTF; a missing required one fails start-up.
    tcp_reset_fields(tracefs, &mut layout)?;
    sock_state_fields(tracefs, &mut layout.sock_state)?;
    process_fields(tracefs, &mut layout)?;
    syscall_fields(tracefs, &mut layout.syscall)?;
    sshd_write_fields(tracefs, &mut layout.syscall);
    kfree_skb_fields(tracefs, &mut layout.kfree_skb)?;
    selinux_audited_fields(tracefs, &mut layout.selinux);
    oom_victim_fields(tracefs, &mut layout.oom)?;

    task_members(btf, &mut layout.structs)?;
    packet_and_netns_members(btf, &mut layout.structs);
    socket_members(btf, &mut layout.structs);
    credential_members(btf, &mut layout.structs);
    socket_from_fd_members(btf, &mut layout.structs);
    executable_members(btf, &mut layout.structs);
    memory_cgroup_members(btf, &mut layout.structs);
    tcp_sock_members(btf, &mut layout.structs);
    saved_syscall_registers(btf, &mut layout.syscall);
    Ok(layout)
}

/// `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.
fn tcp_reset_fields(tracefs: &Path, layout: &mut KernelLayout) -> Result<()> {
    let f = Format::load(tracefs, "tcp", "tcp_send_reset")?;
    let tp = "tcp:tcp_send_reset";
    layout.send_reset.skbaddr = f.offset("skbaddr").unwrap_or(ABSENT);
    layout.send_reset.skaddr = f.require(tp, "skaddr")?;
    layout.send_reset.state = f.offset("state").unwrap_or(ABSENT);
    // Before 6.10 there is no reason field.
    layout.send_reset.reason = f.offset("reason").unwrap_or(ABSENT);
    layout.send_reset.addr = addresses(&f, tp)?;

    let f = Format::load(tracefs, "tcp", "tcp_receive_reset")?;
    let tp = "tcp:tcp_receive_reset";
    layout.receive_reset.skaddr = f.require(tp, "skaddr")?;
    layout.receive_reset.addr = addresses(&f, tp)?;
    Ok(())
}

/// `sock:inet_sock_set_state`.
fn sock_state_fields(tracefs: &Path, sock_state: &mut SockStateLayout) -> Result<()> {
    let f = Format::load(tracefs, "sock", "inet_sock_set_state")?;
    let tp = "sock:inet_sock_set_state";
    sock_state.skaddr = f.require(tp, "skaddr")?;
    sock_state.oldstate = f.require(tp, "oldstate")?;
    sock_state.newstate = f.require(tp, "newstate")?;
    sock_state.protocol = f.require(tp, "protocol")?;
    sock_state.addr = addresses(&f, tp)?;
    Ok(())
}

/// A process's exec, exit and the signals sent to it.
fn process_fields(tracefs: &Path, layout: &mut KernelLayout) -> Result<()> {
    let f = Format::load(tracefs, "sched", "sched_process_exec")?;
    layout.exec.filename = f.require("sched:sched_process_exec", "filename")?;

    let f = Format::load(tracefs, "sched", "sched_process_exit")?;
    // 6.16+ says whether the whole thread group is gone; before, the leader's exit is used.
    layout.exit.group_dead = f.offset("group_dead").unwrap_or(ABSENT);

    let f = Format::load(tracefs, "signal", "signal_generate")?;
    let tp = "signal:signal_generate";
    layout.signal.sig = f.require(tp, "sig")?;
    layout.signal.code = f.require(tp, "code")?;
    layout.signal.comm = f.require(tp, "comm")?;
    layout.signal.pid = f.require(tp, "pid")?;
    layout.signal.result = f.offset("result").unwrap_or(ABSENT);
    Ok(())
}

/// accept, the syscall exits, and the path argument of the syscalls that take one.
fn syscall_fields(tracefs: &Path, syscall: &mut SyscallLayout) -> Result<()> {
    let load = |name: &str| Format::load(tracefs, "syscalls", name);
    // accept and accept4 share their argument layout; both are attached.
    let enter = load("sys_enter_accept4")?;
    let tp = "syscalls:sys_enter_accept4";
    syscall.accept_peer = enter.require(tp, "upeer_sockaddr")?;
    syscall.accept_fd = enter.require(tp, "fd")?;
    let exit = load("sys_exit_accept4")?;
    // Every sys_exit_* record has this layout: the failure program reads them all with it.
    syscall.ret = exit.require("syscalls:sys_exit_accept4", "ret")?;
    syscall.exit_nr = exit.require("syscalls:sys_exit_accept4", "__syscall_nr")?;
    let openat = load("sys_enter_openat")?;
    syscall.enter_nr = openat.require("syscalls:sys_enter_openat", "__syscall_nr")?;
    // Not every architecture has open(2) or stat(2); openat2(2) came in 5.6.
    for (slot, name) in syscall.path_arg.iter_mut().zip(PATH_SYSCALLS) {
        *slot = load(name)
            .ok()
            .and_then(|f| f.offset("filename"))
            .unwrap_or(ABSENT);
    }
    Ok(())
}

/// What sshd writes (its log, a dropped client's note): optional hooks.
fn sshd_write_fields(tracefs: &Path, l: &mut SyscallLayout) {
    if let Ok(f) = Format::load(tracefs, "syscalls", "sys_enter_write") {
        (l.write_fd, l.write_buf, l.write_count) = (
            f.offset("fd").unwrap_or(ABSENT),
            f.offset("buf").unwrap_or(ABSENT),
            f.offset("count").unwrap_or(ABSENT),
        );
    }
    if let Ok(f) = Format::load(tracefs, "syscalls", "sys_enter_sendto") {
        (l.sendto_fd, l.sendto_buf, l.sendto_len) = (
            f.offset("fd").unwrap_or(ABSENT),
            f.offset("buff").unwrap_or(ABSENT),
            f.offset("len").unwrap_or(ABSENT),
        );
    }
}

/// The syscall a socket send happens in, and a failed call's path, from the task's saved
/// registers: x86-64 keeps the number in `orig_ax` and the arguments in `di`, `si`, `dx`;
/// arm64 in `syscallno` and `regs[0..3]`. Any one unknown leaves sshd's output and the paths
/// to the syscalls' entries.
fn saved_syscall_registers(btf: &KernelBtf, l: &mut SyscallLayout) {
    let x86 = ["orig_ax", "di", "si", "dx"].map(|m| member(btf, "pt_regs", m).ok());
    let found = if let [Some(nr), Some(a0), Some(a1), Some(a2)] = x86 {
        Some((nr, [a0, a1, a2]))
    } else {
        // arm64: `regs` is the first member of a union at the start of `pt_regs`.
        let regs = member(btf, "pt_regs", "regs").or_else(|_| member(btf, "user_pt_regs", "regs"));
        match (member(btf, "pt_regs", "syscallno"), regs) {
            (Ok(nr), Ok(r)) => Some((nr, [r, r + 8, r + 16])),
            _ => None,
        }
    };
    let Some((nr, args)) = found else {
        return;
    };
    (l.regs_nr, l.regs_args) = (nr, args);
    if let (Some(write), Some(sendto)) = (
        super::syscalls::number_of("write"),
        super::syscalls::number_of("sendto"),
    ) {
        (l.write_nr, l.sendto_nr) = (write, sendto);
    }
    path_registers(l);
}

/// Each path syscall's number, and where its `filename` lies among the saved registers: its
/// place among the entry record's arguments, 8 bytes each from the first aligned offset after
/// `__syscall_nr` (`struct syscall_trace_enter`). Only the first three arguments are known; a
/// call missing from the numbers table leaves the paths to the entries (see `path_ways`).
fn path_registers(l: &mut SyscallLayout) {
    if l.enter_nr == ABSENT {
        return;
    }
    let first_arg = (l.enter_nr + 4).next_multiple_of(8);
    for (i, name) in PATH_SYSCALLS.iter().enumerate() {
        let offset = l.path_arg[i];
        let index = offset
            .checked_sub(first_arg)
            .filter(|d| offset != ABSENT && d % 8 == 0)
            .map(|d| usize::from(d / 8));
        let call = name.trim_start_matches("sys_enter_");
        // The table names stat(2) and lstat(2) as userspace does, not `newstat`.
        let nr = super::syscalls::number_of(call)
            .or_else(|| super::syscalls::number_of(call.strip_prefix("new")?));
        if let (Some(i_arg), Some(nr)) = (index.and_then(|i| l.regs_args.get(i)), nr) {
            (l.path_nr[i], l.path_regs[i]) = (nr, *i_arg);
        }
    }
}

/// `skb:kfree_skb`, for netfilter drops.
fn kfree_skb_fields(tracefs: &Path, kfree_skb: &mut KfreeSkbLayout) -> Result<()> {
    let f = Format::load(tracefs, "skb", "kfree_skb")?;
    let tp = "skb:kfree_skb";
    kfree_skb.skbaddr = f.require(tp, "skbaddr")?;
    kfree_skb.protocol = f.require(tp, "protocol")?;
    // Drop reasons came in 5.17; without them netfilter drops cannot be told apart.
    kfree_skb.reason = f.offset("reason").unwrap_or(ABSENT);
    Ok(())
}

/// `avc:selinux_audited`, all optional.
fn selinux_audited_fields(tracefs: &Path, s: &mut SelinuxAuditedLayout) {
    // Present in tracefs even where SELinux is off; absent on kernels without SELinux.
    if let Ok(f) = Format::load(tracefs, "avc", "selinux_audited") {
        for (slot, name) in [
            (&mut s.requested, "requested"),
            (&mut s.denied, "denied"),
            (&mut s.audited, "audited"),
            (&mut s.result, "result"),
            (&mut s.scontext, "scontext"),
            (&mut s.tcontext, "tcontext"),
            (&mut s.tclass, "tclass"),
        ] {
            *slot = f.offset(name).unwrap_or(ABSENT);
        }
    }
}

/// `oom:mark_victim`.
fn oom_victim_fields(tracefs: &Path, oom: &mut OomLayout) -> Result<()> {
    let f = Format::load(tracefs, "oom", "mark_victim")?;
    oom.pid = f.require("oom:mark_victim", "pid")?;
    // The memory numbers were added in 6.2; before, only the pid.
    for (slot, name) in [
        (&mut oom.uid, "uid"),
        (&mut oom.total_vm, "total_vm"),
        (&mut oom.anon_rss, "anon_rss"),
        (&mut oom.file_rss, "file_rss"),
        (&mut oom.shmem_rss, "shmem_rss"),
        (&mut oom.pgtables, "pgtables"),
        (&mut oom.oom_score_adj, "oom_score_adj"),
    ] {
        *slot = f.offset(name).unwrap_or(ABSENT);
    }
    Ok(())
}

/// The offset of `strukt.name` in the kernel's BTF, as the probes' `u16`.
fn member(btf: &KernelBtf, strukt: &str, name: &str) -> Result<u16> {
    let offset = btf
        .member_offset(strukt, name)
        .with_context(|| format!("kernel BTF has no member {name} in struct {strukt}"))?;
    u16::try_from(offset).with_context(|| format!("struct {strukt}.{name} is at offset {offset}"))
}

/// Fills each slot with its member's offset, or [`ABSENT`] where the kernel lacks it.
fn optional_members<'a>(
    btf: &KernelBtf,
    members: impl IntoIterator<Item = (&'a mut u16, &'a str, &'a str)>,
) {
    for (slot, strukt, name) in members {
        *slot = member(btf, strukt, name).unwrap_or(ABSENT);
    }
}

/// A task's thread group, exit code and resource limits.
fn task_members(btf: &KernelBtf, s: &mut StructLayout) -> Result<()> {
    s.task_tgid = member(btf, "task_struct", "tgid")?;
    s.task_exit_code = member(btf, "task_struct", "exit_code")?;
    s.task_signal = member(btf, "task_struct", "signal").unwrap_or(ABSENT);
    s.signal_rlim = member(btf, "signal_struct", "rlim").unwrap_or(ABSENT);
    Ok(())
}

/// A packet's headers, and the network namespace of a socket or a packet.
fn packet_and_netns_members(btf: &KernelBtf, s: &mut StructLayout) {
    s.skb_head = member(btf, "sk_buff", "head").unwrap_or(ABSENT);
    s.skb_transport_header = member(btf, "sk_buff", "transport_header").unwrap_or(ABSENT);
    s.skb_network_header = member(btf, "sk_buff", "network_header").unwrap_or(ABSENT);
    s.skb_data = member(btf, "sk_buff", "data").unwrap_or(ABSENT);
    // Network namespaces: a socket's through skc_net, a packet's through its device.
    let ns_inum =
        member(btf, "net", "ns").and_then(|ns| Ok(ns + member(btf, "ns_common", "inum")?));
    s.sk_net = member(btf, "sock_common", "skc_net").unwrap_or(ABSENT);
    s.net_inum = ns_inum.unwrap_or(ABSENT);
    s.skb_dev = member(btf, "sk_buff", "dev").unwrap_or(ABSENT);
    s.dev_net = member(btf, "net_device", "nd_net").unwrap_or(ABSENT);
}

/// A socket's own fields, for the raw inet_sock_set_state tracepoint.
fn socket_members(btf: &KernelBtf, s: &mut StructLayout) {
    for (slot, name) in [
        (&mut s.skc_family, "skc_family"),
        (&mut s.skc_num, "skc_num"),
        (&mut s.skc_dport, "skc_dport"),
        (&mut s.skc_rcv_saddr, "skc_rcv_saddr"),
        (&mut s.skc_daddr, "skc_daddr"),
        (&mut s.skc_v6_rcv_saddr, "skc_v6_rcv_saddr"),
        (&mut s.skc_v6_daddr, "skc_v6_daddr"),
    ] {
        *slot = member(btf, "sock_common", name).unwrap_or(ABSENT);
    }
    s.inet_sport = member(btf, "inet_sock", "inet_sport").unwrap_or(ABSENT);
    // sk_protocol is a u16 since 5.6; before, an 8-bit bitfield the probe cannot read.
    s.sk_protocol = match btf.member_bit_offset("sock", "sk_protocol") {
        Some(bits) if bits % 16 == 0 => u16::try_from(bits / 8).unwrap_or(ABSENT),
        _ => ABSENT,
    };
}

/// A failing task's credentials and root directory, for the permission (DAC) check.
fn credential_members(btf: &KernelBtf, s: &mut StructLayout) {
    optional_members(
        btf,
        [
            (&mut s.task_cred, "task_struct", "cred"),
            (&mut s.task_real_parent, "task_struct", "real_parent"),
            (&mut s.task_fs, "task_struct", "fs"),
            (&mut s.cred_fsuid, "cred", "fsuid"),
            (&mut s.cred_fsgid, "cred", "fsgid"),
            (&mut s.cred_cap_effective, "cred", "cap_effective"),
            (&mut s.cred_group_info, "cred", "group_info"),
            (&mut s.group_info_ngroups, "group_info", "ngroups"),
            (&mut s.group_info_gid, "group_info", "gid"),
            (&mut s.fs_root, "fs_struct", "root"),
            (&mut s.path_dentry, "path", "dentry"),
            (&mut s.dentry_inode, "dentry", "d_inode"),
            (&mut s.inode_ino, "inode", "i_ino"),
            (&mut s.inode_sb, "inode", "i_sb"),
            (&mut s.sb_dev, "super_block", "s_dev"),
        ],
    );
}

/// From an accepted descriptor to its socket.
fn socket_from_fd_members(btf: &KernelBtf, s: &mut StructLayout) {
    optional_members(
        btf,
        [
            (&mut s.task_files, "task_struct", "files"),
            (&mut s.files_fdt, "files_struct", "fdt"),
            (&mut s.fdtable_fd, "fdtable", "fd"),
            (&mut s.fdtable_max_fds, "fdtable", "max_fds"),
            (&mut s.file_private_data, "file", "private_data"),
            (&mut s.socket_sk, "socket", "sk"),
        ],
    );
}

/// A task's executable and its owner and mode: an sshd is followed only from a root-owned
/// program.
fn executable_members(btf: &KernelBtf, s: &mut StructLayout) {
    optional_members(
        btf,
        [
            (&mut s.task_mm, "task_struct", "mm"),
            (&mut s.mm_exe_file, "mm_struct", "exe_file"),
            (&mut s.file_inode, "file", "f_inode"),
            (&mut s.inode_uid, "inode", "i_uid"),
            (&mut s.inode_mode, "inode", "i_mode"),
        ],
    );
}

/// A task's memory cgroup limit and usage, read in the kernel since /proc shows an exiting
/// task's cgroup v1 path as "/".
fn memory_cgroup_members(btf: &KernelBtf, s: &mut StructLayout) {
    optional_members(
        btf,
        [
            (&mut s.task_cgroups, "task_struct", "cgroups"),
            (&mut s.css_set_subsys, "css_set", "subsys"),
            (&mut s.mem_cgroup_css, "mem_cgroup", "css"),
            (&mut s.mem_cgroup_memory, "mem_cgroup", "memory"),
            (&mut s.page_counter_max, "page_counter", "max"),
            (&mut s.page_counter_usage, "page_counter", "usage"),
        ],
    );
    s.memory_cgrp_id = btf
        .enum_values(Some("cgroup_subsys_id"), None)
        .and_then(|values| values.into_iter().find(|(n, _)| n == "memory_cgrp_id"))
        .and_then(|(_, v)| u16::try_from(v).ok())
        .unwrap_or(ABSENT);
}

/// Where a received reset's sequence numbers are checked against the socket's, and where a
/// connecting ssh's command line is.
fn tcp_sock_members(btf: &KernelBtf, s: &mut StructLayout) {
    optional_members(
        btf,
        [
            (&mut s.tcp_rcv_nxt, "tcp_sock", "rcv_nxt"),
            (&mut s.tcp_snd_una, "tcp_sock", "snd_una"),
            (&mut s.tcp_snd_nxt, "tcp_sock", "snd_nxt"),
            (&mut s.mm_arg_start, "mm_struct", "arg_start"),
            (&mut s.mm_arg_end, "mm_struct", "arg_end"),
        ],
    );
}

/// The address fields in either style the kernel has used for TCP tracepoints.
fn addresses(f: &Format, tracepoint: &str) -> Result<AddrLayout> {
    let sockaddr = f.get("saddr").is_some_and(|s| s.size >= 16);
    if sockaddr {
        return Ok(AddrLayout {
            style: addr_style::SOCKADDR,
            saddr: f.require(tracepoint, "saddr")?,
            daddr: f.require(tracepoint, "daddr")?,
            ..AddrLayout::NONE
        });
    }
    Ok(AddrLayout {
        style: addr_style::SPLIT,
        // Before 5.12 tcp_send_reset/tcp_receive_reset have no family: the probe tells an
        // IPv4 connection by its v4-mapped saddr_v6.
        family: f.offset("family").unwrap_or(ABSENT),
        sport: f.require(tracepoint, "sport")?,
        dport: f.require(tracepoint, "dport")?,
        saddr: f.require(tracepoint, "saddr")?,
        daddr: f.require(tracepoint, "daddr")?,
        saddr_v6: f.require(tracepoint, "saddr_v6")?,
        daddr_v6: f.require(tracepoint, "daddr_v6")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(fields: &[(&str, u16, u16)]) -> Format {
        let text: String = fields
            .iter()
            .map(|(decl, off, size)| {
                format!("\tfield:{decl};\toffset:{off};\tsize:{size};\tsigned:0;\n")
            })
            .collect();
        Format::parse(&text)
    }

    #[test]
    fn sockaddr_style_of_6_10_and_later() {
        let f = format(&[("__u8 saddr[28]", 32, 28), ("__u8 daddr[28]", 60, 28)]);
        let a = addresses(&f, "tp").unwrap();
        assert_eq!((a.style, a.saddr, a.daddr), (addr_style::SOCKADDR, 32, 60));
    }

    /// `tcp_send_reset` as 6.1 lays it out: split fields, no reason.
    #[test]
    fn split_style_of_older_kernels() {
        let f = format(&[
            ("__u16 sport", 28, 2),
            ("__u16 dport", 30, 2),
            ("__u16 family", 32, 2),
            ("__u8 saddr[4]", 34, 4),
            ("__u8 daddr[4]", 38, 4),
            ("__u8 saddr_v6[16]", 42, 16),
            ("__u8 daddr_v6[16]", 58, 16),
        ]);
        let a = addresses(&f, "tp").unwrap();
        assert_eq!(a.style, addr_style::SPLIT);
        assert_eq!((a.family, a.sport, a.saddr_v6), (32, 28, 42));
    }

    #[test]
    fn missing_address_fields_are_named() {
        let f = format(&[("__u16 sport", 28, 2)]);
        let err = addresses(&f, "tcp:x").unwrap_err().to_string();
        assert!(err.contains("tcp:x") && err.contains("dport"), "{err}");
    }

    /// 5.10's `tcp_send_reset`: split fields without a family.
    #[test]
    fn split_style_without_family() {
        let f = format(&[
            ("__u16 sport", 28, 2),
            ("__u16 dport", 30, 2),
            ("__u8 saddr[4]", 32, 4),
            ("__u8 daddr[4]", 36, 4),
            ("__u8 saddr_v6[16]", 40, 16),
            ("__u8 daddr_v6[16]", 56, 16),
        ]);
        let a = addresses(&f, "tp").unwrap();
        assert_eq!(
            (a.style, a.family, a.saddr_v6),
            (addr_style::SPLIT, ABSENT, 40)
        );
    }
}
