//! `--user NAME`: the modes and owner sshd's StrictModes insists on for ~/.ssh and
//! authorized_keys.

use std::{fs, os::unix::fs::MetadataExt, path::PathBuf};

use super::{Check, Status, Target};

pub fn checks(t: &Target) -> Vec<Check> {
    let Some(user) = &t.user else {
        return Vec::new();
    };
    let Some((uid, home)) = passwd(user) else {
        return vec![Check::new(
            "user_ssh_files",
            Status::Fail,
            format!("no user {user} in /etc/passwd"),
        )];
    };
    let ssh = home.join(".ssh");
    let keys = ssh.join("authorized_keys");
    let mut out = Vec::new();
    for (path, max_mode, what) in [(&ssh, 0o700, "directory"), (&keys, 0o600, "file")] {
        out.push(match fs::metadata(path) {
            Err(err) => Check::new(
                "user_ssh_files",
                Status::Fail,
                format!("{}: {err}", path.display()),
            ),
            Ok(m) if m.uid() != uid => Check::new(
                "user_ssh_files",
                Status::Fail,
                format!(
                    "{} is owned by uid {}, not {user} ({uid})",
                    path.display(),
                    m.uid()
                ),
            )
            .fix(format!("chown {user}: {}", path.display())),
            Ok(m) if m.mode() & 0o777 & !max_mode != 0 => Check::new(
                "user_ssh_files",
                Status::Fail,
                format!(
                    "{} {what} is mode {:04o}: sshd (StrictModes) refuses it",
                    path.display(),
                    m.mode() & 0o7777
                ),
            )
            .fix(format!("chmod {max_mode:o} {}", path.display())),
            Ok(m) => Check::new(
                "user_ssh_files",
                Status::Pass,
                format!(
                    "{}: mode {:04o}, owner {user}",
                    path.display(),
                    m.mode() & 0o7777
                ),
            ),
        });
    }
    out
}

fn passwd(user: &str) -> Option<(u32, PathBuf)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == user)
            .then(|| Some((f[2].parse().ok()?, PathBuf::from(f[5]))))
            .flatten()
    })
}
