//! Container names from the runtimes, asked without a network: the Docker-compatible API on a
//! local unix socket (Docker, Podman: `docker_api`), containerd's own API (the labels
//! Kubernetes' CRI plugin sets: `containerd`) and the kubelet's `/var/log/pods` (`kubelet`).
//! Lookups run on a thread of their own, each bounded in time and size, and fill a bounded
//! cache; the event path only reads the cache, and a container that has exited keeps the
//! names it had. What an answer may say is decided in `labels`.

mod containerd;
mod docker_api;
mod kubelet;
pub mod labels;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use crate::enrich::container::{Container, CRI_NAMESPACE};

/// Docker-compatible API sockets asked when `--runtime-socket` is not given.
pub const DEFAULT_DOCKER_API_SOCKETS: [&str; 4] = [
    "/run/podman/podman.sock",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/user/0/podman/podman.sock",
];
/// containerd's socket when `--containerd-socket` is not given.
pub const DEFAULT_CONTAINERD_SOCKETS: [&str; 1] = ["/run/containerd/containerd.sock"];

/// How long one answer may take, connecting included: the lookup thread waits, never the
/// event path. A runtime under load (or in a slow VM) answers its first request in seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a runtime's answer read: an inspect answer is kilobytes.
const MAX_RESPONSE: usize = 1 << 20;
/// Retries of an id no runtime named, spaced 1, 2, 4, 8, 16 s apart.
const RETRIES: u32 = 5;
/// The most containers whose names are kept (the oldest go first): a host that starts
/// containers for ever does not grow sshtrace for ever.
const MAX_CACHED: usize = 4096;

/// Where to ask.
#[derive(Clone, Debug)]
pub struct Sockets {
    /// Docker-compatible APIs (Docker Engine, Podman).
    pub docker_api: Vec<PathBuf>,
    /// containerd's API.
    pub containerd: Vec<PathBuf>,
    /// The kubelet's pod log directories.
    pub pod_logs: PathBuf,
}

impl Default for Sockets {
    fn default() -> Self {
        Self {
            docker_api: DEFAULT_DOCKER_API_SOCKETS.iter().map(Into::into).collect(),
            containerd: DEFAULT_CONTAINERD_SOCKETS.iter().map(Into::into).collect(),
            pod_logs: kubelet::POD_LOGS.into(),
        }
    }
}

/// What the runtimes said about one container, every value checked (`labels`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeNames {
    /// The runtime's name for it, else its Kubernetes container's name.
    pub name: Option<String>,
    pub pod: Option<PodNames>,
    /// The runtime whose own API knows the id (containerd's answers say so).
    pub runtime: Option<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

/// One runtime's answer as it came, unchecked: only the labels `labels` reads are kept.
pub struct Answer {
    pub runtime: Option<&'static str>,
    pub name: Option<String>,
    pub labels: HashMap<String, String>,
}

/// A container to ask about, and what its cgroup path says of where to look.
#[derive(Clone, Debug)]
struct Query {
    id: String,
    /// containerd's namespace: `ctr`'s `/<namespace>/<id>`, else Kubernetes'.
    namespace: String,
    pod_uid: Option<String>,
}

impl Query {
    /// Only a runtime's id (hex digits) is asked for: an LXC or nspawn name is no id any
    /// runtime API knows.
    fn of(c: &Container) -> Option<Self> {
        is_hex_id(&c.id).then(|| Self {
            id: c.id.clone(),
            namespace: containerd_namespace(&c.cgroup_path),
            pod_uid: c.pod.as_ref().and_then(|p| p.uid.clone()),
        })
    }
}

#[derive(Default)]
struct Cache {
    names: HashMap<String, RuntimeNames>,
    /// Ids in the order they came in, the oldest first out.
    order: VecDeque<String>,
}

impl Cache {
    fn insert(&mut self, id: String, names: RuntimeNames) {
        if !self.names.contains_key(&id) {
            if self.order.len() >= MAX_CACHED {
                if let Some(oldest) = self.order.pop_front() {
                    self.names.remove(&oldest);
                }
            }
            self.order.push_back(id.clone());
        }
        self.names.insert(id, names);
    }
}

