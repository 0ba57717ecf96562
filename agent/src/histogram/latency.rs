//! A lock-free log-linear latency histogram: exact count, sum, min and max,
//! percentiles within 6.25 %. Recording is a handful of relaxed atomic
//! operations and never allocates or locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::HistogramSummary;

/// Sub-buckets per power of two: 8, so a bucket is at most 1/8 of its lower
/// bound wide and a percentile read at the bucket's middle is within 6.25 %.
const SUB_BITS: u32 = 3;
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Values up to 2^42 ns (73 minutes) get their own buckets; longer ones
/// land in the last.
const MAX_MSB: u32 = 41;
const BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as usize) * SUB_COUNT as usize;

fn bucket_of(nanos: u64) -> usize {
    if nanos < SUB_COUNT {
        return nanos as usize;
    }
    let msb = 63 - nanos.leading_zeros();
    if msb > MAX_MSB {
        return BUCKETS - 1;
    }
    let shift = msb - SUB_BITS;
    (((msb - SUB_BITS + 1) as u64) * SUB_COUNT + ((nanos >> shift) & (SUB_COUNT - 1))) as usize
}

/// `[lower, upper)` of a bucket, in nanoseconds.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_COUNT {
        return (index, index + 1);
    }
    let group = index / SUB_COUNT;
    let sub = index % SUB_COUNT;
    let shift = group - 1;
    let lower = (SUB_COUNT + sub) << shift;
    (lower, lower + (1 << shift))
}

/// A log-linear histogram of durations with relative precision 1/8,
/// from 1 ns to 73 minutes, plus exact count, sum, min and max
/// (2.5 KiB each).
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    min_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub(crate) fn record(&self, nanos: u64) {
        if let Some(bucket) = self.buckets.get(bucket_of(nanos)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
        // Read first: the common case changes neither, and a plain load
        // does not take the cache line exclusively.
        if nanos < self.min_ns.load(Ordering::Relaxed) {
            self.min_ns.fetch_min(nanos, Ordering::Relaxed);
        }
        if nanos > self.max_ns.load(Ordering::Relaxed) {
            self.max_ns.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    /// Sum of the recorded values, in nanoseconds.
    #[cfg_attr(not(feature = "spans"), allow(dead_code))]
    pub(crate) fn sum_nanos(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// Count, min, max, mean, standard deviation and percentiles.
    pub(crate) fn summary(&self) -> HistogramSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return HistogramSummary::default();
        }
        let min = self.min_ns.load(Ordering::Relaxed);
        let max = self.max_ns.load(Ordering::Relaxed).max(min);
        let mean = self.sum_ns.load(Ordering::Relaxed) as f64 / count as f64;
        let middle = |index: usize| {
            let (lower, upper) = bucket_range(index);
            ((lower + upper) as f64 / 2.0).clamp(min as f64, max as f64)
        };
        let variance = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| n as f64 * (middle(i) - mean).powi(2))
            .sum::<f64>()
            / count as f64;
        let quantile = |q: f64| -> Duration {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0u64;
            for (i, &n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_nanos(middle(i) as u64);
                }
            }
            Duration::from_nanos(max)
        };
        HistogramSummary {
            count,
            min: Duration::from_nanos(min),
            max: Duration::from_nanos(max),
            mean: Duration::from_nanos(mean as u64),
            stddev: Duration::from_nanos(variance.sqrt() as u64),
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
            p999: quantile(0.999),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut expected_lower = 0;
        for index in 0..BUCKETS {
            let (lower, upper) = bucket_range(index);
            assert_eq!(lower, expected_lower, "bucket {index}");
            assert_eq!(bucket_of(lower), index);
            assert_eq!(bucket_of(upper - 1), index);
            assert!((upper - lower) * 8 <= lower.max(8), "precision at {index}");
            expected_lower = upper;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_the_bucket_precision() {
        let h = LatencyHistogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, Duration::from_millis(1));
        assert_eq!(s.max, Duration::from_millis(1000));
        assert_eq!(s.mean, Duration::from_micros(500_500));
        assert_eq!(h.sum_nanos(), 500_500_000_000);
        for (got, want) in [
            (s.p50, 500.0),
            (s.p90, 900.0),
            (s.p99, 990.0),
            (s.p999, 999.0),
        ] {
            let got = got.as_secs_f64() * 1e3;
            assert!((got - want).abs() / want < 0.0625, "{got} vs {want}");
        }
        let stddev = s.stddev.as_secs_f64() * 1e3;
        assert!((stddev - 288.7).abs() < 15.0, "{stddev}");
        assert_eq!(LatencyHistogram::default().summary().count, 0);
    }
}
