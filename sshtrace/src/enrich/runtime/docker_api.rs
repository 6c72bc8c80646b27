//! The Docker-compatible API (Docker Engine, Podman's `podman system service`) on a unix
//! socket: one `GET /containers/ID/json` over HTTP/1.0, its `Name` and `Config.Labels`.

use std::{io::Read, path::Path, time::Instant};

use super::{connect, Answer, ANSWER_TIMEOUT, MAX_RESPONSE};

/// What the socket answered for `id` (a hex id, checked by the caller); `None` when it does
/// not know the id, cannot be reached, or its answer is no inspect document.
pub fn inspect(socket: &Path, id: &str) -> Option<Answer> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut stream = connect(socket, deadline)?;
    // One write: a request split over several is more than a slow server needs to handle.
    let request = format!(
        "GET /containers/{}/json HTTP/1.0\r\nHost: localhost\r\n\r\n",
        path_segment(id)
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).ok()?;
    let response = read_until(&mut stream, deadline)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let labels = json["Config"]["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| super::labels::is_read(key))
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect();
    Some(Answer {
        runtime: None,
        name: json["Name"]
            .as_str()
            .map(|n| n.trim_start_matches('/').to_owned()),
        labels,
    })
}

/// The whole answer (the server closes after an HTTP/1.0 response), at most [`MAX_RESPONSE`]
/// bytes and by `deadline`: a server that trickles bytes cannot hold the lookup longer.
fn read_until(stream: &mut std::os::unix::net::UnixStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .ok()?;
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return Some(response);
        }
        if response.len() + n > MAX_RESPONSE {
            return None;
        }
        response.extend_from_slice(&chunk[..n]);
    }
}

/// `s` as one path segment of a URL: every byte but the unreserved ones percent-encoded, so
/// that no id can add to the request (a space, CR LF, `/`, `?`).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::net::UnixListener, time::Duration};

    use super::*;

    #[test]
    fn request_paths_are_percent_encoded() {
        assert_eq!(path_segment("3f2c"), "3f2c");
        assert_eq!(path_segment("a b\r\n/x?\u{e9}"), "a%20b%0D%0A%2Fx%3F%C3%A9");
    }

    #[test]
    fn a_missing_socket_gives_no_answer() {
        assert!(inspect(Path::new("/nonexistent.sock"), "abc").is_none());
    }

    /// A server answering `response` to one request, on a socket of the test's own.
    fn serve(name: &str, response: &'static [u8]) -> std::path::PathBuf {
        let socket = std::env::temp_dir().join(format!(
            "sshtrace-dockerapi-{name}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(response);
        });
        socket
    }

    /// The name and the labels sshtrace reads; other labels are not kept.
    #[test]
    fn name_and_kubernetes_labels() {
        let socket = serve(
            "labels",
            b"HTTP/1.0 200 OK\r\n\r\n{\"Name\": \"/k8s_sshd_jump\", \"Config\": {\"Labels\": \
              {\"io.kubernetes.pod.name\": \"jump-0\", \"com.example.other\": \"x\", \
              \"io.kubernetes.pod.namespace\": 7}}}",
        );
        let answer = inspect(&socket, "abc").unwrap();
        assert_eq!(answer.name.as_deref(), Some("k8s_sshd_jump"));
        assert_eq!(
            answer.labels.into_iter().collect::<Vec<_>>(),
            [("io.kubernetes.pod.name".to_owned(), "jump-0".to_owned())]
        );
        let _ = std::fs::remove_file(&socket);
    }

    #[test]
    fn not_found_is_no_answer() {
        let socket = serve(
            "missing",
            b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\": \"no such container\"}",
        );
        assert!(inspect(&socket, "abc").is_none());
        let _ = std::fs::remove_file(&socket);
    }

    /// A server that accepts and never answers holds a lookup for the answer's time-out, no
    /// longer; one whose queue of connections is full cannot hold the connect longer either.
    #[test]
    fn a_silent_server_is_given_up_on() {
        let socket = std::env::temp_dir().join(format!(
            "sshtrace-dockerapi-silent-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let _listener = UnixListener::bind(&socket).unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut stream = connect(&socket, deadline).unwrap();
        assert!(read_until(&mut stream, deadline).is_none());
        let _ = std::fs::remove_file(&socket);
    }
}
