//! sshd's configuration files, read without trusting them. A listener's `-f` comes from its
//! own command line, so it may name a FIFO, a device, a huge file or a file on a filesystem
//! that never answers: a file is opened as a path only (no FIFO can block, no device is ever
//! opened), resolved inside the process's own root (its symlinks cannot leave it), read only
//! when it is a regular file of at most [`MAX_BYTES`], and read on a thread of its own
//! ([`Reads`]): a scan waits for it a moment at most, the event path never.

use std::{
    collections::HashMap,
    ffi::CString,
    fs::{File, Metadata},
    io::{self, Read},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
        },
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use rustix::{
    fs::{Mode, OFlags, ResolveFlags, CWD},
    io::Errno,
};

/// A configuration file larger than this is not read ("too large").
pub const MAX_BYTES: u64 = 256 * 1024;
/// Configuration files read at once; a file on a hung filesystem holds its thread until the
/// filesystem answers, so no more threads than this can be held.
const MAX_READS_IN_FLIGHT: usize = 8;

/// A configuration file as a process sees it: `path` inside `root` (the process's
/// /proc/PID/root), or a path in sshtrace's own view when `root` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub root: Option<PathBuf>,
    pub path: PathBuf,
}

impl Location {
    /// A path in sshtrace's own view (`--config`, the default configuration).
    pub fn own(path: impl Into<PathBuf>) -> Self {
        Self {
            root: None,
            path: path.into(),
        }
    }

    /// `path` as the process of /proc/PID directory `dir` sees it.
    pub fn of_process(dir: &Path, path: impl Into<PathBuf>) -> Self {
        Self {
            root: Some(dir.join("root")),
            path: path.into(),
        }
    }

    /// The path through sshtrace's view, e.g. `/proc/812/root/etc/ssh/sshd_config`.
    pub fn shown(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.join(self.path.strip_prefix("/").unwrap_or(&self.path)),
            None => self.path.clone(),
        }
    }
}

/// Opens a regular file for reading (non-blocking). Anything else is refused without being
/// opened: it is first opened as a path only (O_PATH) and examined through that.
pub fn open(location: &Location) -> Result<(File, Metadata), String> {
    let path_only = File::from(open_path(location).map_err(|e| format!("cannot open it: {e}"))?);
    let meta = path_only
        .metadata()
        .map_err(|e| format!("cannot examine it: {e}"))?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", kind(&meta)));
    }
    // Reopened through the descriptor: the very file examined, whatever the path says now.
    let file = File::options()
        .read(true)
        .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(format!("/proc/self/fd/{}", path_only.as_raw_fd()))
        .map_err(|e| format!("cannot open it: {e}"))?;
    let reopened = file
        .metadata()
        .map_err(|e| format!("cannot examine it: {e}"))?;
    if (reopened.dev(), reopened.ino()) != (meta.dev(), meta.ino()) || !reopened.is_file() {
        return Err("it changed while it was opened".into());
    }
    Ok((file, reopened))
}

/// The text of a configuration file: a regular file of at most [`MAX_BYTES`].
pub fn read(location: &Location) -> Result<String, String> {
    let (file, meta) = open(location)?;
    if meta.len() > MAX_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut text = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn too_large(bytes: u64) -> String {
    format!("too large ({bytes} bytes; at most {MAX_BYTES} are read)")
}

/// Only root may decide what sshd is asked to parse (`sshd -T -f`, `sshd -t -f`).
pub fn root_owned(meta: &Metadata) -> Result<(), String> {
    match meta.uid() {
        0 => Ok(()),
        uid => Err(format!("owned by uid {uid}, not root")),
    }
}

fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// An O_PATH descriptor of the file: inside the process's root with openat2's
/// RESOLVE_IN_ROOT (absolute symlinks stay inside it) and no magic links (/proc/self/…);
/// where openat2 is refused (a seccomp filter), at least the last component is no symlink.
fn open_path(location: &Location) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let Some(root) = &location.root else {
        return open_raw(&location.path, flags);
    };
    let inside = location
        .path
        .strip_prefix("/")
        .unwrap_or(&location.path)
        .to_owned();
    let dir = open_raw(root, flags | OFlags::DIRECTORY)?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(&dir, c_path(&inside)?, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS | Errno::PERM) => open_raw(&root.join(inside), flags | OFlags::NOFOLLOW),
        result => Ok(result?),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// `open` as glibc makes it: openat relative to the working directory.
fn open_raw(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        c_path(path)?,
        flags,
        Mode::empty(),
    )?)
}

