//! Restarting a worker that met an error it cannot recover from.
//!
//! A worker handles the run-time errors it can where they happen
//! ([`crate::server::resilience`]). When one leaves its ring in an unknown
//! state (completions the kernel dropped, an `io_uring_enter` error other
//! than `EINTR`/`EAGAIN`/`EBUSY`), its run ends; the supervisor, on the same
//! thread, releases the ring and builds a new one over the same sockets
//! (datagrams waiting in them are kept), after a pause that doubles with each
//! failure in a row (from [`RESTART_PAUSE_MIN`] up to [`RESTART_PAUSE_MAX`]).
//! The other workers serve on meanwhile, and the process never ends for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::server::stats::bump;
use crate::server::worker::{Worker, WorkerConfig};

/// Pause before the first restart of a worker.
pub const RESTART_PAUSE_MIN: Duration = Duration::from_millis(50);
/// Longest pause between restarts.
pub const RESTART_PAUSE_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long before failing starts over at the shortest pause.
pub const STABLE_RUN: Duration = Duration::from_secs(30);

/// Sleep `d` in small steps; `false` if `stop` was set meanwhile.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

/// Run one worker on this thread until `cfg.stop` is set, restarting it
/// after each error it cannot recover from (counted in `restarts`).
/// `ready` hears whether the first start worked (a failure then is a
/// start-up error the caller reports; nothing is retried).
pub fn supervise(cfg: WorkerConfig, ready: impl FnOnce(Result<(), String>)) {
    let (id, stats, stop) = (cfg.id, cfg.stats.clone(), cfg.stop.clone());
    let mut worker = match Worker::start(cfg) {
        Ok(w) => w,
        Err(failed) => return ready(Err(failed.0.to_string())),
    };
    ready(Ok(()));
    let mut wait = RESTART_PAUSE_MIN;
    loop {
        let started = Instant::now();
        let (error, mut cfg) = match worker.run_or_return() {
            Ok(()) => return,
            Err(failed) => *failed,
        };
        if started.elapsed() >= STABLE_RUN {
            wait = RESTART_PAUSE_MIN;
        }
        tracing::error!(
            worker = id,
            "worker failed: {error}; restarting it in {wait:?} (new ring, same sockets)"
        );
        worker = loop {
            if !pause(&stop, wait) {
                return;
            }
            wait = (wait * 2).min(RESTART_PAUSE_MAX);
            match Worker::start(cfg) {
                Ok(w) => break w,
                Err(failed) => {
                    let (e, back) = *failed;
                    cfg = back;
                    tracing::error!(
                        worker = id,
                        "worker restart failed: {e}; next try in {wait:?}"
                    );
                }
            }
        };
        bump(&stats.restarts);
        tracing::warn!(
            worker = id,
            restarts = stats.restarts.load(Ordering::Relaxed),
            "worker restarted"
        );
    }
}
