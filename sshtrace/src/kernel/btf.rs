//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just what sshtrace needs,
//! enum constants by name and structure member offsets, so that both come from the running
//! kernel rather than from headers of another one.

use std::{collections::HashMap, ops::Range};

use anyhow::{bail, Context, Result};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// The kernel's BTF, read in place: the file's bytes and where each type starts. Names are
/// compared where they lie in the string section, never copied, so that this parse of the
/// whole file (start-up's first) costs the file and a few bytes a type.
pub struct KernelBtf {
    data: Vec<u8>,
    strings: Range<usize>,
    /// Where each type's 12-byte header starts, by type id (id 0 is `void`: none).
    headers: Vec<u32>,
    /// Named structs, unions and enums by name; a name can have several types.
    by_name: HashMap<Box<str>, Vec<u32>>,
}

/// A type's header, as far as sshtrace reads it.
struct Header {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Where its members or constants start.
    body: usize,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let data = std::fs::read(VMLINUX).with_context(|| {
            format!("no kernel BTF: cannot read {VMLINUX} (CONFIG_DEBUG_INFO_BTF)")
        })?;
        Self::parse_owned(data).with_context(|| format!("cannot parse {VMLINUX}"))
    }

    #[cfg(test)]
    pub fn parse(data: &[u8]) -> Result<Self> {
        Self::parse_owned(data.to_vec())
    }

    fn parse_owned(data: Vec<u8>) -> Result<Self> {
        let (strings, type_section) = sections(&data)?;
        let mut btf = Self {
            data,
            strings,
            headers: vec![0],
            by_name: HashMap::new(),
        };
        let mut at = type_section.start;
        while at < type_section.end {
            let h = btf.header(at)?;
            let id = btf.headers.len() as u32;
            btf.headers.push(u32::try_from(at)?);
            let named = matches!(h.kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64);
            let name = btf.name(h.name_off);
            if named && !name.is_empty() {
                let name: Box<str> = String::from_utf8_lossy(name).into();
                btf.by_name.entry(name).or_default().push(id);
            }
            at = h.body + body_len(h.kind, h.vlen);
            if at > type_section.end {
                bail!("type {id} runs past the type section");
            }
        }
        Ok(btf)
    }

    /// The constants of `enum name`, or of the anonymous enum that has a constant `member`
    /// (the TCP states are such an enum).
    pub fn enum_values(
        &self,
        name: Option<&str>,
        member: Option<&str>,
    ) -> Option<Vec<(String, i64)>> {
        (1..self.headers.len()).find_map(|id| {
            let h = self.type_header(id as u32)?;
            if !matches!(h.kind, KIND_ENUM | KIND_ENUM64) {
                return None;
            }
            let values = self.enum_constants(&h).ok()?;
            let name_matches = name.is_none_or(|want| self.name(h.name_off) == want.as_bytes());
            let member_matches = member.is_none_or(|want| {
                values
                    .iter()
                    .any(|&(off, _)| self.name(off) == want.as_bytes())
            });
            (name_matches && member_matches).then(|| {
                values
                    .into_iter()
                    .map(|(off, v)| (String::from_utf8_lossy(self.name(off)).into_owned(), v))
                    .collect()
            })
        })
    }

    /// Whether the kernel has a struct or union called `name` (a feature's marker).
    pub fn has_type(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The byte offset of `member` in `struct name`, looking inside anonymous members too
    /// (fields of `struct sk_buff` sit in anonymous unions).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        self.member_bit_offset(name, member).map(|bits| bits / 8)
    }

    /// The offset in bits: a member that does not start on a byte is a bitfield.
    pub fn member_bit_offset(&self, name: &str, member: &str) -> Option<u32> {
        let ids = self.by_name.get(name)?;
        ids.iter()
            .find_map(|&id| self.find_member(id, member.as_bytes(), 0))
    }

    fn find_member(&self, id: u32, member: &[u8], base_bits: u32) -> Option<u32> {
        let h = self.type_header(id)?;
        if !matches!(h.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        let members: Vec<Member> = (0..h.vlen)
            .map(|i| self.member(&h, i))
            .collect::<Result<_>>()
            .ok()?;
        if let Some(m) = members.iter().find(|m| self.name(m.name_off) == member) {
            return Some(base_bits + m.bit_offset);
        }
        members
            .iter()
            .filter(|m| m.name_off == 0 || self.name(m.name_off).is_empty())
            .find_map(|m| self.find_member(m.type_id, member, base_bits + m.bit_offset))
    }

    fn type_header(&self, id: u32) -> Option<Header> {
        let at = *self.headers.get(id as usize).filter(|_| id != 0)?;
        self.header(at as usize).ok()
    }

    fn header(&self, at: usize) -> Result<Header> {
        let info = u32_at(&self.data, at + 4)?;
        Ok(Header {
            name_off: u32_at(&self.data, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            body: at + 12,
        })
    }

    /// The `i`th member of a struct or union, 12 bytes each.
    fn member(&self, h: &Header, i: usize) -> Result<Member> {
        let m = h.body + i * 12;
        let offset = u32_at(&self.data, m + 8)?;
        Ok(Member {
            name_off: u32_at(&self.data, m)?,
            type_id: u32_at(&self.data, m + 4)?,
            // With kind_flag the high 8 bits are a bitfield size.
            bit_offset: if h.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            },
        })
    }

    /// The constants of an enum (8 bytes each) or enum64 (12 bytes each): name offsets and
    /// values.
    fn enum_constants(&self, h: &Header) -> Result<Vec<(u32, i64)>> {
        let mut values = Vec::with_capacity(h.vlen);
        for i in 0..h.vlen {
            let m = h.body + i * enum_entry_len(h.kind);
            let lo = u32_at(&self.data, m + 4)?;
            let value = if h.kind == KIND_ENUM {
                if h.kind_flag {
                    lo as i32 as i64
                } else {
                    lo as i64
                }
            } else {
                ((u32_at(&self.data, m + 8)? as i64) << 32) | lo as i64
            };
            values.push((u32_at(&self.data, m)?, value));
        }
        Ok(values)
    }

    /// The NUL-terminated name at `off` in the string section (empty when out of bounds).
    fn name(&self, off: u32) -> &[u8] {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }
}

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// Checks the header; the byte ranges of the string and type sections.
fn sections(data: &[u8]) -> Result<(Range<usize>, Range<usize>)> {
    if data.get(0..2) != Some(&MAGIC.to_le_bytes()[..]) {
        bail!("not little-endian BTF (bad magic)");
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let type_start = hdr_len + u32_at(data, 8)? as usize;
    let type_end = type_start + u32_at(data, 12)? as usize;
    let str_start = hdr_len + u32_at(data, 16)? as usize;
    let str_end = str_start + u32_at(data, 20)? as usize;
    if data.len() < str_end || data.len() < type_end {
        bail!("a section runs past the end");
    }
    Ok((str_start..str_end, type_start..type_end))
}

fn u32_at(data: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        data.get(o..o + 4).context("truncated")?.try_into()?,
    ))
}

