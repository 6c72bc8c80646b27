//! Which container a process runs in, from its cgroup path: the naming schemes of Docker
//! (systemd and cgroupfs drivers), containerd (CRI, and `ctr`'s `/<namespace>/<id>`), CRI-O,
//! Podman, LXC, systemd-nspawn and Kubernetes pod slices.

use serde::Serialize;

/// A container as its cgroup path names it (names from the runtime are added later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Container {
    /// Runtime's id (64 hex digits), or the name for LXC and nspawn ([`UNNAMED`] when the
    /// cgroup holds no plain name).
    pub id: String,
    pub name: Option<String>,
    /// `docker`, `podman`, `containerd`, `cri-o`, `lxc`, `systemd-nspawn`, or [`UNKNOWN_RUNTIME`]
    /// until a runtime's API claims the id.
    pub runtime: &'static str,
    /// Kubernetes pod, when the path is a kubepods one or the runtime's labels name one.
    pub pod: Option<Pod>,
    pub cgroup_path: String,
    /// Network namespace inode.
    pub netns: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// From the cgroup path, else the runtime's label; null when neither has it.
    pub uid: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A runtime id under a parent no runtime is known by (e.g. `ctr`'s `/<namespace>/<id>` with
/// a namespace of its user's choosing): the runtime whose API knows the id may say.
pub const UNKNOWN_RUNTIME: &str = "unknown";

/// containerd's namespace for Kubernetes (the CRI plugin's).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The longest LXC or nspawn name repeated as it is.
pub const MAX_NAME: usize = 64;
/// What a container whose cgroup holds no plain name is called.
pub const UNNAMED: &str = "unnamed";

/// A name to repeat as it is: at most [`MAX_NAME`] ASCII letters, digits, `.`, `_` and `-`.
/// A cgroup directory is named by whoever made it (a delegated subtree is a tenant's), so an
/// LXC or nspawn name taken from one may hold anything but `/`.
pub fn is_plain_name(s: &str) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The runtime, id and name of a container known by its name: the name when it is plain,
/// else [`UNNAMED`] and no name.
fn by_name(runtime: &'static str, name: String) -> (&'static str, String, Option<String>) {
    if is_plain_name(&name) {
        (runtime, name.clone(), Some(name))
    } else {
        (runtime, UNNAMED.to_owned(), None)
    }
}

/// systemd escapes `-` in unit names as `\x2d`.
fn unescape(s: &str) -> String {
    s.replace("\\x2d", "-")
}

/// The container named by one cgroup path, if any.
pub fn from_cgroup_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_uid = segments.iter().find_map(|s| pod_uid(s));
    let mut found = None;
    for (i, seg) in segments.iter().enumerate() {
        let seg = seg.trim_end_matches(".scope");
        let runtime_id = [
            ("docker-", "docker"),
            ("libpod-", "podman"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
        ]
        .iter()
        .find_map(|(prefix, runtime)| {
            seg.strip_prefix(prefix)
                .filter(|id| is_id(id))
                .map(|id| (*runtime, id.to_owned()))
        });
        let found_here = if let Some((runtime, id)) = runtime_id {
            Some((runtime, id, None))
        } else if is_id(seg) && i > 0 {
            // cgroupfs drivers: the parent names the runtime.
            let runtime = match segments[i - 1] {
                "docker" => "docker",
                "libpod_parent" => "podman",
                // `ctr run` with cgroupfs: /<containerd namespace>/<id>.
                CRI_NAMESPACE => "containerd",
                p if p.starts_with("pod") || p.starts_with("kubepods") => "containerd",
                _ => UNKNOWN_RUNTIME,
            };
            Some((runtime, seg.to_owned(), None))
        } else if let Some(name) = seg.strip_prefix("machine-").map(unescape) {
            (!name.starts_with("libpod-")).then(|| by_name("systemd-nspawn", name))
        } else if let Some(name) = seg.strip_prefix("lxc.payload.") {
            Some(by_name("lxc", name.to_owned()))
        } else if i > 0 && segments[i - 1] == "lxc" && !seg.starts_with("lxc.") {
            Some(by_name("lxc", seg.to_owned()))
        } else {
            None
        };
        if let Some((runtime, id, name)) = found_here {
            found = Some(Container {
                id,
                name,
                runtime,
                pod: pod_uid.clone().map(|uid| Pod {
                    uid: Some(uid),
                    ..Pod::default()
                }),
                cgroup_path: path.to_owned(),
                netns: None,
            });
            break;
        }
    }
    found
}

/// `kubepods-burstable-pod1a2b_…​.slice` or cgroupfs `pod1a2b-…`.
fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.trim_end_matches(".slice");
    let at = s.rfind("pod")?;
    let uid = &s[at + 3..];
    (uid.len() == 36
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_'))
    .then(|| uid.replace('_', "-"))
}

/// The container of a process, from every line of /proc/PID/cgroup (cgroup v1 controllers and
/// the v2 line alike).
pub fn of_process(pid: u32) -> Option<Container> {
    // Cgroup names are bytes: one that is not UTF-8 must not hide the container.
    let raw = std::fs::read(format!("/proc/{pid}/cgroup")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let mut container = text
        .lines()
        .find_map(|line| from_cgroup_path(line.splitn(3, ':').nth(2)?))?;
    container.netns = netns_of(pid);
    Some(container)
}

pub fn netns_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2c1b0a9e8d7c6b5a493827161504f3e2d1c0b9a8f7e6d5c4b3a29181706f5e";

    fn check(path: &str, runtime: &str, id: &str, pod: Option<&str>) {
        let c = from_cgroup_path(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!((c.runtime, c.id.as_str()), (runtime, id), "{path}");
        assert_eq!(c.pod.and_then(|p| p.uid), pod.map(str::to_owned), "{path}");
    }

    #[test]
    fn docker_both_drivers() {
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            "docker",
            ID,
            None,
        );
        check(&format!("/docker/{ID}"), "docker", ID, None);
    }

    #[test]
    fn podman_systemd_and_cgroupfs() {
        check(
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            "podman",
            ID,
            None,
        );
        check(&format!("/libpod_parent/libpod-{ID}"), "podman", ID, None);
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            "podman",
            ID,
            None,
        );
        assert!(from_cgroup_path(&format!("/machine.slice/libpod-conmon-{ID}.scope")).is_none());
        assert!(from_cgroup_path("/libpod_parent/conmon").is_none());
    }

    #[test]
    fn kubernetes_with_containerd_and_cri_o() {
        let pod = "7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let under = pod.replace('-', "_");
        check(
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/cri-containerd-{ID}.scope"),
            "containerd",
            ID,
            Some(pod),
        );
        check(
            &format!("/kubepods.slice/kubepods-pod{under}.slice/crio-{ID}.scope"),
            "cri-o",
            ID,
            Some(pod),
        );
        check(
            &format!("/kubepods/besteffort/pod{pod}/{ID}"),
            "containerd",
            ID,
            Some(pod),
        );
        check(
            &format!("/kubepods/pod{pod}/{ID}"),
            "containerd",
            ID,
            Some(pod),
        );
        assert!(from_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{under}.slice/crio-conmon-{ID}.scope"
        ))
        .is_none());
    }

    /// `ctr run` with cgroupfs puts a container in `/<namespace>/<id>`: Kubernetes' namespace
    /// is containerd's; another is a runtime's only once its API says so.
    #[test]
    fn containerd_namespaces() {
        check(&format!("/k8s.io/{ID}"), "containerd", ID, None);
        check(&format!("/default/{ID}"), UNKNOWN_RUNTIME, ID, None);
    }

    #[test]
    fn lxc_and_nspawn_by_name() {
        check("/lxc.payload.web01", "lxc", "web01", None);
        check("/lxc/web01/init.scope", "lxc", "web01", None);
        assert!(from_cgroup_path("/lxc.monitor.web01").is_none());
        check(
            "/machine.slice/machine-build\\x2dbox.scope/payload",
            "systemd-nspawn",
            "build-box",
            None,
        );
    }

    /// A cgroup named by a tenant: control bytes, non-ASCII, or too long, is not repeated.
    #[test]
    fn lxc_and_nspawn_names_that_are_not_plain_are_unnamed() {
        for path in [
            "/lxc.payload.web\n01",
            "/lxc.payload.evil\x1b[31m",
            "/lxc/caf\u{e9}",
            "/lxc/\u{202e}txt",
            "/machine.slice/machine-a\\x20b.scope",
        ] {
            let c = from_cgroup_path(path).unwrap_or_else(|| panic!("no container in {path:?}"));
            assert_eq!(
                (c.id.as_str(), c.name.as_deref()),
                (UNNAMED, None),
                "{path:?}"
            );
            assert_eq!(c.cgroup_path, path, "kept for JSON, which escapes it");
        }
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(
            from_cgroup_path(&format!("/lxc/{long}")).unwrap().id,
            UNNAMED
        );
        let longest = "x".repeat(MAX_NAME);
        check(&format!("/lxc/{longest}"), "lxc", &longest, None);
        check("/lxc.payload.web_01.x-y", "lxc", "web_01.x-y", None);
    }

    /// Ids are 64 hex digits: anything else in a runtime's place is no container id.
    #[test]
    fn runtime_ids_are_hex_only() {
        let fake = format!("{}\u{e9}", &ID[..63]);
        assert!(from_cgroup_path(&format!("/system.slice/docker-{fake}.scope")).is_none());
        assert!(from_cgroup_path(&format!("/docker/{}", ID.replace('a', "g"))).is_none());
    }

    #[test]
    fn host_processes_have_none() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/ssh.service",
            "/init.scope",
        ] {
            assert!(from_cgroup_path(path).is_none(), "{path}");
        }
    }
}
