//! Tracking a PTP hardware clock (PHC) against `CLOCK_REALTIME` (pure, no I/O).
//!
//! Each PHC reading ([`PhcMeasurement`]) gives the offset PHC − system at one
//! system-time instant, with an uncertainty. [`PhcTracker`] keeps the last
//! [`TRACKER_SAMPLES`] of them and fits offset and frequency by weighted
//! least squares against system time. With that fit it converts a PHC
//! timestamp (a NIC hardware timestamp) into system time (UTC), and reports
//! a dispersion: how far off that conversion may be.
//!
//! A new reading far outside the prediction (the PHC or the system clock was
//! stepped) resets the tracker; [`PhcTracker::add`] reports it so the caller
//! can mark the reference unhealthy until enough new readings arrive.
//!
//! Times are `i64` nanoseconds since the Unix epoch (good until 2262);
//! timestamps at the API edges are `(seconds, nanoseconds)` pairs as the
//! kernel hands them out.

/// How many readings the tracker keeps (one a second: a 16 s regression window).
pub const TRACKER_SAMPLES: usize = 16;

/// A reading is an offset jump when its distance from the prediction exceeds
/// this many times the expected error (residual spread + both readings'
/// uncertainties + drift since the last reading) ...
pub const JUMP_SPREAD_FACTOR: f64 = 10.0;

/// ... and also exceeds this (1 ms), so that noise on a very quiet clock
/// (cross-timestamping gives spreads of a few ns) never counts as a jump.
/// A real step (a PTP daemon stepping the PHC, UTC vs TAI, `date -s`) is
/// normally far larger; a smaller step is absorbed by the regression and
/// shows up honestly as a larger spread until it leaves the window.
pub const JUMP_MIN_NS: u64 = 1_000_000;

/// Assumed bound on how fast the PHC-to-system frequency wanders, in parts
/// per billion (100 ppb = 0.1 ppm): two crystal oscillators under ordinary
/// temperature changes. Added to the fit's own frequency error when the
/// dispersion is extrapolated past the last reading.
pub const DRIFT_RATE_PPB: f64 = 100.0;

/// Frequency error assumed while the tracker has a single reading and so no
/// frequency estimate at all (500 ppm: any sane crystal is within this).
pub const UNKNOWN_FREQ_ERROR: f64 = 500e-6;

/// Readings needed since the last reset before [`PhcTracker::healthy`] says yes
/// (with fewer, the frequency estimate rests on one or two noisy differences).
pub const MIN_HEALTHY_SAMPLES: usize = 4;

/// Default for how old the last reading may be before the tracker is unhealthy
/// (readings come once a second; this tolerates a few missed polls).
pub const DEFAULT_MAX_AGE_NS: u64 = 5_000_000_000;

/// Floor added to each reading's uncertainty when weighting (ns), so a
/// reading claiming zero uncertainty cannot take infinite weight.
const UNCERTAINTY_FLOOR_NS: f64 = 1.0;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// One PHC reading: the offset PHC − `CLOCK_REALTIME` at a system-time instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhcMeasurement {
    /// `CLOCK_REALTIME` at the instant of the reading, ns since the Unix epoch.
    pub sys_ns: i64,
    /// PHC time minus system time at that instant, ns (about 37 s for a PHC in TAI).
    pub offset_ns: i64,
    /// Half-width of the interval the reading is known to lie in, ns.
    pub uncertainty_ns: u64,
}

/// What [`PhcTracker::add`] did with a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackOutcome {
    /// The reading joined the regression window.
    Accepted,
    /// The reading was far from the prediction: the history was dropped and
    /// tracking restarted from this reading. The reference should be treated
    /// as unhealthy until [`PhcTracker::healthy`] says otherwise.
    Jump {
        /// The offset the fit predicted at the reading's instant, ns.
        predicted_offset_ns: i64,
        /// The offset measured, ns.
        measured_offset_ns: i64,
    },
    /// The reading's system time was earlier than the previous reading's (the
    /// system clock was stepped back): history dropped, tracking restarted.
    ClockWentBack {
        /// By how much the system time went back, ns.
        by_ns: u64,
    },
}

