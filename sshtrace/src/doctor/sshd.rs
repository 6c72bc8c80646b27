//! Checks of the sshd processes and their configuration.

use std::{fs, io::Read, os::unix::fs::MetadataExt, path::Path};

use super::{Check, Status, Target};
use crate::{
    enrich::discovery::{config, MAX_CONFIG_PORTS},
    enrich::limits,
};

pub fn checks(t: &Target) -> Vec<Check> {
    let mut out = vec![running(t), config_test(t), listening(t)];
    out.extend(host_keys(t));
    out.push(config_mode(t));
    out.extend(max_startups(t));
    out.extend(limits(t));
    out
}

fn running(t: &Target) -> Check {
    if t.sshd.listeners.is_empty() {
        return Check::new(
            "sshd_running",
            Status::Fail,
            "no sshd process holds a listening socket",
        )
        .fix("systemctl start ssh (or sshd); if it does not stay up: sshd -t; journalctl -u ssh");
    }
    let listeners: Vec<String> = t
        .sshd
        .listeners
        .values()
        .map(|l| {
            format!(
                "pid {} on {}",
                l.pid,
                l.addrs
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    Check::new("sshd_running", Status::Pass, listeners.join("; "))
}

fn config_test(t: &Target) -> Check {
    let mut sshd = match t.sshd_on_config("-t") {
        Ok(sshd) => sshd,
        Err(why) => {
            return Check::new(
                "sshd_config_test",
                Status::Fail,
                format!(
                    "sshd -t not run on {}: {why}; sshd is given only a root-owned regular file",
                    t.config.display()
                ),
            )
            .fix("make sshd's configuration a regular file owned by root (chown root:root, chmod 644), then sshd -t");
        }
    };
    match sshd.output() {
        Err(err) => Check::new(
            "sshd_config_test",
            Status::Skip,
            format!("cannot run sshd -t: {err}"),
        ),
        Ok(out) if out.status.success() => Check::new(
            "sshd_config_test",
            Status::Pass,
            format!("sshd -t -f {}: ok", t.config.display()),
        ),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            // sshd names the file by the path it was given.
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .replace("/dev/stdin", &t.config.display().to_string());
            Check::new(
                "sshd_config_test",
                Status::Fail,
                format!("sshd -t -f {}: {first}", t.config.display()),
            )
            .fix("fix what sshd -t names, then restart sshd (systemctl restart ssh)")
        }
    }
}

/// Configured ports that nothing listens on; listeners on loopback only.
fn listening(t: &Target) -> Check {
    let mut ports: Vec<u16> = t
        .values("port")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    if ports.is_empty() {
        if let Ok(text) = &t.config_text {
            ports = config::FileFacts::parse(text).ports;
            ports.truncate(MAX_CONFIG_PORTS);
        }
    }
    let addrs: Vec<std::net::SocketAddr> = t.sshd.listening_addrs();
    let missing: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| !addrs.iter().any(|a| a.port() == *p))
        .collect();
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Check::new("listening_as_configured", Status::Fail, format!("configured port(s) {list} but nothing listens there (listening: {})", list_addrs(&addrs)))
            .fix("check ListenAddress/Port (sshd -T | grep -Ei '^(port|listenaddress)') and restart sshd");
    }
    if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
        return Check::new(
            "listening_as_configured",
            Status::Warn,
            format!(
                "listening on loopback only ({}): remote clients are refused",
                list_addrs(&addrs)
            ),
        )
        .fix("set ListenAddress to the address clients use (or remove it), then restart sshd");
    }
    if addrs.is_empty() {
        return Check::new(
            "listening_as_configured",
            Status::Skip,
            "no sshd listens: see sshd_running",
        );
    }
    Check::new(
        "listening_as_configured",
        Status::Pass,
        format!("listening on {}", list_addrs(&addrs)),
    )
}

