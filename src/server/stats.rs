//! Per-worker counters, summed for reports.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so an increment is
//! a relaxed load and store (no atomic read-modify-write, no shared cache line on
//! the hot path); the reporter thread reads them with relaxed loads. Reports are
//! written in the Prometheus text format (usable by node_exporter's textfile
//! collector) and summarised in the log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::metrics::Families;
use crate::protocol::server::DropReason;

/// How one plain counter of [`WorkerStats`] is exported.
#[derive(Clone, Copy, Debug)]
pub struct CounterInfo {
    /// The field's name.
    pub field: &'static str,
    /// The metric (family) name, with its `_total` suffix.
    pub metric: &'static str,
    /// The series' labels as Prometheus text (`mode="basic"`), or "".
    pub labels: &'static str,
    /// What it counts.
    pub help: &'static str,
}

macro_rules! counters {
    ($( $field:ident => $metric:literal, $label:literal, $help:literal; )*) => {
        /// Counters of one worker. See the README for what each means.
        #[derive(Default)]
        #[repr(align(128))]
        pub struct WorkerStats {
            $( #[doc = $help] pub $field: AtomicU64, )*
            /// Requests dropped by the protocol core, by [`DropReason`].
            pub drops: [AtomicU64; DropReason::COUNT],
            /// |exact transmit time - the estimate a basic reply carries|, by
            /// bucket of [`ESTIMATE_ERROR_BUCKETS_NS`] (the last: above them all).
            pub estimate_error: [AtomicU64; ESTIMATE_ERROR_BUCKETS_NS.len() + 1],
            /// The sum of those errors, in ns.
            pub estimate_error_ns: AtomicU64,
            /// exact transmit time - the estimate (signed), by bucket of
            /// [`ESTIMATE_LAG_BUCKETS_NS`] (the last: above them all).
            pub estimate_lag: [AtomicU64; ESTIMATE_LAG_BUCKETS_NS.len() + 1],
            /// The signed sum of those, in ns (two's complement in a u64).
            pub estimate_lag_sum_ns: AtomicU64,
        }

        /// A plain-number copy of the counters (one worker, or the sum of all).
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( #[doc = $help] pub $field: u64, )*
            /// Drops by [`DropReason`], indexed by `reason as usize`.
            pub drops: [u64; DropReason::COUNT],
            /// Transmit-estimate errors by bucket (see [`WorkerStats::estimate_error`]).
            pub estimate_error: [u64; ESTIMATE_ERROR_BUCKETS_NS.len() + 1],
            /// The sum of those errors, in ns.
            pub estimate_error_ns: u64,
            /// Signed transmit-estimate errors by bucket (see [`WorkerStats::estimate_lag`]).
            pub estimate_lag: [u64; ESTIMATE_LAG_BUCKETS_NS.len() + 1],
            /// The signed sum of those, in ns.
            pub estimate_lag_sum_ns: i64,
        }

        impl WorkerStats {
            /// Read all counters.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $field: self.$field.load(Ordering::Relaxed), )*
                    drops: std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed)),
                    estimate_error: std::array::from_fn(|i| {
                        self.estimate_error[i].load(Ordering::Relaxed)
                    }),
                    estimate_error_ns: self.estimate_error_ns.load(Ordering::Relaxed),
                    estimate_lag: std::array::from_fn(|i| {
                        self.estimate_lag[i].load(Ordering::Relaxed)
                    }),
                    estimate_lag_sum_ns: self.estimate_lag_sum_ns.load(Ordering::Relaxed) as i64,
                }
            }
        }

        impl StatsSnapshot {
            /// Add another snapshot into this one.
            pub fn add(&mut self, other: &StatsSnapshot) {
                $( self.$field += other.$field; )*
                for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
                    *a += b;
                }
                for (a, b) in self.estimate_error.iter_mut().zip(other.estimate_error.iter()) {
                    *a += b;
                }
                self.estimate_error_ns += other.estimate_error_ns;
                for (a, b) in self.estimate_lag.iter_mut().zip(other.estimate_lag.iter()) {
                    *a += b;
                }
                self.estimate_lag_sum_ns += other.estimate_lag_sum_ns;
            }

            /// The counters in the Prometheus text exposition format (the
            /// same encoder as the metrics endpoint: [`super::metrics`]).
            pub fn to_prometheus(&self) -> String {
                let mut f = Families::default();
                self.add_families(&mut f);
                super::metrics::encode(&f.finish())
            }

            /// Every plain counter with its description, in declaration order.
            pub fn counter_values(&self) -> impl Iterator<Item = (&'static CounterInfo, u64)> {
                COUNTERS.iter().zip([$( self.$field, )*])
            }
        }

        /// How each plain counter of [`WorkerStats`] is exported, in declaration order.
        pub const COUNTERS: &[CounterInfo] = &[
            $( CounterInfo { field: stringify!($field), metric: $metric, labels: $label, help: $help }, )*
        ];
    };
}

