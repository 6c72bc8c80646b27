//! Rules over recorded event sequences, including ambiguous ones that must give `unknown`.

use super::*;
use crate::{
    trace::events::{ConnTuple, Event, Kind, SockHistory, Task},
    trace::state::{State, SETTLE_NS},
};

const ESTABLISHED: i32 = 1;
const SYN_RECV: i32 = 3;
const CLOSE: i32 = 7;
const LISTEN: i32 = 10;
const FIN_WAIT1: i32 = 4;
const CLOSE_WAIT: i32 = 8;
const NO_SOCKET: u32 = 2;
const ABORT_ON_CLOSE: u32 = 5;
const TCP_STATE: u32 = 6;
const KEEPALIVE: u32 = 7;
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
            (TCP_STATE, "TCP_STATE"),
            (KEEPALIVE, "TCP_KEEPALIVE_TIMEOUT"),
        ],
        &[
            (ESTABLISHED, "TCP_ESTABLISHED"),
            (SYN_RECV, "TCP_SYN_RECV"),
            (FIN_WAIT1, "TCP_FIN_WAIT1"),
            (CLOSE, "TCP_CLOSE"),
            (CLOSE_WAIT, "TCP_CLOSE_WAIT"),
            (LISTEN, "TCP_LISTEN"),
        ],
    )
}

/// This machine's set: Landlock is the only LSM that can deny file access.
fn lsms() -> crate::kernel::lsm::ActiveLsms {
    crate::kernel::lsm::ActiveLsms::from_list("lockdown,capability,landlock,bpf", &|l| l != "bpf")
}

fn tuple() -> ConnTuple {
    ConnTuple {
        local: "127.0.0.2:2222".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        netns: 4026531840,
    }
}

/// The stack's reset of a segment nothing listened for, with the segment's flags.
fn refused(seg_flags: Option<u8>) -> Kind {
    Kind::SendReset {
        skaddr: 0,
        state: 0,
        reason: Some(NO_SOCKET),
        seg_flags,
        repeated: 0,
        conn: tuple(),
    }
}

/// The listener the connections' sshd had, on `addrs`.
fn listener_on(addrs: &[&str]) -> crate::enrich::discovery::Listener {
    crate::enrich::discovery::Listener {
        pid: LISTENER,
        netns: None,
        container: None,
        exe: "/usr/sbin/sshd".into(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: comm.into(),
    }
}

/// Softirq work runs in whatever task was current (on loopback, often the client).
fn irq_task() -> Task {
    Task {
        pid: 4242,
        tid: 4242,
        comm: "ssh".into(),
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
            state: State::new(crate::trace::state::tcp_states(&names())),
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
        self.ev(irq_task(), kind)
    }

    /// The connection's first report is the listener's accept, which claims it (its creation
    /// and establishment were only noted in the kernel); then the session process is forked.
    fn accepted(&mut self) -> &mut Self {
        let created = self.ts;
        self.ev(
            task(LISTENER, "sshd"),
            Kind::Accept {
                ret: 5,
                listen_fd: 3,
                peer: Some(tuple().remote),
                claimed: Some(crate::trace::events::AcceptedSocket {
                    skaddr: SK,
                    conn: tuple(),
                    history: SockHistory {
                        established_ns: Some(created),
                        first_fin_local: None,
                    },
                }),
                inherited: false,
            },
        )
        .ev(task(LISTENER, "sshd"), Kind::Fork { child: SESSION })
        .ev(
            task(SESSION, "sshd"),
            Kind::Exec {
                filename: "/usr/sbin/sshd".into(),
                began_tracking: false,
                executable: None,
            },
        )
        .ev(task(SESSION, "sshd"), Kind::Fork { child: PREAUTH })
    }

    /// LAST_ACK → CLOSE, carrying what the kernel noted of the connection before.
    fn closed_with(&mut self, history: SockHistory) -> &mut Self {
        self.softirq(Kind::SockState {
            skaddr: SK,
            old_state: 9,
            new_state: CLOSE,
            conn: tuple(),
            history,
        })
    }

    fn exit(&mut self, pid: u32, code: i32) -> &mut Self {
        self.ev(
            task(pid, "sshd"),
            Kind::Exit {
                exit_code: code,
                memcg_pages: None,
            },
        )
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
                repeated: 0,
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
                history: Default::default(),
            },
        )
    }

    fn fin_close(&mut self) -> &mut Self {
        self.softirq(Kind::SockState {
            skaddr: SK,
            old_state: 9,
            new_state: CLOSE,
            conn: tuple(),
            history: Default::default(),
        })
    }

    fn verdicts(&mut self, sshd: &Snapshot) -> Vec<Verdict> {
        let names = names();
        let clock = Clock::epoch();
        let settled = self.state.take_settled(
            self.ts + SETTLE_NS + crate::trace::state::FIREWALL_SETTLE_NS,
            usize::MAX,
        );
        let ctx = Background {
            names: &names,
            lsms: &lsms(),
            conns: &self.state.conns,
            sshd,
            procs: &self.state.procs,
            recent: &crate::trace::state::RecentVerdicts::default(),
            clock: &clock,
            host: "h",
            netns: &crate::enrich::netns::NetnsNames::default(),
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
fn without_claims_the_accept_finds_the_established_connection_by_its_peer() {
    let mut s = Script::new();
    accepted_without_fork(&mut s);
    let c = s.state.conns.by_tuple_mut(tuple()).unwrap();
    assert_eq!(c.listener_pid, Some(LISTENER));
    assert!(c.established_ts.is_some());
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
        (PREAUTH, Some(LISTENER), crate::verdict::Role::Preauth)
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

/// A signal the process handled is evidence, not the cause: it went on to exit by itself.
#[test]
fn handled_sigterm_followed_by_exit_is_not_a_kill() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(900, "pkill"), SESSION, 15, 0)
        .exit(SESSION, 255 << 8)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdExited, "{}", v.summary);
    assert!(
        v.evidence.iter().any(|e| matches!(
            e,
            Evidence::Signal {
                sender_pid: 900,
                ..
            }
        )),
        "the handled signal is shown as evidence: {:?}",
        v.evidence
    );
}