/// What sshtrace uses of a configuration file, from its global section (before any `Match`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFacts {
    /// `Port` and `ListenAddress host:port`, distinct, in file order; 22 when none is named.
    pub ports: Vec<u16>,
    pub max_startups: Option<String>,
}

impl FileFacts {
    pub fn parse(text: &str) -> Self {
        let mut seen = std::collections::BTreeSet::new();
        let mut ports = Vec::new();
        for (key, value) in global_options(text) {
            let port = if key.eq_ignore_ascii_case("port") {
                value.parse::<u16>().ok()
            } else if key.eq_ignore_ascii_case("listenaddress") {
                value.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
            } else {
                None
            };
            if let Some(port) = port.filter(|p| seen.insert(*p)) {
                ports.push(port);
            }
        }
        if ports.is_empty() {
            ports.push(22);
        }
        Self {
            ports,
            max_startups: first_value(text, "MaxStartups"),
        }
    }
}

/// `Key value` pairs of the global section, comments and blank lines skipped.
fn global_options(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .take_while(|(k, _)| !k.eq_ignore_ascii_case("match"))
}

/// Every global value of `key` (keys may repeat, like HostKey).
pub fn values(text: &str, key: &str) -> Vec<String> {
    global_options(text)
        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// The first global value of `key`: the one sshd uses.
pub fn first_value(text: &str, key: &str) -> Option<String> {
    global_options(text)
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.to_owned())
}

/// What a listener's read is for: a new one is made when its configuration file or its
/// listening sockets change (sshd re-executes itself on SIGHUP and listens anew).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadKey {
    pub location: Location,
    pub sockets: Vec<u64>,
}

type Outcome = Result<FileFacts, String>;

struct Entry {
    key: ReadKey,
    /// Which request this is, so that a late answer to an older one is not taken for it.
    generation: u64,
    outcome: Option<Outcome>,
    /// Whatever it says was said on standard error.
    said: bool,
}

#[derive(Default)]
struct Shared {
    entries: Mutex<HashMap<u32, Entry>>,
    answered: Condvar,
    /// A read answered after the scan that asked stopped waiting: the next scan rebuilds.
    late: AtomicBool,
    in_flight: AtomicUsize,
}

/// The configuration files of the listeners, read on threads of their own.
#[derive(Default)]
pub struct Reads {
    shared: Arc<Shared>,
    generation: u64,
    /// Listeners whose read outlasted a scan's wait once: never waited for again.
    slow: std::collections::BTreeSet<u32>,
}

impl Reads {
    /// Starts reading for listener `pid` unless this very read is done or under way; true when
    /// a read started (the scan waits for it a moment, see [`Self::wait`]).
    pub fn request(&mut self, pid: u32, key: ReadKey) -> bool {
        let mut entries = self.shared.entries.lock().unwrap();
        if entries.get(&pid).is_some_and(|e| e.key == key) {
            return false;
        }
        if self.shared.in_flight.load(Ordering::SeqCst) >= MAX_READS_IN_FLIGHT {
            // Reads hang elsewhere: asked again at a later scan.
            entries.remove(&pid);
            return false;
        }
        self.generation += 1;
        let generation = self.generation;
        entries.insert(
            pid,
            Entry {
                key: key.clone(),
                generation,
                outcome: None,
                said: false,
            },
        );
        drop(entries);
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("sshd-config".into())
            .spawn(move || {
                let outcome = read(&key.location).map(|text| FileFacts::parse(&text));
                let mut entries = shared.entries.lock().unwrap();
                if let Some(e) = entries.get_mut(&pid).filter(|e| e.generation == generation) {
                    e.outcome = Some(outcome);
                }
                shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                shared.late.store(true, Ordering::SeqCst);
                shared.answered.notify_all();
            });
        if let Err(e) = spawned {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            if let Some(entry) = self.shared.entries.lock().unwrap().get_mut(&pid) {
                entry.outcome = Some(Err(format!("cannot start a thread to read it: {e}")));
            }
        }
        true
    }