counters! {
    received => "hwntpd_received_total", "", "Datagrams received.";
    replies_basic => "hwntpd_replies_total", "mode=\"basic\"", "Basic-mode replies sent.";
    replies_interleaved => "hwntpd_replies_total", "mode=\"interleaved\"", "Interleaved-mode replies sent.";
    replies_kod => "hwntpd_replies_total", "mode=\"kod\"", "Kiss-o'-Death replies sent.";
    rx_ts_hardware => "hwntpd_rx_timestamps_total", "source=\"hardware\"", "Receive timestamps taken from the NIC.";
    rx_ts_kernel => "hwntpd_rx_timestamps_total", "source=\"kernel\"", "Receive timestamps taken from the kernel (software).";
    rx_ts_user => "hwntpd_rx_timestamps_total", "source=\"user\"", "Receive timestamps read in user space after receipt.";
    tx_ts_requested => "hwntpd_tx_timestamps_requested_total", "", "Replies sent with a request for a transmit timestamp.";
    tx_ts_hardware => "hwntpd_tx_timestamps_total", "source=\"hardware\"", "Transmit timestamps from the NIC.";
    tx_ts_kernel => "hwntpd_tx_timestamps_total", "source=\"kernel\"", "Transmit timestamps from the kernel (software).";
    tx_ts_daemon => "hwntpd_tx_timestamps_total", "source=\"daemon\"", "Interleaved replies that served the pre-send (daemon) timestamp because no exact one came.";
    tx_ts_missed => "hwntpd_tx_timestamp_misses_total", "", "Requested transmit timestamps that never arrived.";
    tx_ts_late => "hwntpd_tx_timestamp_late_total", "", "Transmit timestamps that arrived more than 1 s late (ignored).";
    tx_ts_unmatched => "hwntpd_tx_timestamp_unmatched_total", "", "Transmit timestamps whose key matched no pending reply.";
    tx_ts_invalid => "hwntpd_tx_timestamp_invalid_total", "", "Transmit timestamps discarded because they were more than 1 s from the pre-send reading.";
    tx_estimate_ahead => "hwntpd_transmit_estimate_ahead_total", "", "Estimates later than the exact transmit time (the rest were earlier or equal).";
    send_errors => "hwntpd_send_errors_total", "", "Replies the kernel refused to send.";
    stale_completions => "hwntpd_stale_completions_total", "", "Send completions for a slot not in flight (ignored; a kernel replaying a completion).";
    send_queue_full => "hwntpd_send_queue_full_total", "", "Replies dropped because every send slot was in flight.";
    truncated => "hwntpd_truncated_total", "", "Datagrams dropped because they or their control data did not fit a receive buffer.";
    recv_errors => "hwntpd_recv_errors_total", "", "Receive completions with an error (including buffer exhaustion).";
    recv_rearms => "hwntpd_recv_rearms_total", "", "Times a multishot receive ended and was re-armed.";
    recv_stalls => "hwntpd_stalls_total", "what=\"receive\"", "Times the watchdog found a socket's receive silent with datagrams waiting, and re-armed it.";
    tx_ts_stalls => "hwntpd_stalls_total", "what=\"tx_timestamps\"", "Times the watchdog found transmit-timestamp collection silent with the error queue not empty, drained it and restarted the collection.";
    ring_enters => "hwntpd_syscalls_total", "call=\"io_uring_enter\"", "io_uring_enter system calls made by workers.";
    other_syscalls => "hwntpd_syscalls_total", "call=\"other\"", "Other system calls made by workers on the packet path.";
    direct_sends => "hwntpd_syscalls_total", "call=\"sendmsg\"", "Lone basic replies sent with their own sendmsg right after the clock reading (--direct-send), not through the ring.";
    egress_stamped => "hwntpd_egress_stamps_total", "result=\"written\"", "Basic replies whose transmit timestamp the egress program (--egress-stamp) replaced with its kernel reading at the device.";
    egress_refused => "hwntpd_egress_stamps_total", "result=\"refused\"", "Basic replies the egress program left as hwntpd wrote them because its reading was more than 10 ms from hwntpd's (a stale TAI offset, e.g. at a leap second).";
    send_path_probes => "hwntpd_syscalls_total", "call=\"sendmsg_probe\"", "Zero-length MSG_PROBE sendmsg calls warming the send path before the reading of a lone basic reply sent after the worker was idle (--warm-send-path); nothing is sent.";
    kod_rate => "hwntpd_kod_total", "code=\"rate\"", "RATE Kiss-o'-Death replies sent (rate limit).";
    kod_deny => "hwntpd_kod_total", "code=\"deny\"", "DENY Kiss-o'-Death replies sent (access list).";
    rate_leaked => "hwntpd_rate_limit_leaked_total", "", "Requests over their rate limit answered anyway (one in 2^leak).";
    client_inserts => "hwntpd_client_table_records_total", "event=\"inserted\"", "Client-table records made in an empty slot.";
    client_replacements => "hwntpd_client_table_records_total", "event=\"replaced\"", "Client-table records made in place of the idlest of a full bucket.";
    interleave_full => "hwntpd_interleave_entries_refused_total", "why=\"bucket_due\"", "Interleaved-mode entries not stored because every slot of their bucket was still due.";
    interleave_over_limit => "hwntpd_interleave_entries_refused_total", "why=\"over_limit\"", "Interleaved-mode entries not made because the source was over its rate limit or entry allowance.";
    watchdog_checks => "hwntpd_watchdog_checks_total", "", "Socket watchdog checks made by the workers (each worker about every 100 ms, busy or idle: its heartbeat).";
    enter_eintr => "hwntpd_worker_errors_total", "kind=\"enter_eintr\"", "io_uring_enter interrupted by a signal (EINTR); retried.";
    enter_eagain => "hwntpd_worker_errors_total", "kind=\"enter_eagain\"", "io_uring_enter refused for lack of kernel resources (EAGAIN); retried.";
    enter_ebusy => "hwntpd_worker_errors_total", "kind=\"enter_ebusy\"", "io_uring_enter refused while completions wait (EBUSY); completions reaped, retried.";
    enter_fatal => "hwntpd_worker_errors_total", "kind=\"enter_other\"", "io_uring_enter failed otherwise (the worker is restarted).";
    cq_overflow => "hwntpd_worker_errors_total", "kind=\"cq_overflow\"", "Turns that found the completion queue overflowed (the kernel held completions back until reaped).";
    cq_dropped => "hwntpd_worker_errors_total", "kind=\"cq_dropped\"", "Completions the kernel dropped (the worker is restarted: in-flight state is unknown).";
    sq_full => "hwntpd_worker_errors_total", "kind=\"sq_full\"", "Requests that found the submission queue full and could not be submitted (a reply dropped, or a receive re-armed later).";
    send_enobufs => "hwntpd_worker_errors_total", "kind=\"send_enobufs\"", "Sends refused with ENOBUFS (device or socket queue full).";
    send_eperm => "hwntpd_worker_errors_total", "kind=\"send_eperm\"", "Sends refused with EPERM (a firewall rule).";
    send_eagain => "hwntpd_worker_errors_total", "kind=\"send_eagain\"", "Sends refused with EAGAIN (send buffer full).";
    send_other => "hwntpd_worker_errors_total", "kind=\"send_other\"", "Sends refused with another errno.";
    recv_enobufs => "hwntpd_worker_errors_total", "kind=\"recv_enobufs\"", "Multishot receives ended because every receive buffer was in use (re-armed).";
    recv_other => "hwntpd_worker_errors_total", "kind=\"recv_other\"", "Receive completions with another errno.";
    restarts => "hwntpd_worker_restarts_total", "", "Workers restarted after an error they could not recover from (ring rebuilt, sockets kept).";
    socket_overflow => "hwntpd_socket_overflow_drops_total", "", "Datagrams the kernel dropped because a socket's receive buffer was full (SO_RXQ_OVFL).";
    stale_requests => "hwntpd_stale_requests_total", "", "Requests dropped unanswered because they waited in the socket longer than --max-request-age-ms.";
    nts_requests => "hwntpd_nts_requests_total", "", "NTS requests authenticated and answered with new cookies.";
    nts_naks => "hwntpd_nts_naks_total", "", "NTS NAKs (KoD NTSN) sent: the request's cookie could not be decrypted.";
    nts_auth_failures => "hwntpd_nts_auth_failures_total", "", "NTS requests dropped: the cookie decrypted but the Authenticator did not verify.";
    nts_malformed => "hwntpd_nts_malformed_total", "", "NTS requests dropped: NTS fields missing, repeated or of bad length.";
    nts_unauthenticated_refused => "hwntpd_nts_unauthenticated_refused_total", "", "Requests without NTS refused (DENY KoD) under --nts-require.";
    nts_ke_sessions => "hwntpd_nts_ke_sessions_total", "", "NTS-KE sessions that handed out cookies.";
    nts_ke_fail_tls => "hwntpd_nts_ke_failures_total", "reason=\"tls\"", "NTS-KE sessions failed in TLS (handshake or record layer).";
    nts_ke_fail_alpn => "hwntpd_nts_ke_failures_total", "reason=\"alpn\"", "NTS-KE sessions whose client did not negotiate ALPN ntske/1.";
    nts_ke_fail_timeout => "hwntpd_nts_ke_failures_total", "reason=\"timeout\"", "NTS-KE sessions that ran past their deadline.";
    nts_ke_fail_io => "hwntpd_nts_ke_failures_total", "reason=\"io\"", "NTS-KE sessions the client closed early (or a socket error).";
    nts_ke_fail_bad_request => "hwntpd_nts_ke_failures_total", "reason=\"bad_request\"", "NTS-KE requests answered with an Error record.";
    nts_ke_fail_no_algorithm => "hwntpd_nts_ke_failures_total", "reason=\"no_algorithm\"", "NTS-KE requests with no protocol or AEAD in common.";
    nts_ke_fail_busy => "hwntpd_nts_ke_failures_total", "reason=\"busy\"", "NTS-KE connections closed at once: the connection limit was reached.";
    nts_ke_fail_denied => "hwntpd_nts_ke_failures_total", "reason=\"denied\"", "NTS-KE connections refused by the access list.";
    nts_ke_tls_reloads => "hwntpd_nts_ke_certificate_reloads_total", "", "NTS-KE certificate and key read again after the files changed.";
}

