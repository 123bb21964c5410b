//! The send latency of basic replies: how long after the pre-send clock
//! reading the kernel (or NIC) stamps a reply as transmitted.
//!
//! A basic reply can only carry a reading taken before the send. Adding an
//! estimate of the send latency moves it towards the real transmit time, but an
//! estimate that lands *after* the real transmit time is worse than none: the
//! client's round-trip delay then shrinks below what the path takes, and NTP
//! clients (chrony's and ntpd's clock filters) prefer exactly those
//! shortest-delay samples, so such an overshoot becomes the client's offset.
//!
//! So the estimate is the *fastest* recent latency measured in the same
//! situation, not their mean or median (the shortest-delay samples a client's
//! filter prefers are exactly the ones an overshoot would create):
//!
//! * the situation ([`Situation`]) is the reply's place (0: a lone basic reply sent
//!   directly with its own `sendmsg` right after the reading; 1, 2, ...: the
//!   replies of a batch, which share one reading and leave through the ring
//!   one after the other) and how long the worker was idle before the send (a
//!   send after a pause is slower: cold caches, a lower CPU frequency, a
//!   deeper C-state);
//! * each situation keeps its last [`WINDOW`] measured latencies, with the time
//!   they were measured; only samples younger than [`MAX_AGE_NS`] count;
//! * within a place class the latency still grows with the place (each send
//!   of a batch takes a few microseconds), so each idle class has a slope
//!   `step` per place, refitted about once a second as the median of the
//!   slopes between the place classes' median latencies; a sample is kept as
//!   its residual `latency - step * place`;
//! * with at least [`MIN_SAMPLES`] fresh samples the situation's base is the
//!   smallest residual less the gap to the second smallest, at most 2 us
//!   (`floor`), and
//!   the estimate for a reply at `place` is `base + step * place`: after the
//!   real transmit time only for a send faster than the fastest of the
//!   window by more than that gap (without the gap about one in `n + 1`
//!   would be); the price is that the median error is the distance from the
//!   fastest send to the median one;
//! * a situation without enough fresh samples borrows the estimate of a
//!   situation that is faster (an earlier place in the batch: its estimate
//!   at its own last place; else the same place after a shorter idle time),
//!   which stays before its own real transmit time; with none,
//!   the estimate is 0 (the bare pre-send reading, always before the real
//!   transmit time).
//!
//! The samples come from the transmit timestamps interleaved mode asks for
//! anyway, and from basic replies asking for one: at most one per
//! [`SAMPLE_INTERVAL_NS`] per situation and socket, so at low request rates
//! (an idle server with a handful of clients) every basic reply is measured,
//! and under load a bounded number per second are.
//!
//! Adding a sample scans at most [`WINDOW`] values (a few hundred
//! nanoseconds, at most once per sample); reading an estimate is an array
//! lookup. Nothing here allocates after construction or takes a lock.

use crate::protocol::NtpTimestamp;

/// Idle time before a batch (since the worker's previous send) that makes it
/// "warm" below, "cold" from here on. (A third class from 50 ms on measured
/// no different from 0.2-50 ms here, and starved the sparser of the two.)
pub const COLD_AFTER_NS: i64 = 200_000;
/// Idle classes: warm, cold.
pub const IDLE_CLASSES: usize = 2;
/// Place classes: 0, 1, 2, 3, 4-5, 6-7, 8-11, 12-15, 16-23, 24-31, 32-47,
/// 48-63, 64 and later.
pub const PLACE_CLASSES: usize = 13;
/// The last place of each place class but the open-ended last one.
const LAST_PLACE: [i64; PLACE_CLASSES - 1] = [0, 1, 2, 3, 5, 7, 11, 15, 23, 31, 47, 63];
/// Situations tracked per socket.
pub const SITUATIONS: usize = IDLE_CLASSES * PLACE_CLASSES;
/// Samples kept per situation.
pub const WINDOW: usize = 64;
/// Fresh samples a situation needs before it has its own estimate (a basic
/// client alone polling every 64 s gives about 9 in [`MAX_AGE_NS`]).
pub const MIN_SAMPLES: usize = 8;
/// Samples older than this no longer count (10 minutes: a basic client
/// polling every 64 s alone on a server still gives enough).
pub const MAX_AGE_NS: i64 = 600_000_000_000;
/// At most one basic reply per situation and socket asks for its transmit
/// timestamp in this interval (so at most `SITUATIONS * 1e9 / this` a second).
pub const SAMPLE_INTERVAL_NS: i64 = 5_000_000;
/// Latencies outside `0..this` are discarded (a stalled thread, a clock step).
pub const MAX_LATENCY_NS: i64 = 1_000_000;
/// The furthest an estimate's base goes below the fastest fresh sample (see
/// `floor`). In replays of the recorded latencies of 12 accuracy runs (idle
/// and loaded, 2^-6 s and 1 s polls) a cap of 2 us left the share of
/// estimates after the real transmit time as it was (within 0.1 points).
pub const MAX_BELOW_FASTEST_NS: i64 = 2_000;
/// The largest time per place in a batch the fit accepts.
pub const MAX_STEP_NS: i64 = 100_000;

