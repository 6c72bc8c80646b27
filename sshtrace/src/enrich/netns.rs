//! Names of the network namespaces on this host, so that a firewall is named where its rules
//! are: this host's own namespace (the one sshtrace runs in), and those `ip netns` names in
//! /run/netns (podman's, CNI plugins' and an operator's own). Read before judging, never on
//! the event path; a namespace without a name is shown by its inode.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt};

use serde_json::{json, Value};

const NAMED_NETNS_DIR: &str = "/run/netns";
/// At most this many names are read: a host with more is still served, the rest by inode.
const MAX_NAMES: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct NetnsNames {
    /// The inode of the namespace sshtrace runs in.
    pub host: Option<u32>,
    pub named: BTreeMap<u32, String>,
}

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
        Self { host, named }
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
        })
    }

    /// Where a firewall is, in words: "this host's firewall" or a namespace's.
    pub fn firewall_of(&self, inode: u32) -> String {
        if self.is_host(inode) {
            return "this host's firewall (netfilter)".into();
        }
        match self.named.get(&inode) {
            Some(name) => format!(
                "the firewall (netfilter) of network namespace \"{name}\" (inode {inode}) on \
                 this host"
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
