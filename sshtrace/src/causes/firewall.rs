//! `firewall`: netfilter on this host dropped the connection's segments (`skb:kfree_skb`,
//! reason NETFILTER_DROP) — in the network namespace the verdict names: the host's own, a
//! container's, or a router's or CNI's the segments crossed. A REJECT rule drops the segment too, after answering it with a
//! reset: seen when the client is on this host (it receives that reset), or told by the
//! client's retransmissions, which only a silent DROP causes.

use serde_json::{json, Map};

use super::{tcp_flags, Background, Ended, Finding};
use crate::{
    trace::events::TCP_SYN,
    verdict::{Cause, Outcome},
};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    let drops = &e.conn.drops();
    let first = drops.first()?;
    // An orderly close despite a stray drop is not the firewall's doing; a close whose FIN the
    // client never acknowledged while its segments were being dropped is.
    let cut_off = e.conn.fin_unacknowledged && drops.iter().any(|d| d.inbound);
    if e.conn.skaddr != 0 && e.outcome == Outcome::Closed && !cut_off {
        return None;
    }
    let retransmitted = drops
        .iter()
        .filter(|d| d.inbound && d.tcp_flags & TCP_SYN != 0)
        .count()
        > 1;
    // A reset a local client received is the REJECT's only if this host's TCP sent none.
    let rejected = !e.conn.client_resets().is_empty() && e.conn.resets_sent.is_empty();
    let action = if rejected {
        "REJECT"
    } else if retransmitted {
        "DROP"
    } else {
        "DROP or REJECT"
    };
    let what = if first.tcp_flags & TCP_SYN != 0 && first.inbound {
        "the client's connection attempt (SYN)"
    } else if first.inbound {
        "segments from the client"
    } else {
        "sshd's segments to the client"
    };
    let answer = match action {
        "REJECT" => "a reset was sent back (REJECT --reject-with tcp-reset): the client sees \"Connection refused\" or \"reset\"",
        "DROP" => "nothing was answered (DROP): the client retransmitted and times out",
        _ => "whether a reset was sent back (REJECT) is not visible here",
    };
    let mut details = Map::new();
    details.insert("action".into(), json!(action));
    details.insert("dropped_segments".into(), json!(e.conn.drops_total()));
    details.insert(
        "first_dropped_flags".into(),
        json!(tcp_flags(first.tcp_flags)),
    );
    details.insert(
        "direction".into(),
        json!(if first.inbound { "inbound" } else { "outbound" }),
    );
    let netns = e.conn.tuple.netns;
    details.insert("netns".into(), ctx.netns.describe(netns));
    Some(Finding {
        cause: Cause::Firewall,
        pid: None,
        details,
        evidence: Vec::new(),
        summary: format!(
            "{} dropped {what} — {} segment(s); {answer}",
            ctx.netns.firewall_of(netns),
            e.conn.drops_total()
        ),
        hint: format!(
            "find the rule: {} and look for REJECT/DROP matching port {} or {}; also \
             `fail2ban-client status sshd`",
            ctx.netns.rules_command(netns),
            e.conn.tuple.local.port(),
            e.conn.tuple.remote.ip()
        ),
    })
}
