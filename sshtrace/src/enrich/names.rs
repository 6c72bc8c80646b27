//! A verdict's container, named after judging from what the runtimes answered so far (the
//! first verdict of a new container may have no names yet): the runtime's name for it, its
//! Kubernetes pod's namespace and name, and the runtime itself when only its API could tell.
//! Kept out of the rules, which read no host.

use super::{
    container::{Container, Pod, UNKNOWN_RUNTIME},
    runtime::{ContainerNames, RuntimeNames},
};
use crate::verdict::Verdict;

pub fn name_container(verdict: &mut Verdict, names: &ContainerNames) {
    let Some(container) = verdict.container.as_mut() else {
        return;
    };
    if let Some(found) = names.get(container) {
        apply(container, found);
    }
}

fn apply(container: &mut Container, found: RuntimeNames) {
    if container.name.is_none() {
        container.name = found.name;
    }
    if container.runtime == UNKNOWN_RUNTIME {
        if let Some(runtime) = found.runtime {
            container.runtime = runtime;
        }
    }
    if let Some(names) = found.pod {
        let pod = container.pod.get_or_insert_with(Pod::default);
        // The cgroup path's uid is the kernel's: a label's only fills a gap.
        pod.uid = pod.uid.take().or(names.uid);
        pod.namespace = names.namespace;
        pod.name = names.name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::runtime::PodNames;

    #[test]
    fn labels_name_a_ctr_container_and_its_pod() {
        let mut c = Container {
            id: "3f2c".into(),
            runtime: UNKNOWN_RUNTIME,
            cgroup_path: "/build/3f2c".into(),
            ..Container::default()
        };
        apply(
            &mut c,
            RuntimeNames {
                name: Some("sshd".into()),
                pod: Some(PodNames {
                    namespace: Some("bastion".into()),
                    name: Some("jump-0".into()),
                    uid: Some("label-uid".into()),
                }),
                runtime: Some("containerd"),
            },
        );
        assert_eq!(c.name.as_deref(), Some("sshd"));
        assert_eq!(c.runtime, "containerd");
        let pod = c.pod.unwrap();
        assert_eq!(
            (
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                pod.uid.as_deref()
            ),
            (Some("bastion"), Some("jump-0"), Some("label-uid"))
        );
    }

    /// What the cgroup path says stands: its runtime and its pod uid.
    #[test]
    fn the_cgroup_path_is_not_overridden() {
        let mut c = Container {
            id: "3f2c".into(),
            runtime: "docker",
            pod: Some(Pod {
                uid: Some("cgroup-uid".into()),
                ..Pod::default()
            }),
            ..Container::default()
        };
        apply(
            &mut c,
            RuntimeNames {
                name: None,
                pod: Some(PodNames {
                    uid: Some("label-uid".into()),
                    ..PodNames::default()
                }),
                runtime: Some("containerd"),
            },
        );
        assert_eq!(c.runtime, "docker");
        assert_eq!(c.pod.unwrap().uid.as_deref(), Some("cgroup-uid"));
    }
}
