//! sshd in real containers of each runtime, with a real ssh client from the host (or a
//! namespace): Podman — on the default bridge, on the host network, and in a network namespace
//! the test made — with names through its Docker-compatible API and `--container` provably
//! excluding the others; Docker Engine (dockerd on its own data, names through its API socket);
//! containerd with the labels Kubernetes' CRI plugin sets (pod, namespace and container names
//! through containerd's own API, and hostile labels refused). And the DaemonSet manifest mounts
//! the sockets it names.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use serde_json::Value;
use sshtrace_tests::{
    containerd::{Containerd, CtrContainer, K8S_NAMESPACE},
    docker::{docker_chains, DockerContainer, DockerEngine},
    kill,
    podman::{ApiService, Container, BOOKWORM, IMAGE},
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

    fn accepted(&self) -> PathBuf {
        self.dir.join("accepted")
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
/// sshtrace on `port`, asking the test's API service for container names.
fn tracer_asking(api: &ApiService, port: u16) -> Tracer {
    Tracer::start(&[
        "--runtime-socket",
        &api.socket.display().to_string(),
        "--port",
        &port.to_string(),
    ])
}

fn refused_and_traced(
    tracer: &Tracer,
    keys: &Keys,
    c: &Container,
    netns: Option<&str>,
    port: u16,
) -> Value {
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
    let tracer = tracer_asking(&api, ep.port());
    let v = refused_and_traced(&tracer, &keys, &c, None, ep.port());
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
    let tracer = tracer_asking(&api, ep.port());
    let v = refused_and_traced(&tracer, &keys, &c, Some(&ns.name), ep.port());
    assert_names(&v, &c);
    assert_eq!(v["conn"]["local_addr"], "127.0.0.1");

    // The container's own firewall refuses the next login: the verdict names its namespace
    // and container, not "this host's firewall".
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &ep.port().to_string(),
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    let out = run(&mut ssh_client(
        Some(&ns.name),
        "root",
        "127.0.0.1",
        ep.port(),
        &keys.accepted(),
        "true",
    ));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{out:?}"
    );
    let v = tracer.verdict_for(ep.port(), |v| v["cause"] == "firewall");
    let netns = &v["details"]["netns"];
    assert_eq!(netns["name"], ns.name.as_str(), "{v:#}");
    assert_eq!(netns["container"]["id"], c.id.as_str(), "{v:#}");
    assert!(
        !v["summary"]
            .as_str()
            .unwrap()
            .contains("this host's firewall"),
        "{v:#}"
    );
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

/// Logs in with the accepted key from `netns` to 127.0.0.1:`port` and, once the session's
/// command runs, kills the per-connection sshd (the child of the container's sshd `listener`)
/// from the host; returns the verdict.
fn session_killed(tracer: &Tracer, keys: &Keys, netns: &str, listener: u32, port: u16) -> Value {
    let mut client = ssh_client(
        Some(netns),
        "root",
        "127.0.0.1",
        port,
        &keys.accepted(),
        "sleep 60",
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .expect("ssh");
    let session = sshtrace_tests::wait_for_session(listener);
    kill(session, libc::SIGKILL);
    let _ = client.wait();
    let v = tracer.verdict_for(port, |v| v["cause"] == "sshd_killed");
    assert_eq!(v["sshd"]["pid"], session, "{v}");
    assert_eq!(v["details"]["signal"], "SIGKILL", "{v}");
    v
}

/// Docker Engine: sshtrace runs first, then the container starts (its own network namespace)
/// and its session is killed; the verdict names the container through dockerd's API socket,
/// and its namespace. dockerd adds no iptables chain (it was told not to: nothing to clean).
#[test]
fn docker_engine_container_is_named() {
    if !privileged("docker_engine_container_is_named") {
        return;
    }
    let chains_before = docker_chains();
    let keys = Keys::new("docker");
    let engine = DockerEngine::start("named");
    engine.load(&BOOKWORM.archive());
    let port = Endpoint::new(194).port();
    let socket = engine.socket.display().to_string();
    let tracer = Tracer::start(&["--runtime-socket", &socket, "--port", &port.to_string()]);
    let c = DockerContainer::run(&engine, "docker", IMAGE, &keys.authorized(), port);
    let ns = NetNs::attach("docker", c.pid);

    let v = session_killed(&tracer, &keys, &ns.name, c.pid, port);
    let container = &v["container"];
    assert_eq!(container["id"], c.id.as_str(), "{v}");
    assert_eq!(container["name"], c.name.as_str(), "{v}");
    assert_eq!(container["runtime"], "docker", "{v}");
    assert_eq!(container["cgroup_path"], format!("/docker/{}", c.id), "{v}");
    assert_eq!(container["netns"], sshtrace_tests::netns_of(c.pid), "{v}");
    assert_eq!(v["conn"]["netns"], sshtrace_tests::netns_of(c.pid), "{v}");
    assert_eq!(v["conn"]["local_addr"], "127.0.0.1", "{v}");
    assert_eq!(
        docker_chains(),
        chains_before,
        "dockerd made iptables chains"
    );
}

/// A pod's labels as Kubernetes' CRI plugin sets them on its containers.
const POD_UID: &str = "7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";
const POD_LABELS: &[(&str, &str)] = &[
    ("io.kubernetes.pod.name", "sshd-jump-0"),
    ("io.kubernetes.pod.namespace", "bastion"),
    ("io.kubernetes.pod.uid", POD_UID),
    ("io.kubernetes.container.name", "sshd"),
    ("io.cri-containerd.kind", "container"),
];

/// containerd: sshtrace runs first, then two containers start in namespaces the test made —
/// one labelled as the CRI plugin labels a pod's container, whose session is killed: the
/// verdict carries the pod's name, namespace and uid and the container's name from
/// containerd's API, and the container's namespace; one whose labels a tenant crafted (an
/// escape sequence, a newline, 4000 bytes), refused: no name repeated, and a note on
/// standard error that holds them escaped and cut short.
#[test]
fn containerd_pod_container_is_named() {
    if !privileged("containerd_pod_container_is_named") {
        return;
    }
    let keys = Keys::new("containerd");
    let containerd = Containerd::start("pod");
    containerd.import(K8S_NAMESPACE, &BOOKWORM.archive());
    let (pod_ep, evil_ep) = (Endpoint::new(236), Endpoint::new(237));
    let socket = containerd.socket.display().to_string();
    let tracer = Tracer::start(&[
        "--containerd-socket",
        &socket,
        "--port",
        &pod_ep.port().to_string(),
        "--port",
        &evil_ep.port().to_string(),
    ]);
    let pod_ns = NetNs::new("pod");
    let pod = CtrContainer::run(
        &containerd,
        K8S_NAMESPACE,
        IMAGE,
        POD_LABELS,
        &pod_ns.name,
        &keys.authorized(),
        pod_ep.port(),
    );
    let long = "a".repeat(4000);
    let evil_ns = NetNs::new("evil");
    let evil = CtrContainer::run(
        &containerd,
        K8S_NAMESPACE,
        IMAGE,
        &[
            ("io.kubernetes.pod.name", "evil\x1b]0;owned\x07-pod"),
            ("io.kubernetes.pod.namespace", "ns\nInjected: yes"),
            ("io.kubernetes.container.name", &long),
        ],
        &evil_ns.name,
        &keys.authorized(),
        evil_ep.port(),
    );

    let v = session_killed(&tracer, &keys, &pod_ns.name, pod.pid, pod_ep.port());
    let container = &v["container"];
    assert_eq!(container["id"], pod.id.as_str(), "{v}");
    assert_eq!(container["name"], "sshd", "{v}");
    assert_eq!(container["runtime"], "containerd", "{v}");
    assert_eq!(container["pod"]["name"], "sshd-jump-0", "{v}");
    assert_eq!(container["pod"]["namespace"], "bastion", "{v}");
    assert_eq!(container["pod"]["uid"], POD_UID, "{v}");
    assert_eq!(
        container["cgroup_path"],
        format!("/k8s.io/{}", pod.id),
        "{v}"
    );
    assert_eq!(container["netns"], sshtrace_tests::netns_of(pod.pid), "{v}");
    assert_eq!(v["conn"]["netns"], sshtrace_tests::netns_of(pod.pid), "{v}");

    keys.refused_login(Some(&evil_ns.name), "127.0.0.1", evil_ep.port());
    let v = tracer.verdict_for(evil_ep.port(), |v| v["cause"] == "closed_preauth");
    let container = &v["container"];
    assert_eq!(container["id"], evil.id.as_str(), "{v}");
    assert_eq!(container["runtime"], "containerd", "{v}");
    assert_eq!(container["name"], Value::Null, "{v}");
    assert_eq!(container["pod"], Value::Null, "{v}");
    let note = tracer.wait_stderr("the refused labels' note", |l| {
        l.contains(&evil.id[..12]) && l.contains("not shown")
    });
    for shown in [
        "io.kubernetes.pod.name \"evil\\u{1b}]0;owned\\u{7}-pod\"",
        "io.kubernetes.pod.namespace \"ns\\nInjected: yes\"",
        &format!("io.kubernetes.container.name \"{}…\"", "a".repeat(64)),
    ] {
        assert!(note.contains(shown), "{shown} not in {note}");
    }
    for line in tracer.stderr_lines().iter().chain(&tracer.stdout_lines()) {
        assert!(
            !line.contains(['\x1b', '\x07']) && !line.starts_with("Injected"),
            "a raw label reached an output: {line:?}"
        );
    }
}

/// The DaemonSet manifest parses as YAML (Debian's PyYAML), and every runtime socket its
/// arguments name is inside a volume mounted at the host's own path, so that sshtrace inside
/// sees the node's sockets: containerd's among them, and the kubelet's pod directories.
#[test]
fn daemonset_manifest_mounts_the_runtime_sockets() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes-daemonset.yaml");
    let out = run(std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&manifest));
    assert!(
        out.status.success(),
        "{} does not parse (python3-yaml): {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let ds: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    let host_paths: std::collections::HashMap<&str, &str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    let sshtrace = &spec["containers"][0];
    // Each mount and the host path it shows, at the same path inside.
    let mounts: Vec<(&str, &Value)> = sshtrace["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let host = host_paths
                .get(name)
                .unwrap_or_else(|| panic!("volumeMount {name} has no hostPath volume"));
            assert_eq!(m["mountPath"], *host, "{name} is not at the host's path");
            (*host, m)
        })
        .collect();
    let mounted = |path: &str| {
        mounts
            .iter()
            .find(|(host, _)| std::path::Path::new(path).starts_with(host))
            .map(|(_, m)| *m)
    };
    let args: Vec<&str> = sshtrace["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let sockets: Vec<&str> = args
        .windows(2)
        .filter(|w| matches!(w[0], "--containerd-socket" | "--runtime-socket"))
        .map(|w| w[1])
        .collect();
    assert!(
        sockets.contains(&"/run/containerd/containerd.sock"),
        "containerd's socket is not named: {args:?}"
    );
    for socket in sockets {
        let mount = mounted(socket).unwrap_or_else(|| panic!("{socket} is not mounted"));
        // A runtime mounts containers' root file systems under its directory: a private copy
        // of the mount would keep them mounted after the runtime unmounted them.
        assert_eq!(mount["mountPropagation"], "HostToContainer", "{socket}");
    }
    assert!(
        mounted("/var/log/pods").is_some(),
        "the pod logs are not mounted"
    );
    let help = run(std::process::Command::new(sshtrace_bin()).arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "sshtrace has no {flag}");
    }
}
