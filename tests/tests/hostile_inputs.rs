//! Hostile inputs to discovery, done for real against the real binary: programs that only call
//! themselves `sshd`, whose `-f` names a FIFO, /dev/zero, a 1 GiB sparse file or a file of
//! 10,000 `Port` lines, and a tenant's cgroup named like an LXC container with control and
//! non-ASCII bytes in the name. Under each, a real crash is still judged, sshtrace stays small,
//! SIGTERM ends it with its summary, and what it refused or capped is said on standard error.

use std::{
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sshtrace_tests::{
    hostile::{assert_peak_rss_bounded, crash_is_still_judged, stop_with_sigterm},
    kill, listens, loud, privileged, run,
    sshd::build_program,
    sshtrace_bin, wait_for, Cgroup, Endpoint, Sshd, SshdOptions, Tracer,
};

/// One test at a time: sshtrace's start-up peak (the kernel's BTF parsed twice at once) is
/// near the memory bound, and higher when several start together on two CPUs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The ports the 10,000-line configuration names: 40000 onwards.
const FIRST_FLOOD_PORT: u16 = 40000;

/// A test's scratch directory (readable by `nobody`), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sshtrace-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// `-f` targets: a FIFO, /dev/zero, a 1 GiB sparse file, 10,000 `Port` lines.
    fn hostile_configs(&self) -> [PathBuf; 4] {
        let fifo = self.0.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        let sparse = self.0.join("sparse");
        fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
        let ports = self.0.join("ports");
        let text: String = (0..10_000u16)
            .map(|i| format!("Port {}\n", FIRST_FLOOD_PORT + i))
            .collect();
        fs::write(&ports, text).unwrap();
        [fifo, "/dev/zero".into(), sparse, ports]
    }

    /// tests/fixtures/fake_sshd.c built as `sshd`, owned by `owner`.
    fn fake_sshd_binary(&self, owner: &str) -> PathBuf {
        let built = build_program("fake_sshd.c", &self.0);
        let sshd = self.0.join("sshd");
        fs::rename(built, &sshd).unwrap();
        let out = run(Command::new("chown").arg(owner).arg(&sshd));
        assert!(out.status.success(), "chown {owner}");
        sshd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A fake sshd listening on `ep` with `-f config`, run as `user` (root when `None`).
struct Fake {
    child: Child,
    ep: Endpoint,
}

impl Fake {
    fn start(binary: &Path, ep: Endpoint, config: &Path, user: Option<&str>) -> Self {
        let mut command = match user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={user}"),
                    "--regid=nogroup",
                    "--clear-groups",
                ])
                .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("-D")
            .arg("-f")
            .arg(config)
            .args([ep.addr(), ep.port().to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the fake sshd");
        let pid = child.id();
        wait_for("the fake sshd to listen", Duration::from_secs(5), || {
            listens(pid, ep.port()).then_some(())
        });
        Self { child, ep }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// As the tracking line lists a traced listener: `PID on ADDR:PORT`.
    fn as_listed(&self) -> String {
        format!("{} on {}:{}", self.pid(), self.ep.addr(), self.ep.port())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        kill(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Lines of `lines` that contain every one of `parts`.
fn count(lines: &[String], parts: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Every port a tracking line of `stderr` named.
fn tracked_ports(stderr: &[String]) -> std::collections::BTreeSet<u16> {
    stderr
        .iter()
        .filter_map(|l| {
            l.strip_prefix("sshtrace: tracking ports [")?
                .split_once(']')
        })
        .flat_map(|(list, _)| list.split(", ").filter_map(|p| p.parse().ok()))
        .collect()
}

/// (a)–(c) of every hostile test: a real crash judged, peak memory bounded, SIGTERM obeyed.
fn still_works(mut tracer: Tracer, crash: &str, ep: Endpoint) -> Vec<String> {
    crash_is_still_judged(&tracer, crash, ep);
    assert_peak_rss_bounded(&tracer);
    stop_with_sigterm(&mut tracer);
    tracer.stderr_lines()
}

/// A program anyone can name `sshd` is not a listener to trust: none of its `-f` files is
/// touched, and why it is not traced is said once.
#[test]
fn unprivileged_fake_sshd_is_refused_whatever_its_config() {
    if !privileged("unprivileged_fake_sshd_is_refused_whatever_its_config") {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = Scratch::new("fake-nobody");
    let binary = scratch.fake_sshd_binary("nobody");
    let eps = [231, 232, 233, 234].map(Endpoint::new);
    let fakes: Vec<Fake> = (scratch.hostile_configs().iter().zip(eps))
        .map(|(config, ep)| Fake::start(&binary, ep, config, Some("nobody")))
        .collect();
    let tracer = Tracer::start(&[]);
    let stderr = still_works(tracer, "fake-nobody-crash", Endpoint::new(235));
    for fake in &fakes {
        let refused = format!("sshtrace: not tracing pid {} (", fake.pid());
        assert_eq!(
            count(&stderr, &[&refused, "owned by uid 65534, not root"]),
            1,
            "{stderr:#?}"
        );
        assert_eq!(
            count(&stderr, &[&fake.as_listed()]),
            0,
            "traced: {stderr:#?}"
        );
        assert_eq!(count(&stderr, &[&format!("sshd pid {}:", fake.pid())]), 0);
    }
}

/// A root-owned program named `sshd` is trusted as a listener: then the guards on reading its
/// configuration (no blocking open, regular files only, 256 KiB, 64 ports) protect sshtrace.
#[test]
fn root_owned_fake_sshd_with_hostile_configs() {
    if !privileged("root_owned_fake_sshd_with_hostile_configs") {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = Scratch::new("fake-root");
    let binary = scratch.fake_sshd_binary("root");
    let eps = [236, 237, 238, 239].map(Endpoint::new);
    let fakes: Vec<Fake> = (scratch.hostile_configs().iter().zip(eps))
        .map(|(config, ep)| Fake::start(&binary, ep, config, None))
        .collect();
    let tracer = Tracer::start(&[]);
    let stderr = still_works(tracer, "fake-root-crash", Endpoint::new(240));
    let said = [
        "is unreadable: not a regular file (a FIFO)",
        "is unreadable: not a regular file (a character device)",
        "is unreadable: too large (1073741824 bytes; at most 262144 are read)",
        "names 10000 ports: tracing the first 64, 9936 left out",
    ];
    for (fake, said) in fakes.iter().zip(said) {
        assert!(
            count(&stderr, &[&fake.as_listed()]) > 0,
            "not traced: {stderr:#?}"
        );
        let whose = format!("sshtrace: sshd pid {}: its configuration ", fake.pid());
        assert_eq!(count(&stderr, &[&whose, said]), 1, "{said}: {stderr:#?}");
        assert_eq!(count(&stderr, &[&whose]), 1, "said once: {stderr:#?}");
    }
    let tracked = tracked_ports(&stderr);
    assert!(tracked.contains(&(FIRST_FLOOD_PORT + 63)), "{stderr:#?}");
    assert!(
        !tracked.contains(&(FIRST_FLOOD_PORT + 64)),
        "past the cap: {stderr:#?}"
    );
}

/// The end of the cgroup name a tenant chose, as sshtrace sees it: the escape sequence, `é`,
/// and U+FFFD for the byte that is not UTF-8.
const NAME_TAIL: &str = "il\x1b[31m\u{e9}\u{fffd}";

/// A cgroup beneath `tenant` that `nobody` names like an LXC container: an escape sequence,
/// `é` and a byte that is not UTF-8 (and a newline, where the kernel allows one).
fn lxc_named_by_a_tenant(tenant: &Cgroup) -> Cgroup {
    let nobody = ("nobody", "nogroup");
    let name = |newline: &[u8]| [b"lxc.payload.ev", newline, b"il\x1b[31m\xc3\xa9\xff"].concat();
    tenant
        .child_made_by(nobody, OsStr::from_bytes(&name(b"\n")))
        .unwrap_or_else(|why| {
            loud(&format!(
                "the kernel refuses a newline in a cgroup name ({})",
                why.trim()
            ));
            tenant
                .child_made_by(nobody, OsStr::from_bytes(&name(b"")))
                .unwrap()
        })
}

/// A tenant's delegated cgroup named like an LXC container with control and non-UTF-8 bytes,
/// holding a real sshd: traced, no panic, the name said escaped, the container unnamed.
#[test]
fn lxc_named_cgroup_with_control_and_non_ascii_bytes() {
    if !privileged("lxc_named_cgroup_with_control_and_non_ascii_bytes") {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tenant = Cgroup::new("pids", "lxc-hostile");
    let cgroup = lxc_named_by_a_tenant(&tenant);
    let ep = Endpoint::new(229);
    let crash = SshdOptions {
        env: vec![("SSHTRACE_TEST_CRASH".into(), "preauth".into())],
        preload: Some("crash_preload.c"),
        ..Default::default()
    };
    let sshd = Sshd::start("lxc-hostile", ep, crash);
    cgroup.add(sshd.pid());
    let tracer = Tracer::start(&[]);
    let listed = format!(
        "{} on {}:{} (container lxc unnamed)",
        sshd.pid(),
        ep.addr(),
        ep.port()
    );
    tracer.wait_stderr("the sshd in the tenant's cgroup", |l| l.contains(&listed));
    assert!(
        !sshd.ssh("true").status.success(),
        "the crash fixture did not fire"
    );
    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "sshd_crashed");
    let c = &v["container"];
    assert_eq!(
        (&c["runtime"], &c["id"], &c["name"]),
        (&"lxc".into(), &"unnamed".into(), &Value::Null)
    );
    assert!(
        c["cgroup_path"].as_str().unwrap().ends_with(NAME_TAIL),
        "the exact path: {c}"
    );
    let stdout = tracer.stdout_lines();
    let stderr = still_works(tracer, "lxc-hostile-crash", Endpoint::new(230));
    assert!(
        !stdout.iter().chain(&stderr).any(|l| l.contains('\x1b')),
        "raw ESC: {stderr:#?}"
    );
    let said = format!(
        "sshtrace: sshd pid {}: its lxc container's cgroup ",
        sshd.pid()
    );
    let escaped = escape_like_sshtrace(NAME_TAIL);
    assert_eq!(
        count(&stderr, &[&said, &escaped, ": shown as unnamed"]),
        1,
        "{stderr:#?}"
    );
}

/// `text` with ESC written `\x1b`, as sshtrace's escaping writes it.
fn escape_like_sshtrace(text: &str) -> String {
    text.replace('\x1b', "\\x1b")
}

/// `sshtrace doctor` on a configuration path that is a FIFO or a tenant's file: it must not
/// hang in `sshd -T`/`-t` on the FIFO, nor have sshd parse a file root does not own; it says so.
#[test]
fn doctor_does_not_run_sshd_on_a_fifo_or_a_tenants_file() {
    if !privileged("doctor_does_not_run_sshd_on_a_fifo_or_a_tenants_file") {
        return;
    }
    let scratch = Scratch::new("doctor-hostile");
    let [fifo, ..] = scratch.hostile_configs();
    let tenants = scratch.0.join("tenants_config");
    fs::write(&tenants, "Port 22\n").unwrap();
    let out = run(Command::new("chown").arg("nobody").arg(&tenants));
    assert!(out.status.success());
    for (config, why) in [
        (&fifo, "not a regular file (a FIFO)"),
        (&tenants, "owned by uid 65534, not root"),
    ] {
        let mut doctor = Command::new(sshtrace_bin())
            .args(["doctor", "--json", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let exited = wait_for("doctor to finish", Duration::from_secs(10), || {
            doctor.try_wait().unwrap()
        });
        assert!(!exited.success(), "a check fails");
        let mut report = String::new();
        std::io::Read::read_to_string(&mut doctor.stdout.take().unwrap(), &mut report).unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        let test = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "sshd_config_test")
            .unwrap();
        assert_eq!(test["status"], "fail", "{test}");
        let evidence = test["evidence"].as_str().unwrap();
        assert!(
            evidence.starts_with("sshd -t not run on ") && evidence.contains(why),
            "{test}"
        );
    }
}
