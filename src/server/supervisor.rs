//! The main thread's duties once the workers serve: judge the health every
//! [`TICK`], publish it for `/healthz` and the metrics, log its changes, and
//! talk to systemd (`Type=notify`) through the `sd-notify` crate: `READY=1`
//! once every worker serves, `STATUS=` with the timestamp sources and the
//! health, `WATCHDOG=1` every half `WATCHDOG_USEC` while every worker's
//! heartbeat moves (a stuck worker stops the pings and systemd restarts the
//! service; a lost reference does not, since a restart would not bring it
//! back), `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` the
//! notifications are no-ops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sd_notify::NotifyState;

use super::health::{HealthInputs, HealthMonitor, HealthStatus};
use super::metrics::Exporter;
use super::tscheck::{TimestampCheck, TsCounts};

/// How often the supervisor runs.
pub const TICK: Duration = Duration::from_millis(100);

/// What the health check needs beyond the exporter's view.
#[derive(Debug)]
pub struct HealthOptions {
    /// The hardware timestamps promised at start-up, checked against what arrives.
    pub ts_check: TimestampCheck,
    /// `--timestamping hardware`: the PHC tracking and the promised timestamps
    /// count for the health.
    pub hardware_required: bool,
    /// `--on-unsync drop`: withhold the served state (answer nothing) while
    /// unhealthy.
    pub withhold_when_unhealthy: bool,
}

/// See the module documentation.
pub struct Supervisor {
    exporter: Arc<Exporter>,
    monitor: HealthMonitor,
    options: HealthOptions,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    notify_failed: bool,
    beats: Vec<u64>,
}

impl Supervisor {
    /// Judge the health once at once, publish it, and tell systemd the
    /// service is ready.
    pub fn start(exporter: Arc<Exporter>, options: HealthOptions) -> Self {
        let now = Instant::now();
        let watchdog = sd_notify::watchdog_enabled();
        let mut s = Supervisor {
            monitor: HealthMonitor::new(exporter.stats.len(), now, TICK),
            options,
            beats: Vec::with_capacity(exporter.stats.len()),
            exporter,
            watchdog,
            last_ping: None,
            notify_failed: false,
        };
        let status = s.judge(now);
        if status.healthy {
            tracing::info!(reason = %status.reason, "healthy");
        } else {
            tracing::warn!(reason = %status.reason, "unhealthy: /healthz answers 503");
        }
        let line = s.status_line(&status);
        s.withhold(status.healthy);
        s.exporter.health.store(status);
        s.notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        if let Some(w) = watchdog {
            tracing::info!(
                watchdog_ms = w.as_millis() as u64,
                "systemd watchdog on: pinging every half period while every worker is alive"
            );
        }
        s.tick(now);
        s
    }

    fn judge(&mut self, now: Instant) -> HealthStatus {
        self.beats.clear();
        self.beats.extend(
            self.exporter
                .stats
                .iter()
                .map(|s| s.watchdog_checks.load(Ordering::Relaxed)),
        );
        // The reference's state, not the served one: that is withheld while
        // unhealthy with --on-unsync drop.
        let state = self.exporter.state.load_reference();
        let ts = &mut self.options.ts_check;
        for t in ts.observe(TsCounts::from_stats(&self.exporter.totals())) {
            ts.log(&t);
        }
        let hardware = self.options.hardware_required;
        let phc_healthy = match (&self.exporter.domains, hardware) {
            (Some(d), true) => Some(d.snapshot().is_some_and(|s| s.healthy)),
            _ => None,
        };
        let missing = if hardware { ts.reason() } else { String::new() };
        let mut status = self.monitor.update(
            now,
            &HealthInputs {
                reference: &self.exporter.reference,
                state,
                heartbeats: &self.beats,
                phc_healthy,
                timestamps_missing: &missing,
            },
        );
        status.timestamping_degraded = ts.gauges();
        status
    }

    /// With `--on-unsync drop`: the workers answer nothing while unhealthy.
    fn withhold(&self, healthy: bool) {
        if self.options.withhold_when_unhealthy && self.exporter.state.set_withheld(!healthy) {
            if healthy {
                tracing::info!("healthy: answering again");
            } else {
                tracing::warn!("unhealthy with --on-unsync drop: answering nothing");
            }
        }
    }

    fn status_line(&self, h: &HealthStatus) -> String {
        format!(
            "{}: {}; {}",
            if h.healthy { "healthy" } else { "UNHEALTHY" },
            h.reason,
            self.exporter.timestamping.text
        )
    }

    fn notify(&mut self, states: &[NotifyState]) {
        match sd_notify::notify(states) {
            Ok(()) => self.notify_failed = false,
            Err(e) if !self.notify_failed => {
                self.notify_failed = true;
                tracing::warn!("cannot notify systemd: {e}");
            }
            Err(_) => {}
        }
    }

    /// One tick: judge, publish, log and notify changes, ping the watchdog.
    pub fn tick(&mut self, now: Instant) {
        let status = self.judge(now);
        let old: Arc<HealthStatus> = self.exporter.health.load();
        if status.healthy != old.healthy || status.reason != old.reason {
            if status.healthy != old.healthy {
                if status.healthy {
                    tracing::info!(reason = %status.reason, "healthy");
                } else {
                    tracing::warn!(reason = %status.reason, "unhealthy: /healthz answers 503");
                }
            }
            let line = self.status_line(&status);
            self.notify(&[NotifyState::Status(&line)]);
        }
        self.withhold(status.healthy);
        self.exporter.health.store(status);
        if let Some(period) = self.watchdog {
            let due = self
                .last_ping
                .is_none_or(|t| now.saturating_duration_since(t) >= period / 2);
            if due && self.monitor.workers_alive(now) {
                self.last_ping = Some(now);
                self.notify(&[NotifyState::Watchdog]);
            }
        }
    }

    /// Tell systemd the service is stopping.
    pub fn stopping(&mut self) {
        self.notify(&[NotifyState::Stopping]);
    }
}

/// With `user`, switch every thread to it and log what was kept; without,
/// warn when running as root or with capabilities.
pub fn drop_privileges(user: Option<&str>) -> Result<()> {
    use crate::sys::privileges::{
        drop_to_user, own_effective_capabilities, running_as_root, KEPT_CAPABILITIES,
        KEPT_CAPABILITIES_WHY,
    };
    match user {
        Some(name) => {
            let d = drop_to_user(name)?;
            tracing::info!(
                user = %d.user,
                uid = d.uid,
                gid = d.gid,
                threads_checked = d.threads,
                capabilities_kept = KEPT_CAPABILITIES,
                why = KEPT_CAPABILITIES_WHY,
                "dropped privileges: every thread runs as the user, no supplementary groups, no capabilities"
            );
        }
        None if running_as_root() => tracing::warn!(
            "running as root, with every capability, for the server's whole life: give --user NAME to drop them after start-up"
        ),
        None => {
            let caps = own_effective_capabilities();
            if caps != 0 {
                tracing::warn!(
                    cap_eff = %format!("{caps:#x}"),
                    "running with capabilities for the server's whole life: start as root with --user NAME to drop them after start-up"
                );
            }
        }
    }
    Ok(())
}
