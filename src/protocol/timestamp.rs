//! NTP time formats: the 64-bit timestamp (32.32 seconds since 1900, era-relative)
//! and the 32-bit short format (16.16 seconds).
//!
//! An NTP timestamp carries no era number: the seconds field wraps every 2^32 s
//! (next on 2036-02-07 06:28:16 UTC). Conversion *to* NTP just truncates the
//! seconds modulo 2^32; conversion *from* NTP picks the era that puts the result
//! closest to a pivot time the caller knows (normally "now"), as RFC 5905 section 6
//! recommends.

/// Seconds from 1900-01-01 (NTP epoch) to 1970-01-01 (Unix epoch).
pub const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

/// A 64-bit NTP timestamp: 32 bits of seconds since the era start, 32 bits of
/// fraction (about 233 ps). Stored as the raw big-endian value it has on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// The all-zero timestamp, which NTP uses to mean "unknown".
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    /// The raw 64-bit value.
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// From the raw 64-bit value.
    pub const fn from_bits(bits: u64) -> Self {
        NtpTimestamp(bits)
    }

    /// Whether this is the zero ("unknown") timestamp.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// From Unix time (seconds may be negative or beyond 2036; the era is dropped).
    /// `nanos` must be below 1e9; larger values are carried into the seconds.
    pub fn from_unix(secs: i64, nanos: u32) -> Self {
        let secs = secs.wrapping_add(i64::from(nanos / 1_000_000_000));
        let nanos = u64::from(nanos % 1_000_000_000);
        let ntp_secs = secs.wrapping_add(NTP_UNIX_OFFSET) as u64 & 0xffff_ffff;
        // fraction = nanos * 2^32 / 1e9, rounded to nearest
        let frac = ((nanos << 32) + 500_000_000) / 1_000_000_000;
        // nanos < 1e9 so frac <= 2^32 - 1 after rounding (999_999_999 rounds to 0xffff_fffc)
        NtpTimestamp((ntp_secs << 32) | frac)
    }

    /// To Unix time, choosing the NTP era that puts the result within 68 years of
    /// `pivot_unix_secs`. Returns (seconds, nanoseconds below 1e9).
    pub fn to_unix_near(self, pivot_unix_secs: i64) -> (i64, u32) {
        let ntp_secs = (self.0 >> 32) as i64;
        let frac = self.0 & 0xffff_ffff;
        // Unix seconds assuming era 0, then shift by whole eras towards the pivot.
        let era0 = ntp_secs - NTP_UNIX_OFFSET;
        let diff = pivot_unix_secs.wrapping_sub(era0);
        let eras = diff.div_euclid(1 << 32) + i64::from(diff.rem_euclid(1 << 32) >= (1 << 31));
        let secs = era0 + eras * (1 << 32);
        let nanos = ((frac * 1_000_000_000) + (1 << 31)) >> 32;
        if nanos >= 1_000_000_000 {
            (secs + 1, (nanos - 1_000_000_000) as u32)
        } else {
            (secs, nanos as u32)
        }
    }

    /// The same timestamp with the least significant fraction bit set (odd).
    /// Receive timestamps are served odd so they can never equal a transmit
    /// timestamp (served even): this is how interleaved replies are told apart.
    pub const fn with_odd_low_bit(self) -> Self {
        NtpTimestamp(self.0 | 1)
    }

    /// The same timestamp with the least significant fraction bit cleared (even).
    pub const fn with_even_low_bit(self) -> Self {
        NtpTimestamp(self.0 & !1)
    }

    /// Signed difference `self - other` in nanoseconds, assuming the two are within
    /// 68 years of each other (wrapping arithmetic, so it is correct across eras).
    pub fn diff_nanos(self, other: NtpTimestamp) -> i64 {
        let d = self.0.wrapping_sub(other.0) as i64; // 32.32 fixed point, signed
                                                     // d * 1e9 / 2^32 without overflow for |d| < 2^63
        ((d as i128 * 1_000_000_000) >> 32) as i64
    }

    /// This timestamp moved by `nanos` nanoseconds (wrapping across eras).
    pub fn add_nanos(self, nanos: i64) -> Self {
        let delta = ((nanos as i128) << 32) / 1_000_000_000;
        NtpTimestamp(self.0.wrapping_add(delta as i64 as u64))
    }
}

/// The 32-bit NTP short format: 16 bits of seconds and 16 bits of fraction.
/// Used for root delay and root dispersion. Saturates at its maximum (~65536 s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NtpShort(pub u32);

