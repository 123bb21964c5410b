//! The load generator: many client sockets (source ports), a token bucket,
//! batched `sendmmsg` per socket, `recvmmsg` of whatever epoll says is ready,
//! replies matched by the origin timestamp, fixed-size histograms.
//!
//! Each request's transmit timestamp is a key, not a time: `mix(seq) << 1` with
//! `mix` an invertible 63-bit scramble (multiply by an odd constant, xor a
//! per-run salt), so a reply's origin gives back the sequence number without a
//! hash table, and a ring of send times indexed by sequence number gives the
//! round-trip time. In `--interleaved` mode the request's receive field carries
//! the same key with the low bit set, so an interleaved reply (whose origin is
//! that receive field) is matched too and recognised by its odd origin.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hwntpd::protocol::NtpTimestamp;

use crate::hist::Histogram;
use crate::sys::{self, Batch, Epoll};

/// Options of the `load` subcommand.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Server address and port.
    #[arg(long)]
    pub server: SocketAddr,
    /// Fixed offered rate in requests per second.
    #[arg(long, conflicts_with = "sweep", required_unless_present = "sweep")]
    pub rate: Option<f64>,
    /// Rising sweep START:STOP:STEP in requests per second (one step per rate).
    #[arg(long)]
    pub sweep: Option<String>,
    /// Seconds of sending per rate step.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Number of client sockets (distinct source ports).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Datagrams per sendmmsg/recvmmsg call (at most).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Local address to bind the client sockets to.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Spread the client sockets over this many consecutive IPv4 source
    /// addresses from --bind (socket i binds to --bind + i mod N), so a
    /// per-address rate limit sees N clients. The addresses must be local.
    #[arg(long, default_value_t = 1, requires = "bind")]
    pub sources: u32,
    /// Speak interleaved mode (RFC 9769): origin = the last server receive
    /// timestamp seen on that socket.
    #[arg(long)]
    pub interleaved: bool,
    /// Also print one JSON object per step and a summary line (lines start with '{').
    #[arg(long)]
    pub json: bool,
    /// Milliseconds to keep collecting replies after each step's sending ends.
    #[arg(long, default_value_t = 200)]
    pub drain_ms: u64,
    /// Stop after this many requests in total.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_requests: u64,
    /// Stop a sweep after this many consecutive steps below --threshold (0: never).
    #[arg(long, default_value_t = 2)]
    pub stop_after_fail: u32,
    /// Fraction of requests that must get a valid reply for a step to pass.
    #[arg(long, default_value_t = 0.999)]
    pub threshold: f64,
    /// Server process to charge CPU time to (sum of /proc/PID/task/*/schedstat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Server statistics file in Prometheus text format (syscalls per reply).
    #[arg(long)]
    pub server_stats: Option<PathBuf>,
    /// Counter in --server-stats counting the server's system calls (all samples summed).
    #[arg(long, default_value = "hwntpd_syscalls_total")]
    pub syscall_metric: String,
    /// Counter in --server-stats counting the server's replies (all samples summed).
    #[arg(long, default_value = "hwntpd_replies_total")]
    pub reply_metric: String,
    /// Histogram in --server-stats of |exact transmit time - the transmit
    /// estimate a basic reply carries| (seconds).
    #[arg(long, default_value = "hwntpd_transmit_estimate_error_seconds")]
    pub estimate_histogram: String,
    /// Pacing granularity in microseconds: below a full batch, wait at most this
    /// long for tokens to accumulate.
    #[arg(long, default_value_t = 1000)]
    pub pace_us: u64,
    /// Socket buffer size in bytes for each client socket.
    #[arg(long, default_value_t = 1 << 20)]
    pub sockbuf: usize,
    #[command(flatten)]
    pub nts: crate::ntske::NtsArgs,
}

/// An NTS session for the generator: keys, the cookie every request carries,
/// and where the fields sit in a request.
struct NtsClient {
    keys: hwntpd::nts::cookie::ClientKeys,
    /// Offset of the Authenticator field (the associated data ends here).
    auth_at: usize,
    /// The request's length.
    len: usize,
    /// The fixed part after the header (UID field, cookie field, Authenticator
    /// header); the UID body, the nonce and the tag are filled per request.
    template: Vec<u8>,
}

/// Offsets in an NTS request: the UID body starts 4 octets after the header.
const NTS_UID_AT: usize = 52;
const NTS_UID_LEN: usize = 32;
const NTS_NONCE_LEN: usize = 16;

