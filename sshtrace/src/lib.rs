//! sshtrace: who reset that SSH connection, and why.
//!
//! Data flows one way: kernel event ([`events`]) → state update ([`state`]) → cause rules
//! ([`causes`]) → verdict ([`verdict`]) → outputs ([`output`]). [`tracer`] drives it.

pub mod audit;
pub mod causes;
pub mod cli;
pub mod clock;
pub mod container;
pub mod dac;
pub mod detach;
pub mod discovery;
pub mod doctor;
pub mod escape;
pub mod events;
pub mod hooks;
pub mod kernel;
pub mod limits;
pub mod output;
pub mod plan;
pub mod preflight;
pub mod privileges;
pub mod probes;
pub mod runtime;
pub mod sshd_output;
pub mod state;
pub mod summary;
pub mod tracer;
pub mod verdict;