/// The situation of a reply when it is sent: its idle class and place class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Situation(u8);

impl Situation {
    /// The situation of the reply at `place` in its batch (0: first to go out),
    /// sent after the worker was idle for `idle_ns` (negative or 0: it sent
    /// something during this same turn).
    pub fn new(idle_ns: i64, place: usize) -> Self {
        Self::of_classes(usize::from(idle_ns >= COLD_AFTER_NS), place)
    }

    /// The same idle class at another place in the batch.
    pub fn at_place(self, place: usize) -> Self {
        Self::of_classes(self.idle_class(), place)
    }

    fn of_classes(idle: usize, place: usize) -> Self {
        let place = match place {
            0..=3 => place,
            4..=5 => 4,
            6..=7 => 5,
            8..=11 => 6,
            12..=15 => 7,
            16..=23 => 8,
            24..=31 => 9,
            32..=47 => 10,
            48..=63 => 11,
            _ => 12,
        };
        Situation((idle * PLACE_CLASSES + place) as u8)
    }

    /// Index in `0..SITUATIONS`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Idle class: 0 warm, 1 cold.
    pub fn idle_class(self) -> usize {
        self.index() / PLACE_CLASSES
    }

    /// Sent after the worker was idle for [`COLD_AFTER_NS`] or more.
    pub fn is_cold(self) -> bool {
        self.idle_class() == 1
    }

    /// Place class (0..PLACE_CLASSES).
    pub fn place_class(self) -> usize {
        self.index() % PLACE_CLASSES
    }
}

#[derive(Clone, Copy)]
struct Window {
    latency_ns: [i64; WINDOW],
    place: [u16; WINDOW],
    at: [NtpTimestamp; WINDOW],
    len: usize,
    next: usize,
    last_sampled: NtpTimestamp,
    /// The estimate from this situation's own fresh samples.
    own: Option<i64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            latency_ns: [0; WINDOW],
            place: [0; WINDOW],
            at: [NtpTimestamp::ZERO; WINDOW],
            len: 0,
            next: 0,
            last_sampled: NtpTimestamp::ZERO,
            own: None,
        }
    }
}

/// The base of an estimate from fresh residuals: the smallest, less the gap
/// to the second smallest (at most [`MAX_BELOW_FASTEST_NS`]). About one send
/// in `n + 1` is faster than the fastest of `n`; the gap at the bottom of the
/// sample is a measure of how much faster such a record can be, so going
/// below the minimum by that much keeps most of those before the real
/// transmit time too, for the price of a fraction of a microsecond when `n`
/// is large. The cap is for a fastest sample far below all the others (a
/// send that found the CPU warm by chance on an otherwise idle server): it is
/// itself the record to stay below, and going below it by its whole distance
/// to the rest again once took a 1 s-poll server's estimate from 23 us to
/// 1.4 us, all compensation gone for the window's 64 samples.
fn floor(residuals: &[i64]) -> i64 {
    let (mut min, mut second) = (i64::MAX, i64::MAX);
    for &r in residuals {
        if r < min {
            second = min;
            min = r;
        } else if r < second {
            second = r;
        }
    }
    // (Residuals may be negative: `latency - step * place` for a `step` a
    // little steep; `estimate` clamps the final latency, never the base.)
    match (min, second) {
        (i64::MAX, _) => 0,
        (m, i64::MAX) => m,
        (m, s) => m.saturating_sub(s.saturating_sub(m).min(MAX_BELOW_FASTEST_NS)),
    }
}

impl Window {
    fn push(&mut self, place: u16, latency_ns: i64, at: NtpTimestamp) {
        self.latency_ns[self.next] = latency_ns;
        self.place[self.next] = place;
        self.at[self.next] = at;
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
    }