    /// Waits up to `timeout` for the reads of `pids` to answer (not for a listener whose read
    /// was slow before), then takes note that what answered so far is seen.
    pub fn wait(&mut self, pids: &[u32], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let pids: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !self.slow.contains(p))
            .collect();
        let mut entries = self.shared.entries.lock().unwrap();
        let pending = |entries: &HashMap<u32, Entry>| -> Vec<u32> {
            pids.iter()
                .copied()
                .filter(|p| entries.get(p).is_some_and(|e| e.outcome.is_none()))
                .collect()
        };
        loop {
            let waiting = pending(&entries);
            let now = Instant::now();
            if waiting.is_empty() || now >= deadline {
                self.slow.extend(waiting);
                break;
            }
            entries = self
                .shared
                .answered
                .wait_timeout(entries, deadline - now)
                .unwrap()
                .0;
        }
        // What answered until now is read by this scan; a later answer asks for another.
        self.shared.late.store(false, Ordering::SeqCst);
    }

    /// Whether a read answered that no scan has seen yet.
    pub fn answered_late(&self) -> bool {
        self.shared.late.load(Ordering::SeqCst)
    }

    /// The answer for listener `pid`, if it came, and whether it is new (not yet said).
    pub fn answer(&self, pid: u32) -> Option<(Outcome, bool)> {
        let mut entries = self.shared.entries.lock().unwrap();
        let entry = entries.get_mut(&pid)?;
        let outcome = entry.outcome.clone()?;
        let new = !std::mem::replace(&mut entry.said, true);
        Some((outcome, new))
    }

    /// Forgets listeners that are gone.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.shared.entries.lock().unwrap().retain(|&p, _| keep(p));
        self.slow.retain(|&p| keep(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sshtrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn facts_stop_at_match_and_default_to_22() {
        let text = "# Port 1\nPort 2222\nport 2223\nPort 2222\nListenAddress 127.0.0.1:2224\n\
                    maxstartups 3:50:10\nMatch User x\nPort 9\nMaxStartups 1\n";
        let facts = FileFacts::parse(text);
        assert_eq!(facts.ports, vec![2222, 2223, 2224]);
        assert_eq!(facts.max_startups.as_deref(), Some("3:50:10"));
        assert_eq!(FileFacts::parse("PermitRootLogin yes\n").ports, vec![22]);
        assert_eq!(
            values("HostKey /a\nHostKey /b\nMatch all\nHostKey /c", "hostkey"),
            vec!["/a", "/b"]
        );
    }

    /// A FIFO would block an open for reading until a writer comes: it is never opened.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("cfg-fifo");
        let fifo = dir.join("fifo");
        rustix::fs::mknodat(
            CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = read(&Location::own(&fifo)).unwrap_err();
        assert_eq!(err, "not a regular file (a FIFO)");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// /dev/zero never ends and a sparse file is huge: neither is read.
    #[test]
    fn devices_and_huge_files_are_refused() {
        let err = read(&Location::own("/dev/zero")).unwrap_err();
        assert_eq!(err, "not a regular file (a character device)");
        let dir = scratch("cfg-big");
        let big = dir.join("big");
        File::create(&big).unwrap().set_len(1 << 30).unwrap();
        assert!(read(&Location::own(&big))
            .unwrap_err()
            .starts_with("too large (1073741824 bytes"));
        std::fs::write(&big, "Port 2\n").unwrap();
        assert_eq!(read(&Location::own(&big)).unwrap(), "Port 2\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Inside a process's root, an absolute symlink resolves in that root, not in sshtrace's.
    #[test]
    fn symlinks_stay_inside_the_root() {
        let root = scratch("cfg-root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real"), "Port 7\n").unwrap();
        std::os::unix::fs::symlink("/etc/real", root.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/host")).unwrap();
        let inside = |p: &str| Location {
            root: Some(root.clone()),
            path: p.into(),
        };
        assert_eq!(read(&inside("/etc/link")).unwrap(), "Port 7\n");
        assert!(read(&inside("/etc/host")).is_err(), "escaped the root");
        assert_eq!(
            inside("/etc/real").shown(),
            root.join("etc/real"),
            "shown through the root"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A read is made once per key; the scan sees its answer, and is told of late ones.
    #[test]
    fn reads_answer_once_per_key() {
        let dir = scratch("cfg-reads");
        std::fs::write(dir.join("c"), "Port 2300\nMaxStartups 2\n").unwrap();
        let key = ReadKey {
            location: Location::own(dir.join("c")),
            sockets: vec![1],
        };
        let mut reads = Reads::default();
        assert!(reads.request(7, key.clone()));
        reads.wait(&[7], Duration::from_secs(5));
        assert!(!reads.answered_late());
        let (outcome, new) = reads.answer(7).unwrap();
        assert!(new);
        assert_eq!(outcome.unwrap().ports, vec![2300]);
        assert!(!reads.answer(7).unwrap().1, "said once");
        assert!(!reads.request(7, key.clone()), "the same read again");
        assert!(reads.request(
            7,
            ReadKey {
                sockets: vec![2],
                ..key
            }
        ));
        reads.retain(|_| false);
        assert!(reads.answer(7).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
