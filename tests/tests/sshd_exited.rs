//! `sshd_exited`: a file sshd reads anew for every connection disappears while sshd runs, so
//! the per-connection process exits with an error and the client is reset. OpenSSH 9.2
//! re-reads its host key per connection; 10.0 gets the host keys from its listener, but
//! executes `sshd-auth` per connection (the listener checks it only at its start), so there the
//! file is `sshd-auth`, removed from the container's root.

use std::path::PathBuf;

use sshtrace_tests::{
    openssh::SSHD_AUTH, privileged, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer,
};

/// The file every new connection needs: as the host reaches it, and as sshd names it.
fn needed_per_connection(sshd: &Sshd) -> (PathBuf, String) {
    match sshd.openssh {
        OpenSsh::V9_2Host => {
            let key = sshd.path("host_key");
            (key.clone(), key.display().to_string())
        }
        OpenSsh::V10Container => (
            PathBuf::from(format!("/proc/{}/root{SSHD_AUTH}", sshd.pid())),
            SSHD_AUTH.to_owned(),
        ),
    }
}

fn needed_file_removed_while_sshd_runs(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        &openssh.name("exited"),
        ep,
        SshdOptions {
            openssh,
            ..Default::default()
        },
    );
    let (file, path) = needed_per_connection(&sshd);
    std::fs::remove_file(&file).unwrap();

    let out = sshd.ssh("true");
    assert!(!out.status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] != "closed_preauth");
    assert_eq!(v["cause"], "sshd_exited", "{v}");
    assert_eq!(v["outcome"], "reset_sent");
    assert_ne!(v["details"]["exit_status"], 0);
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
    let failed = v["details"]["failed_syscalls"].as_array().unwrap();
    assert!(
        failed
            .iter()
            .any(|f| f["path"] == path.as_str() && f["errno"] == "ENOENT"),
        "no failed syscall on {path} (ENOENT): {v}"
    );
}

#[test]
fn host_key_removed_while_sshd_runs_openssh_9_2() {
    if privileged("host_key_removed_while_sshd_runs_openssh_9_2") {
        needed_file_removed_while_sshd_runs(OpenSsh::V9_2Host, Endpoint::new(50));
    }
}

#[test]
fn sshd_auth_removed_while_sshd_runs_openssh_10() {
    if privileged("sshd_auth_removed_while_sshd_runs_openssh_10") {
        needed_file_removed_while_sshd_runs(OpenSsh::V10Container, Endpoint::new(51));
    }
}