    /// The fresh samples' `latency - step * place` into `out`; returns how many.
    fn fresh(&self, now: NtpTimestamp, step: i64, out: &mut [i64; WINDOW]) -> usize {
        let mut n = 0;
        for i in 0..self.len {
            if now.diff_nanos(self.at[i]) < MAX_AGE_NS {
                out[n] = self.latency_ns[i] - step * i64::from(self.place[i]);
                n += 1;
            }
        }
        n
    }

    fn recompute(&mut self, now: NtpTimestamp, step: i64) {
        let mut fresh = [0i64; WINDOW];
        let n = self.fresh(now, step, &mut fresh);
        self.own = (n >= MIN_SAMPLES).then(|| floor(&fresh[..n]));
    }

    /// The median latency and median place of the fresh samples, if enough.
    fn medians(&self, now: NtpTimestamp) -> Option<(i64, i64)> {
        let mut lat = [0i64; WINDOW];
        let n = self.fresh(now, 0, &mut lat);
        if n < MIN_SAMPLES {
            return None;
        }
        let mut place = [0i64; WINDOW];
        let mut m = 0;
        for i in 0..self.len {
            if now.diff_nanos(self.at[i]) < MAX_AGE_NS {
                place[m] = i64::from(self.place[i]);
                m += 1;
            }
        }
        let l = *lat[..n].select_nth_unstable(n / 2).1;
        let p = *place[..m].select_nth_unstable(m / 2).1;
        Some((l, p))
    }
}

/// The send-latency estimator of one socket (see the module documentation).
pub struct SendLatency {
    windows: [Window; SITUATIONS],
    /// Time per place in a batch, per idle class (ns).
    step: [i64; IDLE_CLASSES],
    /// What [`SendLatency::estimate`] uses per situation, `(base, step)`: its
    /// own or one borrowed from a faster situation.
    effective: [(i64, i64); SITUATIONS],
}

impl Default for SendLatency {
    fn default() -> Self {
        SendLatency {
            windows: [Window::default(); SITUATIONS],
            step: [0; IDLE_CLASSES],
            effective: [(0, 0); SITUATIONS],
        }
    }
}

impl SendLatency {
    /// Whether a basic reply in situation `s` should ask for its transmit
    /// timestamp at `now` (then counted as sampled).
    pub fn sample_due(&mut self, s: Situation, now: NtpTimestamp) -> bool {
        let w = &mut self.windows[s.index()];
        let due = w.last_sampled.is_zero()
            || !(0..SAMPLE_INTERVAL_NS).contains(&now.diff_nanos(w.last_sampled));
        if due {
            w.last_sampled = now;
        }
        due
    }

    /// Add one measured latency (exact transmit time minus pre-send reading)
    /// of a reply sent in situation `s`, measured at `now`.
    /// of a reply sent at `place` in its batch in situation `s`, measured at
    /// `now`.
    pub fn add(&mut self, s: Situation, place: u16, latency_ns: i64, now: NtpTimestamp) {
        if !(0..MAX_LATENCY_NS).contains(&latency_ns) {
            return;
        }
        let step = self.step[s.idle_class()];
        let w = &mut self.windows[s.index()];
        w.push(place, latency_ns, now);
        w.recompute(now, step);
        self.relink();
    }

    /// Refit the time per place and drop samples that have grown too old
    /// (call about once a second: it costs a few microseconds).
    pub fn refit(&mut self, now: NtpTimestamp) {
        for idle in 0..IDLE_CLASSES {
            let classes = &self.windows[idle * PLACE_CLASSES..(idle + 1) * PLACE_CLASSES];
            let mut medians = [(0i64, 0i64); PLACE_CLASSES];
            let mut n = 0;
            for w in classes {
                if let Some(m) = w.medians(now) {
                    medians[n] = m;
                    n += 1;
                }
            }
            let mut slopes = [0i64; PLACE_CLASSES * PLACE_CLASSES];
            let mut k = 0;
            for (i, a) in medians[..n].iter().enumerate() {
                for b in &medians[i + 1..n] {
                    if b.1 != a.1 {
                        slopes[k] = (b.0 - a.0) / (b.1 - a.1);
                        k += 1;
                    }
                }
            }
            if k > 0 {
                let median = *slopes[..k].select_nth_unstable(k / 2).1;
                self.step[idle] = median.clamp(0, MAX_STEP_NS);
            }
            let step = self.step[idle];
            for w in &mut self.windows[idle * PLACE_CLASSES..(idle + 1) * PLACE_CLASSES] {
                w.recompute(now, step);
            }
        }
        self.relink();
    }