impl TrackOutcome {
    /// Whether the tracker was reset by this reading.
    pub fn is_reset(self) -> bool {
        !matches!(self, TrackOutcome::Accepted)
    }
}

/// The least-squares fit, relative to the newest reading (the anchor) so that
/// the `f64` arithmetic works on small numbers.
#[derive(Clone, Copy, Debug)]
struct Fit {
    /// System time of the anchor reading, ns.
    anchor_sys_ns: i64,
    /// Offset of the anchor reading, ns.
    anchor_offset_ns: i64,
    /// Fitted offset at the anchor instant, relative to `anchor_offset_ns`, ns.
    a: f64,
    /// Fitted frequency: d(offset)/d(system time), dimensionless (50 ppm = 50e-6).
    b: f64,
    /// Weighted RMS of the residuals (0 with fewer than 3 readings), ns.
    spread_ns: f64,
    /// Standard error of `b` (dimensionless).
    b_err: f64,
}

/// Offset-and-frequency tracker of a PHC against the system clock.
#[derive(Clone, Debug)]
pub struct PhcTracker {
    ring: [PhcMeasurement; TRACKER_SAMPLES],
    /// Number of valid readings in `ring`.
    len: usize,
    /// Index in `ring` where the next reading goes.
    next: usize,
    max_age_ns: u64,
    fit: Option<Fit>,
}

impl Default for PhcTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl PhcTracker {
    /// An empty tracker, unhealthy after [`DEFAULT_MAX_AGE_NS`] without readings.
    pub fn new() -> Self {
        Self::with_max_age(DEFAULT_MAX_AGE_NS)
    }

    /// An empty tracker that turns unhealthy once the newest reading is older
    /// than `max_age_ns`.
    pub fn with_max_age(max_age_ns: u64) -> Self {
        PhcTracker {
            ring: [PhcMeasurement::default(); TRACKER_SAMPLES],
            len: 0,
            next: 0,
            max_age_ns,
            fit: None,
        }
    }

    /// Number of readings in the regression window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tracker holds no readings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops all readings.
    pub fn reset(&mut self) {
        self.len = 0;
        self.next = 0;
        self.fit = None;
    }

    /// The newest reading, if any.
    pub fn last(&self) -> Option<PhcMeasurement> {
        if self.len == 0 {
            None
        } else {
            Some(self.ring[(self.next + TRACKER_SAMPLES - 1) % TRACKER_SAMPLES])
        }
    }

    /// Adds a reading, after checking it against the prediction (see
    /// [`JUMP_SPREAD_FACTOR`], [`JUMP_MIN_NS`]); refits.
    pub fn add(&mut self, m: PhcMeasurement) -> TrackOutcome {
        let mut outcome = TrackOutcome::Accepted;
        if let (Some(last), Some(fit)) = (self.last(), self.fit) {
            if m.sys_ns < last.sys_ns {
                outcome = TrackOutcome::ClockWentBack {
                    by_ns: last.sys_ns.abs_diff(m.sys_ns),
                };
            } else {
                let predicted = fit.predict_offset(m.sys_ns);
                let error = (m.offset_ns as f64 - predicted).abs();
                let elapsed = m.sys_ns.abs_diff(last.sys_ns) as f64;
                let expected = fit.spread_ns
                    + m.uncertainty_ns as f64
                    + last.uncertainty_ns as f64
                    + elapsed * (fit.b_err + DRIFT_RATE_PPB * 1e-9);
                if error > JUMP_SPREAD_FACTOR * expected && error > JUMP_MIN_NS as f64 {
                    outcome = TrackOutcome::Jump {
                        predicted_offset_ns: clamp_i64(predicted.round()),
                        measured_offset_ns: m.offset_ns,
                    };
                }
            }
        }
        if outcome.is_reset() {
            self.reset();
        }
        self.ring[self.next] = m;
        self.next = (self.next + 1) % TRACKER_SAMPLES;
        self.len = (self.len + 1).min(TRACKER_SAMPLES);
        self.fit = self.compute_fit();
        outcome
    }