/// A fault the process raised itself after handling another process's signal is a crash.
#[test]
fn fault_after_a_handled_signal_is_a_crash() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(900, "bash"), PREAUTH, 12, 0) // SIGUSR2, handled
        .signal(task(PREAUTH, "sshd"), PREAUTH, 4, 2) // SIGILL, ILL_ILLOPN: a fault
        .exit(PREAUTH, 4)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdCrashed, "{}", v.summary);
    assert_eq!(v.details["signal"], "SIGILL");
    assert_eq!(v.details["signal_origin"], "fault");
}

/// A kill after which the process faulted while dying is still a kill only if the kill's
/// signal is the one it died of.
#[test]
fn the_signal_a_process_died_of_decides() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(900, "kill"), PREAUTH, 11, 0) // SIGSEGV sent by kill: a kill
        .exit(PREAUTH, 11)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdKilled, "{}", v.summary);
    assert_eq!(v.details["sender_pid"], 900);
}

/// The monitor killing its own child is cleanup; the monitor's error exit is the story.
#[test]
fn sigkill_within_the_tree_is_not_a_crash_nor_a_kill() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(SESSION, "sshd"), PREAUTH, 9, 0)
        .exit(PREAUTH, 9)
        .exit(SESSION, 255 << 8)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdExited);
    assert_eq!(v.details["exited_pid"], SESSION);
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
    s.softirq(refused(Some(0x02)));
    let mut sshd = Snapshot::default();
    sshd.listeners
        .insert(LISTENER, listener_on(&["127.0.0.3:2222"]));
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
    s.softirq(refused(Some(0x10)));
    assert_eq!(one(&mut s).cause, Cause::Unknown);
}

#[test]
fn refused_with_unreadable_flags_is_unknown() {
    let mut s = Script::new();
    s.softirq(refused(None));
    assert_eq!(one(&mut s).cause, Cause::Unknown);
}

