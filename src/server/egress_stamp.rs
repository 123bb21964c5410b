//! `--egress-stamp`: whether basic replies get their transmit timestamp
//! written at egress by the kernel program of [`crate::net::egress`], and the
//! thread that keeps its clock offset and counters current.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::stats::WorkerStats;
use crate::clock::domain::ServedClock;
use crate::config::EgressStampArg;
use crate::net::egress::{ethernet_interfaces, realtime_minus_tai_ns, EgressSlots, EgressStamper};

/// How often the TAI offset and the counters are refreshed.
const REFRESH: Duration = Duration::from_millis(250);
/// How often new interfaces are looked for (while privileged).
const RESCAN: Duration = Duration::from_secs(5);

/// What the start-up decided, for the log and the caller.
pub struct EgressStamping {
    /// The refresher thread, when the program runs.
    pub thread: Option<JoinHandle<()>>,
    /// The program's counters, summed into the statistics.
    pub stats: Arc<WorkerStats>,
    /// The workers' handle on the per-reply slots, when the program runs.
    pub slots: Option<EgressSlots>,
}

/// Why egress stamping cannot be used with these settings, if it cannot.
pub fn unsuitable(served: ServedClock, tx_hardware: bool) -> Option<&'static str> {
    if served != ServedClock::System {
        return Some(
            "the PHC is served: the program can add a fixed offset to CLOCK_TAI, not the PHC fit",
        );
    }
    if tx_hardware {
        return Some("hardware transmit timestamps: the estimate aims at the NIC's transmit time, after the driver, which a reading at egress would miss");
    }
    None
}

/// Decide, load and attach; with `auto`, anything missing is logged and the
/// replies keep the estimate; with `on`, it is a start-up error.
pub fn start(
    arg: EgressStampArg,
    correction: bool,
    served: ServedClock,
    tx_hardware: bool,
    sockets: &[RawFd],
    stop: Arc<AtomicBool>,
) -> Result<EgressStamping> {
    let stats = Arc::new(WorkerStats::default());
    let none = |stats| EgressStamping {
        thread: None,
        stats,
        slots: None,
    };
    if arg == EgressStampArg::Off {
        tracing::info!("basic transmit timestamps: pre-send reading plus the latency estimate (--egress-stamp off)");
        return Ok(none(stats));
    }
    let fail = |why: String, stats| -> Result<EgressStamping> {
        if arg == EgressStampArg::On {
            bail!("--egress-stamp on: {why}");
        }
        tracing::info!(
            why = %why,
            "basic transmit timestamps: pre-send reading plus the latency estimate (egress stamping not used)"
        );
        Ok(none(stats))
    };
    if let Some(why) = unsuitable(served, tx_hardware) {
        return fail(why.to_string(), stats);
    }
    let mut stamper = match EgressStamper::new() {
        Ok(s) => s,
        Err(e) => {
            return fail(
                format!("cannot load the eBPF program (needs root or CAP_BPF + CAP_NET_ADMIN, Linux 6.6 or later): {e}"),
                stats,
            )
        }
    };
    for &fd in sockets {
        if let Err(e) = stamper.add_socket(fd) {
            return fail(
                format!("cannot register a socket with the program: {e}"),
                stats,
            );
        }
    }
    match realtime_minus_tai_ns() {
        Ok(off) => stamper.set_offset(off),
        Err(e) => return fail(format!("cannot read the TAI offset: {e}"), stats),
    }
    let mut tried = Vec::new();
    attach_new(&mut stamper, &mut tried);
    if stamper.interfaces().is_empty() {
        return fail(
            "no Ethernet-framed interface took the program (tcx egress)".into(),
            stats,
        );
    }
    tracing::info!(
        interfaces = ?stamper.interfaces(),
        "basic transmit timestamps: written at egress by an eBPF program (tcx), a kernel reading taken as the reply leaves for the device; the pre-send estimate stays in replies the program does not take"
    );
    let out = stats.clone();
    let slots = Some(stamper.slots(correction));
    let thread = std::thread::Builder::new()
        .name("hwntpd-egress".into())
        .spawn(move || refresher(stamper, tried, out, stop))?;
    Ok(EgressStamping {
        thread: Some(thread),
        stats,
        slots,
    })
}

/// Attach to every Ethernet interface not yet tried (`tried`: ifindexes,
/// failures included, so each is tried and logged once).
fn attach_new(stamper: &mut EgressStamper, tried: &mut Vec<u32>) {
    for (name, index) in ethernet_interfaces() {
        if tried.contains(&index) {
            continue;
        }
        tried.push(index);
        match stamper.attach(&name, index) {
            Ok(()) => tracing::debug!(interface = %name, "egress program attached"),
            Err(e) => tracing::warn!(interface = %name, "egress program not attached: {e}"),
        }
    }
}

fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Copy the program's counters into the statistics.
fn publish(stamper: &EgressStamper, stats: &WorkerStats) {
    stats
        .egress_stamped
        .store(stamper.stamped(), Ordering::Relaxed);
    stats
        .egress_refused
        .store(stamper.refused(), Ordering::Relaxed);
}

fn refresher(
    mut stamper: EgressStamper,
    mut tried: Vec<u32>,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
) {
    let mut last_scan = Instant::now();
    let mut warned = false;
    while !stop.load(Ordering::Acquire) {
        match realtime_minus_tai_ns() {
            Ok(off) => {
                stamper.set_offset(off);
                warned = false;
            }
            Err(e) => {
                // Without a current offset the program could only refuse.
                stamper.disable();
                if !warned {
                    tracing::warn!("egress stamping paused: cannot read the TAI offset: {e}");
                    warned = true;
                }
            }
        }
        publish(&stamper, &stats);
        if last_scan.elapsed() >= RESCAN && privileged() {
            last_scan = Instant::now();
            let before = stamper.interfaces().len();
            attach_new(&mut stamper, &mut tried);
            if stamper.interfaces().len() > before {
                tracing::info!(interfaces = ?stamper.interfaces(), "egress program: interfaces now");
            }
        }
        std::thread::sleep(REFRESH);
    }
    // Last counts for the final statistics; dropping the stamper closes the
    // links and the kernel detaches the program.
    publish(&stamper, &stats);
    stamper.disable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsuitable_settings() {
        assert!(unsuitable(ServedClock::System, false).is_none());
        assert!(unsuitable(ServedClock::Phc, false).is_some());
        assert!(unsuitable(ServedClock::System, true).is_some());
    }

    #[test]
    fn off_and_unsuitable_are_not_errors_unless_on() {
        let stop = Arc::new(AtomicBool::new(false));
        let r = start(
            EgressStampArg::Off,
            false,
            ServedClock::System,
            false,
            &[],
            stop.clone(),
        )
        .unwrap();
        assert!(r.thread.is_none());
        let r = start(
            EgressStampArg::Auto,
            false,
            ServedClock::Phc,
            false,
            &[],
            stop.clone(),
        )
        .unwrap();
        assert!(r.thread.is_none());
        assert!(start(
            EgressStampArg::On,
            false,
            ServedClock::Phc,
            false,
            &[],
            stop
        )
        .is_err());
    }
}
