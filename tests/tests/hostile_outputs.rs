//! Hostile hosts, outputs: a full disk, a planted symbolic link, a reader that goes away, a
//! collector that never reads or slams the door, logrotate's SIGHUP. Each done for real to
//! the real sshtrace; besides its own assertions, each checks what every hostile-host test
//! does (`sshtrace_tests::hostile`): the crash is still judged, memory stays bounded, SIGTERM
//! ends it with its summary, nothing dropped goes uncounted and every line parses.

use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use sshtrace_tests::{hostile, kill, privileged, sshtrace_bin, wait_for, Endpoint, Tracer};

/// A temporary directory, removed on drop; with a tmpfs of `size` mounted on it if asked.
struct Scratch {
    dir: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn new(name: &str, tmpfs_size: Option<&str>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sshtrace-hostile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mounted = tmpfs_size.is_some_and(|size| {
            let c = |s: &str| CString::new(s).unwrap();
            let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
            let options = c(&format!("size={size},mode=0755"));
            // SAFETY: NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::mount(
                    c("tmpfs").as_ptr(),
                    target.as_ptr(),
                    c("tmpfs").as_ptr(),
                    0,
                    options.as_ptr().cast(),
                )
            };
            assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
            true
        });
        Self { dir, mounted }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (SIGINT, which detaches its programs) if the test fails first.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            kill(self.0.id(), libc::SIGINT);
            let _ = self.0.wait();
        }
    }
}

/// A connection from 127.0.N.`client` refused on `ep`'s closed port: one `not_listening`
/// verdict (a client address of its own, so that no refusal is folded into another's).
fn refuse(ep: Endpoint, client: u8) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, ep.n, client], 0)).into())
        .unwrap();
    let to = SocketAddr::from(([127, 0, ep.n, 1], ep.port()));
    assert!(socket.connect(&to.into()).is_err(), "{to} accepted");
}

/// sshtrace tracing `crash`'s and `closed`'s ports, to stdout (JSON) and to `outputs`.
fn trace(crash: Endpoint, closed: Endpoint, outputs: &[&str]) -> Tracer {
    let ports = [crash.port().to_string(), closed.port().to_string()];
    let mut args = vec!["--port", &ports[0], "--port", &ports[1], "-o", "-"];
    for o in outputs {
        args.extend(["-o", o]);
    }
    Tracer::start(&args)
}

/// Waits until `path` holds `n` JSON lines.
fn wait_lines(what: &str, path: &Path, n: usize) {
    wait_for(what, Duration::from_secs(10), || {
        (json_lines(path).len() == n).then_some(())
    });
}

/// Waits for a loss record in `path`; returns every record there.
fn wait_loss_record(path: &Path) -> Vec<Value> {
    wait_for("a loss record in the file", Duration::from_secs(10), || {
        let records = json_lines(path);
        records
            .iter()
            .any(|r| r["type"] == "loss")
            .then_some(records)
    })
}

/// Every line of `path`, each parsed as JSON (panics on one that is not).
fn json_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l:?}", path.display()))
        })
        .collect()
}

/// `sshtrace: output NAME: P produced, D delivered, X dropped, U undelivered at exit`, checked
/// to add up; returns X.
fn dropped_at_exit(tracer: &Tracer, name: &str) -> u64 {
    let prefix = format!("sshtrace: output {name}: ");
    let line = tracer
        .stderr_lines()
        .into_iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("no exit line for {name}"));
    let n: Vec<u64> = line
        .split(", ")
        .map(|p| p.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(n[0], n[1] + n[2] + n[3], "{line}");
    n[2]
}

/// What loss records in `records` report dropped by `sink`.
fn reported_dropped(records: &[Value], sink: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["type"] == "loss" && r["sink"] == sink)
        .map(|r| r["dropped"].as_u64().unwrap())
        .sum()
}

