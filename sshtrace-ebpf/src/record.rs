//! Writing records into the ring buffer, counting what could not be written.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use sshtrace_common::{counter, WireRecord};

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};

use crate::maps::{count, stopped, EVENTS};

/// Submits a record and wakes userspace at once: for process records, whose facts userspace
/// reads from /proc while the process still exists.
#[inline(always)]
pub fn submit<T: WireRecord>(fill: impl FnOnce(&mut T)) {
    submit_with(true, fill)
}

/// Submits a high-volume record (TCP state changes, resets) without waking userspace unless a
/// backlog builds up: it drains on a 100 ms tick anyway.
#[inline(always)]
pub fn submit_batched<T: WireRecord>(fill: impl FnOnce(&mut T)) {
    submit_with(false, fill)
}

/// Reserves a zeroed record, stamps the header with the current task, lets `fill` write the
/// rest and submits it. Every record is counted as produced; one the full ring buffer has no
/// room for is counted as lost too, never ignored (produced = read + lost).
#[inline(always)]
pub fn submit_with<T: WireRecord>(wake_now: bool, fill: impl FnOnce(&mut T)) {
    if stopped() {
        return;
    }
    count(counter::PRODUCED);
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(counter::LOST);
        return;
    };
    let record = unsafe {
        let ptr = entry.as_mut_ptr();
        core::ptr::write_bytes(ptr, 0, 1);
        &mut *ptr
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let header = record.header();
    header.kind = T::KIND as u32;
    header.tid = pid_tgid as u32;
    header.pid = (pid_tgid >> 32) as u32;
    header.ts_ns = unsafe { bpf_ktime_get_ns() };
    header.comm = bpf_get_current_comm().unwrap_or_default();
    fill(record);
    // Batched wake-ups for high-volume records: userspace drains on a 100 ms tick anyway,
    // and is woken early only when a backlog builds up.
    let backlog = setting!(wakeup_backlog) as u64;
    let flags = if wake_now || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= backlog {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}
