//! The socket watchdog: notices a socket whose completions have stopped
//! although the kernel holds something for it, so the worker can recover.
//!
//! What was seen (Linux 6.18, interleaved load above the server's capacity):
//! the io_uring transmit-timestamp command stops when its completion queue is
//! full and waits for the next wake-up of the socket's error queue. The stamps
//! left in the error queue are charged to the socket's receive memory; once
//! they fill it, every request is dropped, so no reply is sent, no new stamp
//! arrives, no wake-up comes, and the server is deaf for good. The worker now
//! drains that queue within each long turn, which removes the cause; the
//! watchdog is the safety net for it and for any other lost wake-up, on the
//! receive side as well.
//!
//! Each check asks two facts per direction: did a completion arrive since the
//! last check, and does the socket hold something now (a datagram, or an
//! error-queue entry). Two checks in a row with nothing completed and something
//! waiting mean a stall (one alone can be an arrival just before the check).

/// How often the worker checks its sockets.
pub const WATCHDOG_INTERVAL_MS: u64 = 100;

/// The watchdog's memory for one direction of one socket.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watchdog {
    seen: bool,
    suspect: bool,
}

impl Watchdog {
    /// A completion arrived (hot path: one store).
    #[inline]
    pub fn saw_completion(&mut self) {
        self.seen = true;
    }

    /// Nothing completed since the last check (the socket then needs a look).
    pub fn quiet(&self) -> bool {
        !self.seen
    }

    /// One periodic check; `waiting`: the kernel holds something for this
    /// direction now (only consulted when [`Watchdog::quiet`]). Returns `true`
    /// when the direction is stalled and must be recovered.
    pub fn check(&mut self, waiting: bool) -> bool {
        if std::mem::take(&mut self.seen) || !waiting {
            self.suspect = false;
            return false;
        }
        // Nothing completed, yet something waits: stalled the second time.
        let stalled = self.suspect;
        self.suspect = !stalled;
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_needs_two_quiet_checks_with_something_waiting() {
        let mut w = Watchdog::default();
        assert!(w.quiet());
        assert!(!w.check(true), "first quiet check: only suspect");
        assert!(w.check(true), "second: stalled");
        assert!(!w.check(true), "after a recovery, suspect again first");
        w.saw_completion();
        assert!(!w.quiet());
        assert!(!w.check(true), "completions flow: never stalled");
        assert!(!w.check(true));
        w.saw_completion();
        assert!(!w.check(true), "a completion clears the suspicion");
        assert!(!w.check(true));
        assert!(!w.check(false), "nothing waiting clears it too");
        assert!(!w.check(true));
        assert!(w.check(true));
    }

    #[test]
    fn idle_socket_is_never_stalled() {
        let mut w = Watchdog::default();
        for _ in 0..10 {
            assert!(!w.check(false));
        }
    }
}
