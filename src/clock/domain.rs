//! Time domains: turning raw timestamps into the UTC time the server serves.
//!
//! Software timestamps and clock reads are in the `CLOCK_REALTIME` domain; NIC
//! hardware timestamps are in the domain of the NIC's PTP hardware clock (PHC),
//! which a PTP daemon usually keeps in TAI. With `--reference system` the
//! served time is `CLOCK_REALTIME`, and hardware timestamps are converted to it
//! through the PHC tracking (offset and frequency by regression). With
//! `--reference phc` the served time is the PHC's, less the TAI-UTC offset, and
//! software timestamps are converted to it through the same tracking.
//!
//! The tracking is a snapshot that the PHC thread replaces once a second and
//! workers read without locks ([`arc_swap`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::tracking::{add_ns, tai_to_utc, PhcTracker};
use super::wire::Compensation;
use crate::protocol::NtpTimestamp;

/// What the PHC thread publishes.
#[derive(Clone, Debug)]
pub struct PhcSnapshot {
    /// The offset/frequency fit of the PHC against `CLOCK_REALTIME`.
    pub tracker: PhcTracker,
    /// Whether the fit can be trusted (enough fresh readings, no jump).
    pub healthy: bool,
    /// TAI - UTC in seconds, for a PHC that runs in TAI (0 for a PHC in UTC).
    pub tai_offset: i32,
}

/// Which clock the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServedClock {
    /// `CLOCK_REALTIME`.
    System,
    /// The PHC, less the TAI-UTC offset.
    Phc,
}

/// Converts raw timestamps to served time. Shared by all workers.
pub struct TimeDomains {
    served: ServedClock,
    phc: ArcSwapOption<PhcSnapshot>,
    // The fixed compensations (`--rx-comp`, `--tx-comp`) and the send-latency
    // switch (`--send-latency-comp`): atomics, so SIGHUP changes them live.
    rx_comp_ns: AtomicI64,
    tx_comp_ns: AtomicI64,
    send_latency_comp: AtomicBool,
    link_speed_mbps: u32,
}

fn seconds_and_nanos(t: (i64, u32)) -> NtpTimestamp {
    NtpTimestamp::from_unix(t.0, t.1)
}

impl TimeDomains {
    /// Serve the system clock; hardware timestamps are unusable until a PHC
    /// snapshot is published.
    pub fn system() -> Arc<Self> {
        Self::new(
            ServedClock::System,
            Compensation::NONE,
            super::wire::SPEED_UNKNOWN,
        )
    }

    /// A converter serving `served`, with fixed compensations and the link
    /// speed used for the receive wire-time correction.
    pub fn new(served: ServedClock, comp: Compensation, link_speed_mbps: u32) -> Arc<Self> {
        Arc::new(TimeDomains {
            served,
            phc: ArcSwapOption::empty(),
            rx_comp_ns: AtomicI64::new(comp.rx_ns),
            tx_comp_ns: AtomicI64::new(comp.tx_ns),
            send_latency_comp: AtomicBool::new(true),
            link_speed_mbps,
        })
    }

    /// The fixed compensations in force.
    #[inline]
    pub fn compensation(&self) -> Compensation {
        Compensation::new(
            self.rx_comp_ns.load(Ordering::Relaxed),
            self.tx_comp_ns.load(Ordering::Relaxed),
        )
    }

    /// Change the fixed compensations (a reload); workers use them from
    /// their next timestamp on.
    pub fn set_compensation(&self, comp: Compensation) {
        self.rx_comp_ns.store(comp.rx_ns, Ordering::Relaxed);
        self.tx_comp_ns.store(comp.tx_ns, Ordering::Relaxed);
    }

    /// Whether basic replies carry the estimated send latency
    /// (`--send-latency-comp`; on unless switched off).
    #[inline]
    pub fn send_latency_comp(&self) -> bool {
        self.send_latency_comp.load(Ordering::Relaxed)
    }

    /// Switch the send-latency compensation (start-up and reloads).
    pub fn set_send_latency_comp(&self, on: bool) {
        self.send_latency_comp.store(on, Ordering::Relaxed);
    }

    /// Which clock is served.
    pub fn served(&self) -> ServedClock {
        self.served
    }

    /// Publish a new PHC snapshot (the PHC thread, once a second).
    pub fn publish(&self, snapshot: PhcSnapshot) {
        self.phc.store(Some(Arc::new(snapshot)));
    }

    /// The current PHC snapshot.
    pub fn snapshot(&self) -> Option<Arc<PhcSnapshot>> {
        self.phc.load_full()
    }

    /// Served time of a `CLOCK_REALTIME` timestamp (software stamp or clock read).
    /// `None` only when the PHC is served and its tracking is unusable.
    #[inline]
    pub fn system_to_served(&self, sys: (i64, u32)) -> Option<NtpTimestamp> {
        match self.served {
            ServedClock::System => Some(seconds_and_nanos(sys)),
            ServedClock::Phc => {
                let guard = self.phc.load();
                let snap = guard.as_ref().filter(|s| s.healthy)?;
                let phc = snap.tracker.realtime_to_phc(sys)?;
                Some(seconds_and_nanos((
                    tai_to_utc(phc.0, snap.tai_offset),
                    phc.1,
                )))
            }
        }
    }

