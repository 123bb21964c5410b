//! Timestamps that are claimed are checked: a NIC can accept the hardware
//! timestamping configuration (`SIOCSHWTSTAMP` answers with the receive filter
//! and `TX_ON` that were asked for) and then deliver nothing. QEMU's e1000e does
//! exactly that: every receive timestamp is a software one and every transmit
//! timestamp is missed. While serving, at each health check (every 100 ms), the
//! counters of what arrived are compared with what start-up promised.
//!
//! A direction is *degraded* when at least [`MIN_SAMPLES`] packets were stamped
//! (receive) or asked to be stamped (transmit) since the last verdict and not
//! one of them got a usable hardware timestamp. "Usable" includes the
//! conversion through the PHC tracking: a hardware stamp that cannot be turned
//! into the served time (tracking unhealthy) is served as a software one, and
//! counts as such here. Some software stamps among hardware ones are normal
//! (a NIC with one transmit-stamp slot skips packets; traffic on an interface
//! without hardware stamps): only a window with none at all counts.
//! Fewer samples than [`MIN_SAMPLES`] keep the last verdict, so an idle server
//! neither becomes degraded nor recovers.
//!
//! The decision is pure ([`TimestampCheck::observe`] on counter values); the
//! server feeds it the summed worker counters and logs the transitions.

use super::stats::StatsSnapshot;

/// Packets a window needs before it can change the verdict.
pub const MIN_SAMPLES: u64 = 8;

/// A timestamp direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Receive timestamps.
    Rx,
    /// Transmit timestamps (interleaved mode, send-latency compensation).
    Tx,
}

impl Direction {
    /// The metric label value.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
        }
    }
}

/// The counters the check reads (cumulative, as the workers count them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TsCounts {
    /// Receive timestamps served from the NIC.
    pub rx_hardware: u64,
    /// Receive timestamps of any other source.
    pub rx_other: u64,
    /// Replies sent with a transmit timestamp asked for.
    pub tx_requested: u64,
    /// Transmit timestamps from the NIC that were used.
    pub tx_hardware: u64,
}

impl TsCounts {
    /// The counters of a stats snapshot.
    pub fn from_stats(s: &StatsSnapshot) -> Self {
        TsCounts {
            rx_hardware: s.rx_ts_hardware,
            rx_other: s.rx_ts_kernel + s.rx_ts_user,
            tx_requested: s.tx_ts_requested,
            tx_hardware: s.tx_ts_hardware,
        }
    }
}

/// One direction's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DirState {
    promised: bool,
    degraded: bool,
    /// Counter values at the start of the current window: (hardware, all).
    base: (u64, u64),
}

impl DirState {
    /// Close the window if it holds enough samples; `Some(new verdict)` when
    /// the verdict changed.
    fn observe(&mut self, hardware: u64, all: u64) -> Option<Window> {
        if !self.promised {
            return None;
        }
        let (hw, n) = (
            hardware.wrapping_sub(self.base.0),
            all.wrapping_sub(self.base.1),
        );
        if n < MIN_SAMPLES {
            return None;
        }
        self.base = (hardware, all);
        let degraded = hw == 0;
        let changed = degraded != self.degraded;
        self.degraded = degraded;
        changed.then_some(Window {
            hardware: hw,
            samples: n,
        })
    }
}

/// The samples of the window that changed a verdict (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Usable hardware timestamps in the window.
    pub hardware: u64,
    /// Packets in the window.
    pub samples: u64,
}

/// A verdict change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Which direction.
    pub direction: Direction,
    /// Degraded now (else recovered).
    pub degraded: bool,
    /// The window that decided it.
    pub window: Window,
}

/// The check of both directions against what start-up promised.
#[derive(Clone, Debug, Default)]
pub struct TimestampCheck {
    /// The interfaces whose NICs promised hardware timestamps (for logs and labels).
    interfaces: String,
    rx: DirState,
    tx: DirState,
}

impl TimestampCheck {
    /// A check for these promises; `interfaces` names the NICs that made them.
    pub fn new(rx_promised: bool, tx_promised: bool, interfaces: &[String]) -> Self {
        TimestampCheck {
            interfaces: interfaces.join(","),
            rx: DirState {
                promised: rx_promised,
                ..DirState::default()
            },
            tx: DirState {
                promised: tx_promised,
                ..DirState::default()
            },
        }
    }

    /// Feed the cumulative counters; returns the verdicts that changed.
    pub fn observe(&mut self, c: TsCounts) -> Vec<Transition> {
        let mut out = Vec::new();
        let rx_all = c.rx_hardware.wrapping_add(c.rx_other);
        if let Some(window) = self.rx.observe(c.rx_hardware, rx_all) {
            out.push(Transition {
                direction: Direction::Rx,
                degraded: self.rx.degraded,
                window,
            });
        }
        if let Some(window) = self.tx.observe(c.tx_hardware, c.tx_requested) {
            out.push(Transition {
                direction: Direction::Tx,
                degraded: self.tx.degraded,
                window,
            });
        }
        out
    }

    /// Whether a direction that was promised hardware timestamps delivers none.
    pub fn degraded(&self, d: Direction) -> bool {
        match d {
            Direction::Rx => self.rx.degraded,
            Direction::Tx => self.tx.degraded,
        }
    }

    /// Whether either direction is degraded.
    pub fn any_degraded(&self) -> bool {
        self.rx.degraded || self.tx.degraded
    }

    /// The interfaces that made the promises, comma-separated.
    pub fn interfaces(&self) -> &str {
        &self.interfaces
    }

