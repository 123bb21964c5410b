//! What the server claims about its reference: stratum, reference ID, leap
//! indicator, root delay and dispersion, and the reference timestamp, computed
//! from the configuration and one kernel clock reading.
//!
//! [`compute_state`] is pure (no clock read, no system call): the refresher in
//! [`super::snapshot`] feeds it [`super::kernel::read_kernel_clock`] and
//! [`super::realtime::now`] once a second.
//!
//! # The reference timestamp under `--reference system`
//!
//! It must say when the clock was last updated by its reference, not "now". The
//! kernel does not record that moment, so it is estimated from the maximum
//! error: every second the kernel adds exactly 500 us to `maxerror`, and a time
//! daemon that disciplines the clock writes a new (usually smaller) value.
//! [`ReferenceTracker`] remembers the previous `maxerror` and the kernel second
//! it was read at. With `n` kernel seconds elapsed since, the untouched value
//! lies within `prev + 500 us * (n - 1) ..= prev + 500 us * (n + 1)` (one
//! second of slack each way because the kernel's per-second bookkeeping can
//! lag the time it reports by a tick), capped at 16 s. A value outside that
//! window means someone wrote it (a daemon update, or a clock step): the
//! reference time becomes the time of that observation, late by at most one
//! refresh interval. Before any update is seen, the first reading gives an
//! upper bound on the age: `now - maxerror / (500 us/s)`, since `maxerror`
//! cannot have grown from zero faster than that. Daemons leave a non-zero
//! `maxerror` behind after an update, so this errs towards an older reference
//! time (never a falsely fresh one).

use super::kernel::{
    KernelClock, MAXERROR_GROWTH_US_PER_S, MAXERROR_LIMIT_US, STA_UNSYNC, TIME_ERROR,
};
use crate::protocol::{NtpShort, NtpTimestamp, ServerState};
use std::fmt;

/// Where the server's time comes from.
///
/// Marked `non_exhaustive`: a PHC reference and an NTP mirror (`ntp:ADDR`)
/// are planned variants.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReferenceKind {
    /// The system clock as a time daemon keeps it; claims follow the kernel's
    /// `adjtimex` state (`--reference system`).
    System,
    /// The system clock taken as a reference as is (labs, tests, benchmarks;
    /// like chrony's `local stratum`): always synchronised (`--reference local`).
    Local,
    /// The PTP hardware clock as stratum 1 (`--reference phc`); its state is
    /// computed by the PHC thread ([`super::phc_service`]).
    Phc,
    /// The header of a local NTP daemon (`--reference ntp:ADDR`); its state is
    /// computed by the mirror thread ([`super::mirror`]).
    Ntp,
}

impl fmt::Display for ReferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReferenceKind::System => "system",
            ReferenceKind::Local => "local",
            ReferenceKind::Phc => "phc",
            ReferenceKind::Ntp => "ntp",
        })
    }
}

/// The reference configuration, already validated and encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceConfig {
    /// Which reference.
    pub kind: ReferenceKind,
    /// Stratum served while synchronised (1..=15).
    pub stratum: u8,
    /// Reference ID, already encoded for `stratum` (see
    /// [`crate::protocol::refid::encode_refid`]).
    pub refid: [u8; 4],
    /// Measured clock precision exponent (see [`super::precision::measure_precision`]).
    pub precision: i8,
    /// Smallest poll exponent served.
    pub min_poll: i8,
    /// Largest poll exponent served.
    pub max_poll: i8,
    /// Whether to answer at all while unsynchronised.
    pub serve_unsynchronized: bool,
}

/// Why a [`ReferenceConfig`] is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceConfigError {
    /// Stratum outside 1..=15.
    Stratum(u8),
    /// `min_poll` above `max_poll`.
    PollRange {
        /// The configured minimum.
        min: i8,
        /// The configured maximum.
        max: i8,
    },
    /// Precision outside -32..=0.
    Precision(i8),
}

