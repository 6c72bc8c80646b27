//! The tracked sshd process tree: forks (tracked at once, in the kernel), execs and exits.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use sshtrace_common::{pid_flags, ExecEvent, ExitEvent, ForkEvent, ABSENT};

use super::field;
use crate::{
    maps::{pid_tracked, TRACKED_PIDS},
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
    TRACKED_PIDS.insert(child_tgid, pid_flags::DESCENDANT, 0)?;
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
    if !pid_tracked(tgid) {
        return Ok(());
    }
    // A `__data_loc` field: the low 16 bits are the string's offset in the record.
    let loc: u32 = field(ctx, layout!(exec.filename))?;
    let name = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    submit(|e: &mut ExecEvent| {
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut e.filename) };
    });
    // A user's shell or command: the connection is in use, and what that program and its
    // children do is not sshd's doing. Stop following them (volume, not identification:
    // sshd processes are found by the process tree, this only prunes it).
    let comm = bpf_get_current_comm().unwrap_or_default();
    if !comm.starts_with(b"sshd") {
        let _ = TRACKED_PIDS.remove(tgid);
    }
    Ok(())
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
    submit(|e: &mut ExitEvent| e.exit_code = exit_code);
    Ok(())
}
