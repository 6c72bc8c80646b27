//! Every hook sshtrace attaches, defined once: the program in the eBPF object, where it
//! attaches, whether sshtrace can run without it, and the [`HookId`] the loader, the plan and
//! the tracer name it by (never by its text).

use sshtrace_common::{FAILURE_SYSCALLS, PATH_SYSCALLS};

/// What a hook is for, for the code that asks whether it attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookId {
    SendReset,
    ReceiveReset,
    ProcessFork,
    ProcessExec,
    ProcessExit,
    SignalGenerate,
    Accept,
    OomVictim,
    KfreeSkb,
    /// A failed call of one of `FAILURE_SYSCALLS`, its path argument read the way given.
    FailedSyscall(PathWay),
    /// The path argument of an open, stat, access or exec, saved at its entry.
    PathArgument,
    SelinuxAudited,
    /// What sshd writes: its log, a dropped client's note.
    SshdOutput(OutputWay),
    /// A followed sshd's standard error when it is a pipe or a file: attached while one logs
    /// there, beside [`OutputWay::SocketSends`].
    SshdStderr,
    /// `tcp_v4_send_reset`/`tcp_v6_send_reset` without a socket: refusals on old kernels.
    RefusalKprobe,
    SocketStates(SockStateWay),
    /// Segments an established tracked connection receives: the peer's IP headers, and a
    /// received reset's fingerprint.
    SegmentsReceived,
    /// `sshtrace client`: a reset refusing a connect, read from the packet (every packet a
    /// device hands over runs it, so it is attached in client mode only).
    PacketsReceived,
}

/// The ways to see socket state changes, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockStateWay {
    /// tp_btf: the socket's fields as plain loads the verifier checks.
    Btf,
    /// The raw tracepoint: a helper call per field read.
    Raw,
    /// The classic tracepoint: a record assembled for every state change on the host.
    Classic,
}

impl SockStateWay {
    pub const ALL: [Self; 3] = [Self::Btf, Self::Raw, Self::Classic];

    /// How `--probe-report` names it.
    pub const fn description(self) -> &'static str {
        match self {
            Self::Btf => "tp_btf inet_sock_set_state (socket fields as plain loads)",
            Self::Raw => {
                "raw_tracepoint inet_sock_set_state (socket fields through bpf_probe_read_kernel)"
            }
            Self::Classic => {
                "tracepoint sock:inet_sock_set_state (a record assembled for every state change)"
            }
        }
    }

    pub fn hook(self) -> Hook {
        let id = HookId::SocketStates(self);
        match self {
            Self::Btf => Hook {
                program: "tp_btf_inet_sock_set_state",
                attach: Attach::BtfTracePoint("inet_sock_set_state"),
                ..required(id, Attach::BtfTracePoint(""))
            },
            Self::Raw => Hook {
                program: "raw_inet_sock_set_state",
                attach: Attach::RawTracePoint("inet_sock_set_state"),
                ..required(id, Attach::RawTracePoint(""))
            },
            Self::Classic => tracepoint(id, "sock", "inet_sock_set_state"),
        }
    }
}

/// The ways to see what sshd writes, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputWay {
    /// tp_btf `sock_send_length`: socket sends only; a standard error that is a pipe or a file
    /// needs [`STDERR_WRITES`] beside it.
    SocketSends,
    /// `sys_enter_write` and `sys_enter_sendto`: every write(2) and sendto(2) on the host.
    Syscalls,
}

/// Where a failed call's path argument is read, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathWay {
    /// At the exit, from the task's saved registers (`bpf_task_pt_regs`, 5.15+): no entry is
    /// hooked.
    SavedRegisters,
    /// Saved at the entry of each call that takes a path: every open, stat, access and exec
    /// on the host runs a program there.
    Entries,
}