impl NtsClient {
    fn start(args: &crate::ntske::NtsArgs) -> anyhow::Result<Option<NtsClient>> {
        use hwntpd::nts::ntp::ef;
        let Some(session) = args.session()? else {
            return Ok(None);
        };
        let keys = session.keys;
        let cookie = session.cookies[0].clone();
        let mut t = Vec::new();
        let field = |t: &mut Vec<u8>, ty: u16, body_len: usize, body: &[u8]| {
            t.extend_from_slice(&ty.to_be_bytes());
            t.extend_from_slice(&((4 + body_len) as u16).to_be_bytes());
            t.extend_from_slice(body);
            t.resize(t.len() + body_len - body.len(), 0);
        };
        field(&mut t, ef::UNIQUE_IDENTIFIER, NTS_UID_LEN, &[]);
        field(&mut t, ef::COOKIE, cookie.len().div_ceil(4) * 4, &cookie);
        let auth_at = 48 + t.len();
        let mut head = Vec::new();
        head.extend_from_slice(&(NTS_NONCE_LEN as u16).to_be_bytes());
        head.extend_from_slice(&16u16.to_be_bytes());
        field(&mut t, ef::AUTHENTICATOR, 4 + NTS_NONCE_LEN + 16, &head);
        let len = 48 + t.len();
        if len > crate::sys::BUF_LEN {
            bail!(
                "NTS request of {len} octets does not fit a {}-octet buffer",
                crate::sys::BUF_LEN
            );
        }
        eprintln!(
            "NTS-KE: AEAD {} , {} cookies of {} octets; requests of {len} octets",
            keys.aead.id(),
            session.cookies.len(),
            cookie.len()
        );
        Ok(Some(NtsClient {
            keys,
            auth_at,
            len,
            template: t,
        }))
    }

    /// Fill the NTS part of request `b` (header already final) and seal it.
    fn seal(&self, b: &mut [u8], seq: u64) {
        b[48..self.len].copy_from_slice(&self.template);
        let id = seq.to_be_bytes();
        for (i, x) in b[NTS_UID_AT..NTS_UID_AT + NTS_UID_LEN]
            .iter_mut()
            .enumerate()
        {
            *x = id[i % 8] ^ (i as u8);
        }
        let nonce_at = self.auth_at + 8;
        b[nonce_at..nonce_at + 8].copy_from_slice(&id);
        b[nonce_at + 8..nonce_at + NTS_NONCE_LEN].copy_from_slice(&id);
        let (ad, rest) = b.split_at_mut(self.auth_at);
        let nonce = &rest[8..8 + NTS_NONCE_LEN];
        let tag = self
            .keys
            .aead
            .seal(self.keys.c2s(), nonce, ad, &mut [])
            .expect("key and nonce fit the AEAD");
        b[nonce_at + NTS_NONCE_LEN..nonce_at + NTS_NONCE_LEN + 16].copy_from_slice(&tag);
    }
}

/// Ring of send times indexed by sequence number (power of two).
const TABLE: usize = 1 << 21;
const MASK63: u64 = (1 << 63) - 1;
/// Odd multiplier of the key scramble.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Multiplicative inverse of an odd number modulo 2^64 (Newton's iteration).
const fn inverse(k: u64) -> u64 {
    let mut x = k; // correct to 3 bits for odd k
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(x)));
        i += 1;
    }
    x
}
const K_INV: u64 = inverse(K);

/// Scramble a sequence number into a 63-bit key.
pub fn mix(seq: u64, salt: u64) -> u64 {
    (seq.wrapping_mul(K) ^ salt) & MASK63
}

/// Recover the sequence number from a 63-bit key.
pub fn unmix(key: u64, salt: u64) -> u64 {
    ((key ^ salt) & MASK63).wrapping_mul(K_INV) & MASK63
}

