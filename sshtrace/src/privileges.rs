//! Once its programs are attached, sshtrace keeps only the capabilities it still uses, and no
//! program it runs can gain more (no_new_privs): it runs as root beside tenants, for as long
//! as the host runs. Capabilities are per thread: each long-lived thread drops its own.

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What the tracing loop still needs, and why:
/// - `CAP_BPF` (`CAP_SYS_ADMIN` before 5.8): the bpf() calls on its maps and programs (the
///   ports and processes to follow, the loss counters) where unprivileged BPF is disabled;
/// - `CAP_SYS_ADMIN`: setns() into containers' network namespaces to list their listeners;
/// - `CAP_SYS_PTRACE`: /proc/PID/fd, /exe and /root of other users' processes (sshd's
///   unprivileged children, containers' processes);
/// - `CAP_DAC_READ_SEARCH`: reading sshd's configuration and cgroup files a container's
///   (mapped) owner keeps to itself.
pub const TRACING: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// Keeps only `keep` in the calling thread's effective and permitted sets, clears the
/// inheritable and ambient sets, empties the bounding set of everything else, and sets
/// no_new_privs. Capabilities this kernel does not know are skipped.
pub fn keep_only(keep: &[Capability]) -> Result<()> {
    let supported = caps::runtime::thread_all_supported();
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| supported.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in supported.difference(&keep) {
        if caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("cannot clear the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("cannot clear the inheritable set")?;
    let held = caps::read(None, CapSet::Permitted).context("cannot read the permitted set")?;
    let keep: CapsHashSet = keep.intersection(&held).copied().collect();
    caps::set(None, CapSet::Effective, &keep).context("cannot set the effective set")?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot set the permitted set")?;
    // This thread's, like its capabilities (threads it starts inherit it).
    rustix::thread::set_no_new_privs(true).context("cannot set no_new_privs")
}