impl PathWay {
    /// How `--probe-report` names it.
    pub const fn description(self) -> &'static str {
        match self {
            Self::SavedRegisters => {
                "at the exit, from the saved registers (bpf_task_pt_regs; no syscall entry hooked)"
            }
            Self::Entries => {
                "saved at each call's entry (tracepoints syscalls:sys_enter_open*, *stat*, \
                 *access*, execve: every such call on the host runs a program)"
            }
        }
    }

    /// Its hooks, all to attach: the exit of each of `FAILURE_SYSCALLS` (optional: not every
    /// architecture has them all), and the entries where the exit cannot read the path.
    pub fn hooks(self) -> Vec<Hook> {
        let program = match self {
            Self::SavedRegisters => "sys_exit_failed",
            Self::Entries => "sys_exit_failed_saved_path",
        };
        let exits = FAILURE_SYSCALLS.iter().map(|name| Hook {
            program,
            ..tracepoint(HookId::FailedSyscall(self), "syscalls", name).optional()
        });
        let entries = PATH_SYSCALLS
            .iter()
            .filter(|_| self == Self::Entries)
            .map(|name| tracepoint(HookId::PathArgument, "syscalls", name).optional());
        exits.chain(entries).collect()
    }
}

impl OutputWay {
    /// How `--probe-report` names it.
    pub const fn description(self) -> &'static str {
        match self {
            Self::SocketSends => {
                "tp_btf sock_send_length (socket sends only; a standard error that is a pipe or \
                 a file through sys_enter_write, attached while a followed sshd logs there)"
            }
            Self::Syscalls => {
                "tracepoints syscalls:sys_enter_write and sys_enter_sendto (every write on the \
                 host runs a program)"
            }
        }
    }

    /// Its hooks, all to attach.
    pub fn hooks(self) -> Vec<Hook> {
        let id = HookId::SshdOutput(self);
        match self {
            Self::SocketSends => vec![Hook {
                program: "tp_btf_sock_send_length",
                ..required(id, Attach::BtfTracePoint("sock_send_length")).optional()
            }],
            Self::Syscalls => ["sys_enter_write", "sys_enter_sendto"]
                .map(|name| tracepoint(id, "syscalls", name).optional())
                .to_vec(),
        }
    }
}

