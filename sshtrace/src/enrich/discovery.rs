//! Finding the sshd processes to trace: a process is a listening sshd when it holds a
//! listening TCP socket and runs an sshd executable; the ports come from those sockets, from
//! each sshd's configuration, and from `--port`. Per-connection processes are found through
//! the process tree (and, once tracing, by the fork probe), never by their name.
//!
//! What the cause rules need of a listener's configuration (MaxStartups) is read here, with
//! its ports, into the [`Snapshot`]: the rules read no files.

pub mod config;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Result};
use rustix::{
    fs::{AtFlags, FileType, StatxFlags, CWD},
    thread::LinkNameSpaceType,
};

use crate::{enrich::container::Container, escape, kernel::sockdiag, trace::events::unmap};
use config::{FileFacts, Location, ReadKey, Reads};

/// A listening sshd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub pid: u32,
    pub exe: String,
    /// As seen in its own network namespace.
    pub addrs: Vec<SocketAddr>,
    pub netns: Option<u64>,
    /// The container it runs in (from its cgroup path); `None` on the host.
    pub container: Option<Container>,
}

/// What discovery read of a listener's configuration, for the rules to use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshdConfig {
    /// The file as sshd names it (`-f`, else /etc/ssh/sshd_config), inside its own root.
    pub path: String,
    /// `-o MaxStartups=…`, else the file's; `None` when neither sets it.
    pub max_startups: Option<String>,
    /// Ports of `-p` and of the file, at most [`MAX_CONFIG_PORTS`].
    pub ports: Vec<u16>,
    /// Further distinct ports it names, not traced.
    pub ports_left_out: usize,
    /// Why the file could not be read, e.g. "not a regular file (a FIFO)".
    pub unreadable: Option<String>,
}

impl SshdConfig {
    fn new(args: &[String], path: &Path, file: Result<FileFacts, String>) -> Self {
        let from_args = flag_values(args, "-o").into_iter().find_map(|o| {
            let (k, v) = o.split_once(['=', ' '])?;
            k.eq_ignore_ascii_case("MaxStartups")
                .then(|| v.trim().to_owned())
        });
        let mut ports: Vec<u16> = flag_values(args, "-p")
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        let (facts, unreadable) = match file {
            Ok(facts) => (facts, None),
            Err(why) => (FileFacts::default(), Some(why)),
        };
        ports.extend(facts.ports);
        let mut seen = BTreeSet::new();
        ports.retain(|p| seen.insert(*p));
        let ports_left_out = ports.len().saturating_sub(MAX_CONFIG_PORTS);
        ports.truncate(MAX_CONFIG_PORTS);
        Self {
            path: path.to_string_lossy().into_owned(),
            max_startups: from_args.or(facts.max_startups),
            ports,
            ports_left_out,
            unreadable,
        }
    }

    /// Says on standard error what could not be read or traced of it (once per read). A host
    /// without sshd has no default configuration to speak of.
    fn say(&self, pid: u32) {
        let whose = match pid {
            DEFAULT_CONFIG_KEY if !Path::new(&self.path).exists() => return,
            DEFAULT_CONFIG_KEY => "the default configuration".to_owned(),
            pid => format!("sshd pid {pid}: its configuration"),
        };
        let path = escape::text(&self.path);
        if let Some(why) = &self.unreadable {
            eprintln!(
                "sshtrace: {whose} {path} is unreadable: {}; its ports are not traced",
                escape::text(why)
            );
        }
        if self.ports_left_out > 0 {
            eprintln!(
                "sshtrace: {whose} {path} names {} ports: tracing the first {MAX_CONFIG_PORTS}, {} left out",
                self.ports.len() + self.ports_left_out,
                self.ports_left_out
            );
        }
    }
}

/// What a scan of /proc found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub listeners: BTreeMap<u32, Listener>,
    /// Ports from listeners, their configuration and `--port`.
    pub ports: BTreeSet<u16>,
    /// Existing descendants of the listeners (per-connection processes).
    pub descendants: BTreeSet<u32>,
    /// Listeners seen earlier that no longer listen (most recent last, bounded).
    pub gone: Vec<Listener>,
    /// The configuration of each listener (and of each gone one) whose file was read.
    pub configs: BTreeMap<u32, SshdConfig>,
}