#[test]
fn late_segment_after_close_joins_the_closed_connection() {
    let mut s = Script::new();
    s.accepted()
        .exit(PREAUTH, 0)
        .fin_close()
        .exit(SESSION, 0)
        .softirq(refused(Some(0x10)));
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
        .softirq(refused(Some(0x02)));
    let mut sshd = Snapshot::default();
    sshd.gone.push(listener_on(&["0.0.0.0:2222"]));
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

fn syscall_error(
    s: &mut Script,
    pid: u32,
    syscall: &str,
    errno: i32,
    path: Option<&str>,
    limit: Option<crate::enrich::limits::LimitFacts>,
) {
    s.ev(
        task(pid, "sshd"),
        Kind::SyscallError {
            rlimits: None,
            creds: None,
            syscall: syscall.into(),
            errno,
            suppressed: 0,
            path: path.map(Into::into),
            limit,
            dac: None,
        },
    );
}

fn nofile(value: &str) -> Option<crate::enrich::limits::LimitFacts> {
    Some(crate::enrich::limits::LimitFacts {
        limit: "nofile",
        value: Some(value.into()),
        current: Some(value.into()),
        source: "/proc/100/limits".into(),
    })
}

/// SYN_RECV → ESTABLISHED and the accept, with no fork after it: the connection reported by
/// its state records (a kernel without claims), the accept finding it by its peer.
fn accepted_without_fork(s: &mut Script) {
    established(s).ev(
        task(LISTENER, "sshd"),
        Kind::Accept {
            ret: 5,
            listen_fd: 3,
            peer: Some(tuple().remote),
            claimed: None,
            inherited: false,
        },
    );
}

/// LISTEN → SYN_RECV → ESTABLISHED, each reported (a kernel without claims).
fn established(s: &mut Script) -> &mut Script {
    s.softirq(Kind::SockState {
        skaddr: SK,
        old_state: LISTEN,
        new_state: SYN_RECV,
        conn: tuple(),
        history: Default::default(),
    })
    .softirq(Kind::SockState {
        skaddr: SK,
        old_state: SYN_RECV,
        new_state: ESTABLISHED,
        conn: tuple(),
        history: Default::default(),
    })
}

#[test]
fn listener_out_of_descriptors_after_accept_is_a_resource_limit() {
    let mut s = Script::new();
    accepted_without_fork(&mut s);
    syscall_error(
        &mut s,
        LISTENER,
        "pipe2",
        crate::kernel::syscalls::EMFILE,
        None,
        nofile("8"),
    );
    s.reset_on_close(LISTENER);
    let v = one(&mut s);
    assert_eq!(
        (v.cause, v.outcome),
        (Cause::ResourceLimit, Outcome::ResetSent)
    );
    assert_eq!(v.details["limit"], "nofile");
    assert_eq!(v.details["syscall"], "pipe2");
    assert_eq!(v.details["errno"], "EMFILE");
    assert_eq!(v.details["limit_value"], "8");
    assert_eq!(v.sshd.unwrap().role, crate::verdict::Role::Listener);
}

#[test]
fn listener_closing_without_fork_and_without_errors_is_a_drop() {
    let mut s = Script::new();
    accepted_without_fork(&mut s);
    s.reset_on_close(LISTENER);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdDropped);
    assert_eq!(v.details["listener_pid"], LISTENER);
    assert_eq!(v.details["unauthenticated_connections"], 0);
}

#[test]
fn oom_kill_of_the_session() {
    let mut s = Script::new();
    s.accepted()
        .ev(
            task(PREAUTH, "sshd"),
            Kind::OomVictim {
                pid: SESSION,
                uid: Some(0),
                memory_kb: [Some(300_000), Some(200_000), Some(1000), Some(0), Some(100)],
                oom_score_adj: 0,
            },
        )
        .signal(task(PREAUTH, "sshd"), SESSION, 9, SI_KERNEL_CODE)
        .ev(
            task(SESSION, "sshd"),
            Kind::Exit {
                exit_code: 9,
                memcg_pages: Some((24_576, 24_000)),
            },
        )
        .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::OomKilled);
    assert_eq!(v.details["victim_pid"], SESSION);
    assert_eq!(v.details["anon_rss_kb"], 200_000);
    assert!(v.summary.contains("anon-rss 195 MiB"), "{}", v.summary);
    // The victim's own cgroup, read by the kernel as it exited (96 MiB of 4 KiB pages).
    let page = rustix::param::page_size() as u64;
    assert_eq!(v.details["memcg"]["value"], (24_576 * page).to_string());
}

/// A victim whose memory cgroup the kernel could not read has none: never another's.
#[test]
fn oom_kill_without_the_victims_cgroup_shows_none() {
    let mut s = Script::new();
    s.accepted()
        .ev(
            task(PREAUTH, "sshd"),
            Kind::OomVictim {
                pid: SESSION,
                uid: Some(0),
                memory_kb: [None; 5],
                oom_score_adj: 0,
            },
        )
        .exit(SESSION, 9)
        .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::OomKilled);
    assert!(v.details["memcg"].is_null(), "{}", v.details["memcg"]);
}

#[test]
fn ss_k_from_process_context_is_socket_killed() {
    let mut s = Script::new();
    s.accepted().ev(
        task(900, "ss"),
        Kind::SendReset {
            skaddr: SK,
            state: ESTABLISHED,
            reason: Some(TCP_STATE),
            seg_flags: None,
            repeated: 0,
            conn: tuple(),
        },
    );
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SocketKilled);
    assert_eq!(v.details["actor_comm"], "ss");
}