    /// Whether the PHC conversion can be trusted at system time `now_sys_ns`:
    /// at least [`MIN_HEALTHY_SAMPLES`] readings since the last reset, and the
    /// newest not older than the maximum age.
    pub fn healthy(&self, now_sys_ns: i64) -> bool {
        match self.last() {
            Some(last) => {
                self.len >= MIN_HEALTHY_SAMPLES
                    && now_sys_ns.abs_diff(last.sys_ns) <= self.max_age_ns
            }
            None => false,
        }
    }

    /// The fitted frequency of the PHC relative to the system clock, in parts
    /// per billion (positive: the PHC runs fast). `None` with no readings.
    pub fn frequency_ppb(&self) -> Option<f64> {
        self.fit.map(|f| f.b * 1e9)
    }

    /// The residual spread of the fit (weighted RMS, ns); 0 with fewer than 3 readings.
    pub fn spread_ns(&self) -> Option<f64> {
        self.fit.map(|f| f.spread_ns)
    }

    /// The predicted offset PHC − system at system time `sys_ns`, ns.
    pub fn offset_at(&self, sys_ns: i64) -> Option<i64> {
        self.fit
            .map(|f| clamp_i64(f.predict_offset(sys_ns).round()))
    }

    /// Converts a PHC timestamp `(seconds, nanoseconds)` to `CLOCK_REALTIME`
    /// (UTC); `None` when the tracker is empty or the result does not fit.
    pub fn phc_to_realtime(&self, phc: (i64, u32)) -> Option<(i64, u32)> {
        let fit = self.fit?;
        let phc_ns = timespec_to_ns_i128(phc);
        let anchor_phc = i128::from(fit.anchor_sys_ns) + i128::from(fit.anchor_offset_ns);
        // phc - anchor_phc = (sys - anchor_sys) * (1 + b) + a
        let d = (phc_ns - anchor_phc) as f64;
        let sys_rel = (d - fit.a) / (1.0 + fit.b);
        if !sys_rel.is_finite() {
            return None;
        }
        let sys = i128::from(fit.anchor_sys_ns) + sys_rel.round() as i128;
        ns_i128_to_timespec(sys)
    }

    /// Converts system time `(seconds, nanoseconds)` to PHC time; `None` when
    /// the tracker is empty or the result does not fit.
    pub fn realtime_to_phc(&self, sys: (i64, u32)) -> Option<(i64, u32)> {
        let fit = self.fit?;
        let sys_ns = timespec_to_ns_i128(sys);
        let rel = (sys_ns - i128::from(fit.anchor_sys_ns)) as f64;
        let offset_rel = fit.a + fit.b * rel;
        let phc = sys_ns + i128::from(fit.anchor_offset_ns) + offset_rel.round() as i128;
        ns_i128_to_timespec(phc)
    }

    /// How far off a conversion at system time `now_sys_ns` may be, ns: the
    /// residual spread, plus the newest reading's uncertainty, plus the drift
    /// since the newest reading (elapsed time × (frequency error +
    /// [`DRIFT_RATE_PPB`])). `u64::MAX` for an empty tracker.
    pub fn dispersion(&self, now_sys_ns: i64) -> u64 {
        let (Some(fit), Some(last)) = (self.fit, self.last()) else {
            return u64::MAX;
        };
        let elapsed = now_sys_ns.abs_diff(last.sys_ns) as f64;
        let d = fit.spread_ns
            + last.uncertainty_ns as f64
            + elapsed * (fit.b_err + DRIFT_RATE_PPB * 1e-9);
        if d >= u64::MAX as f64 {
            u64::MAX
        } else {
            d.ceil() as u64
        }
    }

