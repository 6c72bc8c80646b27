//! A verdict's container, named after judging: the runtime's name for it (as the runtimes
//! answered so far; the first verdict of a new container may have none yet) and its
//! Kubernetes pod's namespace and name. Kept out of the rules, which read no host.

use super::runtime::{pod_by_uid, ContainerNames};
use crate::verdict::Verdict;

pub fn name_container(verdict: &mut Verdict, names: &ContainerNames) {
    let Some(container) = verdict.container.as_mut() else {
        return;
    };
    if container.name.is_none() {
        container.name = names.get(&container.id);
    }
    if let Some(pod) = container.pod.as_mut() {
        if let Some((namespace, name)) = pod_by_uid(&pod.uid) {
            pod.namespace = Some(namespace);
            pod.name = Some(name);
        }
    }
}
