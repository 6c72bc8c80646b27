//! Turning the probes' CLOCK_MONOTONIC timestamps into wall-clock RFC 3339 times.

use rustix::time::ClockId;

/// The offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

fn now(clock: ClockId) -> i128 {
    let ts = rustix::time::clock_gettime(clock);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Self {
            realtime_minus_monotonic_ns: now(ClockId::Realtime) - now(ClockId::Monotonic),
        }
    }

    /// A clock whose monotonic zero is the Unix epoch (for tests).
    #[cfg(test)]
    pub fn epoch() -> Self {
        Self {
            realtime_minus_monotonic_ns: 0,
        }
    }

    /// CLOCK_MONOTONIC now, in the probes' time base.
    pub fn monotonic_now_ns() -> u64 {
        now(ClockId::Monotonic) as u64
    }

    /// The probes' time base for a wall-clock time (audit records carry wall-clock times).
    pub fn monotonic_from_unix_ns(&self, unix_ns: i128) -> u64 {
        (unix_ns - self.realtime_minus_monotonic_ns).max(0) as u64
    }

    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.realtime_minus_monotonic_ns
    }

    /// E.g. `2026-11-25T03:12:45.123456789Z`.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        rfc3339_from_unix_ns(self.unix_ns(monotonic_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn rfc3339_from_unix_ns(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_from_unix_ns(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-25T03:01:58.5Z
        assert_eq!(
            rfc3339_from_unix_ns(1_795_575_718_500_000_000),
            "2026-11-25T03:01:58.500000000Z"
        );
        assert_eq!(
            rfc3339_from_unix_ns(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }
}
