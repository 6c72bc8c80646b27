//! `oom_killed`: the OOM killer chose a process serving the connection.

use serde_json::{json, Map};

use super::{consequence, exit_evidence, Background, Ended, Finding};
use crate::{
    escape,
    verdict::{Cause, Evidence},
};

pub fn judge(e: &Ended, ctx: &Background) -> Option<Finding> {
    let (p, oom) = e
        .tree
        .iter()
        .filter_map(|p| Some((p, p.oom.as_ref()?)))
        .min_by_key(|(_, oom)| oom.ts_ns)?;
    let [total_vm, anon_rss, file_rss, shmem_rss, _] = oom.memory_kb;
    let mut details = Map::new();
    details.insert("victim_pid".into(), json!(p.pid));
    details.insert("victim_comm".into(), json!(p.comm));
    details.insert("anon_rss_kb".into(), json!(anon_rss));
    details.insert("total_vm_kb".into(), json!(total_vm));
    details.insert("trigger_pid".into(), json!(oom.trigger.pid));
    details.insert("trigger_comm".into(), json!(oom.trigger.comm));
    details.insert("memcg".into(), json!(oom.memcg));
    let mut evidence = vec![Evidence::OomKill {
        ts: ctx.clock.rfc3339(oom.ts_ns),
        pid: p.pid,
        comm: p.comm.clone(),
        total_vm_kb: total_vm,
        anon_rss_kb: anon_rss,
        file_rss_kb: file_rss,
        shmem_rss_kb: shmem_rss,
        oom_score_adj: oom.oom_score_adj,
        trigger_pid: oom.trigger.pid,
        trigger_comm: oom.trigger.comm.clone(),
        memcg: oom.memcg.clone(),
    }];
    evidence.extend(exit_evidence(p, ctx));
    let rss = anon_rss
        .map(|kb| format!(" (anon-rss {} MiB)", kb / 1024))
        .unwrap_or_default();
    let cgroup = oom
        .memcg
        .as_ref()
        .and_then(|m| {
            Some(format!(
                " in a memory cgroup limited to {} ({})",
                m.value.as_ref()?,
                m.source
            ))
        })
        .unwrap_or_default();
    Some(Finding {
        cause: Cause::OomKilled,
        pid: Some(p.pid),
        details,
        evidence,
        summary: format!(
            "the OOM killer killed {}{rss}{cgroup}, after an allocation by {}[{}]; {}",
            e.name(p.pid),
            escape::text(&oom.trigger.comm),
            oom.trigger.pid,
            consequence(e.outcome)
        ),
        hint: "memory ran out: see `dmesg | grep -i -A20 oom`, the memory limit of sshd's cgroup \
               (MemoryMax= of ssh.service, memory.max) and what used the memory"
            .into(),
    })
}
