//! The tracked sshd process tree: listeners, per-connection processes and their children.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use super::ConnId;
use crate::{
    enrich::dac::DacFacts,
    enrich::limits::LimitFacts,
    trace::events::{LsmDenial, Task},
};

/// How many failed system calls are kept per process.
const KEPT_SYSCALL_ERRORS: usize = 16;

/// A failed system call (and identical ones the kernel counted before it).
#[derive(Clone, Debug, PartialEq)]
pub struct SyscallError {
    pub ts_ns: u64,
    pub syscall: String,
    pub errno: i32,
    pub suppressed: u32,
    pub path: Option<String>,
    pub limit: Option<LimitFacts>,
    pub dac: Option<DacFacts>,
}

/// The OOM killer chose this process.
#[derive(Clone, Debug, PartialEq)]
pub struct OomKill {
    pub ts_ns: u64,
    pub uid: Option<u32>,
    pub memory_kb: [Option<u64>; 5],
    pub oom_score_adj: i16,
    pub memcg: Option<LimitFacts>,
    /// The task whose allocation ran into the OOM.
    pub trigger: Task,
}

/// How a process ended, from `task_struct.exit_code` (wait(2) status bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub ts_ns: u64,
    pub code: i32,
}

impl ExitInfo {
    /// The signal that killed it, if any.
    pub fn signal(&self) -> Option<i32> {
        let sig = self.code & 0x7f;
        (self.code >= 0 && sig != 0).then_some(sig)
    }

    pub fn core_dumped(&self) -> bool {
        self.signal().is_some() && self.code & 0x80 != 0
    }

    /// The exit status when it exited by itself.
    pub fn status(&self) -> Option<i32> {
        (self.code >= 0 && self.signal().is_none()).then_some((self.code >> 8) & 0xff)
    }
}

/// A terminating signal generated for the process.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalInfo {
    pub ts_ns: u64,
    pub sig: i32,
    /// `si_code`: > 0 or `SI_KERNEL` (0x80) from the kernel, <= 0 from a process.
    pub code: i32,
    pub result: i32,
    /// The current task when the signal was generated: the sender for kill/tgkill, the task
    /// itself for faults.
    pub sender: Task,
}

pub const SI_KERNEL: i32 = 0x80;

impl SignalInfo {
    /// Sent by a process through kill/tgkill/sigqueue (as opposed to raised by the kernel).
    pub fn sent_by_a_process(&self) -> bool {
        self.code <= 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub parent: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub first_ts: u64,
    /// The connection this process serves (inherited from the process that forked it).
    pub conn: Option<ConnId>,
    /// A connection accepted and not yet handed to a forked child.
    pub pending_accept: Option<ConnId>,
    pub exit: Option<ExitInfo>,
    /// The latest terminating signals generated for it, oldest first (at most
    /// [`KEPT_SIGNALS`]: a user can signal their own session process in a loop).
    pub signals: VecDeque<SignalInfo>,
    /// The latest failed system calls, oldest first.
    pub syscall_errors: VecDeque<SyscallError>,
    pub oom: Option<OomKill>,
    /// The latest denials an LSM reported for this process, with when (at most
    /// [`KEPT_LSM_DENIALS`]).
    pub lsm_denials: VecDeque<(u64, LsmDenial)>,
    /// Where it listened, as the kernel saw its `listen()` (at most [`KEPT_LISTENING`]).
    pub listening: Vec<SocketAddr>,
}

/// How many listening addresses are kept per process.
const KEPT_LISTENING: usize = 16;
/// How many signals and LSM denials are kept per process (the latest: the fatal signal comes
/// last).
const KEPT_SIGNALS: usize = 32;
const KEPT_LSM_DENIALS: usize = 16;

/// Appends to a bounded list, dropping the oldest; returns how many were dropped.
fn push_bounded<T>(list: &mut VecDeque<T>, item: T, bound: usize) -> u64 {
    let dropped = if list.len() >= bound {
        list.pop_front();
        1
    } else {
        0
    };
    list.push_back(item);
    dropped
}

impl Process {
    /// Returns how many signals were dropped to keep it.
    pub fn record_signal(&mut self, signal: SignalInfo) -> u64 {
        push_bounded(&mut self.signals, signal, KEPT_SIGNALS)
    }

    /// Returns how many denials were dropped to keep it.
    pub fn record_lsm_denial(&mut self, ts: u64, denial: LsmDenial) -> u64 {
        push_bounded(&mut self.lsm_denials, (ts, denial), KEPT_LSM_DENIALS)
    }