    /// Fill in `effective`: a situation without its own estimate borrows the
    /// next faster one's (earlier place, then shorter idle time), else 0.
    fn relink(&mut self) {
        for idle in 0..IDLE_CLASSES {
            for place in 0..PLACE_CLASSES {
                let i = idle * PLACE_CLASSES + place;
                self.effective[i] = match self.windows[i].own {
                    Some(v) => (v, self.step[idle]),
                    // The earlier class's estimate at its own last place, not
                    // extrapolated along the step: never more than it.
                    None if place > 0 => {
                        let (base, step) = self.effective[i - 1];
                        (base + step * LAST_PLACE[place - 1], 0)
                    }
                    None if idle > 0 => self.effective[i - PLACE_CLASSES],
                    None => (0, 0),
                };
            }
        }
    }

    /// The latency to add to the pre-send reading of the reply at `place` in
    /// its batch in situation `s`, in ns (0 when nothing fresh is known).
    #[inline]
    pub fn estimate(&self, s: Situation, place: u16) -> i64 {
        let (base, step) = self.effective[s.index()];
        base.saturating_add(step.saturating_mul(i64::from(place)))
            .clamp(0, MAX_LATENCY_NS)
    }

    /// The fitted time per place in a batch for idle class `idle` (ns).
    pub fn step(&self, idle: usize) -> i64 {
        self.step[idle]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn t(ns: i64) -> NtpTimestamp {
        NtpTimestamp::from_unix(1_800_000_000, 0).add_nanos(ns)
    }

    #[test]
    fn situations() {
        assert_eq!(Situation::new(-5, 0).index(), 0);
        assert_eq!(Situation::new(0, 3).place_class(), 3);
        assert_eq!(Situation::new(COLD_AFTER_NS - 1, 9).idle_class(), 0);
        assert_eq!(Situation::new(COLD_AFTER_NS, 9).idle_class(), 1);
        assert_eq!(Situation::new(COLD_AFTER_NS, 9).place_class(), 6);
        let cold = Situation::new(60_000_000_000, 1000);
        assert_eq!(
            (cold.idle_class(), cold.place_class()),
            (1, PLACE_CLASSES - 1)
        );
        assert_eq!(cold.index(), SITUATIONS - 1);
        assert_eq!(cold.at_place(5), Situation::new(COLD_AFTER_NS, 5));
        assert_eq!(Situation::new(0, 70).at_place(0), Situation::new(0, 0));
    }

    #[test]
    fn nothing_known_means_no_compensation() {
        let mut l = SendLatency::default();
        let s = Situation::new(0, 0);
        for i in 0..MIN_SAMPLES as i64 - 1 {
            l.add(s, 0, 20_000, t(i));
        }
        assert_eq!(l.estimate(s, 0), 0, "too few samples");
        l.add(s, 0, 20_000, t(10));
        assert_eq!(l.estimate(s, 0), 20_000);
    }

    #[test]
    fn the_fastest_fresh_sample_never_the_mean() {
        let mut l = SendLatency::default();
        let s = Situation::new(0, 0);
        // 64 samples 20.0..=51.5 us, shuffled, plus out-of-range ones.
        for i in 0..WINDOW as i64 {
            l.add(s, 0, 20_000 + 500 * ((i * 13) % 64), t(i));
        }
        l.add(s, 0, -5, t(70));
        l.add(s, 0, 2 * MAX_LATENCY_NS, t(71));
        // The smallest (20.0) less the gap to the next (0.5).
        assert_eq!(l.estimate(s, 0), 19_500);
        // The window moves on: 20.0 us was the oldest; now 20.5 and 21.0.
        l.add(s, 0, 60_000, t(72));
        assert_eq!(l.estimate(s, 0), 20_000);
        // 8 samples: the smallest less the gap to the second.
        let mut l = SendLatency::default();
        for x in [
            30_000, 24_000, 26_000, 22_000, 40_000, 25_000, 23_000, 27_000,
        ] {
            l.add(s, 0, x, t(0));
        }
        assert_eq!(l.estimate(s, 0), 21_000);
        assert_eq!(floor(&[]), 0);
        assert_eq!(floor(&[5]), 5);
        assert_eq!(floor(&[10, 30]), -10, "a base, clamped only in `estimate`");
        assert_eq!(floor(&[-500, 200]), -1200);
        // A lone fast sample far below the rest: at most 2 us below it.
        let mut lone = [28_000i64; 20];
        lone[7] = 12_400;
        assert_eq!(floor(&lone), 12_400 - MAX_BELOW_FASTEST_NS);
        assert_eq!(floor(&[7, 7, 9]), 7);
    }

    /// Never later than the real transmit time of more than the quantile's
    /// share of replies, for a wide distribution with slow outliers.
    #[test]
    fn few_estimates_pass_the_real_time() {
        let mut l = SendLatency::default();
        let s = Situation::new(0, 0);
        let mut x: u64 = 12345;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (x >> 33) as i64 % 10_000;
            // 15..25 us, every 10th 100 us more
            15_000 + u + if (x >> 20) % 10 == 0 { 100_000 } else { 0 }
        };
        let (mut ahead, mut total) = (0, 0);
        for i in 0..2000 {
            let real = next();
            if i >= WINDOW {
                total += 1;
                if l.estimate(s, 0) > real {
                    ahead += 1;
                }
            }
            l.add(s, 0, real, t(i as i64 * 1000));
        }
        // Fewer than the 1 in WINDOW + 1 that is faster than the fastest.
        let share = f64::from(ahead) / f64::from(total);
        assert!(share < 0.015, "{ahead} of {total}");
    }

