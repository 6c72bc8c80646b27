//! The limits behind a resource failure: the failing task's rlimits as the kernel read them at
//! the failure (carried in the event), cgroup limits read from cgroupfs when the failure is
//! seen, and /proc as the fallback where the kernel gave no rlimits.

use std::{fs, path::PathBuf};

use serde::Serialize;

use crate::kernel::syscalls::{creates_process, EAGAIN, EMFILE, ENFILE, ENOMEM};

/// What a failure with this errno in this syscall ran into, as far as can be read.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LimitFacts {
    /// `nofile`, `file_max`, `pids`, `nproc` or `memory`.
    pub limit: &'static str,
    /// The limit's value, as the kernel shows it (e.g. "8", "max").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Current use against it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Where the value was read.
    pub source: String,
}

/// Soft limits of the failing task, read by the kernel probe at the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRlimits {
    pub nofile: u64,
    pub nproc: u64,
    pub address_space: u64,
}

const RLIM_INFINITY: u64 = u64::MAX;
const FROM_KERNEL: &str = "the failing task's rlimit at the failure (kernel)";

fn rlimit_text(value: u64) -> String {
    if value == RLIM_INFINITY {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

/// The limit an errno from a syscall points at, with its value for `pid`.
pub fn for_failure(
    pid: u32,
    syscall: &str,
    errno: i32,
    kernel: Option<TaskRlimits>,
) -> Option<LimitFacts> {
    match errno {
        EMFILE => Some(nofile(pid, kernel)),
        ENFILE => Some(file_max()),
        EAGAIN if creates_process(syscall) => Some(process_limit(pid, kernel)),
        ENOMEM => Some(memory(pid, kernel)),
        _ => None,
    }
}

fn nofile(pid: u32, kernel: Option<TaskRlimits>) -> LimitFacts {
    let open = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count().to_string())
        .ok();
    let (value, source) = match kernel {
        Some(k) => (Some(rlimit_text(k.nofile)), FROM_KERNEL.to_owned()),
        None => (
            limit_line(pid, "Max open files"),
            format!("/proc/{pid}/limits"),
        ),
    };
    LimitFacts {
        limit: "nofile",
        value,
        current: open,
        source,
    }
}

fn file_max() -> LimitFacts {
    let nr = fs::read_to_string("/proc/sys/fs/file-nr").unwrap_or_default();
    let cols: Vec<&str> = nr.split_whitespace().collect();
    LimitFacts {
        limit: "file_max",
        value: cols.get(2).map(std::string::ToString::to_string),
        current: cols.first().map(std::string::ToString::to_string),
        source: "/proc/sys/fs/file-nr".into(),
    }
}

/// EAGAIN from fork: a pids cgroup at its maximum, else RLIMIT_NPROC (never for root).
/// A fork's EAGAIN: the pids cgroup when it is full, else a finite RLIMIT_NPROC (read by the
/// kernel at the failure), else the pids cgroup's limit as it stands. A cgroup limit alone is
/// not the cause: a container's pids.max of 2048 with 3 in use is not what stopped a user's
/// fork at RLIMIT_NPROC 1.
fn process_limit(pid: u32, kernel: Option<TaskRlimits>) -> LimitFacts {
    let pids = pids_cgroup(pid);
    if let Some(p) = pids.as_ref().filter(|p| p.full()) {
        return p.facts();
    }
    if let Some(k) = kernel.filter(|k| k.nproc != RLIM_INFINITY) {
        return nproc(Some(rlimit_text(k.nproc)), FROM_KERNEL.to_owned());
    }
    if let Some(p) = pids {
        return p.facts();
    }
    match kernel {
        Some(k) => nproc(Some(rlimit_text(k.nproc)), FROM_KERNEL.to_owned()),
        None => nproc(
            limit_line(pid, "Max processes"),
            format!("/proc/{pid}/limits"),
        ),
    }
}

fn nproc(value: Option<String>, source: String) -> LimitFacts {
    LimitFacts {
        limit: "nproc",
        value,
        current: None,
        source,
    }
}

/// A pids cgroup with a numeric limit.
struct PidsCgroup {
    dir: std::path::PathBuf,
    max: String,
    current: Option<String>,
}

impl PidsCgroup {
    fn full(&self) -> bool {
        let (max, current) = (self.max.parse::<u64>(), self.current.as_deref());
        matches!((max, current.map(str::parse::<u64>)), (Ok(m), Some(Ok(c))) if c >= m)
    }

    fn facts(&self) -> LimitFacts {
        LimitFacts {
            limit: "pids",
            value: Some(self.max.clone()),
            current: self.current.clone(),
            source: self.dir.join("pids.max").display().to_string(),
        }
    }
}

fn pids_cgroup(pid: u32) -> Option<PidsCgroup> {
    let dir = cgroup_dir(pid, "pids")?;
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let max = read("pids.max").filter(|m| m != "max")?;
    let current = read("pids.current");
    Some(PidsCgroup { dir, max, current })
}

/// ENOMEM: RLIMIT_AS when one is set (mappings beyond it fail), else the memory cgroup.
pub fn memory(pid: u32, kernel: Option<TaskRlimits>) -> LimitFacts {
    if let Some(k) = kernel.filter(|k| k.address_space != RLIM_INFINITY) {
        return LimitFacts {
            limit: "memory",
            value: Some(rlimit_text(k.address_space)),
            current: None,
            source: format!("{FROM_KERNEL}: RLIMIT_AS"),
        };
    }
    if kernel.is_some() {
        return memory_cgroup(pid);
    }
    if let Some(value) = limit_line(pid, "Max address space").filter(|v| v != "unlimited") {
        return LimitFacts {
            limit: "memory",
            value: Some(value),
            current: None,
            source: format!("/proc/{pid}/limits (RLIMIT_AS)"),
        };
    }
    memory_cgroup(pid)
}

/// The memory cgroup's limit and usage (what the OOM killer enforces).
pub fn memory_cgroup(pid: u32) -> LimitFacts {
    let (value, current, source) = match cgroup_dir(pid, "memory") {
        Some(dir) => {
            let read = |f: &str| {
                fs::read_to_string(dir.join(f))
                    .ok()
                    .map(|s| s.trim().to_owned())
            };
            let (limit_file, usage_file) = if dir.join("memory.max").exists() {
                ("memory.max", "memory.current")
            } else {
                ("memory.limit_in_bytes", "memory.usage_in_bytes")
            };
            (
                read(limit_file),
                read(usage_file),
                dir.join(limit_file).display().to_string(),
            )
        }
        None => (None, None, format!("/proc/{pid}/cgroup")),
    };
    LimitFacts {
        limit: "memory",
        value,
        current,
        source,
    }
}

/// A memory cgroup's limit and usage as the kernel read them from a task (pages), in bytes
/// as cgroupfs shows them; no limit is "max".
pub fn memory_cgroup_read_in_kernel(max_pages: u64, usage_pages: u64) -> LimitFacts {
    let page = rustix::param::page_size() as u64;
    // PAGE_COUNTER_MAX: the kernel's "no limit", LONG_MAX in bytes rounded to pages.
    let unlimited = max_pages >= i64::MAX as u64 / page;
    LimitFacts {
        limit: "memory",
        value: Some(if unlimited {
            "max".into()
        } else {
            (max_pages * page).to_string()
        }),
        current: Some((usage_pages * page).to_string()),
        source: "kernel: the process's memory cgroup as it exited".into(),
    }
}

/// `Max open files  8  8  files` → "8" (soft limit).
fn limit_line(pid: u32, name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// The cgroupfs directory of `pid` for `controller`: cgroup v1 hierarchy, else v2.
pub fn cgroup_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (v1, v2) = parse_proc_cgroup(&text, controller);
    if let Some(path) = v1 {
        let dir = PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join(path.trim_start_matches('/'));
        if dir.exists() {
            return Some(dir);
        }
    }
    let path = v2?;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|root| PathBuf::from(root).join(path.trim_start_matches('/')))
        .find(|dir| dir.join(format!("{controller}.max")).exists())
}