    fn compute_fit(&self) -> Option<Fit> {
        let last = self.last()?;
        let n = self.len;
        // Oldest first is not needed for the sums; iterate over the valid slots.
        let samples =
            (0..n).map(|i| self.ring[(self.next + TRACKER_SAMPLES - n + i) % TRACKER_SAMPLES]);
        let rel = |m: PhcMeasurement| {
            let x = (m.sys_ns as f64) - (last.sys_ns as f64);
            let y = (m.offset_ns as f64) - (last.offset_ns as f64);
            let u = m.uncertainty_ns as f64 + UNCERTAINTY_FLOOR_NS;
            (x, y, 1.0 / (u * u))
        };
        let (mut sw, mut swx, mut swy) = (0.0, 0.0, 0.0);
        for m in samples.clone() {
            let (x, y, w) = rel(m);
            sw += w;
            swx += w * x;
            swy += w * y;
        }
        let (xm, ym) = (swx / sw, swy / sw);
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for m in samples.clone() {
            let (x, y, w) = rel(m);
            sxx += w * (x - xm) * (x - xm);
            sxy += w * (x - xm) * (y - ym);
        }
        let b = if n >= 2 && sxx > 0.0 { sxy / sxx } else { 0.0 };
        let a = ym - b * xm;
        let (mut swr2, mut max_u) = (0.0, 0.0f64);
        for m in samples {
            let (x, y, w) = rel(m);
            let r = y - (a + b * x);
            swr2 += w * r * r;
            max_u = max_u.max(m.uncertainty_ns as f64);
        }
        let (spread_ns, b_err) = if n >= 3 && sxx > 0.0 {
            let dof = (n - 2) as f64;
            // Weighted residual variance, rescaled to the weighted mean weight.
            let s2 = swr2 / dof;
            ((swr2 / sw * n as f64 / dof).sqrt(), (s2 / sxx).sqrt())
        } else if n == 2 && sxx > 0.0 {
            // Two readings fit exactly; bound the slope by their uncertainties.
            let span = (sxx / sw).sqrt() * 2.0;
            (0.0, 2.0 * max_u / span)
        } else {
            (0.0, UNKNOWN_FREQ_ERROR)
        };
        Some(Fit {
            anchor_sys_ns: last.sys_ns,
            anchor_offset_ns: last.offset_ns,
            a,
            b,
            spread_ns,
            b_err,
        })
    }
}

impl Fit {
    /// Predicted absolute offset at system time `sys_ns`, ns (as `f64`).
    fn predict_offset(&self, sys_ns: i64) -> f64 {
        let x = (sys_ns as f64) - (self.anchor_sys_ns as f64);
        self.anchor_offset_ns as f64 + self.a + self.b * x
    }
}

/// TAI seconds to UTC seconds, given TAI − UTC (37 s since 2017; the kernel's
/// `adjtimex` `tai` field, or configured). For a PHC that is itself the
/// reference and runs in TAI, as a PTP daemon keeps it. Leap-second
/// ambiguity (the repeated UTC second) is not handled here.
pub fn tai_to_utc(tai_secs: i64, tai_offset: i32) -> i64 {
    tai_secs.saturating_sub(i64::from(tai_offset))
}

/// UTC seconds to TAI seconds, given TAI − UTC; the inverse of [`tai_to_utc`].
pub fn utc_to_tai(utc_secs: i64, tai_offset: i32) -> i64 {
    utc_secs.saturating_add(i64::from(tai_offset))
}

/// `(seconds, nanoseconds)` to nanoseconds since the epoch; `None` outside
/// `i64` range (years beyond 1677..2262). Nanoseconds above 1e9 carry.
pub fn timespec_to_ns(ts: (i64, u32)) -> Option<i64> {
    i64::try_from(timespec_to_ns_i128(ts)).ok()
}

