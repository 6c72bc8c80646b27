//! What this kernel lets sshtrace see. Each kind of evidence has an ordered list of ways to
//! collect it; the plan picks the first this kernel offers (from its tracepoint formats and
//! BTF), and names the verdicts that degrade when there is none. `--probe-report` prints it,
//! and start-up summarises what is missing, so that a verdict absent for lack of a hook is
//! never absent silently.

use std::fmt::Write as _;

use sshtrace_common::{KernelLayout, ABSENT};

use crate::{
    kernel::hooks::{OutputWay, PathWay, SockStateWay},
    kernel::names::KernelNames,
};

const LANDLOCK_AUDIT: &str = "Landlock audit records (6.15+), when auditing is on";
const LSM_BY_ELIMINATION: &str =
    "the failed syscall's errno, the mode bits and the sole active access-control LSM";
const KPROBE_REFUSALS: &str = "kprobe tcp_v4_send_reset/tcp_v6_send_reset without a socket";
const SOCK_STATE_WAYS: &[&str] = &[
    SockStateWay::Btf.description(),
    SockStateWay::Raw.description(),
    SockStateWay::Classic.description(),
];
const OUTPUT_WAYS: &[&str] = &[
    OutputWay::SocketSends.description(),
    OutputWay::Syscalls.description(),
];
const PATH_WAYS: &[&str] = &[
    PathWay::SavedRegisters.description(),
    PathWay::Entries.description(),
];

/// How resets sent without a socket (a connection to a port nothing listens on) are seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSocketResets {
    /// `tcp:tcp_send_reset` fires for them (6.10+, the kernel that added `reason`).
    Tracepoint,
    /// Seen as the refused segment's `skb:kfree_skb` with this drop reason (NO_SOCKET, 5.17+):
    /// the stack answers every such segment that is not itself a reset with a RST.
    DroppedSegment(u32),
    /// `tcp_v4_send_reset`/`tcp_v6_send_reset` called without a socket, through kprobes
    /// (kernels without drop reasons, where kprobes are built in).
    Kprobe,
    Unavailable,
}

impl NoSocketResets {
    pub fn drop_reason(self) -> Option<u32> {
        match self {
            Self::DroppedSegment(reason) => Some(reason),
            _ => None,
        }
    }
}

/// The kinds of evidence the plan knows ways to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    SocketStates,
    SshdOutput,
    FailedCallPaths,
    NoSocketResets,
    ResetReasons,
    FirewallDrops,
    OomFigures,
    GroupExit,
    LandlockDenials,
    SelinuxDenials,
    ResetFingerprints,
}

/// One kind of evidence: how it is collected here, or what is lost without it.
#[derive(Clone, Debug)]
pub struct Capability {
    pub need: Need,
    pub evidence: &'static str,
    /// The way chosen on this kernel, `None` when it has none.
    pub source: Option<String>,
    /// Every way sshtrace knows, best first.
    pub ways: &'static [&'static str],
    /// What the verdicts lack when the evidence is missing.
    pub without: &'static str,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub no_socket_resets: NoSocketResets,
    pub capabilities: Vec<Capability>,
}

impl Plan {
    /// `landlock_audit`: the kernel's Landlock writes audit records of its denials (6.15+,
    /// marked by `struct landlock_request` in BTF).
    pub fn new(layout: &KernelLayout, names: &KernelNames, landlock_audit: bool) -> Self {
        let has = |offset: u16| offset != ABSENT;
        let drop_reasons = has(layout.kfree_skb.reason);
        let no_socket_resets = if has(layout.send_reset.reason) {
            NoSocketResets::Tracepoint
        } else {
            match names.drop_reason_value("NO_SOCKET") {
                Some(reason) if drop_reasons => NoSocketResets::DroppedSegment(reason),
                _ => NoSocketResets::Unavailable,
            }
        };
        let netfilter = drop_reasons && names.drop_reason_value("NETFILTER_DROP").is_some();
        let capabilities = vec![
            socket_states(),
            sshd_output(),
            failed_call_paths(),
            refusals(no_socket_resets),
            reset_reasons(layout),
            firewall_drops(netfilter),
            oom_figures(layout),
            group_exit(layout),
            landlock_denials(landlock_audit),
            selinux_denials(layout),
            reset_fingerprints(),
        ];
        Self {
            no_socket_resets,
            capabilities,
        }
    }

