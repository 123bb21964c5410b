//! The server state snapshot that workers read for every reply, and the thread
//! that refreshes it once a second.
//!
//! Workers call [`StateCell::load`] (lock-free, no allocation: an `arc_swap`
//! load and a copy). Only the refresher allocates, once per [`StateCell::store`].

use super::kernel::{read_kernel_clock, KernelClock};
use super::realtime;
use super::reference::{
    compute_state, unsync_reason, ReferenceConfig, ReferenceKind, ReferenceTracker,
};
use crate::protocol::ServerState;
use arc_swap::ArcSwap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the refresher recomputes the state.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The refresher's sleep step: it notices a stop request within this.
pub const STOP_POLL_STEP: Duration = Duration::from_millis(50);

/// The current [`ServerState`], shared between the refresher (writer) and the
/// workers (readers).
pub struct StateCell {
    inner: ArcSwap<ServerState>,
    /// Claims set at run time (SIGHUP), laid over every state stored. Only the
    /// writers (once a second, and a reload) take this lock, never a worker.
    claims: Mutex<Option<Claims>>,
    /// Set while the node is unhealthy under `--on-unsync drop`: the workers
    /// then see an unsynchronised state and answer nothing.
    withheld: AtomicBool,
}

/// The claims of the configuration that a reload changes without restarting
/// the thread that computes the state: stratum and reference ID while
/// synchronised (`--stratum`, `--refid`) and whether to answer while not
/// (`--on-unsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Stratum while synchronised.
    pub stratum: u8,
    /// Reference ID while synchronised (encoded).
    pub refid: [u8; 4],
    /// Answer while unsynchronised.
    pub serve_unsynchronized: bool,
    /// Stratum and reference ID are an upstream's (`--reference ntp:`), not ours.
    pub upstream_identity: bool,
}

impl Claims {
    /// The claims of `cfg`.
    pub fn of(cfg: &ReferenceConfig) -> Self {
        Claims {
            stratum: cfg.stratum,
            refid: cfg.refid,
            serve_unsynchronized: cfg.serve_unsynchronized,
            upstream_identity: cfg.kind == ReferenceKind::Ntp,
        }
    }

    /// `state` with these claims (pure).
    pub fn apply(&self, mut state: ServerState) -> ServerState {
        state.serve_unsynchronized = self.serve_unsynchronized;
        if !state.is_unsynchronized() && !self.upstream_identity {
            state.stratum = self.stratum;
            state.refid = self.refid;
        }
        state
    }
}

impl StateCell {
    /// A cell holding `state`.
    pub fn new(state: ServerState) -> Self {
        StateCell {
            inner: ArcSwap::from_pointee(state),
            claims: Mutex::new(None),
            withheld: AtomicBool::new(false),
        }
    }

    /// From now on, lay `claims` over every state stored, starting with the
    /// current one at once (a reload; the thread computing the state goes on
    /// with the configuration it started with).
    pub fn set_claims(&self, claims: Claims) {
        let mut guard = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        *guard = Some(claims);
        self.inner
            .store(Arc::new(claims.apply(self.load_reference())));
    }

    /// A copy of the state to serve (lock-free, no allocation): the
    /// reference's, or LI 3 / stratum 16 while [`StateCell::set_withheld`].
    #[inline]
    pub fn load(&self) -> ServerState {
        let s = **self.inner.load();
        if self.withheld.load(Ordering::Relaxed) {
            ServerState {
                leap: crate::protocol::LeapIndicator::Unsynchronized,
                stratum: ServerState::STRATUM_UNSYNC,
                ..s
            }
        } else {
            s
        }
    }

    /// The reference's state, whether withheld or not (for the health check).
    pub fn load_reference(&self) -> ServerState {
        **self.inner.load()
    }

    /// Withhold the state (serve it as unsynchronised) or stop withholding.
    /// Returns whether this changed anything.
    pub fn set_withheld(&self, withheld: bool) -> bool {
        self.withheld.swap(withheld, Ordering::Relaxed) != withheld
    }

    /// Replaces the state; readers see either the old or the new one whole.
    pub fn store(&self, state: ServerState) {
        let guard = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let state = guard.map_or(state, |c| c.apply(state));
        self.inner.store(Arc::new(state));
    }
}

