//! The kubelet's pod log directories, `/var/log/pods/<namespace>_<name>_<uid>`: a pod's
//! namespace and name from its uid (in the cgroup path) wherever no runtime API is reachable.

use std::path::Path;

use super::{
    labels::{is_dns_label, is_dns_subdomain},
    PodNames,
};

pub const POD_LOGS: &str = "/var/log/pods";

/// The pod whose log directory under `root` ends in `_<uid>`.
pub fn pod_by_uid(root: &Path, uid: &str) -> Option<PodNames> {
    let dir = std::fs::read_dir(root).ok()?;
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|entry| parse_pod_dir(&entry, uid))
}

/// Namespaces and pod names hold no `_`, so the first one ends the namespace.
fn parse_pod_dir(entry: &str, uid: &str) -> Option<PodNames> {
    let rest = entry.strip_suffix(uid)?.strip_suffix('_')?;
    let (namespace, name) = rest.split_once('_')?;
    (is_dns_label(namespace) && is_dns_subdomain(name)).then(|| PodNames {
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(uid.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";

    #[test]
    fn pod_log_directories() {
        let pod = parse_pod_dir(&format!("kube-system_sshd-jump-0_{UID}"), UID).unwrap();
        assert_eq!(
            (pod.namespace.as_deref(), pod.name.as_deref()),
            (Some("kube-system"), Some("sshd-jump-0"))
        );
        assert_eq!(parse_pod_dir("default_web_other-uid", UID), None);
        assert_eq!(parse_pod_dir(&format!("ns_we\x1bb_{UID}"), UID), None);
        assert_eq!(parse_pod_dir(&format!("ns_a_b_{UID}"), UID), None);
    }

    #[test]
    fn found_by_uid_in_a_directory() {
        let root = std::env::temp_dir().join(format!("sshtrace-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in [
            "default_web_0a1b2c3d-0000-0000-0000-000000000000".to_owned(),
            format!("bastion_jump-0_{UID}"),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let pod = pod_by_uid(&root, UID).unwrap();
        assert_eq!(pod.name.as_deref(), Some("jump-0"));
        assert_eq!(pod_by_uid(&root, "no-such-uid"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
