//! One output: a bounded queue the event path pushes into without ever waiting, and a task
//! that writes to the destination, reconnecting with backoff. When the queue is full, new
//! records are dropped (the first verdicts of an outage are the ones kept) and counted; once
//! the destination takes records again, a loss record says how many were dropped.
//!
//! Nothing at the destination can make this task spin or flood standard error: every failure,
//! to connect or to send, waits out an exponential backoff before the next attempt (reset only
//! by a connection that worked for a while), and warnings about one output are at most one
//! line per [`WARN_EVERY`]. A record too large for a datagram is dropped and counted, never
//! retried. Standard output closed by its reader ends sshtrace, as it does a Unix filter.

use std::{
    collections::VecDeque,
    io::{self, Write as _},
    ops::ControlFlow,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use rustix::{
    event::{PollFd, PollFlags},
    io::Errno,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram, UnixStream},
    sync::{watch, Notify},
    time::Instant,
};

use super::{
    file::FileOut,
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
    /// What went past sshtrace's bounds so far, likewise.
    pub not_kept: Mutex<super::NotKept>,
}

#[derive(Default)]
pub struct Counters {
    /// Records offered to this output.
    pub produced: AtomicU64,
    /// Records written to the destination.
    pub delivered: AtomicU64,
    /// Records dropped: the queue was full, or a record did not fit a datagram.
    pub dropped: AtomicU64,
    /// Dropped records no loss record has reported yet.
    unreported: AtomicU64,
}

