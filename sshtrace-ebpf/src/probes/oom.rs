//! The OOM killer choosing a tracked process as its victim.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sshtrace_common::{OomVictimEvent, UNKNOWN_U64};

use super::field;
use crate::{maps::pid_tracked, record::submit};

#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(oom);
    let pid: i32 = field(ctx, l.pid)?;
    if !pid_tracked(pid as u32) {
        return Ok(());
    }
    // Only the pid exists on every kernel; the memory numbers came later.
    let kb = |offset| field::<u64>(ctx, offset).unwrap_or(UNKNOWN_U64);
    let (total_vm, anon_rss, file_rss, shmem_rss, pgtables) = (
        kb(l.total_vm),
        kb(l.anon_rss),
        kb(l.file_rss),
        kb(l.shmem_rss),
        kb(l.pgtables),
    );
    let uid: u32 = field(ctx, l.uid).unwrap_or(u32::MAX);
    let oom_score_adj: i16 = field(ctx, l.oom_score_adj).unwrap_or(0);
    submit(|e: &mut OomVictimEvent| {
        e.pid = pid as u32;
        e.uid = uid;
        e.total_vm = total_vm;
        e.anon_rss = anon_rss;
        e.file_rss = file_rss;
        e.shmem_rss = shmem_rss;
        e.pgtables = pgtables;
        e.oom_score_adj = oom_score_adj;
    });
    Ok(())
}
