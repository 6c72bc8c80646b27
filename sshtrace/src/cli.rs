//! Command-line interface.

use std::time::Duration;

use clap::Parser;

const EXAMPLES: &str = "\
Examples:
  During an outage, on the SSH server:
    sudo sshtrace                      # every sshd found, one line per connection that dies
    sudo sshtrace -v                   # … with the hint and the kernel evidence
  Only some ports or one sshd:
    sudo sshtrace --port 2222 --pid 812
  For a log collector or a script:
    sudo sshtrace --json | tee verdicts.jsonl
    sudo sshtrace -o syslog+tcp://127.0.0.1:514 -o tcp://127.0.0.1:9000 -o -";

#[derive(Debug, Parser)]
#[command(
    name = "sshtrace",
    version,
    about = "\"Connection reset by peer\": who reset that SSH connection, and why",
    long_about = "Traces every SSH connection that dies on this host with eBPF and prints one \
                  verdict per connection: who ended it (sshd, the kernel, the network) and the \
                  cause, with the kernel evidence behind it. Needs root.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Print verdicts as JSON Lines (schema sshtrace/1, see docs/events.md).
    #[arg(long)]
    pub json: bool,

    /// Where verdicts go (repeatable; default: stdout): `-`, `file:///PATH`, `tcp://HOST:PORT`,
    /// `udp://HOST:PORT`, `unix:///PATH` (JSON Lines), `syslog+tcp://HOST:PORT` (RFC 5424,
    /// octet counting), `syslog+udp://HOST:PORT`, `syslog+unix:///dev/log`, `journald`.
    /// Options: `?queue=N` (records held while the destination is away; default 4096),
    /// `?max_size=10M&keep=5` (file rotation).
    #[arg(long = "output", short = 'o', value_name = "URL")]
    pub outputs: Vec<String>,

    /// Trace this TCP port whether or not anything listens on it (repeatable). Without it,
    /// the ports of every running sshd and of its configuration are traced.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Trace only this listening sshd and its connections (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Report resets on every TCP port, not only sshd's ("is it really SSH?").
    #[arg(long)]
    pub all_tcp: bool,

    /// Add the hint and the evidence chain under each verdict line.
    #[arg(short, long)]
    pub verbose: bool,

    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many verdicts.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Print every decoded kernel event on standard error (for bug reports).
    #[arg(long, hide = true)]
    pub dump_events: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s or 5m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("'{text}': use s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn port_zero_is_rejected() {
        assert!(Cli::try_parse_from(["sshtrace", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["sshtrace", "--port", "70000"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["sshtrace", "--port", "22"])
                .unwrap()
                .ports,
            vec![22]
        );
    }
}
