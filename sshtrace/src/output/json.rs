//! JSON Lines: one object per line (schema in docs/events.md). serde_json escapes every
//! control character, so a crafted comm cannot break the line.

use anyhow::Result;
use bytes::{BufMut, BytesMut};

use super::Record;

pub fn render(record: &Record) -> Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024).writer();
    match record {
        Record::Verdict(v) => serde_json::to_writer(&mut buf, v)?,
        Record::Loss(l) => serde_json::to_writer(&mut buf, l)?,
    }
    let mut buf = buf.into_inner();
    buf.put_u8(b'\n');
    Ok(buf)
}