/// Upper bounds (ns) of the buckets of the transmit-estimate error histogram.
pub const ESTIMATE_ERROR_BUCKETS_NS: [u64; 10] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
];

/// Upper bounds (ns) of the buckets of the signed transmit-estimate error
/// histogram (exact transmit time - estimate; negative: the estimate was after
/// the real transmit time).
pub const ESTIMATE_LAG_BUCKETS_NS: [i64; 27] = [
    -50_000, -20_000, -10_000, -5_000, -2_000, -1_000, -500, -250, -100, 0, 250, 500, 1_000, 1_500,
    2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 100_000, 200_000,
    1_000_000,
];

/// Metric name of the signed transmit-estimate error histogram.
pub const ESTIMATE_LAG_METRIC: &str = "hwntpd_transmit_estimate_lag_seconds";

/// Metric name of the transmit-estimate error histogram.
pub const ESTIMATE_ERROR_METRIC: &str = "hwntpd_transmit_estimate_error_seconds";

impl WorkerStats {
    /// Record how far a served transmit estimate was from the exact transmit
    /// time (`error_ns` = exact - estimate).
    pub fn record_estimate_error(&self, error_ns: i64) {
        let abs = error_ns.unsigned_abs();
        let bucket = ESTIMATE_ERROR_BUCKETS_NS
            .iter()
            .position(|&le| abs <= le)
            .unwrap_or(ESTIMATE_ERROR_BUCKETS_NS.len());
        bump(&self.estimate_error[bucket]);
        add(&self.estimate_error_ns, abs);
        let lag = ESTIMATE_LAG_BUCKETS_NS
            .iter()
            .position(|&le| error_ns <= le)
            .unwrap_or(ESTIMATE_LAG_BUCKETS_NS.len());
        bump(&self.estimate_lag[lag]);
        let sum = &self.estimate_lag_sum_ns;
        sum.store(
            sum.load(Ordering::Relaxed).wrapping_add(error_ns as u64),
            Ordering::Relaxed,
        );
        if error_ns < 0 {
            bump(&self.tx_estimate_ahead);
        }
    }
}

