//! Names of the network namespaces on this host, so that a firewall is named where its rules
//! are: this host's own namespace (the one sshtrace runs in), and those `ip netns` names in
//! /run/netns (podman's, CNI plugins' and an operator's own). Read before judging, never on
//! the event path; a namespace without a name is shown by its inode.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
};

use serde_json::{json, Value};

use super::container::{self, Container};

const NAMED_NETNS_DIR: &str = "/run/netns";
/// At most this many processes are looked at for the container of a namespace.
const MAX_PROCESSES: usize = 65536;
/// At most this many names are read: a host with more is still served, the rest by inode.
const MAX_NAMES: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct NetnsNames {
    /// The inode of the namespace sshtrace runs in.
    pub host: Option<u32>,
    pub named: BTreeMap<u32, String>,
    /// The container a namespace belongs to, found through a process in it.
    pub containers: BTreeMap<u32, Container>,
    /// Namespaces already looked for (with a container or not): a flood of drops in one
    /// walks /proc once.
    searched: BTreeSet<u32>,
}

/// Namespaces remembered as searched before the memory is started afresh.
const MAX_SEARCHED: usize = 1024;

impl NetnsNames {
    pub fn read() -> Self {
        let host = std::fs::metadata("/proc/self/ns/net")
            .ok()
            .and_then(|m| u32::try_from(m.ino()).ok());
        let mut named = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(NAMED_NETNS_DIR) {
            for entry in dir.flatten().take(MAX_NAMES) {
                // The bind mount's inode is the namespace's (nsfs); a file not mounted over
                // is a tmpfs inode, which matches none.
                let Ok(meta) = std::fs::metadata(entry.path()) else {
                    continue;
                };
                if let Ok(inode) = u32::try_from(meta.ino()) {
                    // Escaped by every output; only its length is bounded here.
                    let name: String = entry
                        .file_name()
                        .to_string_lossy()
                        .chars()
                        .take(64)
                        .collect();
                    named.insert(inode, name);
                }
            }
        }
        Self {
            host,
            named,
            ..Self::default()
        }
    }

    /// The names read again (a namespace may have come or gone); what was found of
    /// containers is kept.
    pub fn refresh(&mut self) {
        let fresh = Self::read();
        self.host = fresh.host;
        self.named = fresh.named;
        if self.searched.len() > MAX_SEARCHED {
            self.searched.clear();
            self.containers.clear();
        }
    }

    /// The containers of the namespaces in `wanted` (other than the host's): one walk of /proc
    /// for all of them, to the first process in each.
    pub fn find_containers(&mut self, wanted: impl IntoIterator<Item = u32>) {
        let mut missing: BTreeSet<u32> = wanted
            .into_iter()
            .filter(|&inode| !self.is_host(inode) && !self.searched.contains(&inode))
            .collect();
        self.searched.extend(missing.iter().copied());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten().take(MAX_PROCESSES) {
            if missing.is_empty() {
                return;
            }
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Some(inode) = container::netns_of(pid).and_then(|n| u32::try_from(n).ok()) else {
                continue;
            };
            if missing.remove(&inode) {
                if let Some(c) = container::of_process(pid) {
                    self.containers.insert(inode, c);
                }
            }
        }
    }

    /// Whether `inode` is this host's own namespace (or unknown: 0, taken as the host's).
    pub fn is_host(&self, inode: u32) -> bool {
        inode == 0 || self.host == Some(inode)
    }

    /// `{inode, name, host}` for a verdict's details.
    pub fn describe(&self, inode: u32) -> Value {
        json!({
            "inode": (inode != 0).then_some(inode),
            "name": self.named.get(&inode),
            "host": self.is_host(inode),
            "container": self.containers.get(&inode).map(|c| json!({
                "id": c.id,
                "runtime": c.runtime,
            })),
        })
    }

    /// Where a firewall is, in words: "this host's firewall" or a namespace's.
    pub fn firewall_of(&self, inode: u32) -> String {
        if self.is_host(inode) {
            return "this host's firewall (netfilter)".into();
        }
        let container = self
            .containers
            .get(&inode)
            .map(|c| {
                format!(
                    ", container {} ({})",
                    c.id.chars().take(12).collect::<String>(),
                    c.runtime
                )
            })
            .unwrap_or_default();
        match self.named.get(&inode) {
            Some(name) => format!(
                "the firewall (netfilter) of network namespace \"{name}\" (inode {inode}{container}) \
                 on this host"
            ),
            None if !container.is_empty() => format!(
                "the firewall (netfilter) of network namespace {inode}{container} on this host"
            ),
            None => format!(
                "the firewall (netfilter) of network namespace {inode} on this host (unnamed: a \
                 container's or a CNI's; `lsns -t net` lists its processes)"
            ),
        }
    }

    /// How to list that namespace's rules.
    pub fn rules_command(&self, inode: u32) -> String {
        let list = "iptables -S; ip6tables -S; nft list ruleset";
        if self.is_host(inode) {
            return format!("`{list}`");
        }
        match self.named.get(&inode) {
            Some(name) => format!("`ip netns exec {name} sh -c '{list}'`"),
            None => format!(
                "`nsenter --net=/proc/PID/ns/net sh -c '{list}'` with a PID of that namespace"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> NetnsNames {
        let mut n = NetnsNames {
            host: Some(1),
            ..NetnsNames::default()
        };
        n.named.insert(7, "router".into());
        n.containers.insert(
            9,
            Container {
                id: "3f2c9a0b1d2e4f5a".into(),
                runtime: "podman",
                ..Container::default()
            },
        );
        n
    }

    #[test]
    fn the_host_a_named_namespace_and_a_containers_are_told_apart() {
        let n = names();
        assert_eq!(n.firewall_of(1), "this host's firewall (netfilter)");
        assert_eq!(n.firewall_of(0), "this host's firewall (netfilter)");
        assert!(n
            .firewall_of(7)
            .contains("network namespace \"router\" (inode 7)"));
        assert!(n.firewall_of(9).contains("container 3f2c9a0b1d2e (podman)"));
        assert!(n.firewall_of(11).contains("unnamed"));
        assert!(n.rules_command(7).starts_with("`ip netns exec router "));
        let d = n.describe(9);
        assert_eq!(d["container"]["id"], "3f2c9a0b1d2e4f5a");
        assert_eq!(d["host"], false);
    }
}
