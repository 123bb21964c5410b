//! PTP hardware clocks (PHC, `/dev/ptpN`): reading their offset from the system clock.
//!
//! * [`PhcDevice`]: the four ioctls hwntpd needs, as a trait so the logic above
//!   them runs against fakes ([`RecordedPhc`]) as well as the real device
//!   ([`PhcFile`]).
//! * [`PhcReader`]: picks the best offset method the device supports at
//!   start-up ([`OffsetMethod`]: `PTP_SYS_OFFSET_PRECISE`, else `_EXTENDED`,
//!   else the basic `PTP_SYS_OFFSET`) and turns each poll into one
//!   [`PhcMeasurement`] for the [`PhcTracker`](super::tracking::PhcTracker).
//!
//! How a poll becomes a measurement:
//! * precise (hardware cross-timestamp, e.g. PCIe PTM / Intel ART): the device
//!   time and the system time of the same instant; uncertainty
//!   [`PRECISE_UNCERTAINTY_NS`].
//! * extended / basic: `n` readings of (system before, PHC, system after). The
//!   narrowest window wins (least disturbed by interrupts and bus latency); the
//!   PHC is assumed read at the window's midpoint, so the offset is
//!   PHC − midpoint and the uncertainty half the window.

use std::fmt;
use std::io;

use super::tracking::PhcMeasurement;

mod file;
mod recorded;

pub use file::{fd_to_clockid, phc_path, PhcFile};
pub use recorded::{RecordedPhc, IGB_VM_CAPS};

/// The kernel's limit on readings per `PTP_SYS_OFFSET*` request (`PTP_MAX_SAMPLES`).
pub const PTP_MAX_SAMPLES: usize = 25;

/// Readings per poll for the extended and basic methods.
pub const DEFAULT_SAMPLES: u32 = 9;

/// Uncertainty given to a precise (cross-timestamped) reading, ns: the
/// hardware latches both clocks together; what remains is the granularity
/// of the device and system counters (a few ns).
pub const PRECISE_UNCERTAINTY_NS: u64 = 10;

/// A time as the PTP ioctls carry it (`struct ptp_clock_time`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PtpTime {
    /// Seconds (for the system clock, since the Unix epoch).
    pub sec: i64,
    /// Nanoseconds, normally below 1e9.
    pub nsec: u32,
}

impl PtpTime {
    /// A time from seconds and nanoseconds.
    pub const fn new(sec: i64, nsec: u32) -> Self {
        PtpTime { sec, nsec }
    }

    /// Nanoseconds since the epoch, widened so no value overflows.
    pub fn as_nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }

    /// As a `(seconds, nanoseconds)` pair.
    pub fn to_pair(self) -> (i64, u32) {
        (self.sec, self.nsec)
    }
}

/// What a PHC can do (`struct ptp_clock_caps`, the fields hwntpd cares about).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhcCaps {
    /// Maximum frequency adjustment, parts per billion.
    pub max_adj_ppb: i32,
    /// Programmable alarms.
    pub n_alarm: i32,
    /// External timestamp channels.
    pub n_ext_ts: i32,
    /// Programmable periodic outputs.
    pub n_per_out: i32,
    /// Whether the clock can raise PPS events.
    pub pps: bool,
    /// Programmable pins.
    pub n_pins: i32,
    /// Whether the driver offers precise cross-timestamps (`PTP_SYS_OFFSET_PRECISE`).
    /// Even then the call can fail (e.g. when the system clocksource is not the TSC).
    pub cross_timestamping: bool,
    /// Whether the clock can adjust its phase.
    pub adjust_phase: bool,
    /// Maximum phase adjustment, ns.
    pub max_phase_adj_ns: i32,
}

/// A precise cross-timestamp (`struct ptp_sys_offset_precise`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreciseSample {
    /// The PHC time.
    pub device: PtpTime,
    /// `CLOCK_REALTIME` at the same instant.
    pub sys_realtime: PtpTime,
    /// `CLOCK_MONOTONIC_RAW` at the same instant.
    pub sys_monoraw: PtpTime,
}

/// One reading of the PHC between two readings of `CLOCK_REALTIME`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// System time just before the PHC was read.
    pub sys_before: PtpTime,
    /// The PHC time.
    pub phc: PtpTime,
    /// System time just after.
    pub sys_after: PtpTime,
}

