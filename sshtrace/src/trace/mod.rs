//! The pipeline: ring records decoded (`events`, `sshd_output` for what sshd wrote), applied
//! to what is known (`state`), judged when settled and sent to the outputs (`tracer`, which
//! drives it all).

pub mod events;
pub mod reset_fingerprint;
pub mod sshd_output;
pub mod state;
pub mod tracer;
