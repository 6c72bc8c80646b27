//! sshtrace: who reset that SSH connection, and why.
//!
//! Data flows one way, one folder a stage: the kernel side is loaded, attached and stopped
//! ([`kernel`]); its records are decoded and applied to what is known ([`trace`]); what the
//! events do not carry is gathered from the host ([`enrich`]); an ended connection is judged
//! by pure rules ([`causes`]) into a [`verdict`]; the verdict goes to the outputs ([`output`]).
//! [`doctor`] checks a host's sshd setup without tracing.

pub mod causes;
pub mod cli;
pub mod clock;
pub mod doctor;
pub mod enrich;
pub mod escape;
pub mod kernel;
pub mod output;
pub mod preflight;
pub mod privileges;
pub mod trace;
pub mod verdict;
