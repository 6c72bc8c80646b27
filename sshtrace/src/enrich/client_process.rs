//! What /proc shows of the process behind a connect (`sshtrace client`), read when its first
//! record arrives: its executable — the kernel followed it by its name, `ssh`, which any
//! program can take, so the verdict says whether the executable is a root-owned regular file
//! named `ssh` — its command line and its parent's (the `scp` or `rsync` that ran it).
//! An `ssh` refused at once may have exited already: then only the kernel's pid and name stay.

use std::{fs, io::Read, os::unix::fs::MetadataExt, path::Path};

use crate::trace::state::ClientProcess;

/// More of a command line is not read.
const MAX_CMDLINE: u64 = 4096;

/// Completes what the kernel read at the connect (its command line, parent and executable's
/// owner) with what only /proc has: the executable's path and the parent's command line.
pub fn read(process: &mut ClientProcess) {
    let dir = Path::new("/proc").join(process.pid.to_string());
    if let Ok(exe) = fs::read_link(dir.join("exe")) {
        let named_ssh = exe.file_name().is_some_and(|n| n == "ssh");
        // /proc/PID/exe opens the very file the process runs, even one since replaced.
        let root_owned_file = fs::metadata(dir.join("exe"))
            .is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0);
        process.executable = Some(exe.to_string_lossy().into_owned());
        process.verified = Some(process.verified.unwrap_or(true) && named_ssh && root_owned_file);
    }
    if process.cmdline.is_none() {
        process.cmdline = cmdline(&dir);
    }
    let parent = process
        .parent
        .as_ref()
        .map(|(pid, _)| *pid)
        .or_else(|| parent_pid(&dir));
    process.parent = parent.map(|ppid| (ppid, cmdline(&Path::new("/proc").join(ppid.to_string()))));
}

/// Arguments joined by spaces (escaped by every output).
fn cmdline(dir: &Path) -> Option<String> {
    let mut raw = Vec::new();
    fs::File::open(dir.join("cmdline"))
        .ok()?
        .take(MAX_CMDLINE)
        .read_to_end(&mut raw)
        .ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// `PPid:` of /proc/PID/status.
fn parent_pid(dir: &Path) -> Option<u32> {
    let status = fs::read_to_string(dir.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 1)
}
