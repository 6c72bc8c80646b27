//! How each kind of event changes what sshtrace knows: one method per event kind.

use super::{
    apply_history, Closer, DroppedSegment, ExitInfo, OomKill, PathDrop, ResetSent, SignalInfo,
    State, StrayReset, SyscallError, FIREWALL_SETTLE_NS,
};
use super::{ClientProcess, ListenerNote, LogLine};
use crate::{
    trace::events::{ConnTuple, Event, Kind, TCP_SYN},
    trace::sshd_output::{OutputChannel, SshdOutput},
};

impl State {
    /// A socket state change: a connection opens, is established, closes; a listen.
    pub(super) fn on_sock_state(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let s = self.states;
        let Kind::SockState {
            skaddr,
            old_state,
            new_state,
            conn,
            history,
        } = &event.kind
        else {
            return;
        };
        if *new_state == s.listen {
            // In process context: the task is the one that listens. Only a tracked
            // sshd's listening is remembered (to say how a listener that is gone ended).
            if let Some(p) = self.procs.get_mut(event.task.pid) {
                p.note_listening(conn.local);
            }
            return;
        }
        if *old_state == s.listen && *new_state != s.syn_recv {
            return; // the listening socket itself
        }
        // A connection's first record: its creation, or (the kernel noting creation
        // only) its establishment.
        // A connect (`sshtrace client`), in the connecting process's context.
        let connecting = *old_state == s.close && *new_state == s.syn_sent;
        let id = if connecting
            || *new_state == s.syn_recv
            || (*old_state == s.syn_recv && *new_state == s.established)
        {
            self.conns.open(*skaddr, *conn, ts)
        } else {
            self.conns.by_skaddr_or_open(*skaddr, *conn, ts)
        };
        let c = self.conns.get_mut(id).expect("just looked up");
        if connecting {
            c.set_client_process(ClientProcess::seen(&event.task));
        }
        apply_history(c, history);
        if *new_state == s.established {
            c.established_ts.get_or_insert(ts);
        }
        if *old_state == s.established && c.closed_first_by.is_none() {
            if *new_state == s.fin_wait1 {
                c.closed_first_by = Some(Closer::Sshd);
            } else if *new_state == s.close_wait {
                c.closed_first_by = Some(Closer::Peer);
            }
        }
        if *new_state == s.close {
            c.fin_unacknowledged = *old_state == s.fin_wait1;
            c.closed_ts.get_or_insert(ts);
            c.end(ts);
        }
    }

    /// A reset this host sent: on a connection, or with no connection socket (a refusal, a
    /// late segment).
    pub(super) fn on_reset_sent(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let s = self.states;
        let Kind::SendReset {
            skaddr,
            state,
            reason,
            repeated,
            seg_flags,
            conn,
        } = &event.kind
        else {
            return;
        };
        let reset = ResetSent {
            ts_ns: ts,
            reason: *reason,
            state: *state,
            seg_flags: *seg_flags,
            repeated: *repeated,
            current: event.task.clone(),
        };
        let id = if *skaddr == 0 || *state == s.listen {
            // No connection socket: answered by the stack or by the listener.
            match self.conns.stray_reset(*conn, *seg_flags, ts) {
                StrayReset::Joins(id) => id,
                StrayReset::AfterVerdict => {
                    self.late_resets_after_verdict += 1 + u64::from(*repeated);
                    return;
                }
                StrayReset::New => {
                    let id = self.conns.orphan(*conn, ts);
                    let attempt = seg_flags.is_some_and(|f| f & TCP_SYN != 0);
                    if let (Some(c), true) = (self.conns.get_mut(id), attempt) {
                        c.settle_at_once = true;
                        self.refusals_waiting = true;
                    }
                    id
                }
            }
        } else {
            self.conns.by_skaddr_or_open(*skaddr, *conn, ts)
        };
        let c = self.conns.get_mut(id).expect("just looked up");
        c.add_reset(reset);
        c.end(ts);
    }

    /// A reset a connection on a tracked port received.
    pub(super) fn on_reset_received(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::ReceiveReset {
            skaddr,
            client_side: false,
            conn,
        } = &event.kind
        else {
            return;
        };
        let id = self.conns.by_skaddr_or_open(*skaddr, *conn, ts);
        let c = self.conns.get_mut(id).expect("just looked up");
        c.add_received_reset(ts);
        c.end(ts);
    }

    /// A received reset's fingerprint: evidence of who sent it. It comes before the reset
    /// itself (`tcp_probe` runs before TCP checks the segment).
    pub(super) fn on_reset_fingerprint(&mut self, event: &Event) {
        let Kind::ResetFingerprint {
            skaddr,
            conn,
            fingerprint,
        } = &event.kind
        else {
            return;
        };
        if *skaddr == 0 {
            // Read from the packet (`sshtrace client`): it answers a connect, else it is one
            // `tcp_probe` fingerprints from the socket.
            if let Some(c) = self.conns.connecting_mut(*conn) {
                c.add_reset_fingerprint(fingerprint.clone());
            }
            return;
        }
        let id = self.conns.by_skaddr_or_open(*skaddr, *conn, event.ts_ns);
        let c = self.conns.get_mut(id).expect("just looked up");
        c.add_reset_fingerprint(fingerprint.clone());
    }

