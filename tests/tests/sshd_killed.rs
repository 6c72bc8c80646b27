//! `sshd_killed`: another process kills the per-connection sshd. Also proves that an sshd
//! started after sshtrace is followed: the tracer starts first, with no flags, and the client
//! logs in the moment sshd listens, without waiting for sshtrace to report it.

use std::process::Command;

use sshtrace_tests::{privileged, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn kill_of_the_session_names_the_sender() {
    if !privileged("kill_of_the_session_names_the_sender") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let ep = Endpoint::new(40);
    let sshd = Sshd::start("killed", ep, SshdOptions::default());
    let mut client = sshd.ssh_command("sleep 60").spawn().expect("ssh");
    let session = sshd.wait_for_session();
    let killer = Command::new("kill")
        .args(["-KILL", &session.to_string()])
        .spawn()
        .expect("kill");
    let killer_pid = killer.id();
    assert!(killer.wait_with_output().unwrap().status.success());
    let _ = client.wait();

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_killed");
    assert_eq!(v["details"]["signal"], "SIGKILL");
    assert_eq!(v["details"]["sender_pid"], killer_pid);
    assert_eq!(v["details"]["sender_comm"], "kill");
    assert_eq!(v["sshd"]["pid"], session);
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
    assert_eq!(v["sshd"]["role"], "session");
    // sshtrace's own report of the sshd it tracks: checked after the verdict, not before.
    let port = ep.port().to_string();
    tracer.wait_stderr("sshd reported as tracked", |l| {
        l.starts_with("sshtrace: tracking ports")
            && l.contains(&port)
            && l.contains(&sshd.pid().to_string())
    });
}
