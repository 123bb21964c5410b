//! One worker: an io_uring event loop over its own sockets (one per listen
//! address, sharing the port with the other workers through `SO_REUSEPORT`).
//!
//! Each turn of the loop makes one `io_uring_enter` that submits the replies of
//! the previous batch and waits for completions; the completions are then drained
//! from the ring without system calls: received datagrams are decided by the
//! protocol core and their replies queued; the transmit timestamp of every basic
//! reply in the batch is read once, as late as possible, just before the batch is
//! handed to the kernel.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::domain::TimeDomains;
use crate::clock::realtime;
use crate::clock::snapshot::StateCell;
use crate::net::addr::parse_sockaddr;
use crate::net::cmsg::{build_reply_control, parse_rx_control, TxTimestamp, TxTsRequest};
use crate::net::errqueue::{drain_tx_timestamps, MAX_PER_CALL};
use crate::net::socket::readiness;
use crate::net::uring::{
    BufRing, Completion as Cqe, RecvTemplate, Ring, RingConfig, SendSlots, TxRing, SEND_PAYLOAD_MAX,
};
use crate::protocol::packet::set_transmit;
use crate::protocol::server::{
    respond, Admission, Decision, DropReason, NoInterleave, ReplyKind, RequestContext,
};
use crate::protocol::NtpTimestamp;
use crate::server::interleave::InterleaveTable;
use crate::server::stats::{add, bump, WorkerStats};
use crate::server::txstamps::{Completion, PendingTx, SendLatency, Sent};
use crate::server::watchdog::{Watchdog, WATCHDOG_INTERVAL_MS};

/// How a worker learns the exact transmit time of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxTimestampMode {
    /// Not at all (interleaved mode off, or `--timestamping user`).
    Off,
    /// io_uring's socket command `SOCKET_URING_OP_TX_TIMESTAMP` (Linux 6.15+).
    UringCommand,
    /// Poll for `POLLERR` through the ring, then read the error queue.
    ErrorQueue,
}

/// Which receive timestamps the sockets deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxTimestamps {
    /// Hardware where set, else kernel software, else user space.
    Kernel,
    /// No `SO_TIMESTAMPING`: read the clock in user space after receipt.
    User,
}

/// One listening socket of a worker.
pub struct WorkerSocket {
    /// The socket.
    pub fd: OwnedFd,
    /// The address it is bound to.
    pub local: SocketAddr,
}

/// Everything a worker needs; moved into its thread.
pub struct WorkerConfig {
    /// Worker number (for logs).
    pub id: usize,
    /// Its sockets.
    pub sockets: Vec<WorkerSocket>,
    /// The server state snapshot.
    pub state: Arc<StateCell>,
    /// The interleaved-mode table shared by all workers (`None`: interleaved off).
    pub table: Option<Arc<InterleaveTable>>,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// How transmit timestamps arrive.
    pub tx_mode: TxTimestampMode,
    /// Ask the NIC (true) or the kernel (false) for transmit timestamps.
    pub tx_hardware: bool,
    /// Pass the key with `SCM_TS_OPT_ID` (Linux 6.13+) instead of relying on the
    /// socket's counter.
    pub explicit_tx_key: bool,
    /// Receive timestamp source.
    pub rx: RxTimestamps,
    /// Add the measured send latency to the transmit reading of basic replies.
    pub compensate_send_latency: bool,
    /// Converts software and hardware timestamps to served time.
    pub domains: Arc<TimeDomains>,
    /// Ring sizes.
    pub ring: RingConfig,
    /// CPU to pin to.
    pub cpu: Option<usize>,
}

const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_TXTS: u64 = 3;
const KIND_POLLERR: u64 = 4;
const KIND_CANCEL: u64 = 5;

fn tag(kind: u64, socket: usize, extra: u64) -> u64 {
    (kind << KIND_SHIFT) | ((socket as u64 & 0xff) << 48) | (extra & 0xffff_ffff_ffff)
}

fn untag(user_data: u64) -> (u64, usize, u64) {
    (
        user_data >> KIND_SHIFT,
        ((user_data >> 48) & 0xff) as usize,
        user_data & 0xffff_ffff_ffff,
    )
}

