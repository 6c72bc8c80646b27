//! The outage view: the summary on exit, filters, --count, colour, and the status line that
//! only a terminal gets.

use std::{
    io::Read,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use sshtrace_tests::{privileged, run, sshtrace_bin, wait_for, Endpoint, Tracer};

/// A refused connection from `from` (a 127.0.0.0/8 address) to a closed port.
fn refuse_from(from: &str, to: &str, port: u16) {
    // std cannot bind before connecting: libc does it.
    // SAFETY: creating a socket has no preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    let sockaddr = |addr: &str, port: u16| {
        let ip: std::net::Ipv4Addr = addr.parse().unwrap();
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let (src, dst) = (sockaddr(from, 0), sockaddr(to, port));
    // SAFETY: valid socket and address structures.
    unsafe {
        assert_eq!(
            libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len),
            0
        );
        assert_ne!(
            libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len),
            0,
            "connection was not refused"
        );
        libc::close(fd);
    }
}

#[test]
fn summary_groups_by_cause_with_top_clients() {
    if !privileged("summary_groups_by_cause_with_top_clients") {
        return;
    }
    let ep = Endpoint::new(180);
    let mut tracer = Tracer::start_text(&["--port", &ep.port().to_string(), "--summary-only"]);
    for _ in 0..3 {
        refuse_from("127.0.0.9", &ep.addr(), ep.port());
    }
    refuse_from("127.0.0.8", &ep.addr(), ep.port());
    std::thread::sleep(Duration::from_millis(800));
    assert!(tracer.stop().success());
    let out = tracer.stdout_lines();
    assert!(
        out.iter()
            .any(|l| l.starts_with("sshtrace summary: 4 verdict(s)")),
        "{out:#?}"
    );
    let row = out
        .iter()
        .find(|l| l.starts_with("not_listening"))
        .expect("a not_listening row");
    assert!(row.contains("     4  "), "{row}");
    assert!(row.contains("127.0.0.9 (3), 127.0.0.8 (1)"), "{row}");
    assert!(out.iter().any(|l| l.trim_start().starts_with("hint:")));
    assert!(
        !out.iter().any(|l| l.contains(" refused not_listening:")),
        "--summary-only prints no verdict lines"
    );
}

#[test]
fn json_summary_is_the_last_record() {
    if !privileged("json_summary_is_the_last_record") {
        return;
    }
    let ep = Endpoint::new(181);
    let mut tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    refuse_from("127.0.0.9", &ep.addr(), ep.port());
    tracer.verdict_for(ep.port(), |v| v["cause"] == "not_listening");
    assert!(tracer.stop().success());
    let lines = tracer.stdout_lines();
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["verdicts"], 1);
    assert_eq!(last["causes"][0]["cause"], "not_listening");
    assert_eq!(last["causes"][0]["top_clients"][0]["addr"], "127.0.0.9");
}

#[test]
fn client_and_cause_filters_and_count() {
    if !privileged("client_and_cause_filters_and_count") {
        return;
    }
    let ep = Endpoint::new(182);
    let port = ep.port().to_string();
    let only_client = Tracer::start(&["--port", &port, "--client", "127.0.0.9/32", "--count", "2"]);
    let other_cause = Tracer::start(&["--port", &port, "--cause", "sshd_crashed"]);
    refuse_from("127.0.0.8", &ep.addr(), ep.port());
    refuse_from("127.0.0.9", &ep.addr(), ep.port());
    refuse_from("127.0.0.9", &ep.addr(), ep.port());
    wait_for(
        "--count 2 to stop sshtrace",
        Duration::from_secs(10),
        || {
            only_client
                .stderr_lines()
                .iter()
                .any(|l| l.contains(" verdicts; "))
                .then_some(())
        },
    );
    let seen: Vec<String> = only_client
        .verdicts(ep.port())
        .iter()
        .map(|v| v["conn"]["remote_addr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["127.0.0.9", "127.0.0.9"]);
    std::thread::sleep(Duration::from_millis(600));
    assert!(other_cause.verdicts(ep.port()).is_empty());
}

#[test]
fn unknown_cause_is_a_one_line_error() {
    let out = run(Command::new(sshtrace_bin()).args(["--cause", "gremlins"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1);
    assert!(err.contains("--cause gremlins: unknown cause"));
}

#[test]
fn colour_on_request_status_line_only_on_a_terminal() {
    if !privileged("colour_on_request_status_line_only_on_a_terminal") {
        return;
    }
    let ep = Endpoint::new(183);
    let port = ep.port().to_string();
    let coloured = Tracer::start_text(&["--port", &port, "--color", "always"]);
    let plain = Tracer::start_text(&["--port", &port]);
    refuse_from("127.0.0.9", &ep.addr(), ep.port());
    let line = wait_for("a coloured line", Duration::from_secs(10), || {
        coloured
            .stdout_lines()
            .into_iter()
            .find(|l| l.contains("not_listening"))
    });
    assert!(line.contains("\x1b[33mnot_listening\x1b[0m"), "{line:?}");
    let plain_line = wait_for("a plain line", Duration::from_secs(10), || {
        plain
            .stdout_lines()
            .into_iter()
            .find(|l| l.contains("not_listening"))
    });
    assert!(
        !plain_line.contains('\x1b'),
        "not a terminal: no colour by default"
    );
    assert!(
        !plain
            .stdout_lines()
            .iter()
            .any(|l| l.contains("kernel events/s")),
        "no status line when piped"
    );

    // On a terminal (script(1) gives sshtrace a pty): a status line, redrawn in place.
    let cmd = format!("{} --port {port} --duration 6s", sshtrace_bin().display());
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let captured = captured.clone();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                captured.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    // Its start-up lines share the pty: refuse only once it is attached.
    wait_for(
        "sshtrace attached on the pty",
        Duration::from_secs(20),
        || {
            String::from_utf8_lossy(&captured.lock().unwrap())
                .contains("attached")
                .then_some(())
        },
    );
    refuse_from("127.0.0.9", &ep.addr(), ep.port());
    let _ = child.wait();
    reader.join().unwrap();
    let out = captured.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("\r\x1b[K[") && text.contains("kernel events/s"),
        "{text:?}"
    );
    assert!(
        text.contains("\x1b[33mnot_listening"),
        "colour by default on a terminal: {text:?}"
    );
}

#[test]
fn all_tcp_reports_ports_sshd_does_not_use() {
    if !privileged("all_tcp_reports_ports_sshd_does_not_use") {
        return;
    }
    let ep = Endpoint::new(184);
    // No --port: only --all-tcp makes this port traced.
    let tracer = Tracer::start(&["--all-tcp"]);
    refuse_from("127.0.0.9", &ep.addr(), ep.port());
    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "not_listening");
    assert_eq!(v["conn"]["remote_addr"], "127.0.0.9");
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let out = run(Command::new(sshtrace_bin()).args(["completions", "bash"]));
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_sshtrace()")
            && script.contains("--summary-only")
            && script.contains("doctor")
    );
    let out = run(Command::new(sshtrace_bin()).arg("man"));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH sshtrace 8") && page.contains("\\-\\-container"),
        "{page}"
    );
}
