//! The PHC thread: reads the PTP hardware clock against `CLOCK_REALTIME` by the
//! best method the device has, keeps the offset/frequency fit, publishes it for
//! the workers' timestamp conversions, and, with `--reference phc`, publishes
//! the server state (stratum 1 while the PHC is healthy, LI 3 and stratum 16
//! at once when it is not). Health transitions are logged once each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::domain::{PhcSnapshot, TimeDomains};
use super::kernel::read_kernel_clock;
use super::phc::{PhcDevice, PhcReader};
use super::realtime::now_unix;
use super::reference::ReferenceConfig;
use super::snapshot::StateCell;
use super::tracking::{PhcTracker, TrackOutcome};
use crate::protocol::{LeapIndicator, NtpShort, NtpTimestamp, ServerState};

/// Where the TAI-UTC offset comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaiOffset {
    /// The kernel's (`adjtimex` `tai`, set by a PTP or NTP daemon).
    Kernel,
    /// Configured with `--utc-offset`.
    Fixed(i32),
}

/// Poll interval once tracking is established.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Poll interval until the fit has enough readings to be healthy.
pub const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The server state of `--reference phc` (pure).
///
/// Healthy: stratum and refid from `cfg` (1, "PTP" by default), LI from the
/// kernel's pending leap, root delay 0, root dispersion the tracking's error
/// bound (offset spread, reading uncertainty and drift since the last reading)
/// but at least the clock's precision, reference time the last PHC reading.
/// Unhealthy: LI 3, stratum 16.
pub fn phc_server_state(
    cfg: &ReferenceConfig,
    healthy: bool,
    dispersion_ns: u64,
    leap: LeapIndicator,
    last_reading: NtpTimestamp,
) -> ServerState {
    let base = ServerState {
        min_poll: cfg.min_poll,
        max_poll: cfg.max_poll,
        serve_unsynchronized: cfg.serve_unsynchronized,
        ..ServerState::unsynchronized(cfg.precision)
    };
    if !healthy || leap == LeapIndicator::Unsynchronized {
        return base;
    }
    let precision_ns = super::reference::precision_to_short(cfg.precision).to_nanos();
    ServerState {
        leap,
        stratum: cfg.stratum,
        refid: cfg.refid,
        root_delay: NtpShort::ZERO,
        root_dispersion: NtpShort::from_nanos_ceil(dispersion_ns.max(precision_ns)),
        reference_time: last_reading,
        ..base
    }
}

fn now_ns() -> i64 {
    let (s, n) = now_unix();
    s.saturating_mul(1_000_000_000).saturating_add(i64::from(n))
}

/// One step of the PHC thread: poll, track, publish. Separate from the loop so
/// it runs against a recorded device in tests.
pub struct PhcService<D: PhcDevice> {
    reader: PhcReader<D>,
    tracker: PhcTracker,
    tai: TaiOffset,
    healthy: Option<bool>,
    ever_healthy: bool,
    last_reading: NtpTimestamp,
    read_error_logged: bool,
}

impl<D: PhcDevice> PhcService<D> {
    /// A service over an opened reader.
    pub fn new(reader: PhcReader<D>, tai: TaiOffset) -> Self {
        PhcService {
            reader,
            tracker: PhcTracker::new(),
            tai,
            healthy: None,
            ever_healthy: false,
            last_reading: NtpTimestamp::ZERO,
            read_error_logged: false,
        }
    }

    /// Whether the fit is usable now.
    pub fn healthy(&self) -> bool {
        self.healthy.unwrap_or(false)
    }

    /// The fit.
    pub fn tracker(&self) -> &PhcTracker {
        &self.tracker
    }

    /// Poll once; publish the fit into `domains` and, for `--reference phc`,
    /// the server state into `state`.
    pub fn step(&mut self, domains: &TimeDomains, state: Option<(&ReferenceConfig, &StateCell)>) {
        self.step_at(domains, state, |_| now_ns());
    }

