//! Whether this node should be serving: the answer behind `GET /healthz`,
//! `hwntpd_healthy` and systemd's watchdog.
//!
//! Healthy means every check holds:
//! * the reference is usable (the served state is not LI=3 / stratum 16);
//! * every worker is alive: its watchdog-check counter (bumped by the worker
//!   about every [`WATCHDOG_INTERVAL_MS`](super::watchdog::WATCHDOG_INTERVAL_MS),
//!   even when idle) moved within [`WORKER_STALE_AFTER`];
//! * where hardware timestamps were asked for (`--timestamping hardware`): the
//!   PHC tracking is healthy and the promised timestamps arrive
//!   ([`super::tscheck`]).
//!
//! It fails closed, with hysteresis ([`super::hysteresis`]): unhealthy until
//! the first check (healthy then if it is good), unhealthy at the first bad
//! check, and healthy again only after [`RISE_AFTER`] of good checks in a
//! row, so a flapping input does not flap an anycast route.
//!
//! [`HealthMonitor::update`] takes plain inputs ([`HealthInputs`]) and returns
//! a [`HealthStatus`], so the endpoint, the metrics and the watchdog keep one
//! notion of healthy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::hysteresis::Hysteresis;
use crate::protocol::ServerState;

/// A worker whose heartbeat has not moved for this long counts as stalled.
pub const WORKER_STALE_AFTER: Duration = Duration::from_secs(2);

/// Good checks in a row for this long make an unhealthy node healthy again.
pub const RISE_AFTER: Duration = Duration::from_secs(3);

/// What the health is computed from, read once per supervisor tick.
#[derive(Clone, Copy, Debug)]
pub struct HealthInputs<'a> {
    /// The reference's name (`system`, `phc`, ...), for the reason line.
    pub reference: &'a str,
    /// The state workers serve now.
    pub state: ServerState,
    /// Each worker's heartbeat counter.
    pub heartbeats: &'a [u64],
    /// `Some(healthy)` when hardware timestamps were asked for and a PHC
    /// converts them; `None` when the PHC does not count.
    pub phc_healthy: Option<bool>,
    /// When hardware timestamps were asked for: the promised ones that do not
    /// arrive ([`super::tscheck::TimestampCheck::reason`]); "" if none.
    pub timestamps_missing: &'a str,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// Every check holds.
    pub healthy: bool,
    /// One line: what holds, or what fails.
    pub reason: String,
    /// Whether the reference is usable.
    pub reference_usable: bool,
    /// Workers running.
    pub workers: usize,
    /// Workers whose heartbeat moved recently.
    pub workers_alive: usize,
    /// `hwntpd_timestamping_degraded`: (interface, direction, degraded) for
    /// each direction promised hardware timestamps (filled by the supervisor).
    pub timestamping_degraded: Vec<(String, &'static str, bool)>,
}

impl HealthStatus {
    /// Before the first check (start-up): unhealthy.
    pub fn starting() -> Self {
        HealthStatus {
            healthy: false,
            reason: "starting".into(),
            reference_usable: false,
            workers: 0,
            workers_alive: 0,
            timestamping_degraded: Vec::new(),
        }
    }
}

/// Remembers when each worker's heartbeat last moved.
#[derive(Debug)]
pub struct HealthMonitor {
    beats: Vec<(u64, Instant)>,
    stale_after: Duration,
    hysteresis: Hysteresis,
}

impl HealthMonitor {
    /// A monitor for `workers` workers, all counted alive at `now`, updated
    /// every `tick` (healthy after [`RISE_AFTER`] of good checks).
    pub fn new(workers: usize, now: Instant, tick: Duration) -> Self {
        let rise = RISE_AFTER.as_millis() / tick.as_millis().max(1);
        Self::with_limits(workers, now, WORKER_STALE_AFTER, rise as u32)
    }