    /// What the ssh behind a connect is (`sshtrace client`), as the kernel read it at once.
    pub(super) fn on_client_connect(&mut self, event: &Event) {
        let Kind::ClientConnect {
            skaddr,
            parent_tgid,
            executable,
            args,
            args_truncated,
        } = &event.kind
        else {
            return;
        };
        let Some(p) = self
            .conns
            .live_by_skaddr(*skaddr)
            .and_then(|c| c.client_process_mut())
        else {
            return;
        };
        if let Some((uid, mode)) = executable {
            // The kernel follows the name `ssh`: any program can take it.
            p.verified = Some(*uid == 0 && mode & 0o170000 == 0o100000 && mode & 0o022 == 0);
        }
        if !args.is_empty() {
            let more = if *args_truncated { " …" } else { "" };
            p.cmdline = Some(format!("{args}{more}"));
        }
        if *parent_tgid > 1 {
            p.parent = Some((*parent_tgid, None));
        }
    }

    /// A client on this host got a reset: evidence for the server side of its connection.
    pub(super) fn on_client_received_reset(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::ReceiveReset {
            client_side: true,
            conn,
            ..
        } = &event.kind
        else {
            return;
        };
        // A client on this host got a reset: evidence for the server-side connection
        // it belongs to (e.g. a firewall's REJECT), never a connection of its own.
        // The client may sit in another network namespace than sshd: match addresses.
        let server_view = ConnTuple {
            local: conn.remote,
            remote: conn.local,
            netns: 0,
        };
        if let Some(c) = self.conns.by_tuple_mut(server_view) {
            c.add_client_reset(ts);
        }
    }

    /// Netfilter dropped a segment of a connection to a tracked port.
    pub(super) fn on_firewall_drop(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::FirewallDrop {
            conn,
            tcp_flags,
            inbound,
            suppressed,
        } = &event.kind
        else {
            return;
        };
        let drop = DroppedSegment {
            ts_ns: ts,
            tcp_flags: *tcp_flags,
            inbound: *inbound,
        };
        // Dropped in another network namespace of this host than the connection's own (a
        // router's or a CNI's it crosses): a box on its path, evidence for that connection.
        if let Some(c) = self
            .conns
            .by_tuple_mut(*conn)
            .filter(|c| c.tuple.netns != conn.netns && c.tuple.netns != 0 && conn.netns != 0)
        {
            let path_drop = PathDrop {
                netns: conn.netns,
                segment: drop,
            };
            self.not_kept.drops += c.add_path_drop(path_drop, *suppressed);
            return;
        }
        let c = self.conns.by_tuple_or_orphan(*conn, ts);
        self.not_kept.drops += c.add_drop(drop, *suppressed);
        if c.skaddr == 0 {
            // No socket will ever close it: a verdict once the client had time to
            // retransmit (DROP) or get the reset (REJECT).
            c.extra_settle_ns = FIREWALL_SETTLE_NS;
            c.end(ts);
        }
    }

    /// inetd mode: the process serves the connection it was started with.
    pub(super) fn on_inherited_connection(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::Accept {
            claimed: Some(a),
            inherited: true,
            ..
        } = &event.kind
        else {
            return;
        };
        // inetd mode: the process serves the connection it was started with.
        let pid = event.task.pid;
        let id = self.conns.live_or_open(a.skaddr, a.conn, ts);
        let c = self.conns.get_mut(id).expect("just looked up");
        apply_history(c, &a.history);
        c.accept_ts = Some(ts);
        c.session_pid.get_or_insert(pid);
        self.procs.touch(pid, &event.task.comm, ts).conn = Some(id);
    }

    /// A tracked listener accepted (or failed to).
    pub(super) fn on_accept(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::Accept {
            ret, peer, claimed, ..
        } = &event.kind
        else {
            return;
        };
        let pid = event.task.pid;
        self.procs.touch(pid, &event.task.comm, ts);
        if *ret < 0 {
            return;
        }
        // Reported at its accept (claimed), or earlier: then found by its peer.
        let accepted = match claimed {
            Some(a) => {
                let id = self.conns.live_or_open(a.skaddr, a.conn, ts);
                let c = self.conns.get_mut(id).expect("just looked up");
                apply_history(c, &a.history);
                Some(id)
            }
            None => peer.and_then(|p| self.conns.unaccepted_from(p)),
        };
        if let Some(id) = accepted {
            let c = self.conns.get_mut(id).expect("just looked up");
            c.listener_pid = Some(pid);
            c.accept_ts = Some(ts);
            self.procs.touch(pid, &event.task.comm, ts).pending_accept = Some(id);
        }
    }