/// sshd closing its listening socket with a connection queued resets it (tcp_disconnect).
#[test]
fn tcp_state_reset_by_the_listener_is_a_drop_not_a_kill() {
    let mut s = Script::new();
    s.softirq(Kind::SockState {
        skaddr: SK,
        old_state: LISTEN,
        new_state: SYN_RECV,
        conn: tuple(),
        history: Default::default(),
    })
    .softirq(Kind::SockState {
        skaddr: SK,
        old_state: SYN_RECV,
        new_state: ESTABLISHED,
        conn: tuple(),
        history: Default::default(),
    })
    .ev(
        task(LISTENER, "sshd"),
        Kind::SendReset {
            skaddr: SK,
            state: ESTABLISHED,
            reason: Some(TCP_STATE),
            seg_flags: None,
            repeated: 0,
            conn: tuple(),
        },
    );
    let mut sshd = Snapshot::default();
    sshd.gone.push(listener_on(&[]));
    let v = s.verdicts(&sshd).remove(0);
    assert_eq!(v.cause, Cause::SshdDropped);
    assert_eq!(v.details["queued"], true);
}

/// A connection waiting in the accept queue of another program's listener (a port given with
/// `--port`, or `--all-tcp`) when that program closes it: reset by tcp_disconnect (state
/// TCP_CLOSE), in the program's own context. Not a kill.
fn flushed_from_queue_by(actor: Task) -> Script {
    let mut s = Script::new();
    s.softirq(Kind::SockState {
        skaddr: SK,
        old_state: SYN_RECV,
        new_state: ESTABLISHED,
        conn: tuple(),
        history: Default::default(),
    })
    .ev(
        actor,
        Kind::SendReset {
            skaddr: SK,
            state: CLOSE,
            reason: Some(TCP_STATE),
            seg_flags: None,
            repeated: 0,
            conn: tuple(),
        },
    );
    s
}

#[test]
fn another_program_closing_its_listener_is_not_a_socket_kill() {
    let mut s = flushed_from_queue_by(task(900, "nginx"));
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::Unknown, "{v:#?}");
    assert_eq!(v.outcome, Outcome::ResetSent);
}

#[test]
fn ss_k_of_sshds_listener_is_a_socket_kill_of_its_queued_connections() {
    let mut s = flushed_from_queue_by(task(900, "ss"));
    let mut sshd = Snapshot::default();
    sshd.gone.push(listener_on(&[&tuple().local.to_string()]));
    let v = s.verdicts(&sshd).remove(0);
    assert_eq!(v.cause, Cause::SocketKilled);
    assert_eq!(v.details["actor_comm"], "ss");
}

#[test]
fn keepalive_timeout_is_a_kernel_abort() {
    let mut s = Script::new();
    s.accepted().softirq(Kind::SendReset {
        skaddr: SK,
        state: ESTABLISHED,
        reason: Some(KEEPALIVE),
        seg_flags: None,
        repeated: 0,
        conn: tuple(),
    });
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::KernelAbort);
    assert!(v.summary.contains("keepalive"), "{}", v.summary);
}

#[test]
fn reset_received_and_none_sent_is_a_peer_reset() {
    let mut s = Script::new();
    s.accepted().softirq(Kind::ReceiveReset {
        skaddr: SK,
        client_side: false,
        conn: tuple(),
    });
    let v = one(&mut s);
    assert_eq!(
        (v.cause, v.outcome),
        (Cause::PeerReset, Outcome::ResetReceived)
    );
}

#[test]
fn error_exit_with_reset_names_the_failed_open() {
    let mut s = Script::new();
    s.accepted();
    syscall_error(
        &mut s,
        SESSION,
        "openat",
        2,
        Some("/etc/ssh/ssh_host_ed25519_key"),
        None,
    );
    s.exit(SESSION, 255 << 8).reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdExited);
    assert_eq!(v.details["exit_status"], 255);
    assert!(
        v.summary
            .contains("openat(/etc/ssh/ssh_host_ed25519_key) failed with ENOENT"),
        "{}",
        v.summary
    );
}

#[test]
fn client_giving_up_before_auth_is_closed_preauth() {
    let mut s = Script::new();
    s.accepted()
        .softirq(Kind::SockState {
            skaddr: SK,
            old_state: ESTABLISHED,
            new_state: CLOSE_WAIT,
            conn: tuple(),
            history: Default::default(),
        })
        .exit(PREAUTH, 255 << 8)
        .exit(SESSION, 255 << 8)
        .ev(
            task(SESSION, "sshd"),
            Kind::SockState {
                skaddr: SK,
                old_state: 9,
                new_state: CLOSE,
                conn: tuple(),
                history: Default::default(),
            },
        );
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::ClosedPreauth);
    assert_eq!(v.details["closed_by"], "client");
}

