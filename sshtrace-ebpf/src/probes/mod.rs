//! One module per hook family.

mod accept;
mod avc;
mod oom;
mod process;
mod signal;
mod skb;
mod syscalls;
mod tcp;

use aya_ebpf::programs::TracePointContext;
use sshtrace_common::ABSENT;

/// Reads a `T` at `offset` of a classic tracepoint record; an absent field is an error.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    unsafe { ctx.read_at::<T>(offset as usize) }
}