fn list_addrs(addrs: &[std::net::SocketAddr]) -> String {
    if addrs.is_empty() {
        return "nothing".into();
    }
    addrs
        .iter()
        .map(std::string::ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Present, non-empty, mode 600 (or stricter), owned by root.
fn host_keys(t: &Target) -> Vec<Check> {
    // sshd -T fails when no key loads: then the configuration file says which keys.
    let mut keys = t.values("hostkey");
    if keys.is_empty() {
        keys = t
            .config_text
            .as_ref()
            .map(|text| config::values(text, "HostKey"))
            .unwrap_or_default();
    }
    if keys.is_empty() {
        keys = ["rsa", "ecdsa", "ed25519"]
            .iter()
            .map(|k| format!("/etc/ssh/ssh_host_{k}_key"))
            .filter(|p| Path::new(p).exists())
            .collect();
    }
    if keys.is_empty() {
        return vec![Check::new(
            "host_keys",
            Status::Fail,
            "no host key is configured or present",
        )
        .fix("ssh-keygen -A")];
    }
    keys.iter()
        .map(|key| match fs::metadata(key) {
            Err(err) => Check::new("host_keys", Status::Fail, format!("{key}: {err}"))
                .fix("ssh-keygen -A (or restore the key), then restart sshd"),
            Ok(m) if m.len() == 0 => {
                Check::new("host_keys", Status::Fail, format!("{key} is empty"))
                    .fix(format!("rm {key} {key}.pub; ssh-keygen -A; restart sshd"))
            }
            Ok(m) if m.mode() & 0o077 != 0 || m.uid() != 0 => Check::new(
                "host_keys",
                Status::Fail,
                format!(
                    "{key} is mode {:04o} owner {}: sshd refuses keys others can read",
                    m.mode() & 0o7777,
                    m.uid()
                ),
            )
            .fix(format!("chmod 600 {key}; chown root:root {key}")),
            Ok(m) => Check::new(
                "host_keys",
                Status::Pass,
                format!(
                    "{key}: {} bytes, mode {:04o}, root",
                    m.len(),
                    m.mode() & 0o7777
                ),
            ),
        })
        .collect()
}

fn config_mode(t: &Target) -> Check {
    match &t.config_meta {
        Err(err) => Check::new(
            "sshd_config_mode",
            Status::Fail,
            format!("{}: {err}", t.config.display()),
        ),
        Ok(m) if m.mode() & 0o022 != 0 || m.uid() != 0 => Check::new(
            "sshd_config_mode",
            Status::Fail,
            format!(
                "{} is mode {:04o} owner {}: writable by others",
                t.config.display(),
                m.mode() & 0o7777,
                m.uid()
            ),
        )
        .fix(format!(
            "chmod 644 {0}; chown root:root {0}",
            t.config.display()
        )),
        Ok(m) => Check::new(
            "sshd_config_mode",
            Status::Pass,
            format!(
                "{}: mode {:04o}, root",
                t.config.display(),
                m.mode() & 0o7777
            ),
        ),
    }
}

/// sshd's own process title says `[listener] N of START-FULL startups`.
fn max_startups(t: &Target) -> Vec<Check> {
    t.sshd
        .listeners
        .keys()
        .filter_map(|&pid| {
            let (pending, start, full) = parse_startups(&process_title(pid)?)?;
            let evidence = format!("sshd {pid}: {pending} unauthenticated connection(s), MaxStartups {start}:…:{full}");
            Some(if pending >= full {
                Check::new("max_startups", Status::Fail, format!("{evidence}: every new connection is dropped"))
                    .fix("find who holds unauthenticated connections (ss -tn state established), raise MaxStartups")
            } else if pending >= start {
                Check::new("max_startups", Status::Warn, format!("{evidence}: new connections are dropped at random"))
                    .fix("raise MaxStartups or find who holds unauthenticated connections")
            } else {
                Check::new("max_startups", Status::Pass, evidence)
            })
        })
        .collect()
}

/// The listener's command line as it rewrote it (setproctitle), at most 64 KiB of it.
fn process_title(pid: u32) -> Option<String> {
    let mut raw = Vec::new();
    fs::File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut raw)
        .ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

fn parse_startups(title: &str) -> Option<(u32, u32, u32)> {
    let rest = &title[title.find("[listener]")? + "[listener]".len()..];
    let mut words = rest.split_whitespace();
    let pending = words.next()?.parse().ok()?;
    let _of = words.next()?;
    let (start, full) = words.next()?.split_once('-')?;
    Some((pending, start.parse().ok()?, full.parse().ok()?))
}

/// MaxStartups' full count: `start:rate:full`, or a single number that is both start and full.
fn parse_max_startups_full(value: &str) -> Option<u64> {
    value.rsplit(':').next()?.trim().parse().ok()
}

/// Open descriptors against RLIMIT_NOFILE; the pids and memory cgroups against their limits.
fn limits(t: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    for &pid in t.sshd.listeners.keys() {
        out.extend(nofile(t, pid));
        out.extend(cgroups(pid));
    }
    out
}

/// Descriptors the listener holds per pending (unauthenticated) connection: its end of that
/// connection's startup pipe (sshd.c server_accept_loop, `startup_pipes[]` up to 9.7,
/// `child_register(startup_p[0], …)` from 9.8).
const FDS_PER_PENDING: u64 = 1;
/// Descriptors accepting one connection holds at once: the socket, the startup pipe's two ends
/// and the re-exec socketpair's two. Measured with 9.2: 4 open under a soft limit of 8, every
/// connection fails with "reexec socketpair: Too many open files" and the client sees
/// "Connection closed".
const FDS_PER_ACCEPT: u64 = 5;

/// What the listener's descriptor table must hold to take MaxStartups' full count of pending
/// connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Headroom {
    soft: u64,
    open: u64,
    pending: u64,
    full: u64,
}

impl Headroom {
    /// Those open now, one more per pending connection up to `full`, and an accept in flight.
    fn needed(&self) -> u64 {
        let more_pending = self.full.saturating_sub(self.pending);
        self.open + more_pending * FDS_PER_PENDING + (FDS_PER_ACCEPT - FDS_PER_PENDING)
    }

    fn arithmetic(&self) -> String {
        format!(
            "soft NOFILE {}, {} open, MaxStartups full {} ({} pending) needs ~{FDS_PER_PENDING}×{} more + {} while accepting = {}",
            self.soft,
            self.open,
            self.full,
            self.pending,
            self.full.saturating_sub(self.pending),
            FDS_PER_ACCEPT - FDS_PER_PENDING,
            self.needed()
        )
    }

    fn check(&self, pid: u32, source: &str) -> Check {
        let fix =
            format!("prlimit --nofile=65536:65536 --pid {pid}, and LimitNOFILE= in ssh.service");
        let evidence = format!("sshd {pid} ({source}): {}", self.arithmetic());
        if self.open + FDS_PER_ACCEPT > self.soft {
            let why = format!("no room to accept one connection: an accept holds {FDS_PER_ACCEPT} descriptors at once, {} + {FDS_PER_ACCEPT} > {}; every connection is closed at once (\"reexec socketpair: Too many open files\")", self.open, self.soft);
            return Check::new("sshd_nofile", Status::Fail, format!("{evidence}: {why}")).fix(fix);
        }
        if self.needed() > self.soft {
            let room =
                self.pending + (self.soft - self.open - FDS_PER_ACCEPT) / FDS_PER_PENDING + 1;
            let why = format!("{} > {}: past ~{room} pending connections new ones are closed at once, before MaxStartups would drop them", self.needed(), self.soft);
            return Check::new("sshd_nofile", Status::Warn, format!("{evidence}: {why}")).fix(fix);
        }
        if self.open as u128 * 10 >= self.soft as u128 * 9 {
            return Check::new(
                "sshd_nofile",
                Status::Warn,
                format!("{evidence}: nearly exhausted"),
            )
            .fix(fix);
        }
        Check::new(
            "sshd_nofile",
            Status::Pass,
            format!("{evidence} ≤ {}", self.soft),
        )
    }
}

/// The listener's RLIMIT_NOFILE against its open descriptors and MaxStartups' full count.
fn nofile(t: &Target, pid: u32) -> Option<Check> {
    let f = limits::for_failure(pid, "accept", crate::kernel::syscalls::EMFILE, None)?;
    let (Some(open), Some(soft)) = (
        f.current.as_deref().and_then(|c| c.parse::<u64>().ok()),
        f.value.as_deref().and_then(|v| v.parse::<u64>().ok()),
    ) else {
        let evidence = format!(
            "sshd {pid}: {} open descriptors, RLIMIT_NOFILE {} ({})",
            f.current.as_deref().unwrap_or("?"),
            f.value.as_deref().unwrap_or("?"),
            f.source
        );
        return Some(Check::new("sshd_nofile", Status::Pass, evidence));
    };
    let (pending, full) = startups_of(t, pid);
    let headroom = Headroom {
        soft,
        open,
        pending,
        full,
    };
    Some(headroom.check(pid, &f.source))
}

/// Pending connections and MaxStartups' full count: from the listener's own title (what it
/// runs with), else `sshd -T`, else OpenSSH's default 10:30:100.
fn startups_of(t: &Target, pid: u32) -> (u64, u64) {
    if let Some((pending, _, full)) = process_title(pid).as_deref().and_then(parse_startups) {
        return (pending.into(), full.into());
    }
    let configured = t
        .values("maxstartups")
        .first()
        .and_then(|v| parse_max_startups_full(v));
    (0, configured.unwrap_or(100))
}

/// The listener's pids and memory cgroups against their limits.
fn cgroups(pid: u32) -> Vec<Check> {
    let mut out = Vec::new();
    for (controller, name) in [
        ("pids", "sshd_pids_cgroup"),
        ("memory", "sshd_memory_cgroup"),
    ] {
        let Some(dir) = limits::cgroup_dir(pid, controller) else {
            continue;
        };
        let read = |f: &str| {
            fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let (max, cur) = if controller == "pids" {
            (read("pids.max"), read("pids.current"))
        } else if dir.join("memory.max").exists() {
            (read("memory.max"), read("memory.current"))
        } else {
            (read("memory.limit_in_bytes"), read("memory.usage_in_bytes"))
        };
        let (Some(max), Some(cur)) = (max, cur) else {
            continue;
        };
        let evidence = format!("{}: {cur} used of {max}", dir.display());
        let (m, c) = (max.parse::<u64>().ok(), cur.parse::<u64>().ok());
        out.push(match (m, c) {
            (Some(m), Some(c)) if c as u128 * 10 >= m as u128 * 9 => {
                Check::new(name, Status::Warn, format!("{evidence}: nearly exhausted")).fix(
                    format!("raise {controller} limit of sshd's cgroup (TasksMax=/MemoryMax=)"),
                )
            }
            _ => Check::new(name, Status::Pass, evidence),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startups_from_the_process_title() {
        assert_eq!(
            parse_startups("sshd: /usr/sbin/sshd -D [listener] 3 of 10-100 startups"),
            Some((3, 10, 100))
        );
        assert_eq!(parse_startups("sshd: root@pts/0"), None);
        assert_eq!(parse_max_startups_full("10:30:100"), Some(100));
        assert_eq!(parse_max_startups_full("20"), Some(20));
    }

    /// 4 open under a soft limit of 8 cannot accept at all (measured: "reexec socketpair: Too
    /// many open files"); 12 can, but not 100 pending connections.
    #[test]
    fn descriptor_headroom_for_max_startups() {
        let tight = Headroom {
            soft: 8,
            open: 4,
            pending: 0,
            full: 100,
        };
        assert_eq!(tight.needed(), 108);
        let check = tight.check(1, "/proc/1/limits");
        assert_eq!(check.status, Status::Fail);
        assert!(check.evidence.contains("soft NOFILE 8, 4 open, MaxStartups full 100 (0 pending) needs ~1×100 more + 4 while accepting = 108"), "{}", check.evidence);
        let short = Headroom { soft: 12, ..tight };
        assert_eq!(short.check(1, "").status, Status::Warn);
        assert!(short
            .check(1, "")
            .evidence
            .contains("past ~4 pending connections"));
        let roomy = Headroom {
            soft: 1024,
            ..tight
        };
        assert_eq!(roomy.check(1, "").status, Status::Pass);
        let busy = Headroom {
            soft: 108,
            pending: 100,
            open: 104,
            ..tight
        };
        assert_eq!(busy.needed(), 108);
    }
}