    /// One line for a health reason ("" when nothing is degraded).
    pub fn reason(&self) -> String {
        let dirs: Vec<&str> = [Direction::Rx, Direction::Tx]
            .into_iter()
            .filter(|&d| self.degraded(d))
            .map(|d| match d {
                Direction::Rx => "receive",
                Direction::Tx => "transmit",
            })
            .collect();
        if dirs.is_empty() {
            String::new()
        } else {
            format!(
                "hardware {} timestamps promised by {} are not arriving",
                dirs.join(" and "),
                self.interfaces
            )
        }
    }

    /// Log a transition (warning when degraded, info when recovered).
    pub fn log(&self, t: &Transition) {
        let (dir, what) = match t.direction {
            Direction::Rx => ("receive", "received packets"),
            Direction::Tx => ("transmit", "replies asked for a transmit timestamp"),
        };
        if t.degraded {
            tracing::warn!(
                interface = %self.interfaces,
                "hardware {dir} timestamps were promised but none arrive: 0 of {} {what} got a usable NIC timestamp (the NIC accepted the configuration but does not stamp, or the PHC tracking cannot convert its stamps); serving software timestamps",
                t.window.samples
            );
        } else {
            tracing::info!(
                interface = %self.interfaces,
                "hardware {dir} timestamps arrive again: {} of {} {what}",
                t.window.hardware,
                t.window.samples
            );
        }
    }

    /// `hwntpd_timestamping_degraded`: (interfaces, direction, degraded) for
    /// each direction promised hardware timestamps (none when none was).
    pub fn gauges(&self) -> Vec<(String, &'static str, bool)> {
        [(Direction::Rx, self.rx), (Direction::Tx, self.tx)]
            .into_iter()
            .filter(|(_, st)| st.promised)
            .map(|(d, st)| (self.interfaces.clone(), d.name(), st.degraded))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rx_hw: u64, rx_other: u64, tx_req: u64, tx_hw: u64) -> TsCounts {
        TsCounts {
            rx_hardware: rx_hw,
            rx_other,
            tx_requested: tx_req,
            tx_hardware: tx_hw,
        }
    }

    #[test]
    fn e1000e_in_qemu_is_degraded_both_ways() {
        // filter ALL and TX_ON accepted; then only software RX and TX misses.
        let mut c = TimestampCheck::new(true, true, &["eth0".into()]);
        assert!(c.observe(counts(0, 3, 2, 0)).is_empty(), "too few samples");
        assert!(!c.any_degraded());
        let t = c.observe(counts(0, 9, 8, 0));
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            Transition {
                direction: Direction::Rx,
                degraded: true,
                window: Window {
                    hardware: 0,
                    samples: 9
                }
            }
        );
        assert_eq!((t[1].direction, t[1].degraded), (Direction::Tx, true));
        assert!(c.degraded(Direction::Rx) && c.degraded(Direction::Tx));
        assert_eq!(
            c.reason(),
            "hardware receive and transmit timestamps promised by eth0 are not arriving"
        );
        assert_eq!(
            c.gauges(),
            vec![("eth0".into(), "rx", true), ("eth0".into(), "tx", true)]
        );
        // Still none: no new transition, still degraded.
        assert!(c.observe(counts(0, 30, 30, 0)).is_empty());
        assert!(c.any_degraded());
    }

    #[test]
    fn igb_in_qemu_hardware_tx_software_rx_is_healthy() {
        // rx not promised (the filter fell back), tx promised and delivered.
        let mut c = TimestampCheck::new(false, true, &["eth0".into()]);
        assert!(c.observe(counts(0, 100, 8, 8)).is_empty());
        assert!(!c.any_degraded());
        assert_eq!(c.reason(), "");
        assert_eq!(
            c.gauges(),
            vec![("eth0".into(), "tx", false)],
            "rx not promised"
        );
    }

    #[test]
    fn some_software_stamps_among_hardware_ones_are_fine() {
        let mut c = TimestampCheck::new(true, true, &["eth0".into(), "eth1".into()]);
        assert!(c.observe(counts(1, 50, 20, 1)).is_empty());
        assert!(!c.any_degraded());
        assert_eq!(c.interfaces(), "eth0,eth1");
    }

    #[test]
    fn recovers_and_idle_keeps_the_verdict() {
        let mut c = TimestampCheck::new(false, true, &["eth0".into()]);
        let t = c.observe(counts(0, 0, 10, 0));
        assert_eq!(t.len(), 1);
        assert!(c.degraded(Direction::Tx));
        // Idle: fewer samples than MIN_SAMPLES never change the verdict.
        for extra in 1..MIN_SAMPLES {
            assert!(c.observe(counts(0, 0, 10 + extra, extra)).is_empty());
            assert!(c.degraded(Direction::Tx));
        }
        // A full window with hardware stamps: recovered, logged as such.
        let t = c.observe(counts(0, 0, 10 + MIN_SAMPLES, MIN_SAMPLES));
        assert_eq!(
            t,
            vec![Transition {
                direction: Direction::Tx,
                degraded: false,
                window: Window {
                    hardware: MIN_SAMPLES,
                    samples: MIN_SAMPLES
                }
            }]
        );
        assert!(!c.any_degraded());
    }

    #[test]
    fn nothing_promised_nothing_checked() {
        let mut c = TimestampCheck::new(false, false, &[]);
        assert!(c.observe(counts(0, 1000, 1000, 0)).is_empty());
        assert!(!c.any_degraded());
        assert!(c.gauges().is_empty());
    }
}
