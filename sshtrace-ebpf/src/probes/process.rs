//! The tracked sshd process tree: forks (tracked at once, in the kernel), execs and exits.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use sshtrace_common::{counter, pid_flags, AcceptEvent, ExecEvent, ExitEvent, ForkEvent, ABSENT};

use super::{field, member, sock_state::claim_accepted, socket::tcp_socket_on};
use crate::{
    maps::{count, follow_sshd_execs, pid_tracked, track_port, TRACKED_PIDS},
    record::submit,
};

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// A raw tracepoint: its arguments are the `parent` and `child` task pointers, so the child's
/// thread group can be read and threads told apart from new processes.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i32> {
    let parent = current_tgid();
    if !pid_tracked(parent) {
        return Ok(());
    }
    let tgid_offset = layout!(structs.task_tgid);
    if tgid_offset == ABSENT {
        return Err(-1);
    }
    let child: *const u8 = ctx.arg(1);
    let child_tgid: i32 = unsafe { bpf_probe_read_kernel(child.add(tgid_offset as usize).cast())? };
    let child_tgid = child_tgid as u32;
    if child_tgid == parent {
        return Ok(());
    }
    if TRACKED_PIDS
        .insert(child_tgid, pid_flags::DESCENDANT, 0)
        .is_err()
    {
        // Full: the child is not followed, and that is counted, never silent.
        count(counter::UNTRACKED_PROCESSES);
        return Err(-1);
    }
    submit(|e: &mut ForkEvent| e.child_pid = child_tgid);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let tgid = current_tgid();
    // After exec, comm is the program's file name.
    let comm = current_comm();
    let tracked = pid_tracked(tgid);
    let followed = tracked || (follow_sshd_execs() && is_sshd_program(&comm));
    if !followed {
        return Ok(());
    }
    let exe = executable();
    if !tracked {
        // A name is not an identity: only a root-owned regular file is followed.
        if exe.uid != 0 || exe.mode & S_IFMT != S_IFREG {
            return Ok(());
        }
        if TRACKED_PIDS.insert(tgid, pid_flags::SSHD_EXEC, 0).is_err() {
            count(counter::UNTRACKED_PROCESSES);
            return Err(-1);
        }
    }
    // A `__data_loc` field: the low 16 bits are the string's offset in the record.
    let loc: u32 = field(ctx, layout!(exec.filename))?;
    let name = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    submit(|e: &mut ExecEvent| {
        e.began_tracking = !tracked as u32;
        if exe.known {
            (e.exe_known, e.exe_uid, e.exe_mode) = (1, exe.uid, exe.mode as u32);
        }
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut e.filename) };
    });
    if !tracked {
        claim_inherited_connection();
        return Ok(());
    }
    // A user's shell or command: the connection is in use, and what that program and its
    // children do is not sshd's doing. Stop following them (volume, not identification:
    // sshd processes are found by the process tree, this only prunes it).
    if comm[0] & PREFIX_4 != word(b"sshd\0\0\0\0") {
        let _ = TRACKED_PIDS.remove(tgid);
    }
    Ok(())
}

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// The current task's comm (after exec, the program's file name) as two little-endian words:
/// compared as integers, it needs no memcmp, which older verifiers refuse as a subprogram.
#[inline(always)]
fn current_comm() -> [u64; 2] {
    // Left uninitialised: the helper fills it (with zeros on failure), and zeroing it first
    // became a memset subprogram that 5.10's verifier refuses.
    let mut comm = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        comm.assume_init()
    }
}

const fn word(bytes: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*bytes)
}

const PREFIX_4: u64 = 0xffff_ffff;
const PREFIX_5: u64 = 0xff_ffff_ffff;
const PREFIX_2: u64 = 0xffff;

/// `sshd`, `sshd-session` (OpenSSH 9.8+) or `sshd-auth` (10.0+), exactly.
#[inline(always)]
fn is_sshd_program(comm: &[u64; 2]) -> bool {
    let [head, tail] = *comm;
    head & PREFIX_5 == word(b"sshd\0\0\0\0")
        || (head == word(b"sshd-ses") && tail & PREFIX_5 == word(b"sion\0\0\0\0"))
        || (head == word(b"sshd-aut") && tail & PREFIX_2 == word(b"h\0\0\0\0\0\0\0"))
}

