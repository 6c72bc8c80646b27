//! One connection, one verdict: after sshd crashed and reset a connection, its client's late
//! segments (a retransmission, data in flight) are answered with resets of their own — by the
//! listener, which the dead 4-tuple now reaches. Those resets belong to the crash's verdict:
//! counted on it while it is still followed, counted in the summary once it has been judged,
//! and never a "refused" verdict of their own.

use std::{
    io::Write,
    net::{SocketAddr, SocketAddrV4, TcpStream},
    thread,
    time::Duration,
};

use sshtrace_tests::{
    privileged,
    segment::{self, ACK, PSH},
    sshd::read_until_closed,
    Endpoint, Sshd, SshdOptions, Tracer,
};

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("the test endpoints are IPv4"),
    }
}

#[test]
fn late_segments_after_a_crash_join_its_one_verdict() {
    if !privileged("late_segments_after_a_crash_join_its_one_verdict") {
        return;
    }
    let ep = Endpoint::new(33);
    let mut tracer = Tracer::start(&["--port", &ep.port().to_string()]);
    let _sshd = Sshd::start(
        "late-segments",
        ep,
        SshdOptions {
            env: vec![("SSHTRACE_TEST_CRASH".into(), "preauth".into())],
            preload: Some("crash_preload.c"),
            ..Default::default()
        },
    );
    // sshd reads the client's banner, not what follows: the key exchange is left unread when
    // the pre-authentication child crashes, so the connection ends with a reset and no socket
    // is left for a late segment to reach but the listener.
    let mut stream = TcpStream::connect((ep.addr().as_str(), ep.port())).unwrap();
    let client = v4(stream.local_addr().unwrap());
    let server = v4(stream.peer_addr().unwrap());
    stream.write_all(b"SSH-2.0-late-segments\r\n").unwrap();
    stream.write_all(&[0u8; 256]).unwrap();
    let _ = read_until_closed(&mut stream);

    // Late segments before the verdict, then after it.
    segment::send(client, server, ACK | PSH);
    segment::send(client, server, ACK);
    let v = tracer.verdict_for(ep.port(), |v| v["conn"]["remote_port"] == client.port());
    assert_eq!(v["cause"], "sshd_crashed", "{v}");
    // The listener answered both early segments; its resets are counted on the verdict.
    let listener_resets: u64 = v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "tcp_send_reset" && e["state"] == "TCP_LISTEN")
        .map(|e| 1 + e["repeated"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(listener_resets, 2, "{v}");
    segment::send(client, server, ACK | PSH);
    segment::send(client, server, ACK);
    thread::sleep(Duration::from_secs(1));
    tracer.stop();

    let for_client: Vec<_> = tracer
        .verdicts(ep.port())
        .into_iter()
        .filter(|v| v["conn"]["remote_port"] == client.port())
        .collect();
    assert_eq!(
        for_client.len(),
        1,
        "one connection, one verdict: {for_client:#?}"
    );
    let summary = tracer
        .records()
        .into_iter()
        .find(|r| r["type"] == "summary")
        .expect("the summary record");
    assert_eq!(summary["late_resets_after_verdict"], 2, "{summary}");
}
