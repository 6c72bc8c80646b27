//! Rules over recorded event sequences, including ambiguous ones that must give `unknown`.

use super::*;
use crate::{
    events::{ConnTuple, Event, Kind, Task},
    state::{State, TcpStates, SETTLE_NS},
};

const ESTABLISHED: i32 = 1;
const SYN_RECV: i32 = 3;
const CLOSE: i32 = 7;
const LISTEN: i32 = 10;
const NO_SOCKET: u32 = 2;
const ABORT_ON_CLOSE: u32 = 5;
const LISTENER: u32 = 100;
const SESSION: u32 = 200;
const PREAUTH: u32 = 201;
const SK: u64 = 0xffff_8888_0000_1000;

fn names() -> KernelNames {
    KernelNames::from_tables(
        &[
            (1, "NOT_SPECIFIED"),
            (NO_SOCKET, "NO_SOCKET"),
            (ABORT_ON_CLOSE, "TCP_ABORT_ON_CLOSE"),
        ],
        &[
            (ESTABLISHED, "TCP_ESTABLISHED"),
            (SYN_RECV, "TCP_SYN_RECV"),
            (CLOSE, "TCP_CLOSE"),
            (LISTEN, "TCP_LISTEN"),
        ],
    )
}

fn tuple() -> ConnTuple {
    ConnTuple {
        local: "127.0.0.2:2222".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
    }
}

fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: comm.into(),
    }
}

/// A scripted event sequence, in order, with increasing timestamps.
struct Script {
    state: State,
    ts: u64,
}

impl Script {
    fn new() -> Self {
        Self {
            state: State::new(TcpStates::from_names(&names())),
            ts: 1_000_000_000,
        }
    }

    fn ev(&mut self, task: Task, kind: Kind) -> &mut Self {
        self.ts += 1_000_000;
        self.state.apply(&Event {
            ts_ns: self.ts,
            task,
            kind,
        });
        self
    }

    fn softirq(&mut self, kind: Kind) -> &mut Self {
        self.ev(task(4242, "ssh"), kind)
    }

    /// SYN_RECV → ESTABLISHED, accept in the listener, fork of the session process.
    fn accepted(&mut self) -> &mut Self {
        self.softirq(Kind::SockState {
            skaddr: SK,
            old_state: LISTEN,
            new_state: SYN_RECV,
            conn: tuple(),
        })
        .softirq(Kind::SockState {
            skaddr: SK,
            old_state: SYN_RECV,
            new_state: ESTABLISHED,
            conn: tuple(),
        })
        .ev(
            task(LISTENER, "sshd"),
            Kind::Accept {
                ret: 5,
                listen_fd: 3,
                peer: Some(tuple().remote),
            },
        )
        .ev(task(LISTENER, "sshd"), Kind::Fork { child: SESSION })
        .ev(
            task(SESSION, "sshd"),
            Kind::Exec {
                filename: "/usr/sbin/sshd".into(),
            },
        )
        .ev(task(SESSION, "sshd"), Kind::Fork { child: PREAUTH })
    }

    fn exit(&mut self, pid: u32, code: i32) -> &mut Self {
        self.ev(task(pid, "sshd"), Kind::Exit { exit_code: code })
    }

    fn signal(&mut self, sender: Task, target: u32, sig: i32, code: i32) -> &mut Self {
        self.ev(
            sender,
            Kind::Signal {
                target,
                target_comm: "sshd".into(),
                sig,
                code,
                result: 0,
            },
        )
    }

    fn reset_on_close(&mut self, closer: u32) -> &mut Self {
        self.ev(
            task(closer, "sshd"),
            Kind::SendReset {
                skaddr: SK,
                state: ESTABLISHED,
                reason: Some(ABORT_ON_CLOSE),
                seg_flags: None,
                conn: tuple(),
            },
        )
        .ev(
            task(closer, "sshd"),
            Kind::SockState {
                skaddr: SK,
                old_state: ESTABLISHED,
                new_state: CLOSE,
                conn: tuple(),
            },
        )
    }