impl Reading {
    /// A reading from `(seconds, nanoseconds)` triples.
    pub const fn new(sys_before: (i64, u32), phc: (i64, u32), sys_after: (i64, u32)) -> Self {
        Reading {
            sys_before: PtpTime::new(sys_before.0, sys_before.1),
            phc: PtpTime::new(phc.0, phc.1),
            sys_after: PtpTime::new(sys_after.0, sys_after.1),
        }
    }

    /// The width of the system-time window, ns; `None` when the system clock
    /// went backwards during the reading (stepped) or a nanosecond field is invalid.
    pub fn window_ns(&self) -> Option<i128> {
        if self.sys_before.nsec >= 1_000_000_000
            || self.sys_after.nsec >= 1_000_000_000
            || self.phc.nsec >= 1_000_000_000
        {
            return None;
        }
        let w = self.sys_after.as_nanos() - self.sys_before.as_nanos();
        (w >= 0).then_some(w)
    }

    /// The measurement this reading gives: offset PHC − window midpoint,
    /// uncertainty half the window (rounded up). `None` for an invalid reading
    /// or one whose values do not fit in `i64` nanoseconds.
    pub fn measurement(&self) -> Option<PhcMeasurement> {
        let w = self.window_ns()?;
        let mid = self.sys_before.as_nanos() + w / 2;
        let offset = self.phc.as_nanos() - mid;
        Some(PhcMeasurement {
            sys_ns: i64::try_from(mid).ok()?,
            offset_ns: i64::try_from(offset).ok()?,
            uncertainty_ns: u64::try_from((w + 1) / 2).ok()?,
        })
    }
}

/// The measurement from the narrowest valid reading, if any.
pub fn best_measurement(readings: &[Reading]) -> Option<PhcMeasurement> {
    readings
        .iter()
        .filter_map(|r| Some((r.window_ns()?, r)))
        .min_by_key(|(w, _)| *w)
        .and_then(|(_, r)| r.measurement())
}

/// The ioctls hwntpd uses on a PTP hardware clock.
///
/// The readings methods fill `out` (at most [`PTP_MAX_SAMPLES`] entries are
/// asked for; the request size is `out.len()`) and return how many they filled.
pub trait PhcDevice {
    /// A name for log lines (the device path).
    fn name(&self) -> &str {
        "PHC"
    }

    /// `PTP_CLOCK_GETCAPS`. Fails with `ENOTTY` when the file is not a PHC.
    fn caps(&self) -> io::Result<PhcCaps>;

    /// `PTP_SYS_OFFSET_PRECISE`: a hardware cross-timestamp. `EOPNOTSUPP` on
    /// most NICs; `ENODEV` (or `EOPNOTSUPP`) when the system clocksource
    /// cannot be cross-timestamped (e.g. in a VM).
    fn offset_precise(&self) -> io::Result<PreciseSample>;

    /// `PTP_SYS_OFFSET_EXTENDED`: `out.len()` readings, each bracketed by
    /// system-time readings taken by the driver right around the PHC read.
    fn offset_extended(&self, out: &mut [Reading]) -> io::Result<usize>;

    /// `PTP_SYS_OFFSET`: interleaved system/PHC readings taken by the PTP
    /// core around the driver call (wider windows than extended).
    fn offset_basic(&self, out: &mut [Reading]) -> io::Result<usize>;
}

/// How offsets are read from the PHC, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OffsetMethod {
    /// `PTP_SYS_OFFSET_PRECISE` (hardware cross-timestamp).
    Precise,
    /// `PTP_SYS_OFFSET_EXTENDED` (driver-bracketed readings).
    Extended,
    /// `PTP_SYS_OFFSET` (core-bracketed readings).
    Basic,
}

impl OffsetMethod {
    /// The ioctl's name, for logs.
    pub fn ioctl_name(self) -> &'static str {
        match self {
            OffsetMethod::Precise => "PTP_SYS_OFFSET_PRECISE",
            OffsetMethod::Extended => "PTP_SYS_OFFSET_EXTENDED",
            OffsetMethod::Basic => "PTP_SYS_OFFSET",
        }
    }

    /// The next method to try when this one is refused.
    pub fn fallback(self) -> Option<OffsetMethod> {
        match self {
            OffsetMethod::Precise => Some(OffsetMethod::Extended),
            OffsetMethod::Extended => Some(OffsetMethod::Basic),
            OffsetMethod::Basic => None,
        }
    }

    /// Whether `err` from this method means "not supported here" (fall back)
    /// rather than a failure to report: `EOPNOTSUPP`, `EINVAL` (e.g. a kernel
    /// that checks reserved fields differently), `ENOTTY` (a kernel without
    /// the ioctl) and, for the precise method only, `ENODEV` (the system
    /// clocksource cannot be cross-timestamped).
    pub fn is_refusal(self, err: &io::Error) -> bool {
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY) => true,
            Some(libc::ENODEV) => self == OffsetMethod::Precise,
            _ => false,
        }
    }
}

