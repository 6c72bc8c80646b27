//! Container names from the runtimes, asked without a network: the Docker-compatible API on a
//! local unix socket (Docker, Podman) and `/var/log/pods/<namespace>_<name>_<uid>` for
//! Kubernetes pods. Lookups run on a thread of their own and fill a cache; the event path only
//! reads the cache, and a container that has exited keeps the name it had.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

pub const DEFAULT_SOCKETS: [&str; 4] = [
    "/run/podman/podman.sock",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/user/0/podman/podman.sock",
];

/// How long one answer may take: the lookup thread waits, never the event path. A runtime
/// under load (or in a slow VM) answers its first request in seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a runtime's answer read.
const MAX_RESPONSE: u64 = 1 << 20;
/// Retries of an id no socket answered for, spaced 1, 2, 4, 8, 16 s apart.
const RETRIES: u32 = 5;

#[derive(Clone)]
pub struct ContainerNames {
    cache: Arc<Mutex<HashMap<String, String>>>,
    /// Ids queued or being asked for: a runtime that is slow to answer gets one request per
    /// container, however often the name is wanted meanwhile.
    asking: Arc<Mutex<HashSet<String>>>,
    requests: mpsc::Sender<String>,
    sockets: Arc<Vec<PathBuf>>,
}

impl ContainerNames {
    pub fn start(sockets: Vec<PathBuf>) -> Self {
        let names = Self {
            cache: Arc::default(),
            asking: Arc::default(),
            requests: mpsc::channel().0,
            sockets: Arc::new(sockets),
        };
        let (requests, pending) = mpsc::channel::<String>();
        let worker = names.clone();
        std::thread::Builder::new()
            .name("container-names".into())
            .spawn(move || worker.answer(&pending))
            .expect("spawn the container-name thread");
        Self { requests, ..names }
    }

    /// The lookup thread: asks for each requested id, and again later for ids no runtime
    /// answered for (the runtime's API may start after sshtrace, or be slow to answer).
    fn answer(&self, pending: &mpsc::Receiver<String>) {
        // Asking a runtime's socket (root's own) needs no privilege.
        if let Err(e) = crate::privileges::keep_only(&[]) {
            eprintln!("sshtrace: warning: the container-name thread keeps every capability: {e:#}");
        }
        let mut retries: Vec<(Instant, u32, String)> = Vec::new();
        loop {
            let wait = retries
                .iter()
                .map(|(at, ..)| at.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let (id, attempt) = match pending.recv_timeout(wait) {
                Ok(id) => (id, 0),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let Some(due) = retries.iter().position(|(at, ..)| *at <= now) else {
                        continue;
                    };
                    let (_, attempt, id) = retries.swap_remove(due);
                    (id, attempt)
                }
            };
            if self.cache.lock().unwrap().contains_key(&id) {
                self.asking.lock().unwrap().remove(&id);
                continue;
            }
            match ask(&self.sockets, &id) {
                Some(name) => {
                    self.cache.lock().unwrap().insert(id.clone(), name);
                    self.asking.lock().unwrap().remove(&id);
                }
                None if attempt < RETRIES => {
                    let at = Instant::now() + Duration::from_secs(1 << attempt);
                    retries.push((at, attempt + 1, id));
                }
                None => {
                    self.asking.lock().unwrap().remove(&id);
                }
            }
        }
    }

    /// The cached name, asking for it in the background when unknown. Only a runtime's id
    /// (hex digits) is asked for: an LXC or nspawn name is no id any runtime API knows.
    pub fn get(&self, id: &str) -> Option<String> {
        if !is_hex_id(id) {
            return None;
        }
        let name = self.cache.lock().unwrap().get(id).cloned();
        if name.is_none() && self.asking.lock().unwrap().insert(id.to_owned()) {
            let _ = self.requests.send(id.to_owned());
        }
        name
    }

    /// Asks now (start-up only: resolving `--container`).
    pub fn resolve_now(&self, id: &str) -> Option<String> {
        if !is_hex_id(id) {
            return None;
        }
        if let Some(name) = self.cache.lock().unwrap().get(id) {
            return Some(name.clone());
        }
        let name = ask(&self.sockets, id)?;
        self.cache
            .lock()
            .unwrap()
            .insert(id.to_owned(), name.clone());
        Some(name)
    }
}