    /// [`Self::step`] with the current system time (ns) given by `now` (tests
    /// replay recorded readings from another day).
    pub fn step_at(
        &mut self,
        domains: &TimeDomains,
        state: Option<(&ReferenceConfig, &StateCell)>,
        now: impl FnOnce(&PhcTracker) -> i64,
    ) {
        let name = self.reader.device().name().to_string();
        match self.reader.poll() {
            Ok(m) => {
                self.read_error_logged = false;
                match self.tracker.add(m) {
                    TrackOutcome::Accepted => {}
                    TrackOutcome::Jump {
                        predicted_offset_ns,
                        measured_offset_ns,
                    } => tracing::warn!(
                        phc = %name,
                        predicted_offset_ns,
                        measured_offset_ns,
                        "PHC offset jumped: tracking restarted"
                    ),
                    TrackOutcome::ClockWentBack { by_ns } => {
                        tracing::warn!(phc = %name, by_ns, "system clock stepped back: PHC tracking restarted")
                    }
                }
                let (s, n) = now_unix();
                self.last_reading = NtpTimestamp::from_unix(s, n);
            }
            Err(e) => {
                if !self.read_error_logged {
                    tracing::error!(phc = %name, "cannot read the PHC: {e}");
                    self.read_error_logged = true;
                }
                self.tracker.reset();
            }
        }
        let now = now(&self.tracker);
        let healthy = self.tracker.healthy(now);
        let was = self.healthy.replace(healthy);
        if healthy && !self.ever_healthy {
            self.ever_healthy = true;
            tracing::info!(
                phc = %name,
                method = %self.reader.method(),
                offset_ns = self.tracker.last().map_or(0, |m| m.offset_ns),
                "PHC tracking established"
            );
        } else if was.is_some_and(|w| w != healthy) {
            if healthy {
                tracing::info!(phc = %name, "PHC tracking healthy again");
            } else {
                tracing::warn!(phc = %name, "PHC tracking unhealthy: hardware timestamps not served until it recovers");
            }
        }
        let kernel = read_kernel_clock().ok();
        let tai_offset = match self.tai {
            TaiOffset::Fixed(x) => x,
            TaiOffset::Kernel => kernel.map_or(0, |k| k.tai),
        };
        domains.publish(PhcSnapshot {
            tracker: self.tracker.clone(),
            healthy,
            tai_offset,
        });
        if let Some((cfg, cell)) = state {
            let leap = kernel.map_or(LeapIndicator::NoWarning, |k| k.leap());
            cell.store(phc_server_state(
                cfg,
                healthy,
                self.tracker.dispersion(now),
                leap,
                self.last_reading,
            ));
        }
    }
}

