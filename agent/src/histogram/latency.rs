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

    /// The non-empty buckets as (index, count), for deltas between two
    /// moments ([`Counts`]). Reads each bucket once; allocates nothing
    /// when `out` has room.
    #[cfg_attr(not(all(feature = "doctor", feature = "red")), allow(dead_code))]
    pub(crate) fn counts_into(&self, out: &mut Counts) {
        out.0.clear();
        for (index, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            if n > 0 {
                out.0.push((index as u16, n));
            }
        }
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

/// Bucket counts of a [`LatencyHistogram`] at one moment (non-empty
/// buckets, by index). Two of them give the distribution of what was
/// recorded in between.
#[cfg_attr(not(all(feature = "doctor", feature = "red")), allow(dead_code))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts(Vec<(u16, u64)>);

#[cfg_attr(not(all(feature = "doctor", feature = "red")), allow(dead_code))]
impl Counts {
    /// Values recorded.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Adds `now − then` bucket by bucket into `into` (dense, one slot per
    /// bucket); buckets only grow, so a bucket missing from `then` was 0.
    pub(crate) fn add_delta(now: &Counts, then: Option<&Counts>, into: &mut [u64]) {
        let mut earlier = then.map(|t| t.0.iter().peekable());
        for &(index, n) in &now.0 {
            let mut before = 0;
            if let Some(earlier) = earlier.as_mut() {
                while let Some(&&(i, m)) = earlier.peek() {
                    if i > index {
                        break;
                    }
                    earlier.next();
                    if i == index {
                        before = m;
                    }
                }
            }
            if let Some(slot) = into.get_mut(usize::from(index)) {
                *slot += n.saturating_sub(before);
            }
        }
    }
}

/// A dense array of bucket counts, as [`Counts::add_delta`] fills it.
#[cfg_attr(not(all(feature = "doctor", feature = "red")), allow(dead_code))]
pub(crate) fn dense() -> Vec<u64> {
    vec![0; BUCKETS]
}

/// The `q` quantile (0..1) of dense bucket counts, at the bucket's middle;
/// `None` when they are all zero.
#[cfg_attr(not(all(feature = "doctor", feature = "red")), allow(dead_code))]
pub(crate) fn quantile_of(counts: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (index, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let (lower, upper) = bucket_range(index);
            return Some(Duration::from_nanos(lower + (upper - lower) / 2));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_of_counts_give_the_distribution_in_between() {
        let h = LatencyHistogram::default();
        for _ in 0..100 {
            h.record(1_000_000); // 1 ms
        }
        let mut then = Counts::default();
        h.counts_into(&mut then);
        for _ in 0..90 {
            h.record(2_000_000);
        }
        for _ in 0..10 {
            h.record(200_000_000); // 200 ms
        }
        let mut now = Counts::default();
        h.counts_into(&mut now);
        assert_eq!(now.total(), 200);
        let mut between = dense();
        Counts::add_delta(&now, Some(&then), &mut between);
        assert_eq!(between.iter().sum::<u64>(), 100, "only what came after");
        let p50 = quantile_of(&between, 0.5).unwrap();
        let p95 = quantile_of(&between, 0.95).unwrap();
        assert!((p50.as_secs_f64() * 1e3 - 2.0).abs() < 0.2, "{p50:?}");
        assert!((p95.as_secs_f64() * 1e3 - 200.0).abs() < 15.0, "{p95:?}");
        let mut all = dense();
        Counts::add_delta(&now, None, &mut all);
        assert_eq!(all.iter().sum::<u64>(), 200);
        assert_eq!(quantile_of(&dense(), 0.5), None);
    }

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
