//! Whether this node should be serving: the answer behind `GET /healthz`,
//! `hwntpd_healthy` and systemd's watchdog.
//!
//! Healthy means every check holds:
//! * the reference is usable (the served state is not LI=3 / stratum 16);
//! * every worker is alive: its watchdog-check counter (bumped by the worker
//!   about every [`WATCHDOG_INTERVAL_MS`](super::watchdog::WATCHDOG_INTERVAL_MS),
//!   even when idle) moved within [`WORKER_STALE_AFTER`].
//!
//! [`HealthMonitor::update`] takes plain inputs ([`HealthInputs`]) and returns
//! a [`HealthStatus`]; more checks (the PHC tracking, timestamps that were
//! promised but do not arrive) and hysteresis belong in it, so the endpoint,
//! the metrics and the watchdog keep one notion of healthy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::protocol::ServerState;

/// A worker whose heartbeat has not moved for this long counts as stalled.
pub const WORKER_STALE_AFTER: Duration = Duration::from_secs(2);

/// What the health is computed from, read once per supervisor tick.
#[derive(Clone, Copy, Debug)]
pub struct HealthInputs<'a> {
    /// The reference's name (`system`, `phc`, ...), for the reason line.
    pub reference: &'a str,
    /// The state workers serve now.
    pub state: ServerState,
    /// Each worker's heartbeat counter.
    pub heartbeats: &'a [u64],
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
        }
    }
}

/// Remembers when each worker's heartbeat last moved.
#[derive(Debug)]
pub struct HealthMonitor {
    beats: Vec<(u64, Instant)>,
    stale_after: Duration,
}

impl HealthMonitor {
    /// A monitor for `workers` workers, all counted alive at `now`.
    pub fn new(workers: usize, now: Instant) -> Self {
        Self::with_stale_after(workers, now, WORKER_STALE_AFTER)
    }

    /// [`Self::new`] with another staleness limit (tests).
    pub fn with_stale_after(workers: usize, now: Instant, stale_after: Duration) -> Self {
        HealthMonitor {
            beats: vec![(0, now); workers],
            stale_after,
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
        let healthy = failures.is_empty() && workers > 0;
        let reason = if healthy {
            format!(
                "ok: reference {} usable (stratum {}), {workers_alive} of {workers} workers alive",
                inputs.reference, inputs.state.stratum
            )
        } else if workers == 0 {
            "no workers".into()
        } else {
            failures.join("; ")
        };
        HealthStatus {
            healthy,
            reason,
            reference_usable,
            workers,
            workers_alive,
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
        let mut m = HealthMonitor::with_stale_after(2, t0, Duration::from_millis(500));
        let input = |beats: &'static [u64], state| HealthInputs {
            reference: "local",
            state,
            heartbeats: beats,
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
        let mut m = HealthMonitor::new(0, t0);
        let s = m.update(
            t0,
            &HealthInputs {
                reference: "local",
                state: synced(),
                heartbeats: &[],
            },
        );
        assert!(!s.healthy);
        assert!(!HealthStatus::starting().healthy);
    }
}
