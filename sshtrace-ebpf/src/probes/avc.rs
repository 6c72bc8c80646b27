//! SELinux denials of tracked processes: `avc:selinux_audited` (present in tracefs even where
//! SELinux is off; then it never fires).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use sshtrace_common::SelinuxAuditedEvent;

use super::field;
use crate::{maps::pid_tracked, record::submit};

#[tracepoint]
pub fn selinux_audited(ctx: TracePointContext) -> u32 {
    let _ = try_selinux_audited(&ctx);
    0
}

/// Copies a `__data_loc char[]` field (low 16 bits: offset in the record) into `out`.
fn data_loc(ctx: &TracePointContext, offset: u16, out: &mut [u8]) {
    if let Ok(loc) = field::<u32>(ctx, offset) {
        let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, out) };
    }
}

fn try_selinux_audited(ctx: &TracePointContext) -> Result<(), i32> {
    if !pid_tracked((bpf_get_current_pid_tgid() >> 32) as u32) {
        return Ok(());
    }
    let l = layout!(selinux);
    let denied: u32 = field(ctx, l.denied)?;
    if denied == 0 {
        return Ok(());
    }
    let requested: u32 = field(ctx, l.requested).unwrap_or(0);
    let audited: u32 = field(ctx, l.audited).unwrap_or(0);
    let result: i32 = field(ctx, l.result).unwrap_or(0);
    submit(|e: &mut SelinuxAuditedEvent| {
        e.requested = requested;
        e.denied = denied;
        e.audited = audited;
        e.result = result;
        data_loc(ctx, l.scontext, &mut e.scontext);
        data_loc(ctx, l.tcontext, &mut e.tcontext);
        data_loc(ctx, l.tclass, &mut e.tclass);
    });
    Ok(())
}
