//! Disk space where sshd writes, and which LSMs are enforcing.

use std::fs;

use super::{Check, Status};
use crate::kernel::lsm::ActiveLsms;

pub fn checks() -> Vec<Check> {
    let mut out: Vec<Check> = ["/", "/var/log", "/run"]
        .iter()
        .filter_map(|p| disk(p))
        .collect();
    out.push(lsm());
    out
}

fn disk(path: &str) -> Option<Check> {
    let st = rustix::fs::statvfs(path).ok()?;
    let total = st.f_blocks * st.f_frsize;
    let free = st.f_bavail * st.f_frsize;
    if total == 0 {
        return None;
    }
    let pct = free * 100 / total;
    let evidence = format!("{path}: {} MiB free ({pct}%)", free >> 20);
    Some(if pct < 2 || free < 16 << 20 {
        Check::new(
            "disk_space",
            Status::Fail,
            format!("{evidence}: sshd cannot log or create files"),
        )
        .fix(format!("free space on {path} (du -xsh {path}/* | sort -h)"))
    } else if pct < 10 {
        Check::new("disk_space", Status::Warn, evidence)
    } else {
        Check::new("disk_space", Status::Pass, evidence)
    })
}

fn lsm() -> Check {
    let lsms = ActiveLsms::discover();
    if let Some(why) = lsms.unknown_because {
        return Check::new("lsm", Status::Skip, why);
    }
    let mut notes = vec![format!("active: {}", lsms.all.join(","))];
    if lsms.all.iter().any(|l| l == "selinux") {
        let mode = match fs::read_to_string("/sys/fs/selinux/enforce").map(|s| s.trim().to_owned())
        {
            Ok(m) if m == "1" => "enforcing",
            Ok(_) => "permissive",
            Err(_) => "unknown",
        };
        notes.push(format!(
            "SELinux {mode} (denials: ausearch -m avc -ts recent)"
        ));
    }
    if lsms.all.iter().any(|l| l == "apparmor") {
        notes.push("AppArmor on (denials: journalctl -k | grep apparmor=\"DENIED\")".into());
    }
    if lsms.all.iter().any(|l| l == "landlock") {
        notes.push("Landlock available (rulesets are per process)".into());
    }
    Check::new("lsm", Status::Pass, notes.join("; "))
}
