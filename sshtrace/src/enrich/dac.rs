//! Would the file mode bits (DAC) have allowed an access that failed with EACCES? If they
//! would, an LSM refused it; if not, it is a plain permission problem. The process's
//! credentials come from the kernel probe (read at the failure), else from /proc; the file is
//! looked up through the process's root directory when the failure is seen. A process that has
//! already exited is checked through a root directory with the same identity (device and inode,
//! as the probe read them): its parent's, or ours. POSIX ACLs are not evaluated.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DacFacts {
    /// The mode bits and capabilities would have allowed the access.
    pub allows: bool,
    /// e.g. "0600 0:0" (mode, owner:group of the file).
    pub file: String,
    /// The process's fsuid:fsgid.
    pub process: String,
    /// Where the process's credentials were read: "kernel" (by the probe, at the failure) or
    /// "/proc" (when the event arrived).
    pub credentials: &'static str,
    /// What the mode bits refused, when they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The credentials and root directory of the failing task, as the kernel probe read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCreds {
    pub fsuid: u32,
    pub fsgid: u32,
    pub cap_effective: u64,
    /// The first supplementary groups; `all_groups` says whether that is all of them.
    pub groups: Vec<u32>,
    pub all_groups: bool,
    pub parent_pid: u32,
    /// (st_dev, st_ino) of the task's root directory, in userspace's device encoding.
    pub root: Option<(u64, u64)>,
}

impl KernelCreds {
    /// The kernel's internal dev_t (major << 20 | minor) in glibc's encoding, as `stat` gives it.
    pub fn user_dev(kernel_dev: u32) -> u64 {
        let (major, minor) = (u64::from(kernel_dev >> 20), u64::from(kernel_dev & 0xfffff));
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }
}

struct Creds {
    uid: u32,
    gids: Vec<u32>,
    /// False when the task has more supplementary groups than `gids` holds.
    all_groups: bool,
    caps: u64,
}

impl From<&KernelCreds> for Creds {
    fn from(k: &KernelCreds) -> Self {
        let mut gids = vec![k.fsgid];
        gids.extend(&k.groups);
        Creds {
            uid: k.fsuid,
            gids,
            all_groups: k.all_groups,
            caps: k.cap_effective,
        }
    }
}

fn creds(pid: u32) -> Option<Creds> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // Uid: real effective saved fs — file access uses the fs ids.
    let uid = field("Uid:")?.split_whitespace().nth(3)?.parse().ok()?;
    let mut gids: Vec<u32> = vec![field("Gid:")?.split_whitespace().nth(3)?.parse().ok()?];
    gids.extend(
        field("Groups:")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse::<u32>().ok()),
    );
    let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(Creds {
        uid,
        gids,
        all_groups: true,
        caps,
    })
}

/// The permission class bits (rwx) that apply to `creds` for a file; None when the group class
/// depends on supplementary groups the kernel did not report.
fn class_bits(mode: u32, owner: u32, group: u32, c: &Creds) -> Option<u32> {
    Some(if c.uid == owner {
        (mode >> 6) & 7
    } else if c.gids.contains(&group) {
        (mode >> 3) & 7
    } else if !c.all_groups {
        return None;
    } else {
        mode & 7
    })
}

