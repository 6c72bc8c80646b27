//! Reading a `struct sock` at offsets from the running kernel's BTF, two ways: through
//! `bpf_probe_read_kernel` (any program), or as plain loads where the verifier types the
//! socket (tp_btf), which costs no helper call.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_skc_to_tcp_sock};
use sshtrace_common::{Endpoints, ABSENT};

use super::member;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// How a program reads a socket's members.
pub trait SockFields: Sized {
    fn addr(&self) -> u64;
    fn read<T>(&self, offset: u16) -> Result<T, i32>;
    /// A pointer member, followed: `*(base + offset)` as a new base.
    fn follow(&self, offset: u16) -> Result<Self, i32>;
    /// The local port; `closing`: at the change to TCP_CLOSE.
    fn local_port(&self, closing: bool) -> Result<u16, i32>;
}

/// An untyped socket: every read a helper call.
pub struct ProbedSock(pub *const u8);

impl SockFields for ProbedSock {
    fn addr(&self) -> u64 {
        self.0 as u64
    }

    #[inline(always)]
    fn read<T>(&self, offset: u16) -> Result<T, i32> {
        member(self.0, offset).ok_or(-1)
    }

    #[inline(always)]
    fn follow(&self, offset: u16) -> Result<Self, i32> {
        Ok(Self(self.read(offset)?))
    }

    /// `inet_sport`, right at every state change.
    #[inline(always)]
    fn local_port(&self, _closing: bool) -> Result<u16, i32> {
        Ok(u16::from_be(self.read(layout!(structs.inet_sport))?))
    }
}

/// A socket the verifier knows as a `struct sock` (a tp_btf argument): each load is checked
/// at load time against the member it falls in — an offset that does not fit fails the load,
/// and a slower way is used — and may fault safely at run time.
pub struct TypedSock(pub *const u8);

impl SockFields for TypedSock {
    fn addr(&self) -> u64 {
        self.0 as u64
    }

    #[inline(always)]
    fn read<T>(&self, offset: u16) -> Result<T, i32> {
        if offset == ABSENT || self.0.is_null() {
            return Err(-1);
        }
        Ok(unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset as usize).cast()) })
    }

    #[inline(always)]
    fn follow(&self, offset: u16) -> Result<Self, i32> {
        Ok(Self(self.read(offset)?))
    }

    /// `skc_num`, a plain load; at the close, when closing has zeroed it, `inet_sport`: beyond
    /// `struct sock`, so read through the socket retyped as a `tcp_sock` (a helper call, once
    /// per socket).
    #[inline(always)]
    fn local_port(&self, closing: bool) -> Result<u16, i32> {
        if !closing {
            return self.read(layout!(structs.skc_num));
        }
        let tcp = unsafe { bpf_skc_to_tcp_sock(self.0 as *mut _) } as *const u8;
        if tcp.is_null() {
            return Err(0);
        }
        Ok(u16::from_be(
            TypedSock(tcp).read(layout!(structs.inet_sport))?,
        ))
    }
}

/// A TCP socket's 4-tuple and network namespace (Err for other protocols).
#[inline(always)]
pub fn sock_endpoints<S: SockFields>(
    sk: &S,
    local_port: u16,
    ep: &mut Endpoints,
) -> Result<(), i32> {
    let protocol: u16 = sk.read(layout!(structs.sk_protocol))?;
    if protocol != IPPROTO_TCP {
        return Err(0);
    }
    ep.family = sk.read(layout!(structs.skc_family))?;
    ep.local_port = local_port;
    ep.remote_port = u16::from_be(sk.read(layout!(structs.skc_dport))?);
    match ep.family {
        AF_INET => {
            let local: [u8; 4] = sk.read(layout!(structs.skc_rcv_saddr))?;
            let remote: [u8; 4] = sk.read(layout!(structs.skc_daddr))?;
            ep.local_addr[..4].copy_from_slice(&local);
            ep.remote_addr[..4].copy_from_slice(&remote);
        }
        AF_INET6 => {
            ep.local_addr = sk.read(layout!(structs.skc_v6_rcv_saddr))?;
            ep.remote_addr = sk.read(layout!(structs.skc_v6_daddr))?;
        }
        _ => return Err(0),
    }
    ep.netns = sk
        .follow(layout!(structs.sk_net))
        .and_then(|net| net.read(layout!(structs.net_inum)))
        .unwrap_or(0);
    Ok(())
}

/// The `struct sock` of a TCP socket on the current task's descriptor `fd`, else `None`.
#[inline(always)]
pub(super) fn tcp_socket_on(fd: u64) -> Option<u64> {
    let sk = socket_on(fd)?;
    let protocol: u16 = member(sk as *const u8, layout!(structs.sk_protocol))?;
    (protocol == IPPROTO_TCP).then_some(sk)
}

/// The `struct sock` of a socket of any kind on the current task's descriptor `fd`, else
/// `None`.
#[inline(always)]
pub(super) fn socket_on(fd: u64) -> Option<u64> {
    let s = layout!(structs);
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = member(task, s.task_files)?;
    let fdt: *const u8 = member(files, s.files_fdt)?;
    let max_fds: u32 = member(fdt, s.fdtable_max_fds)?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fds: *const u8 = member(fdt, s.fdtable_fd)?;
    let file: *const u8 = member(fds.wrapping_add(fd as usize * 8), 0)?;
    let inode: *const u8 = member(file, s.file_inode)?;
    if member::<u16>(inode, s.inode_mode)? & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: *const u8 = member(file, s.file_private_data)?;
    member(socket, s.socket_sk)
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
