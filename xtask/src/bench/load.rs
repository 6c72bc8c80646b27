//! The loads the bench measures under: loopback connection storms on the bench's own
//! addresses and ports (never any other address), from many threads so that every CPU is busy.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::Result;

/// Orderly connections: the server accepts and closes, clients read its FIN. sshtrace tracks
/// this port in every measurement.
pub const ORDERLY: &str = "127.0.0.77:22777";
/// The same storm on a port sshtrace does not track: what every other service pays.
pub const UNTRACKED: &str = "127.0.0.77:22781";
/// Long-lived connections streaming to a port sshtrace does not track.
pub const UNTRACKED_STREAM: &str = "127.0.0.77:22782";
/// Nothing listens here: every connection is refused with a RST.
pub const CLOSED: &str = "127.0.0.77:22778";
/// The server accepts and aborts (SO_LINGER 0): a RST on every accepted socket.
pub const ABORTING: &str = "127.0.0.77:22780";

pub fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or(addr)
}

pub fn num_cpus() -> usize {
    thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1)
}

/// Clients per CPU: idle CPUs in a VM wake slowly, which would measure wake-up latency
/// instead of the cost of tracing.
const CLIENTS_PER_CPU: usize = 8;

/// What runs while a tracer is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Orderly connections to the tracked port.
    TrackedStorm,
    /// Orderly connections to a port sshtrace does not track.
    UntrackedStorm,
    /// One-byte writes and reads on a pipe, one process per CPU, none of them sshd: the
    /// syscall hooks' cost to the rest of the host.
    SmallSyscalls,
    /// Opens and stats, one process per CPU, none of them sshd: calls whose exits sshtrace
    /// hooks (a failed open or stat of sshd's is evidence), the way a build or a backup
    /// makes them.
    FileLookups,
    /// 1 KiB writes on long-lived connections to a port sshtrace does not track, one per CPU:
    /// every segment an established socket receives (data and ACKs) passes `tcp_probe`.
    UntrackedStream,
}

impl Workload {
    /// Units done in `d`.
    pub fn run(self, d: Duration) -> Result<u64> {
        match self {
            Self::TrackedStorm => orderly(ORDERLY, d),
            Self::UntrackedStorm => orderly(UNTRACKED, d),
            Self::SmallSyscalls => Ok(small_syscalls(d)),
            Self::FileLookups => Ok(file_lookups(d)),
            Self::UntrackedStream => untracked_stream(d),
        }
    }
}

/// Connections completed in `d` against `addr`. The server closes first; reading its FIN
/// before closing leaves no TIME_WAIT on the client's ports, so every round starts equal.
pub fn orderly(addr: &'static str, d: Duration) -> Result<u64> {
    with_server(
        addr,
        d,
        |_| {},
        |stream| {
            let _ = stream.read(&mut [0u8; 1]);
            true
        },
    )
}

/// Connections refused in `d` by [`CLOSED`], from one client per CPU.
pub fn refused(d: Duration) -> u64 {
    let addr: SocketAddr = CLOSED.parse().expect("a socket address");
    clients(num_cpus(), d, move || TcpStream::connect(addr).is_err())
}

/// Connections accepted and reset by the server in `d` against [`ABORTING`]: each accepted
/// socket is closed with SO_LINGER 0, so the kernel sends a RST (reason TCP_ABORT_ON_LINGER
/// where it has reasons) instead of a FIN.
pub fn aborted(d: Duration) -> Result<u64> {
    with_server(ABORTING, d, abort_on_close, |stream| {
        // The reset arrives as ECONNRESET (or, if it came first, as the connect's error).
        stream.read(&mut [0u8; 1]).is_err()
    })
}

