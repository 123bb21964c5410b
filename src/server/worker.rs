//! One worker: an io_uring event loop over its own sockets (one per listen
//! address, sharing the port with the other workers through `SO_REUSEPORT`).
//!
//! Each turn of the loop makes one `io_uring_enter` that submits the replies of
//! the previous batch and waits for completions; the completions are then drained
//! from the ring without system calls: received datagrams are decided by the
//! protocol core and their replies queued; the transmit timestamp of every basic
//! reply in the batch is read once, as late as possible, just before the batch is
//! handed to the kernel.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::domain::TimeDomains;
use crate::clock::realtime;
use crate::clock::snapshot::StateCell;
use crate::net::addr::parse_sockaddr;
use crate::net::cmsg::{build_reply_control, parse_rx_control, TxTimestamp, TxTsRequest};
use crate::net::egress::EgressSlots;
use crate::net::errqueue::{drain_tx_timestamps, MAX_PER_CALL};
use crate::net::socket::readiness;
use crate::net::uring::{
    BufRing, Completion as Cqe, RecvTemplate, Ring, RingConfig, SendSlots, TxRing, SEND_PAYLOAD_MAX,
};
use crate::nts::cookie::MasterCiphers;
use crate::nts::ntp::{check_request, seal, write_nak, write_reply, NtsCheck, NtsDrop, SealJob};
use crate::nts::service::NtsState;
use crate::policy::ratelimit::ticks_from_ntp;
use crate::policy::{self, PolicyCache};
use crate::protocol::packet::set_transmit;
use crate::protocol::server::{
    classify, respond, Admission, Decision, DropReason, KissCode, NoInterleave, ReplyKind,
    RequestContext,
};
use crate::protocol::NtpTimestamp;
use crate::server::interleave::{due_tick, Insert, InterleaveTable};
use crate::server::resilience::{
    is_stale, overflow_delta, worth_logging, BroadcastCopy, EnterError, Guards, SendError,
};
use crate::server::sendlatency::{SendLatency, Situation};
use crate::server::stats::{add, bump, WorkerStats};
use crate::server::txstamps::{Completion, PendingTx, Sent};
use crate::server::watchdog::{Watchdog, WATCHDOG_INTERVAL_MS};
use rand::SeedableRng as _;

/// How a worker learns the exact transmit time of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxTimestampMode {
    /// Not at all (interleaved mode off, or `--timestamping user`).
    Off,
    /// io_uring's socket command `SOCKET_URING_OP_TX_TIMESTAMP` (Linux 6.15+).
    UringCommand,
    /// Poll for `POLLERR` through the ring, then read the error queue.
    ErrorQueue,
    /// Kernel software stamps: nothing armed on the socket; the error queue is
    /// read right after the sends that asked for stamps (the driver queued
    /// them before the send returned). An armed poll or command would be woken
    /// by every stamp *inside the driver's transmit*, between the stamp and
    /// the packet's departure, and delay the packet past its stamp (measured
    /// over veth: about 0.4 us more round trip, interleaved offsets 0.15 us
    /// further from zero). A stamp that was not there yet is read at the next
    /// turn or by the watchdog.
    AfterSend,
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
    /// The socket requests arrive on.
    pub fd: OwnedFd,
    /// The socket replies leave from, with their transmit timestamps on its
    /// error queue ([`crate::net::socket::bind_send_twins`]); `None`: `fd`.
    pub send: Option<OwnedFd>,
    /// The address it is bound to.
    pub local: SocketAddr,
}

impl WorkerSocket {
    /// The socket replies are sent from (and transmit timestamps read from).
    pub fn send_fd(&self) -> BorrowedFd<'_> {
        self.send.as_ref().unwrap_or(&self.fd).as_fd()
    }
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
    /// Access list, rate limit and client table shared by all workers
    /// (`None`: everyone served, interleaved-mode entries for every source).
    pub policy: Option<Arc<policy::Shared>>,
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
    /// Converts software and hardware timestamps to served time.
    pub domains: Arc<TimeDomains>,
    /// Ring sizes.
    pub ring: RingConfig,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Staleness bound and broadcast sources (see [`crate::server::resilience`]).
    pub guards: Guards,
    /// NTS (RFC 8915) on this worker's sockets, when configured.
    pub nts: Option<NtsState>,
    /// Send a lone basic reply with its own `sendmsg` right after the clock
    /// reading (`--direct-send`); otherwise every reply goes through the ring.
    pub direct_send: bool,
    /// Before the reading of a lone basic reply sent after the worker was idle,
    /// probe its route (`--warm-send-path`; see `Worker::flush_batch`).
    pub warm_send_path: bool,
    /// The egress program's per-reply slots, when it stamps basic replies
    /// (`--egress-stamp`; see [`crate::net::egress`]).
    pub egress: Option<EgressSlots>,
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
    /// Where replies are sent from: [`WorkerSocket::send_fd`].
    send_fd: RawFd,
    local: SocketAddr,
    next_key: u32,
    pending: PendingTx,
    latency: SendLatency,
    /// Latency from the egress program's reading to the driver's transmit
    /// stamp, by situation (only the idle class: place 0).
    egress_latency: SendLatency,
    /// Receive completions keep coming while datagrams wait.
    rx_watch: Watchdog,
    /// Transmit-timestamp completions keep coming while the error queue holds some.
    tx_watch: Watchdog,
    /// The socket's cumulative `SO_RXQ_OVFL` drop count, as last reported.
    drops_seen: u32,
    /// The receive could not be queued (submission queue full): arm it next turn.
    needs_arm: bool,
    /// [`TxTimestampMode::AfterSend`]: replies sent since the error queue was
    /// last read that asked for a transmit timestamp.
    tx_expected: u32,
}

/// A transmit timestamp further than this from the reply's pre-send reading is
/// discarded as invalid.
pub const TX_TIMESTAMP_SANITY_NS: i64 = 1_000_000_000;

/// Completions handled, at most, before their replies are submitted.
pub const SEND_BATCH: usize = 64;

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
    /// The request's poll exponent (how long its interleaved entry stays due).
    poll: i8,
    situation: Situation,
    /// An NTS reply: its Authenticator is sealed after the transmit patch.
    seal: Option<SealJob>,
}

/// Where the reply at `index` of a batch of `len` leaves, as the send-latency
/// estimator counts places: 0 for a lone basic reply sent directly with its
/// own `sendmsg` right after the clock reading (`direct_send`: the shortest and
/// steadiest path from the reading to the wire, which a basic reply's transmit
/// timestamp rests on), else `index + 1` through the ring. Interleaved replies
/// always take the ring: their exact transmit time is served later, and in A/B
/// runs a direct send made them worse (median -0.7 against -0.3 us, half as
/// many passing chrony's tests).
fn send_place(direct_send: bool, index: usize, len: usize, interleave: bool) -> usize {
    if direct_send && len == 1 && !interleave {
        0
    } else {
        index + 1
    }
}

