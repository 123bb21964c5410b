//! The interleaved-mode table: from a receive timestamp the server served to the
//! transmit time of that same response (exact once the kernel or NIC reports it).
//!
//! Shared by all workers without a lock: each slot is a pair of atomics, and every
//! change to a slot first claims it by swapping its key to [`BUSY`] with one
//! compare-and-swap. A claim that fails is never retried in a loop: the operation
//! gives up (a lost entry only means one basic reply instead of an interleaved one).
//! Keys are served receive timestamps, whose low bit is always 1, so the even
//! values [`EMPTY`] and [`BUSY`] never collide with a key.
//!
//! The table is keyed by the timestamp alone, not the client's address, so a
//! client behind a NAT that changes its port or address still gets interleaved
//! replies. Each entry is answered once ([`InterleaveTable::take`] removes it).
//!
//! Slots are grouped in buckets of [`WAYS`]; a key lives in the bucket its hash
//! names. Every entry carries the time its client is due back by (twice its
//! poll interval plus a second, from the poll field of the request it
//! answered). A new entry takes an empty slot or one whose client is overdue;
//! when every slot of its bucket is still due, the new entry is refused
//! (that client gets a basic reply once more) rather than pushing out an entry
//! a client is about to use. Together with the per-source allowance of the
//! worker (entries only for sources within their limits), a flood of odd
//! origins cannot switch interleaved mode off for others.
//! Memory: 24 octets per slot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::protocol::server::InterleaveLookup;
use crate::protocol::NtpTimestamp;

/// Key of a free slot.
pub const EMPTY: u64 = 0;
/// Key of a slot being written.
pub const BUSY: u64 = 2;
/// Slots per bucket.
pub const WAYS: usize = 8;
/// Ticks per second of due times (as the client table's, 1/1024 s).
pub const TICKS_PER_SEC: u32 = crate::policy::ratelimit::TICKS_PER_SEC;

struct Slot {
    key: AtomicU64,
    value: AtomicU64,
    /// Tick by which the client is due back; afterwards the slot may be reused.
    due: AtomicU32,
}

/// A fixed-size, lock-free, lossy map from served receive timestamps to transmit
/// timestamps.
pub struct InterleaveTable {
    slots: Box<[Slot]>,
    shift: u32,
    ways: usize,
}

/// Octets of memory per table entry.
pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<Slot>();

/// What became of an insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Stored in a free slot or one whose client was overdue.
    Stored,
    /// Every slot of the bucket holds an entry still due: not stored.
    Full,
    /// The key is invalid (even) or a slot was busy with another worker.
    Refused,
}

/// The tick by which a client whose request carried poll exponent `poll` is
/// due back, if it asked at tick `now`: twice its interval (clamped to
/// 2^-6..2^10 s) plus one second.
#[inline]
pub fn due_tick(now: u32, poll: i8) -> u32 {
    let p = i32::from(poll.clamp(-6, 10));
    let interval = (TICKS_PER_SEC as u64 * 2) << (p + 6) >> 6;
    now.wrapping_add(interval as u32 + TICKS_PER_SEC)
}