    /// [`Self::new`] with another staleness limit and `rise` good checks to
    /// become healthy (tests).
    pub fn with_limits(workers: usize, now: Instant, stale_after: Duration, rise: u32) -> Self {
        HealthMonitor {
            beats: vec![(0, now); workers],
            stale_after,
            hysteresis: Hysteresis::new(rise),
        }
    }

    /// Take the inputs seen at `now` and judge.
    pub fn update(&mut self, now: Instant, inputs: &HealthInputs) -> HealthStatus {
        self.beats.resize(inputs.heartbeats.len(), (0, now));
        let mut stalled = Vec::new();
        for (i, (&beat, (last, since))) in inputs
            .heartbeats
            .iter()
            .zip(self.beats.iter_mut())
            .enumerate()
        {
            if beat != *last {
                (*last, *since) = (beat, now);
            } else if now.saturating_duration_since(*since) > self.stale_after {
                stalled.push((i, now.saturating_duration_since(*since)));
            }
        }
        let workers = self.beats.len();
        let workers_alive = workers - stalled.len();
        let reference_usable = !inputs.state.is_unsynchronized();
        let mut failures = Vec::new();
        if !reference_usable {
            failures.push(format!(
                "reference {} unusable (serving LI=3, stratum 16)",
                inputs.reference
            ));
        }
        for (i, quiet) in &stalled {
            failures.push(format!(
                "worker {i} stalled (no heartbeat for {:.1} s)",
                quiet.as_secs_f64()
            ));
        }
        if inputs.phc_healthy == Some(false) {
            failures.push(
                "PHC tracking unhealthy (the hardware timestamps asked for cannot be converted)"
                    .into(),
            );
        }
        if !inputs.timestamps_missing.is_empty() {
            failures.push(inputs.timestamps_missing.to_string());
        }
        let problem = if workers == 0 {
            Some("no workers".to_string())
        } else {
            (!failures.is_empty()).then(|| failures.join("; "))
        };
        self.hysteresis.update(problem);
        let healthy = self.hysteresis.healthy();
        let reason = if healthy {
            format!(
                "ok: reference {} usable (stratum {}), {workers_alive} of {workers} workers alive",
                inputs.reference, inputs.state.stratum
            )
        } else {
            self.hysteresis.reason()
        };
        HealthStatus {
            healthy,
            reason,
            reference_usable,
            workers,
            workers_alive,
            timestamping_degraded: Vec::new(),
        }
    }

    /// Whether every worker was alive at the last update (for the systemd
    /// watchdog, which must not restart a server only because its reference
    /// is gone).
    pub fn workers_alive(&self, now: Instant) -> bool {
        self.beats
            .iter()
            .all(|(_, since)| now.saturating_duration_since(*since) <= self.stale_after)
    }
}

/// The latest [`HealthStatus`], written by the supervisor, read by the
/// metrics endpoint.
pub struct HealthCell(ArcSwap<HealthStatus>);

impl HealthCell {
    /// A cell saying "starting".
    pub fn new() -> Arc<Self> {
        Arc::new(HealthCell(ArcSwap::from_pointee(HealthStatus::starting())))
    }

    /// The current status.
    pub fn load(&self) -> Arc<HealthStatus> {
        self.0.load_full()
    }