#[derive(Clone)]
pub struct ContainerNames {
    cache: Arc<Mutex<Cache>>,
    /// Ids queued or being asked for: a runtime that is slow to answer gets one request per
    /// container, however often the name is wanted meanwhile.
    asking: Arc<Mutex<HashSet<String>>>,
    requests: mpsc::Sender<Query>,
    sockets: Arc<Sockets>,
}

impl ContainerNames {
    pub fn start(sockets: Sockets) -> Self {
        let names = Self {
            cache: Arc::default(),
            asking: Arc::default(),
            requests: mpsc::channel().0,
            sockets: Arc::new(sockets),
        };
        let (requests, pending) = mpsc::channel::<Query>();
        let worker = names.clone();
        std::thread::Builder::new()
            .name("container-names".into())
            .spawn(move || worker.answer(&pending))
            .expect("spawn the container-name thread");
        Self { requests, ..names }
    }

    /// The lookup thread: asks for each requested id, and again later for ids no runtime
    /// named (the runtime's API may start after sshtrace, or be slow to answer).
    fn answer(&self, pending: &mpsc::Receiver<Query>) {
        // Asking a runtime's socket (root's own) needs no privilege.
        if let Err(e) = crate::privileges::keep_only(&[]) {
            eprintln!("sshtrace: warning: the container-name thread keeps every capability: {e:#}");
        }
        let mut asker = Asker::new(&self.sockets);
        let mut retries: Vec<(Instant, u32, Query)> = Vec::new();
        loop {
            let wait = retries
                .iter()
                .map(|(at, ..)| at.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let (query, attempt) = match pending.recv_timeout(wait) {
                Ok(query) => (query, 0),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let Some(due) = retries.iter().position(|(at, ..)| *at <= now) else {
                        continue;
                    };
                    let (_, attempt, query) = retries.swap_remove(due);
                    (query, attempt)
                }
            };
            let names = asker.ask(&query);
            let named = names.name.is_some();
            if names != RuntimeNames::default() {
                self.cache.lock().unwrap().insert(query.id.clone(), names);
            }
            if !named && attempt < RETRIES {
                let at = Instant::now() + Duration::from_secs(1 << attempt);
                retries.push((at, attempt + 1, query));
            } else {
                self.asking.lock().unwrap().remove(&query.id);
            }
        }
    }

    /// What the runtimes said so far, asking them in the background when nothing is known.
    pub fn get(&self, container: &Container) -> Option<RuntimeNames> {
        let query = Query::of(container)?;
        let names = self.cache.lock().unwrap().names.get(&query.id).cloned();
        if names.is_none() && self.asking.lock().unwrap().insert(query.id.clone()) {
            let _ = self.requests.send(query);
        }
        names
    }

    /// Asks now, on a thread of its own (start-up only: resolving `--container`, from within
    /// the async runtime, where the lookup's own cannot run).
    pub fn resolve_now(&self, container: &Container) -> Option<RuntimeNames> {
        let query = Query::of(container)?;
        let cached = self.cache.lock().unwrap().names.get(&query.id).cloned();
        if let Some(names) = cached.filter(|n| n.name.is_some()) {
            return Some(names);
        }
        let names = std::thread::scope(|s| {
            s.spawn(|| Asker::new(&self.sockets).ask(&query))
                .join()
                .ok()
        })?;
        if names != RuntimeNames::default() {
            self.cache
                .lock()
                .unwrap()
                .insert(query.id.clone(), names.clone());
        }
        Some(names)
    }
}

/// Asks the runtimes, one at a time: the first whose API knows the id answers.
struct Asker<'a> {
    sockets: &'a Sockets,
    /// For containerd's async API; none when it cannot be made (then containerd is not asked).
    runtime: Option<tokio::runtime::Runtime>,
    /// Containers whose refused names were said already.
    reported: HashSet<String>,
}

