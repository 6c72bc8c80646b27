//! LSM denials from the kernel audit netlink multicast group: AVC records (SELinux,
//! AppArmor) and Landlock access records, joined to the pid that was denied. Read-only: the
//! audit configuration is never changed; where auditing is off, no record comes and the
//! other evidence (failed syscalls, the active-LSM set) decides.

use std::{collections::BTreeMap, collections::HashMap, os::fd::FromRawFd, os::fd::OwnedFd};

use anyhow::{bail, Result};
use tokio::sync::mpsc::UnboundedSender;

use crate::kernel::syscalls::syscall_name;

const NETLINK_AUDIT: i32 = 9;
/// AUDIT_NLGRP_READLOG, as a group bit.
const READLOG_GROUP: u32 = 1;
const AUDIT_GET: u16 = 1000;
const AUDIT_SYSCALL: u16 = 1300;
const AUDIT_EOE: u16 = 1320;
const AUDIT_AVC: u16 = 1400;
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
const NLMSG_HDRLEN: usize = 16;

/// One denial, as the LSM reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditDenial {
    /// Wall-clock time from the record's `audit(SECONDS.MILLIS:SERIAL)` header.
    pub unix_ns: i128,
    pub pid: u32,
    pub comm: String,
    /// `selinux`, `apparmor` or `landlock`.
    pub lsm: &'static str,
    /// The syscall (or AppArmor's operation) that was denied.
    pub operation: Option<String>,
    pub path: Option<String>,
    /// LSM-specific facts: scontext, tcontext, tclass, permissions; profile, denied_mask;
    /// blockers.
    pub facts: BTreeMap<String, String>,
}

/// Whether the listener runs, and whether the kernel audits at all.
pub fn start(tx: UnboundedSender<AuditDenial>) -> Result<String> {
    // SAFETY: creating and binding a netlink socket with valid arguments.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_AUDIT,
        );
        if fd < 0 {
            bail!("audit netlink socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = READLOG_GROUP;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_nl).cast(),
            len,
        ) != 0
        {
            bail!("audit multicast group: {}", std::io::Error::last_os_error());
        }
        fd
    };
    let enabled = match audit_enabled() {
        Some(true) => "listening",
        Some(false) => "listening, but auditing is disabled on this host: LSMs send no records",
        None => "listening (audit status unknown)",
    };
    std::thread::Builder::new()
        .name("audit".into())
        .spawn(move || read_loop(fd, tx))?;
    Ok(enabled.into())
}

fn read_loop(fd: OwnedFd, tx: UnboundedSender<AuditDenial>) {
    // The socket is bound: reading it needs no privilege.
    if let Err(e) = crate::privileges::keep_only(&[]) {
        eprintln!("sshtrace: warning: the audit reader keeps every capability: {e:#}");
    }
    let mut groups = Groups::default();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: reading into an owned buffer of the given length.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let msg = &buf[..n as usize];
        if msg.len() < NLMSG_HDRLEN {
            continue;
        }
        let len = (u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize).min(msg.len());
        let kind = u16::from_ne_bytes(msg[4..6].try_into().unwrap());
        let text = String::from_utf8_lossy(&msg[NLMSG_HDRLEN.min(len)..len]);
        for denial in groups.add(kind, text.trim_end_matches('\0')) {
            if tx.send(denial).is_err() {
                return;
            }
        }
    }
}

/// AUDIT_GET on a unicast socket (needs CAP_AUDIT_CONTROL; read-only).
fn audit_enabled() -> Option<bool> {
    // SAFETY: a netlink request/response with buffers we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_AUDIT,
        );
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut req = [0u8; NLMSG_HDRLEN];
        req[0..4].copy_from_slice(&(NLMSG_HDRLEN as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&AUDIT_GET.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if libc::sendto(
            raw,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            len,
        ) < 0
        {
            return None;
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut buf = [0u8; 512];
        let n = libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0);
        // struct audit_status: mask, enabled, … after the header.
        if n < (NLMSG_HDRLEN + 8) as isize || u16::from_ne_bytes([buf[4], buf[5]]) != AUDIT_GET {
            return None;
        }
        Some(u32::from_ne_bytes(buf[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].try_into().unwrap()) != 0)
    }
}

/// Records of one audit event share its serial; the event ends with an EOE record.
#[derive(Default)]
struct Groups {
    open: HashMap<u64, Vec<(u16, Record)>>,
}

