//! The clock's reading precision, measured at start-up.
//!
//! The precision field of an NTP header is log2 of the clock's reading
//! precision in seconds. It is measured, not assumed: the smallest non-zero
//! difference between successive reads of `CLOCK_REALTIME` (which includes the
//! cost of a read), and never less than the clock's advertised resolution
//! (`clock_getres`). The exponent is rounded *up*, so the server never claims
//! a better precision than it measured.

use super::realtime::now_unix;
use nix::time::{clock_getres, ClockId};

/// Smallest exponent reported (2^-32 s is about 233 ps, the NTP timestamp resolution).
pub const MIN_PRECISION: i8 = -32;
/// Largest exponent reported (one second).
pub const MAX_PRECISION: i8 = 0;

/// Number of successive clock reads in [`measure_precision`].
const READS: usize = 4000;

/// The NTP precision exponent for a reading precision of `nanos` nanoseconds:
/// the smallest `p` with `2^p s >= nanos ns` (that is `ceil(log2(nanos * 1e-9))`),
/// clamped to [`MIN_PRECISION`]`..=`[`MAX_PRECISION`]. Zero is treated as 1 ns.
///
/// Examples: 1 ns -> -29 (2^-30 s = 0.93 ns is too fine), 59 ns -> -24
/// (2^-24 s = 59.6 ns), 60 ns -> -23, 1 us -> -19, 1 ms -> -9.
pub fn precision_from_nanos(nanos: u64) -> i8 {
    let nanos = u128::from(nanos.max(1));
    let mut p = MIN_PRECISION;
    while p < MAX_PRECISION {
        // 2^p s >= nanos ns  <=>  nanos * 2^-p <= 1e9
        if nanos << u32::from(p.unsigned_abs()) <= 1_000_000_000 {
            return p;
        }
        p += 1;
    }
    MAX_PRECISION
}

/// The resolution `clock_getres(CLOCK_REALTIME)` advertises, in nanoseconds
/// (1 ns when the call fails, so the measured step decides alone).
pub fn clock_resolution_nanos() -> u64 {
    match clock_getres(ClockId::CLOCK_REALTIME) {
        Ok(ts) => {
            let ns = i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec());
            u64::try_from(ns).unwrap_or(1).max(1)
        }
        Err(_) => 1,
    }
}

/// The smallest non-zero step between `READS` successive `CLOCK_REALTIME`
/// reads, in nanoseconds, or `None` if the clock never moved (or only backwards).
pub fn smallest_read_step_nanos() -> Option<u64> {
    let mut best: Option<u64> = None;
    let (mut ps, mut pn) = now_unix();
    for _ in 0..READS {
        let (s, n) = now_unix();
        let d = (i128::from(s) - i128::from(ps)) * 1_000_000_000 + i128::from(n) - i128::from(pn);
        if d > 0 {
            let d = u64::try_from(d).unwrap_or(u64::MAX);
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        (ps, pn) = (s, n);
    }
    best
}

/// Measures the precision of `CLOCK_REALTIME` reads and returns it as an NTP
/// precision exponent (e.g. -24 for a ~50 ns read). Takes well under a
/// millisecond (a few thousand vDSO reads); call once at start-up.
pub fn measure_precision() -> i8 {
    let res = clock_resolution_nanos();
    let step = smallest_read_step_nanos().unwrap_or(res);
    precision_from_nanos(step.max(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent_math() {
        assert_eq!(precision_from_nanos(1), -29);
        assert_eq!(precision_from_nanos(0), -29);
        assert_eq!(precision_from_nanos(59), -24);
        // 2^-24 s = 59.6 ns < 60 ns: rounding up gives -23, never a better claim.
        assert_eq!(precision_from_nanos(60), -23);
        assert_eq!(precision_from_nanos(1_000), -19);
        assert_eq!(precision_from_nanos(1_000_000), -9);
        assert_eq!(precision_from_nanos(1_000_000_000), 0);
        assert_eq!(precision_from_nanos(u64::MAX), MAX_PRECISION);
    }

    #[test]
    fn exponent_is_exact_at_powers_of_two() {
        // 2^-20 s = 953.67 ns: 953 fits in -20, 954 needs -19.
        assert_eq!(precision_from_nanos(953), -20);
        assert_eq!(precision_from_nanos(954), -19);
        // 2^-1 s = 0.5 s exactly.
        assert_eq!(precision_from_nanos(500_000_000), -1);
        assert_eq!(precision_from_nanos(500_000_001), 0);
    }

    #[test]
    fn exponent_is_monotone() {
        let mut prev = MIN_PRECISION;
        let mut ns = 1u64;
        while ns < 10_000_000_000 {
            let p = precision_from_nanos(ns);
            assert!(p >= prev, "{ns} ns -> {p} < {prev}");
            // 2^p s really covers ns, and 2^(p-1) s does not (unless clamped).
            if p < MAX_PRECISION {
                assert!(2f64.powi(i32::from(p)) * 1e9 >= ns as f64, "{ns} ns -> {p}");
            } else {
                assert!(ns > 500_000_000, "{ns} ns clamped to 0");
            }
            if p > MIN_PRECISION && p < MAX_PRECISION {
                assert!(2f64.powi(i32::from(p) - 1) * 1e9 < ns as f64);
            }
            prev = p;
            ns = ns * 3 / 2 + 1;
        }
    }

    #[test]
    fn measured_precision_is_plausible() {
        let p = measure_precision();
        assert!((-30..=-10).contains(&p), "measured precision {p}");
        let res = clock_resolution_nanos();
        assert!(
            p >= precision_from_nanos(res),
            "claims better than clock_getres"
        );
    }
}