#[test]
fn the_first_fin_noted_in_the_kernel_tells_who_closed() {
    // The kernel sends no record for ESTABLISHED → CLOSE_WAIT/FIN_WAIT1: the close record
    // carries it.
    for (local, closed_by) in [(false, "client"), (true, "sshd")] {
        let mut s = Script::new();
        s.accepted().exit(PREAUTH, 255 << 8).exit(SESSION, 255 << 8);
        s.closed_with(SockHistory {
            first_fin_local: Some(local),
            ..Default::default()
        });
        let v = one(&mut s);
        assert_eq!(v.cause, Cause::ClosedPreauth);
        assert_eq!(v.details["closed_by"], closed_by);
    }
}

#[test]
fn a_connection_first_seen_at_its_close_takes_its_times_from_the_history() {
    let mut s = Script::new();
    let established = s.ts - 4_000_000;
    s.closed_with(SockHistory {
        established_ns: Some(established),
        first_fin_local: Some(false),
    });
    let c = s.state.conns.by_tuple_mut(tuple()).unwrap();
    assert_eq!(c.first_ts, established);
    assert_eq!(c.established_ts, Some(established));
    assert_eq!(c.closed_first_by, Some(crate::trace::state::Closer::Peer));
}

#[test]
fn login_grace_time_is_closed_preauth_by_sshd() {
    let mut s = Script::new();
    s.accepted()
        .signal(irq_task(), SESSION, 14, SI_KERNEL_CODE)
        .signal(task(SESSION, "sshd"), PREAUTH, 9, 0)
        .exit(PREAUTH, 9)
        .softirq(Kind::SockState {
            skaddr: SK,
            old_state: ESTABLISHED,
            new_state: FIN_WAIT1,
            conn: tuple(),
            history: Default::default(),
        })
        .exit(SESSION, 255 << 8)
        .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::ClosedPreauth);
    assert_eq!(v.details["closed_by"], "sshd");
    assert_eq!(v.details["login_grace_time_expired"], true);
}

#[test]
fn auth_child_exiting_zero_means_authenticated_even_without_a_shell() {
    // `ssh -N`: no program runs, but the pre-auth child exits 0 after the login.
    let mut s = Script::new();
    s.accepted()
        .exit(PREAUTH, 0)
        .fin_close()
        .exit(SESSION, 255 << 8);
    assert!(s.verdicts(&Snapshot::default()).is_empty());
}

/// A listener failing accept with EMFILE while one connection waits: reported from the table
/// (connections reported when established) or from the kernel's queue (`in_kernel`).
fn stalled_listener(in_kernel: bool) {
    let mut s = Script::new();
    let queued = [crate::trace::state::Connection::queued(SK, tuple(), s.ts)];
    let queued: &[crate::trace::state::Connection] = if in_kernel { &queued } else { &[] };
    if !in_kernel {
        established(&mut s);
    }
    s.ev(
        task(LISTENER, "sshd"),
        Kind::SyscallError {
            rlimits: None,
            creds: None,
            syscall: "accept4".into(),
            errno: crate::kernel::syscalls::EMFILE,
            suppressed: 199,
            path: None,
            limit: nofile("8"),
            dac: None,
        },
    );
    let names = names();
    let clock = Clock::epoch();
    let sshd = Snapshot::default();
    let ctx = Background {
        names: &names,
        lsms: &lsms(),
        conns: &s.state.conns,
        sshd: &sshd,
        procs: &s.state.procs,
        recent: &crate::trace::state::RecentVerdicts::default(),
        clock: &clock,
        host: "h",
        netns: &crate::enrich::netns::NetnsNames::default(),
    };
    let v = judge_stalled(LISTENER, &[2222], queued, s.ts, &ctx).unwrap();
    assert_eq!(
        (v.cause, v.outcome),
        (Cause::ResourceLimit, Outcome::Stalled)
    );
    assert_eq!(v.details["failures_per_second"], 100.0);
    assert_eq!(v.details["waiting_connections"], 1);
    assert_eq!(v.conn.remote_port, 40000);
}

#[test]
fn stalled_listener_is_reported_before_anything_ends() {
    stalled_listener(false);
}

#[test]
fn a_queue_only_the_kernel_holds_is_reported_for_a_stalled_listener() {
    stalled_listener(true);
}

fn dropped_syn(s: &mut Script) -> &mut Script {
    s.softirq(Kind::FirewallDrop {
        conn: tuple(),
        tcp_flags: 0x02,
        inbound: true,
        suppressed: 0,
    })
}

