//! The per-source limits that make a listener close connections from one source while others
//! get through: PerSourcePenalties and PerSourcePenaltyExemptList (OpenSSH 9.8+, penalties on
//! by default), PerSourceMaxStartups and PerSourceNetBlockSize (8.5+). Each is a policy, so the
//! findings inform rather than judge; they are what to rule out first when one client gets
//! "Connection closed" and the next does not. Values come from `sshd -T`, else the
//! configuration file, else OpenSSH's defaults.

use super::{openssh::Release, Check, Status, Target};
use crate::enrich::discovery::config;

/// servconf.c's defaults (seconds), as `sshd -T` would print them.
const DEFAULT_PENALTIES: &str =
    "crash:90 authfail:5 invaliduser:5 noauth:1 grace-exceeded:10 min:15 max:600";

pub fn checks(t: &Target, release: Option<&Release>) -> Vec<Check> {
    let Some(version) = Version::of(t, release) else {
        let evidence = "cannot tell which OpenSSH the listener runs (see sshd_version)";
        return [
            "per_source_penalties",
            "penalty_exempt_list",
            "per_source_netblock",
            "per_source_max_startups",
        ]
        .map(|name| Check::new(name, Status::Skip, evidence))
        .to_vec();
    };
    vec![
        penalties(t, &version),
        exempt_list(t, &version),
        net_block_size(t, &version),
        max_startups(t, &version),
    ]
}

/// What the listener's OpenSSH has of these keywords.
struct Version {
    /// e.g. "OpenSSH 9.2".
    name: String,
    penalties: bool,
    per_source: bool,
}

impl Version {
    /// From the listener's release; without one, from the keywords `sshd -T` knows.
    fn of(t: &Target, release: Option<&Release>) -> Option<Self> {
        if let Some(r) = release {
            return Some(Self {
                name: format!("OpenSSH {}", r.number()),
                penalties: r.at_least(9, 8),
                per_source: r.at_least(8, 5),
            });
        }
        let knows = |key: &str| !t.values(key).is_empty();
        t.effective.as_ref().map(|_| Self {
            name: "this OpenSSH".into(),
            penalties: knows("persourcepenalties"),
            per_source: knows("persourcemaxstartups"),
        })
    }

    /// Said on the lines about the other keywords, so that each says whether penalties exist.
    fn no_penalties_note(&self) -> String {
        if self.penalties {
            String::new()
        } else {
            format!(" ({} has no penalties: added in 9.8)", self.name)
        }
    }
}

/// A keyword's value and where it was read: `sshd -T`, else the configuration file.
fn setting(t: &Target, keyword: &str) -> Option<(String, String)> {
    if let Some(value) = t.values(&keyword.to_ascii_lowercase()).into_iter().next() {
        return Some((value, "sshd -T".into()));
    }
    let text = t.config_text.as_ref().ok()?;
    config::first_value(text, keyword).map(|v| (v, t.config.display().to_string()))
}

fn penalties(t: &Target, v: &Version) -> Check {
    const NAME: &str = "per_source_penalties";
    if !v.penalties {
        let evidence = format!(
            "{} has no PerSourcePenalties (added in 9.8): this sshd never refuses a source for what its earlier connections did; \"Not allowed at this time\" cannot come from it",
            v.name
        );
        return Check::new(NAME, Status::Pass, evidence);
    }
    let (value, from) = setting(t, "PerSourcePenalties")
        .unwrap_or_else(|| (DEFAULT_PENALTIES.into(), "the default since 9.8".into()));
    if value.eq_ignore_ascii_case("no") {
        let evidence = format!("PerSourcePenalties no ({from}): sshd penalizes no source");
        return Check::new(NAME, Status::Pass, evidence);
    }
    Check::new(
        NAME,
        Status::Pass,
        format!(
            "PerSourcePenalties {} ({from}): when a source's connection crashes sshd, fails or skips authentication, names an invalid user or outlasts LoginGraceTime, its PerSourceNetBlockSize block is penalized for that many seconds (doubling up to max); meanwhile the listener answers each new connection from it \"Not allowed at this time\" and closes it (client: \"kex_exchange_identification: Connection closed by remote host\"; sshd: \"drop connection #N from … penalty: …\"); connections already open are not affected",
            seconds(&value)
        ),
    )
}

/// `crash:90.000000 authfail:5.000000` → `crash:90 authfail:5`.
fn seconds(value: &str) -> String {
    value.replace(".000000", "")
}

fn exempt_list(t: &Target, v: &Version) -> Check {
    const NAME: &str = "penalty_exempt_list";
    if !v.penalties {
        let evidence = format!(
            "{} has no PerSourcePenaltyExemptList: it has no penalties (added in 9.8)",
            v.name
        );
        return Check::new(NAME, Status::Pass, evidence);
    }
    match setting(t, "PerSourcePenaltyExemptList") {
        Some((list, from)) if !list.eq_ignore_ascii_case("none") => Check::new(
            NAME,
            Status::Pass,
            format!("PerSourcePenaltyExemptList {list} ({from}): these sources are never penalized"),
        ),
        _ => Check::new(
            NAME,
            Status::Pass,
            "PerSourcePenaltyExemptList none: every source can be penalized, monitoring probes that connect and never authenticate (noauth) and clients sharing a NAT address included",
        ),
    }
}

fn net_block_size(t: &Target, v: &Version) -> Check {
    const NAME: &str = "per_source_netblock";
    if !v.per_source {
        let evidence = format!(
            "{} has no PerSourceNetBlockSize (added in 8.5) and no penalties",
            v.name
        );
        return Check::new(NAME, Status::Pass, evidence);
    }
    let (value, from) = setting(t, "PerSourceNetBlockSize")
        .unwrap_or_else(|| ("32:128".into(), "the default".into()));
    let (v4, v6) = value.split_once(':').unwrap_or((&value, "128"));
    let counted_by = if v.penalties {
        "PerSourceMaxStartups and PerSourcePenalties"
    } else {
        "PerSourceMaxStartups"
    };
    Check::new(
        NAME,
        Status::Pass,
        format!(
            "PerSourceNetBlockSize {value} ({from}): one source is an IPv4 /{v4} or IPv6 /{v6} block for {counted_by}; clients behind one NAT address count as one{}",
            v.no_penalties_note()
        ),
    )
}

fn max_startups(t: &Target, v: &Version) -> Check {
    const NAME: &str = "per_source_max_startups";
    if !v.per_source {
        let evidence = format!("{} has no PerSourceMaxStartups (added in 8.5)", v.name);
        return Check::new(NAME, Status::Pass, evidence);
    }
    let (value, from) =
        setting(t, "PerSourceMaxStartups").unwrap_or_else(|| ("none".into(), "the default".into()));
    if value.eq_ignore_ascii_case("none") {
        let evidence = format!("PerSourceMaxStartups none ({from}): no source has a cap of its own; MaxStartups counts every source together{}", v.no_penalties_note());
        return Check::new(NAME, Status::Pass, evidence);
    }
    let answer = if v.penalties {
        "Not allowed at this time"
    } else {
        "Exceeded MaxStartups"
    };
    Check::new(
        NAME,
        Status::Pass,
        format!(
            "PerSourceMaxStartups {value} ({from}): a source block already holding {value} unauthenticated connections has each further one answered \"{answer}\" and closed, while other sources get through"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_t_penalties_read_as_seconds() {
        assert_eq!(
            seconds("crash:90.000000 authfail:5.000000 max-sources4:65536"),
            "crash:90 authfail:5 max-sources4:65536"
        );
    }
}