/// The bytes after a type's header: its members, constants or other trailing data.
fn body_len(kind: u32, vlen: usize) -> usize {
    match kind {
        KIND_STRUCT | KIND_UNION => vlen * 12,
        KIND_ENUM | KIND_ENUM64 => vlen * enum_entry_len(kind),
        _ => trailing_len(kind, vlen),
    }
}

/// An enum constant is a name and 32 bits; an enum64 constant a name and two halves.
fn enum_entry_len(kind: u32) -> usize {
    if kind == KIND_ENUM {
        8
    } else {
        12
    }
}

/// The bytes after the header of a type sshtrace does not read, to skip them.
fn trailing_len(kind: u32, vlen: usize) -> usize {
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_FUNC_PROTO => vlen * 8,
        KIND_DATASEC => vlen * 12,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob with: struct outer { int a; union { int b; }; }, enum e { X=1, Y=-2 }.
    fn sample() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0e\0X\0Y\0int\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types: Vec<u8> = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        push(&[s("int"), KIND_INT << 24, 4, 32]); // 1: int
        push(&[0, (KIND_UNION << 24) | 1, 4, s("b"), 1, 0]); // 2: anonymous union { int b }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 2,
            8,
            s("a"),
            1,
            0,
            0,
            2,
            32,
        ]); // 3
        push(&[
            s("e"),
            (KIND_ENUM << 24) | (1 << 31) | 2,
            4,
            s("X"),
            1,
            s("Y"),
            (-2i32) as u32,
        ]);
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_le_bytes());
        blob.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(w.to_le_bytes());
        }
        blob.extend(&types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "b"), Some(4));
        assert_eq!(btf.member_offset("outer", "nope"), None);
    }

    #[test]
    fn reads_signed_enums_by_name_or_member() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        let by_name = btf.enum_values(Some("e"), None).unwrap();
        assert_eq!(by_name, vec![("X".into(), 1), ("Y".into(), -2)]);
        assert_eq!(btf.enum_values(None, Some("Y")), Some(by_name));
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"not btf at all, clearly").is_err());
    }
}
