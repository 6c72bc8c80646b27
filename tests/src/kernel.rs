//! What the kernel under test lets sshtrace see, as sshtrace reports it (`--probe-report`).
//! A test whose verdict needs evidence an older kernel lacks asserts there the documented
//! weaker verdict instead, and says so by name on standard error. On the CI host's kernel
//! every kind of evidence is available (tests/tests/kernel_support.rs holds it to that).

use std::{process::Command, sync::OnceLock};

use crate::sshtrace_bin;

/// Kinds of evidence, as named in `--probe-report`.
#[derive(Clone, Copy, Debug)]
pub enum Evidence {
    /// `enum sk_rst_reason` in `tcp:tcp_send_reset` (6.10+).
    ResetReasons,
    /// Resets sent without a socket, from any source.
    RefusedConnections,
    /// The refusal seen through `tcp:tcp_send_reset` itself, not a fallback.
    RefusalsFromTheResetTracepoint,
    /// NETFILTER_DROP in `skb:kfree_skb` (5.17+).
    FirewallDrops,
    /// Landlock's own audit records of its denials (6.15+).
    LandlockAuditRecords,
}

impl Evidence {
    fn report_line(self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::ResetReasons => ("why the stack sent a reset", None),
            Self::RefusedConnections => ("resets sent without a socket", None),
            Self::RefusalsFromTheResetTracepoint => {
                ("resets sent without a socket", Some("tcp:tcp_send_reset"))
            }
            Self::FirewallDrops => ("firewall drops", None),
            Self::LandlockAuditRecords => {
                ("which LSM denied an access", Some("Landlock audit records"))
            }
        }
    }
}

/// The probe report of this kernel, produced once per test binary.
pub fn probe_report() -> &'static str {
    static REPORT: OnceLock<String> = OnceLock::new();
    REPORT.get_or_init(|| {
        let out = Command::new(sshtrace_bin())
            .arg("--probe-report")
            .output()
            .expect("cannot run sshtrace --probe-report");
        assert!(
            out.status.success(),
            "sshtrace --probe-report failed: {out:?}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Whether this kernel gives `evidence`.
pub fn has(evidence: Evidence) -> bool {
    let (name, source) = evidence.report_line();
    let line = probe_report()
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("--probe-report has no line for {name:?}"));
    !line.contains("UNAVAILABLE") && source.is_none_or(|s| line.contains(s))
}

/// Like [`has`], and when the kernel lacks the evidence, says on standard error which weaker
/// verdict `test` asserts instead.
pub fn expect(test: &str, evidence: Evidence, degraded: &str) -> bool {
    let available = has(evidence);
    if !available {
        eprintln!(
            "KERNEL LACKS {evidence:?} ({}): {test} asserts the degraded verdict: {degraded}",
            release()
        );
    }
    available
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default()
}
