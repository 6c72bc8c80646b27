//! `peer_reset`: the client aborts its connection (SO_LINGER 0, as a load balancer or a
//! crashing client does); the server received a reset and sent none.

use std::{io::Read, net::TcpStream, os::fd::AsRawFd};

use sshtrace_tests::{privileged, Endpoint, Sshd, SshdOptions, Tracer};

#[test]
fn client_aborts_with_a_reset() {
    if !privileged("client_aborts_with_a_reset") {
        return;
    }
    let ep = Endpoint::new(100);
    // sshd already running when sshtrace starts: the start-up scan's path.
    let _sshd = Sshd::start("peer", ep, SshdOptions::default());
    let tracer = Tracer::start(&["--port", &ep.port().to_string()]);

    let mut client = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let mut banner = [0u8; 64];
    let n = client.read(&mut banner).unwrap();
    assert!(banner[..n].starts_with(b"SSH-2.0-"));
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
    let port = client.local_addr().unwrap().port();
    drop(client);

    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == port);
    assert_eq!(v["cause"], "peer_reset", "{v}");
    assert_eq!(v["outcome"], "reset_received");
    // The client's own stack sent it: same hop distance, its IP ID sequence continued.
    assert_eq!(v["details"]["reset_from"], "peer_host", "{v}");
}
