//! `--output` values: where verdicts go and in which format. Checked at start-up; an
//! unreachable collector is not an error here (it may come up later).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};

/// How records are framed on the way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The human view (stdout without `--json`), coloured on a terminal.
    Text { verbose: bool, color: bool },
    /// JSON Lines: one object per line.
    JsonLines,
    /// RFC 5424; over a stream with RFC 6587 octet counting.
    Syslog { octet_counting: bool },
    /// systemd-journald's native protocol.
    Journald,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Stdout,
    /// Appended to; rotated to `PATH.1` … `PATH.keep` past `max_size` bytes when set.
    File {
        path: PathBuf,
        max_size: Option<u64>,
        keep: u32,
    },
    Tcp(String),
    Udp(String),
    UnixStream(PathBuf),
    UnixDatagram(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    /// As the user wrote it, for messages.
    pub name: String,
    pub transport: Transport,
    pub encoding: Encoding,
    /// Records held while the destination is slow or away; past it, new ones are dropped.
    pub queue: usize,
    /// A terminal: a status line is kept at the bottom, redrawn in place.
    pub status_line: bool,
}

/// How stdout is presented.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutView {
    pub json: bool,
    pub verbose: bool,
    pub color: bool,
    pub terminal: bool,
}

pub const DEFAULT_QUEUE: usize = 4096;
/// Rotated files kept at most: each rotation renames every one of them.
pub const MAX_KEEP: u32 = 100;
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

impl SinkSpec {
    /// Parses one `--output` value. `json` says what plain stdout prints.
    pub fn parse(value: &str, view: StdoutView) -> Result<Self> {
        let fail = |why: &str| anyhow::anyhow!("--output {value}: {why}");
        let (base, query) = value.split_once('?').unwrap_or((value, ""));
        let options = SinkOptions::parse(query, &fail)?;
        let mut status_line = false;
        let (transport, encoding) = match base {
            "-" | "stdout" => {
                status_line = view.terminal && !view.json;
                (Transport::Stdout, stdout_encoding(view))
            }
            "journald" => journald(&fail)?,
            _ => url_destination(base, &options, &fail)?,
        };
        Ok(Self {
            name: value.to_owned(),
            transport,
            encoding,
            queue: options.queue,
            status_line,
        })
    }
}

/// The `?key=value&…` options of an `--output` value.
struct SinkOptions {
    queue: usize,
    max_size: Option<u64>,
    keep: u32,
}

impl SinkOptions {
    fn parse(query: &str, fail: &dyn Fn(&str) -> anyhow::Error) -> Result<Self> {
        let mut options = SinkOptions {
            queue: DEFAULT_QUEUE,
            max_size: None,
            keep: 5,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| fail("options are key=value"))?;
            match k {
                "queue" => {
                    options.queue = v
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| fail("queue must be a positive number"))?;
                }
                "max_size" => {
                    options.max_size =
                        Some(parse_size(v).ok_or_else(|| fail("max_size is a size like 10M"))?);
                }
                "keep" => {
                    options.keep = v.parse().ok().filter(|&k| k <= MAX_KEEP).ok_or_else(|| {
                        fail(&format!("keep must be a number from 0 to {MAX_KEEP}"))
                    })?;
                }
                _ => {
                    return Err(fail(&format!(
                        "unknown option '{k}' (queue, max_size, keep)"
                    )))
                }
            }
        }
        Ok(options)
    }
}

/// What plain stdout prints: JSON Lines with `--json`, else the human view.
fn stdout_encoding(view: StdoutView) -> Encoding {
    if view.json {
        Encoding::JsonLines
    } else {
        Encoding::Text {
            verbose: view.verbose,
            color: view.color,
        }
    }
}

/// journald's socket, refused at start-up where journald does not run.
fn journald(fail: &dyn Fn(&str) -> anyhow::Error) -> Result<(Transport, Encoding)> {
    if !std::path::Path::new(JOURNALD_SOCKET).exists() {
        return Err(fail(&format!(
            "journald's socket {JOURNALD_SOCKET} does not exist"
        )));
    }
    Ok((
        Transport::UnixDatagram(JOURNALD_SOCKET.into()),
        Encoding::Journald,
    ))
}

/// A `scheme://…` destination: the scheme picks both the transport and the encoding.
fn url_destination(
    base: &str,
    options: &SinkOptions,
    fail: &dyn Fn(&str) -> anyhow::Error,
) -> Result<(Transport, Encoding)> {
    let (scheme, rest) = base.split_once("://").ok_or_else(|| {
        fail("not a URL (e.g. tcp://127.0.0.1:9000, file:///var/log/sshtrace.jsonl)")
    })?;
    let syslog = Encoding::Syslog {
        octet_counting: false,
    };
    let (max_size, keep) = (options.max_size, options.keep);
    Ok(match scheme {
        "file" => (Transport::File { path: file_path(rest, fail)?, max_size, keep }, Encoding::JsonLines),
        "tcp" => (Transport::Tcp(host_port(rest, fail)?), Encoding::JsonLines),
        "udp" => (Transport::Udp(host_port(rest, fail)?), Encoding::JsonLines),
        "unix" => (Transport::UnixStream(local_path(rest, fail)?), Encoding::JsonLines),
        "syslog+tcp" => (Transport::Tcp(host_port(rest, fail)?), Encoding::Syslog { octet_counting: true }),
        "syslog+udp" => (Transport::Udp(host_port(rest, fail)?), syslog),
        "syslog+unix" => (Transport::UnixDatagram(local_path(rest, fail)?), syslog),
        other => return Err(fail(&format!(
            "unknown scheme '{other}' (stdout, file, tcp, udp, unix, syslog+tcp, syslog+udp, syslog+unix, journald)"
        ))),
    })
}