    pub fn note_listening(&mut self, addr: SocketAddr) {
        if self.listening.len() < KEPT_LISTENING && !self.listening.contains(&addr) {
            self.listening.push(addr);
        }
    }

    pub fn record_error(&mut self, error: SyscallError) {
        if self.syscall_errors.len() == KEPT_SYSCALL_ERRORS {
            self.syscall_errors.pop_front();
        }
        self.syscall_errors.push_back(error);
    }

    /// The generation of the signal the process died of: the last one of that number before
    /// its exit. `None` when it did not die of a signal, or the signal was not seen.
    pub fn fatal_signal(&self) -> Option<&SignalInfo> {
        let exit = self.exit?;
        let sig = exit.signal()?;
        self.signals
            .iter()
            .rev()
            .find(|s| s.sig == sig && s.ts_ns <= exit.ts_ns)
    }

    /// Whether this runs an sshd program (sshd, sshd-session, sshd-auth), judging by what it
    /// executed; a process seen only through fork inherits its parent's program.
    pub fn runs_sshd(&self) -> bool {
        let program = self.exe.as_deref().unwrap_or(&self.comm);
        program
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("sshd"))
    }
}

#[derive(Default)]
pub struct ProcessTable {
    procs: HashMap<u32, Process>,
}

impl ProcessTable {
    /// The process `pid`, created when first seen.
    pub fn touch(&mut self, pid: u32, comm: &str, ts: u64) -> &mut Process {
        self.procs.entry(pid).or_insert_with(|| Process {
            pid,
            parent: None,
            comm: comm.to_owned(),
            exe: None,
            first_ts: ts,
            conn: None,
            pending_accept: None,
            exit: None,
            signals: VecDeque::new(),
            syscall_errors: VecDeque::new(),
            oom: None,
            lsm_denials: VecDeque::new(),
            listening: Vec::new(),
        })
    }

    /// A new child of `parent`; a reused pid starts afresh.
    pub fn fork(&mut self, parent: u32, child: u32, comm: &str, ts: u64) -> &mut Process {
        self.procs.remove(&child);
        let p = self.touch(child, comm, ts);
        p.parent = Some(parent);
        p
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Process> {
        self.procs.get_mut(&pid)
    }

    /// The processes currently serving connection `id`.
    pub fn of_connection(&self, id: ConnId) -> Vec<&Process> {
        self.procs.values().filter(|p| p.conn == Some(id)).collect()
    }

    /// Detaches every process of connection `id`: exited ones are returned and forgotten,
    /// living ones stay tracked but no longer belong to it.
    pub fn detach_connection(&mut self, id: ConnId) -> Vec<Process> {
        let mut tree: Vec<Process> = self
            .procs
            .values()
            .filter(|p| p.conn == Some(id))
            .cloned()
            .collect();
        tree.sort_by_key(|p| p.first_ts);
        for p in &tree {
            if p.exit.is_some() {
                self.procs.remove(&p.pid);
            } else if let Some(live) = self.procs.get_mut(&p.pid) {
                live.conn = None;
            }
        }
        tree
    }

    /// The listener that exited last among those that listened where `serves` says.
    pub fn exited_listener(&self, serves: impl Fn(&SocketAddr) -> bool) -> Option<&Process> {
        self.procs
            .values()
            .filter(|p| p.exit.is_some() && p.listening.iter().any(&serves))
            .max_by_key(|p| p.exit.map(|x| x.ts_ns))
    }

    pub fn prune_exited_before(&mut self, cutoff_ns: u64) {
        self.procs
            .retain(|_, p| p.conn.is_some() || p.exit.is_none_or(|e| e.ts_ns > cutoff_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_decode_like_wait_status() {
        let segv_core = ExitInfo {
            ts_ns: 0,
            code: 11 | 0x80,
        };
        assert_eq!(
            (
                segv_core.signal(),
                segv_core.core_dumped(),
                segv_core.status()
            ),
            (Some(11), true, None)
        );
        let status_255 = ExitInfo {
            ts_ns: 0,
            code: 255 << 8,
        };
        assert_eq!(
            (status_255.signal(), status_255.status()),
            (None, Some(255))
        );
        let unreadable = ExitInfo { ts_ns: 0, code: -1 };
        assert_eq!((unreadable.signal(), unreadable.status()), (None, None));
    }
}