/// Replies waiting for their transmit timestamp, per socket.
const PENDING_TX: usize = 4096;

struct SocketState {
    fd: RawFd,
    local: SocketAddr,
    next_key: u32,
    pending: PendingTx,
    latency: SendLatency,
    last_calibration: NtpTimestamp,
    /// Receive completions keep coming while datagrams wait.
    rx_watch: Watchdog,
    /// Transmit-timestamp completions keep coming while the error queue holds some.
    tx_watch: Watchdog,
}

impl SocketState {
    /// Whether a basic reply should sample the send latency now (at most one
    /// transmit-timestamp request per [`CALIBRATION_INTERVAL_NS`] per socket).
    fn calibration_due(&mut self, now: NtpTimestamp) -> bool {
        let due = self.last_calibration.is_zero()
            || now.diff_nanos(self.last_calibration) >= CALIBRATION_INTERVAL_NS;
        if due {
            self.last_calibration = now;
        }
        due
    }
}

/// A transmit timestamp further than this from the reply's pre-send reading is
/// discarded as invalid.
pub const TX_TIMESTAMP_SANITY_NS: i64 = 1_000_000_000;

/// Completions handled, at most, before their replies are submitted.
pub const SEND_BATCH: usize = 64;

/// How often a basic reply asks for its transmit timestamp to calibrate the
/// send latency (per socket).
pub const CALIBRATION_INTERVAL_NS: i64 = 10_000_000;

/// A reply of the current batch, queued in a send slot and not yet submitted.
#[derive(Clone, Copy)]
struct Queued {
    slot: u16,
    socket: usize,
    patch_transmit: bool,
    served_receive: NtpTimestamp,
    want_tx: bool,
    interleave: bool,
    tx_key: u32,
}

/// What kind of reply a send slot carries, for counting on completion.
#[derive(Clone, Copy, Default)]
enum SlotKind {
    #[default]
    Basic,
    Interleaved,
    Kod,
}

/// A running worker's loop state.
pub struct Worker {
    // Field order matters: the rings are dropped (closed) before the memory they use.
    ring: Ring,
    tx_ring: Option<TxRing>,
    bufs: BufRing,
    template: RecvTemplate,
    slots: SendSlots,
    slot_kind: Vec<SlotKind>,
    sockets: Vec<SocketState>,
    batch: Vec<Queued>,
    cqes: Vec<Cqe>,
    cfg: WorkerConfig,
}

impl Worker {
    /// Set up the ring and buffers and arm the receives.
    pub fn new(cfg: WorkerConfig) -> std::io::Result<Self> {
        let mut ring = Ring::new(&cfg.ring)?;
        let tx_ring = match cfg.tx_mode {
            // Never a batched wait here: this ring is only reaped, its task work
            // must run whenever the worker enters the kernel.
            TxTimestampMode::UringCommand => Some(TxRing::new(&RingConfig {
                sq_entries: 16,
                batch_wait_us: 0,
                ..cfg.ring
            })?),
            _ => None,
        };
        let bufs = BufRing::new(cfg.ring.recv_buffers, cfg.ring.recv_buffer_size, 0)?;
        ring.register(&bufs)?;
        let sockets = cfg
            .sockets
            .iter()
            .map(|s| SocketState {
                fd: s.fd.as_raw_fd(),
                local: s.local,
                next_key: 0,
                pending: PendingTx::new(PENDING_TX),
                latency: SendLatency::default(),
                last_calibration: NtpTimestamp::ZERO,
                rx_watch: Watchdog::default(),
                tx_watch: Watchdog::default(),
            })
            .collect();
        let n_slots = cfg.ring.send_slots;
        let mut w = Worker {
            ring,
            tx_ring,
            bufs,
            template: RecvTemplate::new(),
            slots: SendSlots::new(n_slots),
            slot_kind: vec![SlotKind::Basic; usize::from(n_slots)],
            sockets,
            batch: Vec::with_capacity(usize::from(n_slots)),
            cqes: vec![Cqe::default(); cfg.ring.cq_entries as usize],
            cfg,
        };
        for i in 0..w.sockets.len() {
            w.arm_recv(i)?;
            match w.cfg.tx_mode {
                TxTimestampMode::Off => {}
                TxTimestampMode::UringCommand => {
                    if let Some(tx) = &mut w.tx_ring {
                        tx.arm_tx_timestamps(w.sockets[i].fd, tag(KIND_TXTS, i, 0))?;
                        tx.submit()?;
                    }
                }
                TxTimestampMode::ErrorQueue => w
                    .ring
                    .arm_poll_err(w.sockets[i].fd, tag(KIND_POLLERR, i, 0))?,
            }
        }
        Ok(w)
    }