/// Run a [`PhcService`] on its own thread until `stop` is set.
pub fn spawn_phc_thread<D: PhcDevice + Send + 'static>(
    mut service: PhcService<D>,
    domains: Arc<TimeDomains>,
    state: Option<(ReferenceConfig, Arc<StateCell>)>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hwntpd-phc".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                service.step(&domains, state.as_ref().map(|(c, s)| (c, s.as_ref())));
                let interval = if service.healthy() {
                    POLL_INTERVAL
                } else {
                    STARTUP_POLL_INTERVAL
                };
                let deadline = Instant::now() + interval;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::domain::ServedClock;
    use crate::clock::phc::RecordedPhc;
    use crate::clock::reference::ReferenceKind;
    use crate::clock::wire::Compensation;

    fn cfg() -> ReferenceConfig {
        ReferenceConfig {
            kind: ReferenceKind::Phc,
            stratum: 1,
            refid: *b"PTP\0",
            precision: -20,
            min_poll: 4,
            max_poll: 17,
            serve_unsynchronized: true,
        }
    }

    #[test]
    fn state_follows_health() {
        let t = NtpTimestamp(0xe000_0000_0000_0000);
        let s = phc_server_state(&cfg(), true, 1_500, LeapIndicator::NoWarning, t);
        assert_eq!(
            (s.stratum, s.leap, &s.refid),
            (1, LeapIndicator::NoWarning, b"PTP\0")
        );
        assert_eq!(s.reference_time, t);
        assert!(s.root_dispersion.to_nanos() >= 1_500);
        let s = phc_server_state(&cfg(), true, 1, LeapIndicator::Insert, t);
        assert_eq!(s.leap, LeapIndicator::Insert);
        assert!(
            s.root_dispersion.to_nanos() >= 950,
            "at least the precision (2^-20 s)"
        );
        let s = phc_server_state(&cfg(), false, 1_500, LeapIndicator::NoWarning, t);
        assert_eq!((s.stratum, s.leap), (16, LeapIndicator::Unsynchronized));
    }

    /// One extended reading at system second `sec` with the PHC `offset_ns` ahead.
    fn reading(sec: i64, offset_ns: i64) -> Vec<crate::clock::phc::Reading> {
        use crate::clock::phc::{PtpTime, Reading};
        let phc_ns = sec as i128 * 1_000_000_000 + 500 + offset_ns as i128;
        vec![Reading {
            sys_before: PtpTime { sec, nsec: 0 },
            phc: PtpTime {
                sec: (phc_ns / 1_000_000_000) as i64,
                nsec: (phc_ns % 1_000_000_000) as u32,
            },
            sys_after: PtpTime { sec, nsec: 1000 },
        }]
    }

    #[test]
    fn jump_and_read_errors_make_the_reference_unsynchronised_until_it_recovers() {
        use crate::clock::phc::IGB_VM_CAPS;
        let t0 = 1_800_000_000;
        let mut script: Vec<Result<_, i32>> = (0..6).map(|i| Ok(reading(t0 + i, 1_000))).collect();
        script.extend((6..12).map(|i| Ok(reading(t0 + i, 50_001_000)))); // a 50 ms jump at 6
        script.push(Err(libc::EIO)); // then the PHC stops answering
        let dev = RecordedPhc::new("scripted", IGB_VM_CAPS)
            .with_precise(vec![Err(libc::EOPNOTSUPP)])
            .with_extended(script);
        let mut svc = PhcService::new(PhcReader::new(dev).unwrap(), TaiOffset::Fixed(0));
        let domains = TimeDomains::new(ServedClock::Phc, Compensation::NONE, 1000);
        let cell = StateCell::new(ServerState::unsynchronized(-20));
        let mut stratum = Vec::new();
        // PhcReader::new used the first answer to pick the method.
        for _ in 1..13 {
            svc.step_at(&domains, Some((&cfg(), &cell)), |t| {
                t.last().map_or(0, |m| m.sys_ns)
            });
            stratum.push(cell.load().stratum);
        }
        let synced_before_jump = stratum[3];
        assert_eq!(
            synced_before_jump, 1,
            "healthy before the jump: {stratum:?}"
        );
        assert_eq!(
            stratum[5], 16,
            "the jump makes it unsynchronised at once: {stratum:?}"
        );
        assert_eq!(
            *stratum.iter().rev().nth(1).unwrap(),
            1,
            "recovers by itself: {stratum:?}"
        );
        assert_eq!(
            *stratum.last().unwrap(),
            16,
            "an unreadable PHC: {stratum:?}"
        );
        assert_eq!(cell.load().leap, LeapIndicator::Unsynchronized);
    }

    #[test]
    fn recorded_igb_becomes_healthy_and_publishes() {
        let reader = PhcReader::new(RecordedPhc::igb_vm()).unwrap();
        let mut svc = PhcService::new(reader, TaiOffset::Fixed(0));
        let domains = TimeDomains::new(ServedClock::Phc, Compensation::NONE, 1000);
        let cell = StateCell::new(ServerState::unsynchronized(-20));
        for _ in 0..6 {
            svc.step_at(&domains, Some((&cfg(), &cell)), |t| {
                t.last().map_or(0, |m| m.sys_ns)
            });
        }
        assert!(svc.healthy(), "healthy after several readings");
        assert_eq!(cell.load().stratum, 1);
        let snap = domains.snapshot().unwrap();
        assert!(snap.healthy);
        assert_eq!(snap.tai_offset, 0);
    }
}
