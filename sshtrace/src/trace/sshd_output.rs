//! What followed sshd processes wrote, as the kernel copied it from the system call: their log
//! messages (standard error or syslog datagrams) and the note a listener writes to a client it
//! drops. Pure text handling; the kernel facts are in the event.

use serde::Serialize;
use sshtrace_common::output_channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputChannel {
    Stderr,
    Syslog,
    /// The listener wrote to an accepted TCP connection.
    ClientSocket,
}

impl OutputChannel {
    pub fn from_wire(channel: u32) -> Option<Self> {
        Some(match channel {
            output_channel::STDERR => Self::Stderr,
            output_channel::SYSLOG => Self::Syslog,
            output_channel::CLIENT_SOCKET => Self::ClientSocket,
            _ => return None,
        })
    }
}

/// One write: at most the first `sshtrace_common::OUTPUT_LEN` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshdOutput {
    pub channel: OutputChannel,
    pub fd: i32,
    /// The socket written ([`OutputChannel::ClientSocket`]).
    pub skaddr: u64,
    pub bytes: Vec<u8>,
    /// The write was longer than what was copied.
    pub truncated: bool,
}

impl SshdOutput {
    /// The message as sshd formatted it, without syslog's `<PRI>timestamp tag[pid]: ` prefix
    /// or the line end; not yet escaped (every output format escapes it).
    pub fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let text = match self.channel {
            OutputChannel::Syslog => strip_syslog_header(&text),
            _ => &text,
        };
        let mut message = text.trim_end_matches(['\r', '\n', '\0']).to_owned();
        if self.truncated {
            message.push('…');
        }
        message
    }

    /// What the listener told a client it dropped, when this is such a note.
    pub fn drop_note(&self) -> Option<DropNote> {
        if self.channel != OutputChannel::ClientSocket {
            return None;
        }
        DropNote::from_text(&String::from_utf8_lossy(&self.bytes))
    }
}

/// The two notes OpenSSH's listener writes before closing a connection it will not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropNote {
    /// `Exceeded MaxStartups`: MaxStartups or PerSourceMaxStartups.
    ExceededMaxStartups,
    /// `Not allowed at this time`: the source is penalized (PerSourcePenalties, 9.8+).
    NotAllowedAtThisTime,
}

impl DropNote {
    fn from_text(text: &str) -> Option<Self> {
        if text.starts_with("Exceeded MaxStartups") {
            Some(Self::ExceededMaxStartups)
        } else if text.starts_with("Not allowed at this time") {
            Some(Self::NotAllowedAtThisTime)
        } else {
            None
        }
    }
}

/// `<38>Dec  3 15:40:10 sshd[812]: message` → `message` (glibc's format: the tag ends at the
/// first `": "` after the priority). Left whole when it does not look like that.
fn strip_syslog_header(text: &str) -> &str {
    let Some(rest) = text.strip_prefix('<') else {
        return text;
    };
    let Some((pri, rest)) = rest.split_once('>') else {
        return text;
    };
    if pri.is_empty() || !pri.bytes().all(|b| b.is_ascii_digit()) {
        return text;
    }
    rest.split_once("]: ")
        .or_else(|| rest.split_once(": "))
        .map_or(rest, |(_, message)| message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(channel: OutputChannel, text: &str) -> SshdOutput {
        SshdOutput {
            channel,
            fd: 3,
            skaddr: 0,
            bytes: text.as_bytes().to_vec(),
            truncated: false,
        }
    }

    #[test]
    fn syslog_header_and_line_end_are_dropped() {
        let o = output(
            OutputChannel::Syslog,
            "<38>Dec  3 15:40:10 sshd[812]: drop connection #3 from [10.0.0.9]:5000 on [10.0.0.2]:22 penalty: caused crash\n",
        );
        assert_eq!(
            o.message(),
            "drop connection #3 from [10.0.0.9]:5000 on [10.0.0.2]:22 penalty: caused crash"
        );
        let e = output(
            OutputChannel::Stderr,
            "Timeout before authentication for 10.0.0.9 port 5000\r\n",
        );
        assert_eq!(
            e.message(),
            "Timeout before authentication for 10.0.0.9 port 5000"
        );
    }

    #[test]
    fn a_message_that_is_not_syslog_is_kept_whole() {
        let o = output(OutputChannel::Syslog, "<x>no: header");
        assert_eq!(o.message(), "<x>no: header");
    }

    #[test]
    fn drop_notes_only_on_the_client_socket() {
        let note = output(OutputChannel::ClientSocket, "Not allowed at this time\r\n");
        assert_eq!(note.drop_note(), Some(DropNote::NotAllowedAtThisTime));
        let full = output(OutputChannel::ClientSocket, "Exceeded MaxStartups\r\n");
        assert_eq!(full.drop_note(), Some(DropNote::ExceededMaxStartups));
        let log = output(OutputChannel::Stderr, "Not allowed at this time\r\n");
        assert_eq!(log.drop_note(), None);
    }
}