impl NtpShort {
    /// Zero.
    pub const ZERO: NtpShort = NtpShort(0);
    /// The largest value, used for "unknown / unbounded".
    pub const MAX: NtpShort = NtpShort(u32::MAX);

    /// From a duration in nanoseconds, rounded up (an error bound must never
    /// be understated), saturating at [`NtpShort::MAX`].
    pub fn from_nanos_ceil(nanos: u64) -> Self {
        let v = (u128::from(nanos) << 16).div_ceil(1_000_000_000);
        NtpShort(u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// To nanoseconds (truncating).
    pub fn to_nanos(self) -> u64 {
        (u64::from(self.0) * 1_000_000_000) >> 16
    }

    /// The raw value.
    pub const fn to_bits(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unix_epoch_is_ntp_2208988800() {
        let t = NtpTimestamp::from_unix(0, 0);
        assert_eq!(t.0 >> 32, 2_208_988_800);
        assert_eq!(t.0 & 0xffff_ffff, 0);
    }

    #[test]
    fn half_second_fraction() {
        let t = NtpTimestamp::from_unix(1, 500_000_000);
        assert_eq!(t.0 & 0xffff_ffff, 0x8000_0000);
    }

    #[test]
    fn era_rollover_2036() {
        // 2036-02-07 06:28:16 UTC is Unix 2085978496: NTP seconds wrap to 0 there.
        let rollover = 2_085_978_496_i64;
        assert_eq!(NtpTimestamp::from_unix(rollover, 0).0, 0);
        assert_eq!(
            NtpTimestamp::from_unix(rollover - 1, 0).0 >> 32,
            0xffff_ffff
        );
        // Read back near the rollover from either side: the right era is chosen.
        for pivot in [rollover - 1000, rollover, rollover + 1000] {
            for t in [
                rollover - 5,
                rollover - 1,
                rollover,
                rollover + 1,
                rollover + 5,
            ] {
                let ts = NtpTimestamp::from_unix(t, 123_456_789);
                let (s, n) = ts.to_unix_near(pivot);
                assert_eq!(s, t, "pivot {pivot} t {t}");
                assert!((n as i64 - 123_456_789).abs() <= 1);
            }
        }
    }

    #[test]
    fn diff_across_rollover() {
        let rollover = 2_085_978_496_i64;
        let a = NtpTimestamp::from_unix(rollover - 1, 0);
        let b = NtpTimestamp::from_unix(rollover + 1, 0);
        assert_eq!(b.diff_nanos(a), 2_000_000_000);
        assert_eq!(a.diff_nanos(b), -2_000_000_000);
        assert_eq!(a.add_nanos(2_000_000_000), b);
    }

    #[test]
    fn odd_even() {
        let t = NtpTimestamp(0x1234_5678_9abc_def0);
        assert_eq!(t.with_odd_low_bit().0 & 1, 1);
        assert_eq!(t.with_odd_low_bit().with_even_low_bit().0 & 1, 0);
    }

    #[test]
    fn short_format() {
        assert_eq!(NtpShort::from_nanos_ceil(1_000_000_000).0, 0x0001_0000);
        assert_eq!(NtpShort::from_nanos_ceil(1).0, 1); // rounded up, never zero
        assert_eq!(NtpShort::from_nanos_ceil(0).0, 0);
        assert_eq!(NtpShort::from_nanos_ceil(u64::MAX), NtpShort::MAX);
        assert_eq!(NtpShort(0x0001_8000).to_nanos(), 1_500_000_000);
    }

    proptest! {
        #[test]
        fn unix_round_trip(secs in -2_208_988_800i64..4_000_000_000i64, nanos in 0u32..1_000_000_000) {
            let ts = NtpTimestamp::from_unix(secs, nanos);
            let (s, n) = ts.to_unix_near(secs);
            let got = s as i128 * 1_000_000_000 + n as i128;
            let want = secs as i128 * 1_000_000_000 + nanos as i128;
            prop_assert!((got - want).abs() <= 1, "{got} vs {want}");
        }

        #[test]
        fn pivot_within_68_years(secs in 0i64..4_000_000_000i64, off in -2_000_000_000i64..2_000_000_000i64) {
            let ts = NtpTimestamp::from_unix(secs, 0);
            let (s, _) = ts.to_unix_near(secs + off);
            prop_assert_eq!(s, secs);
        }

        #[test]
        fn short_round_trip_never_understates(nanos in 0u64..60_000_000_000_000) {
            let s = NtpShort::from_nanos_ceil(nanos);
            prop_assert!(s.to_nanos() >= nanos);
            prop_assert!(s.0 == 0 || NtpShort(s.0 - 1).to_nanos() < nanos);
        }
    }
}
