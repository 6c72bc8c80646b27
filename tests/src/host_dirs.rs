//! Directories a daemon under test makes at fixed places on the host, which it cannot be told
//! to make elsewhere (containerd's `/run/containerd/s` for its shims' sockets, a runtime's
//! parent cgroup): removed when the guard drops, only those that were absent when it was
//! made, and only once empty (`rmdir`), so that nothing another user of them holds is lost.

use std::{fs, path::PathBuf};

pub struct HostDirs {
    made: Vec<PathBuf>,
}

impl HostDirs {
    /// Notes which of `paths` do not exist yet; give parents before their children.
    pub fn absent(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            made: paths.into_iter().filter(|p| !p.exists()).collect(),
        }
    }
}

impl Drop for HostDirs {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The cgroup directory `name` (a child of the root) in every hierarchy: each cgroup v1
/// controller's and the unified one.
pub fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.join(name)];
    }
    fs::read_dir(&root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|h| h.join("cgroup.procs").exists())
        .map(|h| h.join(name))
        .collect()
}

/// Unmounts what is still mounted beneath `dir` (a daemon killed before it could), deepest
/// first, so that the directory can be removed.
pub fn unmount_beneath(dir: &std::path::Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| std::path::Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = crate::run(std::process::Command::new("umount").args(["-l", point]));
    }
}