/// A container id as the runtimes give it: 1 to 64 hex digits (a prefix is an id too).
fn is_hex_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `s` as one path segment of a URL: every byte but the unreserved ones percent-encoded, so
/// that no id can add to the request (a space, CR LF, `/`, `?`).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A container name as Docker and Podman allow it (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most
/// 255 bytes: anything else from a socket is no name to repeat.
fn is_runtime_name(name: &str) -> bool {
    name.len() <= 255
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn ask(sockets: &[PathBuf], id: &str) -> Option<String> {
    sockets.iter().find_map(|socket| inspect_name(socket, id))
}

/// `GET /containers/ID/json` over HTTP/1.0 on a unix socket; the `Name` field ("/sshbox").
fn inspect_name(socket: &std::path::Path, id: &str) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    // One write: a request split over several is more than a slow server needs to handle.
    let request = format!(
        "GET /containers/{}/json HTTP/1.0\r\nHost: localhost\r\n\r\n",
        path_segment(id)
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    // An inspect answer is kilobytes: more is not read.
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let name = json["Name"].as_str()?.trim_start_matches('/');
    is_runtime_name(name).then(|| name.to_owned())
}

/// Kubernetes keeps pod logs in `/var/log/pods/<namespace>_<name>_<uid>`.
pub fn pod_by_uid(uid: &str) -> Option<(String, String)> {
    let dir = std::fs::read_dir("/var/log/pods").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|entry| parse_pod_dir(&entry, uid))
}

fn parse_pod_dir(entry: &str, uid: &str) -> Option<(String, String)> {
    let rest = entry.strip_suffix(&format!("_{uid}"))?;
    let (namespace, name) = rest.split_once('_')?;
    (is_runtime_name(namespace) && is_runtime_name(name))
        .then(|| (namespace.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_log_directories() {
        let uid = "7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            parse_pod_dir(&format!("kube-system_sshd-jump-0_{uid}"), uid),
            Some(("kube-system".into(), "sshd-jump-0".into()))
        );
        assert_eq!(parse_pod_dir("default_web_other-uid", uid), None);
    }

    /// A runtime API that starts after the first lookup failed is asked again, once.
    #[test]
    fn a_runtime_that_answers_late_is_asked_again() {
        let socket =
            std::env::temp_dir().join(format!("sshtrace-names-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let names = ContainerNames::start(vec![socket.clone()]);
        assert_eq!(names.get("abc"), None);
        assert_eq!(names.get("abc"), None, "one request in flight");
        std::thread::sleep(Duration::from_millis(200));
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 256];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the request ended early: {request:?}");
            request.extend_from_slice(&chunk[..n]);
        }
        assert!(String::from_utf8_lossy(&request).starts_with("GET /containers/abc/json"));
        stream
            .write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"Name\": \"/sshbox\"}")
            .unwrap();
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(5);
        while names.get("abc").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(names.get("abc").as_deref(), Some("sshbox"));
        let _ = std::fs::remove_file(&socket);
    }

    /// An LXC name or anything not hex is never sent to a runtime's socket.
    #[test]
    fn only_hex_ids_are_asked_for() {
        let socket =
            std::env::temp_dir().join(format!("sshtrace-hexonly-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let names = ContainerNames::start(vec![socket.clone()]);
        for id in ["web01", "unnamed", "abc/../../x", "ab c", "abc\r\nX: y", ""] {
            assert_eq!(names.get(id), None);
            assert_eq!(names.resolve_now(id), None);
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(listener.accept().is_err(), "a non-hex id was asked for");
        let _ = std::fs::remove_file(&socket);
    }

    #[test]
    fn request_paths_are_percent_encoded() {
        assert_eq!(path_segment("3f2c"), "3f2c");
        assert_eq!(path_segment("a b\r\n/x?\u{e9}"), "a%20b%0D%0A%2Fx%3F%C3%A9");
    }

    /// A name a runtime answers is repeated only when it is one Docker or Podman allows.
    #[test]
    fn runtime_names_are_plain() {
        assert!(is_runtime_name("sshbox_1.web-2"));
        for bad in [
            "",
            "-x",
            "a\x1bb",
            "a\nb",
            "caf\u{e9}",
            "a/b",
            &"a".repeat(256),
        ] {
            assert!(!is_runtime_name(bad), "{bad:?}");
        }
        let uid = "7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";
        assert_eq!(parse_pod_dir(&format!("ns_we\x1bb_{uid}"), uid), None);
    }

    #[test]
    fn a_missing_socket_gives_no_name() {
        assert_eq!(
            inspect_name(std::path::Path::new("/nonexistent.sock"), "abc"),
            None
        );
    }
}