/// A followed sshd's standard error when it is a pipe or a file (see [`OutputWay`]).
pub const STDERR_WRITES: Hook = Hook {
    program: "sys_enter_write_stderr",
    ..tracepoint(HookId::SshdStderr, "syscalls", "sys_enter_write").optional()
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    TracePoint(&'static str, &'static str),
    RawTracePoint(&'static str),
    /// `tp_btf`: a raw tracepoint whose arguments the verifier types from the kernel's BTF.
    BtfTracePoint(&'static str),
    KProbe(&'static str),
}

/// A program and how it attaches. An optional hook (some kernels or architectures lack it)
/// that cannot attach is reported and skipped; a required one is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub id: HookId,
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    pub required: bool,
}

impl Hook {
    /// How start-up and `--probe-report` name an attached hook.
    pub fn label(&self) -> String {
        match self.attach {
            Attach::TracePoint(category, name) => format!("tracepoint {category}:{name}"),
            Attach::RawTracePoint(name) => format!("raw_tracepoint {name}"),
            Attach::BtfTracePoint(name) => format!("tp_btf {name}"),
            Attach::KProbe(function) => format!("kprobe {function}"),
        }
    }

    const fn optional(self) -> Self {
        Self {
            required: false,
            ..self
        }
    }
}

const fn required(id: HookId, attach: Attach) -> Hook {
    Hook {
        id,
        program: "",
        attach,
        required: true,
    }
}

/// A classic tracepoint whose program has the tracepoint's name.
const fn tracepoint(id: HookId, category: &'static str, name: &'static str) -> Hook {
    Hook {
        id,
        program: name,
        attach: Attach::TracePoint(category, name),
        required: true,
    }
}

/// The hooks every kernel sshtrace supports has, besides socket states and failed syscalls.
const REQUIRED: &[Hook] = &[
    tracepoint(HookId::SendReset, "tcp", "tcp_send_reset"),
    tracepoint(HookId::ReceiveReset, "tcp", "tcp_receive_reset"),
    Hook {
        program: "sched_process_fork",
        ..required(
            HookId::ProcessFork,
            Attach::RawTracePoint("sched_process_fork"),
        )
    },
    tracepoint(HookId::ProcessExec, "sched", "sched_process_exec"),
    tracepoint(HookId::ProcessExit, "sched", "sched_process_exit"),
    tracepoint(HookId::SignalGenerate, "signal", "signal_generate"),
    tracepoint(HookId::Accept, "syscalls", "sys_exit_accept"),
    tracepoint(HookId::Accept, "syscalls", "sys_exit_accept4"),
    tracepoint(HookId::OomVictim, "oom", "mark_victim"),
    tracepoint(HookId::KfreeSkb, "skb", "kfree_skb"),
];

/// The entries of accept, where the exit cannot follow the new fd to its socket: they keep the
/// peer's address for it.
const ACCEPT_ENTRIES: [Hook; 2] = [
    tracepoint(HookId::Accept, "syscalls", "sys_enter_accept"),
    tracepoint(HookId::Accept, "syscalls", "sys_enter_accept4"),
];

fn packets_received() -> Hook {
    Hook {
        program: "netif_receive_skb",
        ..required(
            HookId::PacketsReceived,
            Attach::RawTracePoint("netif_receive_skb"),
        )
        .optional()
    }
}

/// Kernel functions that send a reset without a socket: the last way to see refusals.
const REFUSAL_KPROBES: [&str; 2] = ["tcp_v4_send_reset", "tcp_v6_send_reset"];

/// What to attach besides the hooks every run has.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wanted {
    /// The kprobes that see refusals where no tracepoint does.
    pub refusal_kprobes: bool,
    /// `sshtrace client`: the per-packet hook.
    pub client: bool,
    /// The entries of accept: the exit cannot follow the new fd to its socket.
    pub accept_entries: bool,
}

/// Every hook attached one by one (socket states, sshd's output and failed syscalls are
/// attached apart: the first way that loads): the required ones, then the optional ones, the
/// refusal kprobes only when wanted, the per-packet hook only for `sshtrace client`.
pub fn all(wanted: Wanted) -> Vec<Hook> {
    let selinux = tracepoint(HookId::SelinuxAudited, "avc", "selinux_audited").optional();
    let segments = Hook {
        program: "tp_btf_tcp_probe",
        ..required(HookId::SegmentsReceived, Attach::BtfTracePoint("tcp_probe")).optional()
    };
    let kprobes = REFUSAL_KPROBES
        .iter()
        .filter(|_| wanted.refusal_kprobes)
        .map(|function| Hook {
            program: function,
            ..required(HookId::RefusalKprobe, Attach::KProbe(function)).optional()
        });
    REQUIRED
        .iter()
        .copied()
        .chain(ACCEPT_ENTRIES.into_iter().filter(|_| wanted.accept_entries))
        .chain([selinux, segments])
        .chain(wanted.client.then(packets_received))
        .chain(kprobes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_attach_point() {
        assert_eq!(
            SockStateWay::Btf.hook().label(),
            "tp_btf inet_sock_set_state"
        );
        let clone = PathWay::SavedRegisters
            .hooks()
            .into_iter()
            .find(|h| h.label().ends_with("_clone"))
            .unwrap();
        assert_eq!(clone.label(), "tracepoint syscalls:sys_exit_clone");
        let kprobe = all(Wanted {
            refusal_kprobes: true,
            ..Wanted::default()
        })
        .into_iter()
        .find(|h| h.id == HookId::RefusalKprobe)
        .unwrap();
        assert_eq!(kprobe.label(), "kprobe tcp_v4_send_reset");
        assert!(!kprobe.required);
    }

    #[test]
    fn every_program_attaches_once_but_the_failed_syscalls_one() {
        for way in [PathWay::SavedRegisters, PathWay::Entries] {
            let mut hooks = all(Wanted {
                refusal_kprobes: true,
                client: true,
                accept_entries: true,
            });
            hooks.extend(way.hooks());
            for (i, h) in hooks.iter().enumerate() {
                assert!(!h.program.is_empty(), "{h:?}");
                assert!(
                    matches!(h.id, HookId::FailedSyscall(_))
                        || hooks[i + 1..].iter().all(|o| o.program != h.program),
                    "{h:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_entries_way_hooks_syscall_entries() {
        let entries = |way: PathWay| {
            way.hooks()
                .iter()
                .filter(|h| h.label().contains("sys_enter_"))
                .count()
        };
        assert_eq!(entries(PathWay::SavedRegisters), 0);
        assert_eq!(entries(PathWay::Entries), PATH_SYSCALLS.len());
        for way in [PathWay::SavedRegisters, PathWay::Entries] {
            let exits = way
                .hooks()
                .iter()
                .filter(|h| h.label().contains("sys_exit_"))
                .count();
            assert_eq!(exits, FAILURE_SYSCALLS.len(), "{way:?}");
        }
    }
}
