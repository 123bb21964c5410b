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
//! Memory: 16 octets per slot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::server::InterleaveLookup;
use crate::protocol::NtpTimestamp;

/// Key of a free slot.
pub const EMPTY: u64 = 0;
/// Key of a slot being written.
pub const BUSY: u64 = 2;

#[repr(C, align(16))]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

/// A fixed-size, lock-free, lossy map from served receive timestamps to transmit
/// timestamps.
pub struct InterleaveTable {
    slots: Box<[Slot]>,
    shift: u32,
}

/// Octets of memory per table entry.
pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<Slot>();

impl InterleaveTable {
    /// A table of at least `entries` slots (rounded up to a power of two, minimum 1).
    pub fn new(entries: usize) -> Self {
        let n = entries.max(1).next_power_of_two();
        let slots = (0..n)
            .map(|_| Slot {
                key: AtomicU64::new(EMPTY),
                value: AtomicU64::new(0),
            })
            .collect();
        InterleaveTable {
            slots,
            shift: 64 - n.trailing_zeros(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding an entry now (a scan of the whole table: for metrics,
    /// not the packet path).
    pub fn held(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.key.load(Ordering::Relaxed) & 1 == 1)
            .count()
    }

    /// Memory used by the slots, in octets.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * BYTES_PER_ENTRY
    }

    fn slot(&self, key: u64) -> &Slot {
        // Fibonacci hashing: the high bits of the product are well mixed. A table
        // of one slot has shift 64, which `checked_shr` maps to index 0.
        let h = key
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .checked_shr(self.shift)
            .unwrap_or(0);
        &self.slots[h as usize]
    }

    /// Remember `transmit` for the response that served `receive`. Overwrites
    /// whatever the slot held (the table is bounded and lossy). Returns `false` if
    /// the key is not a valid (odd) key or the slot was busy.
    pub fn insert(&self, receive: NtpTimestamp, transmit: NtpTimestamp) -> bool {
        let key = receive.to_bits();
        if key & 1 == 0 {
            return false;
        }
        let slot = self.slot(key);
        let current = slot.key.load(Ordering::Relaxed);
        if current == BUSY
            || slot
                .key
                .compare_exchange(current, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        slot.value.store(transmit.to_bits(), Ordering::Relaxed);
        slot.key.store(key, Ordering::Release);
        true
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
        let slot = self.slot(key);
        let ok = key & 1 == 1
            && slot
                .key
                .compare_exchange(key, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
        ok.then_some(slot)
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

    #[test]
    fn insert_update_take_once() {
        let t = InterleaveTable::new(1000);
        assert_eq!(t.capacity(), 1024);
        assert_eq!(t.memory_bytes(), 1024 * 16);
        assert_eq!(t.held(), 0);
        assert!(t.insert(ts(0x1001), ts(0x2000)));
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
        assert!(!t.insert(ts(0x1000), ts(1)));
        assert_eq!(t.take(ts(0x1000)), None);
        assert_eq!(t.take(ts(EMPTY)), None);
        assert_eq!(t.take(ts(BUSY)), None);
    }

    #[test]
    fn full_table_overwrites_and_never_mixes_entries() {
        // A one-slot table: every insert evicts the previous entry.
        let t = InterleaveTable::new(1);
        for i in 0..100u64 {
            assert!(t.insert(ts(2 * i + 1), ts(1000 + i)));
        }
        assert_eq!(t.take(ts(2 * 98 + 1)), None, "evicted");
        assert_eq!(t.take(ts(2 * 99 + 1)), Some(ts(1099)));
        // A small table filled far past capacity: every hit returns its own value.
        let t = InterleaveTable::new(64);
        for k in 0..10_000u64 {
            t.insert(ts(2 * k + 1), ts(k << 8));
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
    fn concurrent_workers_never_see_a_wrong_value() {
        let t = Arc::new(InterleaveTable::new(8));
        let threads: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let k = ((w << 40) | (i << 1)) | 1;
                        t.insert(ts(k), ts(k ^ 0xffff));
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
