//! The tracers compared: sshtrace, an equivalent bpftrace script (tracepoints only) and tcpdump
//! capturing resets, each started and stopped the way an operator would.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::load::{port, ORDERLY};
use crate::cmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    None,
    Sshtrace,
    Bpftrace,
    Tcpdump,
}

impl Kind {
    pub const ALL: [Self; 4] = [Self::None, Self::Sshtrace, Self::Bpftrace, Self::Tcpdump];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Sshtrace => "sshtrace",
            Self::Bpftrace => "bpftrace (tracepoints)",
            Self::Tcpdump => "tcpdump (RSTs)",
        }
    }

    /// Starts this tracer on the orderly storm's port (`None` for no tracer).
    pub fn start(self, sshtrace_binary: &Path) -> Result<Option<Tracer>> {
        Ok(match self {
            Self::None => None,
            Self::Sshtrace => Some(sshtrace(sshtrace_binary, &["--port", port(ORDERLY)])?.0),
            Self::Bpftrace => Some(bpftrace()?.0),
            Self::Tcpdump => Some(tcpdump()?),
        })
    }
}

/// A tracer running in the background, stopped (SIGINT, as Ctrl-C) when dropped; one that
/// does not stop within 10 s is killed.
pub struct Tracer(Child);

impl Tracer {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops it (SIGINT) and waits for it to exit.
    pub fn stop(mut self) -> Result<()> {
        self.interrupt_and_wait();
        Ok(())
    }

    fn interrupt_and_wait(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                wait_for_detach();
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt_and_wait();
        }
    }
}

/// sshtrace leaves the slow detach of its programs to a child (`sshtrace-detach`) that
/// outlives it by about a second: the next measurement starts once they are gone.
fn wait_for_detach() {
    let deadline = Instant::now() + Duration::from_secs(10);
    let detaching = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "sshtrace-detach")
            })
    };
    while detaching() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `command` and waits for a line on its standard output or error containing `ready`;
/// returns it with the time that took. Its output is drained from then on, so that it never
/// blocks on a full pipe.
fn start_ready(mut command: Command, ready: &'static str) -> Result<(Tracer, Duration)> {
    let t0 = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {command:?}"))?;
    let (tx, rx) = mpsc::channel();
    let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for stream in streams.into_iter().flatten() {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let tracer = Tracer(child);
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains(ready) {
                let elapsed = t0.elapsed();
                thread::spawn(move || for _ in rx {});
                return Ok((tracer, elapsed));
            }
        }
    }
    bail!("{command:?} did not become ready")
}

/// sshtrace, attached; and how long attaching took from process start.
pub fn sshtrace(binary: &Path, args: &[&str]) -> Result<(Tracer, Duration)> {
    let mut c = Command::new(binary);
    c.args(args);
    start_ready(c, "sshtrace: attached")
}

/// What sshtrace's default mode watches on the storm's port, as bpftrace tracepoint probes:
/// resets, socket states on the port, process exits.
const BPFTRACE_SCRIPT: &str = "tracepoint:tcp:tcp_send_reset { @resets[args->reason] = count(); } \
     tracepoint:sock:inet_sock_set_state /args->sport == 22777 || args->dport == 22777/ { @states[args->newstate] = count(); } \
     tracepoint:sched:sched_process_exit { @exits = count(); }";

/// bpftrace with the script equivalent to sshtrace's default mode.
pub fn bpftrace() -> Result<(Tracer, Duration)> {
    bpftrace_with(BPFTRACE_SCRIPT)
}

/// bpftrace prints "Attaching N probes..." before it attaches: ready a moment later.
pub fn bpftrace_with(script: &str) -> Result<(Tracer, Duration)> {
    let mut c = Command::new("bpftrace");
    c.args(["-e", script]);
    let started = start_ready(c, "Attaching")?;
    thread::sleep(Duration::from_millis(500));
    Ok(started)
}

fn tcpdump() -> Result<Tracer> {
    let mut c = Command::new("tcpdump");
    let filter = format!(
        "tcp port {} and tcp[tcpflags] & tcp-rst != 0",
        port(ORDERLY)
    );
    c.args(["-i", "lo", "-w", "/dev/null", &filter]);
    Ok(start_ready(c, "listening on")?.0)
}

/// Installs bpftrace and tcpdump where missing, and mounts tracefs for bpftrace (sshtrace
/// mounts it privately for itself); unmounted again when this is dropped.
pub struct Tools {
    mounted_tracefs: bool,
}

impl Tools {
    pub fn install() -> Result<Self> {
        for (package, path) in [
            ("bpftrace", "/usr/bin/bpftrace"),
            ("tcpdump", "/usr/bin/tcpdump"),
        ] {
            if !Path::new(path).exists() {
                cmd::run(
                    Command::new("apt-get")
                        .args(["install", "-y", "-qq", package])
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                    "bench: apt-get install",
                )?;
            }
        }
        let mounted_tracefs = !Path::new("/sys/kernel/tracing/events").exists();
        if mounted_tracefs {
            cmd::run(
                Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]),
                "bench: mount tracefs for bpftrace",
            )?;
        }
        Ok(Self { mounted_tracefs })
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        if self.mounted_tracefs {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}