impl Snapshot {
    /// Where sshd listens now, e.g. for "nothing listens on 127.0.0.5:2222; sshd listens on …".
    pub fn listening_addrs(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .listeners
            .values()
            .flat_map(|l| l.addrs.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// What discovery read of listener `pid`'s configuration.
    pub fn config_of(&self, pid: u32) -> Option<&SshdConfig> {
        self.configs.get(&pid)
    }
}

/// What to look for: from `--port` and `--pid`.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub ports: BTreeSet<u16>,
    pub pids: BTreeSet<u32>,
    /// Only sshd in these containers (ids as resolved at start-up).
    pub containers: BTreeSet<String>,
    /// Only sshd outside containers.
    pub host_only: bool,
}

pub struct Discovery {
    scope: Scope,
    proc_root: PathBuf,
    /// Listening socket inodes and addresses of the last scan, to skip the fd walk when the
    /// set did not change.
    last_listen: HashMap<u64, SocketAddr>,
    /// Every port traced so far: a port sshd stopped listening on stays traced, since that is
    /// when clients are refused there.
    seen_ports: BTreeSet<u16>,
    last: Snapshot,
    /// Processes refused as listeners (said once each).
    refused: BTreeSet<u32>,
    /// Listeners whose container name was not repeated (said once each).
    unnamed: BTreeSet<u32>,
    /// The listeners' configuration files, read off the scan's thread.
    reads: Reads,
}

/// The ports one configuration adds at most (a file may name thousands).
pub const MAX_CONFIG_PORTS: usize = 64;
/// How long a scan waits for the configuration files it asked for: a regular file answers in
/// microseconds; one on a hung filesystem is left to its thread, and its listener traced by its
/// listening sockets meanwhile.
const CONFIG_WAIT: Duration = Duration::from_millis(50);
/// More of /proc/PID/cmdline is not read (sshd's own is a line).
const MAX_CMDLINE: u64 = 64 * 1024;
/// The pid under which the default configuration's read is kept (no process has pid 0).
const DEFAULT_CONFIG_KEY: u32 = 0;

/// A listening sshd's own facts, read while building a snapshot.
struct Candidate {
    args: Vec<String>,
    sockets: Vec<u64>,
}

impl Discovery {
    /// Checks `--pid` values: each must be a running sshd.
    pub fn new(scope: Scope) -> Result<Self> {
        let proc_root = PathBuf::from("/proc");
        for pid in &scope.pids {
            let dir = proc_root.join(pid.to_string());
            if !dir.exists() {
                bail!("--pid {pid}: no such process");
            }
            if !is_sshd_exe(&exe_of(&dir)) {
                bail!(
                    "--pid {pid}: not an sshd process (runs {})",
                    escape::text(&exe_of(&dir))
                );
            }
        }
        Ok(Self {
            scope,
            proc_root,
            last_listen: HashMap::new(),
            seen_ports: BTreeSet::new(),
            last: Snapshot::default(),
            refused: BTreeSet::new(),
            unnamed: BTreeSet::new(),
            reads: Reads::default(),
        })
    }

    /// Rescans; returns the new snapshot when anything changed.
    pub fn scan(&mut self) -> Option<&Snapshot> {
        let listen = listening_sockets(&self.proc_root);
        let pids_alive = self
            .last
            .listeners
            .keys()
            .all(|p| self.proc_root.join(p.to_string()).exists());
        if listen == self.last_listen
            && pids_alive
            && !self.last.ports.is_empty()
            && !self.reads.answered_late()
        {
            return None;
        }
        self.last_listen = listen;
        let mut snapshot = self.build();
        self.seen_ports.extend(&snapshot.ports);
        snapshot.ports.clone_from(&self.seen_ports);
        snapshot.gone.clone_from(&self.last.gone);
        for (pid, listener) in &self.last.listeners {
            if !snapshot.listeners.contains_key(pid) {
                snapshot.gone.retain(|l| l.pid != *pid);
                snapshot.gone.push(listener.clone());
            }
        }
        let excess = snapshot.gone.len().saturating_sub(MAX_GONE);
        snapshot.gone.drain(..excess);
        // A gone listener keeps the configuration it had.
        for l in &snapshot.gone {
            if let Some(config) = self.last.configs.get(&l.pid) {
                snapshot
                    .configs
                    .entry(l.pid)
                    .or_insert_with(|| config.clone());
            }
        }
        if snapshot == self.last {
            return None;
        }
        self.last = snapshot;
        Some(&self.last)
    }

