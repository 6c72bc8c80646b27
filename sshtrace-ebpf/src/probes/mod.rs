//! One module per hook family.

mod accept;
mod avc;
mod client;
mod oom;
mod process;
mod segments;
mod signal;
mod skb;
mod sock_state;
mod socket;
mod sshd_output;
mod syscalls;
mod tcp;

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};
use sshtrace_common::ABSENT;

/// Reads a `T` at `offset` of a classic tracepoint record; an absent field is an error.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    unsafe { ctx.read_at::<T>(offset as usize) }
}

/// Reads the kernel structure member at `offset` of `base` (offsets from BTF); an unknown
/// offset or a null `base` is an error.
#[inline(always)]
fn member<T>(base: *const u8, offset: u16) -> Option<T> {
    if offset == ABSENT || base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast()) }.ok()
}
