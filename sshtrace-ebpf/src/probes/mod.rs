//! One module per hook family.

mod accept;
mod oom;
mod process;
mod signal;
mod syscalls;
mod tcp;

use aya_ebpf::programs::TracePointContext;
use sshtrace_common::{ABSENT, CONTEXT_INTERRUPT, TRACE_FLAGS_INTERRUPT};

use crate::maps::layout;

/// Whether a classic tracepoint fired in interrupt context, from the record's common_flags.
#[inline(always)]
fn context(ctx: &TracePointContext) -> u32 {
    match field::<u8>(ctx, layout().common_flags) {
        Ok(flags) if flags & TRACE_FLAGS_INTERRUPT != 0 => CONTEXT_INTERRUPT,
        _ => 0,
    }
}

/// Reads a `T` at `offset` of a classic tracepoint record; an absent field is an error.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    unsafe { ctx.read_at::<T>(offset as usize) }
}
