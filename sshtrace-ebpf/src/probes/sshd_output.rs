//! What followed sshd processes write: their log messages, taken where sshd writes them (its
//! standard error, or a syslog datagram to `/dev/log`), so they are known when no file keeps
//! them; and the words a listener writes to a connection it drops, which tell MaxStartups from
//! a PerSourcePenalties penalty. Only followed processes are looked at, and of their writes
//! only these: a session's traffic is never copied.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use sshtrace_common::{output_channel, pid_flags, SshdOutputEvent, OUTPUT_LEN};

use super::{field, socket::tcp_socket_on};
use crate::{maps::tracked_flags, record::submit};

const STDERR_FILENO: u64 = 2;

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    let _ = try_write(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let _ = try_sendto(&ctx);
    0
}

fn try_write(ctx: &TracePointContext) -> Result<(), i32> {
    let Some(flags) = tracked_flags((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return Ok(());
    };
    let l = layout!(syscall);
    let fd: u64 = field(ctx, l.write_fd)?;
    let (channel, skaddr) = if fd == STDERR_FILENO {
        (output_channel::STDERR, 0)
    } else if flags & pid_flags::OWNS_LISTENERS != 0 {
        // The listener writes to a TCP connection only to tell a dropped client why.
        (output_channel::CLIENT_SOCKET, tcp_socket_on(fd).ok_or(-1)?)
    } else {
        return Ok(());
    };
    let buf: u64 = field(ctx, l.write_buf)?;
    let len: u64 = field(ctx, l.write_count)?;
    send(channel, fd, skaddr, buf, len);
    Ok(())
}

/// glibc's syslog(3) sends `<PRI>…` datagrams with send(2), which is sendto(2).
fn try_sendto(ctx: &TracePointContext) -> Result<(), i32> {
    if tracked_flags((bpf_get_current_pid_tgid() >> 32) as u32).is_none() {
        return Ok(());
    }
    let l = layout!(syscall);
    let buf: u64 = field(ctx, l.sendto_buf)?;
    let first: u8 = unsafe { bpf_probe_read_user(buf as *const u8) }.map_err(|_| -1)?;
    if first != b'<' {
        return Ok(());
    }
    let fd: u64 = field(ctx, l.sendto_fd)?;
    let len: u64 = field(ctx, l.sendto_len)?;
    send(output_channel::SYSLOG, fd, 0, buf, len);
    Ok(())
}

#[inline(always)]
fn send(channel: u32, fd: u64, skaddr: u64, buf: u64, len: u64) {
    submit(|e: &mut SshdOutputEvent| {
        e.channel = channel;
        e.fd = fd as i32;
        e.skaddr = skaddr;
        e.len = len;
        e.copied = copy_user(buf, len, &mut e.data);
    });
}

/// Copies the first [`OUTPUT_LEN`] bytes at most; returns how many. The size is masked so the
/// verifier sees its bound.
#[inline(always)]
fn copy_user(buf: u64, len: u64, data: &mut [u8; OUTPUT_LEN]) -> u32 {
    let n = if len >= OUTPUT_LEN as u64 {
        OUTPUT_LEN as u32
    } else {
        (len as u32) & (OUTPUT_LEN as u32 - 1)
    };
    let ret = unsafe {
        generated::bpf_probe_read_user(data.as_mut_ptr().cast(), n, buf as *const core::ffi::c_void)
    };
    if ret == 0 {
        n
    } else {
        0
    }
}
