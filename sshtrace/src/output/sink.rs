//! One output: a bounded queue the event path pushes into without ever waiting, and a task
//! that writes to the destination, reconnecting with backoff. When the queue is full, new
//! records are dropped (the first verdicts of an outage are the ones kept) and counted; once
//! the destination takes records again, a loss record says how many were dropped.

use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram, UnixStream},
    sync::{watch, Notify},
};

use super::{
    journald, json, syslog, text,
    url::{Encoding, SinkSpec, Transport},
    KernelLoss, LossRecord, Record,
};
use crate::clock::Clock;

/// Facts every loss record carries.
pub struct LossContext {
    pub host: String,
    pub clock: Clock,
    /// Kernel events lost so far (ring buffer full) and program runs the kernel skipped, kept
    /// up to date by the tracer.
    pub kernel_lost: AtomicU64,
    pub kernel_skipped_runs: AtomicU64,
}

#[derive(Default)]
pub struct Counters {
    /// Records offered to this output.
    pub produced: AtomicU64,
    /// Records written to the destination.
    pub delivered: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Dropped records no loss record has reported yet.
    unreported: AtomicU64,
}

pub struct Shared {
    pub spec: SinkSpec,
    pub counters: Counters,
    queue: Mutex<VecDeque<Arc<Record>>>,
    wake: Notify,
    /// The terminal's status line, and whether it must be redrawn.
    status: Mutex<String>,
    status_dirty: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(spec: SinkSpec) -> Self {
        Self {
            spec,
            counters: Counters::default(),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            status: Mutex::new(String::new()),
            status_dirty: Default::default(),
        }
    }

    /// Replaces the status line (terminal outputs only).
    pub fn set_status(&self, text: String) {
        if self.spec.status_line {
            *self.status.lock().expect("status lock") = text;
            self.status_dirty.store(true, Relaxed);
            self.wake.notify_one();
        }
    }

    /// Bytes that put `record` above the status line: clear it, write, draw it again.
    fn framed(&self, record: BytesMut) -> BytesMut {
        if !self.spec.status_line {
            return record;
        }
        let status = self.status.lock().expect("status lock").clone();
        let mut out = BytesMut::from(CLEAR_LINE);
        out.extend_from_slice(&record);
        out.extend_from_slice(status.as_bytes());
        out
    }

    /// Never blocks: a full queue drops the record and counts it.
    pub fn push(&self, record: Arc<Record>) {
        self.counters.produced.fetch_add(1, Relaxed);
        let mut queue = self.queue.lock().expect("queue lock");
        if queue.len() >= self.spec.queue {
            self.counters.dropped.fetch_add(1, Relaxed);
            self.counters.unreported.fetch_add(1, Relaxed);
        } else {
            queue.push_back(record);
        }
        drop(queue);
        self.wake.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.queue.lock().expect("queue lock").len()
    }

    fn front(&self) -> Option<Arc<Record>> {
        self.queue.lock().expect("queue lock").front().cloned()
    }

    fn pop_front(&self) {
        self.queue.lock().expect("queue lock").pop_front();
    }
}

fn encode(record: &Record, encoding: &Encoding) -> BytesMut {
    match encoding {
        Encoding::Text { verbose, color } => text::render(record, *verbose, *color),
        // Serialising our own types cannot fail.
        Encoding::JsonLines => json::render(record).unwrap_or_default(),
        Encoding::Syslog { octet_counting } => {
            syslog::render(record, std::process::id(), *octet_counting)
        }
        Encoding::Journald => journald::render(record),
    }
}

enum Connection {
    Stdout(tokio::io::Stdout),
    File { file: std::fs::File, size: u64 },
    Tcp(TcpStream),
    Udp(UdpSocket),
    Unix(UnixStream),
    UnixDatagram(UnixDatagram),
}

async fn connect(transport: &Transport) -> io::Result<Connection> {
    Ok(match transport {
        Transport::Stdout => Connection::Stdout(tokio::io::stdout()),
        Transport::File { path, .. } => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let size = file.metadata()?.len();
            Connection::File { file, size }
        }
        Transport::Tcp(addr) => Connection::Tcp(TcpStream::connect(addr).await?),
        Transport::Udp(addr) => {
            let target = tokio::net::lookup_host(addr)
                .await?
                .next()
                .ok_or(io::ErrorKind::NotFound)?;
            let local = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(target).await?;
            Connection::Udp(socket)
        }
        Transport::UnixStream(path) => Connection::Unix(UnixStream::connect(path).await?),
        Transport::UnixDatagram(path) => {
            let socket = UnixDatagram::unbound()?;
            socket.connect(path)?;
            Connection::UnixDatagram(socket)
        }
    })
}