#[derive(Clone, Debug, Default)]
struct Record {
    unix_ns: i128,
    fields: BTreeMap<String, String>,
    /// SELinux's `{ read open }`.
    permissions: Option<String>,
}

impl Groups {
    fn add(&mut self, kind: u16, text: &str) -> Vec<AuditDenial> {
        let Some((serial, record)) = parse_record(text) else {
            return Vec::new();
        };
        let relevant = matches!(
            kind,
            AUDIT_SYSCALL | AUDIT_EOE | AUDIT_AVC | AUDIT_LANDLOCK_ACCESS | AUDIT_LANDLOCK_DOMAIN
        );
        if !relevant {
            return Vec::new();
        }
        self.open.entry(serial).or_default().push((kind, record));
        if kind != AUDIT_EOE {
            // Bound what unterminated events can hold.
            if self.open.len() > 256 {
                let oldest = *self.open.keys().min().expect("not empty");
                self.open.remove(&oldest);
            }
            return Vec::new();
        }
        let records = self.open.remove(&serial).unwrap_or_default();
        denial(&records).into_iter().collect()
    }
}

/// `audit(1795578685.280:3): key=value …` → (serial, record).
fn parse_record(text: &str) -> Option<(u64, Record)> {
    let rest = text.strip_prefix("audit(")?;
    let (stamp, body) = rest.split_once("):")?;
    let (time, serial) = stamp.split_once(':')?;
    let (secs, millis) = time.split_once('.')?;
    let unix_ns =
        secs.parse::<i128>().ok()? * 1_000_000_000 + millis.parse::<i128>().ok()? * 1_000_000;
    let mut record = Record {
        unix_ns,
        ..Record::default()
    };
    let mut body = body.trim();
    if let Some(open) = body.find('{') {
        if let Some(close) = body[open..].find('}') {
            record.permissions = Some(body[open + 1..open + close].trim().to_owned());
            body = &body[open + close + 1..];
        }
    }
    record.fields = parse_fields(body);
    Some((serial.parse().ok()?, record))
}

/// `key=value` pairs; values may be "quoted", or hex when the kernel found them untrusted.
fn parse_fields(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("")
            .to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_owned(),
                &quoted[(end + 1).min(quoted.len())..],
            )
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            let raw = &after[..end];
            let untrusted = matches!(key.as_str(), "path" | "name" | "comm" | "exe" | "proctitle");
            let value = if untrusted {
                decode_hex(raw).unwrap_or_else(|| raw.to_owned())
            } else {
                raw.to_owned()
            };
            (value, &after[end..])
        };
        if !key.is_empty() {
            fields.insert(key, value);
        }
        rest = next;
    }
    fields
}