    fn fin_close(&mut self) -> &mut Self {
        self.softirq(Kind::SockState {
            skaddr: SK,
            old_state: 9,
            new_state: CLOSE,
            conn: tuple(),
        })
    }

    fn verdicts(&mut self, sshd: &Snapshot) -> Vec<Verdict> {
        let names = names();
        let clock = Clock::epoch();
        let settled = self.state.take_settled(self.ts + SETTLE_NS);
        let ctx = Context {
            names: &names,
            sshd,
            procs: &self.state.procs,
            clock: &clock,
            host: "h",
        };
        settled
            .iter()
            .filter_map(|(c, tree)| judge(c, tree, &ctx))
            .collect()
    }
}

fn one(script: &mut Script) -> Verdict {
    let mut v = script.verdicts(&Snapshot::default());
    assert_eq!(v.len(), 1, "{v:#?}");
    v.remove(0)
}

#[test]
fn healthy_session_gives_no_verdict() {
    let mut s = Script::new();
    s.accepted().exit(PREAUTH, 0).fin_close().exit(SESSION, 0);
    assert!(s.verdicts(&Snapshot::default()).is_empty());
}

#[test]
fn preauth_child_segfault_with_reset_from_the_monitor() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(PREAUTH, "sshd"), PREAUTH, 11, 1) // SEGV_MAPERR: a fault
        .exit(PREAUTH, 11 | 0x80)
        .exit(SESSION, 255 << 8)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(
        (v.cause, v.outcome),
        (Cause::SshdCrashed, Outcome::ResetSent)
    );
    let sshd = v.sshd.unwrap();
    assert_eq!(
        (sshd.pid, sshd.listener_pid, sshd.role),
        (PREAUTH, Some(LISTENER), Role::Session)
    );
    assert_eq!(v.details["signal"], "SIGSEGV");
    assert_eq!(v.details["core_dumped"], true);
    assert_eq!(v.details["signal_origin"], "fault");
    assert!(
        v.summary.contains("sshd[201]") && v.summary.contains("SIGSEGV"),
        "{}",
        v.summary
    );
    assert!(v.evidence.iter().any(|e| matches!(e, Evidence::TcpSendReset { reason, current_pid: SESSION, .. } if reason == "TCP_ABORT_ON_CLOSE")));
}

#[test]
fn crash_with_nothing_unread_is_a_fin_and_still_a_crash() {
    let mut s = Script::new();
    s.accepted().exit(SESSION, 6).fin_close();
    let v = one(&mut s);
    assert_eq!((v.cause, v.outcome), (Cause::SshdCrashed, Outcome::Closed));
    assert_eq!(v.details["signal"], "SIGABRT");
    assert_eq!(v.details["signal_origin"], "not recorded");
}

#[test]
fn kill_from_outside_the_tree_names_the_sender() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(777, "kill"), SESSION, 9, 0)
        .signal(task(SESSION, "sshd"), PREAUTH, 9, 0) // the monitor's own cleanup
        .exit(SESSION, 9)
        .exit(PREAUTH, 9)
        .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdKilled);
    assert_eq!(v.details["sender_pid"], 777);
    assert_eq!(v.details["sender_comm"], "kill");
    assert_eq!(v.sshd.unwrap().pid, SESSION);
}

#[test]
fn handled_sigterm_followed_by_exit_is_a_kill() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(900, "pkill"), SESSION, 15, 0)
        .exit(SESSION, 255 << 8)
        .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdKilled);
    assert!(
        v.summary.contains("exited with status 255"),
        "{}",
        v.summary
    );
}

#[test]
fn sigkill_within_the_tree_is_not_a_crash_nor_a_kill() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(SESSION, "sshd"), PREAUTH, 9, 0)
        .exit(PREAUTH, 9)
        .exit(SESSION, 255 << 8)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::Unknown);
    assert_eq!(v.outcome, Outcome::ResetSent);
}

#[test]
fn kernel_sigkill_is_not_called_a_crash() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(5, "kswapd0"), SESSION, 9, SI_KERNEL_CODE)
        .exit(SESSION, 9)
        .fin_close();
    assert_eq!(one(&mut s).cause, Cause::Unknown);
}
const SI_KERNEL_CODE: i32 = 0x80;