    /// A followed process forked.
    pub(super) fn on_fork(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::Fork { child } = &event.kind else {
            return;
        };
        let parent = self.procs.touch(event.task.pid, &event.task.comm, ts);
        // sshd forks the per-connection process right after accepting.
        let conn = parent.pending_accept.take().or(parent.conn);
        let new = self
            .procs
            .fork(event.task.pid, *child, &event.task.comm, ts);
        new.conn = conn;
        if let Some(c) = conn.and_then(|id| self.conns.get_mut(id)) {
            c.session_pid.get_or_insert(*child);
        }
    }

    /// A followed process executed a program.
    pub(super) fn on_exec(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::Exec { filename, .. } = &event.kind else {
            return;
        };
        let p = self.procs.touch(event.task.pid, &event.task.comm, ts);
        p.comm = event.task.comm.clone();
        p.exe = Some(filename.clone());
    }

    /// A followed process exited.
    pub(super) fn on_exit(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::Exit {
            exit_code,
            memcg_pages,
        } = &event.kind
        else {
            return;
        };
        let p = self.procs.touch(event.task.pid, &event.task.comm, ts);
        p.exit = Some(ExitInfo {
            ts_ns: ts,
            code: *exit_code,
        });
        // The OOM victim's memory cgroup, read from the victim as it exits.
        if let (Some(oom), Some((max, usage))) = (p.oom.as_mut(), memcg_pages) {
            oom.memcg = Some(crate::enrich::limits::memory_cgroup_read_in_kernel(
                *max, *usage,
            ));
        }
    }

    /// A signal generated for a followed process.
    pub(super) fn on_signal(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::Signal {
            target,
            target_comm,
            sig,
            code,
            result,
        } = &event.kind
        else {
            return;
        };
        let p = self.procs.touch(*target, target_comm, ts);
        self.not_kept.signals += p.record_signal(SignalInfo {
            ts_ns: ts,
            sig: *sig,
            code: *code,
            result: *result,
            sender: event.task.clone(),
        });
    }

    /// A failed system call of a followed process.
    pub(super) fn on_syscall_error(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::SyscallError {
            syscall,
            errno,
            suppressed,
            path,
            limit,
            dac,
            ..
        } = &event.kind
        else {
            return;
        };
        let p = self.procs.touch(event.task.pid, &event.task.comm, ts);
        p.record_error(SyscallError {
            ts_ns: ts,
            syscall: syscall.clone(),
            errno: *errno,
            suppressed: *suppressed,
            path: path.clone(),
            limit: limit.clone(),
            dac: dac.clone(),
        });
    }

    /// An LSM denied a followed process something.
    pub(super) fn on_lsm_denial(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::LsmDenial(denial) = &event.kind else {
            return;
        };
        // Audit records cover every process on the host: keep only tracked ones.
        if let Some(p) = self.procs.get_mut(event.task.pid) {
            self.not_kept.lsm_denials += p.record_lsm_denial(ts, denial.clone());
        }
    }

    /// The OOM killer chose a followed process.
    pub(super) fn on_oom_victim(&mut self, event: &Event) {
        let ts = event.ts_ns;
        let Kind::OomVictim {
            pid,
            uid,
            memory_kb,
            oom_score_adj,
        } = &event.kind
        else {
            return;
        };
        let p = self.procs.touch(*pid, "", ts);
        p.oom = Some(OomKill {
            ts_ns: ts,
            uid: *uid,
            memory_kb: *memory_kb,
            oom_score_adj: *oom_score_adj,
            memcg: None,
            trigger: event.task.clone(),
        });
    }

    /// A log message goes to the connection its process serves; the listener's to the
    /// connection it just accepted when the message names that client's port (its drop
    /// notice), else nowhere. A note written on a connection is the listener's words to it.
    pub(super) fn on_sshd_output(&mut self, event: &Event, output: &SshdOutput) {
        let (ts, pid) = (event.ts_ns, event.task.pid);
        if output.channel == OutputChannel::ClientSocket {
            if let Some(c) = self.conns.live_by_skaddr(output.skaddr) {
                c.note_listener(|| ListenerNote {
                    ts_ns: ts,
                    pid,
                    text: output.message(),
                    note: output.drop_note(),
                });
            }
            return;
        }
        let Some(p) = self.procs.get_mut(pid) else {
            return;
        };
        let message = output.message();
        let conn = p.conn.or_else(|| {
            let id = p.pending_accept?;
            let port = self.conns.get_mut(id)?.tuple.remote.port();
            names_port(&message, port).then_some(id)
        });
        let Some(c) = conn.and_then(|id| self.conns.get_mut(id)) else {
            return;
        };
        // Older messages are counted on the connection's verdict (`sshd_log_not_kept`).
        c.add_log_line(LogLine {
            ts_ns: ts,
            pid,
            channel: output.channel,
            message,
        });
    }
}

/// Whether sshd's message names client port `port`: `[A]:P` (drop notices) or `port P`.
fn names_port(message: &str, port: u16) -> bool {
    [format!("]:{port}"), format!("port {port}")]
        .iter()
        .any(|needle| {
            message.match_indices(needle.as_str()).any(|(at, _)| {
                !message[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
}
