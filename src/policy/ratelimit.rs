//! Per-client rate limiting with chrony's semantics, in a fixed-size table
//! shared by all workers without locks.
//!
//! ## The limit (as chrony's `ratelimit interval burst leak`)
//!
//! Every client (an address aggregated to a prefix) has a token bucket. Tokens
//! are time: the bucket gains one per tick ([`TICKS_PER_SEC`] per second) since
//! the client's previous request, up to `burst` times the cost of a reply,
//! which is `2^interval` seconds' worth. A request the bucket can pay for is
//! answered ([`Verdict::Within`]). Otherwise it is over the limit: one in
//! `2^leak` of those is answered anyway (chosen at random, so a source an
//! attacker spoofs is never locked out; the bucket is then emptied, as chrony
//! does); of the rest, one gets a RATE KoD if none was sent to that client in
//! the last `kod_gap_ticks`, and the others get silence.
//!
//! ## The table
//!
//! A power-of-two number of records in buckets of [`WAYS`], each record three
//! atomics: a 64-bit tag (a keyed hash of the client's prefix, never 0), the
//! bucket state (time of the last request and tokens, packed in one word and
//! changed by compare-and-swap), and the time of the last RATE KoD (claimed by
//! compare-and-swap, so two workers never both send one). A client not in its
//! bucket takes an empty record, else replaces the one idle longest (counted).
//! The hash key is random per process, so an attacker cannot aim addresses at
//! one bucket.
//!
//! Races between workers, all harmless and without undefined behaviour: a
//! state update retries its compare-and-swap a few times and, if it keeps
//! losing (the client is being served by several workers at once, i.e. a
//! flood), counts the request as over the limit; a record being replaced
//! may for a moment pair the new tag with the old client's state, which only
//! gives the new client the old one's tokens once. Tags are 64-bit: two
//! clients share a record only on a hash collision (probability ~2^-61 per
//! pair and bucket).
#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::acl::{canonical, Canonical};

/// Time unit of the limiter: 1/1024 s (a `u32` of them wraps every 48 days;
/// all comparisons are wrapping).
pub const TICKS_PER_SEC: u32 = 1024;
const TICK_BITS: u32 = 10;

/// Ticks from an NTP timestamp (32.32 fixed point seconds).
#[inline]
pub fn ticks_from_ntp(bits: u64) -> u32 {
    (bits >> (32 - TICK_BITS)) as u32
}

/// Smallest interval the command line accepts: 1024 replies/s (chrony goes
/// to -19 with coarse steps; -4 is the smallest a real client needs).
pub const MIN_INTERVAL_ARG: i8 = -10;
/// Smallest interval the table supports (one tick per reply).
pub const MIN_INTERVAL: i8 = -(TICK_BITS as i8);
/// Largest interval (log2 seconds).
pub const MAX_INTERVAL: i8 = 12;
/// Leak range (log2), as chrony's.
pub const MIN_LEAK: u8 = 1;
/// Largest leak (log2).
pub const MAX_LEAK: u8 = 4;
/// Records per bucket.
pub const WAYS: usize = 8;
/// Smallest gap between two RATE KoDs to one client, whatever the interval.
pub const MIN_KOD_GAP_SECS: u32 = 4;

/// Rate-limit settings (live-changeable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// log2 of the average spacing allowed between replies, in seconds.
    pub interval: i8,
    /// Replies a client may get in a burst (bucket depth), 1..=255.
    pub burst: u8,
    /// Answer one in 2^leak over-limit requests anyway (1..=4).
    pub leak: u8,
    /// Send a RATE KoD (at most one per interval, and per [`MIN_KOD_GAP_SECS`]).
    pub kod: bool,
}

impl Default for RateLimit {
    /// chrony's defaults: interval 3 (one reply per 8 s on average), burst 8, leak 2.
    fn default() -> Self {
        RateLimit {
            interval: 3,
            burst: 8,
            leak: 2,
            kod: true,
        }
    }
}

