//! Successful `accept`/`accept4` in tracked processes. The peer address is read at exit, in the accepting
//! process, so each accepted connection gets its owner from process context.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use sshtrace_common::{AcceptEvent, SOCKADDR_LEN};

use super::field;
use crate::{
    maps::{layout, pid_tracked, ACCEPT_ARGS},
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
    let l = layout().syscall;
    let peer: u64 = field(ctx, l.accept_peer)?;
    let fd: u64 = field(ctx, l.accept_fd)?;
    ACCEPT_ARGS.insert(pid_tgid, [peer, fd], 0)?;
    Ok(())
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(&[peer, fd]) = (unsafe { ACCEPT_ARGS.get(pid_tgid) }) else {
        return Ok(());
    };
    let _ = ACCEPT_ARGS.remove(pid_tgid);
    let ret: i64 = field(ctx, layout().syscall.ret)?;
    // Failures are reported, rate-limited, by the syscall-error probe.
    if ret < 0 {
        return Ok(());
    }
    submit(|e: &mut AcceptEvent| {
        e.ret = ret;
        e.listen_fd = fd as i32;
        if peer != 0 && unsafe { bpf_probe_read_user_buf(peer as *const u8, &mut e.peer) }.is_ok() {
            e.peer_len = SOCKADDR_LEN as u32;
        }
    });
    Ok(())
}
