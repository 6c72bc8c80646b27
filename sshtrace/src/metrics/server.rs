//! `GET /metrics` over HTTP/1.1, in the Prometheus text format (0.0.4), on a thread of its own
//! with a small tokio runtime: the event loop never waits for a scrape, and no client can hold
//! it. Anyone who can reach the port can connect, so every connection is bounded: one request
//! (`Connection: close`), its head at most [`MAX_REQUEST_HEAD`] bytes read within
//! [`REQUEST_TIMEOUT`], the answer written within [`ANSWER_TIMEOUT`], at most [`MAX_CLIENTS`]
//! at once (one more is closed at once). Connections closed unanswered are counted.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use prometheus_client::{
    encoding::{prometheus_text, EncodeLabelSet},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::ServerMetrics;
use crate::escape;

/// Scrapes answered at once; Prometheus makes one at a time per target.
pub const MAX_CLIENTS: usize = 8;
/// A scraper sends its request as it connects: a client that has not within this is cut off.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The page is a few tens of KiB: a client that does not take it within this is cut off.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Prometheus's request head is a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// After a failed accept (out of descriptors), before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropReason {
    reason: &'static str,
}

const BUSY: DropReason = DropReason { reason: "busy" };
const TIMEOUT: DropReason = DropReason { reason: "timeout" };

impl DropReason {
    /// Every reason, shown from the start (at 0).
    pub const ALL: &[DropReason] = &[BUSY, TIMEOUT];
}

/// `--metrics` value: an IP address and a port, `127.0.0.1:9640` or `[::1]:9640`.
pub fn parse_address(text: &str) -> Result<SocketAddr> {
    let shown = escape::text(text);
    let addr: SocketAddr = text.parse().map_err(|_| {
        anyhow!("--metrics {shown}: not ADDR:PORT, like 127.0.0.1:9640 or [::1]:9640")
    })?;
    if addr.port() == 0 {
        bail!("--metrics {shown}: port 0 is no address Prometheus can scrape");
    }
    Ok(addr)
}

/// Binds at start-up: an address in use or not of this host stops sshtrace with one line.
pub fn bind(addr: SocketAddr) -> Result<StdListener> {
    let listener =
        StdListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("--metrics {addr}: cannot listen"))?;
    Ok(listener)
}

/// Answers scrapes on `listener` from a thread of its own, for as long as sshtrace runs.
pub(super) fn spawn(
    listener: StdListener,
    registry: Registry,
    metrics: ServerMetrics,
) -> Result<()> {
    let page = Arc::new(Page { registry, metrics });
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            // The socket is bound: answering needs no privilege.
            if let Err(e) = crate::privileges::keep_only(&[]) {
                eprintln!("sshtrace: warning: the metrics thread keeps every capability: {e:#}");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let served = runtime.map_err(anyhow::Error::from).and_then(|runtime| {
                runtime.block_on(async {
                    let listener = TcpListener::from_std(listener)?;
                    accept_loop(&listener, page).await;
                    anyhow::Ok(())
                })
            });
            if let Err(e) = served {
                eprintln!("sshtrace: warning: metrics are not served: {e:#}");
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(())
}

async fn accept_loop(listener: &TcpListener, page: Arc<Page>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !failing {
                    eprintln!("sshtrace: warning: metrics: cannot accept a connection: {e}");
                }
                failing = true;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        failing = false;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            page.dropped(&BUSY);
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            page.answer(stream).await;
            drop(slot);
        });
    }
}

struct Page {
    registry: Registry,
    metrics: ServerMetrics,
}

impl Page {
    fn dropped(&self, reason: &DropReason) {
        self.metrics.connections_dropped.get_or_create(reason).inc();
    }