/// Parse `START:STOP:STEP` into the list of rates (inclusive of STOP when hit).
pub fn parse_sweep(s: &str) -> anyhow::Result<Vec<f64>> {
    let parts: Vec<&str> = s.split(':').collect();
    let [a, b, c] = parts.as_slice() else {
        bail!("--sweep wants START:STOP:STEP, got {s:?}");
    };
    let num = |x: &str| -> anyhow::Result<f64> {
        let v: f64 = x
            .trim()
            .parse()
            .with_context(|| format!("bad number {x:?} in --sweep"))?;
        if !v.is_finite() || v <= 0.0 {
            bail!("--sweep values must be positive, got {x:?}");
        }
        Ok(v)
    };
    let (start, stop, step) = (num(a)?, num(b)?, num(c)?);
    if stop < start {
        bail!("--sweep STOP ({stop}) is below START ({start})");
    }
    let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
    if n > 10_000 {
        bail!("--sweep has {n} steps; at most 10000");
    }
    Ok((0..n).map(|i| start + step * i as f64).collect())
}

/// Sum of all samples of `metric` (any labels) in Prometheus text format;
/// `None` if the metric is absent. Adjust here if the server's format differs.
pub fn prom_sum(text: &str, metric: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        if &line[..name_end] != metric {
            continue;
        }
        let rest = &line[name_end..];
        let rest = match rest.strip_prefix('{') {
            Some(r) => match r.find('}') {
                Some(close) => &r[close + 1..],
                None => continue,
            },
            None => rest,
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// The buckets of a Prometheus histogram `metric` as (upper bound, cumulative
/// count), ascending, the `+Inf` bucket last; `None` if absent.
pub fn prom_histogram(text: &str, metric: &str) -> Option<Vec<(f64, f64)>> {
    let prefix = format!("{metric}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!buckets.is_empty()).then_some(buckets)
}

/// The `q` quantile of a histogram of (upper bound, cumulative count), by
/// linear interpolation inside the bucket (the way Prometheus does it); a
/// quantile in the `+Inf` bucket is reported as the last finite bound.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// Counters of one rate step.
#[derive(Default)]
struct Counters {
    sent: u64,
    valid: u64,
    kod: u64,
    bad_mode: u64,
    invalid: u64,
    dup: u64,
    late: u64,
    interleaved: u64,
    truncated: u64,
    refused: u64,
    turnaround_negative: u64,
    shortfall: f64,
}

/// Send times by sequence number.
struct Matcher {
    /// send time in ns since `t0`, plus one; 0 = nothing outstanding.
    table: Box<[u64]>,
    next_seq: u64,
    step_first: u64,
    salt: u64,
}

/// One step's results.
pub struct StepResult {
    /// Offered rate (requests/s).
    pub rate: f64,
    /// Seconds of sending.
    pub seconds: f64,
    counters: Counters,
    rtt: [Option<f64>; 4],
    turnaround: [Option<f64>; 2],
    turnaround_samples: u64,
    cpu_us_per_reply: Option<f64>,
    server_cpu_util: Option<f64>,
    generator_cpu_util: f64,
    syscalls_per_reply: Option<f64>,
    /// |exact transmit time - the estimate a basic reply carries| over the
    /// step: p50 and p99 in microseconds, and how many replies it covers.
    tx_estimate_error: Option<([f64; 2], f64)>,
}

impl StepResult {
    /// Fraction of sent requests that got a valid reply.
    pub fn answered(&self) -> f64 {
        self.counters.valid as f64 / self.counters.sent.max(1) as f64
    }

    /// Whether the generator failed to offer the rate (sent < 99% of it).
    pub fn generator_limited(&self) -> bool {
        (self.counters.sent as f64) < 0.99 * self.rate * self.seconds
    }

    fn lost(&self) -> u64 {
        let c = &self.counters;
        c.sent.saturating_sub(c.valid + c.kod + c.bad_mode)
    }

    fn human(&self) -> String {
        let c = &self.counters;
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut s = format!(
            "rate {:>8.0}/s: sent {} ({:.0}/s{}) valid {} ({:.3}%) kod {} bad {} invalid {} dup {} late {} lost {}",
            self.rate,
            c.sent,
            c.sent as f64 / self.seconds,
            if self.generator_limited() { ", GENERATOR-LIMITED" } else { "" },
            c.valid,
            100.0 * self.answered(),
            c.kod,
            c.bad_mode,
            c.invalid,
            c.dup,
            c.late,
            self.lost(),
        );
        if c.interleaved > 0 {
            s += &format!(" interleaved {}", c.interleaved);
        }
        s += &format!(
            " | rtt us p50 {} p90 {} p99 {} p99.9 {} | turnaround us p50 {} p99 {}",
            f(self.rtt[0]),
            f(self.rtt[1]),
            f(self.rtt[2]),
            f(self.rtt[3]),
            f(self.turnaround[0]),
            f(self.turnaround[1]),
        );
        if let Some(v) = self.cpu_us_per_reply {
            s += &format!(
                " | server {v:.2} us CPU/reply ({:.0}% of a core)",
                100.0 * self.server_cpu_util.unwrap_or(0.0)
            );
        }
        if let Some(v) = self.syscalls_per_reply {
            s += &format!(" {v:.3} syscalls/reply");
        }
        if let Some(([p50, p99], n)) = self.tx_estimate_error {
            s += &format!(" | transmit estimate error us p50 {p50:.1} p99 {p99:.1} (of {n:.0})");
        }
        s += &format!(" | generator {:.0}% CPU", 100.0 * self.generator_cpu_util);
        s
    }

    fn json(&self) -> String {
        let c = &self.counters;
        let est = self.tx_estimate_error;
        serde_json::json!({
            "type": "step",
            "rate": self.rate,
            "seconds": self.seconds,
            "sent": c.sent,
            "send_rate": c.sent as f64 / self.seconds,
            "valid": c.valid,
            "answered": self.answered(),
            "kod": c.kod,
            "bad_mode": c.bad_mode,
            "invalid": c.invalid,
            "dup": c.dup,
            "late": c.late,
            "lost": self.lost(),
            "interleaved": c.interleaved,
            "truncated": c.truncated,
            "refused": c.refused,
            "rtt_us": {
                "p50": self.rtt[0],
                "p90": self.rtt[1],
                "p99": self.rtt[2],
                "p999": self.rtt[3],
            },
            "turnaround_us": { "p50": self.turnaround[0], "p99": self.turnaround[1] },
            "turnaround_samples": self.turnaround_samples,
            "turnaround_negative": c.turnaround_negative,
            "cpu_us_per_reply": self.cpu_us_per_reply,
            "server_cpu_util": self.server_cpu_util,
            "syscalls_per_reply": self.syscalls_per_reply,
            "tx_estimate_error_us": {
                "p50": est.map(|e| e.0[0]),
                "p99": est.map(|e| e.0[1]),
            },
            "tx_estimate_samples": est.map(|e| e.1),
            "generator_cpu_util": self.generator_cpu_util,
            "generator_limited": self.generator_limited(),
        })
        .to_string()
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// The generator's state: sockets, batches, the send-time ring, histograms.
struct Generator<'a> {
    args: &'a LoadArgs,
    socks: Vec<UdpSocket>,
    fds: Vec<RawFd>,
    epoll: Epoll,
    ready: Vec<u64>,
    tx: Batch,
    rx: Batch,
    m: Matcher,
    last_rx: Vec<u64>,
    rr: usize,
    t0: Instant,
    c: Counters,
    rtt: Histogram,
    turnaround: Histogram,
    nts: Option<NtsClient>,
}

impl<'a> Generator<'a> {
    fn new(args: &'a LoadArgs) -> anyhow::Result<Self> {
        if args.clients == 0 || args.clients > 4096 {
            bail!("--clients must be 1..=4096");
        }
        if !(args.duration > 0.0 && args.duration.is_finite()) {
            bail!("--duration must be positive");
        }
        let bind_ip = args.bind.unwrap_or(match args.server {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let epoll = Epoll::new(args.clients).context("epoll_create1")?;
        let mut socks = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let bind_ip = match bind_ip {
                IpAddr::V4(a) if args.sources > 1 => IpAddr::V4(Ipv4Addr::from(
                    u32::from(a).wrapping_add(i as u32 % args.sources),
                )),
                other => other,
            };
            let s = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
                .with_context(|| format!("binding client socket {i} to {bind_ip}"))?;
            s.connect(args.server)
                .with_context(|| format!("connecting to {}", args.server))?;
            s.set_nonblocking(true)?;
            if let Err(e) = sys::set_buffers(&s, args.sockbuf) {
                tracing::warn!("socket buffers: {e}");
            }
            epoll.add_readable(s.as_raw_fd(), i as u64)?;
            socks.push(s);
        }
        let nts = NtsClient::start(&args.nts)?;
        let batch = args.batch.clamp(1, 1024);
        let mut tx = Batch::new(batch, false);
        for i in 0..batch {
            let b = tx.buf_mut(i);
            b.fill(0);
            b[0] = 0x23; // LI 0, version 4, mode 3
            b[2] = 6; // poll 2^6 s
            b[3] = (-20i8) as u8;
            tx.set_len(i, nts.as_ref().map_or(48, |n| n.len));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let salt = (now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)).wrapping_mul(K)
            & MASK63;
        Ok(Generator {
            args,
            fds: socks.iter().map(|s| s.as_raw_fd()).collect(),
            socks,
            epoll,
            ready: Vec::with_capacity(args.clients),
            tx,
            rx: Batch::new(batch, false),
            m: Matcher {
                table: vec![0u64; TABLE].into_boxed_slice(),
                next_seq: 1,
                step_first: 1,
                salt,
            },
            last_rx: vec![0; args.clients],
            rr: 0,
            t0: Instant::now(),
            c: Counters::default(),
            rtt: Histogram::new(),
            turnaround: Histogram::new(),
            nts,
        })
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Send up to `tokens` requests, one batch per socket in turn. Returns the
    /// tokens left (at least 1 only when every socket would block).
    fn send_some(&mut self, mut tokens: f64) -> io::Result<f64> {
        let n_socks = self.fds.len();
        let mut blocked = 0usize;
        while tokens >= 1.0 && blocked < n_socks && self.m.next_seq <= self.args.max_requests {
            let left = self.args.max_requests + 1 - self.m.next_seq;
            let n = (tokens as u64).min(self.tx.capacity() as u64).min(left) as usize;
            let s = self.rr;
            self.rr = (s + 1) % n_socks;
            let origin = if self.args.interleaved {
                self.last_rx[s]
            } else {
                0
            };
            for i in 0..n {
                let key = mix(self.m.next_seq + i as u64, self.m.salt) << 1;
                let recv_field = if origin != 0 { key | 1 } else { 0 };
                let b = self.tx.buf_mut(i);
                b[24..32].copy_from_slice(&origin.to_be_bytes());
                b[32..40].copy_from_slice(&recv_field.to_be_bytes());
                b[40..48].copy_from_slice(&key.to_be_bytes());
                if let Some(nts) = &self.nts {
                    nts.seal(b, self.m.next_seq + i as u64);
                }
            }
            let stamp = self.now_ns() + 1;
            match self.tx.send(self.fds[s], 0, n, 0) {
                Ok(k) => {
                    for i in 0..k as u64 {
                        self.m.table[((self.m.next_seq + i) as usize) & (TABLE - 1)] = stamp;
                    }
                    self.m.next_seq += k as u64;
                    self.c.sent += k as u64;
                    tokens -= k as f64;
                    if k < n {
                        blocked += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked += 1,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    self.c.refused += 1;
                    blocked += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(tokens)
    }

    /// Read everything queued on socket `idx`.
    fn drain_socket(&mut self, idx: usize) -> io::Result<()> {
        let fd = self.fds[idx];
        for _ in 0..1024 {
            let n = match self.rx.recv(fd, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    self.c.refused += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = self.now_ns();
            for i in 0..n {
                let (pkt, truncated) = self.rx.packet(i);
                if truncated {
                    self.c.truncated += 1;
                }
                if self.nts.is_some() && pkt.len() <= 48 && pkt.get(1) != Some(&0) {
                    // A plain reply to an NTS request: not NTS-served.
                    self.c.invalid += 1;
                    continue;
                }
                classify(
                    pkt,
                    now,
                    &mut self.m,
                    &mut self.c,
                    &mut self.rtt,
                    &mut self.turnaround,
                    &mut self.last_rx[idx],
                );
            }
            if n < self.rx.capacity() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Wait up to `timeout` for replies and read them.
    fn poll(&mut self, timeout: Duration) -> io::Result<()> {
        self.ready.clear();
        let ready = self.epoll.wait(timeout)?;
        self.ready.extend(ready);
        for k in 0..self.ready.len() {
            let idx = self.ready[k] as usize;
            self.drain_socket(idx)?;
        }
        Ok(())
    }

    fn server_counters(&self) -> ServerCounters {
        let cpu_ns = self
            .args
            .server_pid
            .and_then(|pid| sys::process_cpu_ns(pid).ok());
        let text = self
            .args
            .server_stats
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let metric = |name: &str| text.as_deref().and_then(|t| prom_sum(t, name));
        ServerCounters {
            cpu_ns,
            syscalls: metric(&self.args.syscall_metric),
            replies: metric(&self.args.reply_metric),
            estimate_error: text
                .as_deref()
                .and_then(|t| prom_histogram(t, &self.args.estimate_histogram)),
        }
    }

    fn run_step(&mut self, rate: f64, stop: &AtomicBool) -> io::Result<StepResult> {
        self.c = Counters::default();
        self.rtt.clear();
        self.turnaround.clear();
        self.m.step_first = self.m.next_seq;
        let batch = self.tx.capacity() as f64;
        let burst = (rate * 0.005).max(batch);
        let target = (rate * self.args.pace_us as f64 * 1e-6).clamp(1.0, batch);
        let before = self.server_counters();
        let gen0 = sys::process_cpu_ns(std::process::id()).unwrap_or(0);
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(self.args.duration);
        let (mut tokens, mut last) = (0.0f64, start);
        loop {
            let now = Instant::now();
            if now >= end || stop.load(Ordering::Relaxed) {
                break;
            }
            if self.m.next_seq > self.args.max_requests {
                break;
            }
            tokens += (now - last).as_secs_f64() * rate;
            last = now;
            if tokens > burst {
                self.c.shortfall += tokens - burst;
                tokens = burst;
            }
            tokens = self.send_some(tokens)?;
            let wait = if tokens >= 1.0 {
                Duration::from_micros(50)
            } else {
                Duration::from_secs_f64((target - tokens) / rate)
            };
            self.poll(wait.min(end.saturating_duration_since(now)))?;
        }
        let seconds = start.elapsed().as_secs_f64();
        let drain_end = Instant::now() + Duration::from_millis(self.args.drain_ms);
        loop {
            let now = Instant::now();
            if now >= drain_end {
                break;
            }
            self.poll(drain_end - now)?;
        }
        let wall = start.elapsed().as_secs_f64();
        let after = self.server_counters();
        let gen1 = sys::process_cpu_ns(std::process::id()).unwrap_or(0);
        let valid = self.c.valid;
        let q = |h: &Histogram, p: f64| h.quantile(p).map(|v| v as f64 / 1000.0);
        let (cpu_us_per_reply, server_cpu_util) = match (before.cpu_ns, after.cpu_ns) {
            (Some(a), Some(b)) if valid > 0 => (
                Some(b.saturating_sub(a) as f64 / 1000.0 / valid as f64),
                Some(b.saturating_sub(a) as f64 / 1e9 / wall),
            ),
            _ => (None, None),
        };
        let delta = |f: fn(&ServerCounters) -> Option<f64>| Some(f(&after)? - f(&before)?);
        let syscalls_per_reply = match (delta(|c| c.syscalls), delta(|c| c.replies)) {
            (Some(s), Some(r)) if r > 0.0 => Some(s / r),
            _ => None,
        };
        let tx_estimate_error = match (&before.estimate_error, &after.estimate_error) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                let d: Vec<(f64, f64)> = a.iter().zip(b).map(|(x, y)| (x.0, y.1 - x.1)).collect();
                let n = d.last().map_or(0.0, |b| b.1);
                match (histogram_quantile(&d, 0.5), histogram_quantile(&d, 0.99)) {
                    (Some(p50), Some(p99)) if n > 0.0 => Some(([p50 * 1e6, p99 * 1e6], n)),
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(StepResult {
            rate,
            seconds,
            rtt: [
                q(&self.rtt, 0.5),
                q(&self.rtt, 0.9),
                q(&self.rtt, 0.99),
                q(&self.rtt, 0.999),
            ],
            turnaround: [q(&self.turnaround, 0.5), q(&self.turnaround, 0.99)],
            turnaround_samples: self.turnaround.count(),
            counters: std::mem::take(&mut self.c),
            cpu_us_per_reply,
            server_cpu_util,
            generator_cpu_util: gen1.saturating_sub(gen0) as f64 / 1e9 / wall,
            syscalls_per_reply,
            tx_estimate_error,
        })
    }
}

/// The server's counters read at one end of a step (each `None` when unknown).
struct ServerCounters {
    cpu_ns: Option<u64>,
    syscalls: Option<f64>,
    replies: Option<f64>,
    estimate_error: Option<Vec<(f64, f64)>>,
}

/// Match one reply against the outstanding requests and count it.
fn classify(
    pkt: &[u8],
    now_ns: u64,
    m: &mut Matcher,
    c: &mut Counters,
    rtt: &mut Histogram,
    turnaround: &mut Histogram,
    last_rx: &mut u64,
) {
    if pkt.len() < 48 {
        c.invalid += 1;
        return;
    }
    let origin = be64(pkt, 24);
    let interleaved = origin & 1 == 1;
    let seq = unmix(origin >> 1, m.salt);
    if seq >= m.next_seq || m.next_seq - seq > TABLE as u64 || seq == 0 {
        c.invalid += 1; // not an origin we sent (or too old to tell)
        return;
    }
    let slot = &mut m.table[(seq as usize) & (TABLE - 1)];
    if *slot == 0 {
        c.dup += 1;
        return;
    }
    let sent = *slot - 1;
    *slot = 0;
    if seq < m.step_first {
        c.late += 1;
        return;
    }
    if pkt[0] & 7 != 4 {
        c.bad_mode += 1;
        return;
    }
    if pkt[1] == 0 {
        c.kod += 1;
        return;
    }
    c.valid += 1;
    rtt.record(now_ns.saturating_sub(sent));
    let (rx, tx) = (NtpTimestamp(be64(pkt, 32)), NtpTimestamp(be64(pkt, 40)));
    if !rx.is_zero() {
        *last_rx = rx.0;
    }
    if interleaved {
        c.interleaved += 1; // its transmit is the previous reply's: no turnaround
    } else {
        let d = tx.diff_nanos(rx);
        if d < 0 {
            c.turnaround_negative += 1;
        } else {
            turnaround.record(d as u64);
        }
    }
}

/// Run the `load` subcommand.
pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let rates = match (&args.sweep, args.rate) {
        (Some(s), _) => parse_sweep(s)?,
        (None, Some(r)) if r > 0.0 && r.is_finite() => vec![r],
        _ => bail!("--rate must be positive"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let mut gen = Generator::new(args)?;
    println!(
        "load: {} clients -> {}, batch {}, {} s per step, {} step(s){}",
        gen.socks.len(),
        args.server,
        gen.tx.capacity(),
        args.duration,
        rates.len(),
        if args.interleaved {
            ", interleaved"
        } else {
            ""
        }
    );
    let mut best: Option<f64> = None;
    let (mut fails, mut steps, mut total) = (0u32, 0usize, 0u64);
    for &rate in &rates {
        let r = gen.run_step(rate, &stop).context("load step")?;
        steps += 1;
        total += r.counters.sent;
        println!("{}", r.human());
        if args.json {
            println!("{}", r.json());
        }
        if r.answered() >= args.threshold && !r.generator_limited() {
            best = Some(best.map_or(rate, |b: f64| b.max(rate)));
            fails = 0;
        } else {
            fails += 1;
            if args.stop_after_fail > 0 && fails >= args.stop_after_fail {
                break;
            }
        }
        if stop.load(Ordering::Relaxed) || gen.m.next_seq > args.max_requests {
            break;
        }
    }
    println!(
        "summary: highest rate with >= {:.1}% answered: {} req/s ({steps} steps, {total} requests)",
        100.0 * args.threshold,
        best.map_or("none".to_string(), |b| format!("{b:.0}"))
    );
    if args.json {
        let summary = serde_json::json!({
            "type": "summary",
            "max_rate_ok": best,
            "threshold": args.threshold,
            "steps": steps,
            "total_sent": total,
        });
        println!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_scramble_round_trips() {
        assert_eq!(K.wrapping_mul(K_INV), 1);
        for salt in [0u64, 12345, MASK63] {
            for seq in [1u64, 2, 3, 1000, 1 << 40, MASK63] {
                let key = mix(seq, salt);
                assert!(key <= MASK63);
                assert_eq!(unmix(key, salt), seq);
            }
        }
        assert_ne!(mix(1, 7), mix(2, 7));
    }

    #[test]
    fn histogram_parsing_and_quantiles() {
        // What hwntpd writes: parse it back, then take quantiles.
        let stats = hwntpd::server::stats::WorkerStats::default();
        for e in [500, 1_500, 1_600, 1_700, -4_000, 3_000_000] {
            stats.record_estimate_error(e);
        }
        let text = stats.snapshot().to_prometheus();
        let h = prom_histogram(&text, "hwntpd_transmit_estimate_error_seconds").unwrap();
        assert_eq!(h.len(), 11);
        assert_eq!(h[0], (1e-6, 1.0));
        assert_eq!(h[1], (2e-6, 4.0));
        assert_eq!(h.last().unwrap(), &(f64::INFINITY, 6.0));
        // Rank 3 of 6 is the second of the three in (1, 2] us.
        let p50 = histogram_quantile(&h, 0.5).unwrap();
        assert!((p50 - 1.666_666e-6).abs() < 1e-9, "{p50}");
        assert_eq!(histogram_quantile(&h, 0.99), Some(1e-3), "+Inf: last bound");
        assert_eq!(
            histogram_quantile(&[(1e-6, 0.0), (f64::INFINITY, 0.0)], 0.5),
            None
        );
        assert!(prom_histogram(&text, "no_such_metric").is_none());
    }

    #[test]
    fn sweep_parsing() {
        assert_eq!(parse_sweep("10:30:10").unwrap(), vec![10.0, 20.0, 30.0]);
        assert_eq!(parse_sweep("10:35:10").unwrap(), vec![10.0, 20.0, 30.0]);
        assert_eq!(parse_sweep("5:5:1").unwrap(), vec![5.0]);
        for bad in ["", "1:2", "a:2:1", "3:1:1", "1:2:0", "1:2:-1", "1:1e9:1"] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prometheus_fixture() {
        let t = "# HELP hwntpd_syscalls_total x\n# TYPE hwntpd_syscalls_total counter\n\
                 hwntpd_syscalls_total{worker=\"0\"} 10\nhwntpd_syscalls_total{worker=\"1\"} 5 1700000000\n\
                 hwntpd_syscalls_total_other 99\nhwntpd_replies_total 1.5e3\n";
        assert_eq!(prom_sum(t, "hwntpd_syscalls_total"), Some(15.0));
        assert_eq!(prom_sum(t, "hwntpd_replies_total"), Some(1500.0));
        assert_eq!(prom_sum(t, "missing"), None);
        assert_eq!(prom_sum("x{a=\"1\" 3\n", "x"), None);
    }

    fn reply(origin: u64, mode: u8, stratum: u8, rx: u64, tx: u64) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = 0x20 | mode;
        b[1] = stratum;
        b[24..32].copy_from_slice(&origin.to_be_bytes());
        b[32..40].copy_from_slice(&rx.to_be_bytes());
        b[40..48].copy_from_slice(&tx.to_be_bytes());
        b
    }

    #[test]
    fn classification() {
        let salt = 99;
        let mut m = Matcher {
            table: vec![0u64; TABLE].into_boxed_slice(),
            next_seq: 10,
            step_first: 5,
            salt,
        };
        for seq in 1..10 {
            m.table[seq] = 1000 + 1;
        }
        let mut c = Counters::default();
        let (mut rtt, mut ta) = (Histogram::new(), Histogram::new());
        let mut last = 0u64;
        let key = |seq: u64| mix(seq, salt) << 1;
        let half_ms = 1u64 << 21; // ~0.488 ms in NTP fraction units
        let mut go =
            |p: &[u8], c: &mut Counters| classify(p, 6000, &mut m, c, &mut rtt, &mut ta, &mut last);
        go(
            &reply(key(6), 4, 1, 100 << 32, (100 << 32) + half_ms),
            &mut c,
        );
        assert_eq!(c.valid, 1);
        go(&reply(key(6), 4, 1, 0, 0), &mut c); // same origin again
        assert_eq!(c.dup, 1);
        go(&reply(key(7), 4, 0, 0, 0), &mut c); // KoD
        assert_eq!(c.kod, 1);
        go(&reply(key(8), 3, 1, 0, 0), &mut c);
        assert_eq!(c.bad_mode, 1);
        go(&reply(key(2), 4, 1, 0, 0), &mut c); // previous step
        assert_eq!(c.late, 1);
        go(&reply(key(11), 4, 1, 0, 0), &mut c); // never sent
        go(&reply(0x1234_5678, 4, 1, 0, 0), &mut c);
        go(&[0u8; 20], &mut c);
        assert_eq!(c.invalid, 3);
        go(&reply(key(9) | 1, 4, 2, 200 << 32, 0), &mut c); // interleaved
        assert_eq!((c.valid, c.interleaved), (2, 1));
        assert_eq!(last, 200 << 32);
        assert_eq!(rtt.count(), 2);
        assert_eq!(rtt.quantile(0.5), Some(5000));
        assert_eq!(ta.count(), 1);
        let t = ta.quantile(0.5).unwrap();
        assert!((470_000..500_000).contains(&t), "{t}");
    }
}
