//! Mounting what sshtrace reads (tracefs, securityfs) when the host has not: in a private
//! mount namespace of sshtrace's own, so nothing is left behind on the host, not even after
//! `kill -9`. Must run before any thread exists: unshare(CLONE_NEWNS) refuses threaded callers.

use std::path::Path;

use anyhow::{bail, Result};
use rustix::{
    mount::{MountFlags, MountPropagationFlags},
    thread::UnshareFlags,
};

/// Set once this process has its own mount namespace.
static PRIVATE: std::sync::OnceLock<()> = std::sync::OnceLock::new();

fn enter_private_namespace() -> Result<()> {
    if PRIVATE.get().is_some() {
        return Ok(());
    }
    // SAFETY: only a new mount namespace; the descriptor table stays shared (unsharing it,
    // `UnshareFlags::FILES`, is what makes rustix call this unsafe).
    if let Err(e) = unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) } {
        bail!("cannot make a private mount namespace: {e}");
    }
    if let Err(e) = rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    ) {
        bail!("cannot make the mount namespace private: {e}");
    }
    let _ = PRIVATE.set(());
    Ok(())
}

/// Mounts a filesystem of `fstype` on `dir`, privately.
pub fn mount_private(fstype: &str, dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!("{} does not exist", dir.display());
    }
    enter_private_namespace()?;
    if let Err(e) = rustix::mount::mount(fstype, dir, fstype, MountFlags::empty(), None) {
        bail!("mounting {fstype} on {} failed: {e}", dir.display());
    }
    Ok(())
}