impl std::fmt::Debug for StateCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StateCell").field(&self.load()).finish()
    }
}

/// Reads the kernel clock and the time once and computes the state.
/// `kernel_failed` remembers whether the last `adjtimex` failed, so a failure
/// is logged once, not every second.
fn refresh_once(
    cfg: &ReferenceConfig,
    tracker: &mut ReferenceTracker,
    kernel_failed: &mut bool,
) -> ServerState {
    let kernel = match read_kernel_clock() {
        Ok(k) => {
            if *kernel_failed {
                tracing::info!("adjtimex works again");
                *kernel_failed = false;
            }
            k
        }
        Err(e) => {
            if !*kernel_failed {
                tracing::warn!(error = %e, "adjtimex failed: treating the kernel clock as unsynchronised");
                *kernel_failed = true;
            }
            KernelClock::unreadable(realtime::now_unix())
        }
    };
    compute_state(cfg, &kernel, realtime::now(), tracker)
}

/// The state computed synchronously at start-up, so the very first request is
/// answered right. Logs the starting status once.
pub fn initial_state(cfg: &ReferenceConfig) -> ServerState {
    let mut tracker = ReferenceTracker::new();
    let mut kernel_failed = false;
    let state = refresh_once(cfg, &mut tracker, &mut kernel_failed);
    if state.is_unsynchronized() {
        let reason = read_kernel_clock()
            .map(|k| unsync_reason(&k))
            .unwrap_or("adjtimex failed");
        tracing::warn!(
            reference = %cfg.kind,
            reason,
            "reference clock unsynchronised at start: serving LI 3, stratum 16"
        );
    } else {
        tracing::info!(
            reference = %cfg.kind,
            stratum = state.stratum,
            precision = state.precision,
            root_dispersion_ns = state.root_dispersion.to_nanos(),
            "reference clock synchronised"
        );
    }
    state
}

