//! `resource_limit`: sshd runs out of descriptors (RLIMIT_NOFILE lowered on the running
//! listener with prlimit) or processes (a pids cgroup at its maximum).

use std::{io::Write, net::TcpStream, process::Command, time::Duration};

use sshtrace_tests::{privileged, run, Cgroup, Endpoint, Sshd, SshdOptions, Tracer, User};

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn set_nofile(pid: u32, limit: usize) {
    let value = format!("--nofile={limit}:{limit}");
    let out = run(Command::new("prlimit").args([&value, "--pid", &pid.to_string()]));
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One descriptor left: accept succeeds, the pipe sshd makes next fails with EMFILE.
#[test]
fn listener_out_of_descriptors_after_accept() {
    if !privileged("listener_out_of_descriptors_after_accept") {
        return;
    }
    let ep = Endpoint::new(60);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("nofile", ep, SshdOptions::default());
    let limit = open_fds(sshd.pid()) + 1;
    set_nofile(sshd.pid(), limit);

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "resource_limit");
    assert_eq!(v["details"]["limit"], "nofile");
    assert_eq!(v["details"]["errno"], "EMFILE");
    assert_eq!(v["details"]["limit_value"], limit.to_string());
    assert_eq!(v["details"]["failed_pid"], sshd.pid());
    assert!(
        v["details"]["syscall"]
            .as_str()
            .unwrap()
            .starts_with("pipe"),
        "{v}"
    );
    assert_eq!(v["sshd"]["role"], "listener");
}

/// No descriptor left: accept itself fails, over and over; the client only waits. Reported
/// while it happens, with the failure rate.
#[test]
fn listener_stalled_on_accept() {
    if !privileged("listener_stalled_on_accept") {
        return;
    }
    let ep = Endpoint::new(61);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("stalled", ep, SshdOptions::default());
    set_nofile(sshd.pid(), open_fds(sshd.pid()));

    let mut client = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    client.write_all(b"SSH-2.0-sshtrace-test\r\n").unwrap();
    let v = tracer.verdict_for(ep.port(), |v| v["outcome"] == "stalled");
    assert_eq!(v["cause"], "resource_limit");
    assert_eq!(v["details"]["limit"], "nofile");
    assert!(
        v["details"]["syscall"]
            .as_str()
            .unwrap()
            .starts_with("accept"),
        "{v}"
    );
    assert!(v["details"]["failures_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["details"]["waiting_connections"], 1);
    assert_eq!(
        v["conn"]["remote_port"],
        client.local_addr().unwrap().port()
    );
    drop(client);
    std::thread::sleep(Duration::from_millis(100));
}

/// sshd in a pids cgroup that is full: fork fails with EAGAIN.
#[test]
fn pids_cgroup_full() {
    if !privileged("pids_cgroup_full") {
        return;
    }
    let cgroup = Cgroup::new("pids", "pids");
    let ep = Endpoint::new(62);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("pids", ep, SshdOptions::default());
    cgroup.add(sshd.pid());
    cgroup.set("pids.max", "1");

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "resource_limit");
    assert_eq!(v["details"]["limit"], "pids");
    assert_eq!(v["details"]["errno"], "EAGAIN");
    assert_eq!(v["details"]["limit_value"], "1");
    assert!(
        v["details"]["limit_source"]
            .as_str()
            .unwrap()
            .contains("sshtrace-test-pids"),
        "{v}"
    );
    assert_eq!(v["details"]["failed_pid"], sshd.pid());
    drop(sshd);
}

/// A non-root login whose RLIMIT_NPROC (inherited from sshd) is already used up: the session
/// process, running as the user, cannot fork the shell. Root is exempt from RLIMIT_NPROC, so
/// only the user's processes fail.
#[test]
fn non_root_session_over_nproc() {
    if !privileged("non_root_session_over_nproc") {
        return;
    }
    let user = User::new("nproc");
    let ep = Endpoint::new(63);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("nproc", ep, SshdOptions::default());
    let out = run(Command::new("prlimit").args(["--nproc=1:1", "--pid", &sshd.pid().to_string()]));
    assert!(out.status.success());

    let out = sshd
        .ssh_command_as(&user.name, ep.port(), &sshd.path("client_key"), "true")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "resource_limit");
    assert_eq!(v["details"]["limit"], "nproc", "{v}");
    assert_eq!(v["details"]["errno"], "EAGAIN");
    assert_eq!(v["details"]["limit_value"], "1");
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
}

/// RLIMIT_AS below what a freshly executed sshd maps: the per-connection sshd cannot map its
/// libraries (mmap fails with ENOMEM) and the client is reset.
#[test]
fn address_space_limit() {
    if !privileged("address_space_limit") {
        return;
    }
    let ep = Endpoint::new(64);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start("as-limit", ep, SshdOptions::default());
    let limit = (14u64 << 20).to_string();
    let value = format!("--as={limit}:{limit}");
    assert!(
        run(Command::new("prlimit").args([&value, "--pid", &sshd.pid().to_string()]))
            .status
            .success()
    );

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "resource_limit");
    assert_eq!(v["details"]["limit"], "memory", "{v}");
    assert_eq!(v["details"]["errno"], "ENOMEM");
    assert_eq!(v["details"]["limit_value"], limit);
    assert!(v["details"]["limit_source"]
        .as_str()
        .unwrap()
        .contains("RLIMIT_AS"));
}
