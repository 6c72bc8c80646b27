//! Would the file mode bits (DAC) have allowed an access that failed with EACCES? If they
//! would, an LSM refused it; if not, it is a plain permission problem. Read from /proc and the
//! file itself (through the process's root) when the failure is seen. POSIX ACLs are not
//! evaluated.

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
    /// What the mode bits refused, when they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

struct Creds {
    uid: u32,
    gids: Vec<u32>,
    caps: u64,
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
    Some(Creds { uid, gids, caps })
}

/// The permission class bits (rwx) that apply to `creds` for a file.
fn class_bits(mode: u32, owner: u32, group: u32, c: &Creds) -> u32 {
    if c.uid == owner {
        (mode >> 6) & 7
    } else if c.gids.contains(&group) {
        (mode >> 3) & 7
    } else {
        mode & 7
    }
}

/// Checks `syscall` on `path` for process `pid`: search on every ancestor directory, then read
/// (or execute, for execve) on the file.
pub fn check(pid: u32, syscall: &str, path: &str) -> Option<DacFacts> {
    let c = creds(pid)?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let absolute = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        cwd?.join(path)
    };
    let has = |cap: u32| c.caps & (1 << cap) != 0;
    let process = format!("{}:{}", c.uid, c.gids[0]);
    let within = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for dir in absolute.ancestors().skip(1) {
        let meta = fs::metadata(within(dir)).ok()?;
        let search = has(CAP_DAC_OVERRIDE)
            || has(CAP_DAC_READ_SEARCH)
            || class_bits(meta.mode(), meta.uid(), meta.gid(), &c) & 1 != 0;
        if !search {
            return Some(DacFacts {
                allows: false,
                file: format!("{:04o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid()),
                process,
                refused: Some(format!("search on {}", dir.display())),
            });
        }
    }
    let meta = fs::metadata(within(&absolute)).ok()?;
    let mode = meta.mode();
    let bits = class_bits(mode, meta.uid(), meta.gid(), &c);
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
        refused: (!allows).then(|| format!("{wanted} on {path}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_group_other_classes() {
        let c = Creds {
            uid: 1000,
            gids: vec![100, 4],
            caps: 0,
        };
        assert_eq!(class_bits(0o640, 1000, 0, &c), 6);
        assert_eq!(class_bits(0o640, 0, 4, &c), 4);
        assert_eq!(class_bits(0o640, 0, 0, &c), 0);
    }

    #[test]
    fn root_with_dac_override_reads_a_0000_file() {
        let dir = std::env::temp_dir().join(format!("sshtrace-dac-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let me = std::process::id();
        let facts = check(me, "openat", file.to_str().unwrap()).unwrap();
        let i_override = creds(me).unwrap().caps & (1 << CAP_DAC_OVERRIDE) != 0;
        assert_eq!(facts.allows, i_override, "{facts:?}");
        assert!(facts.file.starts_with("0000"));
        let exec = check(me, "execve", file.to_str().unwrap()).unwrap();
        assert!(!exec.allows, "no execute bit anywhere");
        fs::remove_dir_all(dir).unwrap();
    }
}
