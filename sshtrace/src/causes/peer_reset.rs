//! `peer_reset`: a reset arrived from the network and this host had sent none. Its
//! fingerprint, taken by the kernel, says whether the client's host or a box on the path sent
//! it ([`reset_from`]).

use serde_json::{json, Map, Value};

use super::{
    reset_from::{attribute, decisive, Attribution, ResetFrom},
    Background, Ended, Finding,
};
use crate::{
    trace::reset_fingerprint::ResetFingerprint,
    verdict::{Cause, Outcome},
};

/// Idle time before a reset from the path from which a forgotten flow is the likelier story.
const IDLE_NOTE_NS: u64 = 1_000_000_000;

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    if e.outcome != Outcome::ResetReceived {
        return None;
    }
    let remote = e.conn.tuple.remote;
    let port = e.conn.tuple.local.port();
    let fingerprint = decisive(e.conn.reset_fingerprints());
    let attribution = fingerprint.map(attribute);
    let mut details = Map::new();
    let from = attribution
        .as_ref()
        .map_or(ResetFrom::Undetermined, |a| a.from);
    details.insert("reset_from".into(), json!(from.as_str()));
    if let ResetFrom::Path { hops_closer } = from {
        details.insert("hops_closer".into(), json!(hops_closer));
    }
    if let Some(fp) = fingerprint {
        add_figures(&mut details, fp);
    }
    let why = attribution.as_ref().map_or_else(
        || "no fingerprint of it was taken (see --probe-report)".to_owned(),
        |a| a.why.clone(),
    );
    details.insert("reset_from_why".into(), json!(why));
    let idle_ns = fingerprint.and_then(ResetFingerprint::idle_ns);
    let mut summary = summary(from, &why, remote);
    if let Some(first) = e.conn.path_drops().first() {
        let mut netns = ctx.netns.describe(first.netns);
        netns["segments"] = json!(e.conn.path_drops().len());
        details.insert("dropped_on_path".into(), netns);
        summary.push_str(&format!(
            "; {} dropped a segment of this connection on its way",
            ctx.netns.firewall_of(first.netns)
        ));
    }
    Some(Finding {
        cause: Cause::PeerReset,
        pid: None,
        details,
        evidence: Vec::new(),
        summary,
        hint: hint(attribution.as_ref(), idle_ns, remote, port),
    })
}

fn summary(from: ResetFrom, why: &str, remote: std::net::SocketAddr) -> String {
    match from {
        ResetFrom::PeerHost => format!(
            "the client's host {} reset the connection, not this server nor a box on the \
             path; the reset's fingerprint: {why}",
            remote.ip()
        ),
        ResetFrom::Path { hops_closer } => format!(
            "a box on the path reset the connection, {hops_closer} hop(s) closer than the \
             client {remote} it claimed to come from; the reset's fingerprint: {why}"
        ),
        ResetFrom::Undetermined => format!(
            "a reset arrived from {remote} and this host had sent none: the client or a box \
             on the path (NAT, firewall, load balancer) reset the connection, not this server; \
             the reset's fingerprint does not tell which: {why}"
        ),
    }
}

fn hint(
    attribution: Option<&Attribution>,
    idle_ns: Option<u64>,
    remote: std::net::SocketAddr,
    port: u16,
) -> String {
    let capture = format!(
        "capture with `tcpdump -ni any -v 'tcp port {port} and host {}'` and compare the \
         reset's TTL and IP ID with the client's packets",
        remote.ip()
    );
    match attribution.map(|a| a.from) {
        Some(ResetFrom::PeerHost) => "look at the client: its ssh was killed or aborted, or \
                                      its kernel or firewall answered for a connection it no \
                                      longer had (reboot, REJECT); `sshtrace client` there \
                                      names the process"
            .to_owned(),
        Some(ResetFrom::Path { hops_closer }) => {
            let idle = match idle_ns {
                Some(ns) if ns >= IDLE_NOTE_NS => format!(
                    "the connection had been idle {} s before it: a stateful firewall or NAT \
                     on the path whose idle timeout is shorter forgets the flow and resets its \
                     next segment — set ClientAliveInterval (server) or ServerAliveInterval \
                     (client) below that timeout; ",
                    ns / 1_000_000_000
                ),
                _ => String::new(),
            };
            format!(
                "{idle}find the box {hops_closer} hop(s) from the client's side of the path \
                 (`traceroute -T -p {port} {}` from here) and its REJECT rule (tcp-reset), \
                 load balancer or IPS; {capture}",
                remote.ip()
            )
        }
        _ => format!(
            "look at the client and the path: idle timeouts of NAT/firewalls \
             (ClientAliveInterval keeps sessions alive); {capture}; `sshtrace client` on the \
             client shows its side"
        ),
    }
}

/// The reset's figures and the peer's, as the kernel read them.
fn add_figures(details: &mut Map<String, Value>, fp: &ResetFingerprint) {
    let mut rst = Map::new();
    rst.insert("ttl".into(), json!(fp.ttl));
    rst.insert("ip_id".into(), json!(fp.ip_id));
    rst.insert("window".into(), json!(fp.window));
    rst.insert("seq_offset".into(), json!(fp.seq_offset()));
    if let Some(x) = fp.expected {
        rst.insert(
            "ack_offset".into(),
            json!(fp.ack.wrapping_sub(x.snd_una) as i32),
        );
    }
    details.insert("rst".into(), Value::Object(rst));
    if let Some(p) = fp.peer {
        details.insert(
            "peer".into(),
            json!({
                "ttl": p.ttl_last,
                "ttl_min": p.ttl_min,
                "ttl_max": p.ttl_max,
                "ip_id": p.ip_id_last,
                "segments": p.segments,
            }),
        );
    }
    if let Some(ns) = fp.idle_ns() {
        details.insert("idle_s".into(), json!((ns / 1_000_000) as f64 / 1e3));
    }
    details.insert("resets_received".into(), json!(fp.resets));
}
