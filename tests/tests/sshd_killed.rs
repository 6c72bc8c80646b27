//! `sshd_killed`: another process kills the per-connection sshd. Also proves that an sshd
//! started after sshtrace is followed: the tracer starts first, with no flags, and the client
//! logs in the moment sshd listens, without waiting for sshtrace to report it. On OpenSSH 9.2
//! and on 10.0 (the session is `sshd-session`, in a container that starts after sshtrace).

use std::process::Command;

use sshtrace_tests::{privileged, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer};

fn kill_of_the_session(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&[]);
    let sshd = Sshd::start(
        &openssh.name("killed"),
        ep,
        SshdOptions {
            openssh,
            ..Default::default()
        },
    );
    // 9.2's user process dies with the killed per-connection sshd, so the connection ends at
    // once; 10.0's (`sshd-session: root@notty`) outlives the killed `sshd-session` monitor and
    // serves the session to its end, so there the connection ends with the command.
    let command = match openssh {
        OpenSsh::V9_2Host => "sleep 60",
        OpenSsh::V10Container => "sleep 8",
    };
    let mut client = sshd.ssh_command(command).spawn().expect("ssh");
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
    assert_eq!(v["sshd"]["comm"], openssh.session_comm(), "{v}");
    // sshtrace's own report of the sshd it tracks: checked after the verdict, not before.
    let port = ep.port().to_string();
    tracer.wait_stderr("sshd reported as tracked", |l| {
        l.starts_with("sshtrace: tracking ports")
            && l.contains(&port)
            && l.contains(&sshd.pid().to_string())
    });
}

#[test]
fn kill_of_the_session_names_the_sender_openssh_9_2() {
    if privileged("kill_of_the_session_names_the_sender_openssh_9_2") {
        kill_of_the_session(OpenSsh::V9_2Host, Endpoint::new(40));
    }
}

#[test]
fn kill_of_the_session_names_the_sender_openssh_10() {
    if privileged("kill_of_the_session_names_the_sender_openssh_10") {
        kill_of_the_session(OpenSsh::V10Container, Endpoint::new(41));
    }
}
