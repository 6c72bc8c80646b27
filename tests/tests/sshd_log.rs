//! sshd's own words in the verdict (`sshd_log`), taken by the kernel where sshd writes them:
//! when its standard error goes nowhere (a container's `sshd -D -e` whose output nobody
//! keeps), and when it logs through syslog(3) to a `/dev/log` whose reader keeps nothing.

use std::{
    os::unix::net::UnixDatagram,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sshtrace_tests::{
    kill, listens, privileged, process_tree, sshd::ssh_client, wait_for, Endpoint, SshdFiles,
    SshdOptions, Tracer,
};

/// Logs in, then kills the session's process: a verdict with sshd's words about the login.
fn kill_a_login(files: &SshdFiles, ep: Endpoint, listener: u32, tracer: &Tracer) -> Value {
    let mut client = ssh_client(
        None,
        "root",
        &ep.addr(),
        ep.port(),
        &files.path("client_key"),
        "sleep 60",
    )
    .spawn()
    .unwrap();
    let session = sshtrace_tests::wait_for_session(listener);
    kill(session, libc::SIGKILL);
    let _ = client.wait();
    tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_killed")
}

/// The messages of `via` in the verdict, which must include sshd's note of the login.
fn assert_login_logged(v: &Value, via: &str) {
    let log = v["sshd_log"].as_array().unwrap();
    let port = v["conn"]["remote_port"].as_u64().unwrap();
    assert!(
        log.iter().all(|l| l["via"] == via),
        "every message came {via}: {v}"
    );
    assert!(
        log.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Accepted publickey for root")
                && m.contains(&format!("port {port}")))),
        "sshd's note of this login: {v}"
    );
}

/// Starts `command` (an sshd whose output goes nowhere) and waits until it listens on `ep`;
/// returns it with the listener's pid.
fn start_listening(command: &mut Command, ep: Endpoint) -> (Child, u32) {
    let sshd = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listener = sshd.id();
    wait_for("sshd to listen", Duration::from_secs(10), || {
        listens(listener, ep.port()).then_some(())
    });
    (sshd, listener)
}

fn stop(mut sshd: Child, listener: u32) {
    for pid in process_tree(listener) {
        kill(pid, libc::SIGKILL);
    }
    let _ = sshd.kill();
    let _ = sshd.wait();
}

#[test]
fn standard_error_that_nobody_keeps() {
    if !privileged("standard_error_that_nobody_keeps") {
        return;
    }
    let ep = Endpoint::new(210);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let text = Tracer::start_text(&["--port", &ep.port().to_string(), "-v"]);
    let files = SshdFiles::write("log-stderr", ep, &SshdOptions::default());
    let mut sshd = Command::new("/usr/sbin/sshd");
    sshd.args(["-D", "-e", "-f"]).arg(files.config());
    let (sshd, listener) = start_listening(&mut sshd, ep);
    let v = kill_a_login(&files, ep, listener, &tracer);
    assert_login_logged(&v, "stderr");
    // -v shows them under the verdict's line.
    let shown = wait_for("the text view's sshd log", Duration::from_secs(10), || {
        text.stdout_lines()
            .into_iter()
            .find(|l| l.starts_with("    sshd log: [") && l.contains("Accepted publickey for root"))
    });
    assert!(shown.contains("port "), "{shown}");
    stop(sshd, listener);
}

#[test]
fn syslog_datagrams_to_a_reader_that_keeps_nothing() {
    if !privileged("syslog_datagrams_to_a_reader_that_keeps_nothing") {
        return;
    }
    let ep = Endpoint::new(211);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let files = SshdFiles::write("log-syslog", ep, &SshdOptions::default());
    // A /dev/log of the test's own, seen only by this sshd (a private mount namespace with its
    // own /dev): read by nobody, as a journal that keeps nothing.
    let socket = files.path("dev-log");
    let _reader = UnixDatagram::bind(&socket).unwrap();
    let script = format!(
        "set -e; mkdir -p {d}/host-dev; mount --bind /dev {d}/host-dev; \
         mount -t tmpfs tmpfs /dev; \
         for n in null zero random urandom; do touch /dev/$n; mount --bind {d}/host-dev/$n /dev/$n; done; \
         touch /dev/log; mount --bind {sock} /dev/log; umount -l {d}/host-dev; \
         exec /usr/sbin/sshd -D -f {config}",
        d = files.dir.display(),
        sock = socket.display(),
        config = files.config().display()
    );
    let mut sshd = Command::new("unshare");
    sshd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let (sshd, listener) = start_listening(&mut sshd, ep);
    let v = kill_a_login(&files, ep, listener, &tracer);
    assert_login_logged(&v, "syslog");
    stop(sshd, listener);
}