    pub fn current(&self) -> &Snapshot {
        &self.last
    }

    /// A port the kernel saw an sshd accept on: traced from now on, like a scanned one.
    pub fn learn_port(&mut self, port: u16) {
        if self.seen_ports.insert(port) {
            self.last.ports.insert(port);
        }
    }

    /// A snapshot of the listeners, ports and per-connection processes running now.
    fn build(&mut self) -> Snapshot {
        let processes = process_list(&self.proc_root);
        // What was said of processes that are gone is forgotten: pids come and go for ever.
        self.refused.retain(|pid| processes.contains_key(pid));
        self.unnamed.retain(|pid| processes.contains_key(pid));
        let (listeners, candidates) = self.topmost_listeners(&processes);
        let (ports, configs) = self.ports_and_configs(&listeners, &candidates);
        let descendants = descendants_of(&processes, &listeners);
        Snapshot {
            listeners,
            ports,
            descendants,
            gone: Vec::new(),
            configs,
        }
    }

    /// The listening sshd processes in scope, the topmost of each tree, with their own facts.
    fn topmost_listeners(
        &mut self,
        processes: &HashMap<u32, u32>,
    ) -> (BTreeMap<u32, Listener>, HashMap<u32, Candidate>) {
        let mut listeners: BTreeMap<u32, Listener> = BTreeMap::new();
        let mut candidates: HashMap<u32, Candidate> = HashMap::new();
        for &pid in processes.keys() {
            if let Some((listener, candidate)) = self.listener(pid) {
                listeners.insert(pid, listener);
                candidates.insert(pid, candidate);
            }
        }
        // Children that inherited a listening socket are per-connection processes, not
        // listeners: keep only the topmost sshd of each tree.
        let ids: BTreeSet<u32> = listeners.keys().copied().collect();
        listeners.retain(|_, l| !ancestors(processes, l.pid).any(|a| ids.contains(&a)));
        candidates.retain(|pid, _| listeners.contains_key(pid));
        for l in listeners.values() {
            self.note_unnamed(l);
        }
        (listeners, candidates)
    }

    /// Process `pid` as a listener: in scope, holding a listening socket, and running a
    /// trusted sshd executable.
    fn listener(&mut self, pid: u32) -> Option<(Listener, Candidate)> {
        if !self.scope.pids.is_empty() && !self.scope.pids.contains(&pid) {
            return None;
        }
        let dir = self.proc_root.join(pid.to_string());
        let sockets: Vec<u64> = socket_inodes(&dir)
            .into_iter()
            .filter(|inode| self.last_listen.contains_key(inode))
            .collect();
        if sockets.is_empty() {
            return None;
        }
        let exe = exe_of(&dir);
        if !is_sshd_exe(&exe) {
            return None;
        }
        if let Err(why) = trusted_executable(&dir) {
            if self.refused.insert(pid) {
                eprintln!(
                    "sshtrace: not tracing pid {pid} ({}): {why}",
                    escape::text(&exe)
                );
            }
            return None;
        }
        let container = crate::enrich::container::of_process(pid);
        if !self.wants_container(container.as_ref()) {
            return None;
        }
        let listener = Listener {
            pid,
            exe,
            addrs: sockets.iter().map(|i| self.last_listen[i]).collect(),
            netns: crate::enrich::container::netns_of(pid),
            container,
        };
        let args = cmdline(&dir);
        Some((listener, Candidate { args, sockets }))
    }

    /// Whether `--container`/`--host-only` let an sshd in `container` (`None`: the host) in.
    fn wants_container(&self, container: Option<&Container>) -> bool {
        match container {
            Some(c) => {
                !self.scope.host_only
                    && (self.scope.containers.is_empty() || self.scope.containers.contains(&c.id))
            }
            None => self.scope.containers.is_empty(),
        }
    }

