//! Running commands with errors that name the step that failed.

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `command`, failing with `step` in the message when it cannot start or exits non-zero.
pub fn run(command: &mut Command, step: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{step}: cannot start {command:?}"))?;
    if !status.success() {
        bail!("{step}: {command:?} failed ({status})");
    }
    Ok(())
}

/// Runs `command` and returns its standard output, or `None` when it cannot start or fails.
pub fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces this process with `binary args…`, so that signals reach sshtrace directly.
pub fn exec(binary: &Path, args: &[String]) -> Result<()> {
    let err = Command::new(binary).args(args).exec();
    Err(err).with_context(|| format!("cannot execute {}", binary.display()))
}
