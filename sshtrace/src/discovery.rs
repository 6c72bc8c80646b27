//! Finding the sshd processes to trace: a process is a listening sshd when it holds a
//! listening TCP socket and runs an sshd executable; the ports come from those sockets, from
//! each sshd's configuration, and from `--port`. Per-connection processes are found through
//! the process tree (and, once tracing, by the fork probe), never by their name.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

use crate::{container::Container, events::unmap, kernel::sockdiag};

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
    refused: std::cell::RefCell<BTreeSet<u32>>,
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
                bail!("--pid {pid}: not an sshd process (runs {})", exe_of(&dir));
            }
        }
        Ok(Self {
            scope,
            proc_root,
            last_listen: HashMap::new(),
            seen_ports: BTreeSet::new(),
            last: Snapshot::default(),
            refused: Default::default(),
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
        if listen == self.last_listen && pids_alive && !self.last.ports.is_empty() {
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

    fn build(&self) -> Snapshot {
        let mut listeners: BTreeMap<u32, Listener> = BTreeMap::new();
        let processes = process_list(&self.proc_root);
        for &pid in processes.keys() {
            if !self.scope.pids.is_empty() && !self.scope.pids.contains(&pid) {
                continue;
            }
            let dir = self.proc_root.join(pid.to_string());
            let addrs: Vec<SocketAddr> = socket_inodes(&dir)
                .iter()
                .filter_map(|inode| self.last_listen.get(inode).copied())
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let exe = exe_of(&dir);
            if !is_sshd_exe(&exe) {
                continue;
            }
            if let Err(why) = trusted_executable(&dir) {
                if self.refused.borrow_mut().insert(pid) {
                    eprintln!(
                        "sshtrace: not tracing pid {pid} ({}): {why}",
                        crate::escape::text(&exe)
                    );
                }
                continue;
            }
            let container = crate::container::of_process(pid);
            let wanted = match &container {
                Some(c) => {
                    !self.scope.host_only
                        && (self.scope.containers.is_empty()
                            || self.scope.containers.contains(&c.id))
                }
                None => self.scope.containers.is_empty(),
            };
            if wanted {
                listeners.insert(
                    pid,
                    Listener {
                        pid,
                        exe,
                        addrs,
                        netns: crate::container::netns_of(pid),
                        container,
                    },
                );
            }
        }
        // Children that inherited a listening socket are per-connection processes, not
        // listeners: keep only the topmost sshd of each tree.
        let ids: BTreeSet<u32> = listeners.keys().copied().collect();
        listeners.retain(|_, l| !ancestors(&processes, l.pid).any(|a| ids.contains(&a)));

        let mut ports: BTreeSet<u16> = self.scope.ports.clone();
        for l in listeners.values() {
            ports.extend(l.addrs.iter().map(|a| a.port()));
            ports.extend(config_ports(&self.proc_root.join(l.pid.to_string())));
        }
        if listeners.is_empty() && self.scope.ports.is_empty() {
            // Nothing runs: watch the configured ports, so refusals there are seen.
            ports.extend(ports_from_config(Path::new(DEFAULT_CONFIG)));
        }
        let descendants = processes
            .keys()
            .copied()
            .filter(|&pid| {
                !listeners.contains_key(&pid)
                    && ancestors(&processes, pid).any(|a| listeners.contains_key(&a))
            })
            .collect();
        Snapshot {
            listeners,
            ports,
            descendants,
            gone: Vec::new(),
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

/// Only a root-owned regular file is an sshd to trust: anyone can name a program `sshd`.
fn trusted_executable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir.join("exe")).map_err(|e| format!("its executable: {e}"))?;
    if !meta.is_file() {
        return Err("its executable is not a regular file".into());
    }
    if meta.uid() != 0 {
        return Err(format!(
            "its executable is owned by uid {}, not root",
            meta.uid()
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
        // SAFETY: setns on a namespace file we opened; this thread ends right after.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
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

/// The command-line arguments of process `dir`.
fn cmdline(dir: &Path) -> Vec<String> {
    parse_cmdline(&fs::read(dir.join("cmdline")).unwrap_or_default())
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

/// The configuration file a running sshd reads, through its root (containers differ).
fn config_path(dir: &Path, args: &[String]) -> PathBuf {
    let config = flag_values(args, "-f")
        .pop()
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_CONFIG.into());
    dir.join("root")
        .join(config.strip_prefix("/").unwrap_or(&config))
}

/// Ports of the configuration a running sshd was started with (`-f`, `-p`).
fn config_ports(dir: &Path) -> BTreeSet<u16> {
    let args = cmdline(dir);
    let mut ports: BTreeSet<u16> = flag_values(&args, "-p")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    ports.extend(ports_from_config(&config_path(dir, &args)));
    ports
}

/// The configuration file a running sshd reads (through its root).
pub fn config_path_of(pid: u32) -> Option<PathBuf> {
    let dir = PathBuf::from("/proc").join(pid.to_string());
    let args = cmdline(&dir);
    (!args.is_empty()).then(|| config_path(&dir, &args))
}

/// A global option of a running sshd: `-o Key=value` on its command line, else the first
/// `Key value` line of its configuration before any `Match`.
pub fn sshd_config_value(pid: u32, key: &str) -> Option<String> {
    let dir = PathBuf::from("/proc").join(pid.to_string());
    let args = cmdline(&dir);
    let from_args = flag_values(&args, "-o").into_iter().find_map(|o| {
        let (k, v) = o.split_once(['=', ' '])?;
        k.eq_ignore_ascii_case(key).then(|| v.trim().to_owned())
    });
    from_args.or_else(|| config_value(&fs::read_to_string(config_path(&dir, &args)).ok()?, key))
}

/// Every global `Key value` line of a configuration file (keys may repeat, like HostKey).
pub fn config_file_values(path: &Path, key: &str) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut values = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(k), Some(v)) = (words.next(), words.next()) else {
            continue;
        };
        if k.eq_ignore_ascii_case("match") {
            break;
        }
        if k.eq_ignore_ascii_case(key) {
            values.push(v.to_owned());
        }
    }
    values
}

fn config_value(text: &str, key: &str) -> Option<String> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(k), Some(v)) = (words.next(), words.next()) else {
            continue;
        };
        if k.eq_ignore_ascii_case("match") {
            return None;
        }
        if k.eq_ignore_ascii_case(key) {
            return Some(v.to_owned());
        }
    }
    None
}

/// `Port` and `ListenAddress host:port` lines; 22 when the file names no port.
pub fn ports_from_config(path: &Path) -> BTreeSet<u16> {
    let Ok(text) = fs::read_to_string(path) else {
        return BTreeSet::new();
    };
    let mut ports = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if key.eq_ignore_ascii_case("match") {
            break;
        }
        if key.eq_ignore_ascii_case("port") {
            ports.extend(value.parse::<u16>().ok());
        } else if key.eq_ignore_ascii_case("listenaddress") {
            if let Ok(addr) = value.parse::<SocketAddr>() {
                ports.insert(addr.port());
            }
        }
    }
    if ports.is_empty() {
        ports.insert(22);
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag_values(&args, "-f"), vec!["/a"]);
        assert_eq!(flag_values(&args, "-p"), vec!["2222"]);
        assert_eq!(flag_values(&args, "-o"), vec!["MaxStartups=3"]);
    }

    #[test]
    fn config_values_stop_at_match() {
        let text = "# MaxStartups 1\nmaxstartups 3:50:10\nMatch User x\nLoginGraceTime 5\n";
        assert_eq!(config_value(text, "MaxStartups"), Some("3:50:10".into()));
        assert_eq!(config_value(text, "LoginGraceTime"), None);
    }

    #[test]
    fn config_ports_and_defaults() {
        let dir = std::env::temp_dir().join(format!("sshtrace-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sshd_config");
        fs::write(
            &file,
            "# Port 1\nPort 2222\nport 2223\nListenAddress 127.0.0.1:2224\nMatch User x\nPort 9\n",
        )
        .unwrap();
        assert_eq!(ports_from_config(&file), BTreeSet::from([2222, 2223, 2224]));
        fs::write(&file, "PermitRootLogin yes\n").unwrap();
        assert_eq!(ports_from_config(&file), BTreeSet::from([22]));
        assert!(ports_from_config(&dir.join("missing")).is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