    /// Whether the kprobes on `tcp_v{4,6}_send_reset` are wanted: only where nothing better
    /// shows refusals.
    pub fn wants_refusal_kprobes(&self) -> bool {
        self.no_socket_resets == NoSocketResets::Unavailable
    }

    /// The kprobes attached: refusals are seen through them.
    pub fn refusals_by_kprobe(&mut self) {
        self.no_socket_resets = NoSocketResets::Kprobe;
        self.capability(Need::NoSocketResets).source = Some(KPROBE_REFUSALS.into());
    }

    /// The way socket states are seen, the hook that attached for them.
    pub fn socket_states_through(&mut self, way: SockStateWay) {
        self.capability(Need::SocketStates).source = Some(way.description().into());
    }

    /// The way sshd's output is seen, the hooks that attached for it.
    pub fn sshd_output_through(&mut self, way: OutputWay) {
        self.capability(Need::SshdOutput).source = Some(way.description().into());
    }

    /// The way a failed call's path is read, the hooks that attached for it.
    pub fn failed_call_paths_through(&mut self, way: PathWay) {
        self.capability(Need::FailedCallPaths).source = Some(way.description().into());
    }

    /// Received resets are fingerprinted: `packets` too, for refused connects (`sshtrace
    /// client`).
    pub fn reset_fingerprints_through(&mut self, packets: bool) {
        self.capability(Need::ResetFingerprints).source = Some(
            if packets {
                "tp_btf tcp_probe (established connections) and net:netif_receive_skb (refused \
                 connects)"
            } else {
                "tp_btf tcp_probe (established connections)"
            }
            .into(),
        );
    }

    fn capability(&mut self, need: Need) -> &mut Capability {
        self.capabilities
            .iter_mut()
            .find(|c| c.need == need)
            .expect("every need has a capability in the plan")
    }

    /// The evidence this kernel cannot give, one line each with what it costs.
    pub fn missing(&self) -> impl Iterator<Item = &Capability> {
        self.capabilities.iter().filter(|c| c.source.is_none())
    }

    /// The full report: program types, hooks attached or skipped, then every kind of evidence.
    pub fn probe_report(
        &self,
        release: &str,
        program_types: &[(&str, String)],
        attached: &[String],
        skipped: &[String],
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "kernel {release}");
        if !program_types.is_empty() {
            let _ = writeln!(out, "\nprogram types (verifier feature probe):");
            for (name, answer) in program_types {
                let _ = writeln!(out, "  {name}: {answer}");
            }
        }
        let _ = writeln!(out, "\nhooks attached ({}):", attached.len());
        for hook in attached {
            let _ = writeln!(out, "  {hook}");
        }
        if !skipped.is_empty() {
            let _ = writeln!(out, "hooks this kernel lacks ({}):", skipped.len());
            for hook in skipped {
                let _ = writeln!(out, "  {hook}");
            }
        }
        let _ = writeln!(out, "\nevidence:");
        for c in &self.capabilities {
            match &c.source {
                Some(source) => {
                    let _ = writeln!(out, "  {}: {source}", c.evidence);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {}: UNAVAILABLE (ways known: {})",
                        c.evidence,
                        c.ways.join("; ")
                    );
                    let _ = writeln!(out, "    without it: {}", c.without);
                }
            }
        }
        let missing = self.missing().count();
        let _ = writeln!(
            out,
            "\n{}",
            if missing == 0 {
                "every verdict is available on this kernel".to_owned()
            } else {
                format!("{missing} kind(s) of evidence unavailable: the verdicts above degrade")
            }
        );
        out
    }
}

/// Each kind of evidence: its ways, the one this kernel gives, and what is lost without it.
fn socket_states() -> Capability {
    Capability {
        need: Need::SocketStates,
        evidence: "socket state changes (every connection's life)",
        // Known once attached: see `socket_states_through`.
        source: None,
        ways: SOCK_STATE_WAYS,
        without: "sshtrace cannot start",
    }
}

fn reset_fingerprints() -> Capability {
    Capability {
        need: Need::ResetFingerprints,
        evidence: "who sent a received reset (its TTL and IP ID against the peer's segments)",
        // Known once attached: see `reset_fingerprints_through`.
        source: None,
        ways: &[
            "tp_btf tcp_probe",
            "raw_tracepoint netif_receive_skb (sshtrace client)",
        ],
        without: "peer_reset and connect_refused say reset_from: undetermined",
    }
}