pub struct Shared {
    pub spec: SinkSpec,
    pub counters: Counters,
    /// Records encoded for this output when pushed: a rendered line is a fraction of the
    /// record it came from, and a full queue of them must stay small.
    queue: Mutex<VecDeque<Bytes>>,
    wake: Notify,
    /// The terminal's status line, and whether it must be redrawn.
    status: Mutex<String>,
    status_dirty: AtomicBool,
    /// SIGHUP asked a file output to reopen its path.
    reopen: AtomicBool,
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
            reopen: Default::default(),
        }
    }

    /// A file output closes its file and opens its path again (after logrotate renamed it);
    /// other outputs ignore it.
    pub fn reopen(&self) {
        if matches!(self.spec.transport, Transport::File { .. }) {
            self.reopen.store(true, Relaxed);
            self.wake.notify_one();
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
    fn framed(&self, record: Bytes) -> Bytes {
        if !self.spec.status_line {
            return record;
        }
        let status = self.status.lock().expect("status lock").clone();
        let mut out = BytesMut::from(CLEAR_LINE);
        out.extend_from_slice(&record);
        out.extend_from_slice(status.as_bytes());
        out.freeze()
    }

    /// Never blocks: a full queue drops the record and counts it.
    pub fn push(&self, record: &Record) {
        self.counters.produced.fetch_add(1, Relaxed);
        let mut queue = self.queue.lock().expect("queue lock");
        if queue.len() >= self.spec.queue {
            self.counters.dropped.fetch_add(1, Relaxed);
            self.counters.unreported.fetch_add(1, Relaxed);
        } else {
            queue.push_back(encode(record, &self.spec.encoding).freeze());
        }
        drop(queue);
        self.wake.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.queue.lock().expect("queue lock").len()
    }

    fn front(&self) -> Option<Bytes> {
        self.queue.lock().expect("queue lock").front().cloned()
    }

    fn pop_front(&self) {
        self.queue.lock().expect("queue lock").pop_front();
    }

    /// The record at the front can never be sent: dropped, and counted as dropped.
    fn drop_front(&self) {
        self.pop_front();
        self.counters.dropped.fetch_add(1, Relaxed);
        self.counters.unreported.fetch_add(1, Relaxed);
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
    /// `None` only while a write is under way on a blocking thread (or was lost with it).
    File(Option<Box<FileOut>>),
    Tcp(TcpStream),
    Udp(UdpSocket),
    Unix(UnixStream),
    UnixDatagram(UnixDatagram),
}

async fn connect(transport: &Transport) -> io::Result<Connection> {
    Ok(match transport {
        Transport::Stdout => Connection::Stdout(tokio::io::stdout()),
        Transport::File { path, .. } => {
            let path = path.clone();
            let file = blocking(move || FileOut::open(&path)).await?;
            Connection::File(Some(Box::new(file)))
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

/// Runs blocking file I/O on tokio's blocking threads: the event loop never waits for a disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// A stream whose peer has closed reads EOF: caught before writing, so that no record is
/// written into a connection that is already gone.
fn peer_closed(stream_try_read: io::Result<usize>) -> bool {
    matches!(stream_try_read, Ok(0))
        || matches!(&stream_try_read, Err(e) if e.kind() != io::ErrorKind::WouldBlock)
}

async fn send(conn: &mut Connection, transport: &Transport, bytes: Bytes) -> io::Result<()> {
    let gone = || io::Error::from(io::ErrorKind::BrokenPipe);
    let mut probe = [0u8; 64];
    match conn {
        Connection::Stdout(out) => {
            out.write_all(&bytes).await?;
            out.flush().await
        }
        Connection::File(slot) => {
            let (max_size, keep) = match transport {
                Transport::File { max_size, keep, .. } => (*max_size, *keep),
                _ => (None, 0),
            };
            let mut file = slot.take().ok_or_else(gone)?;
            let (file, written) = tokio::task::spawn_blocking(move || {
                let written = file.write_record(&bytes, max_size, keep);
                (file, written)
            })
            .await
            .map_err(io::Error::other)?;
            *slot = Some(file);
            written
        }
        Connection::Tcp(stream) => {
            if peer_closed(stream.try_read(&mut probe)) {
                return Err(gone());
            }
            stream.write_all(&bytes).await
        }
        Connection::Unix(stream) => {
            if peer_closed(stream.try_read(&mut probe)) {
                return Err(gone());
            }
            stream.write_all(&bytes).await
        }
        Connection::Udp(socket) => socket.send(&bytes).await.map(drop),
        Connection::UnixDatagram(socket) => socket.send(&bytes).await.map(drop),
    }
}

/// Standard output's reader is gone (a pipe's reader exited, a socket's peer closed, or the
/// descriptor is closed): nothing written there can be read again.
fn reader_gone(err: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(err),
        Some(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN | Errno::BADF)
    ) || err.kind() == io::ErrorKind::BrokenPipe
}

/// A datagram output's record larger than a datagram may be: it will never fit.
fn too_big(transport: &Transport, err: &io::Error) -> bool {
    matches!(transport, Transport::Udp(_) | Transport::UnixDatagram(_))
        && Errno::from_io_error(err) == Some(Errno::MSGSIZE)
}

/// Tells `closed` when standard output's reader goes away, even while nothing is written: a
/// pipe whose reader exited polls POLLERR, a socket or terminal that hung up POLLHUP. (Regular
/// files and /dev/null never report either: the thread then sleeps for good.) Started by the
/// stdout output's task, after sshtrace dropped its capabilities, which the thread inherits.
fn watch_stdout(closed: Arc<watch::Sender<bool>>) {
    let watch = move || loop {
        let stdout = io::stdout();
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        match rustix::event::poll(&mut fds, None) {
            Err(Errno::INTR) => continue,
            Ok(n) if n > 0 && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                closed.send_replace(true);
            }
            _ => {}
        }
        return;
    };
    let _ = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(watch);
}

/// Carriage return and erase-line: the status line is redrawn in place.
const CLEAR_LINE: &[u8] = b"\r\x1b[K";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A local file is retried more often: a failed write costs one system call.
const FILE_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connection that worked this long before failing is retried from [`BACKOFF_START`].
const STABLE: Duration = Duration::from_secs(10);
/// At most one warning line per output this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The wait before the next attempt after a failure: doubling from [`BACKOFF_START`] to a
/// maximum. Success does not reset it (a collector that accepts and then fails every send
/// would otherwise be retried at once, for ever): a connection that had worked for
/// [`STABLE`] does.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn after_failure(&mut self, worked_for: Option<Duration>) -> Duration {
        if worked_for.is_some_and(|d| d >= STABLE) {
            self.next = BACKOFF_START;
        }
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }
}

/// Standard-error lines about one output: at most one per [`WARN_EVERY`], which says how
/// many were not shown since the previous one; "reachable again" only after an outage whose
/// warning was shown.
struct Warnings {
    name: String,
    last: Option<Instant>,
    not_shown: u64,
    failing: bool,
    failure_shown: bool,
}

impl Warnings {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            last: None,
            not_shown: 0,
            failing: false,
            failure_shown: false,
        }
    }

    /// Prints the warning unless one was printed less than [`WARN_EVERY`] ago.
    fn warn(&mut self, text: &str) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.not_shown += 1;
            return false;
        }
        let more = match self.not_shown {
            0 => String::new(),
            n => format!(" ({n} more warnings about this output since the last one)"),
        };
        stderr_line(&format!(
            "sshtrace: warning: output {}: {text}{more}",
            self.name
        ));
        self.last = Some(now);
        self.not_shown = 0;
        true
    }

    fn failure(&mut self, text: &str) {
        let shown = self.warn(text);
        self.failure_shown = shown || (self.failing && self.failure_shown);
        self.failing = true;
    }

    fn success(&mut self) {
        if self.failing && self.failure_shown {
            stderr_line(&format!(
                "sshtrace: output {} is reachable again",
                self.name
            ));
        }
        self.failing = false;
        self.failure_shown = false;
    }
}

