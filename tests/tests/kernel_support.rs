//! The support matrix (README) held against the running kernel: `--probe-report` must say which
//! evidence this kernel gives, and how, exactly as documented for its version. Run on the CI
//! host's kernel and, through `cargo xtask vm-test`, on Debian's 5.10, 6.1 and 6.12.

use sshtrace_tests::{kernel::probe_report, privileged};

/// `6.1.0-56-amd64` → (6, 1).
fn version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

fn line<'a>(report: &'a str, evidence: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(evidence))
        .unwrap_or_else(|| panic!("no {evidence:?} in the report:\n{report}"))
}

#[test]
fn probe_report_matches_the_support_matrix() {
    if !privileged("probe_report_matches_the_support_matrix") {
        return;
    }
    let report = probe_report();
    let v = version();
    let available = |evidence: &str| !line(report, evidence).contains("UNAVAILABLE");

    // Refused connections: the reset tracepoint from 6.10, the NO_SOCKET drop from 5.17, and
    // before that kprobes (Debian's kernels have them; this project's CI host does not, but
    // it is 6.10+).
    let refusals = line(report, "resets sent without a socket");
    if v >= (6, 10) {
        assert!(refusals.contains("tcp:tcp_send_reset"), "{report}");
    } else if v >= (5, 17) {
        assert!(
            refusals.contains("skb:kfree_skb reason NO_SOCKET"),
            "{report}"
        );
    } else {
        assert!(refusals.contains("kprobe tcp_v4_send_reset"), "{report}");
        assert!(
            report.contains("kprobe tcp_v4_send_reset\n"),
            "attached:\n{report}"
        );
    }
    assert_eq!(
        available("why the stack sent a reset"),
        v >= (6, 10),
        "{report}"
    );
    assert_eq!(available("firewall drops"), v >= (5, 17), "{report}");
    assert_eq!(
        line(report, "which LSM denied an access").contains("Landlock audit records"),
        v >= (6, 15),
        "{report}"
    );
    // Added in 6.2, and backported to some stable kernels (Debian's 6.1 has them).
    if v >= (6, 2) {
        assert!(available("an OOM victim's memory figures"), "{report}");
    }
    if v >= (6, 10) {
        assert!(
            report.contains("every verdict is available on this kernel"),
            "{report}"
        );
    }
    // Socket states through tp_btf on every supported kernel (README: plain loads the
    // verifier checks); the raw and classic tracepoints are fallbacks, not the norm.
    assert!(
        line(report, "socket state changes").contains("tp_btf inet_sock_set_state"),
        "{report}"
    );
    // The program types are probed, and the ones sshtrace stands on are known everywhere.
    for known in ["tracepoint: known", "raw_tracepoint: known"] {
        assert!(report.contains(known), "{known} missing from:\n{report}");
    }
    // Every required hook attached: the report is only printed after they did.
    for hook in [
        "tcp:tcp_send_reset",
        "tcp:tcp_receive_reset",
        "inet_sock_set_state",
        "sched:sched_process_exit",
        "skb:kfree_skb",
        "syscalls:sys_exit_clone",
        "syscalls:sys_exit_openat",
    ] {
        assert!(report.contains(hook), "{hook} missing from:\n{report}");
    }
    // No program on every syscall of the host (README: failed syscalls).
    assert!(!report.contains("sys_exit\n"), "{report}");
    // sshd's output through socket sends where the kernel has sock_send_length (6.12 and the
    // CI host do; 5.10 and 6.1 do not), else through every write and sendto.
    let output = line(report, "what sshd writes");
    if v >= (6, 12) {
        assert!(output.contains("tp_btf sock_send_length"), "{report}");
        assert!(!report.contains("syscalls:sys_enter_write\n"), "{report}");
    } else if v < (6, 2) {
        assert!(output.contains("sys_enter_write"), "{report}");
    }
    // A failed call's path from the saved registers where the kernel has bpf_task_pt_regs
    // (5.15+): then no syscall entry is hooked for it, nor for accept (whose exit follows the
    // new fd). 5.10 saves the paths at the entries.
    let paths = line(report, "the path of a failed open");
    if v >= (5, 15) {
        assert!(paths.contains("from the saved registers"), "{report}");
        for entry in ["sys_enter_openat\n", "sys_enter_accept4\n"] {
            assert!(!report.contains(entry), "{entry} in:\n{report}");
        }
    } else {
        assert!(paths.contains("saved at each call's entry"), "{report}");
    }
}