fn sshd_output() -> Capability {
    Capability {
        need: Need::SshdOutput,
        evidence: "what sshd writes (its log, a dropped client's note)",
        // Known once attached: see `sshd_output_through`.
        source: None,
        ways: OUTPUT_WAYS,
        without: "verdicts carry no sshd_log, and a drop's reason (MaxStartups or a \
                  PerSourcePenalties penalty) is told only by sshd_config's figures",
    }
}

fn failed_call_paths() -> Capability {
    Capability {
        need: Need::FailedCallPaths,
        evidence: "the path of a failed open, stat, access or exec",
        // Known once attached: see `failed_call_paths_through`.
        source: None,
        ways: PATH_WAYS,
        without: "a failed call of sshd's is reported without the file it was about (which \
                  host key, which authorized_keys)",
    }
}

fn refusals(no_socket_resets: NoSocketResets) -> Capability {
    Capability {
        need: Need::NoSocketResets,
        evidence: "resets sent without a socket (refused connections)",
        source: match no_socket_resets {
            NoSocketResets::Tracepoint => Some("tcp:tcp_send_reset with no socket (6.10+)".into()),
            NoSocketResets::DroppedSegment(_) => {
                Some("skb:kfree_skb reason NO_SOCKET (5.17+)".into())
            }
            NoSocketResets::Kprobe => Some(KPROBE_REFUSALS.into()),
            NoSocketResets::Unavailable => None,
        },
        ways: &[
            "tcp:tcp_send_reset with no socket (6.10+)",
            "skb:kfree_skb reason NO_SOCKET (5.17+)",
            KPROBE_REFUSALS,
        ],
        without: "not_listening is never reported: a refused connection leaves no \
                      record (the client sees 'Connection refused')",
    }
}

fn reset_reasons(layout: &KernelLayout) -> Capability {
    let has = |offset: u16| offset != ABSENT;
    Capability {
        need: Need::ResetReasons,
        evidence: "why the stack sent a reset (enum sk_rst_reason)",
        source: has(layout.send_reset.reason)
            .then(|| "tcp:tcp_send_reset field reason (6.10+)".into()),
        ways: &["tcp:tcp_send_reset field reason (6.10+)"],
        without: "kernel_abort and socket_killed (ss -K) cannot be told from an \
                      application's close: such resets are judged on process evidence \
                      alone, or `unknown` with the raw facts",
    }
}

fn firewall_drops(netfilter: bool) -> Capability {
    Capability {
        need: Need::FirewallDrops,
        evidence: "firewall drops (skb_drop_reason NETFILTER_DROP)",
        source: netfilter.then(|| "skb:kfree_skb reason NETFILTER_DROP (5.17+)".into()),
        ways: &["skb:kfree_skb reason NETFILTER_DROP (5.17+)"],
        without: "firewall is never reported: a dropped or rejected SYN leaves no \
                      verdict; a reset a REJECT sends into an established session is a \
                      peer_reset",
    }
}

fn oom_figures(layout: &KernelLayout) -> Capability {
    let has = |offset: u16| offset != ABSENT;
    Capability {
        need: Need::OomFigures,
        evidence: "an OOM victim's memory figures",
        source: has(layout.oom.total_vm).then(|| {
            "oom:mark_victim fields total_vm, anon_rss… (6.2+, some stable kernels)".into()
        }),
        ways: &["oom:mark_victim fields total_vm, anon_rss… (6.2+, some stable kernels)"],
        without: "oom_killed names the victim but not its memory use",
    }
}

fn group_exit(layout: &KernelLayout) -> Capability {
    let has = |offset: u16| offset != ABSENT;
    Capability {
        need: Need::GroupExit,
        evidence: "whether a whole thread group exited",
        source: has(layout.exit.group_dead)
            .then(|| "sched:sched_process_exit field group_dead (6.16+)".into())
            .or_else(|| Some("the thread-group leader's exit".into())),
        ways: &[
            "sched:sched_process_exit field group_dead (6.16+)",
            "the thread-group leader's exit",
        ],
        without: "",
    }
}

fn landlock_denials(landlock_audit: bool) -> Capability {
    Capability {
        need: Need::LandlockDenials,
        evidence: "which LSM denied an access (Landlock)",
        source: Some(
            if landlock_audit {
                LANDLOCK_AUDIT
            } else {
                LSM_BY_ELIMINATION
            }
            .into(),
        ),
        ways: &[LANDLOCK_AUDIT, LSM_BY_ELIMINATION],
        without: "",
    }
}

