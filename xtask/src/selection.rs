//! Which integration test binaries `cargo xtask test` runs again in the VM, and why. The one
//! place the selection lives: the VM run prints it before it boots, and the README's *Tests*
//! section holds the same table. `cargo xtask vm-test` runs everything unless given
//! `--kernel-dependent-only`.
//!
//! In the guest: what depends on the kernel — probes loading and attaching, tracepoint and BTF
//! layouts (the pre-6.10 `tcp:tcp_send_reset`), the degraded verdicts, every probe family at
//! least once. Host only: what sshtrace does in userspace with events the guest's tests
//! already prove it receives (outputs, views, doctor, start-up errors, container names).
//! A binary in neither list runs in the guest (and the VM run says it is unclassified), so a
//! new test file is never left out silently.

/// Where a test binary (`tests/tests/<name>.rs`) runs in the CI's VM run.
pub enum Guest {
    /// The whole binary runs in the guest.
    All,
    /// The binary runs in the guest without these tests (libtest `--skip`, each a full name).
    Except(&'static [&'static str], &'static str),
    /// Only on the host.
    HostOnly,
}

pub struct Entry {
    /// The test binary: the file name under tests/tests without `.rs`.
    pub binary: &'static str,
    pub guest: Guest,
    /// Why, in one line.
    pub why: &'static str,
}

const fn entry(binary: &'static str, guest: Guest, why: &'static str) -> Entry {
    Entry { binary, guest, why }
}

