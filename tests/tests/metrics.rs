//! `--metrics`: a real Prometheus server scrapes sshtrace every second while real sshd
//! processes crash and are killed, and its query API shows the verdicts by cause, as many as
//! sshtrace printed; the shipped alerting rules load there, pass `promtool check rules` and
//! their own unit tests; scrapers that connect and stall are cut off and counted while
//! verdicts go on; a bad address is one line.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sshtrace_tests::{
    kill, privileged,
    prometheus::{self, free_address, sample_value, Prometheus, PROMTOOL},
    run, sshtrace_bin, wait_for, Endpoint, Sshd, SshdOptions, Tracer,
};

const CRASHING: Endpoint = Endpoint::new(232);
const KILLED: Endpoint = Endpoint::new(233);
const REFUSED: Endpoint = Endpoint::new(234);
const CRASHES: usize = 2;

/// Two causes against real sshd: pre-authentication children that segfault, and a session
/// killed with SIGKILL.
fn provoke_crashes_and_a_kill() {
    let crashing = Sshd::start(
        "metrics-crash",
        CRASHING,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "preauth".into())],
            preload: Some("crash_preload.c"),
            ..Default::default()
        },
    );
    for _ in 0..CRASHES {
        assert!(!crashing.ssh("true").status.success());
    }
    let sshd = Sshd::start("metrics-kill", KILLED, SshdOptions::default());
    let mut client = sshd.ssh_command("sleep 60").spawn().expect("ssh");
    let session = sshd.wait_for_session();
    kill(session, libc::SIGKILL);
    let _ = client.wait();
}

/// (cause, port) → verdicts, as sshtrace printed them for the test's ports.
fn printed(tracer: &Tracer) -> BTreeMap<(String, String), f64> {
    let mut counts = BTreeMap::new();
    for ep in [CRASHING, KILLED] {
        for v in tracer.verdicts(ep.port()) {
            let cause = v["cause"].as_str().unwrap_or_default().to_owned();
            *counts.entry((cause, ep.port().to_string())).or_default() += 1.0;
        }
    }
    counts
}

/// (cause, port) → `sshtrace_verdicts_total` as Prometheus has it, for the test's ports;
/// the series of the host's sshd have an empty (so absent) container label.
fn scraped(prometheus: &Prometheus) -> Result<BTreeMap<(String, String), f64>, String> {
    let ports = format!("{}|{}", CRASHING.port(), KILLED.port());
    let samples = prometheus.query(&format!(
        "sshtrace_verdicts_total{{job=\"sshtrace\", port=~\"{ports}\"}}"
    ))?;
    let mut counts = BTreeMap::new();
    for s in &samples {
        let labels = &s["metric"];
        if labels.get("container").is_some() {
            return Err(format!("a host sshd's verdict with a container: {s}"));
        }
        let key = (
            labels["cause"].as_str().unwrap_or_default().to_owned(),
            labels["port"].as_str().unwrap_or_default().to_owned(),
        );
        counts.insert(key, sample_value(s).ok_or(format!("no value: {s}"))?);
    }
    Ok(counts)
}

/// The single value of an instant query.
fn scalar(prometheus: &Prometheus, expr: &str) -> Result<f64, String> {
    match prometheus.query(expr)?.as_slice() {
        [one] => sample_value(one).ok_or(format!("no value: {one}")),
        other => Err(format!("{expr}: {other:?}")),
    }
}

