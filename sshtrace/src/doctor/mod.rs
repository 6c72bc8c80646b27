//! `sshtrace doctor`: the standard checklist for SSH resets (is sshd running and listening
//! where configured, does its configuration pass `sshd -t`, are host keys and files sane, do
//! firewall rules or bans refuse the port, are limits near exhaustion, is the disk full, which
//! LSMs are on), each with pass/warn/fail, the evidence and the fix. Checks that cannot run say
//! why (`skip`).

mod network;
mod sshd;
mod system;
mod user;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    cli::DoctorArgs,
    discovery::{Discovery, Scope, Snapshot},
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
    pub config: PathBuf,
    /// `sshd -T` (effective configuration, lower-case keys); `None` when it failed.
    pub effective: Option<BTreeMap<String, Vec<String>>>,
    pub user: Option<String>,
}

impl Target {
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
    let config = args.config.clone().unwrap_or_else(|| {
        sshd.listeners
            .keys()
            .next()
            .and_then(|&pid| crate::discovery::config_path_of(pid))
            .unwrap_or_else(|| "/etc/ssh/sshd_config".into())
    });
    let effective = effective_config(&config);
    let target = Target {
        sshd,
        config,
        effective,
        user: args.user.clone(),
    };

    let mut checks = Vec::new();
    checks.extend(sshd::checks(&target));
    checks.extend(user::checks(&target));
    checks.extend(network::checks(&target));
    checks.extend(system::checks());

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
fn effective_config(config: &std::path::Path) -> Option<BTreeMap<String, Vec<String>>> {
    let out = Command::new(sshd_binary())
        .arg("-T")
        .arg("-f")
        .arg(config)
        .output()
        .ok()?;
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
