//! containerd's own API on its unix socket: `containerd.services.containers.v1.Containers/Get`,
//! for a container's labels (Kubernetes' CRI plugin sets `io.kubernetes.*` there). One unary
//! gRPC call is one HTTP/2 request (h2) carrying a length-prefixed protobuf message (prost);
//! the two messages are declared here with the fields sshtrace reads, and prost skips the
//! rest (the OCI spec, tens of KiB, included).

use std::{collections::HashMap, path::Path, time::Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};

use super::{connect, Answer, ANSWER_TIMEOUT, MAX_RESPONSE};

const GET_CONTAINER: &str = "http://localhost/containerd.services.containers.v1.Containers/Get";
/// gRPC's status for an id the namespace does not hold.
const NOT_FOUND: &str = "5";
/// The flow-control window granted to the answer: containerd can send no more than this
/// (a larger answer is a protocol error it cannot make), and none of it is released.
const WINDOW: u32 = MAX_RESPONSE as u32 + 1024;

#[derive(Clone, PartialEq, prost::Message)]
struct GetContainerRequest {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    container: Option<ContainerRecord>,
}

/// containerd's `Container`: only its labels are read.
#[derive(Clone, PartialEq, prost::Message)]
struct ContainerRecord {
    #[prost(map = "string, string", tag = "2")]
    labels: HashMap<String, String>,
}

/// The labels containerd keeps for container `id` in `namespace` (both checked by the
/// caller); `None` when it does not know the id there, cannot be reached, or does not answer
/// in time.
pub fn labels(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    namespace: &str,
    id: &str,
) -> Option<Answer> {
    labels_by(
        runtime,
        socket,
        namespace,
        id,
        Instant::now() + ANSWER_TIMEOUT,
    )
}

fn labels_by(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    namespace: &str,
    id: &str,
    deadline: Instant,
) -> Option<Answer> {
    let stream = connect(socket, deadline)?;
    let labels = runtime.block_on(async {
        let left = deadline.checked_duration_since(Instant::now())?;
        tokio::time::timeout(left, get_container(stream, namespace, id))
            .await
            .ok()?
            .ok()?
    })?;
    Some(Answer {
        runtime: Some("containerd"),
        name: None,
        labels: labels
            .into_iter()
            .filter(|(key, _)| super::labels::is_read(key))
            .collect(),
    })
}

/// The call on a connection of its own; `Ok(None)`: containerd answered that it has no such
/// container.
async fn get_container(
    stream: std::os::unix::net::UnixStream,
    namespace: &str,
    id: &str,
) -> Result<Option<HashMap<String, String>>> {
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_header_list_size(16 * 1024)
        .handshake::<_, Bytes>(stream)
        .await?;
    let driver = tokio::spawn(connection);
    let answer = exchange(client, namespace, id).await;
    driver.abort();
    answer
}

async fn exchange(
    client: h2::client::SendRequest<Bytes>,
    namespace: &str,
    id: &str,
) -> Result<Option<HashMap<String, String>>> {
    let request = http::Request::post(GET_CONTAINER)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        // containerd's namespace for the call, as its Go client sends it.
        .header("containerd-namespace", namespace)
        .body(())?;
    let mut client = client.ready().await?;
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(frame(&GetContainerRequest { id: id.to_owned() }), true)?;
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        bail!("HTTP status {}", response.status());
    }
    // An error may come as headers alone ("Trailers-Only").
    if let Some(status) = response.headers().get("grpc-status") {
        return status_only(status);
    }
    let mut body = response.into_body();
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        if message.len() + chunk.len() > MAX_RESPONSE {
            bail!("an answer over {MAX_RESPONSE} bytes");
        }
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.context("no trailers")?;
    match trailers.get("grpc-status").map(http::HeaderValue::as_bytes) {
        Some(b"0") => {}
        Some(status) if status == NOT_FOUND.as_bytes() => return Ok(None),
        status => bail!("gRPC status {status:?}"),
    }
    let answer: GetContainerResponse = unframe(&message)?;
    Ok(Some(answer.container.context("no container")?.labels))
}

fn status_only(status: &http::HeaderValue) -> Result<Option<HashMap<String, String>>> {
    if status.as_bytes() == NOT_FOUND.as_bytes() {
        Ok(None)
    } else {
        bail!("gRPC status {status:?}")
    }
}

/// A gRPC message on the wire: not compressed (0), its length (4 bytes, big-endian), itself.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("a request of a few bytes"));
    message
        .encode(&mut buf)
        .expect("the buffer has room for the message");
    buf.freeze()
}

/// The one message of a unary answer. A compressed one is refused: none was asked for
/// (sshtrace sends no `grpc-accept-encoding`).
fn unframe<M: prost::Message + Default>(data: &[u8]) -> Result<M> {
    let [compressed, l0, l1, l2, l3, message @ ..] = data else {
        bail!("an answer shorter than its frame header");
    };
    if *compressed != 0 {
        bail!("a compressed answer");
    }
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    if message.len() != len {
        bail!("a frame of {len} bytes holding {}", message.len());
    }
    Ok(M::decode(message)?)
}

#[cfg(test)]
mod tests;