    async fn answer(&self, mut stream: TcpStream) {
        let head = match timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
            Ok(Some(head)) => head,
            // Closed before it asked for anything: nothing to answer.
            Ok(None) => return,
            Err(_) => return self.dropped(&TIMEOUT),
        };
        let answer = respond(&head, || self.render());
        let sent = timeout(ANSWER_TIMEOUT, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await
        })
        .await;
        if sent.is_err() {
            self.dropped(&TIMEOUT);
        }
    }

    fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.metrics
                .resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let mut page = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut page, &self.registry);
        page
    }
}

/// The request head (up to its blank line, or the first [`MAX_REQUEST_HEAD`] bytes); `None`
/// when the client closed or failed before sending one.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if ends_its_head(&head) {
            break;
        }
    }
    Some(head)
}

/// Whether the blank line that ends a request head has arrived.
fn ends_its_head(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The whole answer to a request head; `page` renders the metrics when they are asked for.
fn respond(head: &[u8], page: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    match (method, path) {
        _ if !ends_its_head(head) => {
            plain("431 Request Header Fields Too Large", "request too large\n")
        }
        (Some("GET"), Some("/metrics")) => {
            let body = page();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                prometheus_text::CONTENT_TYPE,
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body.as_bytes());
            out
        }
        (Some(_), Some("/metrics")) => plain("405 Method Not Allowed", "only GET\n"),
        (Some(_), Some(_)) => plain("404 Not Found", "metrics are at /metrics\n"),
        _ => plain("400 Bad Request", "not an HTTP request\n"),
    }
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// sshtrace's resident memory, from `/proc/self/statm` (pages).
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(answer: &[u8]) -> String {
        let text = String::from_utf8_lossy(answer);
        text.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn only_get_metrics_renders_the_page() {
        let page = || "sshtrace_listeners 1\n".to_owned();
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", page);
        let text = String::from_utf8(ok).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("Content-Length: 21\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nsshtrace_listeners 1\n"), "{text}");
        let never = || -> String { panic!("rendered for a request that does not ask for it") };
        let cases: [(&[u8], &str); 5] = [
            (b"GET /metrics?x=1 HTTP/1.0\n\n", "HTTP/1.1 200 OK"),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            (b"\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (
                b"GET /metrics HTTP/1.1\r\nX: yyyyyyyy",
                "HTTP/1.1 431 Request Header Fields Too Large",
            ),
        ];
        for (head, expected) in cases {
            let answer = if expected.contains("200") {
                respond(head, page)
            } else {
                respond(head, never)
            };
            assert_eq!(
                status(&answer),
                expected,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.1:9640").unwrap(),
            "127.0.0.1:9640".parse().unwrap()
        );
        assert!(parse_address("[::1]:9640").is_ok());
        for bad in [
            "localhost:9640",
            "127.0.0.1",
            "9640",
            "127.0.0.1:0",
            "1.2.3.4:99999",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        let err = parse_address("x\ny").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
    }

    /// A client that connects and never asks is cut off and counted, and takes a slot only
    /// until then; more clients than slots at once are closed at once, and counted.
    #[tokio::test]
    async fn stalled_clients_are_cut_off_and_excess_ones_closed() {
        let (registry, _, metrics) = super::super::registry();
        let page = Arc::new(Page { registry, metrics });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn({
            let page = page.clone();
            async move { accept_loop(&listener, page).await }
        });
        let mut stalled = Vec::new();
        for _ in 0..MAX_CLIENTS {
            stalled.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut excess = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(excess.read(&mut buf).await.unwrap(), 0, "closed at once");
        for mut s in stalled {
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "cut off");
        }
        let mut scrape = TcpStream::connect(addr).await.unwrap();
        scrape
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        scrape.read_to_string(&mut answer).await.unwrap();
        let dropped = |reason: &str| {
            format!(r#"sshtrace_metrics_connections_dropped_total{{reason="{reason}"}} "#)
        };
        assert!(
            answer.contains(&format!("{}1\n", dropped("busy"))),
            "{answer}"
        );
        assert!(
            answer.contains(&format!("{}{MAX_CLIENTS}\n", dropped("timeout"))),
            "{answer}"
        );
    }
}
