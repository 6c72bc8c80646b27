//! Which Linux Security Modules can deny an access on this host, from securityfs
//! (`/sys/kernel/security/lsm`, mounted privately when absent). An LSM that is active but has
//! no policy denies nothing, and is not counted: BPF-LSM without a loaded program, AppArmor
//! without a loaded profile, TOMOYO without an enforcing profile, IPE without an active policy
//! (Debian's kernels enable them all with no policy).

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
            Ok(text) => Self::from_list(&text, &has_policy),
            Err(err) => Self {
                unknown_because: Some(format!("{}: {err}", list.display())),
                ..Self::default()
            },
        }
    }

    /// `has_policy(lsm)`: whether an access-control LSM has a policy that can deny.
    pub fn from_list(text: &str, has_policy: &dyn Fn(&str) -> bool) -> Self {
        let all: Vec<String> = text
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let access_control = all
            .iter()
            .filter(|l| ACCESS_CONTROL.contains(&l.as_str()) && has_policy(l))
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

/// Whether `lsm` has a policy loaded that can deny; true when that cannot be read, so that
/// an LSM is never ruled out without evidence.
fn has_policy(lsm: &str) -> bool {
    let read = |name: &str| fs::read_to_string(Path::new(SECURITYFS).join(name)).ok();
    match lsm {
        "bpf" => bpf_lsm_programs_loaded(),
        "apparmor" => read("apparmor/profiles").is_none_or(|p| !p.trim().is_empty()),
        "tomoyo" => read("tomoyo/profile").is_none_or(|p| tomoyo_enforces(&p)),
        "ipe" => ipe_policy_active(Path::new(SECURITYFS)),
        _ => true,
    }
}

/// IPE enforces only an activated policy (`ipe/policies/NAME/active` reads 1); without one
/// it allows everything. Unreadable: assumed active.
fn ipe_policy_active(securityfs: &Path) -> bool {
    let Ok(policies) = fs::read_dir(securityfs.join("ipe/policies")) else {
        return true;
    };
    policies
        .filter_map(Result::ok)
        .any(|p| fs::read_to_string(p.path().join("active")).is_ok_and(|a| a.trim() == "1"))
}

/// TOMOYO denies only in a profile whose mode is `enforcing`.
fn tomoyo_enforces(profiles: &str) -> bool {
    profiles.contains("mode=enforcing")
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
        let lsms = ActiveLsms::from_list("lockdown,capability,landlock,bpf\n", &|l| l != "bpf");
        assert_eq!(lsms.access_control, vec!["landlock"]);
        assert_eq!(lsms.sole_access_control(), Some("landlock"));
        let with_bpf = ActiveLsms::from_list("lockdown,capability,landlock,bpf", &|_| true);
        assert_eq!(with_bpf.sole_access_control(), None);
        let none = ActiveLsms::from_list("capability,yama", &|_| true);
        assert!(none.access_control.is_empty());
    }

    /// Debian's kernels: AppArmor and TOMOYO active without a policy deny nothing.
    #[test]
    fn active_lsms_without_policy_do_not_count() {
        let list = "lockdown,capability,landlock,yama,apparmor,tomoyo,bpf";
        let lsms = ActiveLsms::from_list(list, &|l| l == "landlock");
        assert_eq!(lsms.sole_access_control(), Some("landlock"));
        assert!(!tomoyo_enforces(
            "PROFILE_VERSION=20150505\n0-CONFIG={ mode=disabled }\n"
        ));
        assert!(tomoyo_enforces(
            "1-CONFIG={ mode=enforcing grant_log=no }\n"
        ));
    }
}