impl StatsSnapshot {
    /// Add every counter, the drops by reason and the transmit-estimate
    /// histogram to `f`. Counters added to the `counters!` table are exported
    /// with no further work.
    pub fn add_families(&self, f: &mut Families) {
        for (info, value) in self.counter_values() {
            f.counter(info.metric, info.labels, info.help, value);
        }
        for r in DropReason::ALL {
            f.counter(
                "hwntpd_drops_total",
                &format!("reason=\"{}\"", r.name()),
                "Requests not answered, by reason (see the README).",
                self.drops[r as usize],
            );
        }
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = self
            .estimate_error
            .iter()
            .zip(ESTIMATE_ERROR_BUCKETS_NS.iter().map(|&le| le as f64 / 1e9))
            .map(|(n, le)| {
                cumulative += n;
                (le, cumulative)
            })
            .collect();
        // The encoder adds the +Inf bucket from the count.
        cumulative += self.estimate_error[ESTIMATE_ERROR_BUCKETS_NS.len()];
        f.histogram(
            ESTIMATE_ERROR_METRIC,
            "|exact transmit time - the transmit estimate a basic reply carries|, \
             for every reply whose exact transmit time was measured.",
            &buckets,
            self.estimate_error_ns as f64 / 1e9,
            cumulative,
        );
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = self
            .estimate_lag
            .iter()
            .zip(ESTIMATE_LAG_BUCKETS_NS.iter().map(|&le| le as f64 / 1e9))
            .map(|(n, le)| {
                cumulative += n;
                (le, cumulative)
            })
            .collect();
        cumulative += self.estimate_lag[ESTIMATE_LAG_BUCKETS_NS.len()];
        f.histogram(
            ESTIMATE_LAG_METRIC,
            "exact transmit time - the transmit estimate a basic reply carries \
             (negative: the estimate was after the real transmit time).",
            &buckets,
            self.estimate_lag_sum_ns as f64 / 1e9,
            cumulative,
        );
    }

