//! Netlink requests as bytes, for the two netlink users: `kernel/sockdiag.rs` and
//! `enrich/audit.rs`. The sockets are netlink-sys's and the headers and payloads the
//! netlink-packet crates' types, so nothing is laid out here.
//!
//! The header and the payload are emitted as they are, not through the crates' message
//! enums (`SockDiagMessage`, `AuditMessage`): those would link in every variant's code
//! (audit rules, unix sockets), which is most of what the crates would add to the binary.

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
