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
        crate::loud(&format!(
            "KERNEL LACKS {evidence:?} ({}): {test} asserts the degraded verdict: {degraded}",
            release()
        ));
    }
    available
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default()
}

/// Whether the kernel has Landlock (5.13+), which the LSM tests use to provoke a real denial.
/// Where it has not, the test cannot run: says so by name and returns false. (CI's kernels
/// have it; only `vm-test --kernel 5.10` lacks it.)
pub fn landlock(test: &str) -> bool {
    const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: asks for the ABI version only; no memory is passed.
    let abi = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<u8>(),
            0,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        // The CI host must run it; only an on-demand older kernel may lack Landlock.
        let on_demand_vm = std::env::var_os("SSHTRACE_VM_KERNEL").is_some();
        if std::env::var_os("CI").is_some() && !on_demand_vm {
            panic!("{test} needs Landlock, and CI must run every test");
        }
        crate::loud(&format!(
            "KERNEL LACKS Landlock ({}): {test} cannot provoke an LSM denial on this kernel; NOT RUN",
            release()
        ));
    }
    abi >= 1
}