/// `host:port`, with the port required; IPv6 in brackets. Names are resolved when connecting.
fn host_port(text: &str, fail: &dyn Fn(&str) -> anyhow::Error) -> Result<String> {
    let text = text.trim_end_matches('/');
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| fail("needs host:port"))?;
    if host.is_empty()
        || host.contains(['/', '[', ']'])
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(fail("needs host:port"));
    }
    Ok(text.to_owned())
}

/// An absolute path whose directory exists.
fn local_path(text: &str, fail: &dyn Fn(&str) -> anyhow::Error) -> Result<PathBuf> {
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(fail(
            "needs an absolute path (three slashes: file:///var/log/x)",
        ));
    }
    let dir = path.parent().context("no directory")?;
    if !dir.is_dir() {
        return Err(fail(&format!("directory {} does not exist", dir.display())));
    }
    Ok(path)
}

/// A file output's path: never a symbolic link (sshtrace runs as root, and whoever can write
/// the directory could point it anywhere) nor anything but a regular file. Checked here to
/// stop at start-up with one line; the writer opens with `O_NOFOLLOW` whatever appears later.
fn file_path(text: &str, fail: &dyn Fn(&str) -> anyhow::Error) -> Result<PathBuf> {
    let path = local_path(text, fail)?;
    match path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => Err(fail(&format!(
            "{} is a symbolic link; sshtrace does not write through links",
            path.display()
        ))),
        Ok(m) if !m.file_type().is_file() => {
            Err(fail(&format!("{} is not a regular file", path.display())))
        }
        _ => Ok(path),
    }
}

/// `4096`, `64K`, `10M`, `1G`.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let factor = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return None,
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<SinkSpec> {
        SinkSpec::parse(v, StdoutView::default())
    }

    #[test]
    fn every_scheme() {
        assert_eq!(parse("-").unwrap().transport, Transport::Stdout);
        assert_eq!(
            SinkSpec::parse(
                "stdout",
                StdoutView {
                    json: true,
                    ..Default::default()
                }
            )
            .unwrap()
            .encoding,
            Encoding::JsonLines
        );
        let tcp = parse("syslog+tcp://127.0.0.1:514").unwrap();
        assert_eq!(
            (tcp.transport, tcp.encoding),
            (
                Transport::Tcp("127.0.0.1:514".into()),
                Encoding::Syslog {
                    octet_counting: true
                }
            )
        );
        assert_eq!(
            parse("udp://[::1]:9000").unwrap().transport,
            Transport::Udp("[::1]:9000".into())
        );
        assert_eq!(
            parse("tcp://collector.example:9000?queue=10")
                .unwrap()
                .queue,
            10
        );
        assert_eq!(
            parse("unix:///tmp/x.sock").unwrap().transport,
            Transport::UnixStream("/tmp/x.sock".into())
        );
        assert_eq!(
            parse("syslog+unix:///tmp/log").unwrap().transport,
            Transport::UnixDatagram("/tmp/log".into())
        );
        let file = parse("file:///tmp/v.jsonl?max_size=10M&keep=2").unwrap();
        assert_eq!(
            file.transport,
            Transport::File {
                path: "/tmp/v.jsonl".into(),
                max_size: Some(10 << 20),
                keep: 2
            }
        );
    }

    #[test]
    fn clear_errors() {
        let err = |v: &str| format!("{:#}", parse(v).unwrap_err());
        assert!(err("gopher://x:1").contains("unknown scheme 'gopher'"));
        assert!(err("tcp://nohost").contains("needs host:port"));
        assert!(err("tcp://h:0").contains("needs host:port"));
        assert!(err("localhost:514").contains("not a URL"));
        assert!(err("file://relative/x").contains("absolute path"));
        assert!(
            err("file:///no/such/dir/x.jsonl").contains("directory /no/such/dir does not exist")
        );
        assert!(err("tcp://h:1?queue=0").contains("queue"));
        assert!(err("tcp://h:1?colour=red").contains("unknown option 'colour'"));
        assert!(!err("tcp://nohost").contains('\n'));
        assert!(err("file:///tmp/v.jsonl?keep=101").contains("keep must be a number from 0 to 100"));
        assert_eq!(
            parse("file:///tmp/v.jsonl?keep=100").unwrap().transport,
            Transport::File {
                path: "/tmp/v.jsonl".into(),
                max_size: None,
                keep: 100
            }
        );
        assert!(err("file:///tmp").contains("/tmp is not a regular file"));
    }

    #[test]
    fn a_symlinked_file_output_is_refused() {
        let dir = std::env::temp_dir().join(format!("sshtrace-url-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("v.jsonl")).unwrap();
        let err = format!(
            "{:#}",
            parse(&format!("file://{}/v.jsonl", dir.display())).unwrap_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(!err.contains('\n'));
    }
}