    #[test]
    fn old_samples_expire() {
        let mut l = SendLatency::default();
        let s = Situation::new(COLD_AFTER_NS, 0);
        for i in 0..10 {
            l.add(s, 0, 30_000, t(i * 64 * SEC));
        }
        assert_eq!(l.estimate(s, 0), 30_000, "10 samples within 10 min");
        l.refit(t(9 * 64 * SEC + MAX_AGE_NS));
        assert_eq!(l.estimate(s, 0), 0, "all older than MAX_AGE_NS");
    }

    #[test]
    fn borrows_from_faster_situations_only() {
        let mut l = SendLatency::default();
        let warm0 = Situation::new(0, 0);
        let warm5 = Situation::new(0, 5);
        let cold0 = Situation::new(COLD_AFTER_NS, 0);
        let cold9 = Situation::new(COLD_AFTER_NS, 9);
        for i in 0..MIN_SAMPLES as i64 {
            l.add(warm0, 0, 10_000, t(i));
        }
        assert_eq!(l.estimate(warm5, 5), 10_000, "earlier place");
        assert_eq!(l.estimate(cold0, 0), 10_000, "shorter idle time");
        assert_eq!(l.estimate(cold9, 9), 10_000);
        for i in 0..MIN_SAMPLES as i64 {
            l.add(cold0, 0, 25_000, t(i));
        }
        assert_eq!(l.estimate(cold9, 9), 25_000);
        assert_eq!(l.estimate(warm5, 5), 10_000, "never from a slower one");
    }

    /// Under load the latency grows with the place in the batch; the fit
    /// finds the slope and the estimate follows it, staying below the
    /// fastest sends at each place.
    #[test]
    fn follows_the_place_in_the_batch() {
        let mut l = SendLatency::default();
        let mut x: u64 = 99;
        let mut jitter = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as i64 % 3_000
        };
        let truth = |p: u16| 10_000 + 2_500 * i64::from(p);
        for round in 0..1100u16 {
            for p in [0u16, 1, 3, 6, 12, 25, 40, round % 64] {
                let s = Situation::new(0, usize::from(p));
                l.add(s, p, truth(p) + jitter(), t(i64::from(round) * 1000));
            }
            if round % 50 == 49 {
                l.refit(t(i64::from(round) * 1000));
            }
        }
        let step = l.step(0);
        assert!((2_200..=2_800).contains(&step), "step {step}");
        for p in [0u16, 2, 5, 9, 20, 33, 63] {
            let est = l.estimate(Situation::new(0, usize::from(p)), p);
            assert!(
                // below the 1/3 quantile of the real sends (jitter 0..3 us)
                (truth(p) - 2_500..=truth(p) + 1_000).contains(&est),
                "place {p}: estimate {est}, truth {}",
                truth(p)
            );
        }
    }

    #[test]
    fn sampling_is_per_situation_and_bounded() {
        let mut l = SendLatency::default();
        let a = Situation::new(0, 0);
        let b = Situation::new(0, 4);
        assert!(l.sample_due(a, t(0)));
        assert!(!l.sample_due(a, t(SAMPLE_INTERVAL_NS - 2)));
        assert!(l.sample_due(b, t(1)), "its own budget");
        assert!(l.sample_due(a, t(SAMPLE_INTERVAL_NS + 1)));
        assert!(l.sample_due(a, t(0)), "a clock stepped back");
    }
}
