use std::{
    io::{Read, Write},
    os::unix::net::UnixListener,
};

use super::*;

fn container(id: &str, cgroup_path: &str) -> Container {
    Container {
        id: id.to_owned(),
        runtime: "docker",
        cgroup_path: cgroup_path.to_owned(),
        ..Container::default()
    }
}

/// Sockets of the test's own only: nothing on the host is asked.
fn sockets(docker_api: &[&Path]) -> Sockets {
    Sockets {
        docker_api: docker_api.iter().map(|p| p.to_path_buf()).collect(),
        containerd: Vec::new(),
        pod_logs: PathBuf::from("/nonexistent"),
    }
}

/// A runtime API that starts after the first lookup failed is asked again, once.
#[test]
fn a_runtime_that_answers_late_is_asked_again() {
    let socket = std::env::temp_dir().join(format!("sshtrace-names-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let names = ContainerNames::start(sockets(&[&socket]));
    let c = container("abc", "/docker/abc");
    assert_eq!(names.get(&c), None);
    assert_eq!(names.get(&c), None, "one request in flight");
    std::thread::sleep(Duration::from_millis(200));
    let listener = UnixListener::bind(&socket).unwrap();
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
    while names.get(&c).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        names.get(&c).and_then(|n| n.name).as_deref(),
        Some("sshbox")
    );
    let _ = std::fs::remove_file(&socket);
}

/// An LXC name or anything not hex is never sent to a runtime's socket.
#[test]
fn only_hex_ids_are_asked_for() {
    let socket = std::env::temp_dir().join(format!("sshtrace-hexonly-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let names = ContainerNames::start(sockets(&[&socket]));
    for id in ["web01", "unnamed", "abc/../../x", "ab c", "abc\r\nX: y", ""] {
        let c = container(id, "/lxc/web01");
        assert_eq!(names.get(&c), None);
        assert_eq!(names.resolve_now(&c), None);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(listener.accept().is_err(), "a non-hex id was asked for");
    let _ = std::fs::remove_file(&socket);
}

/// The namespace containerd is asked in: `ctr run`'s parent cgroup when it is a namespace's
/// name, else Kubernetes'.
#[test]
fn containerd_namespace_from_the_cgroup_path() {
    let id = "3f2c1b0a9e8d7c6b5a493827161504f3e2d1c0b9a8f7e6d5c4b3a29181706f5e";
    assert_eq!(containerd_namespace(&format!("/k8s.io/{id}")), "k8s.io");
    assert_eq!(containerd_namespace(&format!("/build_42/{id}")), "build_42");
    assert_eq!(
        containerd_namespace(&format!("/kubepods/besteffort/pod1/{id}")),
        CRI_NAMESPACE
    );
    for bad in ["a\r\nx: y", "a..b", "-a", &"a".repeat(77), "a b"] {
        assert!(!is_containerd_namespace(bad), "{bad:?}");
        assert_eq!(containerd_namespace(&format!("/{bad}/{id}")), CRI_NAMESPACE);
    }
}

/// The cache keeps the newest names, at most [`MAX_CACHED`].
#[test]
fn the_cache_is_bounded() {
    let mut cache = Cache::default();
    let named = |n: usize| RuntimeNames {
        name: Some(format!("c{n}")),
        ..RuntimeNames::default()
    };
    for n in 0..MAX_CACHED + 10 {
        cache.insert(format!("{n:x}"), named(n));
    }
    cache.insert(format!("{:x}", MAX_CACHED + 9), named(0));
    assert_eq!(cache.names.len(), MAX_CACHED);
    assert_eq!(cache.order.len(), MAX_CACHED);
    assert!(!cache.names.contains_key("0"));
    assert!(cache.names.contains_key(&format!("{:x}", MAX_CACHED + 9)));
}

/// A runtime whose queue of pending connections is full is given up on at the deadline.
#[test]
fn a_runtime_that_does_not_accept_is_given_up_on() {
    let socket = std::env::temp_dir().join(format!("sshtrace-full-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    // A backlog of one: the queue is full from the second connection on.
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&socket2::SockAddr::unix(&socket).unwrap())
        .unwrap();
    listener.listen(0).unwrap();
    let mut held = Vec::new();
    let refused =
        (0..64).find_map(
            |_| match connect(&socket, Instant::now() + Duration::from_millis(100)) {
                Some(stream) => {
                    held.push(stream);
                    None
                }
                None => Some(held.len()),
            },
        );
    assert!(refused.is_some(), "64 connections were queued");
    let _ = std::fs::remove_file(&socket);
}