/// From /proc/PID/cgroup: the v1 path of `controller` and the v2 path.
fn parse_proc_cgroup(text: &str, controller: &str) -> (Option<String>, Option<String>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == controller) {
            v1 = Some(path.to_owned());
        }
    }
    (v1, v2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_proc_cgroup() {
        let text = "8:pids:/sshtrace-test\n4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            parse_proc_cgroup(text, "pids"),
            (Some("/sshtrace-test".into()), Some("/user.slice".into()))
        );
        assert_eq!(parse_proc_cgroup(text, "cpuacct").0, Some("/".into()));
        assert_eq!(
            parse_proc_cgroup("0::/x\n", "pids"),
            (None, Some("/x".into()))
        );
    }

    /// The kernel's values win over /proc: the task may be gone, or may have changed them.
    #[test]
    fn limits_read_by_the_kernel_are_the_evidence() {
        let k = TaskRlimits {
            nofile: 8,
            nproc: 1,
            address_space: RLIM_INFINITY,
        };
        let me = std::process::id();
        let f = for_failure(me, "pipe2", EMFILE, Some(k)).unwrap();
        assert_eq!(
            (f.value.as_deref(), f.source.as_str()),
            (Some("8"), FROM_KERNEL)
        );
        // No RLIMIT_AS set: ENOMEM points at the memory cgroup instead.
        assert_ne!(
            memory(me, Some(k)).source,
            format!("{FROM_KERNEL}: RLIMIT_AS")
        );
        let limited = TaskRlimits {
            address_space: 1 << 20,
            ..k
        };
        assert_eq!(memory(me, Some(limited)).value.as_deref(), Some("1048576"));
    }

    #[test]
    fn errno_selects_the_limit() {
        let me = std::process::id();
        assert_eq!(
            for_failure(me, "pipe2", EMFILE, None).unwrap().limit,
            "nofile"
        );
        assert!(for_failure(me, "pipe2", EMFILE, None)
            .unwrap()
            .value
            .is_some());
        assert_eq!(
            for_failure(me, "open", ENFILE, None).unwrap().limit,
            "file_max"
        );
        assert!(for_failure(me, "read", EAGAIN, None).is_none());
        assert!(for_failure(me, "openat", 2, None).is_none());
    }
}