/// What kind of reply a send slot carries, for counting on completion.
#[derive(Clone, Copy, Default)]
enum SlotKind {
    #[default]
    Basic,
    Interleaved,
    Kod(KissCode),
}

/// A worker that stopped on an error, and its configuration (sockets
/// included) for another start.
pub type Failed = Box<(std::io::Error, WorkerConfig)>;

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
    /// The clock reading of the last batch sent (how long the worker was idle).
    last_flush: NtpTimestamp,
    /// `CLOCK_REALTIME` (ns) when the current chunk of completions was reaped:
    /// "now" for the staleness check.
    handled_ns: i128,
    /// Completions the kernel had dropped at the last look.
    cq_dropped_seen: u32,
    broadcasts: BroadcastCopy,
    /// This worker's view of the shared policy.
    policy: Option<PolicyCache>,
    /// Randomness for the rate limiter's leak.
    leak_rng: u32,
    /// Nonces and cookie nonces of NTS replies (a CSPRNG seeded by the OS).
    rng: rand::rngs::StdRng,
    /// The NTS master keys, expanded: kept across requests, rebuilt when the
    /// key set changes (a rotation or a key-file reload). `None` until the
    /// first NTS request.
    nts_masters: Option<MasterCiphers>,
    cfg: WorkerConfig,
}

impl Worker {
    /// Set up the ring and buffers and arm the receives.
    pub fn new(cfg: WorkerConfig) -> std::io::Result<Self> {
        Self::start(cfg).map_err(|f| f.0)
    }

    /// [`Worker::new`], handing the configuration back on failure (for a
    /// supervisor that tries again).
    pub fn start(cfg: WorkerConfig) -> Result<Self, Failed> {
        let mut ring = match Ring::new(&cfg.ring) {
            Ok(r) => r,
            Err(e) => return Err(Box::new((e, cfg))),
        };
        let tx_ring = match cfg.tx_mode {
            // Never a batched wait here: this ring is only reaped, its task work
            // must run whenever the worker enters the kernel.
            TxTimestampMode::UringCommand => match TxRing::new(&RingConfig {
                sq_entries: 16,
                batch_wait_us: 0,
                ..cfg.ring
            }) {
                Ok(r) => Some(r),
                Err(e) => return Err(Box::new((e, cfg))),
            },
            _ => None,
        };
        let bufs = match BufRing::new(cfg.ring.recv_buffers, cfg.ring.recv_buffer_size, 0) {
            Ok(b) => b,
            Err(e) => return Err(Box::new((e, cfg))),
        };
        if let Err(e) = ring.register(&bufs) {
            return Err(Box::new((e, cfg)));
        }
        let sockets = cfg
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| SocketState {
                fd: s.fd.as_raw_fd(),
                send_fd: s.send_fd().as_raw_fd(),
                local: s.local,
                next_key: 0,
                pending: PendingTx::new(PENDING_TX),
                latency: SendLatency::default(),
                egress_latency: SendLatency::default(),
                rx_watch: Watchdog::default(),
                tx_watch: Watchdog::default(),
                drops_seen: cfg.guards.drops_seen.get(i).copied().unwrap_or(0),
                needs_arm: false,
                tx_expected: 0,
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
            last_flush: NtpTimestamp::ZERO,
            handled_ns: 0,
            cq_dropped_seen: 0,
            broadcasts: BroadcastCopy::default(),
            policy: cfg.policy.as_ref().map(|p| p.cache()),
            // Any non-zero seed; different per worker and per run.
            leak_rng: (realtime::now_unix().1 ^ (cfg.id as u32).wrapping_mul(0x9e37_79b9)) | 1,
            rng: rand::rngs::StdRng::from_os_rng(),
            nts_masters: None,
            cfg,
        };
        w.broadcasts.refresh(&w.cfg.guards.broadcasts.get());
        for i in 0..w.sockets.len() {
            let armed = w.arm_recv(i).and_then(|()| match w.cfg.tx_mode {
                TxTimestampMode::Off => Ok(()),
                TxTimestampMode::UringCommand => match &mut w.tx_ring {
                    Some(tx) => tx
                        .arm_tx_timestamps(w.sockets[i].send_fd, tag(KIND_TXTS, i, 0))
                        .and_then(|()| tx.submit().map(drop)),
                    None => Ok(()),
                },
                TxTimestampMode::ErrorQueue => w
                    .ring
                    .arm_poll_err(w.sockets[i].send_fd, tag(KIND_POLLERR, i, 0)),
                TxTimestampMode::AfterSend => Ok(()),
            });
            if let Err(e) = armed {
                w.shutdown();
                return Err(Box::new((e, w.into_config())));
            }
        }
        Ok(w)
    }

    /// Give the configuration back (the sockets stay open), releasing the
    /// ring before the memory it used.
    fn into_config(self) -> WorkerConfig {
        let drops_seen = self.sockets.iter().map(|s| s.drops_seen).collect();
        let Worker { mut cfg, .. } = self;
        cfg.guards.drops_seen = drops_seen;
        cfg
    }

    /// Arm the socket's multishot receive; with the submission queue full,
    /// count it and arm it on the next turn instead.
    fn arm_recv(&mut self, socket: usize) -> std::io::Result<()> {
        let fd = self.sockets[socket].fd;
        let r = self
            .ring
            .arm_recv(fd, &self.template, &self.bufs, tag(KIND_RECV, socket, 0));
        self.sockets[socket].needs_arm = false;
        match r {
            Err(e) if EnterError::of(&e) == EnterError::QueueFull => {
                self.sockets[socket].needs_arm = true;
                self.tolerate::<()>(Err(e))
            }
            r => r,
        }
    }

