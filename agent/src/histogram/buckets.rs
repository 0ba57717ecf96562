//! Fixed-bound cumulative-histogram buckets for the Prometheus exposition:
//! a count per bucket and the sum of observations, all relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts per bucket (non-cumulative, `+Inf` last) and the sum of
/// observations. `B` is the number of buckets including `+Inf`, so the
/// bounds are `B - 1` finite upper bounds in nanoseconds, ascending.
#[derive(Debug)]
pub(crate) struct BucketCounts<const B: usize> {
    bounds_ns: &'static [u64],
    counts: [AtomicU64; B],
    sum_ns: AtomicU64,
}

impl<const B: usize> BucketCounts<B> {
    /// Empty buckets with these finite upper bounds (`B - 1` of them).
    pub(crate) fn new(bounds_ns: &'static [u64]) -> Self {
        debug_assert_eq!(bounds_ns.len() + 1, B);
        BucketCounts {
            bounds_ns,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one observation: in the first bucket whose bound is ≥ it
    /// (Prometheus' `le`), or `+Inf`.
    pub(crate) fn record(&self, nanos: u64) {
        let index = self
            .bounds_ns
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(self.bounds_ns.len());
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Non-cumulative counts (`+Inf` last) and the sum in seconds.
    pub(crate) fn snapshot(&self) -> ([u64; B], f64) {
        let mut counts = [0u64; B];
        for (out, count) in counts.iter_mut().zip(&self.counts) {
            *out = count.load(Ordering::Relaxed);
        }
        (counts, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// Nanoseconds of bounds given in seconds, for `const` bound tables.
pub(crate) const fn seconds_to_nanos<const N: usize>(seconds: [f64; N]) -> [u64; N] {
    let mut nanos = [0u64; N];
    let mut i = 0;
    while i < N {
        nanos[i] = (seconds[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_prometheus_le_semantics() {
        static BOUNDS: [u64; 3] = seconds_to_nanos([0.005, 0.01, 2.5]);
        assert_eq!(BOUNDS, [5_000_000, 10_000_000, 2_500_000_000]);
        let b = BucketCounts::<4>::new(&BOUNDS);
        b.record(5_000_000); // exactly 5 ms: in the 0.005 bucket
        b.record(5_000_001);
        b.record(20_000_000_000);
        let (counts, sum) = b.snapshot();
        assert_eq!(counts, [1, 1, 0, 1]);
        assert!((sum - 20.010000001).abs() < 1e-9);
    }
}
