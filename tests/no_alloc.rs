//! The per-packet path allocates nothing: a [`Worker`] runs in-process on a
//! loopback socket (kernel receive timestamps, interleaved mode with kernel
//! transmit timestamps through io_uring's socket command) under a counting
//! global allocator, and serves thousands of basic and interleaved requests
//! after a warm-up, plain and with NTS (cookie decryption, authentication,
//! new cookies, sealing). Only allocations made on the worker's own thread count (the
//! test client runs on another thread).
//!
//! When an allocation is found, the backtrace of the first one is printed, so
//! the failure names the line on the hot path that allocated.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hwntpd::clock::snapshot::StateCell;
use hwntpd::net::socket::{bind_udp, enable_timestamping, probe_scm_ts_opt_id, TimestampingConfig};
use hwntpd::net::uring::{probe_tx_timestamp_command, RingConfig};
use hwntpd::nts::aead::Aead;
use hwntpd::nts::cookie::{self, ClientKeys};
use hwntpd::nts::keys::KeySet;
use hwntpd::nts::ntp::client::{check_reply, request as nts_request, ReplyCheck};
use hwntpd::nts::service::NtsState;
use hwntpd::policy::acl::{AccessList, Action, Cidr, Rule};
use hwntpd::policy::ratelimit::{RateLimit, MIN_INTERVAL};
use hwntpd::policy::{Policy, Shared};
use hwntpd::protocol::packet::Header;
use hwntpd::protocol::{NtpShort, NtpTimestamp, ServerState};
use hwntpd::server::interleave::InterleaveTable;
use hwntpd::server::stats::WorkerStats;
use hwntpd::server::worker::{RxTimestamps, TxTimestampMode, Worker, WorkerConfig, WorkerSocket};
use rand::SeedableRng as _;

/// Counts allocations made on a thread marked with [`ON_WORKER`] while [`ARMED`].
struct CountingAlloc;

/// Set while the measured phase runs.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Allocations (`alloc`, `alloc_zeroed`, `realloc`) counted.
static COUNT: AtomicU64 = AtomicU64::new(0);
/// The backtrace of the first counted allocation.
static FIRST: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// This thread is the worker's (const-initialised: reading it never allocates).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
    /// Inside the allocator's own bookkeeping (capturing a backtrace allocates).
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

impl CountingAlloc {
    fn note(&self) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        let on_worker = ON_WORKER.try_with(|c| c.get()).unwrap_or(false);
        if !on_worker || IN_HOOK.try_with(|c| c.get()).unwrap_or(true) {
            return;
        }
        COUNT.fetch_add(1, Ordering::Relaxed);
        IN_HOOK.with(|c| c.set(true));
        if let Ok(mut first) = FIRST.try_lock() {
            if first.is_none() {
                *first = Some(std::backtrace::Backtrace::force_capture().to_string());
            }
        }
        IN_HOOK.with(|c| c.set(false));
    }
}

// SAFETY: every method forwards to `System` unchanged; `note` only touches
// atomics, const thread-locals and (guarded against re-entry) a backtrace.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn state() -> ServerState {
    ServerState::local_stratum1(-20, NtpShort(1), NtpTimestamp(1 << 40))
}

/// Clients: every socket keeps one request outstanding. Even-numbered sockets
/// speak basic mode; odd ones follow chrony's xleave protocol (the origin of
/// each request is the receive timestamp the server served last time).
struct Clients {
    socks: Vec<UdpSocket>,
    /// With a policy: a source over its rate limit (8 requests a round) and a
    /// refused one (1 a round), neither waited for.
    abusers: Vec<(UdpSocket, usize)>,
    /// Pause after each round (keeps the well-behaved clients within their limit).
    pace: Duration,
    /// Per socket: the server's last served receive timestamp, and our receive time.
    xleave: Vec<(u64, u64)>,
    counter: u64,
    basic: u64,
    interleaved: u64,
    /// NTS: the keys and a cookie every request carries (requests and replies
    /// are built and checked on this thread, which is not counted).
    nts: Option<(ClientKeys, Vec<u8>)>,
}

