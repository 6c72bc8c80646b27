//! How urgent a record is, as a syslog severity (RFC 5424 §6.2.1): syslog's PRI and
//! journald's PRIORITY carry it, so that `journalctl -p err` or a collector's severity filter
//! shows a failing sshd apart from the routine closes of a busy host.

use super::Record;
use crate::verdict::Cause;

pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;

/// A verdict's by its cause; a loss record is a notice.
pub fn of(record: &Record) -> u8 {
    match record {
        Record::Verdict(v) => of_cause(v.cause),
        Record::Loss(_) => NOTICE,
    }
}

/// - err: sshd on this host failed — it crashed, the OOM killer took it, a limit, an LSM or a
///   file mode refused it what it needed, or it exited with an error: the host needs fixing.
/// - warning: something acted as it was told (a kill, a firewall rule, `ss -K`, MaxStartups
///   or penalties, nothing listening, the kernel's own reset), or the evidence cannot tell.
/// - notice: routine — the client or the network reset it, or it closed before
///   authenticating (scanners and refused keys do this all day).
pub fn of_cause(cause: Cause) -> u8 {
    match cause {
        Cause::SshdCrashed
        | Cause::OomKilled
        | Cause::ResourceLimit
        | Cause::LsmDenied
        | Cause::PermissionDenied
        | Cause::SshdExited => ERR,
        Cause::NotListening
        | Cause::SshdKilled
        | Cause::Firewall
        | Cause::SocketKilled
        | Cause::SshdDropped
        | Cause::KernelAbort
        | Cause::ConnectRefused
        | Cause::Unknown => WARNING,
        Cause::PeerReset | Cause::ClosedPreauth | Cause::ClientAborted => NOTICE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_sshd_outranks_a_kill_which_outranks_a_routine_close() {
        assert_eq!(of_cause(Cause::SshdCrashed), ERR);
        assert_eq!(of_cause(Cause::SshdKilled), WARNING);
        assert_eq!(of_cause(Cause::ClosedPreauth), NOTICE);
        assert!(Cause::ALL
            .iter()
            .all(|&c| (ERR..=NOTICE).contains(&of_cause(c))));
    }
}
