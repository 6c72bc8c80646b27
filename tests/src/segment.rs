//! Hand-made TCP segments from a test's own raw socket: a dead connection's late segment (the
//! client retransmitting after sshd crashed), sent without the client's socket, which the
//! crash's reset has already closed.

use std::net::SocketAddrV4;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;

pub const SYN: u8 = 0x02;

/// Sends one TCP segment with `flags` and a few bytes of data from `from` to `to` (IPv4). The
/// kernel adds the IP header; the source address is `from`'s, by binding the raw socket.
pub fn send(from: SocketAddrV4, to: SocketAddrV4, flags: u8) {
    RawSender::new(*from.ip()).send(from, to, flags, b"late");
}

/// A raw socket sending hand-made TCP segments from one source address (in the network
/// namespace of the thread that made it).
pub struct RawSender(Socket);

impl RawSender {
    pub fn new(source: std::net::Ipv4Addr) -> Self {
        let socket = Socket::new(
            Domain::IPV4,
            Type::from(libc::SOCK_RAW),
            Some(Protocol::TCP),
        )
        .expect("raw socket");
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
            .expect("bind the raw socket to the client's address");
        Self(socket)
    }

    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, flags: u8, data: &[u8]) {
        let segment = segment(from, to, flags, data);
        self.0
            .send_to(&segment, &SockAddr::from(SocketAddrV4::new(*to.ip(), 0)))
            .expect("send the segment");
    }
}

fn segment(from: SocketAddrV4, to: SocketAddrV4, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + data.len());
    tcp.extend_from_slice(&from.port().to_be_bytes());
    tcp.extend_from_slice(&to.port().to_be_bytes());
    tcp.extend_from_slice(&1_000u32.to_be_bytes()); // sequence number
    tcp.extend_from_slice(&1_000u32.to_be_bytes()); // acknowledgement number
    tcp.extend_from_slice(&[5 << 4, flags]); // header length (5 words), flags
    tcp.extend_from_slice(&1024u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum (below), urgent pointer
    tcp.extend_from_slice(data);
    let sum = checksum(from, to, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// The TCP checksum over the IPv4 pseudo-header and the segment.
fn checksum(from: SocketAddrV4, to: SocketAddrV4, tcp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + tcp.len() + 1);
    pseudo.extend_from_slice(&from.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(tcp);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_segment_with_its_checksum_is_zero() {
        let from = "127.0.0.1:40000".parse().unwrap();
        let to = "127.0.0.2:22".parse().unwrap();
        let tcp = segment(from, to, ACK | PSH, b"odd");
        assert_eq!(checksum(from, to, &tcp), 0);
    }
}
