//! JSON Lines: one verdict object per line (schema in docs/events.md).

use anyhow::Result;
use bytes::{BufMut, BytesMut};

use crate::verdict::Verdict;

/// The verdict as one line, newline-terminated. serde_json escapes every control character,
/// so a crafted comm cannot break the line.
pub fn render(verdict: &Verdict) -> Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024).writer();
    serde_json::to_writer(&mut buf, verdict)?;
    let mut buf = buf.into_inner();
    buf.put_u8(b'\n');
    Ok(buf)
}
