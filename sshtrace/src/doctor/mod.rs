//! `sshtrace doctor`: the standard checklist for SSH resets (is sshd running and listening
//! where configured, does its configuration pass `sshd -t`, are host keys and files sane, do
//! firewall rules or bans refuse the port, are limits near exhaustion, is the disk full, which
//! LSMs are on, which OpenSSH runs and what it starts per connection, which per-source limits
//! apply), each with pass/warn/fail, the evidence and the fix. Checks that cannot run say why
//! (`skip`).

mod network;
mod openssh;
mod penalties;
mod sshd;
mod system;
mod user;

use std::{
    collections::BTreeMap,
    fs::{File, Metadata},
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    cli::DoctorArgs,
    enrich::discovery::{
        config::{self, Location},
        Discovery, Scope, Snapshot,
    },
    escape,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub evidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn new(name: &'static str, status: Status, evidence: impl Into<String>) -> Self {
        Self {
            name,
            status,
            evidence: evidence.into(),
            fix: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What the checks look at: the running sshd listeners and the configuration.
pub struct Target {
    pub sshd: Snapshot,
    /// The configuration file, as shown (through the listener's root when it is its own).
    pub config: PathBuf,
    /// Its attributes, when it could be opened as a regular file; else why not.
    pub config_meta: Result<Metadata, String>,
    /// Its text (at most 256 KiB of it); else why not.
    pub config_text: Result<String, String>,
    /// The file sshd may be asked to parse: a root-owned regular file; else why not.
    config_for_sshd: Result<File, String>,
    /// `sshd -T` (effective configuration, lower-case keys); `None` when it failed.
    pub effective: Option<BTreeMap<String, Vec<String>>>,
    pub user: Option<String>,
}

impl Target {
    /// `sshd FLAG -f /dev/stdin` with the configuration file as its standard input: sshd reads
    /// the very file examined, whatever its path names meanwhile. `Err` says why sshd is not
    /// asked (a FIFO would hang it; a file root does not own is not root's to vouch for).
    pub fn sshd_on_config(&self, flag: &str) -> Result<Command, String> {
        let file = self.config_for_sshd.as_ref().map_err(Clone::clone)?;
        let input = file
            .try_clone()
            .map_err(|e| format!("cannot hand it to sshd: {e}"))?;
        let mut sshd = Command::new(sshd_binary());
        sshd.args([flag, "-f", "/dev/stdin"]).stdin(input);
        Ok(sshd)
    }

    /// Values of an effective-configuration keyword (lower case), e.g. `port`, `hostkey`.
    pub fn values(&self, key: &str) -> Vec<String> {
        self.effective
            .as_ref()
            .and_then(|e| e.get(key).cloned())
            .unwrap_or_default()
    }
}

pub fn run(args: &DoctorArgs) -> Result<ExitCode> {
    let mut discovery = Discovery::new(Scope {
        pids: args.pid.into_iter().collect(),
        ..Scope::default()
    })?;
    let sshd = discovery.scan().cloned().unwrap_or_default();
    let location = match &args.config {
        Some(path) => Location::own(path),
        None => sshd
            .listeners
            .keys()
            .next()
            .and_then(|&pid| crate::enrich::discovery::config_location_of(pid))
            .unwrap_or_else(|| Location::own("/etc/ssh/sshd_config")),
    };
    let opened = config::open(&location);
    let config_for_sshd = opened
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|(file, meta)| {
            config::root_owned(meta)?;
            file.try_clone().map_err(|e| e.to_string())
        });
    let mut target = Target {
        sshd,
        config: location.shown(),
        config_meta: opened.map(|(_, meta)| meta),
        config_text: config::read(&location),
        config_for_sshd,
        effective: None,
        user: args.user.clone(),
    };
    target.effective = effective_config(&target);

    let checks = all_checks(&target);

    if args.json {
        let report = serde_json::json!({
            "schema": crate::verdict::SCHEMA,
            "type": "doctor",
            "config": target.config,
            "checks": checks,
        });
        println!("{report}");
    } else {
        print!("{}", render(&checks));
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn all_checks(target: &Target) -> Vec<Check> {
    let releases = openssh::Releases::read(target);
    let mut checks = sshd::checks(target);
    checks.extend(openssh::checks(target, &releases));
    checks.extend(penalties::checks(target, releases.governing()));
    checks.extend(user::checks(target));
    checks.extend(network::checks(target));
    checks.extend(system::checks());
    checks
}

fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        out.push_str(&format!(
            "{tag:<5} {:<24} {}\n",
            c.name,
            escape::text(&c.evidence)
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<30} fix: {}\n", "", escape::text(fix)));
        }
    }
    out
}

/// `sshd -T -f CONFIG`: every keyword sshd would use, as it would use it.
fn effective_config(t: &Target) -> Option<BTreeMap<String, Vec<String>>> {
    let out = t.sshd_on_config("-T").ok()?.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    Some(map)
}

pub fn sshd_binary() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "sshd".into())
}

/// Runs a tool, or `None` when it is not installed.
pub fn tool(program: &str, args: &[&str]) -> Option<std::process::Output> {
    Command::new(program).args(args).output().ok()
}