impl RateLimit {
    /// Check the ranges (interval [`MIN_INTERVAL`]..=[`MAX_INTERVAL`], burst >= 1,
    /// leak [`MIN_LEAK`]..=[`MAX_LEAK`]).
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(format!(
                "rate-limit interval {} is outside {MIN_INTERVAL}..={MAX_INTERVAL}",
                self.interval
            ));
        }
        if self.burst == 0 {
            return Err("rate-limit burst must be at least 1".into());
        }
        if !(MIN_LEAK..=MAX_LEAK).contains(&self.leak) {
            return Err(format!(
                "rate-limit leak {} is outside {MIN_LEAK}..={MAX_LEAK}",
                self.leak
            ));
        }
        Ok(())
    }

    /// Ticks one reply costs.
    #[inline]
    pub fn cost(&self) -> u32 {
        1u32 << (i32::from(self.interval.clamp(MIN_INTERVAL, MAX_INTERVAL)) + TICK_BITS as i32)
    }

    /// Bucket depth in ticks.
    #[inline]
    pub fn depth(&self) -> u32 {
        self.cost() * u32::from(self.burst.max(1))
    }

    /// Smallest gap between two RATE KoDs to one client, in ticks.
    #[inline]
    pub fn kod_gap_ticks(&self) -> u32 {
        self.cost().max(MIN_KOD_GAP_SECS * TICKS_PER_SEC)
    }
}

/// Parse an interval value for the command line (-4..=12).
pub fn parse_interval(s: &str) -> Result<i8, String> {
    match s.trim().parse::<i8>() {
        Ok(n) if (MIN_INTERVAL_ARG..=MAX_INTERVAL).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not an interval (log2 seconds) from {MIN_INTERVAL_ARG} to {MAX_INTERVAL}"
        )),
    }
}

/// Parse a burst value (1..=255).
pub fn parse_burst(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a burst from 1 to 255")),
    }
}

/// Parse a leak value (1..=4).
pub fn parse_leak(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if (MIN_LEAK..=MAX_LEAK).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a leak (log2) from {MIN_LEAK} to {MAX_LEAK}"
        )),
    }
}

/// How clients are grouped: the prefix lengths their addresses are cut to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aggregation {
    /// IPv4 (and IPv4-mapped IPv6) prefix length, 0..=32.
    pub v4: u8,
    /// IPv6 prefix length, 0..=128.
    pub v6: u8,
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation { v4: 32, v6: 64 }
    }
}

/// The key of a client: its family and address cut to the aggregation prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    v6: bool,
    prefix: u128,
}

impl ClientKey {
    /// The key of `ip` (IPv4-mapped IPv6 counts as IPv4).
    #[inline]
    pub fn new(ip: IpAddr, agg: Aggregation) -> ClientKey {
        match canonical(ip) {
            Canonical::V4(a) => {
                let l = u32::from(agg.v4.min(32));
                let m = if l == 0 { 0 } else { u32::MAX << (32 - l) };
                ClientKey {
                    v6: false,
                    prefix: u128::from(a & m),
                }
            }
            Canonical::V6(a) => {
                let l = u32::from(agg.v6.min(128));
                let m = if l == 0 { 0 } else { u128::MAX << (128 - l) };
                ClientKey {
                    v6: true,
                    prefix: a & m,
                }
            }
        }
    }
}

/// A keyed hash: two folded 64x64->128 multiplies with a secret key.
#[derive(Clone, Copy, Debug)]
pub struct KeyedHash([u64; 4]);

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

impl KeyedHash {
    /// A key from the standard library's per-process random seed.
    pub fn random() -> Self {
        let s = std::collections::hash_map::RandomState::new();
        KeyedHash(std::array::from_fn(|i| s.hash_one(i as u64 ^ 0x5eed)))
    }

    /// A fixed key (tests).
    pub fn fixed(key: [u64; 4]) -> Self {
        KeyedHash(key)
    }

    /// Hash 128 bits and a family bit to 64.
    #[inline]
    pub fn hash(&self, v6: bool, x: u128) -> u64 {
        let k = self.0;
        let h = fold((x as u64) ^ k[0], ((x >> 64) as u64) ^ k[1] ^ u64::from(v6));
        fold(h ^ k[2], k[3] | 1)
    }
}