    fn arm_recv(&mut self, socket: usize) -> std::io::Result<()> {
        let fd = self.sockets[socket].fd;
        self.ring
            .arm_recv(fd, &self.template, &self.bufs, tag(KIND_RECV, socket, 0))
    }

    /// Run until the stop flag is set.
    pub fn run(mut self) -> std::io::Result<()> {
        if let Some(cpu) = self.cfg.cpu {
            pin_to_cpu(cpu);
        }
        let watchdog_interval = Duration::from_millis(WATCHDOG_INTERVAL_MS);
        let mut last_tick = Instant::now();
        let mut last_watch = last_tick;
        while !self.cfg.stop.load(Ordering::Relaxed) {
            self.ring.submit_and_wait(watchdog_interval)?;
            // First thing after waking: the user-space receive time, used only for
            // datagrams that arrive without a kernel timestamp.
            let wake = self.served_now();
            let mut cqes = std::mem::take(&mut self.cqes);
            // Transmit timestamps first: the kernel posted them (as task work,
            // run by the enter above) before the requests now waiting, and a
            // follow-up request may need the exact time of the previous reply.
            self.reap_tx(&mut cqes)?;
            loop {
                let n = self.ring.reap(&mut cqes[..SEND_BATCH]);
                for c in &cqes[..n] {
                    self.dispatch(c, wake)?;
                }
                if n < SEND_BATCH {
                    break;
                }
                // A deep queue: hand these replies to the kernel now rather than
                // after the whole queue (one more enter per SEND_BATCH replies
                // keeps the first requests' turnaround short).
                if self.batch.len() >= SEND_BATCH {
                    self.bufs.publish();
                    self.flush_batch()?;
                    self.ring.submit()?;
                    // Keep the transmit-timestamp ring drained during a long
                    // turn too: a full completion queue stops the kernel's
                    // command, leaving timestamps in the socket's error queue.
                    self.reap_tx(&mut cqes)?;
                }
            }
            self.cqes = cqes;
            self.bufs.publish();
            self.flush_batch()?;
            add(&self.cfg.stats.ring_enters, self.ring.enters);
            self.ring.enters = 0;
            if last_watch.elapsed() >= watchdog_interval {
                last_watch = Instant::now();
                self.watch_sockets()?;
                // The heartbeat the supervisor watches (health, systemd watchdog).
                bump(&self.cfg.stats.watchdog_checks);
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                self.tick(last_tick);
            }
        }
        self.shutdown();
        Ok(())
    }

    /// Handle everything the transmit-timestamp ring has completed.
    fn reap_tx(&mut self, cqes: &mut [Cqe]) -> std::io::Result<()> {
        let Some(mut tx) = self.tx_ring.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        loop {
            let n = tx.reap(cqes);
            for c in &cqes[..n] {
                if let Err(e) = self.on_tx_completion(&mut tx, c) {
                    result = Err(e);
                }
            }
            if n < cqes.len() {
                break;
            }
        }
        add(&self.cfg.stats.ring_enters, tx.enters);
        tx.enters = 0;
        self.tx_ring = Some(tx);
        result
    }