impl<'a> Asker<'a> {
    fn new(sockets: &'a Sockets) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| {
                eprintln!("sshtrace: warning: containerd will not be asked for names: {e}");
            })
            .ok();
        Self {
            sockets,
            runtime,
            reported: HashSet::new(),
        }
    }

    fn ask(&mut self, query: &Query) -> RuntimeNames {
        let mut names = match self.answer(query) {
            Some(answer) => {
                let (names, refused) = labels::checked(answer);
                self.report(&query.id, &refused);
                names
            }
            None => RuntimeNames::default(),
        };
        let pod_named = names.pod.as_ref().is_some_and(|p| p.name.is_some());
        if !pod_named {
            if let Some(uid) = &query.pod_uid {
                names.pod = kubelet::pod_by_uid(&self.sockets.pod_logs, uid).or(names.pod.take());
            }
        }
        names
    }

    /// The first runtime API that knows the id: Docker-compatible sockets, then containerd in
    /// the namespace the cgroup path suggests and in Kubernetes'.
    fn answer(&self, query: &Query) -> Option<Answer> {
        let id = &query.id;
        if let Some(answer) =
            (self.sockets.docker_api.iter()).find_map(|s| docker_api::inspect(s, id))
        {
            return Some(answer);
        }
        let runtime = self.runtime.as_ref()?;
        let mut namespaces = vec![query.namespace.as_str()];
        if query.namespace != CRI_NAMESPACE {
            namespaces.push(CRI_NAMESPACE);
        }
        self.sockets.containerd.iter().find_map(|socket| {
            (namespaces.iter()).find_map(|ns| containerd::labels(runtime, socket, ns, id))
        })
    }

    /// Values a runtime answered that are not repeated are said once per container, escaped
    /// and cut short.
    fn report(&mut self, id: &str, refused: &[labels::Refused]) {
        if refused.is_empty() {
            return;
        }
        if self.reported.len() >= MAX_CACHED {
            self.reported.clear();
        }
        if !self.reported.insert(id.to_owned()) {
            return;
        }
        let values: Vec<String> = refused
            .iter()
            .map(|r| {
                let mut value: String = r.value.chars().take(64).collect();
                if value.len() < r.value.len() {
                    value.push('…');
                }
                format!("{} {}", r.what, crate::escape::text(&format!("{value:?}")))
            })
            .collect();
        eprintln!(
            "sshtrace: container {}: not shown, as no runtime or Kubernetes would allow it: {}",
            &id[..id.len().min(12)],
            values.join(", ")
        );
    }
}

/// A container id as the runtimes give it: 1 to 64 hex digits (a prefix is an id too).
fn is_hex_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The containerd namespace a cgroup path suggests: `ctr run`'s `/<namespace>/<id>` (with
/// cgroupfs), else Kubernetes' (`kubepods…`, and wherever nothing better is known).
fn containerd_namespace(cgroup_path: &str) -> String {
    let segments: Vec<&str> = cgroup_path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [namespace, _] if is_containerd_namespace(namespace) => (*namespace).to_owned(),
        _ => CRI_NAMESPACE.to_owned(),
    }
}

/// A name containerd accepts for a namespace: letters and digits in groups joined by one
/// `.`, `_` or `-`, at most 76 bytes. It is sent as a request header, so nothing else is.
fn is_containerd_namespace(s: &str) -> bool {
    (1..=76).contains(&s.len())
        && s.split(['.', '_', '-'])
            .all(|group| !group.is_empty() && group.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A unix stream connection to `socket`, given up at `deadline`: connect(2) waits while the
/// runtime's queue of pending connections is full (a runtime that stopped accepting), for as
/// long as the socket's send time-out allows, which is set first.
fn connect(socket: &Path, deadline: Instant) -> Option<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let left = deadline.checked_duration_since(Instant::now())?;
    let s = Socket::new(Domain::UNIX, Type::STREAM, None).ok()?;
    s.set_write_timeout(Some(left)).ok()?;
    s.connect(&SockAddr::unix(socket).ok()?).ok()?;
    Some(UnixStream::from(std::os::fd::OwnedFd::from(s)))
}

#[cfg(test)]
mod tests;
