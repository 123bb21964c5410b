//! A fixed-size log-linear histogram of nanosecond values (HDR-like: 32
//! sub-buckets per power of two, so at most ~3% relative error), allocated once
//! and cheap to record into.

/// Sub-bucket bits: 2^5 = 32 linear sub-buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Buckets needed to cover all of `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A histogram of `u64` values.
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

fn index(v: u64) -> usize {
    if v < (2 * SUB) as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) as usize; // in SUB..2*SUB
    (shift as usize + 1) * SUB + (mantissa - SUB)
}

/// Lowest value that falls in bucket `i`, and the bucket's width.
fn bounds(i: usize) -> (u64, u64) {
    if i < 2 * SUB {
        return (i as u64, 1);
    }
    let shift = (i / SUB - 1) as u32;
    let mantissa = (SUB + i % SUB) as u64;
    (mantissa << shift, 1u64 << shift)
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    /// Count one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Forget everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
        self.max = 0;
    }

    /// The value at quantile `q` (0..=1), as the middle of its bucket (capped at
    /// the largest value seen); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bounds(i);
                return Some((low + (width - 1) / 2).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut prev = 0usize;
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1000, 1 << 40, u64::MAX] {
            let i = index(v);
            assert!(i >= prev, "{v}");
            assert!(i < BUCKETS, "{v}");
            let (low, width) = bounds(i);
            assert!(low <= v && v - low < width, "v={v} low={low} width={width}");
            prev = i;
        }
        assert_eq!(index(64), 64);
        assert_eq!(index(127), 95);
        assert_eq!(index(128), 96);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_three_percent() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 5_000_000.0),
            (0.99, 9_900_000.0),
            (0.999, 9_990_000.0),
        ] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.03, "q={q} got={got}");
        }
        assert_eq!(h.quantile(1.0), Some(10_000_000));
        h.clear();
        assert_eq!(h.count(), 0);
        h.record(5);
        assert_eq!(h.quantile(0.5), Some(5));
    }
}
