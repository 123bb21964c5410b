//! The kernel's view of the system clock, read with `adjtimex(2)`, and the pure
//! rules that turn it into the NTP leap indicator, synchronisation status and
//! root dispersion.
//!
//! The read is done with `modes = 0`, which only queries: it needs no privilege
//! and changes nothing. Everything after the read is a pure function of
//! [`KernelClock`], so it is tested with fixtures instead of system calls.
//!
//! # Leap seconds
//!
//! A time daemon arms a leap second by setting `STA_INS` (insert) or `STA_DEL`
//! (delete) in the kernel status; the kernel applies it at the next UTC
//! midnight it reaches with the flag set. Leap seconds only ever happen at the
//! end of the last day of a month (UTC), so the server announces one (LI 1 or 2)
//! only when the flag is set **and** the kernel's current UTC day is the last
//! day of a month. This keeps a flag that a daemon armed early, or forgot to
//! clear after the event (the kernel leaves the flag set in `TIME_WAIT` until the
//! daemon clears it), from being announced on a wrong day. During the inserted
//! second itself `adjtimex` reports 23:59:59 again (state `TIME_OOP`), still the
//! last day, so the announcement lasts to the end of the leap second. If both
//! flags are set, insertion wins, as in the kernel.
//!
//! # Synchronisation
//!
//! The clock is unsynchronised when `STA_UNSYNC` is set, when `adjtimex`
//! returns `TIME_ERROR`, or when the maximum error has reached 16 s (the
//! kernel adds 500 us to it every second no daemon maintains it, and marks
//! the clock unsynchronised itself at 16 s).

use crate::protocol::{LeapIndicator, NtpShort};
use std::io;

/// `STA_INS`: insert a leap second at the next UTC midnight.
pub const STA_INS: i32 = libc::STA_INS;
/// `STA_DEL`: delete a leap second at the next UTC midnight.
pub const STA_DEL: i32 = libc::STA_DEL;
/// `STA_UNSYNC`: the clock is not synchronised.
pub const STA_UNSYNC: i32 = libc::STA_UNSYNC;
/// `STA_NANO`: `time` carries nanoseconds (else microseconds).
pub const STA_NANO: i32 = libc::STA_NANO;

/// `adjtimex` return value: clock synchronised, no leap second pending.
pub const TIME_OK: i32 = libc::TIME_OK;
/// `adjtimex` return value: a leap second will be inserted at midnight.
pub const TIME_INS: i32 = libc::TIME_INS;
/// `adjtimex` return value: a leap second will be deleted at midnight.
pub const TIME_DEL: i32 = libc::TIME_DEL;
/// `adjtimex` return value: a leap second is being inserted right now.
pub const TIME_OOP: i32 = libc::TIME_OOP;
/// `adjtimex` return value: a leap second has just happened.
pub const TIME_WAIT: i32 = libc::TIME_WAIT;
/// `adjtimex` return value: the clock is not synchronised.
pub const TIME_ERROR: i32 = libc::TIME_ERROR;

/// The kernel's maximum error at which it declares the clock unsynchronised
/// (`NTP_PHASE_LIMIT`), in microseconds: 16 s.
pub const MAXERROR_LIMIT_US: i64 = 16_000_000;
/// How much the kernel adds to the maximum error each second (`MAXFREQ`), in
/// microseconds.
pub const MAXERROR_GROWTH_US_PER_S: i64 = 500;

const SECS_PER_DAY: i64 = 86_400;

/// One `adjtimex` reading of the kernel clock state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    /// `status` bits (`STA_*`).
    pub status: i32,
    /// The return value of `adjtimex`: `TIME_OK`, `TIME_INS`, `TIME_DEL`,
    /// `TIME_OOP`, `TIME_WAIT` or `TIME_ERROR`.
    pub state: i32,
    /// Maximum error, microseconds.
    pub maxerror_us: i64,
    /// Estimated error, microseconds.
    pub esterror_us: i64,
    /// TAI - UTC offset in seconds as the kernel knows it (0 if never set).
    pub tai: i32,
    /// The time of the reading, Unix (seconds, nanoseconds below 1e9). During an
    /// inserted leap second the kernel reports 23:59:59 again.
    pub time: (i64, u32),
}

impl KernelClock {
    /// The state assumed when `adjtimex` cannot be read: unsynchronised,
    /// maximum error at the limit, no leap second, at Unix time `time`.
    pub fn unreadable(time: (i64, u32)) -> Self {
        KernelClock {
            status: STA_UNSYNC,
            state: TIME_ERROR,
            maxerror_us: MAXERROR_LIMIT_US,
            esterror_us: MAXERROR_LIMIT_US,
            tai: 0,
            time,
        }
    }

