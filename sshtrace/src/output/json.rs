//! JSON Lines: one object per line (schema in docs/events.md). Every string goes through
//! `escape::json_to_writer`: control characters (C0 and C1) and invisible format characters
//! are `\uNNNN` escapes, so a crafted comm can neither break the line nor reach a terminal
//! that displays it raw, and the parsed value is still exact.

use anyhow::Result;
use bytes::{BufMut, BytesMut};

use super::Record;
use crate::escape;

pub fn render(record: &Record) -> Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024).writer();
    match record {
        Record::Verdict(v) => escape::json_to_writer(&mut buf, v)?,
        Record::Loss(l) => escape::json_to_writer(&mut buf, l)?,
    }
    let mut buf = buf.into_inner();
    buf.put_u8(b'\n');
    Ok(buf)
}
