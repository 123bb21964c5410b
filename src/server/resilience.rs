//! What keeps a worker serving through errors and overload: the
//! classification of run-time errors (each kind counted, logged the first
//! time and then at powers of two, and survived; the few that leave the ring
//! in an unknown state end the worker's run so its supervisor rebuilds it),
//! the staleness bound on requests, the socket-overflow count, and the
//! subnet-broadcast addresses a request may not come from.

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Default of `--max-request-age-ms`.
///
/// 50 ms: a healthy server answers within microseconds, and a burst its
/// 4 MiB socket buffer absorbs drains within a few milliseconds; a request
/// that waited 50 ms adds 50 ms to its client's measured delay, some 100
/// times a datacenter round trip, so every client's delay filter discards it
/// anyway, and answering it would only make the fresh requests behind it
/// wait too.
pub const DEFAULT_MAX_REQUEST_AGE_MS: u64 = 50;

/// What an `io_uring_enter` error means for the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnterError {
    /// `EINTR`: a signal arrived during the wait. Retry.
    Interrupted,
    /// `EAGAIN`: the kernel could not allocate for the submission. Retry
    /// after a short pause; the entries stay queued.
    Again,
    /// `EBUSY`: completions must be reaped first. Reap, retry.
    Busy,
    /// The submission queue was full and the kernel took nothing (a request
    /// not queued; the caller drops or re-arms it later).
    QueueFull,
    /// `EBADR`: the kernel dropped completions. The state of in-flight
    /// requests is unknown: restart the worker.
    CompletionsDropped,
    /// Anything else: restart the worker.
    Fatal,
}

impl EnterError {
    /// Classify an error of `io_uring_enter` or of queueing a request.
    pub fn of(e: &std::io::Error) -> EnterError {
        match e.raw_os_error() {
            Some(libc::EINTR) => EnterError::Interrupted,
            Some(libc::EAGAIN) => EnterError::Again,
            Some(libc::EBUSY) => EnterError::Busy,
            Some(libc::EBADR) => EnterError::CompletionsDropped,
            None if e.kind() == std::io::ErrorKind::WouldBlock => EnterError::QueueFull,
            _ => EnterError::Fatal,
        }
    }

    /// Whether the worker goes on after this error.
    pub fn recoverable(self) -> bool {
        !matches!(self, EnterError::CompletionsDropped | EnterError::Fatal)
    }
}

/// The kind of a failed send, by errno (the counter it goes to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// `ENOBUFS`: a device or socket queue is full.
    NoBufs,
    /// `EPERM`: a firewall rule refused the datagram.
    Perm,
    /// `EAGAIN`: the socket's send buffer is full.
    Again,
    /// Any other errno.
    Other,
}

impl SendError {
    /// Classify a send completion's negative result.
    pub fn of(result: i32) -> SendError {
        match -result {
            libc::ENOBUFS => SendError::NoBufs,
            libc::EPERM => SendError::Perm,
            libc::EAGAIN => SendError::Again,
            _ => SendError::Other,
        }
    }
}

/// Whether the `count`-th occurrence of an error kind is logged: the first,
/// then at powers of two, so a persistent fault stays visible in the log
/// without flooding it.
pub fn worth_logging(count: u64) -> bool {
    count.is_power_of_two()
}

/// Whether a request received at `received_ns` and handled at `now_ns` (both
/// in one clock domain) waited longer than `max_age_ns` (0: no bound). A
/// negative age (the clock stepped back) is never stale.
pub fn is_stale(received_ns: i128, now_ns: i128, max_age_ns: u64) -> bool {
    max_age_ns != 0 && now_ns - received_ns > i128::from(max_age_ns)
}

/// The datagrams a socket dropped since the last reading, from its
/// cumulative `SO_RXQ_OVFL` count (`seen`: the last count, `reported`: the
/// new one; the 32-bit count wraps).
pub fn overflow_delta(seen: u32, reported: u32) -> u32 {
    reported.wrapping_sub(seen)
}

/// Subnet-broadcast addresses of the host's own interfaces, which no client
/// can send from (a request "from" one is spoofed, and a reply to it would
/// be refused by the kernel or reach the whole subnet). Refreshed by the
/// main thread; each worker copies it once a second.
#[derive(Clone, Default)]
pub struct LocalBroadcasts(Arc<ArcSwap<Vec<Ipv4Addr>>>);

impl LocalBroadcasts {
    /// Replace the set.
    pub fn set(&self, addrs: Vec<Ipv4Addr>) {
        self.0.store(Arc::new(addrs));
    }

    /// The current set.
    pub fn get(&self) -> Arc<Vec<Ipv4Addr>> {
        self.0.load_full()
    }
}