#[test]
fn reject_seen_by_a_local_client_is_a_refusing_firewall() {
    let mut s = Script::new();
    dropped_syn(&mut s).softirq(Kind::ReceiveReset {
        skaddr: 0x77,
        client_side: true,
        conn: ConnTuple {
            local: tuple().remote,
            remote: tuple().local,
            netns: 4026531840,
        },
    });
    let v = one(&mut s);
    assert_eq!((v.cause, v.outcome), (Cause::Firewall, Outcome::Refused));
    assert_eq!(v.details["action"], "REJECT");
    assert!(v
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::ClientReceivedReset { .. })));
}

#[test]
fn retransmitted_syns_mean_drop() {
    let mut s = Script::new();
    dropped_syn(&mut s);
    dropped_syn(&mut s);
    let v = one(&mut s);
    assert_eq!((v.cause, v.outcome), (Cause::Firewall, Outcome::Dropped));
    assert_eq!(v.details["action"], "DROP");
    assert_eq!(v.details["dropped_segments"], 2);
}

/// Drops of the client's segments starve the session; the kernel's keepalive reset reaching
/// the local client is not a REJECT.
#[test]
fn keepalive_reset_after_drops_is_the_firewall_but_not_a_reject() {
    let mut s = Script::new();
    s.accepted()
        .softirq(Kind::FirewallDrop {
            conn: tuple(),
            tcp_flags: 0x10,
            inbound: true,
            suppressed: 0,
        })
        .softirq(Kind::SendReset {
            skaddr: SK,
            state: ESTABLISHED,
            reason: Some(KEEPALIVE),
            seg_flags: None,
            repeated: 0,
            conn: tuple(),
        })
        .softirq(Kind::ReceiveReset {
            skaddr: 0x77,
            client_side: true,
            conn: ConnTuple {
                local: tuple().remote,
                remote: tuple().local,
                netns: 4026531840,
            },
        });
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::Firewall);
    assert_eq!(v.details["action"], "DROP or REJECT");
    assert_eq!(v.details["first_dropped_flags"], "ACK");
}

#[test]
fn one_dropped_syn_does_not_tell_drop_from_reject() {
    let mut s = Script::new();
    dropped_syn(&mut s);
    assert_eq!(one(&mut s).details["action"], "DROP or REJECT");
}

#[test]
fn a_stray_drop_on_a_healthy_session_is_no_verdict() {
    let mut s = Script::new();
    s.accepted()
        .softirq(Kind::FirewallDrop {
            conn: tuple(),
            tcp_flags: 0x10,
            inbound: true,
            suppressed: 0,
        })
        .exit(PREAUTH, 0)
        .fin_close()
        .exit(SESSION, 0);
    assert!(s.verdicts(&Snapshot::default()).is_empty());
}

#[test]
fn client_side_reset_without_a_server_connection_is_ignored() {
    let mut s = Script::new();
    s.softirq(Kind::ReceiveReset {
        skaddr: 0x77,
        client_side: true,
        conn: tuple(),
    });
    assert!(s.verdicts(&Snapshot::default()).is_empty());
}

fn limit(
    name: &'static str,
    value: &str,
    source: &str,
) -> Option<crate::enrich::limits::LimitFacts> {
    Some(crate::enrich::limits::LimitFacts {
        limit: name,
        value: Some(value.into()),
        current: None,
        source: source.into(),
    })
}

#[test]
fn system_file_table_full_in_the_session() {
    let mut s = Script::new();
    s.accepted();
    let facts = limit("file_max", "9223372036854775807", "/proc/sys/fs/file-nr");
    syscall_error(
        &mut s,
        SESSION,
        "openat",
        crate::kernel::syscalls::ENFILE,
        Some("/etc/passwd"),
        facts,
    );
    s.exit(SESSION, 255 << 8).reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::ResourceLimit);
    assert_eq!(v.details["limit"], "file_max");
    assert!(v.hint.contains("fs.file-max"), "{}", v.hint);
}

#[test]
fn out_of_address_space_in_the_preauth_child() {
    let mut s = Script::new();
    s.accepted();
    let facts = limit("memory", "16777216", "/proc/201/limits (RLIMIT_AS)");
    syscall_error(
        &mut s,
        PREAUTH,
        "mmap",
        crate::kernel::syscalls::ENOMEM,
        None,
        facts,
    );
    s.exit(PREAUTH, 255 << 8)
        .exit(SESSION, 255 << 8)
        .reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::ResourceLimit);
    assert_eq!(v.details["limit"], "memory");
    assert_eq!(v.details["failed_pid"], PREAUTH);
    assert!(
        v.summary.contains("mmap failed with ENOMEM"),
        "{}",
        v.summary
    );
}

