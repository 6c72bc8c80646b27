//! Directories a daemon under test makes at fixed places on the host, which it cannot be told
//! to make elsewhere (containerd's `/run/containerd/s` for its shims' sockets, a runtime's
//! parent cgroup): removed when the last guard of their kind drops, only those that were
//! absent when the first was made, and only once empty (`rmdir`), so that nothing another
//! user of them holds is lost. Two daemons of a kind in one test process (tests run in
//! parallel) share the places: the first notes them, the last removes them.

use std::{fs, path::PathBuf, sync::Mutex};

/// How many guards of a kind are alive, and the directories the first found absent.
pub type Places = Mutex<(usize, Vec<PathBuf>)>;

/// The places of a kind, e.g. `static CONTAINERD: Places = host_dirs::places();`.
pub const fn places() -> Places {
    Mutex::new((0, Vec::new()))
}

pub struct HostDirs {
    places: &'static Places,
}

impl HostDirs {
    /// Joins the guards of `places`; the first notes which of `paths()` do not exist yet
    /// (parents before their children).
    pub fn absent(places: &'static Places, paths: impl FnOnce() -> Vec<PathBuf>) -> Self {
        let mut shared = places
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared.0 == 0 {
            shared.1 = paths().into_iter().filter(|p| !p.exists()).collect();
        }
        shared.0 += 1;
        Self { places }
    }
}

impl Drop for HostDirs {
    fn drop(&mut self) {
        let mut shared = (self.places.lock()).unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.0 -= 1;
        if shared.0 == 0 {
            for dir in shared.1.drain(..).rev() {
                let _ = fs::remove_dir(dir);
            }
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
