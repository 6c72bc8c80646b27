//! Names of the kernel's enum values, decoded from the running kernel's BTF: the numbers of
//! `enum sk_rst_reason` and `enum skb_drop_reason` differ between kernels.

use std::collections::HashMap;

use super::btf::KernelBtf;

#[derive(Clone, Debug, Default)]
pub struct KernelNames {
    rst_reasons: HashMap<u32, String>,
    drop_reasons: HashMap<u32, String>,
    tcp_states: HashMap<i32, String>,
}

impl KernelNames {
    pub fn from_btf(btf: &KernelBtf) -> Self {
        let table = |name: Option<&str>, member: Option<&str>, prefix: &str| {
            btf.enum_values(name, member)
                .unwrap_or_default()
                .into_iter()
                .map(|(n, v)| (v, n.strip_prefix(prefix).unwrap_or(&n).to_owned()))
                .collect::<Vec<_>>()
        };
        let mut rst_reasons: HashMap<u32, String> =
            table(Some("sk_rst_reason"), None, "SK_RST_REASON_")
                .into_iter()
                .map(|(v, n)| (v as u32, n))
                .collect();
        if rst_reasons.is_empty() {
            // Before 6.10 refusals are seen as the segment's NO_SOCKET drop (see the probe).
            rst_reasons.insert(sshtrace_common::REASON_NO_SOCKET_DROP, "NO_SOCKET".into());
        }
        Self {
            rst_reasons,
            drop_reasons: table(Some("skb_drop_reason"), None, "SKB_DROP_REASON_")
                .into_iter()
                .map(|(v, n)| (v as u32, n))
                .collect(),
            tcp_states: table(None, Some("TCP_ESTABLISHED"), "")
                .into_iter()
                .map(|(v, n)| (v as i32, n))
                .collect(),
        }
    }

    /// For tests: names given directly.
    #[cfg(test)]
    pub fn from_tables(rst: &[(u32, &str)], states: &[(i32, &str)]) -> Self {
        Self {
            rst_reasons: rst.iter().map(|&(v, n)| (v, n.to_owned())).collect(),
            drop_reasons: HashMap::new(),
            tcp_states: states.iter().map(|&(v, n)| (v, n.to_owned())).collect(),
        }
    }

    /// For tests: drop reasons given directly.
    #[cfg(test)]
    pub fn with_drop_reasons(mut self, drop: &[(u32, &str)]) -> Self {
        self.drop_reasons = drop.iter().map(|&(v, n)| (v, n.to_owned())).collect();
        self
    }

    /// E.g. `NO_SOCKET`, `TCP_ABORT_ON_CLOSE`; unknown numbers stay visible as numbers.
    pub fn rst_reason(&self, value: u32) -> String {
        self.rst_reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{value}"))
    }

    /// E.g. `TCP_ESTABLISHED`.
    pub fn tcp_state(&self, value: i32) -> String {
        self.tcp_states
            .get(&value)
            .cloned()
            .unwrap_or_else(|| format!("TCP_STATE_{value}"))
    }

    /// The number of a reason name on this kernel, if it has one.
    pub fn rst_reason_value(&self, name: &str) -> Option<u32> {
        self.rst_reasons
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
    }

    pub fn drop_reason_value(&self, name: &str) -> Option<u32> {
        self.drop_reasons
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
    }

    pub fn tcp_state_value(&self, name: &str) -> Option<i32> {
        self.tcp_states
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
    }
}
