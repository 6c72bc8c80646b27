//! Making strings from the kernel or from processes (comm, paths) safe for line-based
//! outputs: no raw control characters, so no forged lines and no terminal escape sequences.
//! JSON output relies on serde_json's escaping instead.

use std::fmt::Write;

/// Replaces control characters (C0, DEL, C1) with `\n`, `\t`, `\r` or `\xNN`/`\u{NN}`.
/// Idempotent: its output contains no control characters.
pub fn text(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutralises_newlines_and_terminal_escapes() {
        assert_eq!(text("sshd\nFAKE verdict"), "sshd\\nFAKE verdict");
        assert_eq!(text("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(text("a\u{9b}b"), "a\\u{9b}b");
        assert_eq!(text("plain sshd-session"), "plain sshd-session");
    }

    #[test]
    fn is_idempotent() {
        let once = text("x\n\x07y\u{85}");
        assert_eq!(text(&once), once);
        assert!(!once.chars().any(char::is_control));
    }
}
