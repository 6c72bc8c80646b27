//! Bad input and missing prerequisites: one clear line on standard error, non-zero exit.

use std::process::{Command, Output};

use sshtrace_tests::{privileged, run, sshtrace_bin};

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "expected one line: {stderr}");
    stderr
}

/// Runs sshtrace after `setup` in a private mount namespace of its own, so the test can hide
/// kernel interfaces from it without touching the host.
fn in_private_mounts(setup: &str, args: &str) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "sshtrace-errors-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "set -e; T={}; {setup}; exec {} {args}",
        dir.display(),
        sshtrace_bin().display()
    );
    let out = run(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    let _ = std::fs::remove_dir_all(dir);
    out
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn not_root() {
    if !privileged("not_root") {
        return;
    }
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sshtrace_bin()));
    assert!(one_error_line(&out).contains("must run as root"));
}

#[test]
fn unknown_or_wrong_pid() {
    if !privileged("unknown_or_wrong_pid") {
        return;
    }
    let out = run(Command::new(sshtrace_bin()).args(["--pid", "4194305"]));
    assert!(one_error_line(&out).contains("--pid 4194305: no such process"));
    let me = std::process::id().to_string();
    let out = run(Command::new(sshtrace_bin()).args(["--pid", &me]));
    assert!(one_error_line(&out).contains("not an sshd process"));
}

#[test]
fn invalid_port_is_a_usage_error() {
    let out = run(Command::new(sshtrace_bin()).args(["--port", "0"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn unreadable_btf() {
    if !privileged("unreadable_btf") {
        return;
    }
    let out = in_private_mounts(
        "touch $T/empty; mount --bind $T/empty /sys/kernel/btf/vmlinux",
        "",
    );
    let line = one_error_line(&out);
    assert!(line.contains("/sys/kernel/btf/vmlinux"), "{line}");
}

#[test]
fn no_tracefs() {
    if !privileged("no_tracefs") {
        return;
    }
    // Hide /sys/kernel (and so every tracefs mount point), keeping only the BTF file.
    let setup = "touch $T/vmlinux; mount --bind /sys/kernel/btf/vmlinux $T/vmlinux; \
                 mount -t tmpfs none /sys/kernel; mkdir -p /sys/kernel/btf; \
                 touch /sys/kernel/btf/vmlinux; mount --bind $T/vmlinux /sys/kernel/btf/vmlinux";
    let line = one_error_line(&in_private_mounts(setup, ""));
    assert!(line.contains("no tracefs"), "{line}");
}

#[test]
fn kernel_without_a_required_tracepoint() {
    if !privileged("kernel_without_a_required_tracepoint") {
        return;
    }
    // A tracefs view with every tracepoint sshtrace reads except tcp:tcp_send_reset.
    let keep = [
        "tcp/tcp_receive_reset",
        "sock/inet_sock_set_state",
        "sched/sched_process_exec",
        "sched/sched_process_exit",
        "signal/signal_generate",
        "syscalls/sys_enter_accept4",
        "syscalls/sys_exit_accept4",
    ];
    let copies: String = keep
        .iter()
        .map(|tp| format!("mkdir -p /sys/kernel/tracing/events/{tp}; cp $T/real/events/{tp}/format /sys/kernel/tracing/events/{tp}/; "))
        .collect();
    let setup = format!(
        "mkdir -p $T/real; mount -t tracefs nodev $T/real; mount -t tmpfs none /sys/kernel/tracing; {}",
        copies.trim_end_matches("; ")
    );
    let line = one_error_line(&in_private_mounts(&setup, ""));
    assert!(line.contains("tcp:tcp_send_reset"), "{line}");
}