    /// Total requests dropped by the protocol core.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Total replies sent (all modes).
    pub fn total_replies(&self) -> u64 {
        self.replies_basic + self.replies_interleaved + self.replies_kod
    }

    /// Run-time errors workers met and handled (`hwntpd_worker_errors_total`, all kinds).
    pub fn worker_errors(&self) -> u64 {
        self.enter_eintr
            + self.enter_eagain
            + self.enter_ebusy
            + self.enter_fatal
            + self.cq_overflow
            + self.cq_dropped
            + self.sq_full
            + self.send_enobufs
            + self.send_eperm
            + self.send_eagain
            + self.send_other
            + self.recv_enobufs
            + self.recv_other
    }

    /// One summary line for the log.
    pub fn summary(&self) -> String {
        let mut drops = String::new();
        for r in DropReason::ALL {
            let n = self.drops[r as usize];
            if n > 0 {
                let _ = write!(drops, " {}={}", r.name(), n);
            }
        }
        format!(
            "received={} replies={} (basic={} interleaved={} kod={}) rx_ts hw/kernel/user={}/{}/{} \
             tx_ts hw/kernel/daemon/missed/late={}/{}/{}/{}/{} send_errors={} queue_full={} truncated={} stalls rx/tx={}/{} errors={} restarts={} \
             socket_overflow={} stale={} kod rate/deny={}/{} leaked={} clients replaced={} drops={}{}",
            self.received,
            self.total_replies(),
            self.replies_basic,
            self.replies_interleaved,
            self.replies_kod,
            self.rx_ts_hardware,
            self.rx_ts_kernel,
            self.rx_ts_user,
            self.tx_ts_hardware,
            self.tx_ts_kernel,
            self.tx_ts_daemon,
            self.tx_ts_missed,
            self.tx_ts_late,
            self.send_errors,
            self.send_queue_full,
            self.truncated,
            self.recv_stalls,
            self.tx_ts_stalls,
            self.worker_errors(),
            self.restarts,
            self.socket_overflow,
            self.stale_requests,
            self.kod_rate,
            self.kod_deny,
            self.rate_leaked,
            self.client_replacements,
            self.total_drops(),
            drops
        )
    }
}