#[test]
fn verdicts_by_cause_reach_a_real_prometheus() {
    if !privileged("verdicts_by_cause_reach_a_real_prometheus") {
        return;
    }
    let endpoint = free_address();
    let tracer = Tracer::start(&["--metrics", &endpoint.to_string()]);
    let prometheus = Prometheus::start("verdicts", endpoint);
    provoke_crashes_and_a_kill();

    // What sshtrace printed is what Prometheus must show, series by series.
    let expected = wait_for(
        "the verdicts on standard output",
        Duration::from_secs(15),
        || {
            let counts = printed(&tracer);
            let crashed = (String::from("sshd_crashed"), CRASHING.port().to_string());
            let killed = (String::from("sshd_killed"), KILLED.port().to_string());
            (counts.get(&crashed) == Some(&(CRASHES as f64)) && counts.get(&killed) == Some(&1.0))
                .then_some(counts)
        },
    );
    poll("Prometheus to scrape the verdicts", || {
        match scraped(&prometheus) {
            Ok(seen) if seen == expected => Ok(()),
            seen => Err(format!(
                "expected {expected:?}, seen {seen:?}; Prometheus's log: {}",
                prometheus.log()
            )),
        }
    });

    let version = prometheus.query("sshtrace_build_info").unwrap();
    assert_eq!(version.len(), 1, "{version:?}");
    assert_eq!(version[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(scalar(&prometheus, "up{job=\"sshtrace\"}"), Ok(1.0));
    for positive in [
        "sshtrace_kernel_events_read_total",
        "sshtrace_resident_memory_bytes",
        "sshtrace_output_records_delivered_total{output=\"-\"}",
    ] {
        let value = scalar(&prometheus, positive).unwrap();
        assert!(value > 0.0, "{positive} = {value}");
    }
    assert_eq!(
        scalar(&prometheus, "sshtrace_kernel_events_lost_total"),
        Ok(0.0)
    );
    assert_eq!(
        scalar(&prometheus, "sshtrace_metrics_series_capped_total"),
        Ok(0.0)
    );
    assert_rules_healthy(&prometheus);
}

/// Polls `check` every 50 ms until it is Ok; past a deadline, fails with what it last saw.
fn poll(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + sshtrace_tests::patient(Duration::from_secs(30));
    loop {
        match check() {
            Ok(()) => return,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("timed out waiting for {what}: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Prometheus loaded the shipped rules and evaluates them against sshtrace's series.
fn assert_rules_healthy(prometheus: &Prometheus) {
    poll("the alerting rules to be evaluated", || {
        let answer = prometheus.api("/api/v1/rules")?;
        let rules: Vec<&Value> = answer["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let healthy = rules.len() == 4 && rules.iter().all(|r| r["health"] == "ok");
        if healthy {
            Ok(())
        } else {
            Err(format!("{answer:#}"))
        }
    });
}

#[test]
fn the_shipped_alerting_rules_pass_promtool() {
    prometheus::require(PROMTOOL);
    let rules = prometheus::alert_rules();
    let out = run(Command::new(PROMTOOL).args(["check", "rules"]).arg(&rules));
    assert!(out.status.success(), "{out:?}");
    let tests = rules.with_file_name("sshtrace-alerts.test.yml");
    let out = run(Command::new(PROMTOOL).args(["test", "rules"]).arg(&tests));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Scrapers that connect and never ask take the endpoint's slots, and one more is closed at
/// once: a refusal made while they hold them is judged as ever; the stalled ones are cut off,
/// and every connection closed unanswered is counted.
#[test]
fn stalled_scrapers_are_cut_off_and_hold_no_verdict_back() {
    if !privileged("stalled_scrapers_are_cut_off_and_hold_no_verdict_back") {
        return;
    }
    const SLOTS: usize = 8;
    let endpoint = free_address();
    let port = REFUSED.port().to_string();
    let tracer = Tracer::start(&["--metrics", &endpoint.to_string(), "--port", &port]);
    let mut stalled: Vec<TcpStream> = (0..SLOTS)
        .map(|_| TcpStream::connect(endpoint).expect("connect to the metrics port"))
        .collect();
    let mut excess = TcpStream::connect(endpoint).expect("connect to the metrics port");
    assert!(TcpStream::connect((REFUSED.addr().as_str(), REFUSED.port())).is_err());
    tracer.verdict_for(REFUSED.port(), |v| v["cause"] == "not_listening");

    for stream in stalled.iter_mut().chain([&mut excess]) {
        stream
            .set_read_timeout(Some(sshtrace_tests::patient(Duration::from_secs(10))))
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            stream.read(&mut buf).ok(),
            Some(0),
            "closed without an answer"
        );
    }
    let page = wait_for("a scrape to be answered", Duration::from_secs(10), || {
        prometheus::get(endpoint, "/metrics").ok()
    });
    assert_eq!(page.0, 200, "{page:?}");
    for (reason, count) in [("busy", 1), ("timeout", SLOTS)] {
        let line =
            format!("sshtrace_metrics_connections_dropped_total{{reason=\"{reason}\"}} {count}");
        assert!(
            page.1.lines().any(|l| l == line),
            "{line} not in {}",
            page.1
        );
    }
}

fn one_error_line(args: &[&str]) -> String {
    let out = run(Command::new(sshtrace_bin()).args(args));
    assert!(!out.status.success(), "expected failure: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "expected one line: {stderr}");
    stderr
}

#[test]
fn a_bad_metrics_address_is_one_error_line() {
    for bad in [
        "localhost:9640",
        "127.0.0.1",
        "127.0.0.1:0",
        "x\ny:1",
        "[::1]:99999",
    ] {
        let line = one_error_line(&["--metrics", bad]);
        assert!(line.starts_with("sshtrace: error: --metrics "), "{line}");
    }
    if !privileged("a_bad_metrics_address_is_one_error_line (address in use)") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let line = one_error_line(&["--metrics", &addr.to_string()]);
    assert!(line.contains("cannot listen"), "{line}");
}
