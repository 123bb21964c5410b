//! Signals. SIGINT and SIGTERM stop the server (final statistics are
//! logged); SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM, whose default action would
//! kill it, never do:
//!
//! * SIGHUP: the reload signal. Until configuration reload exists it is
//!   logged and ignored ([`Pending::hup`] is where reload plugs in);
//! * SIGUSR1: log (and write to `--stats-file`) the statistics now;
//! * SIGUSR2, SIGALRM: logged and ignored.
//!
//! The handlers only set flags (async-signal-safe); the main thread looks at
//! them every 100 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGALRM, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

/// The flags the signal handlers set.
pub struct Signals {
    hup: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
    usr2: Arc<AtomicBool>,
    alrm: Arc<AtomicBool>,
}

/// Which of the non-fatal signals arrived since the last look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// SIGHUP: reload (logged and ignored until reload exists).
    pub hup: bool,
    /// SIGUSR1: report the statistics now.
    pub usr1: bool,
    /// SIGUSR2 (ignored).
    pub usr2: bool,
    /// SIGALRM (ignored).
    pub alrm: bool,
}

impl Signals {
    /// Install the handlers: SIGINT and SIGTERM set `stop`, the others set
    /// flags read by [`Signals::take`].
    pub fn install(stop: &Arc<AtomicBool>) -> std::io::Result<Signals> {
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        let s = Signals {
            hup: Arc::default(),
            usr1: Arc::default(),
            usr2: Arc::default(),
            alrm: Arc::default(),
        };
        for (sig, flag) in [
            (SIGHUP, &s.hup),
            (SIGUSR1, &s.usr1),
            (SIGUSR2, &s.usr2),
            (SIGALRM, &s.alrm),
        ] {
            signal_hook::flag::register(sig, flag.clone())?;
        }
        Ok(s)
    }

    /// The signals that arrived since the last call (each reported once).
    pub fn take(&self) -> Pending {
        let take = |f: &AtomicBool| f.swap(false, Ordering::Relaxed);
        Pending {
            hup: take(&self.hup),
            usr1: take(&self.usr1),
            usr2: take(&self.usr2),
            alrm: take(&self.alrm),
        }
    }
}

impl Pending {
    /// Log the signals that are ignored (SIGHUP until reload exists,
    /// SIGUSR2, SIGALRM).
    pub fn log_ignored(&self) {
        if self.hup {
            tracing::info!(
                "SIGHUP received: configuration reload is not implemented yet; ignored, still serving"
            );
        }
        for (got, name) in [(self.usr2, "SIGUSR2"), (self.alrm, "SIGALRM")] {
            if got {
                tracing::info!("{name} received: ignored, still serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each signal, raised in this process, sets its flag once and kills
    /// nothing (the test process would die otherwise).
    #[test]
    fn signals_set_flags_and_do_not_kill() {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Signals::install(&stop).unwrap();
        assert_eq!(s.take(), Pending::default());
        for (sig, want) in [
            (
                SIGHUP,
                Pending {
                    hup: true,
                    ..Pending::default()
                },
            ),
            (
                SIGUSR1,
                Pending {
                    usr1: true,
                    ..Pending::default()
                },
            ),
            (
                SIGUSR2,
                Pending {
                    usr2: true,
                    ..Pending::default()
                },
            ),
            (
                SIGALRM,
                Pending {
                    alrm: true,
                    ..Pending::default()
                },
            ),
        ] {
            signal_hook::low_level::raise(sig).unwrap();
            assert_eq!(s.take(), want, "signal {sig}");
            assert_eq!(s.take(), Pending::default(), "reported once");
        }
        assert!(!stop.load(Ordering::Relaxed));
    }
}