    /// Whether the kernel says the clock is unusable (see the module docs).
    pub fn is_unsynchronized(&self) -> bool {
        self.status & STA_UNSYNC != 0
            || self.state == TIME_ERROR
            || self.maxerror_us >= MAXERROR_LIMIT_US
    }

    /// The leap second to announce now (never [`LeapIndicator::Unsynchronized`]):
    /// the kernel's pending leap, on the last day of a month only.
    pub fn leap(&self) -> LeapIndicator {
        leap_from_status(self.status, self.time.0)
    }

    /// Root dispersion claimed from the kernel's maximum error, rounded up.
    pub fn root_dispersion(&self) -> NtpShort {
        maxerror_to_short(self.maxerror_us)
    }
}

/// The leap indicator for kernel status bits `status` at Unix time `unix_secs`
/// (UTC, as the kernel reports it): `Insert` for `STA_INS`, `Delete` for
/// `STA_DEL`, but only on the last day of a month; else `NoWarning`.
pub fn leap_from_status(status: i32, unix_secs: i64) -> LeapIndicator {
    if status & (STA_INS | STA_DEL) == 0 || !is_last_day_of_month(unix_secs) {
        LeapIndicator::NoWarning
    } else if status & STA_INS != 0 {
        LeapIndicator::Insert
    } else {
        LeapIndicator::Delete
    }
}

/// A maximum error in microseconds as an NTP short, rounded up (negative -> 0,
/// saturating at [`NtpShort::MAX`]).
pub fn maxerror_to_short(maxerror_us: i64) -> NtpShort {
    let us = u64::try_from(maxerror_us).unwrap_or(0);
    NtpShort::from_nanos_ceil(us.saturating_mul(1_000))
}

/// Whether the UTC day containing Unix time `unix_secs` is the last day of its month.
pub fn is_last_day_of_month(unix_secs: i64) -> bool {
    let tomorrow = unix_secs.div_euclid(SECS_PER_DAY) + 1;
    civil_from_days(tomorrow).2 == 1
}