/// A stream whose peer has closed reads EOF: caught before writing, so that no record is
/// written into a connection that is already gone.
fn peer_closed(stream_try_read: io::Result<usize>) -> bool {
    matches!(stream_try_read, Ok(0))
        || matches!(&stream_try_read, Err(e) if e.kind() != io::ErrorKind::WouldBlock)
}

async fn send(conn: &mut Connection, transport: &Transport, bytes: &[u8]) -> io::Result<()> {
    let gone = || io::Error::from(io::ErrorKind::BrokenPipe);
    let mut probe = [0u8; 64];
    match conn {
        Connection::Stdout(out) => {
            out.write_all(bytes).await?;
            out.flush().await
        }
        Connection::File { file, size } => {
            if let Transport::File {
                path,
                max_size: Some(max),
                keep,
            } = transport
            {
                if *size > 0 && *size + bytes.len() as u64 > *max {
                    rotate(path, *keep)?;
                    *file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?;
                    *size = 0;
                }
            }
            std::io::Write::write_all(file, bytes)?;
            *size += bytes.len() as u64;
            Ok(())
        }
        Connection::Tcp(stream) => {
            if peer_closed(stream.try_read(&mut probe)) {
                return Err(gone());
            }
            stream.write_all(bytes).await
        }
        Connection::Unix(stream) => {
            if peer_closed(stream.try_read(&mut probe)) {
                return Err(gone());
            }
            stream.write_all(bytes).await
        }
        Connection::Udp(socket) => socket.send(bytes).await.map(drop),
        Connection::UnixDatagram(socket) => socket.send(bytes).await.map(drop),
    }
}

/// PATH → PATH.1 → … → PATH.keep (the oldest is removed).
fn rotate(path: &std::path::Path, keep: u32) -> io::Result<()> {
    let numbered = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::rename(path, numbered(1))
}

/// Carriage return and erase-line: the status line is redrawn in place.
const CLEAR_LINE: &[u8] = b"\r\x1b[K";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Writes `shared`'s queue to its destination until `stop` turns true and the queue is empty.
pub async fn run(shared: Arc<Shared>, loss: Arc<LossContext>, mut stop: watch::Receiver<bool>) {
    let spec = &shared.spec;
    let mut backoff = BACKOFF_START;
    // Connect at once, so that an unreachable collector is reported at start-up (a warning:
    // it may come up later).
    let mut conn = match connect(&spec.transport).await {
        Ok(c) => Some(c),
        Err(err) => {
            eprintln!(
                "sshtrace: warning: output {}: {err}; retrying, records queue up to {} and are then dropped (counted)",
                spec.name, spec.queue
            );
            None
        }
    };
    let mut warned = conn.is_none();
    loop {
        let unreported = shared.counters.unreported.load(Relaxed);
        let next = shared.front();
        if shared.status_dirty.swap(false, Relaxed) {
            if let Some(c) = conn.as_mut() {
                let status = shared.status.lock().expect("status lock").clone();
                let mut bytes = BytesMut::from(CLEAR_LINE);
                bytes.extend_from_slice(status.as_bytes());
                let _ = send(c, &spec.transport, &bytes).await;
            }
        }
        if next.is_none() && unreported == 0 {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        if conn.is_none() {
            match connect(&spec.transport).await {
                Ok(c) => {
                    if warned {
                        eprintln!("sshtrace: output {} is reachable again", spec.name);
                    }
                    conn = Some(c);
                    backoff = BACKOFF_START;
                    warned = false;
                }
                Err(err) => {
                    if !warned {
                        eprintln!("sshtrace: warning: output {}: {err}; retrying, records queue up to {} and are then dropped (counted)", spec.name, spec.queue);
                        warned = true;
                    }
                    if *stop.borrow() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let result = if unreported > 0 {
            let record = Record::Loss(LossRecord::new(
                loss.clock.rfc3339(Clock::monotonic_now_ns()),
                loss.host.clone(),
                Some(spec.name.clone()),
                unreported,
                shared.counters.dropped.load(Relaxed),
                KernelLoss {
                    lost: loss.kernel_lost.load(Relaxed),
                    skipped_runs: loss.kernel_skipped_runs.load(Relaxed),
                },
            ));
            let sent = send(c, &spec.transport, &encode(&record, &spec.encoding)).await;
            if sent.is_ok() {
                shared.counters.unreported.fetch_sub(unreported, Relaxed);
            }
            sent
        } else {
            let record = next.expect("checked above");
            let sent = send(
                c,
                &spec.transport,
                &shared.framed(encode(&record, &spec.encoding)),
            )
            .await;
            if sent.is_ok() {
                shared.pop_front();
                shared.counters.delivered.fetch_add(1, Relaxed);
            }
            sent
        };
        if let Err(err) = result {
            if !warned {
                eprintln!(
                    "sshtrace: warning: output {}: {err}; reconnecting",
                    spec.name
                );
                warned = true;
            }
            conn = None;
        }
    }
}