/// Add one to a counter this thread alone writes (no atomic read-modify-write).
#[inline]
pub fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Add `n` to a counter this thread alone writes.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Sum the snapshots of several workers.
pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> StatsSnapshot {
    let mut total = StatsSnapshot::default();
    for w in workers {
        total.add(&w.snapshot());
    }
    total
}

/// Parse a Prometheus text file written by [`StatsSnapshot::to_prometheus`] into
/// (metric-with-labels, value) pairs; used by tests and tools.
pub fn parse_prometheus(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_exports() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        bump(&a.received);
        add(&b.received, 2);
        bump(&a.drops[DropReason::ModeControl as usize]);
        bump(&b.rx_ts_kernel);
        let total = sum([&a, &b]);
        assert_eq!(total.received, 3);
        assert_eq!(total.total_drops(), 1);
        let text = total.to_prometheus();
        let kv = parse_prometheus(&text);
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("hwntpd_received_total"), Some(3));
        assert_eq!(get("hwntpd_drops_total{reason=\"mode_control\"}"), Some(1));
        assert_eq!(
            get("hwntpd_rx_timestamps_total{source=\"kernel\"}"),
            Some(1)
        );
        assert_eq!(get("hwntpd_replies_total{mode=\"basic\"}"), Some(0));
        assert_eq!(text.matches("# TYPE hwntpd_replies_total").count(), 1);
        assert!(total.summary().contains("mode_control=1"));
    }

    #[test]
    fn worker_errors_export_as_one_family() {
        let a = WorkerStats::default();
        bump(&a.send_eperm);
        add(&a.enter_ebusy, 2);
        bump(&a.restarts);
        add(&a.socket_overflow, 7);
        let total = sum([&a]);
        assert_eq!(total.worker_errors(), 3);
        let text = total.to_prometheus();
        assert_eq!(text.matches("# TYPE hwntpd_worker_errors_total").count(), 1);
        let kv = parse_prometheus(&text);
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(
            get("hwntpd_worker_errors_total{kind=\"send_eperm\"}"),
            Some(1)
        );
        assert_eq!(
            get("hwntpd_worker_errors_total{kind=\"enter_ebusy\"}"),
            Some(2)
        );
        assert_eq!(
            get("hwntpd_worker_errors_total{kind=\"cq_dropped\"}"),
            Some(0)
        );
        assert_eq!(get("hwntpd_worker_restarts_total"), Some(1));
        assert_eq!(get("hwntpd_socket_overflow_drops_total"), Some(7));
        assert_eq!(get("hwntpd_stale_requests_total"), Some(0));
        let line = total.summary();
        assert!(
            line.contains("errors=3 restarts=1 socket_overflow=7 stale=0"),
            "{line}"
        );
    }

    #[test]
    fn estimate_error_histogram() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        a.record_estimate_error(1_500);
        a.record_estimate_error(-700);
        b.record_estimate_error(3_000_000);
        let total = sum([&a, &b]);
        assert_eq!(total.tx_estimate_ahead, 1);
        assert_eq!(total.estimate_error_ns, 1_500 + 700 + 3_000_000);
        let text = total.to_prometheus();
        let kv = parse_prometheus(&text);
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        let m = ESTIMATE_ERROR_METRIC;
        assert_eq!(get(&format!("{m}_bucket{{le=\"0.000001\"}}")), Some(1));
        assert_eq!(get(&format!("{m}_bucket{{le=\"0.000002\"}}")), Some(2));
        assert_eq!(get(&format!("{m}_bucket{{le=\"0.001\"}}")), Some(2));
        assert_eq!(get(&format!("{m}_bucket{{le=\"+Inf\"}}")), Some(3));
        assert_eq!(get(&format!("{m}_count")), Some(3));
        assert!(text.contains(&format!("{m}_sum 0.0030022\n")), "{text}");
        let m = ESTIMATE_LAG_METRIC;
        assert_eq!(get(&format!("{m}_bucket{{le=\"-0.000001\"}}")), Some(0));
        assert_eq!(get(&format!("{m}_bucket{{le=\"-0.0000005\"}}")), Some(1));
        assert_eq!(get(&format!("{m}_bucket{{le=\"0.0000015\"}}")), Some(2));
        assert_eq!(get(&format!("{m}_bucket{{le=\"0.001\"}}")), Some(2));
        assert_eq!(get(&format!("{m}_bucket{{le=\"+Inf\"}}")), Some(3));
        assert_eq!(get(&format!("{m}_count")), Some(3));
    }
}
