//! The latest verdict per client address: OpenSSH 9.8+ penalizes a source after a crash, a
//! failed or missing authentication or LoginGraceTime, and a penalized connection's verdict
//! names what happened from that address before.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use crate::verdict::Cause;

/// How many addresses are remembered: the oldest is forgotten first.
const KEPT_SOURCES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Earlier {
    pub ts_ns: u64,
    pub cause: Cause,
}

#[derive(Default)]
pub struct RecentVerdicts {
    latest: HashMap<IpAddr, Earlier>,
    order: VecDeque<IpAddr>,
}

impl RecentVerdicts {
    pub fn note(&mut self, source: IpAddr, earlier: Earlier) {
        if self.latest.insert(source, earlier).is_none() {
            self.order.push_back(source);
            if self.order.len() > KEPT_SOURCES {
                if let Some(old) = self.order.pop_front() {
                    self.latest.remove(&old);
                }
            }
        }
    }

    pub fn latest(&self, source: IpAddr) -> Option<Earlier> {
        self.latest.get(&source).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_latest_wins() {
        let mut r = RecentVerdicts::default();
        for i in 0..(KEPT_SOURCES as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            r.note(
                ip,
                Earlier {
                    ts_ns: 1,
                    cause: Cause::SshdCrashed,
                },
            );
        }
        assert_eq!(r.latest.len(), KEPT_SOURCES);
        let ip: IpAddr = "0.0.0.20".parse().unwrap();
        r.note(
            ip,
            Earlier {
                ts_ns: 2,
                cause: Cause::SshdExited,
            },
        );
        assert_eq!(r.latest(ip).unwrap().cause, Cause::SshdExited);
    }
}