fn abort_on_close(stream: &TcpStream) {
    // SO_LINGER 0: close sends a reset instead of a FIN.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A server thread accepting on `addr` (each accepted stream passed to `on_accept`, then
/// closed) and many clients connecting for `d`; `on_connected` says whether a connection
/// counts. Returns the count.
fn with_server(
    addr: &'static str,
    d: Duration,
    on_accept: fn(&TcpStream),
    on_connected: fn(&mut TcpStream) -> bool,
) -> Result<u64> {
    let listener = TcpListener::bind(addr)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = thread::spawn(move || {
        for conn in listener.incoming() {
            if server_stop.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(stream) = conn {
                on_accept(&stream);
            }
        }
    });
    let target: SocketAddr = addr.parse()?;
    let count = clients(num_cpus() * CLIENTS_PER_CPU, d, move || {
        TcpStream::connect(target).is_ok_and(|mut s| on_connected(&mut s))
    });
    stop.store(true, Ordering::Relaxed);
    // Wakes the server from accept, to see `stop`.
    let _ = TcpStream::connect(target);
    let _ = server.join();
    Ok(count)
}

/// One-byte write+read pairs done in `d` on a pipe per thread, one thread per CPU.
pub fn small_syscalls(d: Duration) -> u64 {
    thread_local! {
        static PIPE: (std::io::PipeReader, std::io::PipeWriter) =
            std::io::pipe().expect("a pipe");
    }
    clients(num_cpus(), d, || {
        PIPE.with(|(reader, writer)| {
            let mut byte = [0u8; 1];
            (&*writer).write_all(b"x").is_ok() && (&*reader).read_exact(&mut byte).is_ok()
        })
    })
}

/// A file opened and closed, and a path that does not exist looked up (a failed stat), per
/// unit done in `d`, one thread per CPU.
pub fn file_lookups(d: Duration) -> u64 {
    const PRESENT: &str = "/etc/hostname";
    const MISSING: &str = "/etc/sshtrace-bench-no-such-file";
    clients(num_cpus(), d, || {
        std::fs::File::open(PRESENT).is_ok() && std::fs::metadata(MISSING).is_err()
    })
}

/// 1 KiB writes done in `d` on one connection per CPU to [`UNTRACKED_STREAM`], each read to
/// its end by a server thread.
pub fn untracked_stream(d: Duration) -> Result<u64> {
    const CHUNK: usize = 1024;
    let listener = TcpListener::bind(UNTRACKED_STREAM)?;
    let n = num_cpus();
    let readers = thread::spawn(move || {
        let readers: Vec<_> = listener
            .incoming()
            .take(n)
            .filter_map(Result::ok)
            .map(|mut conn| {
                thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    while conn.read(&mut buf).is_ok_and(|got| got > 0) {}
                })
            })
            .collect();
        for r in readers {
            let _ = r.join();
        }
    });
    let target: SocketAddr = UNTRACKED_STREAM.parse()?;
    let streams = (0..n)
        .map(|_| {
            let s = TcpStream::connect(target)?;
            s.set_nodelay(true)?;
            Ok(std::sync::Mutex::new(s))
        })
        .collect::<Result<Vec<_>>>()?;
    let streams = Arc::new(streams);
    let next = Arc::new(AtomicU64::new(0));
    let count = clients(n, d, move || {
        // Each thread takes its own connection on its first call and keeps it.
        thread_local!(static MINE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) });
        let i = MINE.with(|m| {
            *m.get()
                .get_or_insert_with(|| next.fetch_add(1, Ordering::Relaxed) as usize)
        });
        let mut stream = streams[i % streams.len()].lock().expect("a stream");
        stream.write_all(&[0u8; CHUNK]).is_ok()
    });
    // The connections closed with the clients' closure: each reader sees its end.
    let _ = readers.join();
    Ok(count)
}

/// `n` threads calling `attempt` in a loop for `d`; the number of attempts that counted.
fn clients(n: usize, d: Duration, attempt: impl Fn() -> bool + Send + Clone + 'static) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (stop, count, attempt) = (stop.clone(), count.clone(), attempt.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if attempt() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    count.load(Ordering::Relaxed)
}
