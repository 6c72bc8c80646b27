//! `accept`/`accept4` in tracked processes: the failed ones reported as any failed syscall, the
//! successful ones here, at exit, in the accepting process, so each accepted connection gets
//! its owner from process context. The accepted socket is followed from the new fd, and its
//! connection claimed (see `sock_state`). Only where the fd cannot be followed does the entry
//! keep the peer's address for the exit.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use sshtrace_common::{AcceptEvent, SOCKADDR_LEN};

use super::{field, member, sock_state::claim_accepted, syscalls::syscall_failed};
use crate::{
    maps::{claim_on_accept, owns_listeners, pid_tracked, track_port, ACCEPT_ARGS},
    record::submit,
};

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_tracked((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let l = layout!(syscall);
    let peer: u64 = field(ctx, l.accept_peer)?;
    let fd: u64 = field(ctx, l.accept_fd)?;
    ACCEPT_ARGS.insert(pid_tgid, [peer, fd], 0)?;
    Ok(())
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Where the accepted fd leads to its socket, the socket tells the peer and the entry is
    // not hooked at all (every accept on the host would run it); elsewhere the entry saved
    // the arguments of a tracked process's accept.
    let (peer, fd) = if claim_on_accept() {
        if !pid_tracked((pid_tgid >> 32) as u32) {
            return Ok(());
        }
        (0, u64::MAX)
    } else {
        let Some(&[peer, fd]) = (unsafe { ACCEPT_ARGS.get(pid_tgid) }) else {
            return Ok(());
        };
        let _ = ACCEPT_ARGS.remove(pid_tgid);
        (peer, fd)
    };
    let ret: i64 = field(ctx, layout!(syscall.ret))?;
    // Failures are reported, rate-limited, as any failed syscall (here, not by a second
    // program on this exit: every accept on the host would run both).
    if ret < 0 {
        let nr = field::<i32>(ctx, layout!(syscall.exit_nr))?;
        return syscall_failed(ret, || Ok(i64::from(nr)), |_, _| 0);
    }
    let skaddr = accepted_socket(ret as u32).unwrap_or(0);
    // Claim the connection: from now on its close is reported, and this record reports it.
    let history = match skaddr {
        0 => None,
        _ => claim_accepted(skaddr),
    };
    // sshd accepts here: the port is sshd's, whatever discovery knows yet.
    if let Some(h) = history {
        if owns_listeners((pid_tgid >> 32) as u32) {
            track_port(unsafe { (*h).endpoints.local_port });
        }
    }
    submit(|e: &mut AcceptEvent| {
        e.ret = ret;
        e.listen_fd = fd as i32;
        if peer != 0 && unsafe { bpf_probe_read_user_buf(peer as *const u8, &mut e.peer) }.is_ok() {
            e.peer_len = SOCKADDR_LEN as u32;
        }
        e.skaddr = skaddr;
        if let Some(h) = history {
            e.history_found = 1;
            // Copied in place: the history does not fit on the BPF stack twice.
            unsafe { core::ptr::copy_nonoverlapping(h, &mut e.history, 1) };
        }
    });
    Ok(())
}

/// The `struct sock` behind the current task's descriptor `fd`:
/// `current->files->fdt->fd[fd]->private_data->sk`.
fn accepted_socket(fd: u32) -> Option<u64> {
    if !claim_on_accept() {
        return None;
    }
    let s = layout!(structs);
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = member(task, s.task_files)?;
    let fdt: *const u8 = member(files, s.files_fdt)?;
    let fds: *const u8 = member(fdt, s.fdtable_fd)?;
    let file: *const u8 = member(fds.wrapping_add(fd as usize * 8), 0)?;
    let socket: *const u8 = member(file, s.file_private_data)?;
    member::<u64>(socket, s.socket_sk)
}