impl Clients {
    /// `n` clients on 127.0.0.1, or (`policy`) each on its own address
    /// 127.0.0.2.., plus the abusers; with `nts`, every request carries it.
    fn new(n: usize, policy: bool, nts: Option<(ClientKeys, Vec<u8>)>) -> Clients {
        let socks = (0..n)
            .map(|i| {
                let ip = if policy { 2 + i } else { 1 };
                let s = UdpSocket::bind(format!("127.0.0.{ip}:0")).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s
            })
            .collect();
        let abusers = if policy {
            [("127.0.0.99:0", 8), ("127.0.0.98:0", 1)]
                .iter()
                .map(|&(a, n)| {
                    let s = UdpSocket::bind(a).unwrap();
                    s.set_nonblocking(true).unwrap();
                    (s, n)
                })
                .collect()
        } else {
            Vec::new()
        };
        Clients {
            socks,
            abusers,
            pace: if policy {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            },
            // An odd origin that matches nothing: asks for a transmit timestamp.
            xleave: vec![(0x0000_0001_0000_0001, 0); n],
            counter: 0,
            basic: 0,
            interleaved: 0,
            nts,
        }
    }

    /// One round: a request from every socket, then its reply.
    fn round(&mut self, server: SocketAddr) {
        let mut sent = Vec::with_capacity(self.socks.len());
        for (i, s) in self.socks.iter().enumerate() {
            self.counter += 1;
            let tx = 0x1234_0000_0000_0000u64 | (self.counter << 1);
            let mut req = [0u8; 48];
            req[0] = (4 << 3) | 3;
            req[2] = 6;
            if i % 2 == 1 {
                let (origin, local_rx) = self.xleave[i];
                req[24..32].copy_from_slice(&origin.to_be_bytes());
                req[32..40].copy_from_slice(&local_rx.to_be_bytes());
            }
            req[40..48].copy_from_slice(&tx.to_be_bytes());
            match &self.nts {
                Some((keys, cookie)) => {
                    let uid = [i as u8; 32];
                    let nonce = [self.counter as u8; 16];
                    let nts = nts_request(&req, &uid, cookie, 0, keys, &nonce);
                    s.send_to(&nts, server).unwrap();
                }
                None => {
                    s.send_to(&req, server).unwrap();
                }
            }
            sent.push(tx);
        }
        let mut junk = [0u8; 128];
        for (s, n) in &self.abusers {
            while s.recv_from(&mut junk).is_ok() {}
            for _ in 0..*n {
                s.send_to(&request_bytes(self.counter), server).unwrap();
            }
        }
        for (i, s) in self.socks.iter().enumerate() {
            let mut buf = [0u8; 1024];
            let (n, _) = loop {
                match s.recv_from(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.expect("a reply within 2 s"),
                }
            };
            let h = Header::parse(&buf[..n]).expect("a valid reply");
            assert_eq!(h.mode, 4);
            if let Some((keys, _)) = &self.nts {
                let got = check_reply(&buf[..n], &[i as u8; 32], keys);
                assert!(matches!(&got, ReplyCheck::Ok(c) if c.len() == 1), "{got:?}");
            }
            if i % 2 == 1 {
                let local_rx = 0x2000_0000_0000_0000u64 | (self.counter << 2) | 2;
                if h.origin.0 == self.xleave[i].1 && self.xleave[i].1 != 0 {
                    self.interleaved += 1;
                } else {
                    assert_eq!(h.origin.0, sent[i]);
                    self.basic += 1;
                }
                self.xleave[i] = (h.receive.0, local_rx);
            } else {
                assert_eq!(h.origin.0, sent[i], "basic reply echoes the transmit");
                self.basic += 1;
            }
        }
        if !self.pace.is_zero() {
            std::thread::sleep(self.pace);
        }
    }
}

fn request_bytes(counter: u64) -> [u8; 48] {
    let mut req = [0u8; 48];
    req[0] = (4 << 3) | 3;
    req[40..48].copy_from_slice(&(counter << 1).to_be_bytes());
    req
}

