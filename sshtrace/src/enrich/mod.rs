//! What the kernel's events do not carry and the verdicts need, gathered from the host
//! before judging: sshd listeners and their configuration (`discovery`), containers and their
//! names (`container`, `runtime`), the limit behind a resource failure (`limits`), whether
//! the mode bits allowed a refused access (`dac`), and the LSMs' audit records (`audit`).

pub mod audit;
pub mod client_process;
pub mod container;
pub mod dac;
pub mod discovery;
pub mod limits;
pub mod names;
pub mod netns;
pub mod runtime;

use crate::{
    kernel::syscalls::EACCES,
    trace::events::{Event, Kind},
};

/// Facts that must be read while the process still exists: the limit behind a resource
/// failure, whether the mode bits allowed a refused access.
pub fn facts_while_alive(event: &mut Event) {
    let Kind::SyscallError {
        syscall,
        errno,
        limit,
        path,
        dac,
        rlimits,
        creds,
        ..
    } = &mut event.kind
    else {
        return;
    };
    *limit = limits::for_failure(event.task.pid, syscall, *errno, *rlimits);
    if *errno == EACCES {
        *dac = path
            .as_deref()
            .and_then(|p| dac::check(event.task.pid, syscall, p, creds.as_ref()));
    }
}