/// A line on standard error; a closed standard error is no reason to stop.
fn stderr_line(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// Writes `shared`'s queue to its destination until `stop` turns true and the queue is empty
/// (or the destination fails once sshtrace is stopping).
pub async fn run(
    shared: Arc<Shared>,
    loss: Arc<LossContext>,
    stop: watch::Receiver<bool>,
    stdout_closed: Arc<watch::Sender<bool>>,
) {
    let mut writer = OutputWriter::new(shared, loss, stop, stdout_closed);
    while writer.turn().await != ControlFlow::Break(Interrupt::EndTask) {}
}

/// Why a turn of the writing loop ended before sending.
#[derive(Debug, PartialEq, Eq)]
enum Interrupt {
    /// The task is done.
    EndTask,
    /// Start again from the top: something changed, or there is nothing to do yet.
    NextTurn,
}

/// One output's writing task: its connection, and when and how it retries.
struct OutputWriter {
    shared: Arc<Shared>,
    loss: Arc<LossContext>,
    stop: watch::Receiver<bool>,
    stdout_closed: Arc<watch::Sender<bool>>,
    is_stdout: bool,
    retrying: &'static str,
    warnings: Warnings,
    backoff: Backoff,
    conn: Option<Connection>,
    connected_at: Instant,
    /// No attempt before this, after a failure.
    retry_at: Option<Instant>,
    /// Connect even with nothing to send: at start-up, so that an unreachable collector is
    /// reported at once (a warning: it may come up later), and after SIGHUP.
    connect_now: bool,
}

impl OutputWriter {
    fn new(
        shared: Arc<Shared>,
        loss: Arc<LossContext>,
        stop: watch::Receiver<bool>,
        stdout_closed: Arc<watch::Sender<bool>>,
    ) -> Self {
        let spec = &shared.spec;
        let is_stdout = spec.transport == Transport::Stdout;
        let is_file = matches!(spec.transport, Transport::File { .. });
        if is_stdout {
            watch_stdout(stdout_closed.clone());
        }
        let warnings = Warnings::new(&spec.name);
        let backoff = Backoff {
            next: BACKOFF_START,
            max: if is_file {
                FILE_BACKOFF_MAX
            } else {
                BACKOFF_MAX
            },
        };
        Self {
            retrying: if is_file { "retrying" } else { "reconnecting" },
            shared,
            loss,
            stop,
            stdout_closed,
            is_stdout,
            warnings,
            backoff,
            conn: None,
            connected_at: Instant::now(),
            retry_at: None,
            connect_now: true,
        }
    }

    /// One turn of the loop: at most one record (or loss record) sent.
    async fn turn(&mut self) -> ControlFlow<Interrupt> {
        if self.is_stdout && *self.stdout_closed.borrow() {
            return ControlFlow::Break(Interrupt::EndTask);
        }
        self.reopen_if_asked();
        let stopping = *self.stop.borrow();
        self.redraw_status().await?;
        let unreported = self.shared.counters.unreported.load(Relaxed);
        let next = self.shared.front();
        let idle = next.is_none() && unreported == 0;
        if idle && !self.connect_now {
            return ControlFlow::Break(self.wait_for_work(stopping).await);
        }
        self.wait_out_backoff(stopping).await?;
        self.connect_if_needed(stopping).await?;
        self.connect_now = false;
        if idle {
            return ControlFlow::Break(Interrupt::NextTurn);
        }
        let result = if unreported > 0 {
            self.send_loss_record(unreported).await
        } else {
            self.send_record(next.expect("checked above")).await
        };
        self.after_send(result, stopping)
    }

    /// SIGHUP: a file output drops its file and opens its path again at once.
    fn reopen_if_asked(&mut self) {
        if self.shared.reopen.swap(false, Relaxed) {
            self.conn = None;
            self.connect_now = true;
            self.retry_at = None;
        }
    }

    /// Redraws the terminal's status line if it changed.
    async fn redraw_status(&mut self) -> ControlFlow<Interrupt> {
        if !self.shared.status_dirty.swap(false, Relaxed) {
            return ControlFlow::Continue(());
        }
        let Some(c) = self.conn.as_mut() else {
            return ControlFlow::Continue(());
        };
        let status = self.shared.status.lock().expect("status lock").clone();
        let mut bytes = BytesMut::from(CLEAR_LINE);
        bytes.extend_from_slice(status.as_bytes());
        if let Err(err) = send(c, &self.shared.spec.transport, bytes.freeze()).await {
            if self.is_stdout && reader_gone(&err) {
                self.stdout_closed.send_replace(true);
                return ControlFlow::Break(Interrupt::EndTask);
            }
        }
        ControlFlow::Continue(())
    }

    /// Nothing to send: sleeps until a record, a status line or the stop arrives.
    async fn wait_for_work(&mut self, stopping: bool) -> Interrupt {
        if stopping {
            return Interrupt::EndTask;
        }
        tokio::select! {
            _ = self.shared.wake.notified() => {}
            _ = self.stop.changed() => {}
        }
        Interrupt::NextTurn
    }

    /// After a failure, no attempt before the backoff has passed.
    async fn wait_out_backoff(&mut self, stopping: bool) -> ControlFlow<Interrupt> {
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                // A failing output is not retried once sshtrace stops: what it holds is
                // reported undelivered.
                if stopping {
                    return ControlFlow::Break(Interrupt::EndTask);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.shared.wake.notified() => {}
                    _ = self.stop.changed() => {}
                }
                return ControlFlow::Break(Interrupt::NextTurn);
            }
            self.retry_at = None;
        }
        ControlFlow::Continue(())
    }

    /// Connects if there is no connection; a failure is warned about and backed off from.
    async fn connect_if_needed(&mut self, stopping: bool) -> ControlFlow<Interrupt> {
        if self.conn.is_some() {
            return ControlFlow::Continue(());
        }
        self.connect_now = false;
        let spec = &self.shared.spec;
        match connect(&spec.transport).await {
            Ok(c) => {
                self.conn = Some(c);
                self.connected_at = Instant::now();
                ControlFlow::Continue(())
            }
            Err(err) => {
                self.warnings.failure(&format!(
                    "{err}; retrying, records queue up to {} and are then dropped (counted)",
                    spec.queue
                ));
                self.retry_at = Some(Instant::now() + self.backoff.after_failure(None));
                if stopping {
                    return ControlFlow::Break(Interrupt::EndTask);
                }
                ControlFlow::Break(Interrupt::NextTurn)
            }
        }
    }

    /// Says how many records were dropped; they count as reported once it is sent, or once
    /// it can never be (too big for a datagram).
    async fn send_loss_record(&mut self, unreported: u64) -> io::Result<()> {
        let (shared, loss) = (&self.shared, &self.loss);
        let spec = &shared.spec;
        let record = Record::Loss(LossRecord::new(
            loss.clock.rfc3339(Clock::monotonic_now_ns()),
            loss.host.clone(),
            Some(spec.name.clone()),
            unreported,
            shared.counters.dropped.load(Relaxed),
            KernelLoss {
                lost: loss.kernel_lost.load(Relaxed),
                skipped_runs: loss.kernel_skipped_runs.load(Relaxed),
                not_kept: *loss.not_kept.lock().expect("not poisoned"),
            },
        ));
        let c = self.conn.as_mut().expect("connected above");
        let sent = send(c, &spec.transport, encode(&record, &spec.encoding).freeze()).await;
        if sent.is_ok() || sent.as_ref().is_err_and(|e| too_big(&spec.transport, e)) {
            shared.counters.unreported.fetch_sub(unreported, Relaxed);
        }
        sent
    }

    /// Sends the record at the front of the queue; it leaves the queue once sent, or once it
    /// can never be.
    async fn send_record(&mut self, record: Bytes) -> io::Result<()> {
        let shared = &self.shared;
        let spec = &shared.spec;
        let c = self.conn.as_mut().expect("connected above");
        let sent = send(c, &spec.transport, shared.framed(record)).await;
        match &sent {
            Ok(()) => {
                shared.pop_front();
                shared.counters.delivered.fetch_add(1, Relaxed);
            }
            Err(e) if too_big(&spec.transport, e) => shared.drop_front(),
            Err(_) => {}
        }
        sent
    }

    /// Warns about a failed send and backs off; a reader gone from stdout ends the task.
    fn after_send(&mut self, result: io::Result<()>, stopping: bool) -> ControlFlow<Interrupt> {
        match result {
            Ok(()) => self.warnings.success(),
            Err(err) if too_big(&self.shared.spec.transport, &err) => {
                self.warnings.warn(&format!(
                    "a record does not fit a datagram ({err}); dropped (counted)"
                ));
            }
            Err(err) if self.is_stdout && reader_gone(&err) => {
                self.stdout_closed.send_replace(true);
                return ControlFlow::Break(Interrupt::EndTask);
            }
            Err(err) => {
                self.warnings.failure(&format!("{err}; {}", self.retrying));
                self.conn = None;
                let wait = self
                    .backoff
                    .after_failure(Some(self.connected_at.elapsed()));
                self.retry_at = Some(Instant::now() + wait);
                if stopping {
                    return ControlFlow::Break(Interrupt::EndTask);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_restarts_only_after_a_stable_connection() {
        let mut b = Backoff {
            next: BACKOFF_START,
            max: BACKOFF_MAX,
        };
        let quick = Some(Duration::from_millis(5));
        let waits: Vec<u64> = (0..8)
            .map(|_| b.after_failure(quick).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.after_failure(Some(STABLE)), BACKOFF_START);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let mut w = Warnings::new("tcp://h:1");
        assert!(w.warn("first"));
        assert!(!w.warn("second"));
        assert!(!w.warn("third"));
        assert_eq!(w.not_shown, 2);
        w.last = Some(Instant::now() - WARN_EVERY);
        assert!(w.warn("fourth"));
        assert_eq!(w.not_shown, 0);
    }

    /// A record larger than a datagram may be is dropped and counted, and the output goes
    /// on: the next record and a loss record get through.
    #[tokio::test]
    async fn an_oversized_datagram_is_dropped_not_retried() {
        let dir = std::env::temp_dir().join(format!("sshtrace-dgram-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.sock");
        let collector = UnixDatagram::bind(&path).unwrap();
        let spec = SinkSpec::parse(
            &format!("syslog+unix://{}", path.display()),
            Default::default(),
        )
        .unwrap();
        let shared = Arc::new(Shared::new(spec));
        let loss = Arc::new(LossContext {
            host: "h".into(),
            clock: Clock::new(),
            kernel_lost: Default::default(),
            kernel_skipped_runs: Default::default(),
            not_kept: Default::default(),
        });
        let record = |sink: String| {
            Record::Loss(LossRecord::new(
                "2026-01-01T00:00:00.000000000Z".into(),
                "h".into(),
                Some(sink),
                0,
                0,
                Default::default(),
            ))
        };
        // Past any unix datagram socket's send buffer.
        shared.push(&record("x".repeat(4 << 20)));
        shared.push(&record("small".into()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            shared.clone(),
            loss,
            stopped,
            Arc::new(watch::Sender::new(false)),
        ));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < 2 {
            let n = tokio::time::timeout(Duration::from_secs(5), collector.recv(&mut buf))
                .await
                .expect("the output is wedged")
                .unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            got[0].contains(" loss ") && got[0].contains("dropped=\"1\""),
            "{got:?}"
        );
        assert!(got[1].contains("sink=\"small\""), "{got:?}");
        let c = &shared.counters;
        assert_eq!(
            (
                c.produced.load(Relaxed),
                c.delivered.load(Relaxed),
                c.dropped.load(Relaxed)
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn only_datagram_outputs_drop_oversized_records() {
        let err = io::Error::from(Errno::MSGSIZE);
        assert!(too_big(&Transport::Udp("h:1".into()), &err));
        assert!(too_big(&Transport::UnixDatagram("/x".into()), &err));
        assert!(!too_big(&Transport::Tcp("h:1".into()), &err));
        assert!(reader_gone(&io::Error::from(Errno::PIPE)));
        assert!(!reader_gone(&io::Error::from(Errno::NOSPC)));
    }
}