#[test]
fn refused_syn_is_not_listening_with_where_sshd_listens() {
    let mut s = Script::new();
    s.softirq(Kind::SendReset {
        skaddr: 0,
        state: 0,
        reason: Some(NO_SOCKET),
        seg_flags: Some(0x02),
        conn: tuple(),
    });
    let mut sshd = Snapshot::default();
    sshd.listeners.insert(
        LISTENER,
        crate::discovery::Listener {
            pid: LISTENER,
            exe: "/usr/sbin/sshd".into(),
            addrs: vec!["127.0.0.3:2222".parse().unwrap()],
        },
    );
    let v = s.verdicts(&sshd).remove(0);
    assert_eq!(
        (v.cause, v.outcome),
        (Cause::NotListening, Outcome::Refused)
    );
    assert_eq!(v.details["sshd_running"], true);
    assert!(v.summary.contains("127.0.0.3:2222"), "{}", v.summary);
    assert!(v.sshd.is_none());
}

#[test]
fn refused_segment_that_is_not_a_syn_is_unknown() {
    let mut s = Script::new();
    s.softirq(Kind::SendReset {
        skaddr: 0,
        state: 0,
        reason: Some(NO_SOCKET),
        seg_flags: Some(0x10),
        conn: tuple(),
    });
    assert_eq!(one(&mut s).cause, Cause::Unknown);
}

#[test]
fn refused_with_unreadable_flags_is_unknown() {
    let mut s = Script::new();
    s.softirq(Kind::SendReset {
        skaddr: 0,
        state: 0,
        reason: Some(NO_SOCKET),
        seg_flags: None,
        conn: tuple(),
    });
    assert_eq!(one(&mut s).cause, Cause::Unknown);
}

#[test]
fn late_segment_after_close_joins_the_closed_connection() {
    let mut s = Script::new();
    s.accepted()
        .exit(PREAUTH, 0)
        .fin_close()
        .exit(SESSION, 0)
        .softirq(Kind::SendReset {
            skaddr: 0,
            state: 0,
            reason: Some(NO_SOCKET),
            seg_flags: Some(0x10),
            conn: tuple(),
        });
    // Joined to the healthy connection, whose reset now makes it abnormal but unexplained.
    let v = s.verdicts(&Snapshot::default());
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].cause, Cause::Unknown);
}

#[test]
fn kernel_strings_in_summaries_are_escaped() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(777, "evil\nFAKE"), SESSION, 9, 0)
        .exit(SESSION, 9)
        .fin_close();
    let v = one(&mut s);
    assert!(!v.summary.contains('\n'), "{}", v.summary);
    assert!(v.summary.contains("evil\\nFAKE[777]"));
}

#[test]
fn refused_after_the_listener_died_names_its_exit() {
    let mut s = Script::new();
    s.signal(task(55, "kill"), LISTENER, 9, 0)
        .exit(LISTENER, 9)
        .softirq(Kind::SendReset {
            skaddr: 0,
            state: 0,
            reason: Some(NO_SOCKET),
            seg_flags: Some(0x02),
            conn: tuple(),
        });
    let mut sshd = Snapshot::default();
    sshd.gone.push(crate::discovery::Listener {
        pid: LISTENER,
        exe: "/usr/sbin/sshd".into(),
        addrs: vec!["0.0.0.0:2222".parse().unwrap()],
    });
    let v = s.verdicts(&sshd).remove(0);
    assert_eq!(v.cause, Cause::NotListening);
    assert_eq!(v.details["sshd_running"], false);
    assert_eq!(v.details["previous_listener"]["pid"], LISTENER);
    assert_eq!(v.details["previous_listener"]["signal"], "SIGKILL");
    assert!(
        v.summary
            .contains("sshd[100], which listened there, died of SIGKILL sent by kill[55]"),
        "{}",
        v.summary
    );
    assert!(v
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::Exit { pid: LISTENER, .. })));
}