pub const SELECTION: &[Entry] = &[
    // Kernel-dependent: run in the guest.
    entry(
        "kernel_support",
        Guest::All,
        "--probe-report held to the support matrix: the plan this kernel's tracepoints and BTF give",
    ),
    entry(
        "not_listening",
        Guest::All,
        "refusals from skb:kfree_skb NO_SOCKET before 6.10; the stopped listener's exit",
    ),
    entry(
        "peer_reset",
        Guest::All,
        "tcp:tcp_receive_reset",
    ),
    entry(
        "sshd_crashed",
        Guest::Except(
            &[
                "preauth_child_segfault_resets_the_client_openssh_10",
                "session_segfault_with_nothing_unread_closes_the_client_openssh_10",
                "fault_after_a_handled_signal_is_a_crash_not_a_kill_openssh_10",
            ],
            "OpenSSH 10 runs in a Podman container: host only, as `containers` (Podman under TCG is minutes)",
        ),
        "SIGSEGV from signal_generate and sched_process_exit; the pre-6.10 tcp_send_reset without a reason",
    ),
    entry(
        "sshd_killed",
        Guest::Except(
            &["kill_of_the_session_names_the_sender_openssh_10"],
            "OpenSSH 10 runs in a Podman container: host only, as `containers` (Podman under TCG is minutes)",
        ),
        "the kill's sender from signal_generate, the exit; discovery of an sshd started later",
    ),
    entry(
        "sshd_log",
        Guest::All,
        "sshd's writes copied from sys_enter_write/sys_enter_sendto, the descriptor followed to its socket through BTF",
    ),
    entry(
        "kernel_abort",
        Guest::All,
        "degraded verdict: a keepalive reset without sk_rst_reason is unknown, from the old layout",
    ),
    entry(
        "socket_killed",
        Guest::All,
        "degraded verdict: ss -K without the TCP_STATE reason is unknown",
    ),
    entry(
        "firewall",
        Guest::All,
        "skb:kfree_skb NETFILTER_DROP in a namespace (no verdict at all before 5.17)",
    ),
    entry(
        "resource_limit",
        Guest::Except(
            &[
                "listener_out_of_descriptors_after_accept_openssh_10",
                "listener_stalled_on_accept_openssh_10",
                "pids_cgroup_full_openssh_10",
                "address_space_limit_openssh_10",
                "non_root_session_over_nproc_openssh_10",
            ],
            "OpenSSH 10 runs in a Podman container: host only, as `containers` (Podman under TCG is minutes)",
        ),
        "syscall errors from the raw sys_exit (numbers through BTF), the accept tracepoints, rlimits, pids cgroup",
    ),
    entry(
        "oom_killed",
        Guest::Except(
            &["per_connection_sshd_oom_killed_in_its_cgroup_openssh_10"],
            "OpenSSH 10 runs in a Podman container: host only, as `containers` (Podman under TCG is minutes)",
        ),
        "oom:mark_victim (backported to Debian's 6.1) and the memcg limit",
    ),
    entry(
        "lsm_denied",
        Guest::Except(
            &["authorized_keys_refused_denies_the_publickey_openssh_10"],
            "OpenSSH 10 runs in a Podman container: host only, as `containers` (Podman under TCG is minutes)",
        ),
        "a real Landlock denial: credentials read in the kernel at the failure, the path from sys_enter",
    ),
    entry(
        "lsm_audit",
        Guest::All,
        "degraded verdict: no Landlock audit record before 6.15, decided by errno and the LSM set",
    ),
    entry(
        "no_blind_window",
        Guest::All,
        "exec-time tracking: sched_process_exec, the executable's owner and mode read in the kernel",
    ),
    entry(
        "reliability",
        Guest::Except(
            &[
                "sshd_restarted_while_tracing_is_traced_again",
                "two_instances_work_independently",
                "records_the_ring_has_no_room_for_are_counted_and_reported",
            ],
            "a restarted sshd: no_blind_window's restart loop; two instances, ring-full loss counts: same on every kernel",
        ),
        "this kernel frees every program, map and link on SIGINT/SIGTERM/SIGKILL; the refusal storm aggregated on the kfree_skb path",
    ),
    // Userspace only: the host runs them; the kernel facts they rest on are proved above.
    entry(
        "hostile_floods",
        Guest::HostOnly,
        "tenants' floods against the tracer's bounds and accounting; the kernel's aggregation is in not_listening, firewall and reliability",
    ),
    entry(
        "hostile_inputs",
        Guest::HostOnly,
        "fake sshd, hostile configurations and cgroup names: discovery and escaping in userspace",
    ),
    entry(
        "hostile_outputs",
        Guest::HostOnly,
        "full disks, planted links, closed pipes and bad collectors: the outputs, in userspace",
    ),
    entry(
        "late_segments",
        Guest::HostOnly,
        "folding a dead connection's late resets is userspace; before 6.10 the listener's reset for them is not traced at all",
    ),
    entry(
        "healthy",
        Guest::HostOnly,
        "no verdict for a login: rules over socket states every guest test exercises",
    ),
    entry(
        "closed_preauth",
        Guest::HostOnly,
        "orderly closes: socket states and exits, judged in userspace",
    ),
    entry(
        "sshd_dropped",
        Guest::HostOnly,
        "MaxStartups: the listener's close and its note to the client, read by the hooks sshd_log runs in the guest",
    ),
    entry(
        "sshd_exited",
        Guest::HostOnly,
        "exit status and failed open: exits in sshd_crashed/killed, paths in lsm_denied, resets in sshd_crashed",
    ),
    entry(
        "errors",
        Guest::HostOnly,
        "start-up errors of the userspace preflight (BTF, tracefs and tracepoints hidden in a mount namespace)",
    ),
    entry(
        "doctor",
        Guest::HostOnly,
        "sshtrace doctor reads /proc, sshd -T, iptables: no BPF",
    ),
    entry(
        "outputs",
        Guest::HostOnly,
        "collectors, formats, queues and escaping",
    ),
    entry(
        "live_view",
        Guest::HostOnly,
        "text view, summary, filters, colour and the status line",
    ),
    entry(
        "containers",
        Guest::HostOnly,
        "container identity from cgroup paths and the runtime's API; Podman under TCG takes 4-5 min",
    ),
    entry(
        "metrics",
        Guest::HostOnly,
        "--metrics counts published verdicts in userspace; the verdicts themselves are proved in sshd_crashed and sshd_killed",
    ),
    entry(
        "journald",
        Guest::HostOnly,
        "the journald output to a real journald: formatting and delivery, in userspace",
    ),
    entry(
        "package",
        Guest::HostOnly,
        "the static binary, the .deb and its systemd unit in Podman containers booted with systemd",
    ),
    entry(
        "reset_from",
        Guest::HostOnly,
        "who sent a received reset, through routed namespaces (router REJECT, conntrack, NAT): mostly waits for timeouts; its hook, tp_btf tcp_probe, runs in peer_reset and client_mode",
    ),
    entry(
        "client_mode",
        Guest::Except(
            &[
                "router_refusal_without_a_baseline_is_undetermined",
                "server_host_refusal_after_a_baseline_is_from_the_peer_host",
                "refusal_by_the_router_next_to_the_server_is_one_hop_closer",
                "conntrack_forgetting_an_idle_session_is_from_the_path",
                "reset_behind_ttl_rewriting_nat_is_undetermined",
                "server_host_reset_mid_session_is_from_the_peer_host",
            ],
            "the same hooks as the refusal, mid-session and kill cases that run there, with other middleboxes: the comparison is userspace's (TCG makes their timeouts minutes)",
        ),
        "sshtrace client: tp_btf tcp_probe and net:netif_receive_skb read the resets of this host's own ssh, refused or reset through routed namespaces",
    ),
    entry(
        "penalties",
        Guest::HostOnly,
        "OpenSSH 10's PerSourcePenalties and MaxStartups drops, in a Podman container: the listener's close, as in sshd_dropped",
    ),
];