/// Starts the thread that refreshes `cell` from `cfg` every
/// [`REFRESH_INTERVAL`] (first refresh at once) until `stop` is set; it notices
/// `stop` within [`STOP_POLL_STEP`]. Fails only if the thread cannot be spawned.
pub fn spawn_refresher(
    cfg: ReferenceConfig,
    cell: Arc<StateCell>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hwntpd-clock".into())
        .spawn(move || {
            let mut tracker = ReferenceTracker::new();
            let mut kernel_failed = false;
            while !stop.load(Ordering::Acquire) {
                cell.store(refresh_once(&cfg, &mut tracker, &mut kernel_failed));
                let deadline = Instant::now() + REFRESH_INTERVAL;
                loop {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(STOP_POLL_STEP));
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LeapIndicator, NtpShort, NtpTimestamp};

    fn marked(i: u32) -> ServerState {
        // Every field derived from `i`, so a torn read would show.
        let b = i.to_be_bytes();
        ServerState {
            leap: LeapIndicator::NoWarning,
            stratum: 1 + (i % 15) as u8,
            precision: -20,
            root_delay: NtpShort(i),
            root_dispersion: NtpShort(i.wrapping_mul(3)),
            refid: b,
            reference_time: NtpTimestamp(u64::from(i) << 32 | u64::from(i)),
            min_poll: 4,
            max_poll: 17,
            serve_unsynchronized: true,
        }
    }

    #[test]
    fn withheld_state_is_unsynchronised_but_the_reference_is_kept() {
        let mut s = marked(3);
        s.serve_unsynchronized = false;
        let cell = StateCell::new(s);
        assert!(!cell.load().is_unsynchronized());
        assert!(cell.set_withheld(true));
        assert!(!cell.set_withheld(true), "no change the second time");
        let served = cell.load();
        assert!(served.is_unsynchronized());
        assert_eq!(served.stratum, ServerState::STRATUM_UNSYNC);
        assert!(!served.serve_unsynchronized, "so the workers drop");
        assert_eq!(
            cell.load_reference(),
            s,
            "the health check sees the reference"
        );
        assert!(cell.set_withheld(false));
        assert_eq!(cell.load(), s);
    }

    #[test]
    fn store_load_across_threads() {
        let cell = Arc::new(StateCell::new(marked(0)));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let cell = Arc::clone(&cell);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut last = 0u32;
                    let mut reads = 0u64;
                    while !done.load(Ordering::Acquire) || reads == 0 {
                        let s = cell.load();
                        let i = s.root_delay.0;
                        assert_eq!(s, marked(i), "torn state");
                        assert!(i >= last, "went backwards: {i} after {last}");
                        last = i;
                        reads += 1;
                    }
                    last
                })
            })
            .collect();
        for i in 1..=2_000u32 {
            cell.store(marked(i));
        }
        done.store(true, Ordering::Release);
        for r in readers {
            let last = r.join().expect("reader panicked");
            assert!(last <= 2_000);
        }
        assert_eq!(cell.load(), marked(2_000));
    }

    #[test]
    fn claims_apply_at_once_and_to_every_later_state() {
        let mut cfg = ReferenceConfig::local(-23);
        let cell = StateCell::new(initial_state(&cfg));
        assert_eq!(&cell.load().refid, b"LOCL");
        cfg.stratum = 3;
        cfg.refid = [10, 0, 0, 1];
        cfg.serve_unsynchronized = false;
        cell.set_claims(Claims::of(&cfg));
        let s = cell.load();
        assert_eq!(
            (s.stratum, s.refid, s.serve_unsynchronized),
            (3, [10, 0, 0, 1], false)
        );
        // The refresher still computes with its old configuration.
        cell.store(initial_state(&ReferenceConfig::local(-23)));
        assert_eq!((cell.load().stratum, cell.load().refid), (3, [10, 0, 0, 1]));
        // Unsynchronised states keep stratum 16.
        cell.store(ServerState::unsynchronized(-23));
        let s = cell.load();
        assert_eq!(
            (s.stratum, &s.refid, s.serve_unsynchronized),
            (16, b"INIT", false)
        );
        // An upstream's identity is left alone.
        let mut ntp = cfg.clone();
        ntp.kind = ReferenceKind::Ntp;
        let mut upstream = initial_state(&ReferenceConfig::local(-23));
        upstream.stratum = 2;
        upstream.refid = [192, 0, 2, 1];
        let s = Claims::of(&ntp).apply(upstream);
        assert_eq!(
            (s.stratum, s.refid, s.serve_unsynchronized),
            (2, [192, 0, 2, 1], false)
        );
    }

    #[test]
    fn initial_state_local_is_ready() {
        let cfg = ReferenceConfig::local(-23);
        let s = initial_state(&cfg);
        assert_eq!(&s.refid, b"LOCL");
        assert_eq!(s.stratum, 1);
        assert_eq!(s.precision, -23);
        assert!(s.leap != LeapIndicator::Unsynchronized);
        let (now, _) = realtime::now_unix();
        let (rs, _) = s.reference_time.to_unix_near(now);
        assert!((now - rs).abs() <= 2, "reference time {rs} vs now {now}");
    }

    #[test]
    fn refresher_refreshes_and_stops_promptly() {
        let cfg = ReferenceConfig::local(-23);
        let mut sentinel = ServerState::unsynchronized(-5);
        sentinel.refid = *b"TEST";
        let cell = Arc::new(StateCell::new(sentinel));
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_refresher(cfg, Arc::clone(&cell), Arc::clone(&stop)).expect("spawn");

        // The first refresh happens at once.
        let t0 = Instant::now();
        while cell.load().refid == *b"TEST" && t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = cell.load();
        assert_eq!(&first.refid, b"LOCL", "refresher never stored a state");

        // About a second later the reference time moves on.
        while cell.load().reference_time == first.reference_time
            && t0.elapsed() < Duration::from_secs(4)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let second = cell.load();
        let step = second.reference_time.diff_nanos(first.reference_time);
        assert!(
            (500_000_000..=3_000_000_000).contains(&step),
            "refresh step {step} ns"
        );

        // Stop mid-sleep: the thread must notice within ~100 ms.
        std::thread::sleep(Duration::from_millis(120));
        let t1 = Instant::now();
        stop.store(true, Ordering::Release);
        h.join().expect("refresher panicked");
        let took = t1.elapsed();
        assert!(took < Duration::from_millis(300), "stop took {took:?}");
    }
}
