//! Reading the system clock (`CLOCK_REALTIME`).
//!
//! Both functions call `clock_gettime(CLOCK_REALTIME)`, which the C library
//! serves from the vDSO on Linux (no system call, no allocation), so they are
//! cheap enough for the per-packet path.

use crate::protocol::NtpTimestamp;
use nix::time::{clock_gettime, ClockId};

/// The current system time as Unix seconds and nanoseconds (below 1e9).
///
/// `clock_gettime(CLOCK_REALTIME)` cannot fail with a valid clock id and buffer;
/// should it ever do so, this falls back to [`std::time::SystemTime`] (the same
/// clock read another way) instead of panicking.
// `c_long` / `time_t` are i32 on 32-bit targets: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
#[inline]
pub fn now_unix() -> (i64, u32) {
    match clock_gettime(ClockId::CLOCK_REALTIME) {
        Ok(ts) => {
            // tv_nsec is in 0..1e9 for CLOCK_REALTIME, so the conversion cannot fail.
            let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0);
            (i64::from(ts.tv_sec()), nanos)
        }
        Err(_) => fallback_now_unix(),
    }
}

/// The current system time as an NTP timestamp.
#[inline]
pub fn now() -> NtpTimestamp {
    let (secs, nanos) = now_unix();
    NtpTimestamp::from_unix(secs, nanos)
}

#[cold]
fn fallback_now_unix() -> (i64, u32) {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            // Before 1970: express as negative seconds plus a positive fraction.
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_unix_is_sane_and_agrees_with_system_time() {
        let (s, n) = now_unix();
        assert!(n < 1_000_000_000);
        // After 2020-01-01 and before 2100: a wildly wrong clock or a unit mix-up fails.
        assert!(s > 1_577_836_800 && s < 4_102_444_800, "secs {s}");
        let (fs, _) = fallback_now_unix();
        assert!((fs - s).abs() <= 2, "clock_gettime {s} vs SystemTime {fs}");
    }

    #[test]
    fn now_matches_now_unix() {
        let (s0, _) = now_unix();
        let t = now();
        let (s, n) = t.to_unix_near(s0);
        assert!(n < 1_000_000_000);
        assert!(s - s0 >= 0 && s - s0 <= 1, "{s} vs {s0}");
    }

    #[test]
    fn monotone_enough_over_short_reads() {
        // CLOCK_REALTIME can be stepped, but not within a few microseconds on a test box.
        let a = now();
        let b = now();
        let d = b.diff_nanos(a);
        assert!((0..1_000_000_000).contains(&d), "diff {d}");
    }
}
