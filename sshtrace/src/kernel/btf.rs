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

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    Composite {
        name: String,
        members: Vec<Member>,
    },
    Enum {
        name: String,
        values: Vec<(String, i64)>,
    },
    Other,
}

pub struct KernelBtf {
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let data = std::fs::read(VMLINUX).with_context(|| {
            format!("no kernel BTF: cannot read {VMLINUX} (CONFIG_DEBUG_INFO_BTF)")
        })?;
        Self::parse(&data).with_context(|| format!("cannot parse {VMLINUX}"))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let (blob, type_section) = Blob::open(data)?;
        let mut types = vec![Type::Other];
        let mut at = type_section.start;
        while at < type_section.end {
            let (ty, next) = blob.type_at(at)?;
            types.push(ty);
            at = next;
        }
        let by_name = index_by_name(&types);
        Ok(Self { types, by_name })
    }

    /// The constants of `enum name`, or of the anonymous enum that has a constant `member`
    /// (the TCP states are such an enum).
    pub fn enum_values(
        &self,
        name: Option<&str>,
        member: Option<&str>,
    ) -> Option<Vec<(String, i64)>> {
        self.types.iter().find_map(|ty| match ty {
            Type::Enum { name: n, values } => {
                let name_matches = name.is_none_or(|want| n == want);
                let member_matches =
                    member.is_none_or(|want| values.iter().any(|(v, _)| v == want));
                (name_matches && member_matches).then(|| values.clone())
            }
            _ => None,
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
        ids.iter().find_map(|&id| self.find_member(id, member, 0))
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let Type::Composite { members, .. } = self.types.get(id as usize)? else {
            return None;
        };
        if let Some(m) = members.iter().find(|m| m.name == member) {
            return Some(base_bits + m.bit_offset);
        }
        members
            .iter()
            .filter(|m| m.name.is_empty())
            .find_map(|m| self.find_member(m.type_id, member, base_bits + m.bit_offset))
    }
}

/// Named structs, unions and enums by name; a name can have several types.
fn index_by_name(types: &[Type]) -> HashMap<String, Vec<u32>> {
    let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
    for (id, ty) in types.iter().enumerate() {
        if let Type::Composite { name, .. } | Type::Enum { name, .. } = ty {
            if !name.is_empty() {
                by_name.entry(name.clone()).or_default().push(id as u32);
            }
        }
    }
    by_name
}

/// A BTF blob being read: little-endian numbers, each bounds-checked, and its string section.
struct Blob<'a> {
    data: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Blob<'a> {
    /// Checks the header and returns the blob with the byte range of its type section.
    fn open(data: &'a [u8]) -> Result<(Self, Range<usize>)> {
        let blob = Blob { data, strings: &[] };
        if blob.u16_at(0)? != MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = blob.u32_at(4)? as usize;
        let type_start = hdr_len + blob.u32_at(8)? as usize;
        let type_end = type_start + blob.u32_at(12)? as usize;
        let str_start = hdr_len + blob.u32_at(16)? as usize;
        let str_end = str_start + blob.u32_at(20)? as usize;
        let strings = data
            .get(str_start..str_end)
            .context("string section out of bounds")?;
        Ok((Blob { data, strings }, type_start..type_end))
    }

    fn u16_at(&self, o: usize) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.data.get(o..o + 2).context("truncated")?.try_into()?,
        ))
    }

    fn u32_at(&self, o: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.data.get(o..o + 4).context("truncated")?.try_into()?,
        ))
    }

    fn name(&self, off: u32) -> String {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    }

    /// The type whose 12-byte header is at `at`, and where the next one starts.
    fn type_at(&self, at: usize) -> Result<(Type, usize)> {
        let name_off = self.u32_at(at)?;
        let info = self.u32_at(at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let at = at + 12;
        Ok(match kind {
            KIND_STRUCT | KIND_UNION => {
                let members = self.members(at, vlen, kind_flag)?;
                let name = self.name(name_off);
                (Type::Composite { name, members }, at + vlen * 12)
            }
            KIND_ENUM | KIND_ENUM64 => {
                let values = self.enum_values(at, vlen, kind, kind_flag)?;
                let name = self.name(name_off);
                (
                    Type::Enum { name, values },
                    at + vlen * enum_entry_len(kind),
                )
            }
            _ => (Type::Other, at + trailing_len(kind, vlen)),
        })
    }

    /// The `vlen` members of a struct or union, 12 bytes each.
    fn members(&self, at: usize, vlen: usize, kind_flag: bool) -> Result<Vec<Member>> {
        let mut members = Vec::with_capacity(vlen);
        for i in 0..vlen {
            let m = at + i * 12;
            let offset = self.u32_at(m + 8)?;
            members.push(Member {
                name: self.name(self.u32_at(m)?),
                type_id: self.u32_at(m + 4)?,
                // With kind_flag the high 8 bits are a bitfield size.
                bit_offset: if kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                },
            });
        }
        Ok(members)
    }

    /// The `vlen` constants of an enum (8 bytes each) or enum64 (12 bytes each).
    fn enum_values(
        &self,
        at: usize,
        vlen: usize,
        kind: u32,
        kind_flag: bool,
    ) -> Result<Vec<(String, i64)>> {
        let mut values = Vec::with_capacity(vlen);
        for i in 0..vlen {
            let m = at + i * enum_entry_len(kind);
            let lo = self.u32_at(m + 4)?;
            let value = if kind == KIND_ENUM {
                if kind_flag {
                    lo as i32 as i64
                } else {
                    lo as i64
                }
            } else {
                ((self.u32_at(m + 8)? as i64) << 32) | lo as i64
            };
            values.push((self.name(self.u32_at(m)?), value));
        }
        Ok(values)
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