/// The directory `path`s of process `pid` resolve from: its own root while it lives, else one
/// with the identity the kernel read (its parent's, or ours).
fn root_of(pid: u32, kernel: Option<&KernelCreds>) -> Option<PathBuf> {
    let own = PathBuf::from(format!("/proc/{pid}/root"));
    if fs::metadata(&own).is_ok() {
        return Some(own);
    }
    let (dev, ino) = kernel?.root?;
    let parent = format!("/proc/{}/root", kernel?.parent_pid);
    [PathBuf::from(parent), PathBuf::from("/")]
        .into_iter()
        .find(|candidate| fs::metadata(candidate).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}

/// Checks `syscall` on `path` for process `pid`: search on every ancestor directory, then read
/// (or execute, for execve) on the file. `kernel` holds the credentials read at the failure.
pub fn check(
    pid: u32,
    syscall: &str,
    path: &str,
    kernel: Option<&KernelCreds>,
) -> Option<DacFacts> {
    let (c, credentials) = match kernel {
        Some(k) => (Creds::from(k), "kernel"),
        None => (creds(pid)?, "/proc"),
    };
    let root = root_of(pid, kernel)?;
    let absolute = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        fs::read_link(format!("/proc/{pid}/cwd")).ok()?.join(path)
    };
    let has = |cap: u32| c.caps & (1 << cap) != 0;
    let process = format!("{}:{}", c.uid, c.gids[0]);
    let within = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for dir in absolute.ancestors().skip(1) {
        let meta = fs::metadata(within(dir)).ok()?;
        let search = has(CAP_DAC_OVERRIDE)
            || has(CAP_DAC_READ_SEARCH)
            || class_bits(meta.mode(), meta.uid(), meta.gid(), &c)? & 1 != 0;
        if !search {
            return Some(DacFacts {
                allows: false,
                file: format!("{:04o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid()),
                process,
                credentials,
                refused: Some(format!("search on {}", dir.display())),
            });
        }
    }
    let meta = fs::metadata(within(&absolute)).ok()?;
    let mode = meta.mode();
    let bits = class_bits(mode, meta.uid(), meta.gid(), &c)?;
    let (allows, wanted) = if syscall.starts_with("exec") {
        // Even CAP_DAC_OVERRIDE needs one execute bit somewhere.
        (
            if has(CAP_DAC_OVERRIDE) {
                mode & 0o111 != 0
            } else {
                bits & 1 != 0
            },
            "execute",
        )
    } else {
        (
            has(CAP_DAC_OVERRIDE) || has(CAP_DAC_READ_SEARCH) || bits & 4 != 0,
            "read",
        )
    };
    Some(DacFacts {
        allows,
        file: format!("{:04o} {}:{}", mode & 0o7777, meta.uid(), meta.gid()),
        process,
        credentials,
        refused: (!allows).then(|| format!("{wanted} on {path}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_group_other_classes() {
        let mut c = Creds {
            uid: 1000,
            gids: vec![100, 4],
            all_groups: true,
            caps: 0,
        };
        assert_eq!(class_bits(0o640, 1000, 0, &c), Some(6));
        assert_eq!(class_bits(0o640, 0, 4, &c), Some(4));
        assert_eq!(class_bits(0o640, 0, 0, &c), Some(0));
        c.all_groups = false;
        assert_eq!(
            class_bits(0o640, 0, 0, &c),
            None,
            "group 0 may be unreported"
        );
        assert_eq!(
            class_bits(0o640, 1000, 0, &c),
            Some(6),
            "the owner class needs no groups"
        );
    }

    #[test]
    fn kernel_device_numbers_in_stat_encoding() {
        // 8:1 (sda1) and 259:65536 (a large minor) as stat(2) reports them.
        assert_eq!(
            KernelCreds::user_dev(8 << 20 | 1),
            rustix::fs::makedev(8, 1)
        );
        assert_eq!(
            KernelCreds::user_dev(259 << 20 | 65536),
            rustix::fs::makedev(259, 65536)
        );
    }

    #[test]
    fn an_exited_process_is_checked_through_a_root_with_its_identity() {
        let root = fs::metadata("/").unwrap();
        let gone = u32::MAX - 1;
        let kernel = KernelCreds {
            fsuid: 1000,
            fsgid: 1000,
            cap_effective: 0,
            groups: vec![],
            all_groups: true,
            parent_pid: gone,
            root: Some((root.dev(), root.ino())),
        };
        let facts = check(gone, "openat", "/etc/shadow", Some(&kernel)).unwrap();
        assert!(!facts.allows, "uid 1000 cannot read /etc/shadow: {facts:?}");
        assert_eq!(facts.process, "1000:1000");
        let elsewhere = KernelCreds {
            root: Some((root.dev(), root.ino() + 1)),
            ..kernel
        };
        assert_eq!(check(gone, "openat", "/etc/shadow", Some(&elsewhere)), None);
    }

    #[test]
    fn root_with_dac_override_reads_a_0000_file() {
        let dir = std::env::temp_dir().join(format!("sshtrace-dac-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let me = std::process::id();
        let facts = check(me, "openat", file.to_str().unwrap(), None).unwrap();
        let i_override = creds(me).unwrap().caps & (1 << CAP_DAC_OVERRIDE) != 0;
        assert_eq!(facts.allows, i_override, "{facts:?}");
        assert!(facts.file.starts_with("0000"));
        let exec = check(me, "execve", file.to_str().unwrap(), None).unwrap();
        assert!(!exec.allows, "no execute bit anywhere");
        fs::remove_dir_all(dir).unwrap();
    }
}
