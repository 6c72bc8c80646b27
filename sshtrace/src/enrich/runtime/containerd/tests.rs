//! Against a gRPC server of the test's own (h2's server side), for what containerd itself
//! does not do: answers too large, answers that never come. The real containerd is in the
//! integration tests (`tests/tests/containers.rs`).

use std::{path::PathBuf, time::Duration};

use super::*;

const ID: &str = "3f2c1b0a9e8d7c6b5a493827161504f3e2d1c0b9a8f7e6d5c4b3a29181706f5e";

#[derive(Clone, Copy)]
enum Reply {
    /// The container, with these labels (and one sshtrace does not read).
    Labels,
    /// gRPC NOT_FOUND, as headers alone.
    NotFound,
    /// More than sshtrace reads.
    Oversized,
    /// Nothing, ever.
    Silent,
}

/// A server on a socket of the test's own, answering every call with `reply` after checking
/// the request is containerd's `Containers/Get` for [`ID`] in namespace `k8s.io` (the
/// receiver hears of each request that was).
fn serve(name: &str, reply: Reply) -> (PathBuf, std::sync::mpsc::Receiver<()>) {
    let (checked, requests) = std::sync::mpsc::channel();
    let socket =
        std::env::temp_dir().join(format!("sshtrace-grpc-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(stream).await.unwrap();
            let mut held = Vec::new();
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let (parts, mut body) = request.into_parts();
                assert_eq!(
                    parts.uri.path(),
                    "/containerd.services.containers.v1.Containers/Get"
                );
                assert_eq!(parts.headers["containerd-namespace"], "k8s.io");
                let mut data = BytesMut::new();
                while let Some(chunk) = body.data().await {
                    data.extend_from_slice(&chunk.unwrap());
                }
                let request: GetContainerRequest = unframe(&data).unwrap();
                assert_eq!(request.id, ID);
                checked.send(()).unwrap();
                let head = |status: Option<&str>| {
                    let mut head = http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/grpc");
                    if let Some(status) = status {
                        head = head.header("grpc-status", status);
                    }
                    head.body(()).unwrap()
                };
                match reply {
                    Reply::NotFound => {
                        respond.send_response(head(Some(NOT_FOUND)), true).unwrap();
                    }
                    Reply::Silent => held.push(respond),
                    Reply::Labels | Reply::Oversized => {
                        let mut send = respond.send_response(head(None), false).unwrap();
                        let message = match reply {
                            Reply::Labels => frame(&GetContainerResponse {
                                container: Some(ContainerRecord {
                                    labels: crate::enrich::runtime::labels::map(&[
                                        ("io.kubernetes.pod.name", "jump-0"),
                                        ("io.kubernetes.container.name", "sshd"),
                                        ("io.cri-containerd.kind", "container"),
                                    ]),
                                }),
                            }),
                            _ => Bytes::from(vec![0u8; MAX_RESPONSE + 100]),
                        };
                        send.reserve_capacity(message.len());
                        let _ = send.send_data(message, false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    }
                }
            }
        });
    });
    (socket, requests)
}

/// Asks the server, which must have seen a well-formed request.
fn ask(
    (socket, requests): &(PathBuf, std::sync::mpsc::Receiver<()>),
    within: Duration,
) -> Option<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = labels_by(&runtime, socket, "k8s.io", ID, Instant::now() + within);
    requests
        .recv_timeout(Duration::from_secs(5))
        .expect("the server saw a well-formed request");
    let _ = std::fs::remove_file(socket);
    answer
}

#[test]
fn the_labels_sshtrace_reads() {
    let answer = ask(&serve("labels", Reply::Labels), Duration::from_secs(10)).expect("an answer");
    assert_eq!(answer.runtime, Some("containerd"));
    let mut labels: Vec<_> = answer.labels.into_iter().collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            ("io.kubernetes.container.name".to_owned(), "sshd".to_owned()),
            ("io.kubernetes.pod.name".to_owned(), "jump-0".to_owned()),
        ]
    );
}

#[test]
fn an_unknown_container_is_no_answer() {
    assert!(ask(&serve("notfound", Reply::NotFound), Duration::from_secs(10)).is_none());
}

#[test]
fn an_answer_too_large_is_refused() {
    assert!(ask(
        &serve("oversized", Reply::Oversized),
        Duration::from_secs(10)
    )
    .is_none());
}

/// A server that accepts the call and never answers holds the lookup until its deadline.
#[test]
fn a_silent_server_is_given_up_on() {
    assert!(ask(&serve("silent", Reply::Silent), Duration::from_millis(300)).is_none());
}

#[test]
fn frames() {
    let framed = frame(&GetContainerRequest { id: ID.to_owned() });
    assert_eq!(&framed[..5], &[0, 0, 0, 0, 66]);
    let back: GetContainerRequest = unframe(&framed).unwrap();
    assert_eq!(back.id, ID);
    assert!(unframe::<GetContainerRequest>(&framed[..10]).is_err());
    let mut compressed = framed.to_vec();
    compressed[0] = 1;
    assert!(unframe::<GetContainerRequest>(&compressed).is_err());
}
