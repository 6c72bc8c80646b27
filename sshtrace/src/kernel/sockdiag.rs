//! Listening TCP sockets through NETLINK_SOCK_DIAG: the kernel filters by state and returns
//! only listeners, where /proc/net/tcp would print every socket (tens of thousands during a
//! connection storm, and reading them slows connection setup for everyone).
//!
//! The socket is netlink-sys's; the request (`inet_diag_req_v2`) and the answers
//! (`inet_diag_msg`) are netlink-packet-sock-diag's types.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NetlinkBuffer, Parseable, NLMSG_ALIGNTO, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SOCK_DIAG_BY_FAMILY,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

use crate::kernel::netlink;

/// What one `recv` reads: a dump arrives in datagrams of at most this size.
const RECV_BUF: usize = 32 * 1024;

/// Listening TCP sockets (IPv4 and IPv6) of the calling thread's network namespace:
/// inode → local address.
pub fn listening() -> io::Result<Vec<(u64, SocketAddr)>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        out.extend(dump(family)?);
    }
    Ok(out)
}

/// The TCP listeners of one address family.
fn dump(family: u8) -> io::Result<Vec<(u64, SocketAddr)>> {
    let socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.send(&request(family), 0)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            // A message cut short ends the dump with what it found so far.
            let Ok(frame) = NetlinkBuffer::new_checked(rest) else {
                return Ok(found);
            };
            let len = frame.length() as usize;
            match frame.message_type() {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => return Err(io::Error::other("sock_diag answered with an error")),
                // Only the fixed part (`inet_diag_msg`) is decoded: the attributes that
                // follow are not asked for, and decoding the ones the kernel adds anyway
                // doubled the cost of a dump.
                SOCK_DIAG_BY_FAMILY => {
                    if let Ok(header) = InetResponseHeader::parse(frame.payload()) {
                        found.push(listener(&header));
                    }
                }
                _ => {}
            }
            let aligned = len.next_multiple_of(usize::from(NLMSG_ALIGNTO));
            rest = rest.get(aligned..).unwrap_or_default();
        }
    }
}

/// The dump request for `family`'s TCP sockets in state LISTEN, with no extensions.
fn request(family: u8) -> Vec<u8> {
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::LISTEN,
        socket_id,
    };
    netlink::request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        Some(&request),
    )
}

/// One answer → (inode, local address); an IPv4-mapped IPv6 address is given as IPv4.
fn listener(header: &InetResponseHeader) -> (u64, SocketAddr) {
    let id = &header.socket_id;
    let ip: IpAddr = crate::trace::events::unmap(id.source_address);
    (u64::from(header.inode), SocketAddr::new(ip, id.source_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finds(listener: &std::net::TcpListener) {
        let addr = listener.local_addr().unwrap();
        let all = listening().unwrap();
        assert!(
            all.iter().any(|(inode, a)| *a == addr && *inode > 0),
            "{addr} not in {all:?}"
        );
    }

    #[test]
    fn finds_a_listener_of_this_process() {
        finds(&std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    }

    #[test]
    fn finds_an_ipv6_listener() {
        // A host without IPv6 on loopback has nothing to find.
        if let Ok(listener) = std::net::TcpListener::bind("[::1]:0") {
            finds(&listener);
        }
    }

    #[test]
    fn connected_sockets_are_not_listed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _accepted = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let all = listening().unwrap();
        assert!(!all.iter().any(|(_, a)| *a == local), "{local} in {all:?}");
    }

    #[test]
    fn the_request_asks_for_tcp_listeners_only() {
        for family in [AF_INET, AF_INET6] {
            let bytes = request(family);
            let frame = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
            assert_eq!(frame.length() as usize, bytes.len());
            assert_eq!(frame.message_type(), SOCK_DIAG_BY_FAMILY);
            assert_eq!(frame.flags(), NLM_F_REQUEST | NLM_F_DUMP);
            let req = InetRequest::parse(frame.payload()).unwrap();
            assert_eq!((req.family, req.protocol), (family, IPPROTO_TCP));
            assert_eq!(req.states, StateFlags::LISTEN);
            assert!(req.extensions.is_empty());
        }
    }
}
