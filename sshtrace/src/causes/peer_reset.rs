//! `peer_reset`: a reset arrived from the network and this host had sent none. Its
//! fingerprint, taken by the kernel, says whether the peer's host or a box on the path sent
//! it ([`reset_from`]). On the server the peer is the client; in `sshtrace client`, the server.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use super::{
    reset_from::{attribute, decisive, Attribution, ResetFrom, Side},
    Background, Ended, Finding,
};
use crate::{
    trace::{events::TCP_ACK, reset_fingerprint::ResetFingerprint},
    verdict::{Cause, Outcome},
};

/// Idle time before a reset from the path from which a forgotten flow is the likelier story.
const IDLE_NOTE_NS: u64 = 1_000_000_000;

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    judge_on(e, ctx, Side::Server)
}

pub fn judge_on(e: &Ended, ctx: &Background, side: Side) -> Option<Finding> {
    if e.outcome != Outcome::ResetReceived {
        return None;
    }
    let remote = e.conn.tuple.remote;
    let Attributed {
        from,
        why,
        mut details,
        idle_ns,
        attribution,
    } = attributed(e);
    let mut summary = summary(from, &why, remote, side);
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
        hint: hint(attribution.as_ref(), idle_ns, e, side),
    })
}

/// Who sent the connection's decisive reset, with the figures behind it.
pub struct Attributed {
    pub from: ResetFrom,
    pub why: String,
    pub details: Map<String, Value>,
    pub idle_ns: Option<u64>,
    pub attribution: Option<Attribution>,
}

pub fn attributed(e: &Ended) -> Attributed {
    let fingerprint = decisive(e.conn.reset_fingerprints());
    let attribution = fingerprint.map(attribute);
    let from = attribution
        .as_ref()
        .map_or(ResetFrom::Undetermined, |a| a.from);
    let mut details = Map::new();
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
    Attributed {
        from,
        why,
        details,
        idle_ns: fingerprint.and_then(ResetFingerprint::idle_ns),
        attribution,
    }
}

fn summary(from: ResetFrom, why: &str, remote: SocketAddr, side: Side) -> String {
    let peer = side.peer();
    let me = side.me();
    match from {
        ResetFrom::PeerHost => format!(
            "the {peer}'s host {} reset the connection, not {me} nor a box on the path; the \
             reset's fingerprint: {why}",
            remote.ip()
        ),
        ResetFrom::Path { hops_closer } => format!(
            "a box on the path reset the connection, {hops_closer} hop(s) closer than the \
             {peer} {remote} it claimed to come from; the reset's fingerprint: {why}"
        ),
        ResetFrom::Undetermined => format!(
            "a reset arrived from {remote} and this host had sent none: the {peer} or a box on \
             the path (NAT, firewall, load balancer) reset the connection, not {me}; the \
             reset's fingerprint does not tell which: {why}"
        ),
    }
}

fn hint(attribution: Option<&Attribution>, idle_ns: Option<u64>, e: &Ended, side: Side) -> String {
    let remote = e.conn.tuple.remote;
    let capture = format!(
        "capture with `tcpdump -ni any -v 'tcp port {} and host {}'` and compare the reset's \
         TTL and IP ID with the {}'s packets",
        e.conn.tuple.local.port(),
        remote.ip(),
        side.peer()
    );
    match attribution.map(|a| a.from) {
        Some(ResetFrom::PeerHost) => side.peer_host_hint().to_owned(),
        Some(ResetFrom::Path { hops_closer }) => {
            let idle = match idle_ns {
                Some(ns) if ns >= IDLE_NOTE_NS => format!(
                    "it came after {} s without a segment from the {}: if a stateful firewall \
                     or NAT on the path has a shorter idle timeout, it forgot the flow and \
                     reset its next segment — set {} below that timeout; else ",
                    ns / 1_000_000_000,
                    side.peer(),
                    side.keepalive()
                ),
                _ => String::new(),
            };
            format!(
                "{idle}find the box {hops_closer} hop(s) from the {}'s side of the path \
                 (`traceroute -T -p {} {}` from here) and its REJECT rule (tcp-reset), load \
                 balancer or IPS; {capture}",
                side.peer(),
                remote.port(),
                remote.ip()
            )
        }
        _ => format!(
            "look at the {} and the path: idle timeouts of NAT/firewalls ({} keeps sessions \
             alive); {capture}",
            side.peer(),
            side.keepalive()
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
    // A reset without ACK (a REJECT answering a segment that had one) carries no ack number.
    if let Some(x) = fp.expected.filter(|_| fp.tcp_flags & TCP_ACK != 0) {
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