/// (year, month 1..=12, day 1..=31) of the proleptic Gregorian date `days`
/// days after 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Reads the kernel clock state with `adjtimex(modes = 0)` (query only; no
/// privilege needed, nothing changed).
// `c_long` / `time_t` are i32 on 32-bit targets: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
pub fn read_kernel_clock() -> io::Result<KernelClock> {
    // SAFETY: `timex` is a plain C struct of integers for which all-zero bytes
    // are a valid value; `modes = 0` asks the kernel only to report.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid, exclusively borrowed `timex` that lives across the
    // call; with `modes = 0` the kernel only writes into it.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    let status = tx.status;
    let frac = i64::from(tx.time.tv_usec);
    let nanos = if status & STA_NANO != 0 {
        frac
    } else {
        frac * 1_000
    };
    Ok(KernelClock {
        status,
        state,
        maxerror_us: i64::from(tx.maxerror),
        esterror_us: i64::from(tx.esterror),
        tai: tx.tai,
        time: (
            i64::from(tx.time.tv_sec),
            u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2015-06-30 12:00:00 UTC, the day of a real leap second.
    const JUNE_30_2015_NOON: i64 = 1_435_665_600;
    /// 2015-06-15 12:00:00 UTC.
    const JUNE_15_2015_NOON: i64 = 1_434_369_600;
    /// 2016-12-31 23:59:59 UTC (also what adjtimex shows during the leap second).
    const DEC_31_2016_LAST_SECOND: i64 = 1_483_228_799;
    /// 2017-01-01 00:00:00 UTC.
    const JAN_1_2017: i64 = 1_483_228_800;

    fn synced(status: i32, state: i32, maxerror_us: i64, secs: i64) -> KernelClock {
        KernelClock {
            status,
            state,
            maxerror_us,
            esterror_us: 10,
            tai: 37,
            time: (secs, 0),
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(
            civil_from_days(JUNE_30_2015_NOON / SECS_PER_DAY),
            (2015, 6, 30)
        );
        assert_eq!(civil_from_days(1_456_704_000 / SECS_PER_DAY), (2016, 2, 29));
        // Past the 2036 NTP era rollover.
        assert_eq!(civil_from_days(2_085_978_496 / SECS_PER_DAY), (2036, 2, 7));
    }

    #[test]
    fn last_day_of_month() {
        assert!(is_last_day_of_month(JUNE_30_2015_NOON));
        assert!(!is_last_day_of_month(JUNE_15_2015_NOON));
        assert!(is_last_day_of_month(DEC_31_2016_LAST_SECOND));
        assert!(!is_last_day_of_month(JAN_1_2017));
        assert!(is_last_day_of_month(1_425_117_600)); // 2015-02-28 (not a leap year)
        assert!(!is_last_day_of_month(1_456_653_600)); // 2016-02-28 (leap year)
        assert!(is_last_day_of_month(1_456_704_000)); // 2016-02-29
        assert!(is_last_day_of_month(-1)); // 1969-12-31 23:59:59
    }

    #[test]
    fn leap_insert_only_on_the_last_day() {
        let k = synced(STA_INS, TIME_INS, 1_000, JUNE_30_2015_NOON);
        assert_eq!(k.leap(), LeapIndicator::Insert);
        let k = synced(STA_INS, TIME_INS, 1_000, JUNE_15_2015_NOON);
        assert_eq!(k.leap(), LeapIndicator::NoWarning);
        // During the inserted second the kernel reports 23:59:59 again: still announced.
        let k = synced(STA_INS, TIME_OOP, 1_000, DEC_31_2016_LAST_SECOND);
        assert_eq!(k.leap(), LeapIndicator::Insert);
        // After it (TIME_WAIT, flag not yet cleared by the daemon): no longer announced.
        let k = synced(STA_INS, TIME_WAIT, 1_000, JAN_1_2017);
        assert_eq!(k.leap(), LeapIndicator::NoWarning);
    }

    #[test]
    fn leap_delete_and_precedence() {
        let k = synced(STA_DEL, TIME_DEL, 1_000, JUNE_30_2015_NOON);
        assert_eq!(k.leap(), LeapIndicator::Delete);
        let k = synced(STA_DEL, TIME_DEL, 1_000, JUNE_15_2015_NOON);
        assert_eq!(k.leap(), LeapIndicator::NoWarning);
        assert_eq!(
            leap_from_status(STA_INS | STA_DEL, JUNE_30_2015_NOON),
            LeapIndicator::Insert
        );
        assert_eq!(
            leap_from_status(0, JUNE_30_2015_NOON),
            LeapIndicator::NoWarning
        );
    }

    #[test]
    fn unsynchronised_rules() {
        assert!(!synced(STA_NANO, TIME_OK, 1_000, JUNE_15_2015_NOON).is_unsynchronized());
        assert!(synced(STA_UNSYNC, TIME_OK, 1_000, JUNE_15_2015_NOON).is_unsynchronized());
        assert!(synced(0, TIME_ERROR, 1_000, JUNE_15_2015_NOON).is_unsynchronized());
        assert!(synced(0, TIME_OK, 16_000_000, JUNE_15_2015_NOON).is_unsynchronized());
        assert!(!synced(0, TIME_OK, 15_999_999, JUNE_15_2015_NOON).is_unsynchronized());
        assert!(KernelClock::unreadable((0, 0)).is_unsynchronized());
        assert_eq!(
            KernelClock::unreadable((0, 0)).leap(),
            LeapIndicator::NoWarning
        );
    }

    #[test]
    fn dispersion_from_maxerror_rounds_up() {
        assert_eq!(maxerror_to_short(0), NtpShort::ZERO);
        assert_eq!(maxerror_to_short(-5), NtpShort::ZERO);
        assert_eq!(maxerror_to_short(1_000_000), NtpShort(0x0001_0000));
        // 1 us is 0.0655 short units: rounded up to 1, never 0.
        assert_eq!(maxerror_to_short(1), NtpShort(1));
        // 16 s exactly.
        assert_eq!(maxerror_to_short(16_000_000), NtpShort(16 << 16));
        assert_eq!(maxerror_to_short(i64::MAX), NtpShort::MAX);
        let k = synced(0, TIME_OK, 1_500_000, JUNE_15_2015_NOON);
        assert_eq!(k.root_dispersion(), NtpShort(0x0001_8000));
    }

    #[test]
    fn real_adjtimex_read_is_consistent() {
        let k = read_kernel_clock().expect("adjtimex(modes=0) needs no privilege");
        assert!(
            (TIME_OK..=TIME_ERROR).contains(&k.state),
            "state {}",
            k.state
        );
        assert!(k.maxerror_us >= 0 && k.maxerror_us <= MAXERROR_LIMIT_US);
        assert!(k.time.1 < 1_000_000_000);
        let (s, _) = crate::clock::realtime::now_unix();
        assert!(
            (k.time.0 - s).abs() <= 2,
            "adjtimex time {} vs {s}",
            k.time.0
        );
    }
}