impl fmt::Display for OffsetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OffsetMethod::Precise => "precise",
            OffsetMethod::Extended => "extended",
            OffsetMethod::Basic => "basic",
        })
    }
}

/// Reads PHC-to-system offsets with the best method the device supports.
#[derive(Debug)]
pub struct PhcReader<D> {
    device: D,
    caps: PhcCaps,
    method: OffsetMethod,
    samples: usize,
    buf: [Reading; PTP_MAX_SAMPLES],
}

impl<D: PhcDevice> PhcReader<D> {
    /// Probes `device` with [`DEFAULT_SAMPLES`] readings per poll; see [`Self::with_samples`].
    pub fn new(device: D) -> io::Result<Self> {
        Self::with_samples(device, DEFAULT_SAMPLES)
    }

    /// Probes `device`: reads its capabilities (failing if it is not a PHC),
    /// then tries the precise, extended and basic methods in that order and
    /// keeps the first that yields a valid measurement, logging the choice and
    /// why the better methods were passed over. Fails when none works.
    /// `samples` (readings per poll for extended/basic) is clamped to 1..=25.
    pub fn with_samples(device: D, samples: u32) -> io::Result<Self> {
        let caps = device.caps().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: PTP_CLOCK_GETCAPS failed (not a PTP clock?): {e}",
                    device.name()
                ),
            )
        })?;
        let mut reader = PhcReader {
            device,
            caps,
            method: OffsetMethod::Precise,
            samples: (samples as usize).clamp(1, PTP_MAX_SAMPLES),
            buf: [Reading::default(); PTP_MAX_SAMPLES],
        };
        let mut refused = String::new();
        let mut method = Some(OffsetMethod::Precise);
        while let Some(m) = method {
            match reader.measure(m) {
                Ok(_) => {
                    reader.method = m;
                    tracing::info!(
                        phc = reader.device.name(),
                        method = %m,
                        max_adj_ppb = caps.max_adj_ppb,
                        cross_timestamping = caps.cross_timestamping,
                        refused = refused.as_str(),
                        "PHC offsets via {}",
                        m.ioctl_name()
                    );
                    return Ok(reader);
                }
                Err(e) => {
                    if !refused.is_empty() {
                        refused.push_str("; ");
                    }
                    refused.push_str(&format!("{}: {e}", m.ioctl_name()));
                    method = m.fallback();
                }
            }
        }
        Err(io::Error::other(format!(
            "{}: no way to read the PHC offset works ({refused})",
            reader.device.name()
        )))
    }

    /// The method in use.
    pub fn method(&self) -> OffsetMethod {
        self.method
    }

    /// The capabilities read at start-up.
    pub fn caps(&self) -> &PhcCaps {
        &self.caps
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Readings per poll for the extended and basic methods.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// One measurement of PHC − `CLOCK_REALTIME`. If the method in use starts
    /// refusing (see [`OffsetMethod::is_refusal`]), falls back to the next one
    /// for good (with a warning) and retries within this call. No allocation.
    pub fn poll(&mut self) -> io::Result<PhcMeasurement> {
        loop {
            match self.measure(self.method) {
                Ok(m) => return Ok(m),
                Err(e) => match self.method.fallback() {
                    Some(next) if self.method.is_refusal(&e) => {
                        tracing::warn!(
                            phc = self.device.name(),
                            "{} now refused ({e}); falling back to {}",
                            self.method.ioctl_name(),
                            next.ioctl_name()
                        );
                        self.method = next;
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    fn measure(&mut self, method: OffsetMethod) -> io::Result<PhcMeasurement> {
        match method {
            OffsetMethod::Precise => {
                let s = self.device.offset_precise()?;
                let sys = s.sys_realtime.as_nanos();
                let m = (s.sys_realtime.nsec < 1_000_000_000 && s.device.nsec < 1_000_000_000)
                    .then(|| {
                        Some(PhcMeasurement {
                            sys_ns: i64::try_from(sys).ok()?,
                            offset_ns: i64::try_from(s.device.as_nanos() - sys).ok()?,
                            uncertainty_ns: PRECISE_UNCERTAINTY_NS,
                        })
                    })
                    .flatten();
                m.ok_or_else(|| invalid("precise cross-timestamp out of range"))
            }
            OffsetMethod::Extended | OffsetMethod::Basic => {
                let out = &mut self.buf[..self.samples];
                let n = if method == OffsetMethod::Extended {
                    self.device.offset_extended(out)?
                } else {
                    self.device.offset_basic(out)?
                };
                best_measurement(&out[..n.min(out.len())])
                    .ok_or_else(|| invalid("no valid PHC reading"))
            }
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tracking::{PhcTracker, TrackOutcome};

    fn errno(e: &io::Error) -> Option<i32> {
        e.raw_os_error()
    }

    #[test]
    fn reading_measurement_uses_window_midpoint() {
        // before 10.000000000, PHC 10.000500100, after 10.000000200: mid 10.000000100
        let r = Reading::new((10, 0), (10, 500_100), (10, 200));
        assert_eq!(r.window_ns(), Some(200));
        assert_eq!(
            r.measurement(),
            Some(PhcMeasurement {
                sys_ns: 10_000_000_100,
                offset_ns: 500_000,
                uncertainty_ns: 100
            })
        );
        // Odd window: uncertainty rounds up, midpoint rounds down.
        let r = Reading::new((10, 999_999_999), (11, 0), (11, 2));
        assert_eq!(
            r.measurement(),
            Some(PhcMeasurement {
                sys_ns: 11_000_000_000,
                offset_ns: 0,
                uncertainty_ns: 2
            })
        );
        // System clock stepped back in the middle: invalid.
        assert_eq!(
            Reading::new((10, 500), (10, 0), (10, 100)).window_ns(),
            None
        );
        assert_eq!(
            Reading::new((10, 1_000_000_000), (10, 0), (11, 0)).window_ns(),
            None
        );
    }

    #[test]
    fn best_measurement_takes_narrowest_window() {
        let rs = [
            Reading::new((100, 0), (137, 5_000), (100, 10_000)), // window 10 us
            Reading::new((100, 20_000), (137, 21_100), (100, 22_000)), // window 2 us
            Reading::new((100, 30_000), (137, 0), (100, 29_000)), // invalid
            Reading::new((100, 40_000), (137, 43_000), (100, 46_000)), // window 6 us
        ];
        let m = best_measurement(&rs).unwrap();
        assert_eq!(m.sys_ns, 100_000_021_000);
        assert_eq!(m.offset_ns, 37_000_000_100);
        assert_eq!(m.uncertainty_ns, 1_000);
        assert_eq!(best_measurement(&rs[2..3]), None);
        assert_eq!(best_measurement(&[]), None);
    }

    #[test]
    fn igb_like_device_falls_back_to_extended() {
        let dev = RecordedPhc::igb_vm();
        let mut reader = PhcReader::new(dev).unwrap();
        assert_eq!(reader.method(), OffsetMethod::Extended);
        assert_eq!(reader.caps().max_adj_ppb, 999_999_881);
        assert!(!reader.caps().cross_timestamping);
        let m = reader.poll().unwrap();
        // Recorded PHC runs ~0.4 ms ahead; narrowest window of the first poll is 9 us.
        assert!((300_000..700_000).contains(&m.offset_ns), "{m:?}");
        assert_eq!(m.uncertainty_ns, 4_500);
        // Precise was tried once at start-up, never again.
        assert_eq!(reader.device().calls(OffsetMethod::Precise), 1);
        assert_eq!(reader.device().calls(OffsetMethod::Basic), 0);
        assert_eq!(reader.samples(), DEFAULT_SAMPLES as usize);
        assert_eq!(reader.device().last_request_len(), DEFAULT_SAMPLES as usize);
    }

    #[test]
    fn enotty_on_extended_falls_back_to_basic() {
        let mut reader = PhcReader::with_samples(RecordedPhc::basic_only(), 5).unwrap();
        assert_eq!(reader.method(), OffsetMethod::Basic);
        let m = reader.poll().unwrap();
        assert!(m.uncertainty_ns > 0);
        assert_eq!(reader.device().calls(OffsetMethod::Extended), 1);
        assert_eq!(reader.device().last_request_len(), 5);
    }

    #[test]
    fn precise_is_preferred_when_it_works() {
        let dev = RecordedPhc::precise_capable();
        let mut reader = PhcReader::new(dev).unwrap();
        assert_eq!(reader.method(), OffsetMethod::Precise);
        let m = reader.poll().unwrap();
        assert_eq!(m.uncertainty_ns, PRECISE_UNCERTAINTY_NS);
        assert_eq!(m.offset_ns, 37_000_000_250);
        assert_eq!(reader.device().calls(OffsetMethod::Extended), 0);
    }

    #[test]
    fn precise_enodev_falls_through_but_extended_enodev_does_not() {
        let p = OffsetMethod::Precise;
        let e = OffsetMethod::Extended;
        let enodev = io::Error::from_raw_os_error(libc::ENODEV);
        assert!(p.is_refusal(&enodev));
        assert!(!e.is_refusal(&enodev));
        for code in [libc::EOPNOTSUPP, libc::EINVAL, libc::ENOTTY] {
            assert!(e.is_refusal(&io::Error::from_raw_os_error(code)));
        }
        assert!(!p.is_refusal(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!p.is_refusal(&io::Error::other("x")));
    }

    #[test]
    fn not_a_phc_is_an_error() {
        let dev = RecordedPhc::igb_vm().with_caps_error(libc::ENOTTY);
        let err = PhcReader::new(dev).unwrap_err();
        assert_eq!(errno(&err), None, "wrapped with context");
        assert!(err.to_string().contains("PTP_CLOCK_GETCAPS"), "{err}");
    }

    #[test]
    fn nothing_works_is_an_error_listing_every_refusal() {
        let dev = RecordedPhc::basic_only().with_basic(vec![Err(libc::EIO)]);
        let err = PhcReader::new(dev).unwrap_err();
        let msg = err.to_string();
        for name in [
            "PTP_SYS_OFFSET_PRECISE",
            "PTP_SYS_OFFSET_EXTENDED",
            "PTP_SYS_OFFSET:",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn runtime_refusal_downgrades_and_other_errors_are_returned() {
        // Extended works at start-up and for one poll, then answers EOPNOTSUPP.
        let igb = RecordedPhc::igb_vm();
        let first = igb.extended_script()[0].clone();
        let dev = igb.with_extended(vec![first.clone(), first, Err(libc::EOPNOTSUPP)]);
        let mut reader = PhcReader::new(dev).unwrap();
        assert_eq!(reader.method(), OffsetMethod::Extended);
        reader.poll().unwrap();
        reader.poll().unwrap(); // extended refused: basic answers in the same poll
        assert_eq!(reader.method(), OffsetMethod::Basic);
        // A transient failure is reported, not a reason to downgrade.
        let dev = RecordedPhc::basic_only().with_basic(vec![
            Ok(vec![Reading::new((1, 0), (1, 100), (1, 50))]),
            Err(libc::EBUSY),
        ]);
        let mut reader = PhcReader::new(dev).unwrap();
        assert_eq!(errno(&reader.poll().unwrap_err()), Some(libc::EBUSY));
        assert_eq!(reader.method(), OffsetMethod::Basic);
    }

    #[test]
    fn all_readings_invalid_is_invalid_data() {
        let dev = RecordedPhc::basic_only().with_basic(vec![
            Ok(vec![Reading::new((1, 0), (1, 100), (1, 50))]),
            Ok(vec![Reading::new((1, 50), (1, 100), (1, 0))]),
        ]);
        let mut reader = PhcReader::new(dev).unwrap();
        assert_eq!(
            reader.poll().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn recorded_igb_feeds_the_tracker() {
        let mut reader = PhcReader::new(RecordedPhc::igb_vm()).unwrap();
        let mut tracker = PhcTracker::new();
        let polls = reader.device().extended_script().len();
        let mut last = None;
        for _ in 0..polls {
            let m = reader.poll().unwrap();
            assert_eq!(tracker.add(m), TrackOutcome::Accepted);
            last = Some(m);
        }
        let m = last.unwrap();
        let phc = crate::clock::tracking::ns_to_timespec(m.sys_ns + m.offset_ns);
        let (s, ns) = tracker.phc_to_realtime(phc).unwrap();
        let back = s * 1_000_000_000 + i64::from(ns);
        // Within the readings' own uncertainty of the reading's instant.
        assert!(
            (back - m.sys_ns).unsigned_abs() <= 2 * m.uncertainty_ns,
            "{back} vs {}",
            m.sys_ns
        );
    }
}
