//! Listening TCP sockets through NETLINK_SOCK_DIAG: the kernel filters by state and returns
//! only listeners, where /proc/net/tcp would print every socket (tens of thousands during a
//! connection storm, and reading them slows connection setup for everyone).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u32 = 10;
const HDR: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const MSG_LEN: usize = 72;

/// Listening TCP sockets (IPv4 and IPv6) of the calling thread's network namespace:
/// inode → local address.
pub fn listening() -> io::Result<Vec<(u64, SocketAddr)>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        out.extend(dump(family)?);
    }
    Ok(out)
}

fn dump(family: u8) -> io::Result<Vec<(u64, SocketAddr)>> {
    // SAFETY: a netlink socket we own, buffers of the sizes passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket() just returned, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; HDR + 56];
    let total = req.len() as u32;
    req[0..4].copy_from_slice(&total.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[HDR] = family;
    req[HDR + 1] = libc::IPPROTO_TCP as u8;
    req[HDR + 4..HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: sending the request buffer.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receiving into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = 0usize;
        let n = n as usize;
        while at + HDR <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            if len < HDR || at + len > n {
                return Ok(found);
            }
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => return Err(io::Error::other("sock_diag answered with an error")),
                _ if len >= HDR + MSG_LEN => found.extend(parse(&buf[at + HDR..at + len])),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// One `inet_diag_msg` → (inode, local address).
fn parse(msg: &[u8]) -> Option<(u64, SocketAddr)> {
    let family = msg[0];
    let port = u16::from_be_bytes([msg[4], msg[5]]);
    let src = &msg[8..24];
    let ip = if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        crate::trace::events::unmap(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(src).ok()?)))
    };
    let inode = u32::from_ne_bytes(msg[68..72].try_into().ok()?);
    Some((inode as u64, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let all = listening().unwrap();
        assert!(
            all.iter().any(|(inode, a)| *a == addr && *inode > 0),
            "{addr} not in {all:?}"
        );
    }
}