#[test]
fn listener_errors_before_the_accept_belong_to_no_connection() {
    let mut s = Script::new();
    syscall_error(
        &mut s,
        LISTENER,
        "pipe2",
        crate::kernel::syscalls::EMFILE,
        None,
        nofile("8"),
    );
    accepted_without_fork(&mut s);
    s.reset_on_close(LISTENER);
    assert_eq!(one(&mut s).cause, Cause::SshdDropped);
}

fn eacces(s: &mut Script, pid: u32, path: &str, mode_allows: bool) {
    s.ev(
        task(pid, "sshd"),
        Kind::SyscallError {
            rlimits: None,
            creds: None,
            syscall: "openat".into(),
            errno: crate::kernel::syscalls::EACCES,
            suppressed: 0,
            path: Some(path.into()),
            limit: None,
            dac: Some(crate::enrich::dac::DacFacts {
                allows: mode_allows,
                file: "0600 0:0".into(),
                process: "0:0".into(),
                credentials: "kernel",
                refused: (!mode_allows).then(|| format!("read on {path}")),
            }),
        },
    );
}

#[test]
fn refused_host_key_the_mode_allows_is_the_sole_lsm() {
    let mut s = Script::new();
    s.accepted();
    eacces(&mut s, SESSION, "/etc/ssh/ssh_host_ed25519_key", true);
    s.exit(SESSION, 1 << 8).reset_on_close(SESSION);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::LsmDenied);
    assert_eq!(v.details["lsm"], "landlock");
    assert_eq!(v.details["decided_by"], "errno and the active-LSM set");
    assert_eq!(v.details["path"], "/etc/ssh/ssh_host_ed25519_key");
    assert!(
        v.summary
            .contains("denied openat of /etc/ssh/ssh_host_ed25519_key by landlock"),
        "{}",
        v.summary
    );
}

#[test]
fn refused_access_the_mode_refuses_is_a_permission_problem() {
    let mut s = Script::new();
    s.accepted();
    eacces(&mut s, SESSION, "/home/u/.ssh/authorized_keys", false);
    s.softirq(Kind::SockState {
        skaddr: SK,
        old_state: ESTABLISHED,
        new_state: CLOSE_WAIT,
        conn: tuple(),
        history: Default::default(),
    })
    .exit(SESSION, 255 << 8)
    .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::PermissionDenied);
    assert_eq!(v.details["refused"], "read on /home/u/.ssh/authorized_keys");
}

#[test]
fn an_lsm_report_names_the_lsm_and_its_contexts() {
    let mut s = Script::new();
    s.accepted();
    let mut facts = std::collections::BTreeMap::new();
    facts.insert(
        "scontext".to_string(),
        "system_u:system_r:sshd_t:s0".to_string(),
    );
    facts.insert(
        "tcontext".to_string(),
        "unconfined_u:object_r:user_home_t:s0".to_string(),
    );
    facts.insert("tclass".to_string(), "file".to_string());
    facts.insert("permissions".to_string(), "read".to_string());
    s.ev(
        task(SESSION, "sshd"),
        Kind::LsmDenial(crate::trace::events::LsmDenial {
            source: "audit",
            lsm: "selinux",
            operation: Some("openat".into()),
            path: Some("/root/.ssh/authorized_keys".into()),
            facts,
        }),
    );
    eacces(&mut s, SESSION, "/root/.ssh/authorized_keys", true);
    s.softirq(Kind::SockState {
        skaddr: SK,
        old_state: ESTABLISHED,
        new_state: CLOSE_WAIT,
        conn: tuple(),
        history: Default::default(),
    })
    .exit(SESSION, 255 << 8)
    .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::LsmDenied);
    assert_eq!(v.details["lsm"], "selinux");
    assert_eq!(v.details["scontext"], "system_u:system_r:sshd_t:s0");
    assert_eq!(v.details["tclass"], "file");
    assert!(
        v.summary
            .contains("tcontext unconfined_u:object_r:user_home_t:s0"),
        "{}",
        v.summary
    );
    assert!(v
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::LsmDenial { .. })));
    assert!(v
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::SyscallError { .. })));
}

#[test]
fn denials_in_a_healthy_session_are_no_verdict() {
    let mut s = Script::new();
    s.accepted();
    eacces(&mut s, SESSION, "/etc/motd.d", true);
    s.exit(PREAUTH, 0).fin_close().exit(SESSION, 0);
    assert!(s.verdicts(&Snapshot::default()).is_empty());
}