fn selinux_denials(layout: &KernelLayout) -> Capability {
    let has = |offset: u16| offset != ABSENT;
    Capability {
        need: Need::SelinuxDenials,
        evidence: "SELinux denials",
        source: has(layout.selinux.tclass)
            .then(|| "avc:selinux_audited".into())
            .or_else(|| Some("audit records (AVC) when auditing is on".into())),
        ways: &[
            "avc:selinux_audited",
            "audit records (AVC) when auditing is on",
        ],
        without: "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(drop: &[(u32, &str)]) -> KernelNames {
        KernelNames::from_tables(&[], &[]).with_drop_reasons(drop)
    }

    fn layout_6_18() -> KernelLayout {
        let mut l = KernelLayout::ABSENT;
        l.send_reset.reason = 28;
        l.kfree_skb.reason = 28;
        l.oom.total_vm = 40;
        l
    }

    #[test]
    fn newer_kernels_see_refusals_in_the_reset_tracepoint() {
        let plan = Plan::new(
            &layout_6_18(),
            &names(&[(2, "NO_SOCKET"), (9, "NETFILTER_DROP")]),
            true,
        );
        assert_eq!(plan.no_socket_resets, NoSocketResets::Tracepoint);
        assert_eq!(plan.no_socket_resets.drop_reason(), None);
    }

    /// 6.1: no reason in tcp_send_reset, but drop reasons in kfree_skb.
    #[test]
    fn before_6_10_refusals_come_from_the_dropped_segment() {
        let mut l = layout_6_18();
        l.send_reset.reason = ABSENT;
        let mut plan = Plan::new(
            &l,
            &names(&[(2, "NO_SOCKET"), (9, "NETFILTER_DROP")]),
            false,
        );
        plan.socket_states_through(SockStateWay::Raw);
        plan.sshd_output_through(OutputWay::Syscalls);
        plan.failed_call_paths_through(PathWay::SavedRegisters);
        plan.reset_fingerprints_through(false);
        assert_eq!(plan.no_socket_resets, NoSocketResets::DroppedSegment(2));
        let missing: Vec<&str> = plan.missing().map(|c| c.evidence).collect();
        assert_eq!(missing, ["why the stack sent a reset (enum sk_rst_reason)"]);
    }

    /// 5.10: neither reasons nor drop reasons.
    #[test]
    fn without_drop_reasons_refusals_and_firewall_are_unavailable() {
        let mut plan = Plan::new(&KernelLayout::ABSENT, &names(&[]), false);
        plan.socket_states_through(SockStateWay::Classic);
        plan.sshd_output_through(OutputWay::Syscalls);
        plan.failed_call_paths_through(PathWay::Entries);
        plan.reset_fingerprints_through(false);
        assert_eq!(plan.no_socket_resets, NoSocketResets::Unavailable);
        assert!(plan.wants_refusal_kprobes());
        let report = plan.probe_report(
            "5.10.0",
            &[],
            &["tracepoint tcp:tcp_send_reset".into()],
            &[],
        );
        assert!(report.contains("resets sent without a socket (refused connections): UNAVAILABLE"));
        assert!(report.contains("firewall is never reported"));
        // Where the kprobes attach, refusals are seen again.
        plan.refusals_by_kprobe();
        assert_eq!(plan.missing().count(), 3);
        assert!(plan
            .probe_report("5.10.0", &[], &[], &[])
            .contains("refused connections): kprobe tcp_v4_send_reset"));
    }

    #[test]
    fn the_socket_state_hook_that_attached_is_the_way_reported() {
        let mut plan = Plan::new(&layout_6_18(), &names(&[]), true);
        assert_eq!(
            plan.missing().next().map(|c| c.evidence),
            Some("socket state changes (every connection's life)"),
            "unknown until attached"
        );
        plan.socket_states_through(SockStateWay::Btf);
        assert!(plan
            .probe_report("6.18.0", &[], &[], &[])
            .contains("socket state changes (every connection's life): tp_btf inet_sock_set_state (socket fields as plain loads)"));
        assert_eq!(
            plan.missing().next().map(|c| c.evidence),
            Some("what sshd writes (its log, a dropped client's note)"),
            "unknown until attached"
        );
        plan.sshd_output_through(OutputWay::SocketSends);
        assert!(plan.missing().all(|c| c.need != Need::SshdOutput));
    }
}