/// A disk that fills up must not stop tracing; once it has room again the gap is reported in
/// the file itself, and a write cut short never leaves a broken line behind.
#[test]
fn full_disk_file_output_resumes_and_reports_the_gap() {
    if !privileged("full_disk_file_output_resumes_and_reports_the_gap") {
        return;
    }
    let (crash, closed) = (Endpoint::new(220), Endpoint::new(221));
    let disk = Scratch::new("full-disk", Some("1M"));
    let file = disk.path("verdicts.jsonl");
    let sink = format!("file://{}?queue=2", file.display());
    let mut tracer = trace(crash, closed, &[&sink]);
    refuse(closed, 2);
    wait_lines("the first verdict in the file", &file, 1);
    // Filled to the last byte, so that the next writes fail part-way, then altogether.
    let mut filler = fs::File::create(disk.path("filler")).unwrap();
    while filler.write_all(&[b'x'; 512]).is_ok() {}
    for client in 3..13 {
        refuse(closed, client);
    }
    wait_for("11 verdicts on stdout", Duration::from_secs(10), || {
        (tracer.verdicts(closed.port()).len() == 11).then_some(())
    });
    hostile::crash_is_still_judged(&tracer, "hostile-full-disk", crash);
    drop(filler);
    fs::remove_file(disk.path("filler")).unwrap();
    let records = wait_loss_record(&file);
    assert!(
        records.iter().filter(|r| r["type"] == "verdict").count() >= 3,
        "{records:#?}"
    );
    hostile::assert_peak_rss_bounded(&tracer);
    hostile::stop_with_sigterm(&mut tracer);
    let dropped = dropped_at_exit(&tracer, &sink);
    assert!(dropped > 0, "nothing dropped: the disk never filled");
    assert_eq!(reported_dropped(&json_lines(&file), &sink), dropped);
}

/// sshtrace runs as root: a symbolic link planted at a file output's path must never be
/// written through, at start-up (refused) or later (reported, not followed, counted).
#[test]
fn planted_symlink_is_never_followed() {
    if !privileged("planted_symlink_is_never_followed") {
        return;
    }
    let (crash, closed) = (Endpoint::new(222), Endpoint::new(223));
    let dir = Scratch::new("symlink", None);
    let (file, precious) = (dir.path("verdicts.jsonl"), dir.path("precious"));
    fs::write(&precious, "precious\n").unwrap();
    std::os::unix::fs::symlink(&precious, &file).unwrap();
    let sink = format!("file://{}?queue=2", file.display());
    let refused = Command::new(sshtrace_bin())
        .args(["--json", "-o", &sink])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.trim_end().lines().count() == 1 && stderr.contains("is a symbolic link"),
        "{stderr}"
    );

    fs::remove_file(&file).unwrap();
    let mut tracer = trace(crash, closed, &[&sink]);
    refuse(closed, 2);
    wait_lines("the first verdict in the file", &file, 1);
    fs::rename(&file, dir.path("verdicts.jsonl.1")).unwrap();
    std::os::unix::fs::symlink(&precious, &file).unwrap();
    kill(tracer.pid(), libc::SIGHUP);
    tracer.wait_stderr("the link reported", |l| {
        l.contains("is a symbolic link; not followed")
    });
    for client in 3..8 {
        refuse(closed, client);
    }
    hostile::crash_is_still_judged(&tracer, "hostile-symlink", crash);
    assert_eq!(fs::read_to_string(&precious).unwrap(), "precious\n");
    fs::remove_file(&file).unwrap();
    let records = wait_loss_record(&file);
    let meta = fs::symlink_metadata(&file).unwrap();
    assert!(
        meta.file_type().is_file() && meta.permissions().mode() & 0o7777 == 0o640,
        "{meta:?}"
    );
    hostile::assert_peak_rss_bounded(&tracer);
    hostile::stop_with_sigterm(&mut tracer);
    let dropped = dropped_at_exit(&tracer, &sink);
    assert!(dropped > 0);
    assert_eq!(
        reported_dropped(&json_lines(&file), &sink),
        dropped,
        "{records:#?}"
    );
    assert_eq!(fs::read_to_string(&precious).unwrap(), "precious\n");
}

