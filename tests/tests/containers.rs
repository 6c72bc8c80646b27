//! sshd in real Podman containers — on the default bridge, on the host network, and in a
//! network namespace the test made — with a real ssh client from the host (or the namespace):
//! verdicts name the container (id, and name through the API socket), and `--container`
//! provably excludes the others.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use serde_json::Value;
use sshtrace_tests::{
    podman::{ApiService, Container},
    privileged, run,
    sshd::ssh_client,
    sshtrace_bin, Endpoint, NetNs, Tracer,
};

/// A key pair whose public half the containers accept; a second key they do not.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sshtrace-ctr-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for key in ["accepted", "refused"] {
            let out = run(std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)));
            assert!(out.status.success());
        }
        std::fs::copy(dir.join("accepted.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::set_permissions(
            dir.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        Self { dir }
    }

    fn authorized(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }

    /// An ssh login with the refused key: a real client, a real `closed_preauth` verdict.
    fn refused_login(&self, netns: Option<&str>, addr: &str, port: u16) {
        let refused = self.dir.join("refused");
        let out = run(&mut ssh_client(netns, "root", addr, port, &refused, "true"));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{out:?}"
        );
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Traces `port` once the container's sshd is tracked, logs in with the refused key from
/// `netns` (the host when `None`) to 127.0.0.1, and returns the verdict.
fn refused_and_traced(
    keys: &Keys,
    api: &ApiService,
    c: &Container,
    netns: Option<&str>,
    port: u16,
) -> Value {
    let tracer = Tracer::start(&[
        "--runtime-socket",
        &api.socket.display().to_string(),
        "--port",
        &port.to_string(),
    ]);
    tracer.wait_stderr("the container's sshd", |l| l.contains(&c.id[..12]));
    keys.refused_login(netns, "127.0.0.1", port);
    tracer.verdict_for(port, |v| v["cause"] == "closed_preauth")
}

fn assert_names(v: &Value, c: &Container) {
    let container = &v["container"];
    assert_eq!(container["id"], c.id.as_str(), "{v}");
    assert_eq!(container["name"], c.name.as_str(), "{v}");
    assert_eq!(container["runtime"], "podman");
    assert_eq!(container["netns"], c.netns());
    assert!(container["cgroup_path"].as_str().unwrap().contains(&c.id));
}

#[test]
fn bridge_containers_are_named_and_filtered() {
    if !privileged("bridge_containers_are_named_and_filtered") {
        return;
    }
    let keys = Keys::new("bridge");
    let api = ApiService::start("bridge");
    let port = Endpoint::new(190).port();
    let a = Container::run("a", &[], &keys.authorized(), port);
    let b = Container::run("b", &[], &keys.authorized(), port);
    let socket = api.socket.display().to_string();
    let all = Tracer::start(&["--runtime-socket", &socket]);
    let only_a = Tracer::start(&["--runtime-socket", &socket, "--container", &a.name]);
    let host_only = Tracer::start(&["--runtime-socket", &socket, "--host-only"]);
    all.wait_stderr("the containers' sshd", |l| {
        l.contains(&a.id[..12]) && l.contains(&b.id[..12])
    });

    keys.refused_login(None, &a.ip(), port);
    keys.refused_login(None, &b.ip(), port);

    for c in [&a, &b] {
        let v = all.verdict_for(port, |v| {
            v["cause"] == "closed_preauth" && v["container"]["id"] == c.id.as_str()
        });
        assert_eq!(
            v["conn"]["local_addr"],
            c.ip(),
            "the container's own view of the address"
        );
        assert_eq!(v["conn"]["netns"], c.netns());
        assert_names(&v, c);
    }
    let v = only_a.verdict_for(port, |v| v["cause"] == "closed_preauth");
    assert_names(&v, &a);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        host_only.verdicts(port).is_empty(),
        "--host-only let a container through"
    );
    let others: Vec<Value> = only_a
        .verdicts(port)
        .into_iter()
        .filter(|v| v["container"]["id"] != a.id.as_str())
        .collect();
    assert!(
        others.is_empty(),
        "--container let other containers through: {others:#?}"
    );

    let out =
        run(std::process::Command::new(sshtrace_bin()).args(["--container", "no-such-container"]));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--container no-such-container: no sshd runs in a container"),
        "{out:?}"
    );
    assert!(!out.status.success());
}

#[test]
fn host_network_container() {
    if !privileged("host_network_container") {
        return;
    }
    let keys = Keys::new("host");
    let api = ApiService::start("host");
    let ep = Endpoint::new(191);
    let c = Container::run(
        "hostnet",
        &["--network", "host"],
        &keys.authorized(),
        ep.port(),
    );
    let v = refused_and_traced(&keys, &api, &c, None, ep.port());
    assert_names(&v, &c);
}

#[test]
fn container_in_a_namespace_the_test_made() {
    if !privileged("container_in_a_namespace_the_test_made") {
        return;
    }
    let keys = Keys::new("ns");
    let api = ApiService::start("ns");
    let ns = NetNs::new("ctr");
    let ep = Endpoint::new(192);
    let network = format!("ns:/run/netns/{}", ns.name);
    let c = Container::run(
        "netns",
        &["--network", &network],
        &keys.authorized(),
        ep.port(),
    );
    let v = refused_and_traced(&keys, &api, &c, Some(&ns.name), ep.port());
    assert_names(&v, &c);
    assert_eq!(v["conn"]["local_addr"], "127.0.0.1");
}

/// sshtrace itself in a privileged container with the host's pid and network namespaces (the
/// DaemonSet shape): it attaches, mounting what it needs, and sees the host's connections.
#[test]
fn sshtrace_in_a_privileged_container() {
    if !privileged("sshtrace_in_a_privileged_container") {
        return;
    }
    sshtrace_tests::podman::ensure_image();
    let ep = Endpoint::new(193);
    let binary = format!("{}:/usr/bin/sshtrace:ro", sshtrace_bin().display());
    let port = ep.port().to_string();
    let name = format!("sshtrace-in-ctr-{}", std::process::id());
    let mut child = sshtrace_tests::podman::podman()
        .args([
            "run",
            "--rm",
            "--name",
            &name,
            "--privileged",
            "--pid=host",
            "--network=host",
            "-v",
            &binary,
        ])
        .args([
            sshtrace_tests::podman::IMAGE,
            "sshtrace",
            "--json",
            "--port",
            &port,
            "--count",
            "1",
            "--duration",
            "30s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Keep reading standard error to the end: a closed pipe would kill sshtrace (SIGPIPE).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let attached = rx.iter().any(|l| l.starts_with("sshtrace: attached"));
    assert!(attached, "sshtrace did not attach inside the container");
    assert!(std::net::TcpStream::connect((ep.addr().as_str(), ep.port())).is_err());
    let out = child.wait_with_output().unwrap();
    let _ = run(sshtrace_tests::podman::podman().args(["rm", "-f", &name]));
    let verdict: Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(verdict["cause"], "not_listening", "{verdict}");
    assert_eq!(verdict["conn"]["local_port"], ep.port());
}