impl fmt::Display for ReferenceConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReferenceConfigError::Stratum(s) => {
                write!(
                    f,
                    "stratum {s} is out of range: a server's stratum is 1 to 15"
                )
            }
            ReferenceConfigError::PollRange { min, max } => {
                write!(f, "minimum poll {min} is above maximum poll {max}")
            }
            ReferenceConfigError::Precision(p) => {
                write!(f, "precision {p} is out of range -32..=0")
            }
        }
    }
}

impl std::error::Error for ReferenceConfigError {}

impl ReferenceConfig {
    /// Default stratum of `--reference local`.
    pub const LOCAL_DEFAULT_STRATUM: u8 = 1;
    /// Default reference ID of `--reference local`.
    pub const LOCAL_DEFAULT_REFID: [u8; 4] = *b"LOCL";
    /// Default poll range served (RFC 5905 bounds of a sensible client).
    pub const DEFAULT_MIN_POLL: i8 = 4;
    /// See [`Self::DEFAULT_MIN_POLL`].
    pub const DEFAULT_MAX_POLL: i8 = 17;

    /// `--reference local` with its defaults (stratum 1, refid "LOCL").
    pub fn local(precision: i8) -> Self {
        ReferenceConfig {
            kind: ReferenceKind::Local,
            stratum: Self::LOCAL_DEFAULT_STRATUM,
            refid: Self::LOCAL_DEFAULT_REFID,
            precision,
            min_poll: Self::DEFAULT_MIN_POLL,
            max_poll: Self::DEFAULT_MAX_POLL,
            serve_unsynchronized: true,
        }
    }

    /// Checks the ranges the protocol needs.
    pub fn validate(&self) -> Result<(), ReferenceConfigError> {
        if !(1..=15).contains(&self.stratum) {
            return Err(ReferenceConfigError::Stratum(self.stratum));
        }
        if self.min_poll > self.max_poll {
            return Err(ReferenceConfigError::PollRange {
                min: self.min_poll,
                max: self.max_poll,
            });
        }
        if !(-32..=0).contains(&self.precision) {
            return Err(ReferenceConfigError::Precision(self.precision));
        }
        Ok(())
    }
}

/// One earlier `maxerror` observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MaxErrorSample {
    maxerror_us: i64,
    kernel_secs: i64,
}

/// What [`compute_state`] remembers between refreshes: the previous kernel
/// `maxerror` (to spot clock updates), the estimated last update time, and the
/// last synchronisation status (to log transitions once).
#[derive(Clone, Debug, Default)]
pub struct ReferenceTracker {
    prev: Option<MaxErrorSample>,
    last_update: Option<NtpTimestamp>,
    updates_seen: u64,
    synchronized: Option<bool>,
    transitions: u64,
}

impl ReferenceTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The estimated time of the last clock update, if any reading was made.
    pub fn last_update(&self) -> Option<NtpTimestamp> {
        self.last_update
    }

    /// How many clock updates were detected from `maxerror` changes.
    pub fn updates_seen(&self) -> u64 {
        self.updates_seen
    }

    /// The synchronisation status last seen (`None` before the first reading).
    pub fn synchronized(&self) -> Option<bool> {
        self.synchronized
    }

    /// How many synchronised <-> unsynchronised transitions were seen (and logged).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Feeds one kernel reading taken at `now`; returns the estimated time of
    /// the last clock update (see the module docs).
    pub fn observe_maxerror(&mut self, kernel: &KernelClock, now: NtpTimestamp) -> NtpTimestamp {
        let maxerror = kernel.maxerror_us.clamp(0, MAXERROR_LIMIT_US);
        let sample = MaxErrorSample {
            maxerror_us: maxerror,
            kernel_secs: kernel.time.0,
        };
        match (self.prev, self.last_update) {
            (Some(prev), Some(_)) => {
                let n = sample.kernel_secs.saturating_sub(prev.kernel_secs).max(0);
                let grow = |secs: i64| {
                    prev.maxerror_us
                        .saturating_add(secs.saturating_mul(MAXERROR_GROWTH_US_PER_S))
                        .min(MAXERROR_LIMIT_US)
                };
                let lowest = grow((n - 1).max(0));
                let highest = grow(n + 1);
                if maxerror < lowest || maxerror > highest {
                    self.last_update = Some(now);
                    self.updates_seen += 1;
                }
            }
            _ => {
                // Age upper bound: maxerror grew from >= 0 at 500 us per second.
                let age_ns = maxerror.saturating_mul(1_000_000_000 / MAXERROR_GROWTH_US_PER_S);
                self.last_update = Some(now.add_nanos(-age_ns));
            }
        }
        self.prev = Some(sample);
        self.last_update.unwrap_or(now)
    }

    /// Records the synchronisation status; logs a transition (once per change,
    /// not per refresh). The first status seen is recorded silently: the caller
    /// logs the start state (see [`super::snapshot::initial_state`]). Returns
    /// whether this was a transition.
    pub fn note_sync(&mut self, kind: ReferenceKind, synced: bool, kernel: &KernelClock) -> bool {
        let was = self.synchronized.replace(synced);
        match was {
            Some(w) if w != synced => {
                self.transitions += 1;
                if synced {
                    tracing::info!(
                        reference = %kind,
                        maxerror_us = kernel.maxerror_us,
                        "reference clock synchronised again"
                    );
                } else {
                    tracing::warn!(
                        reference = %kind,
                        reason = unsync_reason(kernel),
                        maxerror_us = kernel.maxerror_us,
                        "reference clock unsynchronised: serving LI 3, stratum 16"
                    );
                }
                true
            }
            _ => false,
        }
    }
}

