//! `socket_killed`: an administrator destroys the session's socket with `ss -K`.

use std::process::Command;

use sshtrace_tests::{
    evidence,
    kernel::{self, Evidence},
    privileged, run, Endpoint, Sshd, SshdOptions, Tracer,
};

#[test]
fn ss_kill_of_an_established_session() {
    if !privileged("ss_kill_of_an_established_session") {
        return;
    }
    let ep = Endpoint::new(90);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("sskill", ep, SshdOptions::default());
    let mut client = sshd.ssh_command("sleep 60").spawn().unwrap();
    sshd.wait_for_session();

    let filter = format!("( sport = :{} )", ep.port());
    let out = run(Command::new("ss").args(["-K", "-t", "state", "established", &filter]));
    assert!(
        out.status.success(),
        "ss -K: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = client.wait();

    if !kernel::expect(
        "ss_kill_of_an_established_session",
        Evidence::ResetReasons,
        "unknown: without TCP_STATE, ss -K cannot be told from an application's abort",
    ) {
        let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "unknown");
        assert_eq!(v["outcome"], "reset_sent");
        assert_eq!(evidence(&v, "tcp_send_reset")["reason"], "unknown");
        return;
    }
    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "socket_killed");
    assert_eq!(v["outcome"], "reset_sent");
    assert_eq!(v["details"]["actor_comm"], "ss");
    assert_eq!(evidence(&v, "tcp_send_reset")["reason"], "TCP_STATE");
}