/// What the VM run does with the test binaries it was given.
pub struct Plan<'a> {
    /// Binaries to run, each with the libtest arguments that narrow it.
    pub run: Vec<(&'a std::path::Path, Vec<String>)>,
    /// The lines that say what runs where and why, printed before the guest boots.
    pub report: Vec<String>,
}

/// The test binary's name: `not_listening-0123abcd` → `not_listening`.
pub fn binary_name(path: &std::path::Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => file,
    }
}

/// The binaries to run: all of them when `kernel_dependent_only` is false, else the selection.
pub fn plan(binaries: &[std::path::PathBuf], kernel_dependent_only: bool) -> Plan<'_> {
    let named: Vec<(String, &std::path::Path)> = binaries
        .iter()
        .map(|b| (binary_name(b), b.as_path()))
        .collect();
    let mut run = Vec::new();
    let mut report = Vec::new();
    if !kernel_dependent_only {
        run = named.iter().map(|(_, p)| (*p, Vec::new())).collect();
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        report.push(format!(
            "vm-test: running every test binary ({}): {}",
            names.len(),
            names.join(", ")
        ));
        return Plan { run, report };
    }
    let mut in_guest = Vec::new();
    let mut host_only = Vec::new();
    let mut details = Vec::new();
    let mut host_details = Vec::new();
    for (name, path) in &named {
        let Some(e) = SELECTION.iter().find(|e| e.binary == name) else {
            in_guest.push(format!("{name} (unclassified)"));
            details.push(format!(
                "  guest {name:<16} UNCLASSIFIED: runs in the guest until classified in xtask/src/selection.rs"
            ));
            run.push((*path, Vec::new()));
            continue;
        };
        match &e.guest {
            Guest::All => {
                in_guest.push(name.clone());
                details.push(format!("  guest {name:<16} {}", e.why));
                run.push((*path, Vec::new()));
            }
            Guest::Except(skip, why) => {
                in_guest.push(format!("{name} (but {} of its tests)", skip.len()));
                host_only.push(format!("{name}'s {}", skip.join(", ")));
                details.push(format!("  guest {name:<16} {}", e.why));
                host_details.push(format!("  host  {name:<16} {}: {why}", skip.join(", ")));
                let args = skip
                    .iter()
                    .flat_map(|t| ["--skip".to_owned(), (*t).to_owned()])
                    .collect();
                run.push((*path, args));
            }
            Guest::HostOnly => {
                host_only.push(name.clone());
                host_details.push(format!("  host  {name:<16} {}", e.why));
            }
        }
    }
    report.push(format!(
        "vm-test: running kernel-dependent tests: {}; host-only: {}",
        in_guest.join(", "),
        host_only.join(", ")
    ));
    report.extend(details);
    for e in SELECTION
        .iter()
        .filter(|e| !matches!(e.guest, Guest::HostOnly))
        .filter(|e| !named.iter().any(|(n, _)| n == e.binary))
    {
        report.push(format!(
            "  guest {:<16} NOT BUILT: selected, but there is no such test binary (tests/tests/{}.rs absent?): nothing to run",
            e.binary, e.binary
        ));
    }
    report.extend(host_details);
    report.push(
        "  (xtask/src/selection.rs and the README's *Tests* say why; `cargo xtask vm-test` without --kernel-dependent-only runs everything)"
            .to_owned(),
    );
    Plan { run, report }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn names_without_the_hash() {
        assert_eq!(
            binary_name(&PathBuf::from(
                "/t/debug/deps/not_listening-0123456789abcdef"
            )),
            "not_listening"
        );
        assert_eq!(binary_name(&PathBuf::from("/t/x")), "x");
    }

    #[test]
    fn every_entry_once() {
        for (i, e) in SELECTION.iter().enumerate() {
            assert!(
                SELECTION[i + 1..].iter().all(|o| o.binary != e.binary),
                "{} twice",
                e.binary
            );
        }
    }

    #[test]
    fn subset_skips_host_only_and_runs_the_unclassified() {
        let bins: Vec<PathBuf> = [
            "kernel_support-00aa",
            "outputs-11bb",
            "brand_new-22cc",
            "reliability-33dd",
        ]
        .iter()
        .map(|b| PathBuf::from("/t").join(b))
        .collect();
        let plan = plan(&bins, true);
        let names: Vec<String> = plan.run.iter().map(|(p, _)| binary_name(p)).collect();
        assert_eq!(names, ["kernel_support", "brand_new", "reliability"]);
        assert!(plan.run[2].1.contains(&"--skip".to_owned()));
        let text = plan.report.join("\n");
        assert!(text.contains("host-only: outputs"), "{text}");
        assert!(text.contains("brand_new        UNCLASSIFIED"), "{text}");
        assert!(text.contains("no_blind_window  NOT BUILT"), "{text}");
        assert_eq!(super::plan(&bins, false).run.len(), 4);
    }
}
