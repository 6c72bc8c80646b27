//! What followed sshd processes write: their log messages, taken where sshd writes them (its
//! standard error, or a syslog datagram to `/dev/log`), so they are known when no file keeps
//! them; and the words a listener writes to a connection it drops, which tell MaxStartups from
//! a PerSourcePenalties penalty. Only followed processes are looked at, and of their writes
//! only these: a session's traffic is never copied.
//!
//! Two ways, best first. `sock_send_length` fires after a send on a socket, so only socket
//! sends on the host pay for it, not every write(2): it sees the syslog datagram, the note to
//! a client and a standard error that is a socket (journald's); a standard error that is a
//! pipe or a file is left to `sys_enter_write_stderr`, attached only while a followed sshd
//! logs there. Where it does not load (before 6.4, or without `bpf_task_pt_regs`), every
//! write(2) and sendto(2) on the host is looked at.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs,
        generated,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sshtrace_common::{output_channel, pid_flags, SshdOutputEvent, ABSENT, OUTPUT_LEN};

use super::{
    field,
    socket::{socket_on, tcp_socket_on},
};
use crate::{maps::tracked_flags, record::submit};

const STDERR_FILENO: u64 = 2;
const IPPROTO_TCP: u16 = 6;

/// tp_btf `sock_send_length(struct sock *sk, int ret, int flags)`: after a send on a socket, in
/// the sending task; the call's own arguments are read from its saved registers.
#[btf_tracepoint(function = "sock_send_length")]
pub fn tp_btf_sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let _ = try_socket_send(ctx.arg(0));
    0
}

fn try_socket_send(sk: *const u8) -> Result<(), i32> {
    let Some(flags) = tracked_flags((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return Ok(());
    };
    let l = layout!(syscall);
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    let nr: u64 = load(regs, l.regs_nr)?;
    let fd: u64 = load(regs, l.regs_args[0])?;
    let buf: u64 = load(regs, l.regs_args[1])?;
    let len: u64 = load(regs, l.regs_args[2])?;
    let channel = if nr == l.write_nr as u64 && fd == STDERR_FILENO {
        output_channel::STDERR
    } else if nr == l.write_nr as u64 && flags & pid_flags::OWNS_LISTENERS != 0 {
        // The listener writes to a TCP connection only to tell a dropped client why.
        if load::<u16>(sk, layout!(structs.sk_protocol))? != IPPROTO_TCP {
            return Ok(());
        }
        output_channel::CLIENT_SOCKET
    } else if nr == l.sendto_nr as u64 && syslog_datagram(buf) {
        output_channel::SYSLOG
    } else {
        return Ok(());
    };
    let skaddr = if channel == output_channel::CLIENT_SOCKET {
        sk as u64
    } else {
        0
    };
    send(channel, fd, skaddr, buf, len);
    Ok(())
}

/// A plain load at `offset` of a pointer the verifier types from BTF (checked at load time
/// against the member it falls in).
#[inline(always)]
fn load<T>(base: *const u8, offset: u16) -> Result<T, i32> {
    if offset == ABSENT || base.is_null() {
        return Err(-1);
    }
    Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast()) })
}

/// Standard error when it is not a socket (the socket way saw that), for a followed process:
/// attached only while a followed sshd logs to a pipe or a file.
#[tracepoint]
pub fn sys_enter_write_stderr(ctx: TracePointContext) -> u32 {
    let _ = try_write_stderr(&ctx);
    0
}

fn try_write_stderr(ctx: &TracePointContext) -> Result<(), i32> {
    if tracked_flags((bpf_get_current_pid_tgid() >> 32) as u32).is_none() {
        return Ok(());
    }
    let l = layout!(syscall);
    let fd: u64 = field(ctx, l.write_fd)?;
    if fd != STDERR_FILENO || socket_on(fd).is_some() {
        return Ok(());
    }
    let buf: u64 = field(ctx, l.write_buf)?;
    let len: u64 = field(ctx, l.write_count)?;
    send(output_channel::STDERR, fd, 0, buf, len);
    Ok(())
}

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
    if !syslog_datagram(buf) {
        return Ok(());
    }
    let fd: u64 = field(ctx, l.sendto_fd)?;
    let len: u64 = field(ctx, l.sendto_len)?;
    send(output_channel::SYSLOG, fd, 0, buf, len);
    Ok(())
}

/// Whether a send's data begins as syslog(3)'s `<PRI>` does.
#[inline(always)]
fn syslog_datagram(buf: u64) -> bool {
    unsafe { bpf_probe_read_user(buf as *const u8) }.is_ok_and(|first| first == b'<')
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
pub(super) fn copy_user(buf: u64, len: u64, data: &mut [u8; OUTPUT_LEN]) -> u32 {
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
