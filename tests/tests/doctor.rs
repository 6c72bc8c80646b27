//! `sshtrace doctor` against broken setups made for real: a host key with a bad mode, an empty
//! host key, a loopback-only listener, a configured port nothing listens on, a REJECT rule in a
//! namespace, a low RLIMIT_NOFILE, a user's ~/.ssh with loose modes.

use std::{os::unix::fs::PermissionsExt, process::Command};

use serde_json::Value;
use sshtrace_tests::{
    privileged, run, sshd::in_netns, sshtrace_bin, Endpoint, NetNs, Sshd, SshdOptions, User,
};

/// Runs `sshtrace doctor --json ARGS` (in `netns` if given) and returns its checks.
fn doctor(netns: Option<&str>, args: &[&str]) -> Vec<Value> {
    let bin = sshtrace_bin();
    let out = run(in_netns(netns, bin.to_str().unwrap())
        .args(["doctor", "--json"])
        .args(args));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let failed = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "fail");
    assert_eq!(
        out.status.success(),
        !failed,
        "exit status follows failures"
    );
    report["checks"].as_array().unwrap().clone()
}

fn check<'a>(checks: &'a [Value], name: &str, status: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name && c["status"] == status)
        .unwrap_or_else(|| panic!("no {name} {status} in {checks:#?}"))
}

#[test]
fn host_key_readable_by_others_and_loopback_only_listener() {
    if !privileged("host_key_readable_by_others_and_loopback_only_listener") {
        return;
    }
    let sshd = Sshd::start("doc-keymode", Endpoint::new(170), SshdOptions::default());
    std::fs::set_permissions(
        sshd.path("host_key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let checks = doctor(None, &["--pid", &sshd.pid().to_string()]);
    let key = check(&checks, "host_keys", "fail");
    assert!(
        key["evidence"].as_str().unwrap().contains("mode 0644"),
        "{key}"
    );
    assert!(key["fix"].as_str().unwrap().contains("chmod 600"), "{key}");
    check(&checks, "sshd_config_test", "fail");
    check(&checks, "listening_as_configured", "warn");
    check(&checks, "sshd_running", "pass");
}

#[test]
fn empty_host_key() {
    if !privileged("empty_host_key") {
        return;
    }
    let sshd = Sshd::start("doc-empty", Endpoint::new(171), SshdOptions::default());
    std::fs::write(sshd.path("host_key"), "").unwrap();
    let checks = doctor(None, &["--pid", &sshd.pid().to_string()]);
    assert!(check(&checks, "host_keys", "fail")["evidence"]
        .as_str()
        .unwrap()
        .ends_with("is empty"));
}

#[test]
fn configured_port_nothing_listens_on() {
    if !privileged("configured_port_nothing_listens_on") {
        return;
    }
    let sshd = Sshd::start("doc-port", Endpoint::new(172), SshdOptions::default());
    let config = sshd.path("other_config");
    let text = std::fs::read_to_string(sshd.path("sshd_config"))
        .unwrap()
        .replace("Port 22172", "Port 22173");
    std::fs::write(&config, text).unwrap();
    let checks = doctor(None, &["--config", config.to_str().unwrap()]);
    assert!(
        check(&checks, "listening_as_configured", "fail")["evidence"]
            .as_str()
            .unwrap()
            .contains("22173")
    );
}

#[test]
fn reject_rule_for_the_port() {
    if !privileged("reject_rule_for_the_port") {
        return;
    }
    let ns = NetNs::new("doc-fw");
    let ep = Endpoint::new(173);
    let sshd = Sshd::start(
        "doc-fw",
        ep,
        SshdOptions {
            netns: Some(ns.name.clone()),
            ..Default::default()
        },
    );
    let port = ep.port().to_string();
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    let checks = doctor(Some(&ns.name), &["--pid", &sshd.pid().to_string()]);
    let fw = check(&checks, "firewall_rules", "fail");
    assert!(
        fw["evidence"]
            .as_str()
            .unwrap()
            .contains(&format!("--dport {port} -j REJECT")),
        "{fw}"
    );
}

#[test]
fn low_nofile_on_the_listener() {
    if !privileged("low_nofile_on_the_listener") {
        return;
    }
    let sshd = Sshd::start("doc-nofile", Endpoint::new(174), SshdOptions::default());
    let open = std::fs::read_dir(format!("/proc/{}/fd", sshd.pid()))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 1, open + 1);
    assert!(
        run(Command::new("prlimit").args([&limit, "--pid", &sshd.pid().to_string()]))
            .status
            .success()
    );
    let checks = doctor(None, &["--pid", &sshd.pid().to_string()]);
    check(&checks, "sshd_nofile", "fail");
}

#[test]
fn user_ssh_files_with_loose_modes() {
    if !privileged("user_ssh_files_with_loose_modes") {
        return;
    }
    let (user, _home) = User::with_home("doc", 0o755, 0o644);
    let checks = doctor(None, &["--user", &user.name]);
    let loose: Vec<&Value> = checks
        .iter()
        .filter(|c| c["name"] == "user_ssh_files" && c["status"] == "fail")
        .collect();
    assert_eq!(loose.len(), 2, "{checks:#?}");
    assert!(loose
        .iter()
        .any(|c| c["fix"].as_str().unwrap().starts_with("chmod 700")));
    assert!(loose
        .iter()
        .any(|c| c["fix"].as_str().unwrap().starts_with("chmod 600")));
}
