//! What every hostile-host test asserts besides its own attack: under attack, a genuine sshd
//! crash on a tracked port still gets its verdict; sshtrace's peak memory stays bounded;
//! SIGTERM ends it promptly with its summary; and every line it printed parsed (the tracer
//! harness already fails on a stdout line that is not JSON).

use std::time::Duration;

use serde_json::Value;

use crate::{kill, patient, wait_for, Endpoint, Sshd, SshdOptions, Tracer};

/// sshtrace's peak resident memory under attack, at most (VmHWM).
pub const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// An sshd whose pre-authentication child really crashes, provoked under attack: its verdict
/// must come through within 2 s (stretched under emulation) whatever the attack does.
pub fn crash_is_still_judged(tracer: &Tracer, name: &str, ep: Endpoint) {
    crash_is_judged_in(name, ep, || tracer.verdicts(ep.port()));
}

/// Likewise, with the verdicts read from a JSON Lines file output (a storm's verdicts go
/// there rather than through the test's own parser).
pub fn crash_is_still_judged_in_file(file: &std::path::Path, name: &str, ep: Endpoint) {
    crash_is_judged_in(name, ep, || {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("sshd_crashed"))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["conn"]["local_port"] == ep.port())
            .collect()
    });
}

fn crash_is_judged_in(name: &str, ep: Endpoint, verdicts: impl Fn() -> Vec<Value>) {
    let sshd = Sshd::start(
        name,
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "preauth".into())],
            preload: Some("crash_preload.c"),
            ..Default::default()
        },
    );
    let out = sshd.ssh("true");
    assert!(!out.status.success(), "the crash fixture did not fire");
    let start = std::time::Instant::now();
    let deadline = patient(Duration::from_secs(2));
    loop {
        if verdicts().iter().any(|v| v["cause"] == "sshd_crashed") {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "under attack, the crash got no verdict within {deadline:?}: {:#?}",
            verdicts()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's peak resident set (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM for {pid}"))
}

/// The bound holds for the release binary `cargo xtask test` runs; an unoptimised build's
/// start-up alone comes near it, so with one the bound is reported, not asserted (loudly).
pub fn assert_peak_rss_bounded(tracer: &Tracer) {
    let peak = peak_rss_kib(tracer.pid());
    if crate::sshtrace_bin()
        .components()
        .any(|c| c.as_os_str() == "debug")
    {
        crate::loud(&format!(
            "NOT ASSERTED: peak RSS {peak} KiB < {PEAK_RSS_LIMIT_KIB} KiB holds for the release \
             binary; this run uses a debug build (cargo xtask test uses the release one)"
        ));
        return;
    }
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "sshtrace's peak RSS {peak} KiB is over {PEAK_RSS_LIMIT_KIB} KiB"
    );
}

/// SIGTERM ends sshtrace within 2 s (stretched under emulation) with its summary: the JSON
/// summary record on stdout, and the exit lines on stderr. Returns the summary.
pub fn stop_with_sigterm(tracer: &mut Tracer) -> Value {
    kill(tracer.pid(), libc::SIGTERM);
    let status = tracer.wait_exit(Duration::from_secs(2));
    assert!(status.success(), "sshtrace exited with {status}");
    // The readers drain what was printed before the exit.
    wait_for("the summary record", Duration::from_secs(2), || {
        tracer
            .records()
            .into_iter()
            .find(|r| r["type"] == "summary")
    })
}