    /// The ports to trace (`--port`, the listeners', their configurations') and the
    /// listeners' configurations.
    fn ports_and_configs(
        &mut self,
        listeners: &BTreeMap<u32, Listener>,
        candidates: &HashMap<u32, Candidate>,
    ) -> (BTreeSet<u16>, BTreeMap<u32, SshdConfig>) {
        let mut ports: BTreeSet<u16> = self.scope.ports.clone();
        for l in listeners.values() {
            ports.extend(l.addrs.iter().map(std::net::SocketAddr::port));
        }
        // Nothing runs: watch the configured ports, so refusals there are seen.
        let default_config = listeners.is_empty() && self.scope.ports.is_empty();
        let configs = self.read_configs(candidates, default_config);
        for config in configs.values() {
            ports.extend(&config.ports);
        }
        let configs = configs
            .into_iter()
            .filter(|(pid, _)| *pid != DEFAULT_CONFIG_KEY)
            .collect();
        (ports, configs)
    }

    /// The listeners' configurations (and the default one when `default_config`): each file
    /// is read on a thread of its own, waited for [`CONFIG_WAIT`] at most; a listener whose
    /// file has not answered yet has none until a later scan. New problems are said once.
    fn read_configs(
        &mut self,
        candidates: &HashMap<u32, Candidate>,
        default_config: bool,
    ) -> BTreeMap<u32, SshdConfig> {
        let mut wanted: Vec<(u32, Vec<String>, ReadKey)> = candidates
            .iter()
            .map(|(&pid, c)| {
                let dir = self.proc_root.join(pid.to_string());
                let location = Location::of_process(&dir, config_file(&c.args));
                let key = ReadKey {
                    location,
                    sockets: c.sockets.clone(),
                };
                (pid, c.args.clone(), key)
            })
            .collect();
        if default_config {
            let key = ReadKey {
                location: Location::own(DEFAULT_CONFIG),
                sockets: Vec::new(),
            };
            wanted.push((DEFAULT_CONFIG_KEY, Vec::new(), key));
        }
        let pids: BTreeSet<u32> = wanted.iter().map(|(pid, ..)| *pid).collect();
        self.reads.retain(|pid| pids.contains(&pid));
        let asked: Vec<u32> = wanted
            .iter()
            .filter(|(pid, _, key)| self.reads.request(*pid, key.clone()))
            .map(|(pid, ..)| *pid)
            .collect();
        self.reads.wait(&asked, CONFIG_WAIT);
        let mut configs = BTreeMap::new();
        for (pid, args, key) in wanted {
            let Some((outcome, new)) = self.reads.answer(pid) else {
                continue;
            };
            let config = SshdConfig::new(&args, &key.location.path, outcome);
            if new {
                config.say(pid);
            }
            configs.insert(pid, config);
        }
        configs
    }

    /// A container whose cgroup name is not a plain name is shown as unnamed: the name is said
    /// once, escaped.
    fn note_unnamed(&mut self, l: &Listener) {
        let Some(c) = l
            .container
            .as_ref()
            .filter(|c| c.id == crate::enrich::container::UNNAMED)
        else {
            return;
        };
        if self.unnamed.insert(l.pid) {
            eprintln!(
                "sshtrace: sshd pid {}: its {} container's cgroup {} holds no plain name (at most {} letters, digits, '.', '_', '-'): shown as {}",
                l.pid,
                c.runtime,
                escape::text(&c.cgroup_path),
                crate::enrich::container::MAX_NAME,
                crate::enrich::container::UNNAMED
            );
        }
    }
}

const DEFAULT_CONFIG: &str = "/etc/ssh/sshd_config";
const MAX_GONE: usize = 16;

fn is_sshd_exe(exe: &str) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    name == "sshd"
}

/// Only a root-owned regular file is an sshd to trust: anyone can name a program `sshd`. Its
/// attributes as cached (AT_STATX_DONT_SYNC): a FUSE or NFS server is not asked, so one that
/// never answers cannot hold the scan.
fn trusted_executable(dir: &Path) -> Result<(), String> {
    let stx = rustix::fs::statx(
        CWD,
        dir.join("exe"),
        AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE | StatxFlags::UID,
    )
    .map_err(|e| format!("its executable: {e}"))?;
    if FileType::from_raw_mode(stx.stx_mode.into()) != FileType::RegularFile {
        return Err("its executable is not a regular file".into());
    }
    if stx.stx_uid != 0 {
        return Err(format!(
            "its executable is owned by uid {}, not root",
            stx.stx_uid
        ));
    }
    Ok(())
}

