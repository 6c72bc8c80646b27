//! Which OpenSSH each listener runs, and the programs it starts for every connection: up to
//! 9.7 its own path again (`sshd -R`), from 9.8 `sshd-session`, which from 10.0 starts
//! `sshd-auth`. A package upgrade replaces those files under a listener that keeps running the
//! old release, so each new connection is handed to a program of another release until sshd
//! is restarted. Versions are read from the files' bytes (the release string every OpenSSH
//! binary carries, the one `sshd -V` prints): no binary is ever run for this.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::PathBuf,
};

use rustix::fs::OFlags;

use super::{sshd_binary, Check, Status, Target};
use crate::enrich::discovery::{
    config::{self, Location},
    Listener,
};

/// Binaries are read up to this size: sshd is about 1 MiB, a static build a few.
const MAX_BINARY_BYTES: u64 = 64 << 20;
const RESTART: &str = "restart sshd (systemctl restart ssh): the running listener predates \
                       the upgrade; new connections then run one release throughout";

/// An OpenSSH release as its binaries carry it, e.g. `OpenSSH_9.2p1 Debian-2+deb12u10`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

impl Release {
    fn parse(text: &str) -> Option<Self> {
        let (major, rest) = text.strip_prefix("OpenSSH_")?.split_once('.')?;
        let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(Self {
            text: text.to_owned(),
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// `9.2`, as release notes and sshd_config(5) name versions.
    pub fn number(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

/// What an sshd binary's bytes say: its release, and the helper paths compiled into it (the
/// defaults of SshdSessionPath and SshdAuthPath, servconf.c's `_PATH_SSHD_SESSION`/`_AUTH`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryFacts {
    pub release: Option<Release>,
    session_path: Option<String>,
    auth_path: Option<String>,
}

impl BinaryFacts {
    fn of(bytes: &[u8]) -> Self {
        let mut facts = Self::default();
        for s in c_strings(bytes) {
            if let Some(release) = release_in(s) {
                // Beside the release sit `OpenSSH_9.2` (the bare version, a prefix of it)
                // and compat.c's patterns (`OpenSSH_7.0*,…`, refused by release_in).
                if facts
                    .release
                    .as_ref()
                    .is_none_or(|r| r.text.len() < s.len())
                {
                    facts.release = Some(release);
                }
            } else if is_path_to(s, "sshd-session") {
                facts.session_path.get_or_insert_with(|| s.to_owned());
            } else if is_path_to(s, "sshd-auth") {
                facts.auth_path.get_or_insert_with(|| s.to_owned());
            }
        }
        facts
    }
}

/// The printable tail of each NUL-terminated run: a string constant's own bytes.
fn c_strings(bytes: &[u8]) -> impl Iterator<Item = &str> {
    bytes.split(|&b| b == 0).filter_map(|run| {
        let start = run
            .iter()
            .rposition(|b| !(0x20..0x7f).contains(b))
            .map_or(0, |i| i + 1);
        std::str::from_utf8(&run[start..])
            .ok()
            .filter(|s| s.len() >= 8)
    })
}

fn release_in(s: &str) -> Option<Release> {
    let text = &s[s.find("OpenSSH_")?..];
    if text.contains(['*', ',', '%']) {
        return None;
    }
    Release::parse(text)
}

fn is_path_to(s: &str, program: &str) -> bool {
    s.starts_with('/')
        && s.strip_suffix(program)
            .is_some_and(|dir| dir.ends_with('/'))
        && !s.contains(char::is_whitespace)
}

/// The facts of an open binary, read up to [`MAX_BINARY_BYTES`].
fn read_facts(file: File) -> Result<BinaryFacts, String> {
    let mut bytes = Vec::new();
    file.take(MAX_BINARY_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(BinaryFacts::of(&bytes))
}

/// What a listener runs, through /proc/PID/exe: the very file it executed, even one an
/// upgrade has since deleted.
fn running_facts(pid: u32) -> Result<BinaryFacts, String> {
    let file = File::options()
        .read(true)
        .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot open /proc/{pid}/exe: {e}"))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.uid() != 0 {
        return Err("its executable is not a root-owned regular file".into());
    }
    read_facts(file)
}

/// Which OpenSSH runs, read once for every check that depends on it.
pub enum Releases {
    /// Each listener's executable, in pid order.
    Running(Vec<(u32, Result<BinaryFacts, String>)>),
    /// No sshd listens: the installed one.
    Installed(Result<BinaryFacts, String>),
}

impl Releases {
    pub fn read(t: &Target) -> Self {
        if t.sshd.listeners.is_empty() {
            let installed =
                config::open(&Location::own(sshd_binary())).and_then(|(file, _)| read_facts(file));
            return Self::Installed(installed);
        }
        let running = t.sshd.listeners.keys();
        Self::Running(running.map(|&pid| (pid, running_facts(pid))).collect())
    }

    /// The release the configuration's findings speak for: the first listener's (the one
    /// whose configuration doctor reads), else the installed sshd's.
    pub fn governing(&self) -> Option<&Release> {
        let facts = match self {
            Self::Running(running) => &running.first()?.1,
            Self::Installed(installed) => installed,
        };
        facts.as_ref().ok()?.release.as_ref()
    }
}

pub fn checks(t: &Target, releases: &Releases) -> Vec<Check> {
    let running = match releases {
        Releases::Installed(installed) => return vec![installed_version(installed)],
        Releases::Running(running) => running,
    };
    running
        .iter()
        .filter_map(|(pid, facts)| Some(listener_checks(t, t.sshd.listeners.get(pid)?, facts)))
        .flatten()
        .collect()
}

fn installed_version(facts: &Result<BinaryFacts, String>) -> Check {
    let path = sshd_binary();
    match facts.as_ref().map(|f| f.release.as_ref()) {
        Ok(Some(r)) => Check::new(
            "sshd_version",
            Status::Pass,
            format!("no sshd listens; {} is {}", path.display(), r.text),
        ),
        Ok(None) => Check::new(
            "sshd_version",
            Status::Skip,
            format!("{} carries no OpenSSH release string", path.display()),
        ),
        Err(why) => Check::new(
            "sshd_version",
            Status::Skip,
            format!("{}: {why}", path.display()),
        ),
    }
}

fn listener_checks(
    t: &Target,
    listener: &Listener,
    facts: &Result<BinaryFacts, String>,
) -> Vec<Check> {
    let pid = listener.pid;
    let facts = match facts {
        Ok(facts) => facts,
        Err(why) => {
            let evidence = format!("sshd {pid}: cannot read its executable: {why}");
            return vec![Check::new("sshd_version", Status::Skip, evidence)];
        }
    };
    let Some(release) = &facts.release else {
        let evidence = format!("sshd {pid}: its executable carries no OpenSSH release string");
        return vec![Check::new("sshd_version", Status::Skip, evidence)];
    };
    let mut out = vec![version(listener, release)];
    let helpers = helpers(t, listener, facts, release);
    out.extend(helpers.iter().map(|h| helper(listener, release, h)));
    out
}

fn version(listener: &Listener, release: &Release) -> Check {
    let replaced = if listener.exe.ends_with(" (deleted)") {
        "; its executable was replaced on disk since it started"
    } else {
        ""
    };
    let model = if !release.at_least(9, 8) {
        "it re-executes itself for every connection (sshd -R; sshd-session came in 9.8)"
    } else if !release.at_least(10, 0) {
        "it starts sshd-session for every connection"
    } else {
        "it starts sshd-session for every connection, which starts sshd-auth to authenticate"
    };
    Check::new(
        "sshd_version",
        Status::Pass,
        format!(
            "sshd {} runs {} (read from its executable {}){replaced}; {model}",
            listener.pid, release.text, listener.exe
        ),
    )
}

/// A program a listener starts for every connection, where that listener expects it.
struct Helper {
    program: &'static str,
    /// Inside the listener's root; `None` when neither its configuration nor its executable
    /// names it.
    path: Option<String>,
    /// Where the path comes from.
    source: String,
    /// ", through sshd-session," when the listener does not start it itself.
    started_through: &'static str,
    /// A missing one fails every connection (9.8+); up to 9.7 sshd serves the connection from
    /// the listener's own image after logging "rexec of … failed".
    missing_is_fatal: bool,
}

fn helpers(t: &Target, listener: &Listener, facts: &BinaryFacts, release: &Release) -> Vec<Helper> {
    if !release.at_least(9, 8) {
        let own = listener
            .exe
            .strip_suffix(" (deleted)")
            .unwrap_or(&listener.exe);
        return vec![Helper {
            program: "sshd",
            path: Some(own.to_owned()),
            source: "its own path, re-executed as sshd -R up to 9.7".into(),
            started_through: "",
            missing_is_fatal: false,
        }];
    }
    let session = configured_or_compiled(t, listener, "SshdSessionPath", &facts.session_path);
    let mut out = vec![helper_at("sshd-session", "", session)];
    if release.at_least(10, 0) {
        let auth = configured_or_compiled(t, listener, "SshdAuthPath", &facts.auth_path);
        out.push(helper_at("sshd-auth", ", through sshd-session,", auth));
    }
    out
}

fn helper_at(
    program: &'static str,
    started_through: &'static str,
    found: Option<(String, String)>,
) -> Helper {
    let (path, source) = found.unzip();
    Helper {
        program,
        path,
        source: source.unwrap_or_default(),
        started_through,
        missing_is_fatal: true,
    }
}

/// The path `keyword` sets in the configuration file, else the default compiled into the
/// listener, else `sshd -T`'s — which is the installed sshd's, so only for a listener on the
/// host, whose files those are.
fn configured_or_compiled(
    t: &Target,
    listener: &Listener,
    keyword: &str,
    compiled: &Option<String>,
) -> Option<(String, String)> {
    let configured = t
        .config_text
        .as_ref()
        .ok()
        .and_then(|text| config::first_value(text, keyword));
    if let Some(path) = configured {
        return Some((path, format!("{keyword} in {}", t.config.display())));
    }
    if let Some(path) = compiled {
        return Some((path.clone(), "the default compiled into it".into()));
    }
    let effective = t.values(&keyword.to_ascii_lowercase()).into_iter().next();
    effective
        .filter(|_| listener.container.is_none())
        .map(|path| (path, format!("sshd -T {}", keyword.to_ascii_lowercase())))
}

/// The helper must be a root-owned regular file of the listener's release.
fn helper(listener: &Listener, running: &Release, h: &Helper) -> Check {
    let pid = listener.pid;
    let Some(path) = &h.path else {
        let evidence = format!(
            "sshd {pid} ({}): cannot tell where it expects {}: neither its configuration nor its executable names it",
            running.text, h.program
        );
        return Check::new("sshd_binaries", Status::Skip, evidence);
    };
    let what = format!(
        "sshd {pid} ({}){} starts {path} for every connection ({})",
        running.text, h.started_through, h.source
    );
    let location = Location::of_process(&PathBuf::from(format!("/proc/{pid}")), path);
    let (file, meta) = match config::open(&location) {
        Ok(opened) => opened,
        Err(why) => return missing(h, &what, &why),
    };
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        let evidence = format!(
            "{what}, but it is mode {:04o} owner uid {}: someone other than root decides what root runs",
            meta.mode() & 0o7777,
            meta.uid()
        );
        return Check::new("sshd_binaries", Status::Fail, evidence)
            .fix(format!("chown root:root {path}; chmod 755 {path}; then check the package (debsums openssh-server)"));
    }
    match read_facts(file).map(|f| f.release) {
        Ok(Some(on_disk)) => compare(&what, running, &on_disk),
        Ok(None) => Check::new(
            "sshd_binaries",
            Status::Warn,
            format!("{what}, but it carries no OpenSSH release string"),
        ),
        Err(why) => Check::new("sshd_binaries", Status::Warn, format!("{what}; {why}")),
    }
}

fn missing(h: &Helper, what: &str, why: &str) -> Check {
    let (status, effect) = if h.missing_is_fatal {
        (
            Status::Fail,
            "every new connection is closed at once (sshd logs the failed exec)",
        )
    } else {
        (
            Status::Warn,
            "each connection is served by the listener's own image after \"rexec of … failed\"",
        )
    };
    Check::new(
        "sshd_binaries",
        status,
        format!("{what}, but {why}: {effect}"),
    )
    .fix("reinstall the server package (apt-get install --reinstall openssh-server), then restart sshd")
}

/// Same release: pass. Another package build of the same version: warn. Another version: the
/// listener and the program it hands connections to are not built to work together: fail.
fn compare(what: &str, running: &Release, on_disk: &Release) -> Check {
    if on_disk == running {
        return Check::new(
            "sshd_binaries",
            Status::Pass,
            format!("{what}: the same release"),
        );
    }
    let evidence = format!("{what}, which is now {}", on_disk.text);
    if (on_disk.major, on_disk.minor) != (running.major, running.minor) {
        return Check::new(
            "sshd_binaries",
            Status::Fail,
            format!("{evidence}: another OpenSSH version than the listener's; new connections may be closed at once"),
        )
        .fix(RESTART);
    }
    Check::new(
        "sshd_binaries",
        Status::Warn,
        format!("{evidence}: the package was upgraded under the running listener"),
    )
    .fix(RESTART)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(strings: &[&str]) -> Vec<u8> {
        let mut bytes = vec![0x8b, 0x45, 0xfc];
        for s in strings {
            bytes.extend_from_slice(s.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&[0x48, 0x89, 0x00]);
        }
        bytes
    }

    #[test]
    fn the_release_string_wins_over_version_and_compat_patterns() {
        let facts = BinaryFacts::of(&binary(&[
            "OpenSSH_2.*,OpenSSH_3.0*,OpenSSH_3.1*",
            "OpenSSH_9.2",
            "OpenSSH_9.2p1 Debian-2+deb12u10",
            "OpenSSH_6.6.1*",
            "SSH-%d.%d-%.100s",
        ]));
        let release = facts.release.unwrap();
        assert_eq!(release.text, "OpenSSH_9.2p1 Debian-2+deb12u10");
        assert_eq!((release.major, release.minor), (9, 2));
        assert!(!release.at_least(9, 8));
    }

    #[test]
    fn helper_paths_compiled_into_sshd() {
        let facts = BinaryFacts::of(&binary(&[
            "OpenSSH_10.0p2 Debian-7",
            "%s/sshd-session",
            "/usr/lib/openssh/sshd-session",
            "/usr/lib/openssh/sshd-auth",
        ]));
        assert_eq!(
            facts.session_path.as_deref(),
            Some("/usr/lib/openssh/sshd-session")
        );
        assert_eq!(
            facts.auth_path.as_deref(),
            Some("/usr/lib/openssh/sshd-auth")
        );
        assert!(facts.release.unwrap().at_least(10, 0));
    }

    #[test]
    fn another_build_warns_another_version_fails() {
        let running = Release::parse("OpenSSH_9.9p1 Debian-3").unwrap();
        let same = compare("x", &running, &running.clone());
        let rebuilt = compare(
            "x",
            &running,
            &Release::parse("OpenSSH_9.9p1 Debian-4").unwrap(),
        );
        let upgraded = compare(
            "x",
            &running,
            &Release::parse("OpenSSH_10.0p1 Debian-1").unwrap(),
        );
        assert_eq!(
            [same.status, rebuilt.status, upgraded.status],
            [Status::Pass, Status::Warn, Status::Fail]
        );
        assert!(upgraded.fix.unwrap().contains("restart"));
    }
}