impl InterleaveTable {
    /// A table of at least `entries` slots (rounded up to a power of two, minimum 1).
    pub fn new(entries: usize) -> Self {
        let n = entries.max(1).next_power_of_two();
        let ways = n.min(WAYS);
        let slots = (0..n)
            .map(|_| Slot {
                key: AtomicU64::new(EMPTY),
                value: AtomicU64::new(0),
                due: AtomicU32::new(0),
            })
            .collect();
        InterleaveTable {
            slots,
            shift: 64 - (n / ways).trailing_zeros(),
            ways,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding an entry now: exact for small tables, otherwise
    /// estimated from a sample ([`crate::sample::occupied`]; for metrics).
    pub fn held(&self) -> usize {
        crate::sample::occupied(&self.slots, self.ways, |s| {
            s.key.load(Ordering::Relaxed) & 1 == 1
        })
    }

    /// Memory used by the slots, in octets.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * BYTES_PER_ENTRY
    }

    /// Slots holding an entry whose client is still due at tick `now` (a scan:
    /// statistics only).
    pub fn live(&self, now: u32) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.key.load(Ordering::Relaxed) & 1 == 1
                    && (s.due.load(Ordering::Relaxed).wrapping_sub(now) as i32) > 0
            })
            .count()
    }

    fn bucket(&self, key: u64) -> &[Slot] {
        // Fibonacci hashing: the high bits of the product are well mixed. A table
        // of one bucket has shift 64, which `checked_shr` maps to index 0.
        let h = key
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .checked_shr(self.shift)
            .unwrap_or(0) as usize;
        &self.slots[h * self.ways..(h + 1) * self.ways]
    }

    /// Remember `transmit` for the response that served `receive`, its client
    /// due back by tick `due` (see [`due_tick`]); `now` is the current tick.
    pub fn insert(
        &self,
        receive: NtpTimestamp,
        transmit: NtpTimestamp,
        now: u32,
        due: u32,
    ) -> Insert {
        let key = receive.to_bits();
        if key & 1 == 0 {
            return Insert::Refused;
        }
        let mut result = Insert::Full;
        for slot in self.bucket(key) {
            let current = slot.key.load(Ordering::Relaxed);
            if current == BUSY {
                result = Insert::Refused;
                continue;
            }
            let overdue = (slot.due.load(Ordering::Relaxed).wrapping_sub(now) as i32) <= 0;
            if current != EMPTY && current != key && !overdue {
                continue;
            }
            if slot
                .key
                .compare_exchange(current, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                result = Insert::Refused;
                continue;
            }
            slot.value.store(transmit.to_bits(), Ordering::Relaxed);
            slot.due.store(due, Ordering::Relaxed);
            slot.key.store(key, Ordering::Release);
            return Insert::Stored;
        }
        result
    }

    /// Replace the transmit time of an existing entry (the exact time arrived).
    /// Returns `false` if the entry is gone (answered, overwritten) or busy.
    pub fn update(&self, receive: NtpTimestamp, transmit: NtpTimestamp) -> bool {
        let Some(slot) = self.claim(receive) else {
            return false;
        };
        slot.value.store(transmit.to_bits(), Ordering::Relaxed);
        slot.key.store(receive.to_bits(), Ordering::Release);
        true
    }

    /// Claim the slot holding `receive` (key swapped to [`BUSY`]); the caller
    /// must store a key back. `None` if the key is invalid, absent or busy.
    fn claim(&self, receive: NtpTimestamp) -> Option<&Slot> {
        let key = receive.to_bits();
        if key & 1 == 0 {
            return None;
        }
        self.bucket(key).iter().find(|slot| {
            slot.key.load(Ordering::Relaxed) == key
                && slot
                    .key
                    .compare_exchange(key, BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })
    }
}

