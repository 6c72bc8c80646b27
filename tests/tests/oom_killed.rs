//! `oom_killed`: the per-connection sshd outgrows its memory cgroup and the OOM killer takes
//! it (a fixture preloaded into the real sshd allocates as the per-connection process starts).
//! On OpenSSH 9.2 in a memory cgroup of the test's, and on 10.0 (`sshd-session`) in a
//! container whose own memory cgroup has the limit.

use sshtrace_tests::{privileged, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer};

fn per_connection_sshd_oom_killed(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let mut sshd = Sshd::start(
        &openssh.name("oom"),
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "oom".into())],
            preload: Some("crash_preload.c"),
            openssh,
            ..Default::default()
        },
    );
    let cgroup = sshd.cgroup("memory");
    let limit_file = if cgroup.join("memory.limit_in_bytes").exists() {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(cgroup.join(limit_file), (96u64 << 20).to_string()).unwrap();

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "oom_killed");
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
    assert_eq!(v["details"]["victim_pid"], v["sshd"]["pid"]);
    assert_eq!(v["details"]["victim_comm"], openssh.session_comm(), "{v}");
    assert!(
        v["details"]["anon_rss_kb"].as_u64().unwrap() > 50_000,
        "{v}"
    );
    assert_eq!(v["details"]["memcg"]["value"], (96u64 << 20).to_string());
    let exit = sshtrace_tests::evidence(&v, "exit");
    assert_eq!(exit["signal"], "SIGKILL");
    drop(sshd);
}

#[test]
fn per_connection_sshd_oom_killed_in_its_cgroup_openssh_9_2() {
    if privileged("per_connection_sshd_oom_killed_in_its_cgroup_openssh_9_2") {
        per_connection_sshd_oom_killed(OpenSsh::V9_2Host, Endpoint::new(70));
    }
}

#[test]
fn per_connection_sshd_oom_killed_in_its_cgroup_openssh_10() {
    if privileged("per_connection_sshd_oom_killed_in_its_cgroup_openssh_10") {
        per_connection_sshd_oom_killed(OpenSsh::V10Container, Endpoint::new(71));
    }
}
