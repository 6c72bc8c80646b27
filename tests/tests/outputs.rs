//! Outputs to real collectors: a TCP JSON-lines receiver that goes away and comes back
//! (nothing lost silently: delivered + dropped == produced, and a loss record says so), rsyslog
//! receiving RFC 5424 over TCP and UDP, and a hostile process name that must stay inside its
//! field in every output.

use std::{net::TcpStream, time::Duration};

use serde_json::Value;
use sshtrace_tests::{
    collectors::{LineReceiver, Rsyslog},
    privileged,
    sshd::build_program,
    wait_for, Endpoint, Sshd, SshdOptions, Tracer,
};

/// A refused connection to `port` on `addr`: one `not_listening` verdict.
fn refuse(addr: &str, port: u16) {
    assert!(TcpStream::connect((addr, port)).is_err());
}

fn verdict_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `output NAME: P produced, D delivered, X dropped, U undelivered at exit` → (P, D, X, U).
fn output_counts(tracer: &Tracer, name: &str) -> (u64, u64, u64, u64) {
    let prefix = format!("sshtrace: output {name}: ");
    let line = tracer
        .stderr_lines()
        .into_iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .expect("summary line");
    let n: Vec<u64> = line
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    (n[0], n[1], n[2], n[3])
}

#[test]
fn tcp_collector_outage_is_counted_and_reported() {
    if !privileged("tcp_collector_outage_is_counted_and_reported") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(160);
    let collector_addr = format!("{}:{}", ep.addr(), ep.port());
    let closed = Endpoint::new(161).port();
    let mut collector = LineReceiver::start(&collector_addr);
    let sink = format!("tcp://{collector_addr}?queue=3");
    let mut tracer = Tracer::start(&["--port", &closed.to_string(), "-o", "-", "-o", &sink]);

    refuse(&ep.addr(), closed);
    refuse(&ep.addr(), closed);
    wait_for(
        "2 records at the collector",
        Duration::from_secs(10),
        || (collector.lines().len() == 2).then_some(()),
    );

    collector.stop();
    for _ in 0..6 {
        refuse(&ep.addr(), closed);
    }
    wait_for("8 verdicts on stdout", Duration::from_secs(10), || {
        (tracer.verdicts(closed).len() == 8).then_some(())
    });
    collector.resume();
    // The three queued verdicts, after a loss record for the three dropped ones.
    wait_for(
        "the collector to get the queue",
        Duration::from_secs(15),
        || (collector.lines().len() == 6).then_some(()),
    );
    refuse(&ep.addr(), closed);
    wait_for("the last verdict", Duration::from_secs(10), || {
        (collector.lines().len() == 7).then_some(())
    });
    assert!(tracer.stop().success());

    let received = verdict_lines(&collector.lines());
    let losses: Vec<&Value> = received.iter().filter(|v| v["type"] == "loss").collect();
    assert_eq!(losses.len(), 1, "{received:#?}");
    assert_eq!(losses[0]["dropped"], 3);
    assert_eq!(losses[0]["dropped_total"], 3);
    assert_eq!(losses[0]["sink"], sink.as_str());
    assert_eq!(
        received.iter().filter(|v| v["type"] == "verdict").count(),
        6,
        "{received:#?}"
    );
    let (produced, delivered, dropped, undelivered) = output_counts(&tracer, &sink);
    assert_eq!((produced, delivered, dropped, undelivered), (9, 6, 3, 0));
    assert_eq!(delivered + dropped, produced);
}

#[test]
fn rsyslog_receives_rfc5424_over_tcp_and_udp() {
    if !privileged("rsyslog_receives_rfc5424_over_tcp_and_udp") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(162);
    let (tcp, udp) = (ep.port(), ep.port() + 100);
    let rsyslog = Rsyslog::start("rfc5424", &ep.addr(), tcp, udp);
    let closed = Endpoint::new(163).port();
    let tcp_sink = format!("syslog+tcp://{}:{tcp}", ep.addr());
    let udp_sink = format!("syslog+udp://{}:{udp}", ep.addr());
    let tracer = Tracer::start(&[
        "--port",
        &closed.to_string(),
        "-o",
        "-",
        "-o",
        &tcp_sink,
        "-o",
        &udp_sink,
    ]);

    refuse(&ep.addr(), closed);
    let verdict = tracer.verdict_for(closed, |v| v["cause"] == "not_listening");
    let messages = wait_for("both messages at rsyslog", Duration::from_secs(10), || {
        let m = rsyslog.messages();
        (m.len() == 2).then_some(m)
    });
    let mut inputs: Vec<&str> = messages.iter().map(|m| m[0].as_str()).collect();
    inputs.sort();
    assert_eq!(inputs, ["imtcp", "imudp"]);
    for m in &messages {
        assert_eq!(m.len(), 9, "{m:?}");
        let (pri, version, host, app, procid, msgid, sd, msg) =
            (&m[1], &m[2], &m[3], &m[4], &m[5], &m[6], &m[7], &m[8]);
        assert_eq!(
            (pri.as_str(), version.as_str(), app.as_str()),
            ("28", "1", "sshtrace")
        );
        assert_eq!(host, verdict["host"].as_str().unwrap());
        assert_eq!(procid, &tracer.pid().to_string());
        assert_eq!(msgid, "not_listening");
        assert!(
            sd.starts_with("[sshtrace@32473 cause=\"not_listening\" outcome=\"refused\""),
            "{sd}"
        );
        assert!(
            sd.contains(&format!("local=\"{}:{closed}\"", ep.addr())),
            "{sd}"
        );
        assert_eq!(msg.trim_start(), verdict["summary"].as_str().unwrap());
    }
}