/// Rate limiting on (per address, fast enough for the paced clients) and an
/// access list of 1000 prefixes that allows loopback but 127.0.0.98.
fn busy_policy() -> Policy {
    let mut rules = vec![
        Rule {
            action: Action::Allow,
            cidr: Cidr::V4(0x7f00_0000, 8),
        },
        Rule {
            action: Action::Deny,
            cidr: Cidr::V4(0x7f00_0062, 32),
        },
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while rules.len() < 1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 8 + (x % 25) as u8;
        let addr = (0x0a00_0000 | (x >> 40) as u32 & 0x00ff_ffff) & (u32::MAX << (32 - len));
        let action = if x & 1 == 0 {
            Action::Allow
        } else {
            Action::Deny
        };
        rules.push(Rule {
            action,
            cidr: Cidr::V4(addr, len),
        });
    }
    Policy {
        acl: AccessList::from_rules(&rules).unwrap(),
        rate_limit: Some(RateLimit {
            interval: MIN_INTERVAL,
            burst: 255,
            ..RateLimit::default()
        }),
        ..Policy::default()
    }
}

/// Serve from an in-process worker with `tx_mode`, count the worker thread's
/// allocations over 400 rounds of 16 requests after a warm-up, and check the
/// modes were exercised. Returns the allocations counted.
fn measure(tx_mode: TxTimestampMode, with_policy: bool, nts: bool) -> u64 {
    let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).expect("bind loopback");
    let interleave = tx_mode != TxTimestampMode::Off;
    let explicit_tx_key = interleave && probe_scm_ts_opt_id().unwrap_or(false);
    enable_timestamping(
        fd.as_fd(),
        &TimestampingConfig {
            rx_software: true,
            opt_id: interleave,
            tsonly: interleave,
            ..TimestampingConfig::default()
        },
    )
    .expect("SO_TIMESTAMPING");
    let local = hwntpd::net::socket::local_addr(fd.as_fd()).unwrap();

    let stats = Arc::new(WorkerStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let keyset = KeySet::generate(&mut rng, 0);
    let client_nts = nts.then(|| {
        let keys = ClientKeys {
            aead: Aead::AesSivCmac256,
            c2s: [3; 32],
            s2c: [4; 32],
        };
        let mut buf = [0u8; cookie::MAX_COOKIE_LEN];
        let n = cookie::encode(
            &keys,
            &mut cookie::MasterCiphers::new(&keyset),
            &mut rng,
            &mut buf,
        )
        .unwrap();
        (keys, buf[..n].to_vec())
    });
    let nts_state = nts.then(|| NtsState {
        keys: Arc::new(arc_swap::ArcSwap::from_pointee(keyset)),
        require: false,
    });
    let cfg = WorkerConfig {
        id: 0,
        sockets: vec![WorkerSocket {
            fd,
            send: None,
            local,
        }],
        state: Arc::new(StateCell::new(state())),
        table: interleave.then(|| Arc::new(InterleaveTable::new(1 << 12))),
        policy: with_policy.then(|| Arc::new(Shared::new(busy_policy(), 1 << 12))),
        stats: stats.clone(),
        stop: stop.clone(),
        tx_mode,
        tx_hardware: false,
        explicit_tx_key,
        rx: RxTimestamps::Kernel,
        domains: hwntpd::clock::domain::TimeDomains::system(),
        ring: RingConfig::default(),
        cpu: None,
        nts: nts_state.clone(),
        guards: Default::default(),
        // As served by default: lone basic replies sent directly.
        direct_send: true,
        warm_send_path: true,
        // The egress slots armed and read per reply, as with --egress-stamp
        // (the program is loaded, not attached; needs root, as this test).
        egress: hwntpd::net::egress::EgressStamper::new()
            .ok()
            .map(|s| s.slots(true)),
    };
    let worker = std::thread::spawn(move || {
        ON_WORKER.with(|c| c.set(true));
        Worker::new(cfg).expect("worker").run()
    });

    let mut clients = Clients::new(16, with_policy, client_nts);
    // Warm-up: first-use allocations (thread-locals, arc-swap's debt node) happen here.
    for _ in 0..50 {
        clients.round(local);
    }
    let warm = stats.snapshot();

    COUNT.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let rounds = 400;
    for _ in 0..rounds {
        clients.round(local);
    }
    // Let the last transmit timestamps and send completions come in, and one
    // 1-second tick (the pending sweep) pass, while still counting.
    std::thread::sleep(Duration::from_millis(1100));
    ARMED.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();

    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap().expect("worker ran cleanly");

    let end = stats.snapshot();
    let served = end.total_replies() - warm.total_replies();
    let interleaved = end.replies_interleaved - warm.replies_interleaved;
    let tx_kernel = end.tx_ts_kernel - warm.tx_ts_kernel;
    let allocs = COUNT.load(Ordering::SeqCst);
    eprintln!(
        "{tx_mode:?} (NTS: {nts}){}: {served} replies ({interleaved} interleaved, {tx_kernel} kernel TX stamps) \
         in {elapsed:?}, {allocs} allocations on the worker thread; stats: {}",
        if with_policy { " + policy" } else { "" },
        end.summary()
    );
    if with_policy {
        // Every path of the policy was taken.
        assert!(end.kod_deny >= 1 && end.kod_rate >= 1, "{}", end.summary());
        assert!(end.rate_leaked > 0);
        assert!(end.drops[hwntpd::protocol::server::DropReason::RateLimited as usize] > 0);
        assert!(end.drops[hwntpd::protocol::server::DropReason::Ignored as usize] > 0);
        assert!(end.client_inserts >= 17);
    }
    assert!(served >= rounds * 16, "served {served}");
    if nts {
        assert!(end.nts_requests - warm.nts_requests >= rounds * 16);
    }
    if interleave {
        assert!(interleaved >= rounds * 7, "interleaved {interleaved}");
        assert!(tx_kernel >= rounds * 7, "kernel TX stamps {tx_kernel}");
        assert!(clients.interleaved >= rounds * 7);
    } else {
        assert_eq!(interleaved, 0);
        assert_eq!(end.tx_ts_requested, 0);
    }
    allocs
}

