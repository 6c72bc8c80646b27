//! Terminating signals aimed at tracked processes, with the sender (the current task).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sshtrace_common::SignalEvent;

use super::field;
use crate::{maps::pid_tracked, record::submit};

/// Signals whose default action does not terminate: SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP,
/// SIGTTIN, SIGTTOU, SIGURG, SIGWINCH. Everything else (real-time signals too) can kill.
const NON_TERMINATING: u64 =
    (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20) | (1 << 21) | (1 << 22) | (1 << 23) | (1 << 28);

#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_signal(&ctx);
    0
}

fn try_signal(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout!(signal);
    let target: i32 = field(ctx, l.pid)?;
    if !pid_tracked(target as u32) {
        return Ok(());
    }
    let sig: i32 = field(ctx, l.sig)?;
    if !(1..64).contains(&sig) || NON_TERMINATING & (1 << sig) != 0 {
        return Ok(());
    }
    let code: i32 = field(ctx, l.code)?;
    let result: i32 = field(ctx, l.result).unwrap_or(-1);
    let comm: [u8; 16] = field(ctx, l.comm).unwrap_or_default();
    submit(|e: &mut SignalEvent| {
        e.target_pid = target as u32;
        e.sig = sig;
        e.code = code;
        e.result = result;
        e.target_comm = comm;
    });
    Ok(())
}