fn exe_of(dir: &Path) -> String {
    fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// pid → parent pid of every process.
fn process_list(proc_root: &Path) -> HashMap<u32, u32> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
            Some((pid, parent_from_stat(&stat)?))
        })
        .collect()
}

/// The ppid field of /proc/PID/stat; the comm in parentheses may contain spaces and ')'.
fn parent_from_stat(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// The processes below a listener (per-connection processes), listeners excluded.
fn descendants_of(
    processes: &HashMap<u32, u32>,
    listeners: &BTreeMap<u32, Listener>,
) -> BTreeSet<u32> {
    processes
        .keys()
        .copied()
        .filter(|&pid| {
            !listeners.contains_key(&pid)
                && ancestors(processes, pid).any(|a| listeners.contains_key(&a))
        })
        .collect()
}

fn ancestors(processes: &HashMap<u32, u32>, pid: u32) -> impl Iterator<Item = u32> + '_ {
    let mut current = pid;
    std::iter::from_fn(move || {
        let parent = *processes.get(&current)?;
        (parent != 0 && parent != current).then(|| {
            current = parent;
            parent
        })
    })
    .take(64)
}

fn socket_inodes(dir: &Path) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let target = fs::read_link(fd.ok()?.path()).ok()?;
        let target = target.to_str()?;
        target
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Listening TCP sockets of this network namespace: inode → address.
/// Listening TCP sockets of every network namespace (containers included): inode → address.
/// Socket inodes are unique host-wide, so one table serves all namespaces. Asked through
/// sock_diag, which returns listeners only; /proc/PID/net/tcp is the fallback.
fn listening_sockets(proc_root: &Path) -> HashMap<u64, SocketAddr> {
    let own = fs::read_link(proc_root.join("self/ns/net")).ok();
    let mut found = HashMap::new();
    for dir in one_process_per_netns(proc_root) {
        let same_netns = fs::read_link(dir.join("ns/net")).ok() == own;
        let diag = if same_netns {
            sockdiag::listening().ok()
        } else {
            in_netns_of(&dir)
        };
        match diag {
            Some(sockets) => found.extend(sockets),
            None => {
                for file in ["net/tcp", "net/tcp6"] {
                    if let Ok(text) = fs::read_to_string(dir.join(file)) {
                        found.extend(parse_proc_net_tcp(&text, true));
                    }
                }
            }
        }
    }
    found
}

/// sock_diag in the network namespace of process `dir`, from a thread that enters it (setns
/// changes only the calling thread).
fn in_netns_of(dir: &Path) -> Option<Vec<(u64, SocketAddr)>> {
    let ns = fs::File::open(dir.join("ns/net")).ok()?;
    std::thread::spawn(move || {
        // This thread alone enters the namespace, and ends right after.
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(LinkNameSpaceType::Network),
        )
        .ok()?;
        sockdiag::listening().ok()
    })
    .join()
    .ok()
    .flatten()
}

/// /proc/PID of one process in each network namespace.
fn one_process_per_netns(proc_root: &Path) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let ns = fs::read_link(e.path().join("ns/net")).ok()?;
            seen.insert(ns).then(|| e.path())
        })
        .collect()
}

const TCP_LISTEN: &str = "0A";

/// Parses /proc/net/tcp{,6}: `sl local_address rem_address st … uid timeout inode`.
fn parse_proc_net_tcp(text: &str, listening_only: bool) -> Vec<(u64, SocketAddr)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || (listening_only && cols[3] != TCP_LISTEN) {
                return None;
            }
            Some((cols[9].parse().ok()?, parse_hex_addr(cols[1])?))
        })
        .collect()
}