/// One test (the counter is process-wide), three transmit-timestamp modes.
#[test]
fn serving_allocates_nothing_per_packet() {
    // The counter itself works: an allocation on a marked thread while armed counts.
    ARMED.store(true, Ordering::SeqCst);
    std::thread::spawn(|| {
        ON_WORKER.with(|c| c.set(true));
        std::hint::black_box(Box::new([1u8; 32]));
    })
    .join()
    .unwrap();
    ARMED.store(false, Ordering::SeqCst);
    assert_eq!(
        COUNT.swap(0, Ordering::SeqCst),
        1,
        "the counting allocator counts"
    );
    assert!(
        FIRST.lock().unwrap().take().is_some(),
        "and records a backtrace"
    );

    let mut modes = vec![
        TxTimestampMode::Off,
        TxTimestampMode::ErrorQueue,
        TxTimestampMode::AfterSend,
    ];
    if probe_tx_timestamp_command() {
        modes.push(TxTimestampMode::UringCommand);
    } else {
        eprintln!(
            "SKIP TxTimestampMode::UringCommand: io_uring's TX-timestamp command \
             (Linux 6.15+) is unavailable here"
        );
    }
    // Each mode plain and with NTS; and with an access list of 1000 prefixes
    // and rate limiting on, in the best transmit-timestamp mode.
    let best = *modes.last().unwrap();
    let runs = modes
        .into_iter()
        .flat_map(|m| [(m, false, false), (m, false, true)])
        .chain([(best, true, false)]);
    for (mode, policy, nts) in runs {
        let allocs = measure(mode, policy, nts);
        if allocs != 0 {
            let bt = FIRST.lock().unwrap().clone().unwrap_or_default();
            panic!("{mode:?} (policy: {policy}, NTS: {nts}): {allocs} allocations on the worker thread while serving; first at:\n{bt}");
        }
    }
}
