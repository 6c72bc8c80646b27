//! Firewall rules that refuse the SSH port, and fail2ban bans.

use super::{tool, Check, Status, Target};

pub fn checks(t: &Target) -> Vec<Check> {
    let mut ports: Vec<String> = t.values("port");
    if ports.is_empty() {
        ports = t
            .sshd
            .listening_addrs()
            .iter()
            .map(|a| a.port().to_string())
            .collect();
    }
    ports.sort();
    ports.dedup();
    vec![firewall(&ports), fail2ban()]
}

/// `iptables -S`/`ip6tables -S` and `nft list ruleset` lines that DROP or REJECT the port.
fn firewall(ports: &[String]) -> Check {
    let mut blocking = Vec::new();
    let mut ran = Vec::new();
    for (program, args) in [
        ("iptables", &["-S"][..]),
        ("ip6tables", &["-S"][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        let Some(out) = tool(program, args).filter(|o| o.status.success()) else {
            continue;
        };
        ran.push(program);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let l = line.to_ascii_lowercase();
            let refuses = l.contains("drop") || l.contains("reject");
            let matches_port = ports.iter().any(|p| {
                l.contains(&format!("--dport {p}"))
                    || l.contains(&format!("dport {p} "))
                    || l.ends_with(&format!("dport {p}"))
                    || l.contains(&format!("dports {p}"))
            });
            if refuses && matches_port {
                blocking.push(format!("{program}: {}", line.trim()));
            }
        }
    }
    if ran.is_empty() {
        return Check::new(
            "firewall_rules",
            Status::Skip,
            "neither iptables nor nft could be run",
        );
    }
    if blocking.is_empty() {
        return Check::new(
            "firewall_rules",
            Status::Pass,
            format!(
                "no DROP/REJECT rule for port {} ({})",
                ports.join(","),
                ran.join(", ")
            ),
        );
    }
    Check::new("firewall_rules", Status::Fail, blocking.join("; "))
        .fix("remove or narrow the rule (iptables -D … / nft delete rule …), or allow the client's address first")
}

fn fail2ban() -> Check {
    let Some(out) = tool("fail2ban-client", &["status", "sshd"]) else {
        return Check::new("fail2ban", Status::Skip, "fail2ban-client is not installed");
    };
    if !out.status.success() {
        return Check::new(
            "fail2ban",
            Status::Skip,
            format!(
                "fail2ban-client status sshd: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let banned = text
        .lines()
        .find_map(|l| l.split_once("Banned IP list:"))
        .map(|(_, ips)| ips.trim().to_owned())
        .unwrap_or_default();
    if banned.is_empty() {
        Check::new("fail2ban", Status::Pass, "jail sshd bans no address")
    } else {
        Check::new(
            "fail2ban",
            Status::Warn,
            format!("jail sshd bans: {banned}"),
        )
        .fix("fail2ban-client set sshd unbanip ADDRESS")
    }
}
