//! Container names from the runtimes, asked without a network: the Docker-compatible API on a
//! local unix socket (Docker, Podman) and `/var/log/pods/<namespace>_<name>_<uid>` for
//! Kubernetes pods. Lookups run on a thread of their own and fill a cache; the event path only
//! reads the cache, and a container that has exited keeps the name it had.

use std::{
    collections::HashMap,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

pub const DEFAULT_SOCKETS: [&str; 4] = [
    "/run/podman/podman.sock",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/user/0/podman/podman.sock",
];

#[derive(Clone)]
pub struct ContainerNames {
    cache: Arc<Mutex<HashMap<String, String>>>,
    requests: mpsc::Sender<String>,
    sockets: Arc<Vec<PathBuf>>,
}

impl ContainerNames {
    pub fn start(sockets: Vec<PathBuf>) -> Self {
        let cache: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let sockets = Arc::new(sockets);
        let (requests, pending) = mpsc::channel::<String>();
        let (fill, from) = (cache.clone(), sockets.clone());
        std::thread::Builder::new()
            .name("container-names".into())
            .spawn(move || {
                for id in pending {
                    if fill.lock().unwrap().contains_key(&id) {
                        continue;
                    }
                    if let Some(name) = ask(&from, &id) {
                        fill.lock().unwrap().insert(id, name);
                    }
                }
            })
            .expect("spawn the container-name thread");
        Self {
            cache,
            requests,
            sockets,
        }
    }

    /// The cached name, asking for it in the background when unknown.
    pub fn get(&self, id: &str) -> Option<String> {
        let name = self.cache.lock().unwrap().get(id).cloned();
        if name.is_none() {
            let _ = self.requests.send(id.to_owned());
        }
        name
    }

    /// Asks now (start-up only: resolving `--container`).
    pub fn resolve_now(&self, id: &str) -> Option<String> {
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

fn ask(sockets: &[PathBuf], id: &str) -> Option<String> {
    sockets.iter().find_map(|socket| inspect_name(socket, id))
}

/// `GET /containers/ID/json` over HTTP/1.0 on a unix socket; the `Name` field ("/sshbox").
fn inspect_name(socket: &std::path::Path, id: &str) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET /containers/{id}/json HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    Some(json["Name"].as_str()?.trim_start_matches('/').to_owned())
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
    Some((namespace.to_owned(), name.to_owned()))
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

    #[test]
    fn a_missing_socket_gives_no_name() {
        assert_eq!(
            inspect_name(std::path::Path::new("/nonexistent.sock"), "abc"),
            None
        );
    }
}
