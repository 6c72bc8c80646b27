//! What sshtrace learns about the running kernel at start-up: where tracefs is, how each
//! tracepoint lays out its record, what the kernel's enums are called. Nothing here assumes
//! one kernel version.

pub mod btf;
pub mod detach;
pub mod hooks;
pub mod layout;
pub mod lsm;
pub mod mounts;
pub mod names;
pub mod netlink;
pub mod plan;
pub mod probes;
pub mod sockdiag;
pub mod syscalls;
pub mod tracefs;