/// `0100007F:0016` or 32 hex digits for IPv6; the address words are in host byte order.
fn parse_hex_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).map(u32::from_be))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_be_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            unmap(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The command-line arguments of process `dir` (at most [`MAX_CMDLINE`] bytes of them).
fn cmdline(dir: &Path) -> Vec<String> {
    let mut raw = Vec::new();
    if let Ok(file) = fs::File::open(dir.join("cmdline")) {
        let _ = file.take(MAX_CMDLINE).read_to_end(&mut raw);
    }
    parse_cmdline(&raw)
}

/// NUL-separated arguments; sshd rewrites its own as one string (setproctitle), e.g.
/// `sshd: /usr/sbin/sshd -D -f /etc/ssh/sshd_config [listener] 0 of 10-100 startups`.
fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    match args.as_slice() {
        [title] if title.contains(' ') => title
            .split_whitespace()
            .skip_while(|w| w.ends_with(':'))
            .map(str::to_owned)
            .collect(),
        _ => args,
    }
}

/// The values of sshd option `flag` (`-f`, `-p`, `-o`) on a command line, attached or not.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        if let Some(inline) = arg.strip_prefix(flag) {
            match inline {
                "" => values.extend(it.next().cloned()),
                value => values.push(value.to_owned()),
            }
        }
    }
    values
}

/// The configuration file an sshd with these arguments reads, as it names it.
fn config_file(args: &[String]) -> PathBuf {
    flag_values(args, "-f")
        .pop()
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_CONFIG.into())
}

/// Whether sshd `pid` logs to its standard error (`-e`, or `-d`) and that is not a socket (a
/// pipe, a file, a terminal, /dev/null): the writes the socket-send hook cannot see.
pub fn logs_to_a_pipe_or_file(pid: u32) -> bool {
    let dir = PathBuf::from("/proc").join(pid.to_string());
    logs_to_stderr(&cmdline(&dir))
        && fs::read_link(dir.join("fd/2"))
            .is_ok_and(|target| !target.to_string_lossy().starts_with("socket:"))
}

/// `-e` or `-d` among sshd's options, alone or combined (`-De`); an option that takes a value
/// (`-f file`, `-ofoo`) ends its group and may take the next argument.
fn logs_to_stderr(args: &[String]) -> bool {
    const WITH_VALUE: &str = "CcEfghkopu";
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let Some(letters) = arg.strip_prefix('-').filter(|l| !l.is_empty() && *l != "-") else {
            return false;
        };
        for (i, letter) in letters.char_indices() {
            if letter == 'e' || letter == 'd' {
                return true;
            }
            if WITH_VALUE.contains(letter) {
                if i + 1 == letters.len() {
                    rest.next();
                }
                break;
            }
        }
    }
    false
}

