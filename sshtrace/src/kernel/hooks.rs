//! Every hook sshtrace attaches, defined once: the program in the eBPF object, where it
//! attaches, whether sshtrace can run without it, and the [`HookId`] the loader, the plan and
//! the tracer name it by (never by its text).

use sshtrace_common::PATH_SYSCALLS;

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
    SyscallExit,
    /// The path argument of a failed open, stat, access or exec.
    PathArgument,
    SelinuxAudited,
    /// What sshd writes: its log, a dropped client's note.
    SshdOutput,
    /// `tcp_v4_send_reset`/`tcp_v6_send_reset` without a socket: refusals on old kernels.
    RefusalKprobe,
    SocketStates(SockStateWay),
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
    tracepoint(HookId::Accept, "syscalls", "sys_enter_accept"),
    tracepoint(HookId::Accept, "syscalls", "sys_exit_accept"),
    tracepoint(HookId::Accept, "syscalls", "sys_enter_accept4"),
    tracepoint(HookId::Accept, "syscalls", "sys_exit_accept4"),
    tracepoint(HookId::OomVictim, "oom", "mark_victim"),
    tracepoint(HookId::KfreeSkb, "skb", "kfree_skb"),
];

/// Kernel functions that send a reset without a socket: the last way to see refusals.
const REFUSAL_KPROBES: [&str; 2] = ["tcp_v4_send_reset", "tcp_v6_send_reset"];

/// Failed syscalls: the raw tracepoint where the syscall number's place in the registers is
/// known (cheaper: no record is assembled), else the classic one.
pub fn syscall_exit(raw: bool) -> Hook {
    if raw {
        Hook {
            program: "raw_sys_exit",
            ..required(HookId::SyscallExit, Attach::RawTracePoint("sys_exit"))
        }
    } else {
        tracepoint(HookId::SyscallExit, "raw_syscalls", "sys_exit")
    }
}

/// Every hook attached one by one (socket states are attached apart: the first way that
/// loads): the required ones, failed syscalls, then the optional ones, the refusal kprobes
/// only when wanted.
pub fn all(syscall_exit: Hook, refusal_kprobes: bool) -> Vec<Hook> {
    let paths = PATH_SYSCALLS
        .iter()
        .map(|name| tracepoint(HookId::PathArgument, "syscalls", name).optional());
    let selinux = tracepoint(HookId::SelinuxAudited, "avc", "selinux_audited").optional();
    let sshd_output = ["sys_enter_write", "sys_enter_sendto"]
        .map(|name| tracepoint(HookId::SshdOutput, "syscalls", name).optional());
    let kprobes = REFUSAL_KPROBES
        .iter()
        .filter(|_| refusal_kprobes)
        .map(|function| Hook {
            program: function,
            ..required(HookId::RefusalKprobe, Attach::KProbe(function)).optional()
        });
    REQUIRED
        .iter()
        .copied()
        .chain([syscall_exit])
        .chain(paths)
        .chain([selinux])
        .chain(sshd_output)
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
        assert_eq!(syscall_exit(true).label(), "raw_tracepoint sys_exit");
        let kprobe = all(syscall_exit(false), true)
            .into_iter()
            .find(|h| h.id == HookId::RefusalKprobe)
            .unwrap();
        assert_eq!(kprobe.label(), "kprobe tcp_v4_send_reset");
        assert!(!kprobe.required);
    }

    #[test]
    fn every_program_attaches_once() {
        let hooks = all(syscall_exit(true), true);
        for (i, h) in hooks.iter().enumerate() {
            assert!(!h.program.is_empty(), "{h:?}");
            assert!(
                hooks[i + 1..].iter().all(|o| o.program != h.program),
                "{h:?}"
            );
        }
    }
}
