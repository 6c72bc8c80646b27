//! Netlink requests as bytes, for `kernel/sockdiag.rs`. The socket is netlink-sys's and the
//! header and payload netlink-packet crates' types, so nothing is laid out here.
//!
//! The header and the payload are emitted as they are, not through the crates' message
//! enum (`SockDiagMessage`): that would link in every variant's code (unix sockets' too),
//! which is most of what the crates would add to the binary.

use netlink_packet_core::{Emitable, NetlinkHeader};

/// One request: a `message_type` message with `flags` (`NLM_F_REQUEST` and any others) and
/// `payload`, if any, after the header; sequence and port numbers 0 (the kernel answers any).
pub fn request(message_type: u16, flags: u16, payload: Option<&dyn Emitable>) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.message_type = message_type;
    header.flags = flags;
    let at = header.buffer_len();
    let len = at + payload.map_or(0, Emitable::buffer_len);
    header.length = u32::try_from(len).expect("a request is a few bytes");
    let mut bytes = vec![0; len];
    header.emit(&mut bytes[..at]);
    if let Some(payload) = payload {
        payload.emit(&mut bytes[at..]);
    }
    bytes
}
