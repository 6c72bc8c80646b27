//! What a runtime's answer is allowed to say: its name for the container when Docker or Podman
//! would allow it, and the Kubernetes names its labels carry when Kubernetes would allow them.
//! Labels are set by whoever created the container (through `ctr`, any root process; through
//! the kubelet, a tenant's pod spec), so anything else is not repeated, and said once.

use super::{Answer, PodNames, RuntimeNames};

/// The labels Kubernetes' CRI plugin (and cri-dockerd) set on a pod's containers.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Whether a label is one sshtrace reads: the others are not kept.
pub fn is_read(key: &str) -> bool {
    [POD_NAME, POD_NAMESPACE, POD_UID, CONTAINER_NAME].contains(&key)
}

/// A value not repeated, for the note on standard error.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub what: &'static str,
    pub value: String,
}

/// The names an answer gives, each checked; the values refused.
pub fn checked(answer: Answer) -> (RuntimeNames, Vec<Refused>) {
    let mut refused = Vec::new();
    let mut take = |what: &'static str, value: Option<String>, valid: fn(&str) -> bool| {
        let value = value?;
        if valid(&value) {
            Some(value)
        } else {
            refused.push(Refused { what, value });
            None
        }
    };
    let mut labels = answer.labels;
    let mut label = |key| labels.remove(key);
    // The runtime's own name for it (Docker, Podman), else the Kubernetes container's.
    let name = take("name", answer.name, is_runtime_name)
        .or_else(|| take(CONTAINER_NAME, label(CONTAINER_NAME), is_dns_label));
    let pod_name = take(POD_NAME, label(POD_NAME), is_dns_subdomain);
    let namespace = take(POD_NAMESPACE, label(POD_NAMESPACE), is_dns_label);
    let uid = take(POD_UID, label(POD_UID), is_pod_uid);
    let pod = (pod_name.is_some() || namespace.is_some()).then_some(PodNames {
        namespace,
        name: pod_name,
        uid,
    });
    let names = RuntimeNames {
        name,
        pod,
        runtime: answer.runtime,
    };
    (names, refused)
}

/// The labels of an answer as a map (tests).
#[cfg(test)]
pub fn map(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A container name as Docker and Podman allow it (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most
/// 255 bytes.
pub fn is_runtime_name(name: &str) -> bool {
    name.len() <= 255
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An RFC 1123 label as Kubernetes allows it for namespaces and container names: at most 63
/// lower-case letters, digits and `-`, beginning and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain as Kubernetes allows it for pod names: labels joined by `.`, at
/// most 253 bytes.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A pod's uid: a UUID, 36 hex digits and `-`.
fn is_pod_uid(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: Option<&str>, labels: &[(&str, &str)]) -> Answer {
        Answer {
            runtime: Some("containerd"),
            name: name.map(str::to_owned),
            labels: map(labels),
        }
    }

    const UID: &str = "7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";

    #[test]
    fn cri_labels_name_the_container_and_its_pod() {
        let (names, refused) = checked(answer(
            None,
            &[
                (CONTAINER_NAME, "sshd"),
                (POD_NAME, "jump-0.bastion"),
                (POD_NAMESPACE, "kube-system"),
                (POD_UID, UID),
            ],
        ));
        assert_eq!(names.name.as_deref(), Some("sshd"));
        assert_eq!(
            names.pod,
            Some(PodNames {
                namespace: Some("kube-system".into()),
                name: Some("jump-0.bastion".into()),
                uid: Some(UID.into()),
            })
        );
        assert_eq!(names.runtime, Some("containerd"));
        assert!(refused.is_empty());
    }

    /// Docker's own name wins over the Kubernetes container's (cri-dockerd's `k8s_…` names).
    #[test]
    fn the_runtime_name_comes_first() {
        let (names, _) = checked(answer(Some("k8s_sshd_jump"), &[(CONTAINER_NAME, "sshd")]));
        assert_eq!(names.name.as_deref(), Some("k8s_sshd_jump"));
        assert_eq!(names.pod, None);
    }

    /// A tenant's values that Kubernetes would refuse are not repeated, and each is reported.
    #[test]
    fn hostile_labels_are_refused() {
        let long = "a".repeat(64);
        let (names, refused) = checked(answer(
            Some("a\x1b[31mb"),
            &[
                (CONTAINER_NAME, &long),
                (POD_NAME, "jump\n0"),
                (POD_NAMESPACE, "Kube-System"),
                (POD_UID, "../../etc"),
            ],
        ));
        assert_eq!(names.name, None);
        assert_eq!(names.pod, None);
        let what: Vec<&str> = refused.iter().map(|r| r.what).collect();
        assert_eq!(
            what,
            ["name", CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID]
        );
    }

    #[test]
    fn kubernetes_names() {
        for good in ["a", "sshd-0", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "caf\u{e9}",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("jump-0.bastion.example"));
        for bad in ["", "a..b", ".a", "a.", &format!("{}.a", "a".repeat(252))] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    /// A name a runtime answers is repeated only when it is one Docker or Podman allows.
    #[test]
    fn runtime_names_are_plain() {
        assert!(is_runtime_name("sshbox_1.web-2"));
        for bad in [
            "",
            "-x",
            "a\x1bb",
            "a\nb",
            "caf\u{e9}",
            "a/b",
            &"a".repeat(256),
        ] {
            assert!(!is_runtime_name(bad), "{bad:?}");
        }
    }
}
