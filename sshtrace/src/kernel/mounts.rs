//! Mounting what sshtrace reads (tracefs, securityfs) when the host has not: in a private
//! mount namespace of sshtrace's own, so nothing is left behind on the host, not even after
//! `kill -9`. Must run before any thread exists: unshare(CLONE_NEWNS) refuses threaded callers.

use std::{ffi::CString, path::Path};

use anyhow::{bail, Result};

/// Set once this process has its own mount namespace.
static PRIVATE: std::sync::OnceLock<()> = std::sync::OnceLock::new();

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn enter_private_namespace() -> Result<()> {
    if PRIVATE.get().is_some() {
        return Ok(());
    }
    // SAFETY: plain syscalls with valid, NUL-terminated arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!("cannot make a private mount namespace: {}", errno());
        }
        let root = CString::new("/").unwrap();
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            bail!("cannot make the mount namespace private: {}", errno());
        }
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
    let fs = CString::new(fstype).unwrap();
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid, NUL-terminated arguments.
    if unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        bail!("mounting {fstype} on {} failed: {}", dir.display(), errno());
    }
    Ok(())
}