/// The configuration file a running sshd reads, inside its own root (containers differ).
pub fn config_location_of(pid: u32) -> Option<Location> {
    let dir = PathBuf::from("/proc").join(pid.to_string());
    let args = cmdline(&dir);
    (!args.is_empty()).then(|| Location::of_process(&dir, config_file(&args)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logging_to_stderr_is_read_from_the_options() {
        let args = |line: &str| -> Vec<String> { line.split(' ').map(str::to_owned).collect() };
        for yes in [
            "sshd -D -e",
            "sshd -De -f x",
            "sshd -f /e -d",
            "sshd -o LogLevel=e -e",
        ] {
            assert!(logs_to_stderr(&args(yes)), "{yes}");
        }
        for no in [
            "sshd -D",
            "sshd -f -e",
            "sshd -E /var/log/e",
            "sshd -oe",
            "sshd",
            "sshd x -e",
        ] {
            assert!(!logs_to_stderr(&args(no)), "{no}");
        }
    }

    #[test]
    fn parses_listening_sockets_v4_and_v6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0200007F:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:9C40 0100007F:08AE 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0";
        assert_eq!(
            parse_proc_net_tcp(v4, true),
            vec![(4242, "127.0.0.2:2222".parse().unwrap())]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0";
        assert_eq!(
            parse_proc_net_tcp(v6, true),
            vec![(77, "[::1]:22".parse().unwrap())]
        );
    }

    #[test]
    fn ppid_survives_parentheses_in_comm() {
        assert_eq!(parent_from_stat("12 (a) b)) S 7 12 12 0"), Some(7));
    }

    #[test]
    fn sshd_is_recognised_by_executable_not_comm() {
        assert!(is_sshd_exe("/usr/sbin/sshd"));
        assert!(is_sshd_exe("/usr/sbin/sshd (deleted)"));
        assert!(!is_sshd_exe("/usr/lib/openssh/sshd-session"));
        assert!(!is_sshd_exe("/usr/bin/not-sshd"));
    }

    #[test]
    fn sshd_process_titles_are_split_into_arguments() {
        let title =
            b"sshd: /usr/sbin/sshd -D -e -f /tmp/x/sshd_config [listener] 0 of 10-100 startups\0\0";
        let args = parse_cmdline(title);
        assert_eq!(args[0], "/usr/sbin/sshd");
        assert_eq!(flag_values(&args, "-f"), vec!["/tmp/x/sshd_config"]);
        assert_eq!(
            parse_cmdline(b"/usr/sbin/sshd\0-D\0-f\0/a b\0"),
            vec!["/usr/sbin/sshd", "-D", "-f", "/a b"]
        );
    }

    #[test]
    fn command_line_flags_attached_or_not() {
        let args: Vec<String> = ["sshd", "-D", "-f", "/a", "-p2222", "-o", "MaxStartups=3"]
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        assert_eq!(flag_values(&args, "-f"), vec!["/a"]);
        assert_eq!(flag_values(&args, "-p"), vec!["2222"]);
        assert_eq!(flag_values(&args, "-o"), vec!["MaxStartups=3"]);
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(std::string::ToString::to_string).collect()
    }

    /// `-o` wins over the file, `-p` adds to it, and what the file says stops at `Match`.
    #[test]
    fn a_configuration_from_arguments_and_file() {
        let file = FileFacts::parse("Port 2222\nMaxStartups 3:50:10\nMatch User x\nPort 9\n");
        let config = SshdConfig::new(
            &args(&["sshd", "-p", "2200", "-f", "/c"]),
            Path::new("/c"),
            Ok(file.clone()),
        );
        assert_eq!(config.ports, vec![2200, 2222]);
        assert_eq!(config.max_startups.as_deref(), Some("3:50:10"));
        let config = SshdConfig::new(
            &args(&["sshd", "-oMaxStartups=1"]),
            Path::new("/c"),
            Ok(file),
        );
        assert_eq!(config.max_startups.as_deref(), Some("1"));
    }

    /// Ten thousand `Port` lines add 64 ports, and the rest is counted.
    #[test]
    fn configuration_ports_are_capped_and_counted() {
        let text: String = (0..10_000)
            .map(|i| format!("Port {}\n", 30_000 + i))
            .collect();
        let config = SshdConfig::new(
            &args(&["sshd"]),
            Path::new("/c"),
            Ok(FileFacts::parse(&text)),
        );
        assert_eq!(config.ports.len(), MAX_CONFIG_PORTS);
        assert_eq!(config.ports[0], 30_000);
        assert_eq!(config.ports_left_out, 10_000 - MAX_CONFIG_PORTS);
    }

    /// An unreadable file adds no port and no value, and says why.
    #[test]
    fn an_unreadable_configuration_says_why() {
        let config = SshdConfig::new(
            &args(&["sshd", "-p2201"]),
            Path::new("/fifo"),
            Err("not a regular file (a FIFO)".into()),
        );
        assert_eq!(config.ports, vec![2201]);
        assert_eq!(config.max_startups, None);
        assert_eq!(
            config.unreadable.as_deref(),
            Some("not a regular file (a FIFO)")
        );
    }

    /// A scan reads a listener's configuration through its root, once, and off its thread.
    #[test]
    fn a_scan_reads_the_configuration_of_this_process_root() {
        let dir = std::env::temp_dir().join(format!("sshtrace-scan-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("c"), "Port 2399\n").unwrap();
        let me = std::process::id();
        let mut discovery = Discovery::new(Scope::default()).unwrap();
        let candidates = HashMap::from([(
            me,
            Candidate {
                args: args(&["sshd", "-f", dir.join("c").to_str().unwrap()]),
                sockets: vec![1],
            },
        )]);
        let configs = discovery.read_configs(&candidates, false);
        assert_eq!(configs[&me].ports, vec![2399]);
        assert_eq!(discovery.read_configs(&candidates, false), configs);
        fs::remove_dir_all(dir).unwrap();
    }
}
