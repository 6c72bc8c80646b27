//! Checks of the sshd processes and their configuration.

use std::{fs, io::Read, os::unix::fs::MetadataExt, path::Path};

use super::{Check, Status, Target};
use crate::{
    discovery::{config, MAX_CONFIG_PORTS},
    limits,
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
                    .map(|a| a.to_string())
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
        .map(|a| a.to_string())
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
            let mut raw = Vec::new();
            fs::File::open(format!("/proc/{pid}/cmdline")).ok()?.take(64 * 1024).read_to_end(&mut raw).ok()?;
            let title = String::from_utf8_lossy(&raw).replace('\0', " ");
            let (pending, start, full) = parse_startups(&title)?;
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

fn parse_startups(title: &str) -> Option<(u32, u32, u32)> {
    let rest = &title[title.find("[listener]")? + "[listener]".len()..];
    let mut words = rest.split_whitespace();
    let pending = words.next()?.parse().ok()?;
    let _of = words.next()?;
    let (start, full) = words.next()?.split_once('-')?;
    Some((pending, start.parse().ok()?, full.parse().ok()?))
}

/// Open descriptors against RLIMIT_NOFILE; the pids and memory cgroups against their limits.
fn limits(t: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    for &pid in t.sshd.listeners.keys() {
        let facts = limits::for_failure(pid, "accept", crate::kernel::syscalls::EMFILE, None);
        if let Some(f) = facts {
            let (open, max) = (
                f.current.as_deref().and_then(|c| c.parse::<u64>().ok()),
                f.value.as_deref().and_then(|v| v.parse::<u64>().ok()),
            );
            let evidence = format!(
                "sshd {pid}: {} open descriptors, RLIMIT_NOFILE {} ({})",
                f.current.as_deref().unwrap_or("?"),
                f.value.as_deref().unwrap_or("?"),
                f.source
            );
            out.push(match (open, max) {
                (Some(o), Some(m)) if o + 2 >= m => Check::new(
                    "sshd_nofile",
                    Status::Fail,
                    format!("{evidence}: no room for a connection"),
                )
                .fix(format!(
                    "prlimit --nofile=65536:65536 --pid {pid}, and LimitNOFILE= in ssh.service"
                )),
                (Some(o), Some(m)) if o as u128 * 10 >= m as u128 * 9 => Check::new(
                    "sshd_nofile",
                    Status::Warn,
                    format!("{evidence}: nearly exhausted"),
                ),
                _ => Check::new("sshd_nofile", Status::Pass, evidence),
            });
        }
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
    }
}
