//! `sshd_exited`: the host key disappears while sshd runs; OpenSSH 9.2 re-reads host keys for
//! every connection, so the per-connection sshd exits 255 and the client is reset.

use sshtrace_tests::{privileged, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn host_key_removed_while_sshd_runs() {
    if !privileged("host_key_removed_while_sshd_runs") {
        return;
    }
    let ep = Endpoint::new(50);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("exited", ep, SshdOptions::default());
    let key = sshd.path("host_key");
    std::fs::remove_file(&key).unwrap();

    let out = sshd.ssh("true");
    assert!(!out.status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] != "closed_preauth");
    assert_eq!(v["cause"], "sshd_exited", "{v}");
    assert_eq!(v["outcome"], "reset_sent");
    assert_ne!(v["details"]["exit_status"], 0);
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
    let failed = v["details"]["failed_syscalls"].as_array().unwrap();
    let key = key.display().to_string();
    assert!(
        failed
            .iter()
            .any(|f| f["path"] == key.as_str() && f["errno"] == "ENOENT"),
        "no failed open of {key}: {v}"
    );
}