/// An executable's owner (global uid) and mode, every field written whether read or not:
/// 5.10's verifier refuses a read of stack left unwritten (an `Option`'s empty payload).
pub(super) struct Executable {
    pub known: bool,
    pub uid: u32,
    pub mode: u16,
}

/// The current task's executable.
#[inline(always)]
pub(super) fn executable() -> Executable {
    let mut exe = Executable {
        known: false,
        uid: u32::MAX,
        mode: 0,
    };
    let s = layout!(structs);
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Some(inode) = member::<*const u8>(task, s.task_mm)
        .and_then(|mm| member::<*const u8>(mm, s.mm_exe_file))
        .and_then(|file| member::<*const u8>(file, s.file_inode))
    else {
        return exe;
    };
    if let (Some(uid), Some(mode)) = (member(inode, s.inode_uid), member(inode, s.inode_mode)) {
        exe = Executable {
            known: true,
            uid,
            mode,
        };
    }
    exe
}

/// inetd mode (`sshd -i` under inetd or systemd's `Accept=yes`): the connection was accepted
/// by another program and handed over as standard input. Claimed and reported here, so that
/// the first connection of a socket-activated sshd is followed like an accepted one.
#[inline(always)]
fn claim_inherited_connection() {
    let Some(sk) = tcp_socket_on(0) else {
        return;
    };
    let Some(history) = claim_accepted(sk) else {
        return;
    };
    let local_port = unsafe { (*history).endpoints.local_port };
    track_port(local_port);
    submit(|e: &mut AcceptEvent| {
        e.inherited = 1;
        e.listen_fd = -1;
        e.skaddr = sk;
        e.history_found = 1;
        unsafe { core::ptr::copy_nonoverlapping(history, &mut e.history, 1) };
    });
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !pid_tracked(tgid) {
        return Ok(());
    }
    let process_ends = match field::<u8>(ctx, layout!(exit.group_dead)) {
        Ok(group_dead) => group_dead != 0,
        Err(_) => pid_tgid as u32 == tgid,
    };
    if !process_ends {
        return Ok(());
    }
    // The tracepoint runs after do_exit() stored the code and before the files are closed, so
    // this record comes before the resets or FINs the exit causes.
    let exit_code_at = layout!(structs.task_exit_code);
    let exit_code: i32 = if exit_code_at == ABSENT {
        -1
    } else {
        let task = unsafe { bpf_get_current_task() } as *const u8;
        unsafe { bpf_probe_read_kernel(task.add(exit_code_at as usize).cast()) }.unwrap_or(-1)
    };
    let _ = TRACKED_PIDS.remove(tgid);
    let memcg = memory_cgroup();
    submit(|e: &mut ExitEvent| {
        e.exit_code = exit_code;
        if let Some((max, usage)) = memcg {
            (e.memcg_read, e.memcg_max_pages, e.memcg_usage_pages) = (1, max, usage);
        }
    });
    Ok(())
}

/// The current task's memory cgroup limit and usage, in pages.
#[inline(always)]
fn memory_cgroup() -> Option<(u64, u64)> {
    let s = layout!(structs);
    if s.memory_cgrp_id == ABSENT || s.mem_cgroup_css == ABSENT {
        return None;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let cset: *const u8 = member(task, s.task_cgroups)?;
    let subsys = cset.wrapping_add(s.css_set_subsys as usize);
    let css: *const u8 = member(subsys, s.memory_cgrp_id.wrapping_mul(8))?;
    let memcg = css.wrapping_sub(s.mem_cgroup_css as usize);
    let counter = memcg.wrapping_add(s.mem_cgroup_memory as usize);
    Some((
        member(counter, s.page_counter_max)?,
        member(counter, s.page_counter_usage)?,
    ))
}