    /// Publish a status.
    pub fn store(&self, status: HealthStatus) {
        self.0.store(Arc::new(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{NtpShort, NtpTimestamp};

    fn synced() -> ServerState {
        ServerState::local_stratum1(-20, NtpShort(1), NtpTimestamp(1))
    }

    #[test]
    fn healthy_until_a_worker_stops_or_the_reference_goes() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // rise 1: no hysteresis here (see fails_closed_with_hysteresis)
        let mut m = HealthMonitor::with_limits(2, t0, Duration::from_millis(500), 1);
        let input = |beats: &'static [u64], state| HealthInputs {
            reference: "local",
            state,
            heartbeats: beats,
            phc_healthy: None,
            timestamps_missing: "",
        };
        let s = m.update(ms(100), &input(&[1, 1], synced()));
        assert!(s.healthy, "{s:?}");
        assert_eq!((s.workers, s.workers_alive), (2, 2));
        assert!(s
            .reason
            .starts_with("ok: reference local usable (stratum 1)"));
        // Worker 1 stops beating; within the limit it still counts as alive.
        let s = m.update(ms(400), &input(&[2, 1], synced()));
        assert!(s.healthy);
        let s = m.update(ms(700), &input(&[3, 1], synced()));
        assert!(!s.healthy, "{s:?}");
        assert_eq!(s.workers_alive, 1);
        assert!(s.reason.starts_with("worker 1 stalled"), "{}", s.reason);
        assert!(!m.workers_alive(ms(700)));
        // It beats again: healthy again.
        let s = m.update(ms(800), &input(&[4, 2], synced()));
        assert!(s.healthy);
        assert!(m.workers_alive(ms(800)));
        // The reference goes: unhealthy, but the workers are alive.
        let s = m.update(ms(900), &input(&[5, 3], ServerState::unsynchronized(-20)));
        assert!(!s.healthy);
        assert!(!s.reference_usable);
        assert_eq!(
            s.reason,
            "reference local unusable (serving LI=3, stratum 16)"
        );
        assert!(m.workers_alive(ms(900)));
    }

    #[test]
    fn no_workers_is_unhealthy() {
        let t0 = Instant::now();
        let mut m = HealthMonitor::new(0, t0, Duration::from_millis(100));
        for _ in 0..40 {
            let s = m.update(
                t0,
                &HealthInputs {
                    reference: "local",
                    state: synced(),
                    heartbeats: &[],
                    phc_healthy: None,
                    timestamps_missing: "",
                },
            );
            assert!(!s.healthy);
            assert_eq!(s.reason, "no workers");
        }
        assert!(!HealthStatus::starting().healthy);
    }

    #[test]
    fn fails_closed_with_hysteresis() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        // 3 s of good checks at one per 100 ms: 30.
        let mut m = HealthMonitor::new(1, t0, tick);
        let mut beat: u32 = 0;
        let mut check = |m: &mut HealthMonitor, phc: Option<bool>, missing: &str| {
            beat += 1;
            m.update(
                t0 + tick * beat,
                &HealthInputs {
                    reference: "phc",
                    state: synced(),
                    heartbeats: &[u64::from(beat)],
                    phc_healthy: phc,
                    timestamps_missing: missing,
                },
            )
        };
        // The PHC tracking is not yet established at start.
        assert!(!check(&mut m, Some(false), "").healthy);
        for _ in 0..29 {
            let s = check(&mut m, Some(true), "");
            assert!(!s.healthy, "not before 30 good checks: {s:?}");
        }
        assert!(check(&mut m, Some(true), "").healthy);
        // The PHC tracking fails: unhealthy at once.
        let s = check(&mut m, Some(false), "");
        assert!(!s.healthy);
        assert!(
            s.reason.starts_with("PHC tracking unhealthy"),
            "{}",
            s.reason
        );
        // Good again: recovering, not yet healthy; the last problem is named.
        let s = check(&mut m, Some(true), "");
        assert!(!s.healthy);
        assert!(
            s.reason
                .starts_with("recovering (30 good checks in a row needed); last problem: PHC"),
            "{}",
            s.reason
        );
        // Promised timestamps that do not arrive restart the count.
        let s = check(
            &mut m,
            Some(true),
            "hardware receive timestamps promised by eth0 are not arriving",
        );
        assert_eq!(
            s.reason,
            "hardware receive timestamps promised by eth0 are not arriving"
        );
        for _ in 0..29 {
            assert!(!check(&mut m, Some(true), "").healthy);
        }
        assert!(check(&mut m, Some(true), "").healthy);
    }
}