/// `sshtrace --json | head -1`: once its reader is gone sshtrace stops promptly and quietly —
/// status 0, its summary on standard error, no panic — as a Unix filter does.
#[test]
fn closed_stdout_ends_sshtrace_promptly_and_quietly() {
    if !privileged("closed_stdout_ends_sshtrace_promptly_and_quietly") {
        return;
    }
    let closed = Endpoint::new(224);
    let mut child = Reap(
        Command::new(sshtrace_bin())
            .args(["--json", "--port", &closed.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = stderr.clone();
    let reader = BufReader::new(child.0.stderr.take().unwrap());
    let stderr_done = thread::spawn(move || {
        reader
            .lines()
            .map_while(Result::ok)
            .for_each(|l| lines.lock().unwrap().push(l));
    });
    wait_for("sshtrace to attach", Duration::from_secs(15), || {
        stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("sshtrace: attached"))
            .then_some(())
    });
    refuse(closed, 2);
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let verdict: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(verdict["cause"], "not_listening");
    // The reader (and so the pipe's read end) is dropped: that is `head` exiting.
    let status = wait_for("sshtrace to exit", Duration::from_secs(1), || {
        child.0.try_wait().ok().flatten()
    });
    stderr_done.join().unwrap();
    let stderr = stderr.lock().unwrap().join("\n");
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("sshtrace summary: "), "{stderr}");
    assert!(stderr.contains("sshtrace: output -: "), "{stderr}");
}

/// Collectors that accept and never read, or accept and close at once, cost tracing nothing:
/// the crash verdict still comes, reconnections back off, warnings are rate-limited.
#[test]
fn stalled_and_slamming_collectors_do_not_disturb_tracing() {
    if !privileged("stalled_and_slamming_collectors_do_not_disturb_tracing") {
        return;
    }
    let (crash, closed) = (Endpoint::new(225), Endpoint::new(226));
    // A receive buffer as small as the kernel allows: the sender's buffer fills up at once.
    let silent = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    silent.set_recv_buffer_size(1).unwrap();
    silent
        .bind(&SocketAddr::from(([127, 0, crash.n, 1], crash.port() + 100)).into())
        .unwrap();
    silent.listen(8).unwrap();
    let silent = TcpListener::from(silent);
    let slamming = TcpListener::bind((crash.addr(), crash.port() + 101)).unwrap();
    let (silent_url, slamming_url) = (
        format!("tcp://{}?queue=4", silent.local_addr().unwrap()),
        format!("tcp://{}?queue=4", slamming.local_addr().unwrap()),
    );
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    thread::spawn(move || {
        silent
            .incoming()
            .map_while(Result::ok)
            .for_each(|c| keep.lock().unwrap().push(c));
    });
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        slamming.incoming().map_while(Result::ok).for_each(|c| {
            count.fetch_add(1, Ordering::SeqCst);
            drop(c);
        });
    });
    let mut tracer = trace(crash, closed, &[&silent_url, &slamming_url]);
    // A verdict every 100 ms for 3 s: the collectors always have something to be sent.
    let before = accepted.load(Ordering::SeqCst);
    for client in 2..32 {
        refuse(closed, client);
        thread::sleep(Duration::from_millis(100));
    }
    let in_3s = accepted.load(Ordering::SeqCst) - before;
    assert!(in_3s <= 12, "{in_3s} connections in 3 s: no backoff");
    wait_for("30 verdicts on stdout", Duration::from_secs(10), || {
        (tracer.verdicts(closed.port()).len() == 30).then_some(())
    });
    hostile::crash_is_still_judged(&tracer, "hostile-collectors", crash);
    hostile::assert_peak_rss_bounded(&tracer);
    hostile::stop_with_sigterm(&mut tracer);
    let about_slamming = tracer
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains(&slamming_url) && !l.contains("at exit"))
        .count();
    assert!(
        about_slamming <= 2,
        "warnings not rate-limited: {about_slamming} lines"
    );
    // Neither collector can take a loss record: the exit lines count everything.
    dropped_at_exit(&tracer, &silent_url);
    assert!(dropped_at_exit(&tracer, &slamming_url) > 0);
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "the silent collector's connection was dropped"
    );
}

/// logrotate's convention: the file renamed away, then SIGHUP: a new file appears at the path
/// and gets the next verdicts, and sshtrace goes on tracing.
#[test]
fn sighup_reopens_a_renamed_file_output() {
    if !privileged("sighup_reopens_a_renamed_file_output") {
        return;
    }
    let (crash, closed) = (Endpoint::new(227), Endpoint::new(228));
    let dir = Scratch::new("sighup", None);
    let (file, rotated) = (dir.path("verdicts.jsonl"), dir.path("verdicts.jsonl.1"));
    let sink = format!("file://{}", file.display());
    let mut tracer = trace(crash, closed, &[&sink]);
    refuse(closed, 2);
    wait_lines("the first verdict in the file", &file, 1);
    fs::rename(&file, &rotated).unwrap();
    refuse(closed, 3);
    wait_lines("the second verdict, in the renamed file", &rotated, 2);
    kill(tracer.pid(), libc::SIGHUP);
    wait_for("a new file at the path", Duration::from_secs(5), || {
        file.exists().then_some(())
    });
    refuse(closed, 4);
    let third = tracer.verdict_for(closed.port(), |v| {
        v["conn"]["remote_addr"] == format!("127.0.{}.4", closed.n)
    });
    wait_for(
        "the third verdict in the new file",
        Duration::from_secs(10),
        || {
            json_lines(&file)
                .iter()
                .any(|r| r["conn"] == third["conn"])
                .then_some(())
        },
    );
    hostile::crash_is_still_judged(&tracer, "hostile-sighup", crash);
    assert_eq!(json_lines(&rotated).len(), 2);
    hostile::assert_peak_rss_bounded(&tracer);
    hostile::stop_with_sigterm(&mut tracer);
    assert_eq!(dropped_at_exit(&tracer, &sink), 0);
}
