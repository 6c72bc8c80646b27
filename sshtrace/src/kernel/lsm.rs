//! Which Linux Security Modules can deny an access on this host, from securityfs
//! (`/sys/kernel/security/lsm`, mounted privately when absent) and, for BPF-LSM, from whether
//! any BPF LSM program is loaded.

use std::{fs, path::Path};

use aya::programs::loaded_programs;
use aya_obj::generated::bpf_prog_type;

const SECURITYFS: &str = "/sys/kernel/security";

/// LSMs that can refuse file and network access to a process (lockdown, capability, yama and
/// the like restrict other things).
const ACCESS_CONTROL: [&str; 7] = [
    "selinux", "apparmor", "smack", "tomoyo", "landlock", "ipe", "bpf",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActiveLsms {
    /// Everything in /sys/kernel/security/lsm, in order; empty when it could not be read.
    pub all: Vec<String>,
    /// Those that could have denied a file access here (BPF-LSM only with programs loaded).
    pub access_control: Vec<String>,
    /// Why the list is unknown, when it is.
    pub unknown_because: Option<String>,
}

impl ActiveLsms {
    /// Reads the list, mounting securityfs privately if needed. Call before threads exist.
    pub fn discover() -> Self {
        let list = Path::new(SECURITYFS).join("lsm");
        if !list.exists() {
            if let Err(err) = super::mounts::mount_private("securityfs", Path::new(SECURITYFS)) {
                return Self {
                    unknown_because: Some(format!("securityfs: {err:#}")),
                    ..Self::default()
                };
            }
        }
        match fs::read_to_string(&list) {
            Ok(text) => Self::from_list(&text, bpf_lsm_programs_loaded()),
            Err(err) => Self {
                unknown_because: Some(format!("{}: {err}", list.display())),
                ..Self::default()
            },
        }
    }

    pub fn from_list(text: &str, bpf_programs: bool) -> Self {
        let all: Vec<String> = text
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let access_control = all
            .iter()
            .filter(|l| {
                ACCESS_CONTROL.contains(&l.as_str()) && (l.as_str() != "bpf" || bpf_programs)
            })
            .cloned()
            .collect();
        Self {
            all,
            access_control,
            unknown_because: None,
        }
    }

    /// The LSM that must have denied an access the DAC allowed, when only one could have.
    pub fn sole_access_control(&self) -> Option<&str> {
        match self.access_control.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

fn bpf_lsm_programs_loaded() -> bool {
    loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.program_type() == bpf_prog_type::BPF_PROG_TYPE_LSM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_access_control_lsms_count() {
        let lsms = ActiveLsms::from_list("lockdown,capability,landlock,bpf\n", false);
        assert_eq!(lsms.access_control, vec!["landlock"]);
        assert_eq!(lsms.sole_access_control(), Some("landlock"));
        let with_bpf = ActiveLsms::from_list("lockdown,capability,landlock,bpf", true);
        assert_eq!(with_bpf.sole_access_control(), None);
        let none = ActiveLsms::from_list("capability,yama", false);
        assert!(none.access_control.is_empty());
    }
}