/// A killer whose name holds a newline, quotes, `]`, a backslash and an escape sequence: every
/// output stays well-formed and the name stays inside its field.
#[test]
fn hostile_process_name_stays_inside_its_field_in_every_output() {
    if !privileged("hostile_process_name_stays_inside_its_field_in_every_output") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(164);
    let (tcp, udp) = (ep.port() + 100, ep.port() + 101);
    let rsyslog = Rsyslog::start("hostile", &ep.addr(), tcp, udp);
    let json_addr = format!("{}:{}", ep.addr(), ep.port() + 102);
    let receiver = LineReceiver::start(&json_addr);
    // Not in sshd's directory: sshd starts after sshtrace opened the file.
    let file = rsyslog.dir.join("verdicts.jsonl");
    let port = ep.port().to_string();
    let outputs = [
        "-".to_owned(),
        format!("file://{}", file.display()),
        format!("tcp://{json_addr}"),
        format!("syslog+tcp://{}:{tcp}", ep.addr()),
        format!("syslog+udp://{}:{udp}", ep.addr()),
    ];
    let mut args = vec!["--port", port.as_str()];
    for o in &outputs {
        args.extend(["-o", o.as_str()]);
    }
    let json_tracer = Tracer::start(&args);
    let text_tracer = Tracer::start_text(&["--port", &port, "-v"]);
    let sshd = Sshd::start("hostile", ep, SshdOptions::default());

    let mut client = sshd.ssh_command("sleep 60").spawn().unwrap();
    let session = sshd.wait_for_session();
    let killer = build_program("named_kill.c", &sshd.files.dir);
    let hostile = "k\n]\"\\\x1b[2Jx";
    let status = std::process::Command::new(&killer)
        .args([hostile, &session.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = client.wait();

    let v = json_tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_killed");
    assert_eq!(
        v["details"]["sender_comm"], hostile,
        "JSON keeps the exact name"
    );
    let check_json = |lines: Vec<String>, source: &str| {
        let parsed = verdict_lines(&lines);
        assert!(
            parsed
                .iter()
                .any(|p| p["details"]["sender_comm"] == hostile),
            "{source}: {lines:?}"
        );
    };
    wait_for("the TCP receiver", Duration::from_secs(10), || {
        (!receiver.lines().is_empty()).then_some(())
    });
    check_json(receiver.lines(), "tcp");
    let file_lines = wait_for("the file", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&file).ok()?;
        (!text.is_empty()).then(|| text.lines().map(str::to_owned).collect::<Vec<_>>())
    });
    check_json(file_lines, "file");

    let messages = wait_for("rsyslog", Duration::from_secs(10), || {
        let m = rsyslog.messages();
        (m.len() >= 2).then_some(m)
    });
    for m in &messages {
        assert_eq!(m.len(), 9, "a message was split: {m:?}");
        // Control characters shown as \n and \x1b, then `"`, `\` and `]` escaped for SD-PARAM.
        assert!(
            m[7].contains(r#"sender_comm="k\\n\]\"\\\\x1b[2Jx""#),
            "SD-PARAM escaping: {}",
            m[7]
        );
        assert!(m[8].contains("k\\n]\"\\\\x1b[2Jx"), "MSG: {}", m[8]);
    }

    let line = wait_for("the text line", Duration::from_secs(10), || {
        text_tracer
            .stdout_lines()
            .into_iter()
            .find(|l| l.contains("sshd_killed"))
    });
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(line.contains("k\\n]\"\\\\x1b[2Jx"), "{line}");
    assert!(text_tracer
        .stdout_lines()
        .iter()
        .all(|l| !l.contains('\x1b')));
}

#[test]
fn unix_socket_and_rotated_file_receive_json_lines() {
    if !privileged("unix_socket_and_rotated_file_receive_json_lines") {
        return;
    }
    let _alone = sshtrace_tests::alone();
    let ep = Endpoint::new(165);
    let closed = Endpoint::new(166).port();
    let dir = std::env::temp_dir().join(format!("sshtrace-outputs-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("collector.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        }
    });
    let file = dir.join("verdicts.jsonl");
    let unix = format!("unix://{}", socket.display());
    // Small enough that every verdict starts a new file: keep=2 leaves the newest three.
    let rotated = format!("file://{}?max_size=100&keep=2", file.display());
    let tracer = Tracer::start(&[
        "--port",
        &closed.to_string(),
        "-o",
        "-",
        "-o",
        &unix,
        "-o",
        &rotated,
    ]);
    for _ in 0..4 {
        refuse(&ep.addr(), closed);
    }
    wait_for(
        "4 lines on the unix socket",
        Duration::from_secs(10),
        || (lines.lock().unwrap().len() == 4).then_some(()),
    );
    assert_eq!(verdict_lines(&lines.lock().unwrap()).len(), 4);
    wait_for("4 verdicts on stdout", Duration::from_secs(10), || {
        (tracer.verdicts(closed).len() == 4).then_some(())
    });
    let files = wait_for("the rotated files", Duration::from_secs(10), || {
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("verdicts.jsonl"))
            .collect();
        files.sort();
        let newest = std::fs::read_to_string(dir.join("verdicts.jsonl")).unwrap_or_default();
        let newest: Value = serde_json::from_str(newest.lines().next()?).ok()?;
        let fourth = tracer.verdicts(closed).get(3)?["conn"]["remote_port"].clone();
        (files.len() == 3 && newest["conn"]["remote_port"] == fourth).then_some(files)
    });
    assert_eq!(
        files,
        ["verdicts.jsonl", "verdicts.jsonl.1", "verdicts.jsonl.2"]
    );
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            verdict_lines(&text.lines().map(str::to_owned).collect::<Vec<_>>()).len(),
            1,
            "{f}"
        );
    }
    drop(tracer);
    let _ = std::fs::remove_dir_all(&dir);
}
