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

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext, EbpfContext};
use sshtrace_common::ABSENT;

/// Reads a `T` at `offset` of a classic tracepoint record; an absent field is an error.
///
/// A field among the record's first words is a plain load, not a helper call: the offset is
/// read from `LAYOUT`, which the verifier knows as a constant (a frozen read-only map), so it
/// checks only the branch taken. A context access must carry its offset in the instruction,
/// so each offset has its own function (the compiler would otherwise merge the loads into
/// one through a computed pointer, which the verifier refuses). A field further on, or wider
/// than a word, goes through the helper.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    if offset == ABSENT {
        return Err(-1);
    }
    let size = core::mem::size_of::<T>();
    let record = ctx.as_ptr() as *const u8;
    macro_rules! plain_loads {
        ($($at:literal)*) => {
            match offset {
                $($at if matches!(size, 1 | 2 | 4 | 8) && $at % size == 0 => {
                    return Ok(load_at::<T, $at>(record));
                })*
                _ => {}
            }
        };
    }
    plain_loads!(8 12 16 20 24 28 32 36 40 44 48 52 56);
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| -1)
}

/// The `T` at `AT` bytes into a tracepoint record: one load with the offset in it.
#[inline(never)]
fn load_at<T, const AT: usize>(record: *const u8) -> T {
    unsafe { core::ptr::read_volatile(record.add(AT).cast::<T>()) }
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
