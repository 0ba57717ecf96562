//! The summary of a latency distribution that the RED layer, the span
//! timings and the executor-lag probe all report (DESIGN §5.1: `count`,
//! `min_ms`, …, `p999_ms`), and the lock-free histograms behind RED and
//! the span timings.

use std::time::Duration;

#[cfg_attr(not(any(feature = "red", feature = "spans")), allow(dead_code))]
mod buckets;
#[cfg_attr(not(any(feature = "red", feature = "spans")), allow(dead_code))]
mod latency;

#[cfg(any(feature = "red", feature = "spans"))]
pub(crate) use buckets::{seconds_to_nanos, BucketCounts};
#[cfg(any(feature = "red", feature = "spans"))]
pub(crate) use latency::LatencyHistogram;

/// Summary of a latency distribution: exact count, min, max and mean,
/// percentiles within the precision of the histogram behind it (6.25 % for
/// the log-linear buckets of RED and span timings, 1 % for the
/// executor-lag HDR histograms).
///
/// ```
/// let summary = stethoscope::histogram::HistogramSummary::default();
/// assert_eq!(summary.count, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistogramSummary {
    /// Observations.
    pub count: u64,
    /// Smallest observation.
    pub min: Duration,
    /// Largest observation.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Standard deviation.
    pub stddev: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
}

impl HistogramSummary {
    /// The JSON shape of DESIGN §5.1, durations in float milliseconds.
    #[cfg_attr(
        not(any(feature = "red", feature = "runtime", feature = "spans")),
        allow(dead_code)
    )]
    pub(crate) fn to_json(self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::json!({
            "count": self.count,
            "min_ms": ms(self.min),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
            "stddev_ms": ms(self.stddev),
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "p999_ms": ms(self.p999),
        })
    }
}