    /// A completion of the transmit-timestamp ring: one timestamp (`result` is
    /// its key, the `io_timespec` is in the second half of the CQE).
    fn on_tx_completion(&mut self, tx: &mut TxRing, c: &Cqe) -> std::io::Result<()> {
        let (kind, socket, _) = untag(c.user_data);
        if socket >= self.sockets.len() {
            return Ok(());
        }
        if kind == KIND_CANCEL && c.result == -libc::ENOENT {
            // The watchdog's cancel found no command in flight: arm one.
            tx.arm_tx_timestamps(self.sockets[socket].fd, tag(KIND_TXTS, socket, 0))?;
            tx.submit()?;
            return Ok(());
        }
        if kind != KIND_TXTS {
            return Ok(());
        }
        self.sockets[socket].tx_watch.saw_completion();
        if let Some(ts) = c.tx_timestamp() {
            self.on_tx_timestamp(socket, &ts);
        } else if c.result != -libc::EAGAIN && c.result != -libc::ECANCELED {
            tracing::warn!(
                worker = self.cfg.id,
                errno = -c.result,
                "TX timestamp command failed"
            );
        }
        if !c.more() && c.result != -libc::EINVAL {
            tx.arm_tx_timestamps(self.sockets[socket].fd, tag(KIND_TXTS, socket, 0))?;
            tx.submit()?;
        }
        Ok(())
    }

    /// The served time now: `CLOCK_REALTIME`, or the PHC's time for `--reference phc`.
    #[inline]
    fn served_now(&self) -> NtpTimestamp {
        let t = realtime::now_unix();
        self.cfg
            .domains
            .system_to_served(t)
            .unwrap_or_else(|| NtpTimestamp::from_unix(t.0, t.1))
    }

