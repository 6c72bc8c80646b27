//! Command-line interface: tracing (the default) and the `doctor`, `completions` and `man`
//! subcommands.

use std::{net::IpAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  During an outage, on the SSH server:
    sudo sshtrace                      # every sshd found, one line per connection that dies
    sudo sshtrace -v                   # … with the hint and the kernel evidence
    sudo sshtrace doctor               # the static checks: config, keys, firewall, limits
    sudo sshtrace --duration 5m --summary-only   # a report to paste into the incident channel
  Narrowing down:
    sudo sshtrace --port 2222 --pid 812 --client 203.0.113.0/24 --cause firewall
  On a container host (every sshd in every container is traced):
    sudo sshtrace --port 2222
  For a log collector or a script:
    sudo sshtrace --json | tee verdicts.jsonl
    sudo sshtrace -o syslog+tcp://127.0.0.1:514 -o tcp://127.0.0.1:9000 -o -
  On the machine where ssh runs (who refused or reset my session?):
    sudo sshtrace client
  For Prometheus (scrape http://127.0.0.1:9640/metrics):
    sudo sshtrace --metrics 127.0.0.1:9640 -o journald";

#[derive(Debug, Parser)]
#[command(
    name = "sshtrace",
    version,
    about = "\"Connection reset by peer\": who reset that SSH connection, and why",
    long_about = "Traces every SSH connection that dies on this host with eBPF and prints one \
                  verdict per connection: who ended it (sshd, the kernel, the network) and the \
                  cause, with the kernel evidence behind it. Needs root.",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this host for the usual causes of SSH resets: sshd running and listening where
    /// configured, config test, host key and file modes, firewall rules, fail2ban bans, limits,
    /// MaxStartups, disk space, LSMs. Exit status 1 when a check fails.
    Doctor(DoctorArgs),
    /// Run where `ssh` runs: trace the outgoing connections of ssh processes (and scp, sftp,
    /// rsync over ssh, which run one) and say who refused a connect or reset a session — the
    /// server's host or a box on the path — and which local process saw it. Same outputs,
    /// schema (`side: client`) and filters as the server side.
    Client(TraceArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check this user's ~/.ssh and authorized_keys too.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Check this listening sshd (default: every sshd found).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// The sshd configuration (default: the running sshd's -f, else /etc/ssh/sshd_config).
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Color {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Set by the `client` subcommand.
    #[arg(skip)]
    pub client: bool,

    /// Print verdicts as JSON Lines (schema sshtrace/2, see docs/events.md).
    #[arg(long)]
    pub json: bool,

    /// Where verdicts go (repeatable; default: stdout): `-`, `file:///PATH`, `tcp://HOST:PORT`,
    /// `udp://HOST:PORT`, `unix:///PATH` (JSON Lines), `syslog+tcp://HOST:PORT` (RFC 5424,
    /// octet counting), `syslog+udp://HOST:PORT`, `syslog+unix:///dev/log`, `journald`.
    /// Options: `?queue=N` (records held while the destination is away; default 4096),
    /// `?max_size=10M&keep=5` (file rotation).
    #[arg(long = "output", short = 'o', value_name = "URL")]
    pub outputs: Vec<String>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9640: verdicts by
    /// cause, port and container (at most 256 series, the rest counted in `_other`), kernel
    /// events read and lost, each output's records (docs/metrics.md). Listen where tenants
    /// cannot connect.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,

    /// Trace this TCP port whether or not anything listens on it (repeatable). Without it,
    /// the ports of every running sshd and of its configuration are traced. With `client`:
    /// only connections to this server port.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Trace only this listening sshd and its connections (repeatable). With `client`: only
    /// this ssh process, or those it ran.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only verdicts for clients in this address or network (repeatable), e.g. 203.0.113.0/24.
    /// With `client`: the servers'.
    #[arg(long = "client", value_name = "ADDR[/PREFIX]", value_parser = parse_network)]
    pub clients: Vec<Network>,

    /// Only verdicts with this cause (repeatable), e.g. firewall, sshd_crashed.
    #[arg(long = "cause", value_name = "CAUSE")]
    pub causes: Vec<String>,

    /// Trace only the sshd in this container, by id (or unique prefix) or name (repeatable).
    #[arg(
        long = "container",
        value_name = "ID|NAME",
        conflicts_with = "host_only"
    )]
    pub containers: Vec<String>,

    /// Trace only sshd outside containers.
    #[arg(long)]
    pub host_only: bool,

    /// A Docker-compatible API socket to ask for container names (repeatable; default: the
    /// usual Podman and Docker sockets).
    #[arg(long = "runtime-socket", value_name = "PATH")]
    pub runtime_sockets: Vec<std::path::PathBuf>,

    /// containerd's API socket, for the Kubernetes names its CRI plugin's labels carry
    /// (repeatable; default: /run/containerd/containerd.sock).
    #[arg(long = "containerd-socket", value_name = "PATH")]
    pub containerd_sockets: Vec<std::path::PathBuf>,

    /// Report resets on every TCP port, not only sshd's ("is it really SSH?").
    #[arg(long)]
    pub all_tcp: bool,

    /// Add the hint and the evidence chain under each verdict line.
    #[arg(short, long)]
    pub verbose: bool,

    /// Colour in the terminal view (NO_COLOR is honoured by `auto`).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// Print no verdict lines, only the summary when sshtrace stops.
    #[arg(long)]
    pub summary_only: bool,

    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many verdicts.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// The kernel's buffer of records for sshtrace (a power of two, at least 4K): larger
    /// rides out longer bursts on a busy host. Records it has no room for are counted and
    /// reported, never lost silently.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Attach, print which hooks this kernel has, how each kind of evidence is collected on it
    /// and which verdicts it cannot give; then exit.
    #[arg(long)]
    pub probe_report: bool,

    /// Print every decoded kernel event on standard error (for bug reports).
    #[arg(long, hide = true)]
    pub dump_events: bool,
}

/// An address with a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn parse_network(text: &str) -> Result<Network, String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{text}' is not an address or ADDR/PREFIX"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = if prefix.is_empty() {
        max
    } else {
        prefix
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("'{text}': prefix must be 0..={max}"))?
    };
    Ok(Network { addr, prefix })
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    crate::output::url::parse_size(text)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| n.is_power_of_two() && *n >= 4096)
        .ok_or_else(|| format!("'{text}' is not a power of two of at least 4K, like 256K or 4M"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s or 5m"))?;
    let scale: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("'{text}': use s, m or h")),
    };
    let seconds = number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too long a duration"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_are_refused_not_wrapped() {
        assert!(parse_duration("9999999999999999999h").is_err());
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_ring_size("64K"), Ok(65536));
        assert_eq!(parse_ring_size("4M"), Ok(4 << 20));
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
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
                .trace
                .ports,
            vec![22]
        );
    }

    #[test]
    fn networks() {
        let net = parse_network("203.0.113.0/24").unwrap();
        assert!(net.contains("203.0.113.77".parse().unwrap()));
        assert!(!net.contains("203.0.114.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        assert!(parse_network("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(parse_network("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("nonsense").is_err());
    }

    #[test]
    fn subcommands() {
        assert!(matches!(
            Cli::try_parse_from(["sshtrace", "doctor", "--user", "bob"])
                .unwrap()
                .command,
            Some(Command::Doctor(_))
        ));
        assert!(matches!(
            Cli::try_parse_from(["sshtrace", "completions", "bash"])
                .unwrap()
                .command,
            Some(Command::Completions { .. })
        ));
        assert!(Cli::try_parse_from(["sshtrace", "--json", "doctor"]).is_err());
    }
}