    fn phc_to_served(&self, phc: (i64, u32)) -> Option<NtpTimestamp> {
        let guard = self.phc.load();
        let snap = guard.as_ref().filter(|s| s.healthy)?;
        match self.served {
            ServedClock::Phc => Some(seconds_and_nanos((
                tai_to_utc(phc.0, snap.tai_offset),
                phc.1,
            ))),
            ServedClock::System => snap.tracker.phc_to_realtime(phc).map(seconds_and_nanos),
        }
    }

    /// Served time of a hardware receive timestamp of a frame of `frame_len`
    /// octets (without FCS; `None` if unknown): the stamp marks the frame's
    /// start, so the wire time of the rest of the frame is added, then the
    /// fixed `--rx-comp` is subtracted.
    pub fn hardware_rx_to_served(
        &self,
        hw: (i64, u32),
        frame_len: Option<u32>,
    ) -> Option<NtpTimestamp> {
        let comp = self.compensation();
        let adjust = frame_len.map_or(-comp.rx_ns, |len| {
            comp.rx_adjust_ns(len, self.link_speed_mbps)
        });
        self.phc_to_served(add_ns(hw, adjust))
    }

    /// Served time of a hardware transmit timestamp (plus `--tx-comp`).
    pub fn hardware_tx_to_served(&self, hw: (i64, u32)) -> Option<NtpTimestamp> {
        self.phc_to_served(add_ns(hw, self.compensation().tx_adjust_ns()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tracking::PhcMeasurement;

    /// A tracker fed with a PHC exactly `offset_ns` ahead of the system clock.
    fn tracker(offset_ns: i64) -> PhcTracker {
        let mut t = PhcTracker::new();
        for i in 0..8 {
            t.add(PhcMeasurement {
                sys_ns: 1_800_000_000_000_000_000 + i * 1_000_000_000,
                offset_ns,
                uncertainty_ns: 5,
            });
        }
        t
    }

    const SYS: (i64, u32) = (1_800_000_005, 250_000_000);

    #[test]
    fn system_served_converts_hardware_through_tracking() {
        let d = TimeDomains::new(ServedClock::System, Compensation::NONE, 1000);
        assert_eq!(
            d.system_to_served(SYS),
            Some(NtpTimestamp::from_unix(SYS.0, SYS.1))
        );
        assert_eq!(
            d.hardware_tx_to_served((SYS.0 + 37, SYS.1)),
            None,
            "no PHC snapshot yet"
        );
        d.publish(PhcSnapshot {
            tracker: tracker(37_000_000_000),
            healthy: true,
            tai_offset: 37,
        });
        let tx = d.hardware_tx_to_served((SYS.0 + 37, SYS.1)).unwrap();
        assert!(
            tx.diff_nanos(NtpTimestamp::from_unix(SYS.0, SYS.1)).abs() <= 2,
            "{}",
            tx.diff_nanos(NtpTimestamp::from_unix(SYS.0, SYS.1))
        );
        // A 90-octet frame at 1 Gb/s: (90 + 4) * 8 ns = 752 ns of wire time after the stamp.
        let rx = d
            .hardware_rx_to_served((SYS.0 + 37, SYS.1), Some(90))
            .unwrap();
        let wire = rx.diff_nanos(NtpTimestamp::from_unix(SYS.0, SYS.1));
        assert!((wire - 752).abs() <= 2, "{wire}");
        d.publish(PhcSnapshot {
            tracker: tracker(37_000_000_000),
            healthy: false,
            tai_offset: 37,
        });
        assert_eq!(
            d.hardware_tx_to_served((SYS.0 + 37, SYS.1)),
            None,
            "unhealthy PHC: no conversion"
        );
    }

    #[test]
    fn phc_served_subtracts_tai_and_converts_software() {
        let d = TimeDomains::new(ServedClock::Phc, Compensation::new(0, 100), 10_000);
        assert_eq!(
            d.system_to_served(SYS),
            None,
            "no PHC yet: nothing to serve"
        );
        // PHC in TAI and 1.5 us ahead of the system clock beyond the 37 s.
        d.publish(PhcSnapshot {
            tracker: tracker(37_000_001_500),
            healthy: true,
            tai_offset: 37,
        });
        let hw = (SYS.0 + 37, SYS.1);
        assert_eq!(
            d.hardware_tx_to_served(hw),
            Some(NtpTimestamp::from_unix(SYS.0, SYS.1 + 100)),
            "tx-comp added"
        );
        let sw = d.system_to_served(SYS).unwrap();
        let diff = sw.diff_nanos(NtpTimestamp::from_unix(SYS.0, SYS.1));
        assert!(
            (diff - 1500).abs() <= 2,
            "software stamp moved onto the PHC's time: {diff}"
        );
    }
}