    /// Count and log a run-time error of the given counter: the first time,
    /// then at powers of two.
    fn note_error(&self, counter: &AtomicU64, what: &str, errno: i32) {
        bump(counter);
        let count = counter.load(Ordering::Relaxed);
        if worth_logging(count) {
            tracing::warn!(
                worker = self.cfg.id,
                errno,
                count,
                "{what}: {}; counted, the worker goes on",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }

    /// Handle an error of `io_uring_enter` or of queueing a request where it
    /// happened: count and log it, and go on (`Ok`), unless it leaves the
    /// ring in an unknown state (`Err`: the worker's run ends and its
    /// supervisor rebuilds it).
    fn tolerate<T>(&self, r: std::io::Result<T>) -> std::io::Result<()> {
        let Err(e) = r else { return Ok(()) };
        let s = &self.cfg.stats;
        let errno = e.raw_os_error().unwrap_or(0);
        match EnterError::of(&e) {
            EnterError::Interrupted => self.note_error(&s.enter_eintr, "io_uring_enter", errno),
            EnterError::Again => {
                self.note_error(&s.enter_eagain, "io_uring_enter", errno);
                // The kernel is short of memory: do not spin on it.
                std::thread::sleep(Duration::from_millis(1));
            }
            EnterError::Busy => self.note_error(&s.enter_ebusy, "io_uring_enter", errno),
            EnterError::QueueFull => {
                bump(&s.sq_full);
                if worth_logging(s.sq_full.load(Ordering::Relaxed)) {
                    tracing::warn!(
                        worker = self.cfg.id,
                        count = s.sq_full.load(Ordering::Relaxed),
                        "submission queue full: a request was not queued; counted, the worker goes on"
                    );
                }
            }
            EnterError::CompletionsDropped => {
                bump(&s.cq_dropped);
                return Err(std::io::Error::other(format!(
                    "the kernel dropped completions ({e})"
                )));
            }
            EnterError::Fatal => {
                bump(&s.enter_fatal);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Submit what is queued now, handling the errors as [`Worker::tolerate`] does.
    fn submit_now(&mut self) -> std::io::Result<()> {
        let r = self.ring.submit();
        self.tolerate(r)
    }

    /// Look at the completion queue's overflow state: completions held back
    /// are counted (they come once reaped room allows); completions the
    /// kernel dropped end the run (a lost send completion would leak its
    /// slot, a lost receive completion silence a socket).
    fn check_overflow(&mut self) -> std::io::Result<()> {
        let (held, dropped) = self.ring.cq_overflow();
        let s = &self.cfg.stats;
        if held {
            bump(&s.cq_overflow);
            let count = s.cq_overflow.load(Ordering::Relaxed);
            if worth_logging(count) {
                tracing::warn!(
                    worker = self.cfg.id,
                    count,
                    "completion queue overflowed: the kernel holds completions until they are reaped"
                );
            }
        }
        if dropped != self.cq_dropped_seen {
            let lost = dropped.wrapping_sub(self.cq_dropped_seen);
            self.cq_dropped_seen = dropped;
            add(&s.cq_dropped, u64::from(lost));
            return Err(std::io::Error::other(format!(
                "the kernel dropped {lost} completions"
            )));
        }
        Ok(())
    }

    /// Run until the stop flag is set.
    pub fn run(mut self) -> std::io::Result<()> {
        let r = self.serve();
        self.shutdown();
        r
    }

    /// Run until the stop flag is set (`Ok`), or until an error the worker
    /// cannot recover from: then release the ring and hand the error and the
    /// configuration (with the sockets) back, for a restart.
    pub fn run_or_return(mut self) -> Result<(), Failed> {
        let r = self.serve();
        self.shutdown();
        r.map_err(|e| Box::new((e, self.into_config())))
    }

    fn serve(&mut self) -> std::io::Result<()> {
        if let Some(cpu) = self.cfg.cpu {
            pin_to_cpu(cpu);
        }
        let watchdog_interval = Duration::from_millis(WATCHDOG_INTERVAL_MS);
        let mut last_tick = Instant::now();
        let mut last_watch = last_tick;
        while !self.cfg.stop.load(Ordering::Relaxed) {
            let entered = self.ring.enter(watchdog_interval);
            // First thing after waking: the user-space receive time, used only for
            // datagrams that arrive without a kernel timestamp.
            let (wake, wake_raw) = self.served_now_and_raw();
            self.handled_ns = unix_ns(wake_raw);
            self.tolerate(entered)?;
            self.check_overflow()?;
            let mut cqes = std::mem::take(&mut self.cqes);
            // Transmit timestamps first: the kernel posted them (as task work,
            // run by the enter above) before the requests now waiting, and a
            // follow-up request may need the exact time of the previous reply.
            self.reap_tx(&mut cqes)?;
            // The enter above submitted the last turn's sends: their kernel
            // transmit stamps are queued by now.
            self.collect_tx_after_send();
            let mut first = true;
            loop {
                if !std::mem::take(&mut first) {
                    // A deep queue: "now" moves on for the staleness check.
                    self.handled_ns = unix_ns(realtime::now_unix());
                }
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
                    self.submit_now()?;
                    // Keep the transmit-timestamp ring drained during a long
                    // turn too: a full completion queue stops the kernel's
                    // command, leaving timestamps in the socket's error queue.
                    self.reap_tx(&mut cqes)?;
                }
            }
            self.cqes = cqes;
            self.bufs.publish();
            for i in 0..self.sockets.len() {
                if self.sockets[i].needs_arm {
                    self.arm_recv(i)?;
                }
            }
            add(&self.cfg.stats.ring_enters, self.ring.enters);
            self.ring.enters = 0;
            // Housekeeping before the batch's clock reading, not between it
            // and the submit: its system calls would add to the send latency
            // of exactly the replies of a quiet server.
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
            self.flush_batch()?;
        }
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
            let r = tx.arm_tx_timestamps(self.sockets[socket].send_fd, tag(KIND_TXTS, socket, 0));
            self.tolerate(r)?;
            let r = tx.submit();
            return self.tolerate(r);
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
            // (Not re-armed when it cannot be queued: the watchdog restarts it.)
            let r = tx.arm_tx_timestamps(self.sockets[socket].send_fd, tag(KIND_TXTS, socket, 0));
            self.tolerate(r)?;
            let r = tx.submit();
            self.tolerate(r)?;
        }
        Ok(())
    }

    /// The served time now: `CLOCK_REALTIME`, or the PHC's time for `--reference phc`.
    #[inline]
    fn served_now(&self) -> NtpTimestamp {
        self.served_now_and_raw().0
    }

    /// [`Worker::served_now`], and the `CLOCK_REALTIME` reading it came from.
    #[inline]
    fn served_now_and_raw(&self) -> (NtpTimestamp, (i64, u32)) {
        let t = realtime::now_unix();
        let served = self
            .cfg
            .domains
            .system_to_served(t)
            .unwrap_or_else(|| NtpTimestamp::from_unix(t.0, t.1));
        (served, t)
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
                    let s = &self.cfg.stats;
                    match -c.result {
                        libc::EINVAL => {
                            return Err(std::io::Error::other(
                                "multishot recvmsg refused (EINVAL): this server needs Linux 6.0 or newer",
                            ));
                        }
                        // Every receive buffer in use: the receive ends
                        // (re-armed below, buffers come back this turn).
                        libc::ENOBUFS => self.note_error(&s.recv_enobufs, "receive", -c.result),
                        errno => self.note_error(&s.recv_other, "receive", errno),
                    }
                }
                if !c.more() && socket < self.sockets.len() {
                    bump(&self.cfg.stats.recv_rearms);
                    self.arm_recv(socket)?;
                }
            }
            KIND_SEND => self.on_send_result(extra as u16, c.result),
            // The watchdog's cancel found no receive in flight: arm one now
            // (when it did find one, that receive's last completion re-arms).
            KIND_CANCEL if c.result == -libc::ENOENT && socket < self.sockets.len() => {
                bump(&self.cfg.stats.recv_rearms);
                self.arm_recv(socket)?;
            }
            KIND_POLLERR if socket < self.sockets.len() => {
                self.sockets[socket].tx_watch.saw_completion();
                self.drain_error_queue(socket);
                let fd = self.sockets[socket].send_fd;
                if !c.more() {
                    let r = self.ring.arm_poll_err(fd, tag(KIND_POLLERR, socket, 0));
                    self.tolerate(r)?;
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
        if let Some(total) = meta.socket_drops {
            let sock = &mut self.sockets[socket];
            add(
                &stats.socket_overflow,
                u64::from(overflow_delta(sock.drops_seen, total)),
            );
            sock.drops_seen = total;
        }
        if let IpAddr::V4(ip) = source.ip() {
            if self.broadcasts.contains(ip) {
                bump(&stats.drops[DropReason::BadSource as usize]);
                return;
            }
        }
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
        // How long the request waited in the socket: from its kernel
        // (CLOCK_REALTIME) or NIC (served time) receive stamp to now, each in
        // its own clock domain.
        let max_age = self.cfg.guards.max_request_age_ns;
        let stale = max_age != 0
            && match (self.cfg.rx, meta.software, hw) {
                (RxTimestamps::Kernel, Some(t), _) => {
                    is_stale(t.as_nanos(), self.handled_ns, max_age)
                }
                (_, _, Some(t)) => {
                    let now = self.handled_ns;
                    let secs = now.div_euclid(1_000_000_000) as i64;
                    let nanos = now.rem_euclid(1_000_000_000) as u32;
                    domains
                        .system_to_served((secs, nanos))
                        .is_some_and(|now| now.diff_nanos(t) > max_age as i64)
                }
                _ => false,
            };
        if stale {
            bump(&stats.stale_requests);
            return;
        }
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
        // The access list, then the rate limit (SERVER-SPEC's order), for
        // well-formed requests only: garbage never touches the client table.
        let mut admission = Admission::Allow;
        // Whether a reply may make an interleaved-mode entry (None: ask the
        // per-source allowance if it wants one).
        let mut entry_ok = None;
        let now_tick = ticks_from_ntp(wake.to_bits());
        if let (Some(shared), Some(cache)) = (&self.cfg.policy, &mut self.policy) {
            let policy = cache.load();
            if policy::Shared::active(policy) {
                if let Err(reason) = classify(msg.payload, &source) {
                    bump(&stats.drops[reason as usize]);
                    return;
                }
                let d = shared.admit(
                    policy,
                    source.ip(),
                    now_tick,
                    policy::xorshift32(&mut self.leak_rng),
                );
                if d.table.inserted {
                    bump(&stats.client_inserts);
                }
                if d.table.replaced {
                    bump(&stats.client_replacements);
                }
                if d.leaked {
                    bump(&stats.rate_leaked);
                }
                admission = d.admission;
                entry_ok = d.interleave;
            }
        }
        let Some(slot) = self.slots.alloc() else {
            bump(&stats.send_queue_full);
            return;
        };
        let mut ctx = RequestContext {
            receive_time,
            transmit_time: wake,
            source,
            admission,
            interleave: self.cfg.table.is_some(),
        };
        // NTS after the access list and rate limit (an admitted request only),
        // before the reply.
        let mut nts_reply = None;
        let mut nts_nak = None;
        if let (Some(nts), Admission::Allow) = (&self.cfg.nts, ctx.admission) {
            if classify(msg.payload, &source).is_ok() {
                let keys = nts.keys.load();
                // Expanded at the first NTS request; `refresh` is a no-op
                // until the key set changes.
                let masters = self
                    .nts_masters
                    .get_or_insert_with(|| MasterCiphers::shared(&keys));
                masters.refresh(&keys);
                match check_request(msg.payload, masters) {
                    NtsCheck::Plain if nts.require => {
                        bump(&stats.nts_unauthenticated_refused);
                        ctx.admission = Admission::Kod(KissCode::Deny);
                    }
                    NtsCheck::Plain => {}
                    NtsCheck::Authenticated(r) => nts_reply = Some(r),
                    NtsCheck::Nak {
                        uid_at, uid_len, ..
                    } => {
                        ctx.admission = Admission::Kod(KissCode::Ntsn);
                        nts_nak = Some((uid_at, uid_len));
                    }
                    NtsCheck::Drop(why) => {
                        bump(match why {
                            NtsDrop::AuthFailed => &stats.nts_auth_failures,
                            NtsDrop::Malformed => &stats.nts_malformed,
                        });
                        self.slots.release(slot);
                        return;
                    }
                }
            }
        }
        let state = self.cfg.state.load();
        let out = self.slots.payload_mut(slot);
        let decision = match &self.cfg.table {
            Some(t) => respond(msg.payload, &ctx, &state, t.as_ref(), out),
            None => respond(msg.payload, &ctx, &state, &NoInterleave, out),
        };
        let mut seal_job = None;
        let decision = match decision {
            Decision::Reply(mut r) => {
                let nts = match (r.kind, nts_nak, &nts_reply) {
                    (ReplyKind::Kod(KissCode::Ntsn), Some((at, len)), _) => {
                        bump(&stats.nts_naks);
                        write_nak(out, msg.payload, at, len)
                    }
                    (ReplyKind::Basic | ReplyKind::Interleaved { .. }, _, Some(req)) => {
                        // Checked with these ciphers just above (an
                        // authenticated request implies them).
                        self.nts_masters
                            .as_mut()
                            .and_then(|m| write_reply(out, msg.payload, req, m, &mut self.rng))
                            .map(|(len, job)| {
                                bump(&stats.nts_requests);
                                seal_job = Some(job);
                                len
                            })
                    }
                    _ => Some(r.len),
                };
                match nts {
                    Some(len) => {
                        r.len = len;
                        Decision::Reply(r)
                    }
                    None => Decision::Drop(DropReason::BufferTooSmall),
                }
            }
            d => d,
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
            ReplyKind::Kod(code) => (SlotKind::Kod(code), false),
        };
        self.slot_kind[usize::from(slot)] = kind;
        let tx_on = self.cfg.tx_mode != TxTimestampMode::Off;
        let mut interleave = reply.want_tx_timestamp && tx_on;
        if interleave {
            // Entries only for sources within their limits (with rate limiting
            // off: within the per-source entry allowance).
            let allowed = match (entry_ok, &self.cfg.policy, &mut self.policy) {
                (Some(ok), _, _) => ok,
                (None, Some(shared), Some(cache)) => {
                    let (ok, t) = shared.interleave_allowed(cache.load(), source.ip(), now_tick);
                    if t.inserted {
                        bump(&stats.client_inserts);
                    }
                    if t.replaced {
                        bump(&stats.client_replacements);
                    }
                    ok
                }
                _ => true,
            };
            if !allowed {
                bump(&stats.interleave_over_limit);
                interleave = false;
            }
        }
        let sock = &mut self.sockets[socket];
        // Its place in the batch of sends, and how long the worker was idle
        // before it (see crate::server::sendlatency).
        // (The place is final only in `flush_batch`, when the batch is
        // complete; this guess, as if it ended here, only paces the sampling.)
        let place = send_place(
            self.cfg.direct_send,
            self.batch.len(),
            self.batch.len() + 1,
            interleave,
        );
        let situation = Situation::new(wake.diff_nanos(self.last_flush), place);
        let calibrate = !interleave
            && patch
            && tx_on
            && self.cfg.domains.send_latency_comp()
            && sock.latency.sample_due(situation, wake);
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
            poll: msg.payload.get(2).map_or(0, |&p| p as i8),
            situation,
            seal: seal_job,
        });
    }

    /// Read the transmit time once for the whole batch, patch it into every basic
    /// reply, remember interleaved-mode candidates, and queue the sends.
    fn flush_batch(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let direct = send_place(
            self.cfg.direct_send,
            0,
            self.batch.len(),
            self.batch[0].interleave,
        ) == 0;
        // A lone basic reply after the worker was idle (cold caches, a CPU
        // coming out of an idle state) spends longer between its reading and
        // the wire, and more variably so. Running the socket's send path once
        // without sending (a MSG_PROBE) before the reading takes part of that
        // out: in A/B runs on an idle veth server the median latency from
        // reading to kernel transmit stamp fell by about a quarter and its
        // interquartile range by a third (docs/ACCURACY.md).
        if direct && self.cfg.warm_send_path && self.batch[0].situation.is_cold() {
            let q = self.batch[0];
            // A failed probe costs nothing but the call: the send reports any
            // real error itself.
            let _ = self
                .slots
                .probe_route(self.sockets[q.socket].send_fd, q.slot);
            bump(&self.cfg.stats.send_path_probes);
        }
        let now = self.served_now();
        let now_tick = ticks_from_ntp(now.to_bits());
        let sent_at = Instant::now();
        self.last_flush = now;
        for i in 0..self.batch.len() {
            let mut q = self.batch[i];
            let sock = &mut self.sockets[q.socket];
            // The reading plus the floor of the send latencies measured in the
            // same situation (place, idle time before it): a transmit time as
            // close as it can be to the real one while staying before it (see
            // crate::server::sendlatency).
            let place = if direct { 0 } else { i + 1 };
            q.situation = q.situation.at_place(place);
            let position = u16::try_from(place).unwrap_or(u16::MAX);
            let latency = if self.cfg.domains.send_latency_comp() {
                sock.latency.estimate(q.situation, position)
            } else {
                0
            };
            let transmit = now.add_nanos(latency).with_even_low_bit();
            if q.patch_transmit {
                set_transmit(self.slots.payload_mut(q.slot), transmit);
            }
            // The egress program reads the clock again as this basic reply
            // leaves and adds the learned latency from there to the driver's
            // stamp (never NTS: sealed over the header).
            let mut egress_origin = [0u8; 8];
            let mut egress_corr = 0;
            if let (true, None, Some(slots)) = (q.patch_transmit, &q.seal, &self.cfg.egress) {
                let payload = self.slots.payload_mut(q.slot);
                let mut origin = [0u8; 8];
                origin.copy_from_slice(&payload[24..32]);
                if slots.corrects() && self.cfg.domains.send_latency_comp() {
                    egress_corr = sock.egress_latency.estimate(q.situation.at_place(0), 0);
                }
                if slots.arm(origin, egress_corr) {
                    egress_origin = origin;
                }
            }
            // NTS: the Authenticator covers the header, so it is sealed after
            // the transmit timestamp is final.
            if let Some(job) = &q.seal {
                if !seal(self.slots.payload_mut(q.slot), job) {
                    bump(&self.cfg.stats.drops[DropReason::BufferTooSmall as usize]);
                    self.slots.release(q.slot);
                    continue;
                }
            }
            if q.want_tx {
                let sent = Sent {
                    served_receive: q.served_receive,
                    pre_send: now,
                    position,
                    situation: q.situation,
                    estimate: transmit,
                    interleave: q.interleave,
                    basic: q.patch_transmit,
                    egress_origin,
                    egress_corr,
                };
                if sock.pending.register(q.tx_key, sent, sent_at) {
                    bump(&self.cfg.stats.tx_ts_missed);
                }
                sock.tx_expected = sock.tx_expected.saturating_add(1);
                bump(&self.cfg.stats.tx_ts_requested);
                if let (true, Some(t)) = (q.interleave, &self.cfg.table) {
                    // Low bit 1: only an estimate until the exact time comes.
                    let due = due_tick(now_tick, q.poll);
                    let entry = NtpTimestamp(transmit.to_bits() | 1);
                    if t.insert(q.served_receive, entry, now_tick, due) == Insert::Full {
                        bump(&self.cfg.stats.interleave_full);
                    }
                }
            }
            let fd = self.sockets[q.socket].send_fd;
            if direct {
                let result = self.slots.send_now(fd, q.slot);
                bump(&self.cfg.stats.direct_sends);
                self.on_send_result(q.slot, result);
                continue;
            }
            let pushed = self.ring.push_send(
                fd,
                &mut self.slots,
                q.slot,
                tag(KIND_SEND, q.socket, u64::from(q.slot)),
            );
            if pushed.is_err() {
                // Not queued: the reply is dropped, its slot free again.
                self.slots.release(q.slot);
                if let Err(e) = self.tolerate(pushed) {
                    self.batch.clear();
                    return Err(e);
                }
            }
        }
        self.batch.clear();
        Ok(())
    }

    /// A send finished (its completion, or a direct send's return value):
    /// give its slot back and count the reply or the error.
    fn on_send_result(&mut self, slot: u16, result: i32) {
        if !self.slots.release(slot) {
            // A completion for a slot not in flight: seen twice.
            bump(&self.cfg.stats.stale_completions);
        } else if result < 0 {
            let s = &self.cfg.stats;
            bump(&s.send_errors);
            let counter = match SendError::of(result) {
                SendError::NoBufs => &s.send_enobufs,
                SendError::Perm => &s.send_eperm,
                SendError::Again => &s.send_eagain,
                SendError::Other => &s.send_other,
            };
            self.note_error(counter, "send", -result);
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
                SlotKind::Kod(code) => {
                    bump(&s.replies_kod);
                    match code {
                        KissCode::Rate => bump(&s.kod_rate),
                        KissCode::Deny => bump(&s.kod_deny),
                        // NTSN is counted where it is made (nts_naks).
                        KissCode::Rstr | KissCode::Ntsn => {}
                    }
                }
            }
        }
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
            let ws = &self.cfg.sockets[i];
            let mut now = readiness(ws.fd.as_fd());
            if let Some(twin) = &ws.send {
                bump(&self.cfg.stats.other_syscalls);
                now.error_queue = readiness(twin.as_fd()).error_queue;
            }
            let sock = &mut self.sockets[i];
            let rx_stalled = sock.rx_watch.check(now.data);
            let tx_stalled = tx_on && sock.tx_watch.check(now.error_queue);
            if rx_stalled {
                self.recover_receive(i)?;
            }
            if tx_stalled && self.cfg.tx_mode == TxTimestampMode::AfterSend {
                // Nothing is armed to be stalled: stamps that came after the
                // look after their send are read here.
                self.drain_error_queue(i);
            } else if tx_stalled {
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

    /// [`TxTimestampMode::AfterSend`]: read the stamps of the replies sent
    /// since the last look (at most that many entries, so no call that finds
    /// the queue empty when all of them are there). Entries that were not
    /// there yet stay for the next look or the watchdog.
    fn collect_tx_after_send(&mut self) {
        if self.cfg.tx_mode != TxTimestampMode::AfterSend {
            return;
        }
        for i in 0..self.sockets.len() {
            let expected = std::mem::take(&mut self.sockets[i].tx_expected);
            if expected > 0 && self.read_error_queue(i, expected as usize) > 0 {
                self.sockets[i].tx_watch.saw_completion();
            }
        }
    }

    /// Read the socket's error queue until it is empty (bounded), matching
    /// every transmit timestamp to its reply.
    fn drain_error_queue(&mut self, socket: usize) {
        self.read_error_queue(socket, usize::MAX);
    }

    /// Read up to `max` entries of the socket's error queue (never more than
    /// a queue can hold), matching each transmit timestamp to its reply.
    /// Returns how many timestamps were read.
    fn read_error_queue(&mut self, socket: usize, max: usize) -> usize {
        let (cfg, sock) = (&self.cfg, &mut self.sockets[socket]);
        // A queue holds at most the receive buffer's worth of entries.
        let max = max.min(64 * MAX_PER_CALL);
        let fd = cfg.sockets[socket].send_fd();
        match drain_tx_timestamps(fd, &mut |ts| handle_tx_timestamp(sock, cfg, &ts), max) {
            Ok(d) => {
                add(&cfg.stats.other_syscalls, d.syscalls as u64);
                d.delivered
            }
            Err(_) => 0,
        }
    }

    /// Cancel the socket's silent multishot receive; its last completion (or
    /// the cancel's, when none was in flight) re-arms it.
    fn recover_receive(&mut self, socket: usize) -> std::io::Result<()> {
        self.note_stall("receive", socket, &self.cfg.stats.recv_stalls);
        let r = self
            .ring
            .cancel(tag(KIND_RECV, socket, 0), tag(KIND_CANCEL, socket, 0));
        self.tolerate(r)
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
        if let Some(mut tx) = self.tx_ring.take() {
            let r = tx
                .cancel(tag(KIND_TXTS, socket, 0), tag(KIND_CANCEL, socket, 0))
                .and_then(|()| tx.submit().map(drop));
            self.tx_ring = Some(tx);
            self.tolerate(r)?;
        }
        Ok(())
    }

    /// Once a second: count as missed the transmit timestamps that did not
    /// come in time, and let old send-latency samples expire.
    fn tick(&mut self, now: Instant) {
        let served = self.served_now();
        self.broadcasts.refresh(&self.cfg.guards.broadcasts.get());
        for sock in &mut self.sockets {
            add(&self.cfg.stats.tx_ts_missed, sock.pending.sweep(now));
            sock.latency.refit(served);
            sock.egress_latency.refit(served);
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
    sock.latency.add(
        sent.situation,
        sent.position,
        exact.diff_nanos(sent.pre_send),
        exact,
    );
    // What the reply carried: the egress program's value when it wrote one,
    // else the estimate. An armed reply whose slot no longer tells (another
    // reply took it, or the program refused) is left out of the error. Without
    // the program, an interleaved reply counts with the estimate it would
    // have carried as a basic reply (the estimator's own error); with it,
    // that would not be what a basic reply carries, so it is left out.
    let mut carried = (sent.basic || cfg.egress.is_none()).then_some(sent.estimate);
    if let (true, Some(slots)) = (sent.egress_origin != [0; 8], &cfg.egress) {
        carried = slots.written(sent.egress_origin).map(NtpTimestamp);
        if let Some(written) = carried {
            // Reading to stamp, without the correction that was added.
            let latency = exact.diff_nanos(written) + sent.egress_corr;
            sock.egress_latency
                .add(sent.situation.at_place(0), 0, latency, exact);
        }
    }
    // How far the served transmit time was from the real one (the error a
    // basic reply's transmit timestamp carries).
    if let Some(carried) = carried {
        stats.record_estimate_error(exact.diff_nanos(carried));
    }
    if let (true, Some(t)) = (sent.interleave, &cfg.table) {
        t.update(sent.served_receive, exact.with_even_low_bit());
    }
}

/// A `(seconds, nanoseconds)` reading as nanoseconds.
fn unix_ns(t: (i64, u32)) -> i128 {
    i128::from(t.0) * 1_000_000_000 + i128::from(t.1)
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
            sockets: vec![WorkerSocket {
                fd,
                send: None,
                local,
            }],
            state: Arc::new(StateCell::new(ServerState::local_stratum1(
                -20,
                NtpShort(1),
                NtpTimestamp(1 << 40),
            ))),
            table: Some(Arc::new(InterleaveTable::new(1 << 10))),
            policy: None,
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
            domains: {
                let d = TimeDomains::system();
                d.set_send_latency_comp(false);
                d
            },
            ring: RingConfig::default(),
            cpu: None,
            guards: Default::default(),
            nts: None,
            direct_send: false,
            warm_send_path: false,
            egress: None,
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

    /// A worker on a loopback socket with kernel receive stamps, run by the
    /// supervisor on a thread whose rings take their faults from `faults`.
    struct Harness {
        local: SocketAddr,
        stats: Arc<WorkerStats>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Harness {
        /// Every reply through the ring (the fault seam sees every send).
        fn start(faults: &crate::net::uring::faults::Injector, ring: RingConfig) -> Harness {
            Self::start_with(faults, ring, false)
        }

        fn start_with(
            faults: &crate::net::uring::faults::Injector,
            ring: RingConfig,
            direct_send: bool,
        ) -> Harness {
            let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
            enable_timestamping(
                fd.as_fd(),
                &TimestampingConfig {
                    rx_software: true,
                    ..TimestampingConfig::default()
                },
            )
            .unwrap();
            let local = local_addr(fd.as_fd()).unwrap();
            let stats = Arc::new(WorkerStats::default());
            let stop = Arc::new(AtomicBool::new(false));
            let cfg = WorkerConfig {
                id: 0,
                sockets: vec![WorkerSocket {
                    fd,
                    send: None,
                    local,
                }],
                state: Arc::new(StateCell::new(ServerState::local_stratum1(
                    -20,
                    NtpShort(1),
                    NtpTimestamp(1 << 40),
                ))),
                table: None,
                stats: stats.clone(),
                stop: stop.clone(),
                tx_mode: TxTimestampMode::Off,
                tx_hardware: false,
                explicit_tx_key: false,
                rx: RxTimestamps::Kernel,
                domains: {
                    let d = TimeDomains::system();
                    d.set_send_latency_comp(false);
                    d
                },
                ring,
                cpu: None,
                guards: Guards::default(),
                policy: None,
                nts: None,
                direct_send,
                warm_send_path: direct_send,
                egress: None,
            };
            let faults = faults.clone();
            let (ready_tx, ready) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                crate::net::uring::faults::install(&faults);
                crate::server::restart::supervise(cfg, |r| ready_tx.send(r).unwrap());
            });
            ready.recv().unwrap().unwrap();
            Harness {
                local,
                stats,
                stop,
                thread: Some(thread),
            }
        }

        fn client(&self, timeout_ms: u64) -> UdpSocket {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_millis(timeout_ms)))
                .unwrap();
            c
        }

        /// Answered within 3 s (a few tries: a fault may eat one reply).
        fn answers(&self) -> bool {
            let c = self.client(1000);
            (0..3).any(|i| ask(&c, self.local, 0, 0x1000 + i))
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Each run-time error a worker can meet, injected through the ring's
    /// fault seam: counted by kind, and the worker answers afterwards; the
    /// unrecoverable ones restart the worker (same socket, new ring).
    #[test]
    fn every_injected_error_is_survived() {
        use crate::net::uring::faults::Injector;
        let faults = Injector::default();
        let h = Harness::start(&faults, RingConfig::default());
        assert!(h.answers(), "answers before any fault");
        let snap = || h.stats.snapshot();
        let kind_mask = 0xffu64 << KIND_SHIFT;
        type Inject = Box<dyn Fn(&Injector)>;
        type Counter = fn(&crate::server::stats::StatsSnapshot) -> u64;
        let cases: Vec<(&str, Inject, Counter)> = vec![
            (
                "EINTR on enter",
                Box::new(|f| f.fail_enter(libc::EINTR)),
                |s| s.enter_eintr,
            ),
            (
                "EAGAIN on enter",
                Box::new(|f| f.fail_enter(libc::EAGAIN)),
                |s| s.enter_eagain,
            ),
            (
                "EBUSY on enter",
                Box::new(|f| f.fail_enter(libc::EBUSY)),
                |s| s.enter_ebusy,
            ),
            (
                "ENOBUFS on a send",
                Box::new(move |f| f.rewrite(kind_mask, KIND_SEND << KIND_SHIFT, -libc::ENOBUFS)),
                |s| s.send_enobufs,
            ),
            (
                "EPERM on a send",
                Box::new(move |f| f.rewrite(kind_mask, KIND_SEND << KIND_SHIFT, -libc::EPERM)),
                |s| s.send_eperm,
            ),
            (
                "EAGAIN on a send",
                Box::new(move |f| f.rewrite(kind_mask, KIND_SEND << KIND_SHIFT, -libc::EAGAIN)),
                |s| s.send_eagain,
            ),
            (
                "EHOSTUNREACH on a send",
                Box::new(move |f| {
                    f.rewrite(kind_mask, KIND_SEND << KIND_SHIFT, -libc::EHOSTUNREACH)
                }),
                |s| s.send_other,
            ),
            (
                "a multishot receive ended by ENOBUFS",
                Box::new(|f| {
                    f.complete(Cqe {
                        user_data: tag(KIND_RECV, 0, 0),
                        result: -libc::ENOBUFS,
                        flags: 0,
                        extra: [0; 2],
                    })
                }),
                |s| s.recv_enobufs,
            ),
            (
                "a multishot receive ended by another error",
                Box::new(|f| {
                    f.complete(Cqe {
                        user_data: tag(KIND_RECV, 0, 0),
                        result: -libc::ENOMEM,
                        flags: 0,
                        extra: [0; 2],
                    })
                }),
                |s| s.recv_other,
            ),
            (
                "a multishot receive cancelled",
                Box::new(|f| {
                    f.complete(Cqe {
                        user_data: tag(KIND_RECV, 0, 0),
                        result: -libc::ECANCELED,
                        flags: 0,
                        extra: [0; 2],
                    })
                }),
                |s| s.recv_rearms,
            ),
            (
                "a full submission queue",
                Box::new(|f| f.fail_push()),
                |s| s.sq_full,
            ),
            (
                "completions held back (CQ overflow)",
                Box::new(|f| f.overflow(true, 0)),
                |s| s.cq_overflow,
            ),
            // The unrecoverable ones: the worker is restarted.
            (
                "completions dropped (cq.overflow grew)",
                Box::new(|f| f.overflow(false, 3)),
                |s| s.restarts,
            ),
            (
                "EBADR on enter",
                Box::new(|f| f.fail_enter(libc::EBADR)),
                |s| s.restarts,
            ),
            (
                "EBADF on enter",
                Box::new(|f| f.fail_enter(libc::EBADF)),
                |s| s.restarts,
            ),
        ];
        for (what, inject, counter) in cases {
            let before = counter(&snap());
            inject(&faults);
            // The worker wakes at least every watchdog interval; a request
            // makes it use the fault now (a send fault needs a reply).
            let c = h.client(300);
            let _ = ask(&c, h.local, 0, 0x42);
            wait_until(what, || faults.used_up() && counter(&snap()) > before);
            assert!(
                h.answers(),
                "{what}: no answer afterwards; {}",
                snap().summary()
            );
            assert_eq!(counter(&snap()), before + 1, "{what}: counted once");
        }
        let s = snap();
        assert_eq!(s.restarts, 3, "{}", s.summary());
        assert_eq!(s.cq_dropped, 3 + 1, "3 reported dropped, then EBADR");
        assert_eq!(s.enter_fatal, 1);
        assert_eq!(s.send_errors, 4);
        eprintln!("{}", s.summary());
    }

    /// The errors a direct send (`--direct-send`, a lone reply sent with its
    /// own `sendmsg`) can meet: counted by kind like a ring send's, the slot
    /// given back, and the worker answers afterwards.
    #[test]
    fn direct_send_errors_are_survived() {
        let faults = crate::net::uring::faults::Injector::default();
        let h = Harness::start_with(&faults, RingConfig::default(), true);
        assert!(h.answers(), "answers before any fault");
        let snap = || h.stats.snapshot();
        // (Counted after sendmsg returns: the reply may arrive first.)
        wait_until("a lone reply sent directly", || snap().direct_sends >= 1);
        type Counter = fn(&crate::server::stats::StatsSnapshot) -> u64;
        let cases: [(i32, Counter); 4] = [
            (libc::ENOBUFS, |s| s.send_enobufs),
            (libc::EPERM, |s| s.send_eperm),
            (libc::EAGAIN, |s| s.send_eagain),
            (libc::EHOSTUNREACH, |s| s.send_other),
        ];
        for (errno, counter) in cases {
            let before = counter(&snap());
            faults.fail_send_now(errno);
            let c = h.client(300);
            let _ = ask(&c, h.local, 0, 0x42);
            wait_until("the direct send's fault", || {
                faults.used_up() && counter(&snap()) > before
            });
            assert!(h.answers(), "errno {errno}: no answer afterwards");
            assert_eq!(counter(&snap()), before + 1, "errno {errno}: counted once");
        }
        let s = snap();
        assert_eq!(s.send_errors, 4, "{}", s.summary());
        assert_eq!(s.restarts, 0);
        assert_eq!(s.stale_completions, 0, "each slot given back once");
    }

    /// A lone basic reply after the worker was idle first probes its route
    /// (`--warm-send-path`): each such reply is counted once, and the client
    /// gets exactly one datagram per request (the probe sends nothing).
    #[test]
    fn warm_send_path_probes_and_sends_nothing_more() {
        let faults = crate::net::uring::faults::Injector::default();
        let h = Harness::start_with(&faults, RingConfig::default(), true);
        assert!(h.answers());
        let c = h.client(300);
        let probes = h.stats.snapshot().send_path_probes;
        for i in 0..3 {
            // Idle for well over 200 us before each request.
            std::thread::sleep(Duration::from_millis(5));
            assert!(ask(&c, h.local, 0, 0x5000 + i), "request {i} answered");
        }
        let mut buf = [0u8; 64];
        assert!(c.recv_from(&mut buf).is_err(), "no second datagram");
        wait_until("three probes", || {
            h.stats.snapshot().send_path_probes >= probes + 3
        });
        let s = h.stats.snapshot();
        assert_eq!(s.send_path_probes, probes + 3, "{}", s.summary());
        assert_eq!(s.send_errors, 0);
    }

    /// A real exhaustion of the provided receive buffers: with two buffers
    /// and bursts of requests, the kernel ends the multishot receive with
    /// ENOBUFS; the worker counts it, re-arms, and answers afterwards.
    #[test]
    fn receive_buffer_exhaustion_is_survived() {
        let faults = crate::net::uring::faults::Injector::default();
        let h = Harness::start(
            &faults,
            RingConfig {
                recv_buffers: 2,
                ..RingConfig::default()
            },
        );
        assert!(h.answers());
        let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | 3;
        // Bounded: at most 20 bursts of 500 datagrams.
        for _ in 0..20 {
            for _ in 0..500 {
                let _ = flood.send_to(&req, h.local);
            }
            std::thread::sleep(Duration::from_millis(50));
            if h.stats.snapshot().recv_enobufs > 0 {
                break;
            }
        }
        let s = h.stats.snapshot();
        assert!(
            s.recv_enobufs > 0,
            "no ENOBUFS with 2 buffers: {}",
            s.summary()
        );
        assert!(s.recv_rearms >= s.recv_enobufs, "{}", s.summary());
        assert!(h.answers(), "{}", h.stats.snapshot().summary());
        assert_eq!(h.stats.snapshot().restarts, 0);
    }

    /// A real completion-queue overflow: a 64-entry completion queue and
    /// bursts of requests make the kernel hold completions back; the worker
    /// counts it, reaps them, and answers afterwards without a restart.
    #[test]
    fn completion_queue_overflow_is_survived() {
        let faults = crate::net::uring::faults::Injector::default();
        let h = Harness::start(
            &faults,
            RingConfig {
                sq_entries: 32,
                cq_entries: SEND_BATCH as u32,
                ..RingConfig::default()
            },
        );
        assert!(h.answers());
        let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | 3;
        // Bounded: at most 20 bursts of 1000 datagrams.
        for _ in 0..20 {
            for _ in 0..1000 {
                let _ = flood.send_to(&req, h.local);
            }
            std::thread::sleep(Duration::from_millis(50));
            if h.stats.snapshot().cq_overflow > 0 {
                break;
            }
        }
        let s = h.stats.snapshot();
        assert!(
            s.cq_overflow > 0,
            "no overflow with 64 entries: {}",
            s.summary()
        );
        assert!(h.answers(), "{}", h.stats.snapshot().summary());
        let s = h.stats.snapshot();
        assert_eq!((s.restarts, s.cq_dropped), (0, 0), "{}", s.summary());
        eprintln!("{}", s.summary());
    }
}