/// Most subnet-broadcast addresses a worker checks (a host with more
/// broadcast-capable IPv4 subnets checks the first ones only).
pub const MAX_BROADCASTS: usize = 32;

/// A worker's copy of [`LocalBroadcasts`]: fixed size, no allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct BroadcastCopy {
    addrs: [u32; MAX_BROADCASTS],
    len: usize,
}

impl BroadcastCopy {
    /// Copy up to [`MAX_BROADCASTS`] addresses.
    pub fn refresh(&mut self, from: &[Ipv4Addr]) {
        self.len = from.len().min(MAX_BROADCASTS);
        for (d, s) in self.addrs.iter_mut().zip(from) {
            *d = u32::from(*s);
        }
    }

    /// Whether `ip` is one of the addresses.
    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.addrs[..self.len].contains(&ip)
    }
}

/// Settings of the guards above, one copy per worker.
#[derive(Clone, Default)]
pub struct Guards {
    /// Drop requests older than this (ns; 0: never).
    pub max_request_age_ns: u64,
    /// The host's subnet-broadcast addresses.
    pub broadcasts: LocalBroadcasts,
    /// Per socket, the `SO_RXQ_OVFL` count already counted: carried over a
    /// restart (the sockets are kept, their count goes on), empty at first.
    pub drops_seen: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn enter_errors_by_errno() {
        let e = |n| EnterError::of(&io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::EINTR), EnterError::Interrupted);
        assert_eq!(e(libc::EAGAIN), EnterError::Again);
        assert_eq!(e(libc::EBUSY), EnterError::Busy);
        assert_eq!(e(libc::EBADR), EnterError::CompletionsDropped);
        assert_eq!(e(libc::EBADF), EnterError::Fatal);
        let full = io::Error::new(io::ErrorKind::WouldBlock, "submission queue full");
        assert_eq!(EnterError::of(&full), EnterError::QueueFull);
        assert!(e(libc::EBUSY).recoverable() && EnterError::QueueFull.recoverable());
        assert!(!e(libc::EBADR).recoverable() && !e(libc::EFAULT).recoverable());
    }

    #[test]
    fn send_errors_by_errno() {
        assert_eq!(SendError::of(-libc::ENOBUFS), SendError::NoBufs);
        assert_eq!(SendError::of(-libc::EPERM), SendError::Perm);
        assert_eq!(SendError::of(-libc::EAGAIN), SendError::Again);
        assert_eq!(SendError::of(-libc::ENETUNREACH), SendError::Other);
    }

    #[test]
    fn logging_thins_out() {
        let logged: Vec<u64> = (1..=100).filter(|&n| worth_logging(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64]);
        assert!(!worth_logging(0));
    }

    #[test]
    fn staleness() {
        let ms = 1_000_000i128;
        assert!(!is_stale(0, 50 * ms, 50_000_000), "exactly the bound: kept");
        assert!(is_stale(0, 50 * ms + 1, 50_000_000));
        assert!(!is_stale(10 * ms, 0, 50_000_000), "clock stepped back");
        assert!(!is_stale(0, 1_000_000 * ms, 0), "0 turns it off");
    }

    #[test]
    fn overflow_counts_wrap() {
        assert_eq!(overflow_delta(0, 0), 0);
        assert_eq!(overflow_delta(0, 17), 17);
        assert_eq!(overflow_delta(17, 20), 3);
        assert_eq!(overflow_delta(u32::MAX - 1, 3), 5);
    }

    #[test]
    fn broadcast_copy() {
        let shared = LocalBroadcasts::default();
        shared.set(vec![
            Ipv4Addr::new(10, 1, 2, 255),
            Ipv4Addr::new(192, 168, 1, 127),
        ]);
        let mut c = BroadcastCopy::default();
        assert!(
            !c.contains(Ipv4Addr::new(10, 1, 2, 255)),
            "empty before a refresh"
        );
        c.refresh(&shared.get());
        assert!(c.contains(Ipv4Addr::new(10, 1, 2, 255)));
        assert!(c.contains(Ipv4Addr::new(192, 168, 1, 127)));
        assert!(!c.contains(Ipv4Addr::new(10, 1, 2, 254)));
        let many: Vec<Ipv4Addr> = (0..40).map(|i| Ipv4Addr::new(10, 0, i, 255)).collect();
        c.refresh(&many);
        assert!(c.contains(Ipv4Addr::new(10, 0, 31, 255)));
        assert!(
            !c.contains(Ipv4Addr::new(10, 0, 32, 255)),
            "beyond the fixed size"
        );
    }
}