/// The limiter's answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: answer (interleaved-mode entries allowed).
    Within,
    /// Over the limit but leaked: answer (no interleaved-mode entry).
    Leak,
    /// Over the limit: send a RATE KoD.
    Kod,
    /// Over the limit: silence.
    Drop,
}

/// What happened to the table while deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Outcome {
    /// A new record was made in an empty slot.
    pub inserted: bool,
    /// A new record replaced another client's.
    pub replaced: bool,
}

struct Record {
    tag: AtomicU64,
    /// `last tick (low 32) | tokens (high 32)`.
    state: AtomicU64,
    /// Tick of the last RATE KoD.
    kod: AtomicU32,
}

/// Compare-and-swap attempts on one record before giving up (counted as over).
const CAS_TRIES: usize = 4;

/// The shared client table.
pub struct ClientTable {
    records: Box<[Record]>,
    /// Records in use. A record is never freed (a full bucket's idlest is
    /// replaced in place), so this is the count of inserts into empty
    /// records: one atomic add per new client until the table is full.
    used: AtomicUsize,
    bucket_mask: usize,
    hash: KeyedHash,
}

/// Octets per record.
pub const BYTES_PER_RECORD: usize = std::mem::size_of::<Record>();

#[inline]
fn pack(last: u32, tokens: u32) -> u64 {
    u64::from(last) | (u64::from(tokens) << 32)
}

#[inline]
fn unpack(s: u64) -> (u32, u32) {
    (s as u32, (s >> 32) as u32)
}

impl ClientTable {
    /// A table of at least `entries` records (rounded up to a power of two, at
    /// least [`WAYS`]), hashed with `hash`.
    pub fn new(entries: usize, hash: KeyedHash) -> Self {
        let n = entries.max(WAYS).next_power_of_two();
        let records = (0..n)
            .map(|_| Record {
                tag: AtomicU64::new(0),
                state: AtomicU64::new(0),
                kod: AtomicU32::new(0),
            })
            .collect();
        ClientTable {
            records,
            used: AtomicUsize::new(0),
            bucket_mask: n / WAYS - 1,
            hash,
        }
    }

    /// Number of records.
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    /// Memory of the records, in octets.
    pub fn memory_bytes(&self) -> usize {
        self.records.len() * BYTES_PER_RECORD
    }