fn decode_hex(text: &str) -> Option<String> {
    if text.len() < 2
        || !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// The denial an audit event describes, if it is one.
fn denial(records: &[(u16, Record)]) -> Option<AuditDenial> {
    let find = |kind| records.iter().find(|(k, _)| *k == kind).map(|(_, r)| r);
    let syscall = find(AUDIT_SYSCALL);
    let (lsm, main): (&'static str, &Record) = if let Some(r) = find(AUDIT_LANDLOCK_ACCESS) {
        ("landlock", r)
    } else {
        let r = find(AUDIT_AVC)?;
        if r.fields.contains_key("apparmor") {
            if r.fields.get("apparmor").map(String::as_str) != Some("DENIED") {
                return None;
            }
            ("apparmor", r)
        } else {
            // SELinux AVC records carry the permission set in braces.
            r.permissions.as_ref()?;
            ("selinux", r)
        }
    };
    let pid_of = |r: &Record| r.fields.get("pid").and_then(|p| p.parse::<u32>().ok());
    let pid = pid_of(main)
        .or_else(|| syscall.and_then(pid_of))
        .or_else(|| find(AUDIT_LANDLOCK_DOMAIN).and_then(pid_of))?;
    let comm = [Some(main), syscall]
        .into_iter()
        .flatten()
        .find_map(|r| r.fields.get("comm").cloned())
        .unwrap_or_default();
    let operation = main.fields.get("operation").cloned().or_else(|| {
        syscall?
            .fields
            .get("syscall")?
            .parse::<i32>()
            .ok()
            .map(syscall_name)
    });
    let path = main
        .fields
        .get("path")
        .or_else(|| main.fields.get("name"))
        .cloned();
    let mut facts = BTreeMap::new();
    for key in [
        "scontext",
        "tcontext",
        "tclass",
        "permissive",
        "profile",
        "requested_mask",
        "denied_mask",
        "blockers",
        "domain",
    ] {
        if let Some(v) = main.fields.get(key) {
            facts.insert(key.to_owned(), v.clone());
        }
    }
    if let Some(p) = &main.permissions {
        facts.insert("permissions".into(), p.clone());
    }
    Some(AuditDenial {
        unix_ns: main.unix_ns,
        pid,
        comm,
        lsm,
        operation,
        path,
        facts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[(u16, &str)]) -> Vec<AuditDenial> {
        let mut g = Groups::default();
        lines.iter().flat_map(|(k, t)| g.add(*k, t)).collect()
    }

    /// As this kernel (6.18) emits them for a Landlock-restricted open.
    #[test]
    fn landlock_access_joined_to_the_syscall_pid() {
        let d = feed(&[
            (
                1423,
                r#"audit(1795578685.280:3): domain=1ee411d52 blockers=fs.read_file path="/etc/hostname" dev="vda" ino=611"#,
            ),
            (
                1424,
                r#"audit(1795578685.280:3): domain=1ee411d52 status=allocated mode=enforcing pid=12961 uid=0 exe="/tmp/ll" comm="ll""#,
            ),
            (
                1300,
                r#"audit(1795578685.280:3): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c ppid=12908 pid=12961 auid=4294967295 uid=0 comm="ll" exe="/tmp/ll" key=(null)"#,
            ),
            (1327, r#"audit(1795578685.280:3): proctitle="/tmp/ll""#),
            (1320, "audit(1795578685.280:3): "),
        ]);
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!((d.lsm, d.pid, d.comm.as_str()), ("landlock", 12961, "ll"));
        assert_eq!(d.path.as_deref(), Some("/etc/hostname"));
        assert_eq!(d.facts["blockers"], "fs.read_file");
        assert_eq!(d.unix_ns, 1_795_578_685_280_000_000);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(d.operation.as_deref(), Some("openat"));
    }

    #[test]
    fn selinux_avc_with_hex_encoded_path() {
        let d = feed(&[
            (1400, r#"audit(1700000000.001:9): avc:  denied  { read open } for  pid=4412 comm="sshd" path=2F726F6F742F2E7373682F617574686F72697A6564206B657973 dev="vda" ino=5 scontext=system_u:system_r:sshd_t:s0 tcontext=unconfined_u:object_r:admin_home_t:s0 tclass=file permissive=0"#),
            (1300, "audit(1700000000.001:9): arch=c000003e syscall=257 success=no exit=-13 pid=4412 comm=\"sshd\""),
            (1320, "audit(1700000000.001:9): "),
        ]);
        let d = &d[0];
        assert_eq!((d.lsm, d.pid), ("selinux", 4412));
        assert_eq!(d.path.as_deref(), Some("/root/.ssh/authorized keys"));
        assert_eq!(d.facts["permissions"], "read open");
        assert_eq!(d.facts["scontext"], "system_u:system_r:sshd_t:s0");
        assert_eq!(d.facts["tclass"], "file");
    }

    #[test]
    fn apparmor_denials_only() {
        let denied = r#"audit(1700000000.002:10): apparmor="DENIED" operation="open" class="file" profile="/usr/sbin/sshd" name="/etc/ssh/ssh_host_ed25519_key" pid=77 comm="sshd" requested_mask="r" denied_mask="r" fsuid=0 ouid=0"#;
        let d = feed(&[(1400, denied), (1320, "audit(1700000000.002:10): ")]);
        assert_eq!(
            (d[0].lsm, d[0].operation.as_deref()),
            ("apparmor", Some("open"))
        );
        assert_eq!(d[0].facts["profile"], "/usr/sbin/sshd");
        let allowed = denied.replace("DENIED", "ALLOWED");
        assert!(feed(&[(1400, &allowed), (1320, "audit(1700000000.002:10): ")]).is_empty());
    }

    #[test]
    fn events_without_a_denial_give_nothing() {
        assert!(feed(&[
            (1300, "audit(1.000:1): syscall=2 pid=3"),
            (1320, "audit(1.000:1): ")
        ])
        .is_empty());
        assert!(feed(&[(1400, "garbage")]).is_empty());
    }
}
