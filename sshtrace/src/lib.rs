//! sshtrace: who reset that SSH connection, and why.
//!
//! Data flows one way, one folder a stage: the kernel side is loaded, attached and stopped
//! ([`kernel`]); its records are decoded and applied to what is known ([`trace`]); what the
//! events do not carry is gathered from the host ([`enrich`]); an ended connection is judged
//! by pure rules ([`causes`]) into a [`verdict`]; the verdict goes to the outputs ([`output`]).
//! [`metrics`] serves counts of verdicts and of what was read and lost to Prometheus.
//! [`doctor`] checks a host's sshd setup without tracing.

mod app;
mod causes;
mod cli;
mod clock;
mod doctor;
mod enrich;
mod escape;
mod kernel;
mod metrics;
mod output;
mod preflight;
mod privileges;
mod trace;
mod verdict;

pub use app::main;