    /// Records in use (exact, without reading the table: a scan of a large
    /// table on every statistics write stalled the workers sharing its core,
    /// and a sample misses the few records of a quiet server).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Find `key`'s record, making one (in an empty record, else in place of
    /// the one idle longest) if absent. Returns the record and whether it is new.
    #[inline]
    fn record(&self, key: ClientKey, now: u32, out: &mut Outcome) -> Option<(&Record, bool)> {
        let h = self.hash.hash(key.v6, key.prefix);
        let tag = h | 1;
        let first = ((h >> 40) as usize & self.bucket_mask) * WAYS;
        let bucket = &self.records[first..first + WAYS];
        let mut victim = 0;
        let mut victim_age = 0u32;
        let mut victim_tag = 0u64;
        for (i, r) in bucket.iter().enumerate() {
            let t = r.tag.load(Ordering::Acquire);
            if t == tag {
                return Some((r, false));
            }
            let age = if t == 0 {
                u32::MAX
            } else {
                now.wrapping_sub(unpack(r.state.load(Ordering::Relaxed)).0)
            };
            if i == 0 || age > victim_age {
                victim = i;
                victim_age = age;
                victim_tag = t;
            }
            if t == 0 {
                break;
            }
        }
        let r = &bucket[victim];
        r.tag
            .compare_exchange(victim_tag, tag, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        if victim_tag == 0 {
            self.used.fetch_add(1, Ordering::Relaxed);
            out.inserted = true;
        } else {
            out.replaced = true;
        }
        Some((r, true))
    }

    /// Decide on one request from `key` at tick `now` under `limit`;
    /// `random` supplies the leak's randomness (any 32 random bits).
    #[inline]
    pub fn check(
        &self,
        key: ClientKey,
        now: u32,
        limit: &RateLimit,
        random: u32,
    ) -> (Verdict, Outcome) {
        let mut out = Outcome::default();
        let cost = limit.cost();
        let depth = limit.depth();
        let Some((r, fresh)) = self.record(key, now, &mut out) else {
            // Lost a race for the record: another worker is making it.
            return (Verdict::Drop, out);
        };
        if fresh {
            r.state.store(pack(now, depth - cost), Ordering::Relaxed);
            r.kod
                .store(now.wrapping_sub(limit.kod_gap_ticks()), Ordering::Relaxed);
            return (Verdict::Within, out);
        }
        let mut within = false;
        let mut done = false;
        for _ in 0..CAS_TRIES {
            let old = r.state.load(Ordering::Relaxed);
            let (last, tokens) = unpack(old);
            let elapsed = now.wrapping_sub(last);
            // A clock stepped back (or a tick-wrap): no tokens gained.
            let gained = if (elapsed as i32) < 0 { 0 } else { elapsed };
            let tokens = tokens.saturating_add(gained).min(depth);
            let last = if (elapsed as i32) < 0 { last } else { now };
            within = tokens >= cost;
            let new = if within {
                pack(last, tokens - cost)
            } else {
                pack(last, tokens)
            };
            if r.state
                .compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                done = true;
                break;
            }
        }
        if !done {
            return (Verdict::Drop, out);
        }
        if within {
            return (Verdict::Within, out);
        }
        // Over the limit. Leak one in 2^leak.
        let leak = u32::from(limit.leak.clamp(MIN_LEAK, MAX_LEAK));
        if random & ((1 << leak) - 1) == 0 {
            // As chrony: the leaked reply empties the bucket.
            let s = r.state.load(Ordering::Relaxed);
            let _ = r.state.compare_exchange(
                s,
                pack(unpack(s).0, 0),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return (Verdict::Leak, out);
        }
        if limit.kod {
            let last_kod = r.kod.load(Ordering::Relaxed);
            let since = now.wrapping_sub(last_kod);
            if since as i32 >= 0
                && since >= limit.kod_gap_ticks()
                && r.kod
                    .compare_exchange(last_kod, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return (Verdict::Kod, out);
            }
        }
        (Verdict::Drop, out)
    }
}

/// Slots of the DENY KoD limiter.
pub const DENY_SLOTS: usize = 4096;
/// Smallest gap between two DENY KoDs to one slot (source hash), in seconds.
pub const DENY_KOD_GAP_SECS: u32 = 4;

/// Limits DENY KoDs to one per source per [`DENY_KOD_GAP_SECS`]: a fixed
/// array of last-KoD ticks indexed by a keyed hash of the full source address
/// (no per-client records: refused clients make no state). Sources sharing a
/// slot share the allowance, which only makes it stricter.
pub struct DenyKodLimiter {
    slots: Box<[AtomicU32]>,
    hash: KeyedHash,
}

impl DenyKodLimiter {
    /// A limiter keyed with `hash`.
    pub fn new(hash: KeyedHash) -> Self {
        DenyKodLimiter {
            slots: (0..DENY_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hash,
        }
    }

    /// Whether a DENY KoD may go to `ip` now (and if so, the allowance is used).
    #[inline]
    pub fn allow(&self, ip: IpAddr, now: u32) -> bool {
        let (v6, x) = match canonical(ip) {
            Canonical::V4(a) => (false, u128::from(a)),
            Canonical::V6(a) => (true, a),
        };
        let slot = &self.slots[(self.hash.hash(v6, x) >> 40) as usize % DENY_SLOTS];
        let last = slot.load(Ordering::Relaxed);
        // 0 marks a never-used slot (a real tick of 0 only delays one KoD).
        let since = now.wrapping_sub(last);
        (last == 0 || (since as i32 >= 0 && since >= DENY_KOD_GAP_SECS * TICKS_PER_SEC))
            && slot
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const S: u32 = TICKS_PER_SEC;

    fn table(n: usize) -> ClientTable {
        ClientTable::new(n, KeyedHash::fixed([1, 2, 3, 4]))
    }

    fn key(s: &str) -> ClientKey {
        ClientKey::new(s.parse().unwrap(), Aggregation::default())
    }

    /// Over-limit randomness that never leaks (the leak bits are never all 0).
    const NO_LEAK: u32 = 0xffff_ffff;

    #[test]
    fn burst_then_one_per_interval() {
        let t = table(64);
        let lim = RateLimit {
            kod: false,
            ..RateLimit::default()
        };
        let k = key("192.0.2.1");
        let t0 = 1_000_000u32;
        for i in 0..8 {
            assert_eq!(
                t.check(k, t0, &lim, NO_LEAK).0,
                Verdict::Within,
                "burst {i}"
            );
        }
        assert_eq!(t.check(k, t0, &lim, NO_LEAK).0, Verdict::Drop);
        // 8 s later: exactly one more
        assert_eq!(t.check(k, t0 + 8 * S - 1, &lim, NO_LEAK).0, Verdict::Drop);
        assert_eq!(t.check(k, t0 + 8 * S, &lim, NO_LEAK).0, Verdict::Within);
        assert_eq!(t.check(k, t0 + 8 * S, &lim, NO_LEAK).0, Verdict::Drop);
        // A client polling every 8 s is never limited; one every 4 s is, after its burst.
        let k2 = key("192.0.2.2");
        for i in 0..100 {
            assert_eq!(
                t.check(k2, t0 + i * 8 * S, &lim, NO_LEAK).0,
                Verdict::Within
            );
        }
        let k3 = key("192.0.2.3");
        let answered = (0..100)
            .filter(|i| t.check(k3, t0 + i * 4 * S, &lim, NO_LEAK).0 == Verdict::Within)
            .count();
        assert_eq!(answered, 8 + 50 - 1, "burst + one per 8 s");
    }

    #[test]
    fn kod_once_per_gap_and_leak() {
        let t = table(64);
        let lim = RateLimit::default(); // interval 3: KoD gap 8 s
        let k = key("2001:db8::1");
        let t0 = 5 * S;
        for _ in 0..8 {
            t.check(k, t0, &lim, NO_LEAK);
        }
        // A flood of 1000/s for 20 s: KoDs at most every 8 s (3 of them).
        let mut kods = 0;
        let mut leaks = 0;
        let mut rng = 0x1234_5678u32;
        for i in 0..20_000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            match t.check(k, t0 + i * S / 1000, &lim, rng).0 {
                Verdict::Kod => kods += 1,
                Verdict::Leak => leaks += 1,
                Verdict::Within => {}
                Verdict::Drop => {}
            }
        }
        assert_eq!(kods, 3, "one KoD per 8 s over 20 s");
        // leak 2: about a quarter of the over-limit requests
        assert!((4000..6000).contains(&leaks), "{leaks}");
        // the same /64 is the same client
        assert_eq!(
            t.check(key("2001:db8::2"), t0 + 20 * S, &lim, NO_LEAK).0,
            Verdict::Drop
        );
        // IPv4-mapped counts as IPv4
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    /// On a large table `used` is the exact count, without a scan, and a
    /// single client is counted (a sample missed it).
    #[test]
    fn used_is_exact_on_large_tables() {
        // A random key: the fixed test key's small multipliers put every
        // IPv4 client in one bucket.
        let t = ClientTable::new(1 << 18, KeyedHash::random());
        let lim = RateLimit::default();
        for i in 0..60_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            t.check(key(&ip.to_string()), 1000, &lim, NO_LEAK);
        }
        let exact = t
            .records
            .iter()
            .filter(|r| r.tag.load(Ordering::Relaxed) != 0)
            .count();
        assert!(exact > 55_000, "{exact}");
        assert_eq!(t.used(), exact);
        let one = ClientTable::new(1 << 18, KeyedHash::random());
        one.check(key("192.0.2.1"), 1000, &lim, NO_LEAK);
        assert_eq!(one.used(), 1);
    }

    #[test]
    fn full_table_replaces_the_idlest() {
        let t = table(8); // one bucket
        let lim = RateLimit::default();
        for i in 0..8u32 {
            let (_, o) = t.check(key(&format!("10.0.0.{i}")), 1000 + i, &lim, NO_LEAK);
            assert!(o.inserted && !o.replaced);
        }
        assert_eq!(t.used(), 8);
        // 10.0.0.0 is the idlest: replaced by a newcomer
        let (v, o) = t.check(key("10.9.9.9"), 2000, &lim, NO_LEAK);
        assert!(o.replaced && v == Verdict::Within);
        let (_, o) = t.check(key("10.0.0.1"), 2001, &lim, NO_LEAK);
        assert_eq!(o, Outcome::default(), "10.0.0.1 still there");
        let (_, o) = t.check(key("10.0.0.0"), 2002, &lim, NO_LEAK);
        assert!(o.replaced, "10.0.0.0 was the one replaced");
        assert_eq!(t.used(), 8);
    }

    #[test]
    fn clock_step_back_gains_nothing() {
        let t = table(64);
        let lim = RateLimit {
            burst: 1,
            kod: false,
            ..RateLimit::default()
        };
        let k = key("192.0.2.9");
        assert_eq!(t.check(k, 100 * S, &lim, NO_LEAK).0, Verdict::Within);
        assert_eq!(t.check(k, 50 * S, &lim, NO_LEAK).0, Verdict::Drop);
        assert_eq!(t.check(k, 108 * S, &lim, NO_LEAK).0, Verdict::Within);
    }

    #[test]
    fn shared_by_threads_never_more_than_the_limit() {
        // 4 threads, one client, 10 virtual seconds: at most burst + 10/interval.
        let t = Arc::new(table(1024));
        let lim = RateLimit {
            interval: 0,
            burst: 4,
            leak: 4,
            kod: false,
        };
        let within = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..4u32)
            .map(|w| {
                let (t, within) = (t.clone(), within.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        let now = S + i * S / 1000;
                        if t.check(key("198.51.100.1"), now, &lim, NO_LEAK ^ w).0 == Verdict::Within
                        {
                            within.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let n = within.load(Ordering::Relaxed);
        assert!((4..=4 + 10 + 1).contains(&n), "{n}");
    }

    #[test]
    fn deny_kods_limited_per_source() {
        let d = DenyKodLimiter::new(KeyedHash::fixed([9, 8, 7, 6]));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(d.allow(a, 10 * S));
        assert!(!d.allow(a, 10 * S + 1));
        assert!(!d.allow(a, 13 * S));
        assert!(d.allow(a, 14 * S));
        let sent = (0..1000)
            .filter(|i| d.allow(a, 20 * S + i * S / 100))
            .count();
        assert_eq!(sent, 3, "10 s of flood: one per 4 s");
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_interval("-4"), Ok(-4));
        assert_eq!(parse_interval("-10"), Ok(-10));
        assert!(parse_interval("-11").is_err() && parse_interval("13").is_err());
        assert!(parse_burst("0").is_err() && parse_burst("256").is_err());
        assert_eq!(parse_burst("255"), Ok(255));
        assert!(parse_leak("0").is_err() && parse_leak("5").is_err());
        assert!(RateLimit::default().validate().is_ok());
        assert_eq!(RateLimit::default().cost(), 8 * S);
        assert_eq!(
            RateLimit {
                interval: -4,
                ..RateLimit::default()
            }
            .kod_gap_ticks(),
            4 * S
        );
        let max = RateLimit {
            interval: MAX_INTERVAL,
            burst: 255,
            ..RateLimit::default()
        };
        assert!(max.depth() > max.cost());
    }

    #[test]
    fn hash_separates_families() {
        let h = KeyedHash::random();
        assert_ne!(h.hash(false, 1), h.hash(true, 1));
        assert_ne!(h.hash(false, 1), h.hash(false, 2));
    }
}