/// A reset without a connection socket answering a segment (`flags`) of the test tuple.
fn stray_reset(s: &mut Script, state: i32, flags: u8) -> &mut Script {
    s.softirq(Kind::SendReset {
        skaddr: if state == LISTEN {
            0xffff_8888_0000_2000
        } else {
            0
        },
        state,
        reason: Some(NO_SOCKET),
        seg_flags: Some(flags),
        repeated: 0,
        conn: tuple(),
    })
}

/// The client retransmits to a crashed session before its verdict: the listener's and the
/// stack's answers are counted on that connection, not verdicts of their own.
#[test]
fn late_resets_before_the_verdict_join_the_crash() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(PREAUTH, "sshd"), PREAUTH, 11, 1)
        .exit(PREAUTH, 11)
        .reset_on_close(SESSION);
    stray_reset(&mut s, LISTEN, 0x18);
    stray_reset(&mut s, 0, 0x18);
    stray_reset(&mut s, 0, 0x10);
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdCrashed);
    let repeated: Vec<u32> = v
        .evidence
        .iter()
        .filter_map(|e| match e {
            Evidence::TcpSendReset { repeated, .. } => Some(*repeated),
            _ => None,
        })
        .collect();
    assert_eq!(
        repeated.iter().map(|r| r + 1).sum::<u32>(),
        4,
        "{repeated:?}"
    );
}

/// After the verdict, late segments' resets are counted for the summary, never judged.
#[test]
fn late_resets_after_the_verdict_are_counted_not_judged() {
    let mut s = Script::new();
    s.accepted()
        .signal(task(PREAUTH, "sshd"), PREAUTH, 11, 1)
        .exit(PREAUTH, 11)
        .reset_on_close(SESSION);
    assert_eq!(one(&mut s).cause, Cause::SshdCrashed);
    s.ts += 1_000_000_000;
    stray_reset(&mut s, LISTEN, 0x10);
    stray_reset(&mut s, 0, 0x18);
    assert!(s.verdicts(&Snapshot::default()).is_empty());
    assert_eq!(s.state.late_resets_after_verdict, 2);
    // A new connection attempt from the same address and port is a refusal of its own.
    stray_reset(&mut s, 0, 0x02);
    assert_eq!(one(&mut s).cause, Cause::NotListening);
}

/// A flood against a DROP rule: every drop is counted, only the first few are kept.
#[test]
fn a_drop_flood_is_counted_not_kept() {
    let mut s = Script::new();
    for _ in 0..100 {
        s.softirq(Kind::FirewallDrop {
            conn: tuple(),
            tcp_flags: 0x02,
            inbound: true,
            suppressed: 9,
        });
    }
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::Firewall);
    assert_eq!(v.details["dropped_segments"], 1000);
    let kept = v
        .evidence
        .iter()
        .filter(|e| matches!(e, Evidence::FirewallDrop { .. }))
        .count();
    assert_eq!(kept, crate::trace::state::connections::KEPT_DROPS);
    assert_eq!(s.state.not_kept.drops, 1000 - kept as u64);
}

/// A user signalling their own session in a loop: the latest signals are kept, the rest
/// counted, and the fatal one still decides.
#[test]
fn a_signal_flood_is_counted_not_kept() {
    let mut s = Script::new();
    s.accepted();
    for _ in 0..1000 {
        s.signal(task(900, "bash"), SESSION, 13, 0); // SIGPIPE, handled
    }
    s.signal(task(900, "bash"), SESSION, 9, 0)
        .exit(SESSION, 9)
        .fin_close();
    let v = one(&mut s);
    assert_eq!(v.cause, Cause::SshdKilled);
    assert_eq!(v.details["signal"], "SIGKILL");
    assert_eq!(s.state.not_kept.signals, 1001 - 32);
}

/// The last scan saw the listener, the kernel then saw it exit: it is gone, not running.
#[test]
fn a_listener_the_kernel_saw_exit_is_gone_whatever_the_last_scan_said() {
    let mut s = Script::new();
    s.signal(task(55, "kill"), LISTENER, 9, 0)
        .exit(LISTENER, 9)
        .softirq(refused(Some(0x02)));
    let mut sshd = Snapshot::default();
    sshd.listeners
        .insert(LISTENER, listener_on(&["0.0.0.0:2222"]));
    let v = s.verdicts(&sshd).remove(0);
    assert_eq!(v.details["sshd_running"], false, "{}", v.summary);
    assert_eq!(v.details["previous_listener"]["pid"], LISTENER);
    assert_eq!(v.details["previous_listener"]["signal"], "SIGKILL");
}
