//! `resource_limit`: sshd runs out of descriptors (RLIMIT_NOFILE lowered on the running
//! listener with prlimit) or processes (a pids cgroup at its maximum). The listener's and the
//! per-connection process's limits on OpenSSH 9.2 and 10.0 alike (10.0 in a container: the pids
//! limit is the container's own cgroup's); RLIMIT_NPROC for a non-root login on 9.2 only: its
//! user exists on the host, not in the container's image.

use std::{io::Write, net::TcpStream, process::Command, time::Duration};

use sshtrace_tests::{privileged, run, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer, User};

fn start(openssh: OpenSsh, name: &str, ep: Endpoint) -> Sshd {
    Sshd::start(
        &openssh.name(name),
        ep,
        SshdOptions {
            openssh,
            ..Default::default()
        },
    )
}

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

/// One descriptor left: accept succeeds, the descriptors sshd makes next fail with EMFILE
/// (9.2's startup pipe, 10.0's socketpair for the child's configuration).
fn listener_out_of_descriptors_after_accept(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = start(openssh, "nofile", ep);
    let limit = open_fds(sshd.pid()) + 1;
    set_nofile(sshd.pid(), limit);

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "resource_limit");
    assert_eq!(v["details"]["limit"], "nofile");
    assert_eq!(v["details"]["errno"], "EMFILE");
    assert_eq!(v["details"]["limit_value"], limit.to_string());
    assert_eq!(v["details"]["failed_pid"], sshd.pid());
    let syscall = match openssh {
        OpenSsh::V9_2Host => "pipe",
        OpenSsh::V10Container => "socketpair",
    };
    assert!(
        v["details"]["syscall"]
            .as_str()
            .unwrap()
            .starts_with(syscall),
        "{v}"
    );
    assert_eq!(v["sshd"]["role"], "listener");
}

#[test]
fn listener_out_of_descriptors_after_accept_openssh_9_2() {
    if privileged("listener_out_of_descriptors_after_accept_openssh_9_2") {
        listener_out_of_descriptors_after_accept(OpenSsh::V9_2Host, Endpoint::new(60));
    }
}

#[test]
fn listener_out_of_descriptors_after_accept_openssh_10() {
    if privileged("listener_out_of_descriptors_after_accept_openssh_10") {
        listener_out_of_descriptors_after_accept(OpenSsh::V10Container, Endpoint::new(65));
    }
}

/// No descriptor left: accept itself fails, over and over; the client only waits. Reported
/// while it happens, with the failure rate.
fn listener_stalled_on_accept(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = start(openssh, "stalled", ep);
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

#[test]
fn listener_stalled_on_accept_openssh_9_2() {
    if privileged("listener_stalled_on_accept_openssh_9_2") {
        listener_stalled_on_accept(OpenSsh::V9_2Host, Endpoint::new(61));
    }
}

#[test]
fn listener_stalled_on_accept_openssh_10() {
    if privileged("listener_stalled_on_accept_openssh_10") {
        listener_stalled_on_accept(OpenSsh::V10Container, Endpoint::new(66));
    }
}

/// sshd in a pids cgroup that is full: fork fails with EAGAIN.
fn pids_cgroup_full(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let mut sshd = start(openssh, "pids", ep);
    let cgroup = sshd.cgroup("pids");
    std::fs::write(cgroup.join("pids.max"), "1").unwrap();

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "resource_limit");
    assert_eq!(v["details"]["limit"], "pids");
    assert_eq!(v["details"]["errno"], "EAGAIN");
    assert_eq!(v["details"]["limit_value"], "1");
    // The cgroup's own name: sshtrace-test-pids-… on the host, libpod-ID for the container.
    let name = cgroup.file_name().unwrap().to_string_lossy();
    assert!(
        v["details"]["limit_source"]
            .as_str()
            .unwrap()
            .contains(name.as_ref()),
        "{v}"
    );
    assert_eq!(v["details"]["failed_pid"], sshd.pid());
    drop(sshd);
}

#[test]
fn pids_cgroup_full_openssh_9_2() {
    if privileged("pids_cgroup_full_openssh_9_2") {
        pids_cgroup_full(OpenSsh::V9_2Host, Endpoint::new(62));
    }
}

#[test]
fn pids_cgroup_full_openssh_10() {
    if privileged("pids_cgroup_full_openssh_10") {
        pids_cgroup_full(OpenSsh::V10Container, Endpoint::new(67));
    }
}

/// A non-root login whose RLIMIT_NPROC (inherited from sshd) is already used up: the session
/// process, running as the user, cannot fork the shell. Root is exempt from RLIMIT_NPROC, so
/// only the user's processes fail.
fn non_root_session_over_nproc(openssh: OpenSsh, ep: Endpoint) {
    let user = User::new(&format!("nproc{}", openssh.version().replace('.', "")));
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = start(openssh, "nproc", ep);
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

#[test]
fn non_root_session_over_nproc_openssh_9_2() {
    if !privileged("non_root_session_over_nproc_openssh_9_2") {
        return;
    }
    non_root_session_over_nproc(OpenSsh::V9_2Host, Endpoint::new(63));
}

#[test]
fn non_root_session_over_nproc_openssh_10() {
    if !privileged("non_root_session_over_nproc_openssh_10") {
        return;
    }
    non_root_session_over_nproc(OpenSsh::V10Container, Endpoint::new(120));
}

/// RLIMIT_AS below what a freshly executed sshd maps: the per-connection sshd (9.2's `sshd -R`,
/// 10.0's `sshd-session`) cannot map its libraries (mmap fails with ENOMEM) and the client is
/// reset.
fn address_space_limit(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = start(openssh, "as-limit", ep);
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

#[test]
fn address_space_limit_openssh_9_2() {
    if privileged("address_space_limit_openssh_9_2") {
        address_space_limit(OpenSsh::V9_2Host, Endpoint::new(64));
    }
}

#[test]
fn address_space_limit_openssh_10() {
    if privileged("address_space_limit_openssh_10") {
        address_space_limit(OpenSsh::V10Container, Endpoint::new(68));
    }
}
