//! What the kernel's events do not carry and the verdicts need, gathered from the host
//! before judging: sshd listeners and their configuration (`discovery`), containers and their
//! names (`container`, `runtime`), the limit behind a resource failure (`limits`), whether
//! the mode bits allowed a refused access (`dac`), and the LSMs' audit records (`audit`).

pub mod audit;
pub mod container;
pub mod dac;
pub mod discovery;
pub mod limits;
pub mod runtime;
