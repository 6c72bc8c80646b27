//! Making strings from the kernel or from processes (comm, paths) safe for every output: no
//! raw control character (C0, DEL, C1: no forged lines, no terminal escape sequences) and no
//! invisible format character (bidi overrides and isolates, zero-width characters, tags:
//! nothing that reorders or hides what the operator reads). The text view, syslog and
//! journald write them as `\n`, `\xNN`, `\u{NN}`; JSON writes them as `\uNNNN` escapes, which
//! keep the exact value for whoever parses it.

use std::{fmt::Write as _, io};

use serde::Serialize;

/// Unicode's format characters (general category Cf, Unicode 16), and the line and paragraph
/// separators (Zl, Zp), as ranges: the bidi embeddings, overrides, isolates and marks
/// (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069), zero-width characters, the BOM,
/// interlinear annotations and tags.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00ad, 0x00ad),
    (0x0600, 0x0605),
    (0x061c, 0x061c),
    (0x06dd, 0x06dd),
    (0x070f, 0x070f),
    (0x0890, 0x0891),
    (0x08e2, 0x08e2),
    (0x180e, 0x180e),
    (0x200b, 0x200f),
    (0x2028, 0x202e),
    (0x2060, 0x206f),
    (0xfeff, 0xfeff),
    (0xfff9, 0xfffb),
    (0x110bd, 0x110bd),
    (0x110cd, 0x110cd),
    (0x13430, 0x1343f),
    (0x1bca0, 0x1bca3),
    (0x1d173, 0x1d17a),
    (0xe0001, 0xe0001),
    (0xe0020, 0xe007f),
];

/// A character no output may carry raw: a control character (C0, DEL, C1) or one of
/// [`INVISIBLE`].
pub fn is_unsafe(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    let c = c as u32;
    c >= 0xad
        && INVISIBLE
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// Replaces every [unsafe](is_unsafe) character with `\n`, `\t`, `\r`, `\xNN` (ASCII) or
/// `\u{NNNN}`. Idempotent: its output contains no unsafe character.
pub fn text(s: &str) -> String {
    if !s.chars().any(is_unsafe) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// serde_json's escaping (`"`, `\` and C0 controls) plus every other [unsafe](is_unsafe)
/// character as `\uNNNN` (a surrogate pair above the BMP): the JSON stays valid, means the
/// same, and holds no C1 control (U+009B is a terminal's CSI) or bidi character raw.
struct SafeJson;

impl serde_json::ser::Formatter for SafeJson {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if !is_unsafe(c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialises `value` as compact JSON with [`SafeJson`]'s escaping.
pub fn json_to_writer<W: io::Write, T: Serialize + ?Sized>(
    writer: W,
    value: &T,
) -> serde_json::Result<()> {
    value.serialize(&mut serde_json::Serializer::with_formatter(
        writer, SafeJson,
    ))
}

/// [`json_to_writer`] into a string.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(256);
    // Serialising into memory fails only for a type whose Serialize fails (none of ours).
    let _ = json_to_writer(&mut out, value);
    // The formatter writes whole UTF-8 fragments and ASCII escapes only.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutralises_newlines_and_terminal_escapes() {
        assert_eq!(text("sshd\nFAKE verdict"), "sshd\\nFAKE verdict");
        assert_eq!(text("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(text("a\u{9b}b\x7f"), "a\\u{9b}b\\x7f");
        assert_eq!(text("plain sshd-session"), "plain sshd-session");
    }

    #[test]
    fn neutralises_bidi_and_invisible_characters() {
        assert_eq!(text("ab\u{202e}cd"), "ab\\u{202e}cd");
        for c in [
            '\u{61c}',
            '\u{200b}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{202a}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{ad}',
            '\u{e0041}',
        ] {
            assert!(is_unsafe(c), "{:x}", c as u32);
            assert!(!text(&format!("x{c}y")).contains(c));
        }
        for c in ['a', 'é', '\u{2030}', '\u{ff}', '\u{1f600}', '\u{2070}'] {
            assert!(!is_unsafe(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn is_idempotent() {
        let once = text("x\n\x07y\u{85}\u{202e}");
        assert_eq!(text(&once), once);
        assert!(!once.chars().any(is_unsafe));
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(INVISIBLE.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(INVISIBLE.iter().all(|&(lo, hi)| lo <= hi));
    }

    #[test]
    fn json_escapes_c1_and_format_characters_and_keeps_the_value() {
        let hostile = "k\n\u{9b}2J\u{85}\x7f\u{202e}\u{e0041}\"\\é";
        let out = json(&serde_json::json!({ "comm": hostile }));
        assert!(
            out.contains(r"\u009b2J\u0085\u007f\u202e\udb40\udc41"),
            "{out}"
        );
        assert!(!out.chars().any(is_unsafe), "{out:?}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["comm"], hostile);
    }
}
