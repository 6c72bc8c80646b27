//! `lsm_denied`: a real Landlock ruleset (applied to the per-connection sshd by a fixture
//! preloaded into the real sshd) refuses reading a file sshd needs. Auditing is off here, so
//! the LSM is decided by the active-LSM set: the mode bits allow root the read, and Landlock is
//! the only LSM on this kernel that can refuse it. Both symptoms: a host key (the client is
//! reset) and `authorized_keys` ("Permission denied (publickey)"). The host key only on OpenSSH
//! 9.2, whose per-connection sshd reads it: 10.0's `sshd-session` gets the host keys from its
//! listener and opens none. `authorized_keys` on both (10.0: `sshd-session`, the monitor, reads
//! it; the ruleset applies to `sshd-auth` too).

use sshtrace_tests::{
    kernel, privileged, Endpoint, OpenSsh, Sshd, SshdOptions, Tracer, SYSTEM_DIRS,
};

fn landlocked(openssh: OpenSsh, name: &str, ep: Endpoint, allow_test_dir: bool) -> Sshd {
    let name = openssh.name(name);
    let options = |allow: String| SshdOptions {
        env: vec![("SSHTRACE_TEST_LANDLOCK".into(), allow)],
        preload: Some("crash_preload.c"),
        keys_apart: true,
        openssh,
        ..Default::default()
    };
    // Where Sshd::start puts its files (the fixture is preloaded before the ruleset applies).
    let dir = std::env::temp_dir().join(format!("sshtrace-test-{name}-{}", std::process::id()));
    let allow = if allow_test_dir {
        format!("{SYSTEM_DIRS}:{}", dir.display())
    } else {
        SYSTEM_DIRS.into()
    };
    Sshd::start(&name, ep, options(allow))
}

#[test]
fn host_key_refused_resets_the_client() {
    if !privileged("host_key_refused_resets_the_client")
        || !kernel::landlock("host_key_refused_resets_the_client")
    {
        return;
    }
    let ep = Endpoint::new(140);
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = landlocked(OpenSsh::V9_2Host, "ll-hostkey", ep, false);
    assert!(!sshd.ssh("true").status.success());

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "lsm_denied");
    assert_eq!(v["outcome"], "reset_sent");
    assert_eq!(v["details"]["lsm"], "landlock");
    assert_eq!(
        v["details"]["path"],
        sshd.path("host_key").display().to_string()
    );
    assert_ne!(v["details"]["denied_pid"], sshd.pid());
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
    let failure = sshtrace_tests::evidence(&v, "syscall_error");
    assert_eq!(failure["errno"], "EACCES");
    assert_eq!(failure["dac"]["allows"], true);
    // Read at the failure: the per-connection sshd may be gone when the event is read.
    assert_eq!(failure["dac"]["credentials"], "kernel");
}

fn authorized_keys_refused_denies_the_publickey(openssh: OpenSsh, ep: Endpoint) {
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let sshd = landlocked(openssh, "ll-authkeys", ep, true);
    let out = sshd.ssh("true");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey"),
        "{out:?}"
    );

    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "lsm_denied");
    assert_eq!(v["outcome"], "closed");
    assert_eq!(v["details"]["lsm"], "landlock");
    assert!(
        v["details"]["path"]
            .as_str()
            .unwrap()
            .ends_with("-keys/authorized_keys"),
        "{v}"
    );
    assert_eq!(v["details"]["denied_pid"], v["sshd"]["pid"], "{v}");
    assert_eq!(v["sshd"]["comm"], openssh.session_comm(), "{v}");
    assert_eq!(v["sshd"]["listener_pid"], sshd.pid());
}

#[test]
fn authorized_keys_refused_denies_the_publickey_openssh_9_2() {
    const TEST: &str = "authorized_keys_refused_denies_the_publickey_openssh_9_2";
    if privileged(TEST) && kernel::landlock(TEST) {
        authorized_keys_refused_denies_the_publickey(OpenSsh::V9_2Host, Endpoint::new(141));
    }
}

#[test]
fn authorized_keys_refused_denies_the_publickey_openssh_10() {
    const TEST: &str = "authorized_keys_refused_denies_the_publickey_openssh_10";
    if privileged(TEST) && kernel::landlock(TEST) {
        authorized_keys_refused_denies_the_publickey(OpenSsh::V10Container, Endpoint::new(142));
    }
}
