//! Netfilter drops of TCP segments to or from tracked ports: `skb:kfree_skb` with the kernel's
//! NETFILTER_DROP reason. The 4-tuple is read from the packet's own IP and TCP headers.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};
use sshtrace_common::{Endpoints, FirewallDropEvent, ABSENT};

use super::field;
use crate::{
    maps::{layout, netns_tracked, port_tracked, settings, skb_netns},
    record::submit,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    let reason: u32 = field(ctx, l.kfree_skb.reason)?;
    // The cheap test first: every freed packet on the host passes here.
    if reason != settings().netfilter_drop {
        return Ok(());
    }
    let protocol: u16 = field(ctx, l.kfree_skb.protocol)?;
    let skb: u64 = field(ctx, l.kfree_skb.skbaddr)?;
    let s = l.structs;
    if s.skb_head == ABSENT || s.skb_network_header == ABSENT || s.skb_transport_header == ABSENT {
        return Err(-1);
    }
    let skb = skb as *const u8;
    let (head, network, transport) = unsafe {
        let head: u64 = bpf_probe_read_kernel(skb.add(s.skb_head as usize).cast())?;
        let network: u16 = bpf_probe_read_kernel(skb.add(s.skb_network_header as usize).cast())?;
        let transport: u16 =
            bpf_probe_read_kernel(skb.add(s.skb_transport_header as usize).cast())?;
        (head as *const u8, network as usize, transport as usize)
    };
    let ip = unsafe { head.add(network) };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let family = match protocol {
        ETH_P_IP => {
            let proto: u8 = unsafe { bpf_probe_read_kernel(ip.add(9))? };
            if proto != IPPROTO_TCP {
                return Ok(());
            }
            src[..4]
                .copy_from_slice(&unsafe { bpf_probe_read_kernel::<[u8; 4]>(ip.add(12).cast())? });
            dst[..4]
                .copy_from_slice(&unsafe { bpf_probe_read_kernel::<[u8; 4]>(ip.add(16).cast())? });
            AF_INET
        }
        ETH_P_IPV6 => {
            // Extension headers are not followed: TCP must be the next header.
            let next: u8 = unsafe { bpf_probe_read_kernel(ip.add(6))? };
            if next != IPPROTO_TCP {
                return Ok(());
            }
            src = unsafe { bpf_probe_read_kernel(ip.add(8).cast())? };
            dst = unsafe { bpf_probe_read_kernel(ip.add(24).cast())? };
            AF_INET6
        }
        _ => return Ok(()),
    };
    let tcp = unsafe { head.add(transport) };
    let sport = u16::from_be(unsafe { bpf_probe_read_kernel(tcp.cast())? });
    let dport = u16::from_be(unsafe { bpf_probe_read_kernel(tcp.add(2).cast())? });
    let flags: u8 = unsafe { bpf_probe_read_kernel(tcp.add(13))? };
    let inbound = port_tracked(dport);
    if !inbound && !port_tracked(sport) {
        return Ok(());
    }
    let netns = skb_netns(skb as u64);
    if !netns_tracked(netns) {
        return Ok(());
    }
    let (local_port, remote_port, local_addr, remote_addr) = if inbound {
        (dport, sport, dst, src)
    } else {
        (sport, dport, src, dst)
    };
    let endpoints = Endpoints {
        family,
        local_port,
        remote_port,
        _pad: 0,
        netns,
        _pad2: 0,
        local_addr,
        remote_addr,
    };
    submit(|e: &mut FirewallDropEvent| {
        e.tcp_flags = flags as u16;
        e.inbound = inbound as u16;
        e.endpoints = endpoints;
    });
    Ok(())
}
