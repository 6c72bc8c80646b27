//! `oom_killed`: the per-connection sshd outgrows its memory cgroup and the OOM killer takes
//! it (a fixture preloaded into the real sshd allocates as the per-connection process starts).

use sshtrace_tests::{privileged, Cgroup, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn per_connection_sshd_oom_killed_in_its_cgroup() {
    if !privileged("per_connection_sshd_oom_killed_in_its_cgroup") {
        return;
    }
    let cgroup = Cgroup::new("memory", "oom");
    let ep = Endpoint::new(70);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = Sshd::start(
        "oom",
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "oom".into())],
            preload: Some("crash_preload.c"),
            ..Default::default()
        },
    );
    let limit_file = if cgroup.dir.join("memory.limit_in_bytes").exists() {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    cgroup.set(limit_file, &(96u64 << 20).to_string());
    cgroup.add(sshd.pid());

    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "oom_killed");
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
    assert_eq!(v["details"]["victim_pid"], v["sshd"]["pid"]);
    assert!(
        v["details"]["anon_rss_kb"].as_u64().unwrap() > 50_000,
        "{v}"
    );
    assert_eq!(v["details"]["memcg"]["value"], (96u64 << 20).to_string());
    let exit = sshtrace_tests::evidence(&v, "exit");
    assert_eq!(exit["signal"], "SIGKILL");
    drop(sshd);
}