/// Nanoseconds since the epoch to `(seconds, nanoseconds below 1e9)`;
/// negative times give negative seconds and positive nanoseconds.
pub fn ns_to_timespec(ns: i64) -> (i64, u32) {
    (
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// Adds a signed number of nanoseconds to `(seconds, nanoseconds)`,
/// normalising the result (saturating at the `i64` seconds range).
pub fn add_ns(ts: (i64, u32), ns: i64) -> (i64, u32) {
    let total = timespec_to_ns_i128(ts) + i128::from(ns);
    ns_i128_to_timespec(total).unwrap_or(if ns < 0 {
        (i64::MIN, 0)
    } else {
        (i64::MAX, 999_999_999)
    })
}

fn timespec_to_ns_i128(ts: (i64, u32)) -> i128 {
    i128::from(ts.0) * NANOS_PER_SEC + i128::from(ts.1)
}

fn ns_i128_to_timespec(ns: i128) -> Option<(i64, u32)> {
    let secs = i64::try_from(ns.div_euclid(NANOS_PER_SEC)).ok()?;
    Some((secs, ns.rem_euclid(NANOS_PER_SEC) as u32))
}

fn clamp_i64(v: f64) -> i64 {
    // `as` saturates for out-of-range floats and maps NaN to 0.
    v as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * SEC;
    const TAI_OFFSET_NS: i64 = 37 * SEC;

    /// Deterministic noise in [-amp, amp] (xorshift).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self, amp: i64) -> i64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % (2 * amp as u64 + 1)) as i64 - amp
        }
    }

    /// A PHC in TAI running 50 ppm fast: true offset at system time t.
    fn true_offset(t: i64) -> i64 {
        TAI_OFFSET_NS + 1234 + (t - T0) / 20_000 // 50 ppm = 1/20000
    }

    fn fill(tracker: &mut PhcTracker, n: usize, noise_amp: i64, seed: u64) -> i64 {
        let mut noise = Noise(seed);
        let mut t = T0;
        for i in 0..n {
            t = T0 + i as i64 * SEC + noise.next(1000); // poll jitter
            let m = PhcMeasurement {
                sys_ns: t,
                offset_ns: true_offset(t) + noise.next(noise_amp),
                uncertainty_ns: noise_amp as u64,
            };
            assert_eq!(tracker.add(m), TrackOutcome::Accepted, "reading {i}");
        }
        t
    }

    #[test]
    fn empty_tracker_knows_nothing() {
        let t = PhcTracker::new();
        assert!(t.is_empty());
        assert_eq!(t.phc_to_realtime((1_700_000_037, 0)), None);
        assert_eq!(t.realtime_to_phc((1_700_000_000, 0)), None);
        assert_eq!(t.offset_at(T0), None);
        assert_eq!(t.dispersion(T0), u64::MAX);
        assert!(!t.healthy(T0));
        assert_eq!(t.frequency_ppb(), None);
    }

    #[test]
    fn tracks_tai_phc_at_50_ppm_within_a_few_ns() {
        let mut tr = PhcTracker::new();
        let last = fill(&mut tr, 40, 10, 0x1234_5678_9abc_def1);
        assert_eq!(tr.len(), TRACKER_SAMPLES);
        let ppb = tr.frequency_ppb().unwrap();
        assert!((ppb - 50_000.0).abs() < 5.0, "frequency {ppb} ppb");
        // Half a second after the last reading.
        let sys = last + SEC / 2;
        let phc = sys + true_offset(sys);
        let (s, ns) = tr.phc_to_realtime(ns_to_timespec(phc)).unwrap();
        let got = s * SEC + i64::from(ns);
        assert!((got - sys).abs() <= 5, "error {} ns", got - sys);
        // And back.
        let (ps, pns) = tr.realtime_to_phc(ns_to_timespec(sys)).unwrap();
        assert!((ps * SEC + i64::from(pns) - phc).abs() <= 5);
        assert!(tr.healthy(sys));
        let disp = tr.dispersion(sys);
        // spread (~6 ns) + uncertainty (10 ns) + 0.5 s * (tiny + 100 ppb) = ~66 ns
        assert!((60..200).contains(&disp), "dispersion {disp}");
        // Dispersion grows with time since the last reading.
        assert!(tr.dispersion(sys + 10 * SEC) > disp + 900);
    }

    #[test]
    fn two_readings_give_frequency_and_exact_interpolation() {
        let mut tr = PhcTracker::new();
        for t in [T0, T0 + SEC] {
            tr.add(PhcMeasurement {
                sys_ns: t,
                offset_ns: true_offset(t),
                uncertainty_ns: 0,
            });
        }
        assert!((tr.frequency_ppb().unwrap() - 50_000.0).abs() < 1e-3);
        assert_eq!(tr.offset_at(T0 + 2 * SEC), Some(true_offset(T0 + 2 * SEC)));
        assert!(
            !tr.healthy(T0 + SEC),
            "needs {MIN_HEALTHY_SAMPLES} readings"
        );
    }

    #[test]
    fn single_reading_converts_with_large_dispersion() {
        let mut tr = PhcTracker::new();
        tr.add(PhcMeasurement {
            sys_ns: T0,
            offset_ns: TAI_OFFSET_NS,
            uncertainty_ns: 100,
        });
        assert_eq!(
            tr.phc_to_realtime((1_700_000_037, 5)),
            Some((1_700_000_000, 5))
        );
        // 1 s without a frequency estimate: 500 ppm -> 500 us of dispersion.
        let d = tr.dispersion(T0 + SEC);
        assert!(d > 500_000 && d < 501_000, "{d}");
    }

    #[test]
    fn jump_resets_and_reports() {
        let mut tr = PhcTracker::new();
        let last = fill(&mut tr, 10, 50, 7);
        let t = last + SEC;
        let stepped = true_offset(t) + 2 * SEC; // PHC stepped by 2 s
        let out = tr.add(PhcMeasurement {
            sys_ns: t,
            offset_ns: stepped,
            uncertainty_ns: 50,
        });
        match out {
            TrackOutcome::Jump {
                predicted_offset_ns,
                measured_offset_ns,
            } => {
                assert_eq!(measured_offset_ns, stepped);
                assert!((predicted_offset_ns - true_offset(t)).abs() < 100);
            }
            other => panic!("expected a jump, got {other:?}"),
        }
        assert!(out.is_reset());
        assert_eq!(tr.len(), 1);
        assert!(!tr.healthy(t));
        // Tracking restarts around the new offset.
        assert_eq!(tr.offset_at(t), Some(stepped));
        for i in 1..MIN_HEALTHY_SAMPLES as i64 {
            let ti = t + i * SEC;
            let o = tr.add(PhcMeasurement {
                sys_ns: ti,
                offset_ns: true_offset(ti) + 2 * SEC,
                uncertainty_ns: 50,
            });
            assert_eq!(o, TrackOutcome::Accepted);
        }
        assert!(tr.healthy(t + 3 * SEC));
    }

    #[test]
    fn noise_and_small_steps_are_not_jumps() {
        let mut tr = PhcTracker::new();
        let last = fill(&mut tr, 10, 50, 99);
        // 500 us off: far outside 10x the spread, but under the 1 ms floor.
        let t = last + SEC;
        let o = tr.add(PhcMeasurement {
            sys_ns: t,
            offset_ns: true_offset(t) + 500_000,
            uncertainty_ns: 50,
        });
        assert_eq!(o, TrackOutcome::Accepted);
        assert_eq!(tr.len(), 11);
        // The spread shows it.
        assert!(tr.spread_ns().unwrap() > 10_000.0);
    }

    #[test]
    fn noisy_clock_needs_ten_times_its_spread() {
        // A clock read with ~0.5 ms windows (a slow PHC under emulation):
        // a 3 ms excursion is over 1 ms but within 10x the expected error.
        let mut tr = PhcTracker::new();
        let last = fill(&mut tr, 10, 500_000, 3);
        let t = last + SEC;
        let o = tr.add(PhcMeasurement {
            sys_ns: t,
            offset_ns: true_offset(t) + 3_000_000,
            uncertainty_ns: 500_000,
        });
        assert_eq!(o, TrackOutcome::Accepted);
    }

    #[test]
    fn system_clock_stepped_back_resets() {
        let mut tr = PhcTracker::new();
        let last = fill(&mut tr, 5, 10, 5);
        let o = tr.add(PhcMeasurement {
            sys_ns: last - 3 * SEC,
            offset_ns: TAI_OFFSET_NS,
            uncertainty_ns: 10,
        });
        assert_eq!(
            o,
            TrackOutcome::ClockWentBack {
                by_ns: 3_000_000_000
            }
        );
        assert_eq!(tr.len(), 1);
    }

    #[test]
    fn unhealthy_when_readings_stop() {
        let mut tr = PhcTracker::with_max_age(3 * SEC as u64);
        let last = fill(&mut tr, 6, 10, 11);
        assert!(tr.healthy(last + 3 * SEC));
        assert!(!tr.healthy(last + 3 * SEC + 1));
    }

    #[test]
    fn window_keeps_the_newest_readings() {
        let mut tr = PhcTracker::new();
        // 20 readings; the first 4 are 0.5 ms off the later trend (not enough
        // for a jump) and would bias the fit if they were kept.
        for i in 0..(TRACKER_SAMPLES as i64 + 4) {
            let t = T0 + i * SEC;
            let bias = if i < 4 { 500_000 } else { 0 };
            let o = tr.add(PhcMeasurement {
                sys_ns: t,
                offset_ns: 1000 * i + bias,
                uncertainty_ns: 0,
            });
            assert_eq!(o, TrackOutcome::Accepted);
        }
        assert_eq!(tr.len(), TRACKER_SAMPLES);
        assert!((tr.frequency_ppb().unwrap() - 1000.0).abs() < 1e-6);
        assert_eq!(
            tr.last().unwrap().sys_ns,
            T0 + (TRACKER_SAMPLES as i64 + 3) * SEC
        );
    }

    #[test]
    fn conversion_across_second_boundary_and_negative_offsets() {
        let mut tr = PhcTracker::new();
        // PHC 300 ns behind the system clock, no drift.
        for i in 0..4 {
            tr.add(PhcMeasurement {
                sys_ns: T0 + i * SEC,
                offset_ns: -300,
                uncertainty_ns: 0,
            });
        }
        // PHC 1700000005.999999900 -> system .000000200 of the next second.
        assert_eq!(
            tr.phc_to_realtime((1_700_000_005, 999_999_900)),
            Some((1_700_000_006, 200))
        );
        assert_eq!(
            tr.realtime_to_phc((1_700_000_006, 200)),
            Some((1_700_000_005, 999_999_900))
        );
        // PHC ahead by 300 ns: .000000100 -> previous second.
        let mut tr = PhcTracker::new();
        tr.add(PhcMeasurement {
            sys_ns: T0,
            offset_ns: 300,
            uncertainty_ns: 0,
        });
        assert_eq!(
            tr.phc_to_realtime((1_700_000_001, 100)),
            Some((1_700_000_000, 999_999_800))
        );
        // Before 1970: negative seconds, nanoseconds stay in [0, 1e9).
        let mut tr = PhcTracker::new();
        tr.add(PhcMeasurement {
            sys_ns: -SEC,
            offset_ns: -SEC / 2,
            uncertainty_ns: 0,
        });
        assert_eq!(tr.phc_to_realtime((-2, 500_000_000)), Some((-1, 0)));
        assert_eq!(tr.phc_to_realtime((-1, 0)), Some((-1, 500_000_000)));
    }

    #[test]
    fn tai_utc() {
        assert_eq!(tai_to_utc(1_700_000_037, 37), 1_700_000_000);
        assert_eq!(utc_to_tai(1_700_000_000, 37), 1_700_000_037);
        assert_eq!(tai_to_utc(10, 37), -27);
        assert_eq!(tai_to_utc(i64::MIN, 37), i64::MIN);
    }

    #[test]
    fn timespec_helpers() {
        assert_eq!(timespec_to_ns((1, 5)), Some(SEC + 5));
        assert_eq!(timespec_to_ns((-1, 999_999_999)), Some(-1));
        assert_eq!(timespec_to_ns((i64::MAX, 0)), None);
        assert_eq!(ns_to_timespec(-1), (-1, 999_999_999));
        assert_eq!(ns_to_timespec(-SEC), (-1, 0));
        assert_eq!(add_ns((5, 999_999_999), 2), (6, 1));
        assert_eq!(add_ns((5, 1), -2), (4, 999_999_999));
        assert_eq!(add_ns((i64::MAX, 999_999_999), 1), (i64::MAX, 999_999_999));
    }
}
