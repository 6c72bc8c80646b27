//! The end of a run: the programs stop recording at once, and are detached without holding
//! up sshtrace's exit.
//!
//! Closing a classic tracepoint's perf event waits for RCU grace periods under the kernel's
//! global `event_mutex` (tens of milliseconds each): with twenty of them, detaching took most
//! of a second, and `sshtrace | head -1` or a service stop waited for it. So the programs are
//! told to stop through a map, sshtrace waits one grace period for the runs already under way,
//! and the detach itself is left to a child process that outlives sshtrace by that second.

use std::os::fd::{IntoRawFd, OwnedFd};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, MapData},
    Ebpf,
};

use rustix::{io::Errno, pipe::PipeFlags, thread::MembarrierCommand};

use super::hooks::Hook;

/// The attached programs and the switch that stops them.
pub struct Attached {
    /// Keeps programs and links alive: dropping it detaches everything, slowly.
    programs: Ebpf,
    stop: Array<MapData, u32>,
    /// A hook loaded but attached only when needed (see `hooks::STDERR_WRITES`).
    later: Option<Hook>,
}

impl Attached {
    pub fn new(mut programs: Ebpf, later: Option<Hook>) -> Result<Self> {
        let map = programs.take_map("STOP").context("no map STOP")?;
        Ok(Self {
            stop: Array::try_from(map)?,
            programs,
            later,
        })
    }

    /// Whether a hook waits to be attached when needed.
    pub fn holds_a_later_hook(&self) -> bool {
        self.later.is_some()
    }

    /// Attaches the hook kept for later, once; returns its label.
    pub fn attach_later_hook(&mut self) -> Result<String> {
        let hook = self.later.take().context("no hook waits")?;
        let program = self
            .programs
            .program_mut(hook.program)
            .context("no such program")?;
        super::probes::attach_loaded(program, &hook)
    }

    /// Stops the programs from recording or counting anything more, and returns once no run
    /// begun before is still under way: what is in the ring is then all there will be.
    pub fn stop_recording(mut self) -> Stopped {
        let stopped = self.stop.set(0, 1, 0).is_ok() && wait_for_running_programs();
        if stopped {
            return Stopped(Some(self.programs));
        }
        // No switch or no grace period: the slow way, which is exact too.
        drop(self.programs);
        Stopped(None)
    }
}

/// Programs that record nothing any more (or are already detached).
pub struct Stopped(Option<Ebpf>);

impl Stopped {
    /// Detaches them in a child process, which waits for sshtrace to exit and then exits too,
    /// the kernel closing what it holds. Without a child, here and now.
    pub fn detach_after_exit(self) {
        let Some(programs) = self.0 else { return };
        match hand_over_to_child() {
            // The child holds every descriptor: sshtrace's own close at exit is only a
            // reference dropped.
            Ok(()) => std::mem::forget(programs),
            Err(_) => drop(programs),
        }
    }
}

/// Every BPF program runs inside an RCU read-side section: `membarrier(GLOBAL)` is a
/// `synchronize_rcu()`, after which no run that began before the switch is still going.
fn wait_for_running_programs() -> bool {
    rustix::thread::membarrier(MembarrierCommand::Global).is_ok()
}

/// Forks a child that keeps a copy of every descriptor until sshtrace exits: it closes its
/// standard streams (a pipeline's reader must see the end at sshtrace's exit), waits for the
/// end of a pipe whose write end only sshtrace holds, and exits.
fn hand_over_to_child() -> std::io::Result<()> {
    let (read_end, write_end) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    // fork stays glibc's: it runs the atfork handlers and resets what glibc keeps per process
    // (its locks, the cached thread id), which the child's calls rely on. rustix's only fork
    // is in its experimental `runtime` module, for processes without a libc.
    // SAFETY: the child only makes async-signal-safe calls and never returns.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        // SAFETY: in the child, which runs only this.
        0 => unsafe { wait_for_parent_then_exit(read_end, write_end) },
        _ => {
            // The write end stays open until sshtrace's exit closes it: that is the child's
            // signal.
            let _ = write_end.into_raw_fd();
            drop(read_end);
            Ok(())
        }
    }
}

/// The child: async-signal-safe calls only (the parent has other threads). rustix's calls
/// here are system calls and nothing else (no allocation, no lock); the signal dispositions
/// and `_exit` are glibc's, rustix having them only in its experimental `runtime` module.
///
/// # Safety
/// Only in the child of a fork, with the two ends of the pipe.
unsafe fn wait_for_parent_then_exit(read_end: OwnedFd, write_end: OwnedFd) -> ! {
    // SAFETY: default dispositions, and the child's own standard streams, which nothing in
    // the child uses again.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGHUP, libc::SIG_DFL);
        for fd in [0, 1, 2] {
            rustix::io::close(fd);
        }
    }
    let _ = rustix::thread::set_name(c"sshtrace-detach");
    drop(write_end);
    let mut byte = [0_u8];
    while rustix::io::read(&read_end, &mut byte) == Err(Errno::INTR) {}
    // SAFETY: ends the child without running the parent's exit handlers.
    unsafe { libc::_exit(0) }
}