/// Why the kernel clock counts as unsynchronised (for logs); "" if it does not.
pub fn unsync_reason(kernel: &KernelClock) -> &'static str {
    if kernel.status & STA_UNSYNC != 0 {
        "kernel status STA_UNSYNC"
    } else if kernel.state == TIME_ERROR {
        "adjtimex returned TIME_ERROR"
    } else if kernel.maxerror_us >= MAXERROR_LIMIT_US {
        "kernel maximum error reached 16 s"
    } else {
        ""
    }
}

/// 2^precision seconds as an NTP short, rounded up (never 0), saturating.
pub fn precision_to_short(precision: i8) -> NtpShort {
    let shift = i32::from(precision) + 16;
    if shift < 0 {
        NtpShort(1)
    } else if shift >= 32 {
        NtpShort::MAX
    } else {
        NtpShort(1u32 << shift)
    }
}

/// The server state for reference configuration `cfg`, given a kernel clock
/// reading `kernel` taken at `now`. Pure apart from logging transitions.
///
/// * `System`: while the kernel says synchronised, stratum and refid from `cfg`,
///   LI from the kernel's pending leap (last day of a month only), root delay 0,
///   root dispersion the kernel's maximum error, reference time estimated by the
///   tracker. Otherwise LI 3, stratum 16 ([`ServerState::unsynchronized`]).
/// * `Local`: stratum and refid from `cfg`, LI 0 unless the kernel has a leap
///   pending (same rule), root delay 0, root dispersion 2^precision, reference
///   time `now` (the refresh).
pub fn compute_state(
    cfg: &ReferenceConfig,
    kernel: &KernelClock,
    now: NtpTimestamp,
    tracker: &mut ReferenceTracker,
) -> ServerState {
    let with_cfg = |s: ServerState| ServerState {
        min_poll: cfg.min_poll,
        max_poll: cfg.max_poll,
        serve_unsynchronized: cfg.serve_unsynchronized,
        ..s
    };
    match cfg.kind {
        ReferenceKind::System => {
            let reference_time = tracker.observe_maxerror(kernel, now);
            let synced = !kernel.is_unsynchronized();
            tracker.note_sync(cfg.kind, synced, kernel);
            if !synced {
                return with_cfg(ServerState::unsynchronized(cfg.precision));
            }
            with_cfg(ServerState {
                leap: kernel.leap(),
                stratum: cfg.stratum,
                precision: cfg.precision,
                root_delay: NtpShort::ZERO,
                root_dispersion: kernel.root_dispersion(),
                refid: cfg.refid,
                reference_time,
                ..ServerState::unsynchronized(cfg.precision)
            })
        }
        ReferenceKind::Local => {
            tracker.note_sync(cfg.kind, true, kernel);
            with_cfg(ServerState {
                leap: kernel.leap(),
                stratum: cfg.stratum,
                precision: cfg.precision,
                root_delay: NtpShort::ZERO,
                root_dispersion: precision_to_short(cfg.precision),
                refid: cfg.refid,
                reference_time: now,
                ..ServerState::unsynchronized(cfg.precision)
            })
        }
        // Computed from the PHC or the upstream daemon by their own threads;
        // until they have a reading the server is unsynchronised.
        ReferenceKind::Phc | ReferenceKind::Ntp => {
            with_cfg(ServerState::unsynchronized(cfg.precision))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernel::{STA_DEL, STA_INS, STA_NANO, TIME_DEL, TIME_INS, TIME_OK};
    use super::*;
    use crate::protocol::LeapIndicator;

    const JUNE_30_2015_NOON: i64 = 1_435_665_600;
    const JUNE_15_2015_NOON: i64 = 1_434_369_600;

    fn system_cfg() -> ReferenceConfig {
        ReferenceConfig {
            kind: ReferenceKind::System,
            stratum: 2,
            refid: [192, 0, 2, 1],
            precision: -24,
            min_poll: 3,
            max_poll: 10,
            serve_unsynchronized: false,
        }
    }

    fn kclock(status: i32, state: i32, maxerror_us: i64, secs: i64) -> KernelClock {
        KernelClock {
            status,
            state,
            maxerror_us,
            esterror_us: 5,
            tai: 37,
            time: (secs, 250_000_000),
        }
    }

    fn ntp(secs: i64) -> NtpTimestamp {
        NtpTimestamp::from_unix(secs, 250_000_000)
    }

    #[test]
    fn system_synchronised() {
        let cfg = system_cfg();
        let mut t = ReferenceTracker::new();
        let k = kclock(STA_NANO, TIME_OK, 1_500_000, JUNE_15_2015_NOON);
        let s = compute_state(&cfg, &k, ntp(JUNE_15_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(s.stratum, 2);
        assert_eq!(s.refid, [192, 0, 2, 1]);
        assert_eq!(s.precision, -24);
        assert_eq!(s.root_delay, NtpShort::ZERO);
        assert_eq!(s.root_dispersion, NtpShort(0x0001_8000)); // 1.5 s
        assert_eq!((s.min_poll, s.max_poll), (3, 10));
        assert!(!s.serve_unsynchronized);
        assert!(!s.is_unsynchronized());
        // 1.5 s of maxerror = at most 3000 s since the last update.
        assert_eq!(s.reference_time, ntp(JUNE_15_2015_NOON - 3000));
    }

    #[test]
    fn system_unsynchronised_cases() {
        let cfg = system_cfg();
        for k in [
            kclock(STA_UNSYNC, TIME_OK, 1_000, JUNE_15_2015_NOON),
            kclock(0, TIME_ERROR, 1_000, JUNE_15_2015_NOON),
            kclock(0, TIME_OK, 16_000_000, JUNE_15_2015_NOON),
            // Unsynchronised wins over a pending leap.
            kclock(STA_UNSYNC | STA_INS, TIME_ERROR, 1_000, JUNE_30_2015_NOON),
        ] {
            let mut t = ReferenceTracker::new();
            let s = compute_state(&cfg, &k, ntp(k.time.0), &mut t);
            assert_eq!(s.leap, LeapIndicator::Unsynchronized, "{k:?}");
            assert_eq!(s.stratum, 16, "{k:?}");
            assert!(s.is_unsynchronized());
            // Config fields still apply.
            assert_eq!((s.min_poll, s.max_poll), (3, 10));
            assert!(!s.serve_unsynchronized);
            assert_eq!(s.precision, -24);
        }
    }

    #[test]
    fn system_leap_only_on_leap_day() {
        let cfg = system_cfg();
        let mut t = ReferenceTracker::new();
        let k = kclock(STA_INS, TIME_INS, 1_000, JUNE_30_2015_NOON);
        let s = compute_state(&cfg, &k, ntp(JUNE_30_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::Insert);
        let k = kclock(STA_INS, TIME_INS, 1_000, JUNE_15_2015_NOON);
        let s = compute_state(&cfg, &k, ntp(JUNE_15_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        let k = kclock(STA_DEL, TIME_DEL, 1_000, JUNE_30_2015_NOON);
        let s = compute_state(&cfg, &k, ntp(JUNE_30_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::Delete);
    }

    #[test]
    fn local_mode() {
        let cfg = ReferenceConfig::local(-24);
        assert_eq!(cfg.validate(), Ok(()));
        let mut t = ReferenceTracker::new();
        // Local ignores the kernel's unsynchronised state...
        let k = kclock(STA_UNSYNC, TIME_ERROR, 16_000_000, JUNE_15_2015_NOON);
        let now = ntp(JUNE_15_2015_NOON);
        let s = compute_state(&cfg, &k, now, &mut t);
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(s.stratum, 1);
        assert_eq!(&s.refid, b"LOCL");
        assert_eq!(s.root_delay, NtpShort::ZERO);
        // 2^-24 s = 59.6 ns, rounded up to one short unit (15.3 us).
        assert_eq!(s.root_dispersion, NtpShort(1));
        assert_eq!(s.reference_time, now);
        assert!(!s.is_unsynchronized());
        // ...but announces the kernel's pending leap on the leap day only.
        let k = kclock(
            STA_UNSYNC | STA_INS,
            TIME_ERROR,
            16_000_000,
            JUNE_30_2015_NOON,
        );
        let s = compute_state(&cfg, &k, ntp(JUNE_30_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::Insert);
        let k = kclock(STA_DEL, TIME_DEL, 100, JUNE_30_2015_NOON);
        let s = compute_state(&cfg, &k, ntp(JUNE_30_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::Delete);
        let k = kclock(STA_INS, TIME_INS, 100, JUNE_15_2015_NOON);
        let s = compute_state(&cfg, &k, ntp(JUNE_15_2015_NOON), &mut t);
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(t.transitions(), 0);
    }

    #[test]
    fn precision_dispersion() {
        assert_eq!(precision_to_short(0), NtpShort(0x0001_0000));
        assert_eq!(precision_to_short(-16), NtpShort(1));
        assert_eq!(precision_to_short(-10), NtpShort(64));
        assert_eq!(precision_to_short(-32), NtpShort(1));
        assert_eq!(precision_to_short(15), NtpShort(0x8000_0000));
        assert_eq!(precision_to_short(16), NtpShort::MAX);
    }

    #[test]
    fn reference_time_tracks_maxerror_decrease() {
        let cfg = system_cfg();
        let mut t = ReferenceTracker::new();
        let t0 = JUNE_15_2015_NOON;
        // Start: 100 ms of maxerror -> update at most 200 s ago.
        let s = compute_state(&cfg, &kclock(0, TIME_OK, 100_000, t0), ntp(t0), &mut t);
        assert_eq!(s.reference_time, ntp(t0 - 200));
        assert_eq!(t.updates_seen(), 0);
        // Normal growth, 500 us per second: no update detected, estimate kept.
        for i in 1..=5 {
            let k = kclock(0, TIME_OK, 100_000 + 500 * i, t0 + i);
            let s = compute_state(&cfg, &k, ntp(t0 + i), &mut t);
            assert_eq!(s.reference_time, ntp(t0 - 200), "second {i}");
        }
        // Growth read one second late or early (tick lag) is still not an update.
        let k = kclock(0, TIME_OK, 100_000 + 500 * 5, t0 + 6);
        compute_state(&cfg, &k, ntp(t0 + 6), &mut t);
        let k = kclock(0, TIME_OK, 100_000 + 500 * 7, t0 + 7);
        compute_state(&cfg, &k, ntp(t0 + 7), &mut t);
        assert_eq!(t.updates_seen(), 0);
        // A daemon writes a smaller maxerror: the update is now.
        let k = kclock(0, TIME_OK, 2_000, t0 + 8);
        let s = compute_state(&cfg, &k, ntp(t0 + 8), &mut t);
        assert_eq!(s.reference_time, ntp(t0 + 8));
        assert_eq!(t.updates_seen(), 1);
        assert_eq!(s.root_dispersion, NtpShort::from_nanos_ceil(2_000_000));
        // Then it grows again: reference time stays at the update.
        let k = kclock(0, TIME_OK, 2_500, t0 + 9);
        let s = compute_state(&cfg, &k, ntp(t0 + 9), &mut t);
        assert_eq!(s.reference_time, ntp(t0 + 8));
        // A daemon that writes a value above the previous one, but below the
        // natural growth after a few seconds, is still seen.
        let k = kclock(0, TIME_OK, 3_000, t0 + 19);
        let s = compute_state(&cfg, &k, ntp(t0 + 19), &mut t);
        assert_eq!(s.reference_time, ntp(t0 + 19));
        assert_eq!(t.updates_seen(), 2);
        // And a jump upwards (a daemon raising maxerror, or a step) too.
        let k = kclock(0, TIME_OK, 900_000, t0 + 20);
        let s = compute_state(&cfg, &k, ntp(t0 + 20), &mut t);
        assert_eq!(s.reference_time, ntp(t0 + 20));
        assert_eq!(t.updates_seen(), 3);
    }

    #[test]
    fn capped_maxerror_is_not_an_update() {
        let cfg = system_cfg();
        let mut t = ReferenceTracker::new();
        let t0 = JUNE_15_2015_NOON;
        for i in 0..5 {
            let k = kclock(STA_UNSYNC, TIME_ERROR, 16_000_000, t0 + i);
            compute_state(&cfg, &k, ntp(t0 + i), &mut t);
        }
        assert_eq!(t.updates_seen(), 0);
        assert_eq!(t.last_update(), Some(ntp(t0 - 32_000)));
    }

    #[test]
    fn transitions_are_counted_once() {
        let cfg = system_cfg();
        let mut t = ReferenceTracker::new();
        let t0 = JUNE_15_2015_NOON;
        let synced = |i: i64| kclock(0, TIME_OK, 1_000 + 500 * i, t0 + i);
        let unsynced = |i: i64| kclock(STA_UNSYNC, TIME_ERROR, 1_000 + 500 * i, t0 + i);
        let seq = [
            synced(0),
            synced(1),
            unsynced(2),
            unsynced(3),
            unsynced(4),
            synced(5),
            synced(6),
        ];
        let mut flips = Vec::new();
        for k in seq {
            let before = t.transitions();
            compute_state(&cfg, &k, ntp(k.time.0), &mut t);
            flips.push(t.transitions() - before);
        }
        // First reading is silent (logged by initial_state), then one per change.
        assert_eq!(flips, [0, 0, 1, 0, 0, 1, 0]);
        assert_eq!(t.synchronized(), Some(true));
        assert_eq!(t.transitions(), 2);
    }

    #[test]
    fn unsync_reasons() {
        assert_eq!(unsync_reason(&kclock(0, TIME_OK, 1, 0)), "");
        assert!(unsync_reason(&kclock(STA_UNSYNC, TIME_OK, 1, 0)).contains("STA_UNSYNC"));
        assert!(unsync_reason(&kclock(0, TIME_ERROR, 1, 0)).contains("TIME_ERROR"));
        assert!(unsync_reason(&kclock(0, TIME_OK, 16_000_000, 0)).contains("16 s"));
    }

    #[test]
    fn config_validation() {
        let mut c = system_cfg();
        assert_eq!(c.validate(), Ok(()));
        c.stratum = 16;
        assert_eq!(c.validate(), Err(ReferenceConfigError::Stratum(16)));
        c.stratum = 0;
        assert!(c.validate().unwrap_err().to_string().contains("1 to 15"));
        c.stratum = 3;
        c.min_poll = 11;
        assert_eq!(
            c.validate(),
            Err(ReferenceConfigError::PollRange { min: 11, max: 10 })
        );
        c.min_poll = 4;
        c.precision = 1;
        assert_eq!(c.validate(), Err(ReferenceConfigError::Precision(1)));
    }
}
