//! Checks that turn a missing prerequisite into one clear line instead of a load failure.

use std::path::Path;

use anyhow::{bail, Result};

use crate::kernel::btf::VMLINUX;

pub fn check() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("sshtrace must run as root (it loads eBPF programs): run it with sudo");
    }
    if !Path::new(VMLINUX).exists() {
        bail!("no kernel BTF at {VMLINUX}: this kernel was built without CONFIG_DEBUG_INFO_BTF");
    }
    Ok(())
}
