//! The real sshtrace binary, run with `--json`; its verdicts are collected as they arrive.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{kill, patient, sshtrace_bin, wait_for};

pub struct Tracer {
    child: Child,
    verdicts: Arc<Mutex<Records>>,
    /// Standard output as lines, for the text view.
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    /// Starts `sshtrace --json ARGS` and waits until it reports its hooks attached.
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(true, args)
    }

    /// Starts `sshtrace client --json ARGS`: the client side, verdicts about this host's own
    /// `ssh` clients.
    pub fn start_client(args: &[&str]) -> Self {
        let mut command = Command::new(sshtrace_bin());
        command.args(["client", "--json"]).args(args);
        Self::spawn_command(command, true)
    }

    /// Starts sshtrace with the human view on standard output.
    pub fn start_text(args: &[&str]) -> Self {
        Self::spawn(false, args)
    }

    /// Starts `sshtrace --json ARGS` inside the mount namespace `ns` (`/proc/PID/ns/mnt`):
    /// nsenter enters it and executes sshtrace in its own place, so [`Self::pid`] is
    /// sshtrace's.
    pub fn start_in_mount_namespace(ns: &std::path::Path, args: &[&str]) -> Self {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--mount={}", ns.display()))
            .arg("--")
            .arg(sshtrace_bin())
            .arg("--json")
            .args(args);
        Self::spawn_command(command, true)
    }

    fn spawn(json: bool, args: &[&str]) -> Self {
        let mut command = Command::new(sshtrace_bin());
        command.args(json.then_some("--json")).args(args);
        Self::spawn_command(command, json)
    }

    fn spawn_command(mut command: Command, json: bool) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sshtrace");
        let verdicts = Arc::new(Mutex::new(Records::default()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let (sink, raw) = (verdicts.clone(), stdout.clone());
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if json {
                    let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("sshtrace printed a line that is not JSON ({e}): {line}")
                    });
                    sink.lock().unwrap().add(value);
                }
                raw.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[sshtrace] {line}");
                log.lock().unwrap().push(line);
            }
        });
        let tracer = Self {
            child,
            verdicts,
            stdout,
            stderr,
        };
        tracer.wait_stderr("sshtrace to attach", |l| {
            l.starts_with("sshtrace: attached")
        });
        tracer
    }

    /// Waits for a line on sshtrace's standard error; panics if sshtrace exits first.
    pub fn wait_stderr(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        wait_for(what, Duration::from_secs(15), || {
            let lines = self.stderr.lock().unwrap();
            if let Some(found) = lines.iter().find(|l| matches(l)) {
                return Some(found.clone());
            }
            if lines.iter().any(|l| l.starts_with("sshtrace: error")) {
                panic!("sshtrace failed: {lines:?}");
            }
            None
        })
    }

    /// Waits for the first verdict about local port `port` that satisfies `matches`; on
    /// time-out, fails with the verdicts that did arrive for that port.
    pub fn verdict_for(&self, port: u16, matches: impl Fn(&Value) -> bool) -> Value {
        let start = std::time::Instant::now();
        let deadline = patient(Duration::from_secs(15));
        loop {
            if let Some(v) = self.verdicts(port).into_iter().find(|v| matches(v)) {
                return v;
            }
            if start.elapsed() > deadline {
                panic!(
                    "no matching verdict on port {port} within {deadline:?}; got {:#?}",
                    self.verdicts(port)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first JSON record that satisfies `matches`, whatever its port (a client's
    /// verdict is about its own ephemeral port); on time-out, fails with every record.
    pub fn record_where(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let start = std::time::Instant::now();
        let deadline = patient(Duration::from_secs(15));
        loop {
            if let Some(v) = self.records().into_iter().find(|v| matches(v)) {
                return v;
            }
            if start.elapsed() > deadline {
                panic!("no {what} within {deadline:?}; got {:#?}", self.records());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every verdict so far about local port `port`.
    pub fn verdicts(&self, port: u16) -> Vec<Value> {
        let records = self.verdicts.lock().unwrap();
        records
            .by_port
            .get(&port)
            .map(|at| at.iter().map(|&i| records.all[i].clone()).collect())
            .unwrap_or_default()
    }

    /// Every JSON record so far: verdicts, loss records, the summary.
    pub fn records(&self) -> Vec<Value> {
        self.verdicts.lock().unwrap().all.clone()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops sshtrace with SIGINT (as Ctrl-C does) and returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        kill(self.child.id(), libc::SIGINT);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for sshtrace to exit (a deadline, made patient); panics past it.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for("sshtrace to exit", timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

/// The JSON records sshtrace printed, indexed by the local port of the verdicts: a storm's
/// hundred thousand verdicts must not make every look-up of one port's a scan of them all.
#[derive(Default)]
struct Records {
    all: Vec<Value>,
    by_port: std::collections::HashMap<u16, Vec<usize>>,
}

impl Records {
    fn add(&mut self, record: Value) {
        if let Some(port) = record["conn"]["local_port"].as_u64() {
            let port = u16::try_from(port).expect("a port");
            self.by_port.entry(port).or_default().push(self.all.len());
        }
        self.all.push(record);
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill(self.child.id(), libc::SIGINT);
            thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
