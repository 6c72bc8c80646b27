//! LSM denials from the kernel audit netlink multicast group: AVC records (SELinux,
//! AppArmor) and Landlock access records, joined to the pid that was denied. Read-only: the
//! audit configuration is never changed; where auditing is off, no record comes and the
//! other evidence (failed syscalls, the active-LSM set) decides.
//!
//! The sockets are netlink-sys's, the headers netlink-packet-core's and the audit status
//! netlink-packet-audit's type; a record's text is sshtrace's own to parse.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    io::ErrorKind,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use netlink_packet_audit::{
    StatusMessageBuffer, AUDIT_AVC, AUDIT_EOE, AUDIT_GET, AUDIT_NLGRP_READLOG, AUDIT_SYSCALL,
};
use netlink_packet_core::{NetlinkBuffer, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_AUDIT, Socket, SocketAddr};
use rustix::io::Errno;
use tokio::sync::mpsc::UnboundedSender;

use crate::kernel::{netlink, syscalls::syscall_name};

/// Landlock's records (Linux 6.15), which netlink-packet-audit does not name.
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// What one multicast `recv` reads; a record is at most 8970 bytes (MAX_AUDIT_MESSAGE_LENGTH).
const RECORD_BUF: usize = 65536;
/// What the status answer is read into, and how long it is waited for.
const STATUS_BUF: usize = 512;
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

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
    let mut socket = Socket::new(NETLINK_AUDIT).context("audit netlink socket")?;
    // Binding to the group (a bit mask of groups) only reads; it needs CAP_AUDIT_READ.
    socket
        .bind(&SocketAddr::new(0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        .context("audit multicast group")?;
    let enabled = match audit_enabled() {
        Some(true) => "listening",
        Some(false) => "listening, but auditing is disabled on this host: LSMs send no records",
        None => "listening (audit status unknown)",
    };
    std::thread::Builder::new()
        .name("audit".into())
        .spawn(move || read_loop(&socket, &tx))?;
    Ok(enabled.into())
}

/// Records the kernel could not queue for the reader (its socket buffer was full in an audit
/// storm, ENOBUFS): counted, and the reader reads on.
static RECORDS_LOST: AtomicU64 = AtomicU64::new(0);

/// How many audit records were lost to a full socket buffer since start-up.
pub fn records_lost() -> u64 {
    RECORDS_LOST.load(Ordering::Relaxed)
}

fn read_loop(socket: &Socket, tx: &UnboundedSender<AuditDenial>) {
    // The socket is bound: reading it needs no privilege.
    if let Err(e) = crate::privileges::keep_only(&[]) {
        eprintln!("sshtrace: warning: the audit reader keeps every capability: {e:#}");
    }
    let mut groups = Groups::default();
    let mut buf = vec![0u8; RECORD_BUF];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if Errno::from_io_error(&e) == Some(Errno::NOBUFS) => {
                RECORDS_LOST.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                eprintln!("sshtrace: warning: the audit reader stops: {e}; LSM denials are judged without audit records from now on");
                return;
            }
        };
        let Some((kind, text)) = record(&buf[..n]) else {
            continue;
        };
        for denial in groups.add(kind, text.trim_end_matches('\0')) {
            if tx.send(denial).is_err() {
                return;
            }
        }
    }
}

/// One multicast datagram → (record type, text). The text is decoded lossily, not with the
/// strict UTF-8 of netlink-packet-audit's `AuditMessage`: the kernel prints a few values raw
/// (an SELinux context of an unmapped label), and such a record must still count.
fn record(datagram: &[u8]) -> Option<(u16, Cow<'_, str>)> {
    let frame = NetlinkBuffer::new_checked(datagram).ok()?;
    Some((
        frame.message_type(),
        String::from_utf8_lossy(frame.payload()),
    ))
}

/// AUDIT_GET on a unicast socket (needs CAP_AUDIT_CONTROL; read-only). The answer is waited
/// for one second at most.
fn audit_enabled() -> Option<bool> {
    let socket = Socket::new(NETLINK_AUDIT).ok()?;
    socket2::SockRef::from(&socket)
        .set_read_timeout(Some(STATUS_TIMEOUT))
        .ok()?;
    let request = netlink::request(AUDIT_GET, NLM_F_REQUEST, None);
    socket.send_to(&request, &SocketAddr::new(0, 0), 0).ok()?;
    let mut buf = [0u8; STATUS_BUF];
    let n = socket.recv(&mut &mut buf[..], 0).ok()?;
    // The answer is an AUDIT_GET message carrying `struct audit_status`; a refusal
    // (no CAP_AUDIT_CONTROL) is an NLMSG_ERROR.
    let frame = NetlinkBuffer::new_checked(&buf[..n]).ok()?;
    if frame.message_type() != AUDIT_GET {
        return None;
    }
    let status = StatusMessageBuffer::new_checked(frame.payload()).ok()?;
    Some(status.enabled() != 0)
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

    /// A multicast datagram as the kernel frames it: header, text, a trailing NUL.
    fn datagram(kind: u16, text: &str) -> Vec<u8> {
        use netlink_packet_audit::AuditMessage;
        use netlink_packet_core::{NetlinkHeader, NetlinkMessage};
        let payload = AuditMessage::Other((kind, format!("{text}\0")));
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload.into());
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn a_datagram_gives_its_type_and_text() {
        let text = r#"audit(1700000000.002:10): apparmor="DENIED" pid=77"#;
        let bytes = datagram(AUDIT_AVC, text);
        let (kind, got) = record(&bytes).unwrap();
        assert_eq!((kind, got.trim_end_matches('\0')), (AUDIT_AVC, text));
        // A datagram shorter than its header says, or than a header, gives nothing.
        assert!(record(&bytes[..bytes.len() - 1]).is_none());
        assert!(record(&bytes[..8]).is_none());
    }

    #[test]
    fn text_that_is_not_utf8_still_counts() {
        let text = "audit(1700000000.001:9): avc:  denied  { read } for  pid=4412 tcontext=x";
        let mut bytes = datagram(AUDIT_AVC, text);
        let at = bytes.len() - 2;
        bytes[at] = 0xff;
        let (_, got) = record(&bytes).unwrap();
        assert!(got.starts_with("audit(1700000000.001:9): avc:  denied"));
        assert!(got.contains('\u{fffd}'));
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