    fn dispatch(&mut self, c: &Cqe, wake: NtpTimestamp) -> std::io::Result<()> {
        let (kind, socket, extra) = untag(c.user_data);
        match kind {
            KIND_RECV => {
                if let Some(sock) = self.sockets.get_mut(socket) {
                    sock.rx_watch.saw_completion();
                }
                if c.result >= 0 {
                    if let Some(bid) = c.buffer_id() {
                        self.on_datagram(socket, bid, wake);
                        self.bufs.recycle(bid);
                    }
                } else if c.result != -libc::ECANCELED {
                    // (ECANCELED: the watchdog cancelled a stalled receive.)
                    bump(&self.cfg.stats.recv_errors);
                    if c.result == -libc::EINVAL {
                        return Err(std::io::Error::other(
                            "multishot recvmsg refused (EINVAL): this server needs Linux 6.0 or newer",
                        ));
                    }
                }
                if !c.more() && socket < self.sockets.len() {
                    bump(&self.cfg.stats.recv_rearms);
                    self.arm_recv(socket)?;
                }
            }
            KIND_SEND => {
                let slot = extra as u16;
                if !self.slots.release(slot) {
                    // A completion for a slot not in flight: seen twice.
                    bump(&self.cfg.stats.stale_completions);
                } else if c.result < 0 {
                    bump(&self.cfg.stats.send_errors);
                    tracing::debug!(worker = self.cfg.id, errno = -c.result, "send failed");
                } else {
                    let s = &self.cfg.stats;
                    match self
                        .slot_kind
                        .get(usize::from(slot))
                        .copied()
                        .unwrap_or_default()
                    {
                        SlotKind::Basic => bump(&s.replies_basic),
                        SlotKind::Interleaved => bump(&s.replies_interleaved),
                        SlotKind::Kod => bump(&s.replies_kod),
                    }
                }
            }
            // The watchdog's cancel found no receive in flight: arm one now
            // (when it did find one, that receive's last completion re-arms).
            KIND_CANCEL if c.result == -libc::ENOENT && socket < self.sockets.len() => {
                bump(&self.cfg.stats.recv_rearms);
                self.arm_recv(socket)?;
            }
            KIND_POLLERR if socket < self.sockets.len() => {
                self.sockets[socket].tx_watch.saw_completion();
                self.drain_error_queue(socket);
                let fd = self.sockets[socket].fd;
                if !c.more() {
                    self.ring.arm_poll_err(fd, tag(KIND_POLLERR, socket, 0))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_datagram(&mut self, socket: usize, bid: u16, wake: NtpTimestamp) {
        let stats = &self.cfg.stats;
        bump(&stats.received);
        let Some(buf) = self.bufs.buffer(bid) else {
            return;
        };
        let Some(msg) = self.template.parse(buf) else {
            bump(&stats.truncated);
            return;
        };
        if msg.truncated {
            bump(&stats.truncated);
            return;
        }
        let Some(source) = parse_sockaddr(msg.name) else {
            bump(&stats.drops[DropReason::BadSource as usize]);
            return;
        };
        let meta = parse_rx_control(msg.control);
        let domains = &self.cfg.domains;
        let hw = match (self.cfg.rx, meta.hardware) {
            (RxTimestamps::Kernel, Some(hw)) => {
                domains.hardware_rx_to_served((hw.sec, hw.nsec), meta.frame_len)
            }
            _ => None,
        };
        let sw = match (self.cfg.rx, meta.software) {
            (RxTimestamps::Kernel, Some(sw)) => Some(
                domains
                    .system_to_served((sw.sec, sw.nsec))
                    .unwrap_or_else(|| NtpTimestamp::from_unix(sw.sec, sw.nsec)),
            ),
            _ => None,
        };
        let receive_time = if let Some(t) = hw {
            bump(&stats.rx_ts_hardware);
            t
        } else if let Some(t) = sw {
            bump(&stats.rx_ts_kernel);
            t
        } else {
            bump(&stats.rx_ts_user);
            wake
        };
        let Some(slot) = self.slots.alloc() else {
            bump(&stats.send_queue_full);
            return;
        };
        let ctx = RequestContext {
            receive_time,
            transmit_time: wake,
            source,
            admission: Admission::Allow,
            interleave: self.cfg.table.is_some(),
        };
        let state = self.cfg.state.load();
        let out = self.slots.payload_mut(slot);
        let decision = match &self.cfg.table {
            Some(t) => respond(msg.payload, &ctx, &state, t.as_ref(), out),
            None => respond(msg.payload, &ctx, &state, &NoInterleave, out),
        };
        let reply = match decision {
            Decision::Reply(r) if r.len <= SEND_PAYLOAD_MAX => r,
            Decision::Reply(_) => {
                // Longer than a send slot: cannot happen with 48-octet replies.
                bump(&stats.drops[DropReason::BufferTooSmall as usize]);
                self.slots.release(slot);
                return;
            }
            Decision::Drop(reason) => {
                bump(&stats.drops[reason as usize]);
                self.slots.release(slot);
                return;
            }
        };
        let (kind, patch) = match reply.kind {
            ReplyKind::Basic => (SlotKind::Basic, true),
            ReplyKind::Interleaved { exact } => {
                if !exact {
                    bump(&stats.tx_ts_daemon);
                }
                (SlotKind::Interleaved, false)
            }
            ReplyKind::Kod(_) => (SlotKind::Kod, false),
        };
        self.slot_kind[usize::from(slot)] = kind;
        let tx_on = self.cfg.tx_mode != TxTimestampMode::Off;
        let sock = &mut self.sockets[socket];
        let interleave = reply.want_tx_timestamp && tx_on;
        let calibrate = !interleave
            && patch
            && tx_on
            && self.cfg.compensate_send_latency
            && sock.calibration_due(wake);
        let want_tx = interleave || calibrate;
        // Keys are handed out in send order, so they also match the socket's own
        // counter when SCM_TS_OPT_ID is unavailable.
        let tx_key = sock.next_key;
        if want_tx {
            sock.next_key = tx_key.wrapping_add(1);
        }
        let tx_request = want_tx.then(|| TxTsRequest {
            software: !self.cfg.tx_hardware,
            hardware: self.cfg.tx_hardware,
            opt_id: self.cfg.explicit_tx_key.then_some(tx_key),
        });
        let local = meta
            .local_addr
            .map(|a| (a, meta.ifindex))
            .filter(|(a, _)| !a.is_unspecified());
        let control_len = build_reply_control(self.slots.control_mut(slot), local, tx_request);
        self.slots.set(slot, &source, reply.len, control_len);
        self.batch.push(Queued {
            slot,
            socket,
            patch_transmit: patch,
            served_receive: reply.served_receive,
            want_tx,
            interleave,
            tx_key,
        });
    }

    /// Read the transmit time once for the whole batch, patch it into every basic
    /// reply, remember interleaved-mode candidates, and queue the sends.
    fn flush_batch(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let now = self.served_now();
        let sent_at = Instant::now();
        for i in 0..self.batch.len() {
            let q = self.batch[i];
            let sock = &mut self.sockets[q.socket];
            // The reading plus the send latency estimated for this place in the
            // batch: the best estimate of the transmit time a basic reply can
            // carry (the batch's replies leave one after the other).
            let position = u16::try_from(i).unwrap_or(u16::MAX);
            let latency = if self.cfg.compensate_send_latency {
                sock.latency.estimate(position).unwrap_or(0)
            } else {
                0
            };
            let transmit = now.add_nanos(latency).with_even_low_bit();
            if q.patch_transmit {
                set_transmit(self.slots.payload_mut(q.slot), transmit);
            }
            if q.want_tx {
                let sent = Sent {
                    served_receive: q.served_receive,
                    pre_send: now,
                    position,
                    estimate: transmit,
                    interleave: q.interleave,
                };
                if sock.pending.register(q.tx_key, sent, sent_at) {
                    bump(&self.cfg.stats.tx_ts_missed);
                }
                bump(&self.cfg.stats.tx_ts_requested);
                if let (true, Some(t)) = (q.interleave, &self.cfg.table) {
                    // Low bit 1: only an estimate until the exact time comes.
                    t.insert(q.served_receive, NtpTimestamp(transmit.to_bits() | 1));
                }
            }
            let fd = self.sockets[q.socket].fd;
            self.ring.push_send(
                fd,
                &mut self.slots,
                q.slot,
                tag(KIND_SEND, q.socket, u64::from(q.slot)),
            )?;
        }
        self.batch.clear();
        Ok(())
    }

    fn on_tx_timestamp(&mut self, socket: usize, ts: &TxTimestamp) {
        if let Some(sock) = self.sockets.get_mut(socket) {
            handle_tx_timestamp(sock, &self.cfg, ts);
        }
    }

    /// A few times a second: recover any socket where the kernel holds
    /// datagrams or error-queue entries but no completion came for two checks
    /// (see [`crate::server::watchdog`]).
    fn watch_sockets(&mut self) -> std::io::Result<()> {
        let tx_on = self.cfg.tx_mode != TxTimestampMode::Off;
        for i in 0..self.sockets.len() {
            let sock = &self.sockets[i];
            let look = sock.rx_watch.quiet() || (tx_on && sock.tx_watch.quiet());
            if !look {
                self.sockets[i].rx_watch.check(false);
                self.sockets[i].tx_watch.check(false);
                continue;
            }
            bump(&self.cfg.stats.other_syscalls);
            let now = readiness(self.cfg.sockets[i].fd.as_fd());
            let sock = &mut self.sockets[i];
            let rx_stalled = sock.rx_watch.check(now.data);
            let tx_stalled = tx_on && sock.tx_watch.check(now.error_queue);
            if rx_stalled {
                self.recover_receive(i)?;
            }
            if tx_stalled {
                self.recover_tx_timestamps(i)?;
            }
        }
        Ok(())
    }

    /// Count a stall in `counter` and log it: the first time, then at powers
    /// of two, so a persistent fault stays visible without flooding the log.
    fn note_stall(&self, what: &str, socket: usize, counter: &AtomicU64) {
        bump(counter);
        let count = counter.load(Ordering::Relaxed);
        if count.is_power_of_two() {
            tracing::warn!(
                worker = self.cfg.id,
                local = %self.sockets[socket].local,
                stalls = count,
                "{what} stalled although the kernel holds data for it; recovered"
            );
        }
    }

    /// Read the socket's error queue until it is empty (bounded), matching
    /// every transmit timestamp to its reply.
    fn drain_error_queue(&mut self, socket: usize) {
        let (cfg, sock) = (&self.cfg, &mut self.sockets[socket]);
        // A queue holds at most the receive buffer's worth of entries.
        let max = 64 * MAX_PER_CALL;
        let fd = cfg.sockets[socket].fd.as_fd();
        if let Ok(d) = drain_tx_timestamps(fd, &mut |ts| handle_tx_timestamp(sock, cfg, &ts), max) {
            add(&cfg.stats.other_syscalls, d.syscalls as u64);
        }
    }

    /// Cancel the socket's silent multishot receive; its last completion (or
    /// the cancel's, when none was in flight) re-arms it.
    fn recover_receive(&mut self, socket: usize) -> std::io::Result<()> {
        self.note_stall("receive", socket, &self.cfg.stats.recv_stalls);
        self.ring
            .cancel(tag(KIND_RECV, socket, 0), tag(KIND_CANCEL, socket, 0))
    }

    /// Read the socket's error queue directly (every entry, timestamps matched
    /// as usual), then restart the transmit-timestamp command.
    fn recover_tx_timestamps(&mut self, socket: usize) -> std::io::Result<()> {
        self.note_stall(
            "transmit-timestamp collection",
            socket,
            &self.cfg.stats.tx_ts_stalls,
        );
        self.drain_error_queue(socket);
        if let Some(tx) = &mut self.tx_ring {
            tx.cancel(tag(KIND_TXTS, socket, 0), tag(KIND_CANCEL, socket, 0))?;
            tx.submit()?;
        }
        Ok(())
    }

    /// Once a second: count as missed the transmit timestamps that did not
    /// come in time, and refit the send latency's growth along a batch.
    fn tick(&mut self, now: Instant) {
        for sock in &mut self.sockets {
            add(&self.cfg.stats.tx_ts_missed, sock.pending.sweep(now));
            sock.latency.refit();
        }
    }

    /// Let in-flight sends finish (bounded), then release the buffer ring.
    fn shutdown(&mut self) {
        let _ = self.flush_batch();
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.slots.in_flight() > 0 && Instant::now() < deadline {
            if self
                .ring
                .submit_and_wait(Duration::from_millis(20))
                .is_err()
            {
                break;
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            let n = self.ring.reap(&mut cqes);
            for c in &cqes[..n] {
                if untag(c.user_data).0 == KIND_SEND {
                    let _ = self.dispatch(c, NtpTimestamp::ZERO);
                }
            }
            self.cqes = cqes;
        }
        self.ring.unregister(&self.bufs);
        tracing::debug!(worker = self.cfg.id, "worker stopped");
    }

    /// The local addresses this worker serves.
    pub fn local_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.sockets.iter().map(|s| s.local)
    }
}

/// Match a transmit timestamp to its reply and record the exact time.
fn handle_tx_timestamp(sock: &mut SocketState, cfg: &WorkerConfig, ts: &TxTimestamp) {
    let stats = &cfg.stats;
    let sent = match sock.pending.complete(ts.key, Instant::now()) {
        Completion::OnTime(sent) => sent,
        Completion::Late => return bump(&stats.tx_ts_late),
        Completion::Unmatched => return bump(&stats.tx_ts_unmatched),
    };
    let raw = (ts.time.sec, ts.time.nsec);
    let converted = if ts.hardware {
        cfg.domains.hardware_tx_to_served(raw)
    } else {
        cfg.domains.system_to_served(raw)
    };
    // A stamp that cannot be converted now (PHC tracking unhealthy) leaves the
    // pre-send reading in place.
    let Some(exact) = converted else { return };
    // A transmit time must follow its pre-send reading closely; anything else
    // is a corrupted completion or a bad conversion, never served.
    if !(-TX_TIMESTAMP_SANITY_NS..TX_TIMESTAMP_SANITY_NS).contains(&exact.diff_nanos(sent.pre_send))
    {
        return bump(&stats.tx_ts_invalid);
    }
    bump(if ts.hardware {
        &stats.tx_ts_hardware
    } else {
        &stats.tx_ts_kernel
    });
    sock.latency
        .add(sent.position, exact.diff_nanos(sent.pre_send));
    // How far the served estimate was from the real transmit time (the error a
    // basic reply's transmit timestamp carries).
    stats.record_estimate_error(exact.diff_nanos(sent.estimate));
    if let (true, Some(t)) = (sent.interleave, &cfg.table) {
        t.update(sent.served_receive, exact.with_even_low_bit());
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            tracing::warn!(cpu, "could not pin worker to CPU: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::socket::{bind_udp, enable_timestamping, local_addr, TimestampingConfig};
    use crate::net::uring::probe_tx_timestamp_command;
    use crate::protocol::{NtpShort, ServerState};
    use std::net::UdpSocket;

    impl Worker {
        /// Cancel the receive (and the transmit-timestamp command) and swallow
        /// their completions, so nothing is armed: what a lost kernel wake-up
        /// looks like from user space.
        fn lose_wakeups(&mut self) {
            let mut cqes = vec![Cqe::default(); 64];
            self.ring.cancel(tag(KIND_RECV, 0, 0), 0).unwrap();
            let mut seen = 0;
            while seen < 2 {
                self.ring.submit_and_wait(Duration::from_secs(1)).unwrap();
                seen += self.ring.reap(&mut cqes);
            }
            if let Some(tx) = &mut self.tx_ring {
                tx.cancel(tag(KIND_TXTS, 0, 0), 0).unwrap();
                let mut seen = 0;
                while seen < 2 {
                    tx.submit_and_wait(Duration::from_secs(1)).unwrap();
                    seen += tx.reap(&mut cqes);
                }
            }
        }
    }

    fn ask(client: &UdpSocket, server: SocketAddr, origin: u64, transmit: u64) -> bool {
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | 3;
        req[24..32].copy_from_slice(&origin.to_be_bytes());
        req[40..48].copy_from_slice(&transmit.to_be_bytes());
        client.send_to(&req, server).unwrap();
        let mut buf = [0u8; 64];
        matches!(client.recv_from(&mut buf), Ok((48, _)))
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{what}: not within 3 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// With its receive and its transmit-timestamp command gone silent, a
    /// worker recovers both within a few watchdog checks: requests waiting in
    /// the socket get answered, and stamps waiting in the error queue are
    /// collected, then the command runs again.
    #[test]
    fn watchdog_recovers_lost_wakeups() {
        let uring_cmd = probe_tx_timestamp_command();
        if !uring_cmd {
            eprintln!(
                "SKIP the transmit-timestamp half: io_uring's TX-timestamp command \
                 (Linux 6.15+) is unavailable here"
            );
        }
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        enable_timestamping(
            fd.as_fd(),
            &TimestampingConfig {
                rx_software: true,
                tx_software: true,
                opt_id: true,
                tsonly: true,
                ..TimestampingConfig::default()
            },
        )
        .unwrap();
        let local = local_addr(fd.as_fd()).unwrap();
        let stats = Arc::new(WorkerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = WorkerConfig {
            id: 0,
            sockets: vec![WorkerSocket { fd, local }],
            state: Arc::new(StateCell::new(ServerState::local_stratum1(
                -20,
                NtpShort(1),
                NtpTimestamp(1 << 40),
            ))),
            table: Some(Arc::new(InterleaveTable::new(1 << 10))),
            stats: stats.clone(),
            stop: stop.clone(),
            tx_mode: if uring_cmd {
                TxTimestampMode::UringCommand
            } else {
                TxTimestampMode::Off
            },
            tx_hardware: false,
            explicit_tx_key: false,
            rx: RxTimestamps::Kernel,
            compensate_send_latency: false,
            domains: TimeDomains::system(),
            ring: RingConfig::default(),
            cpu: None,
        };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut w = Worker::new(cfg)?;
            w.lose_wakeups();
            ready_tx.send(()).unwrap();
            w.run()
        });
        ready.recv().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();

        assert!(
            ask(&client, local, 0, 0x1000),
            "answered after the receive was re-armed: {}",
            stats.snapshot().summary()
        );
        let s = stats.snapshot();
        assert_eq!(s.recv_stalls, 1, "{}", s.summary());

        if uring_cmd {
            // An odd origin: an interleaved-mode candidate, its transmit time wanted.
            assert!(ask(&client, local, 0x0000_0001_0000_0001, 0x2000));
            wait_until("stamp collected from the stalled error queue", || {
                let s = stats.snapshot();
                s.tx_ts_stalls >= 1 && s.tx_ts_kernel >= 1
            });
            let before = stats.snapshot();
            assert!(ask(&client, local, 0x0000_0001_0000_0003, 0x3000));
            wait_until("stamp collected by the restarted command", || {
                stats.snapshot().tx_ts_kernel > before.tx_ts_kernel
            });
            assert_eq!(stats.snapshot().tx_ts_stalls, before.tx_ts_stalls);
        }
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap().unwrap();
        eprintln!("{}", stats.snapshot().summary());
    }
}