impl InterleaveLookup for InterleaveTable {
    fn take(&self, receive: NtpTimestamp) -> Option<NtpTimestamp> {
        let slot = self.claim(receive)?;
        let value = slot.value.load(Ordering::Relaxed);
        slot.key.store(EMPTY, Ordering::Release);
        Some(NtpTimestamp(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ts(x: u64) -> NtpTimestamp {
        NtpTimestamp(x)
    }

    const S: u32 = TICKS_PER_SEC;
    const NOW: u32 = 1000 * S;

    /// Insert due 64 s from [`NOW`]; whether stored.
    fn put(t: &InterleaveTable, k: NtpTimestamp, v: NtpTimestamp) -> bool {
        t.insert(k, v, NOW, NOW + 64 * S) == Insert::Stored
    }

    /// Past [`crate::sample::SAMPLE`] slots the count is an estimate from a sample:
    /// close to the exact count, and far cheaper than a full scan.
    #[test]
    fn held_is_sampled_on_large_tables() {
        let t = InterleaveTable::new(1 << 18);
        assert_eq!(t.held(), 0);
        let mut stored = 0usize;
        let mut x: u64 = 7;
        for _ in 0..60_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            stored += usize::from(put(&t, ts(x | 1), ts(2)));
        }
        let exact = t
            .slots
            .iter()
            .filter(|s| s.key.load(Ordering::Relaxed) & 1 == 1)
            .count();
        assert_eq!(exact, stored);
        let est = t.held();
        assert!(
            est.abs_diff(exact) * 100 <= exact * 10,
            "estimate {est}, exact {exact}"
        );
    }

    #[test]
    fn insert_update_take_once() {
        let t = InterleaveTable::new(1000);
        assert_eq!(t.capacity(), 1024);
        assert_eq!(t.memory_bytes(), 1024 * 24);
        assert_eq!(t.held(), 0);
        assert!(put(&t, ts(0x1001), ts(0x2000)));
        assert_eq!(t.held(), 1);
        assert!(t.update(ts(0x1001), ts(0x2002)));
        assert_eq!(t.take(ts(0x1001)), Some(ts(0x2002)));
        assert_eq!(t.held(), 0);
        assert_eq!(t.take(ts(0x1001)), None, "answered once");
        assert!(!t.update(ts(0x1001), ts(0x2004)), "gone after take");
    }

    #[test]
    fn even_keys_rejected() {
        let t = InterleaveTable::new(16);
        assert_eq!(t.insert(ts(0x1000), ts(1), NOW, NOW + S), Insert::Refused);
        assert_eq!(t.take(ts(0x1000)), None);
        assert_eq!(t.take(ts(EMPTY)), None);
        assert_eq!(t.take(ts(BUSY)), None);
    }

    #[test]
    fn due_entries_are_kept_overdue_ones_reused() {
        // A one-slot table: a due entry stays, an overdue one makes room.
        let t = InterleaveTable::new(1);
        assert!(put(&t, ts(1), ts(1000)));
        assert_eq!(
            t.insert(ts(3), ts(1001), NOW + 63 * S, NOW + 200 * S),
            Insert::Full
        );
        assert_eq!(t.live(NOW), 1);
        assert_eq!(
            t.insert(ts(5), ts(1002), NOW + 64 * S, NOW + 200 * S),
            Insert::Stored
        );
        assert_eq!(t.take(ts(1)), None, "overdue entry reused");
        assert_eq!(t.take(ts(5)), Some(ts(1002)));
        // A small table filled far past capacity: every hit returns its own value.
        let t = InterleaveTable::new(64);
        for k in 0..10_000u64 {
            t.insert(
                ts(2 * k + 1),
                ts(k << 8),
                NOW + k as u32,
                NOW + k as u32 + 2 * S,
            );
        }
        let mut hits = 0;
        for k in 0..10_000u64 {
            if let Some(v) = t.take(ts(2 * k + 1)) {
                assert_eq!(v, ts(k << 8));
                hits += 1;
            }
        }
        assert!(hits > 0 && hits <= 64, "{hits}");
    }

    #[test]
    fn due_times_follow_the_poll() {
        assert_eq!(due_tick(NOW, 0), NOW + 3 * S);
        assert_eq!(due_tick(NOW, 6), NOW + 129 * S);
        assert_eq!(due_tick(NOW, 17), NOW + 2049 * S, "clamped to 2^10");
        assert_eq!(due_tick(NOW, -6), NOW + S + S / 32);
        assert_eq!(due_tick(u32::MAX, 0), 3 * S - 1, "wraps");
    }

    /// A client polling every 64 s keeps its entry while other clients churn
    /// at the rate the table is sized for (a quarter of its slots due at once):
    /// each 64 s, `capacity / 4` new entries due 129 s later.
    #[test]
    fn a_64s_client_keeps_its_entry_at_rated_churn() {
        let t = InterleaveTable::new(1 << 14);
        let per_sec = (t.capacity() / 4 / 64) as u64;
        let mut kept = 0;
        let mut key = 1u64;
        for round in 0..20u32 {
            let start = NOW + round * 64 * S;
            let mine = ts(0xffff_0000_0000_0001 + 2 * u64::from(round));
            let stored = t.insert(mine, ts(7), start, due_tick(start, 6)) == Insert::Stored;
            for s in 0..64u32 {
                for _ in 0..per_sec {
                    key += 2;
                    let now = start + s * S;
                    // the other clients: half of them come back and use theirs
                    t.insert(ts(key), ts(1), now, due_tick(now, 6));
                    if key % 4 == 1 {
                        t.take(ts(key - 2 * per_sec * 64));
                    }
                }
            }
            if stored && t.take(mine) == Some(ts(7)) {
                kept += 1;
            }
        }
        assert!(kept >= 19, "kept {kept} of 20");
    }

    #[test]
    fn concurrent_workers_never_see_a_wrong_value() {
        let t = Arc::new(InterleaveTable::new(8));
        let threads: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let k = ((w << 40) | (i << 1)) | 1;
                        t.insert(ts(k), ts(k ^ 0xffff), NOW, NOW + 2 * S);
                        t.update(ts(k), ts(k ^ 0xffff));
                        if let Some(v) = t.take(ts(k.wrapping_sub(2))) {
                            assert_eq!(v, ts(k.wrapping_sub(2) ^ 0xffff));
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
    }
}
